//! Kernel stacks to function names, with blazesym over `/proc/kallsyms` (which blazesym
//! caches after the first read, so a second report costs a lookup per frame).
use std::time::{Duration, Instant};

use blazesym::{
    MaybeDefault,
    symbolize::{
        Input, Symbolized, Symbolizer,
        source::{Kernel, Source},
    },
};

use super::{Frame, FrameTag};

pub struct KernelSymbolizer {
    symbolizer: Symbolizer,
    source: Source<'static>,
    /// Total time spent symbolizing, for the daemon's own health figures.
    pub spent: Duration,
    pub failures: u64,
}

impl Default for KernelSymbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl KernelSymbolizer {
    pub fn new() -> Self {
        let kernel = Kernel {
            // kallsyms only: a vmlinux search walks several directories and most machines
            // have none; function names and offsets are what a report needs.
            vmlinux: MaybeDefault::None,
            kallsyms: MaybeDefault::Default,
            ..Kernel::default()
        };
        Self {
            symbolizer: Symbolizer::new(),
            source: Source::Kernel(kernel),
            spent: Duration::ZERO,
            failures: 0,
        }
    }

    /// Reads /proc/kallsyms into blazesym's table now rather than at the first report
    /// (about 0.2 s of CPU, more on a loaded machine); the address looked up is immaterial.
    pub fn warm(&mut self) {
        let started = Instant::now();
        let _ = self
            .symbolizer
            .symbolize(&self.source, Input::AbsAddr(&[0]));
        self.spent += started.elapsed();
    }

    pub fn symbolize(&mut self, addresses: &[u64]) -> Vec<Frame> {
        let started = Instant::now();
        let symbolized = match self
            .symbolizer
            .symbolize(&self.source, Input::AbsAddr(addresses))
        {
            Ok(symbolized) => symbolized,
            Err(err) => {
                self.failures += 1;
                tracing::debug!("kernel symbolization failed: {err}");
                Vec::new()
            }
        };
        let frames =
            addresses
                .iter()
                .enumerate()
                .map(|(i, &address)| {
                    let sym = symbolized.get(i).and_then(Symbolized::as_sym);
                    Frame {
                        address: format!("{address:#x}"),
                        symbol: sym.map(|s| s.name.to_string()),
                        offset: sym.map(|s| s.offset as u64),
                        file: None,
                        line: None,
                        inlined: false,
                        python: false,
                        tag: FrameTag::Kernel,
                        module: Some(sym.and_then(|s| s.module.as_ref()).map_or_else(
                            || "kernel".to_owned(),
                            |m| m.to_string_lossy().into_owned(),
                        )),
                    }
                })
                .collect();
        self.spent += started.elapsed();
        frames
    }
}
