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
    /// Where the scheduler's and the lock functions' text is (`SchedText`), read once, at
    /// `warm`; `None` inside when kallsyms does not say.
    sched_text: std::cell::OnceCell<Option<SchedText>>,
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
            sched_text: std::cell::OnceCell::new(),
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
        self.sched_text_read();
        self.spent += started.elapsed();
    }

    fn sched_text_read(&self) -> Option<SchedText> {
        *self.sched_text.get_or_init(|| {
            let found = std::fs::File::open("/proc/kallsyms")
                .ok()
                .and_then(|f| SchedText::find(std::io::BufReader::new(f)));
            if found.is_none() {
                tracing::debug!(
                    "no scheduler text bounds in /proc/kallsyms: wait channels are read from /proc"
                );
            }
            found
        })
    }

    /// The wait channel of a thread asleep on `stack` (return addresses, innermost
    /// first), as `/proc/PID/wchan` gives it: the function of the first frame outside the
    /// scheduler and the lock functions. Computed from the stack the report carries
    /// instead of read from /proc: in a mass hang that read was one more file open per
    /// report. `None` when kallsyms does not give the bounds or the stack is all
    /// scheduler: the caller reads /proc then.
    pub fn wchan(&mut self, stack: &[u64]) -> Option<String> {
        let text = self.sched_text_read()?;
        let address = *stack.iter().find(|&&a| !text.contains(a))?;
        self.symbolize(&[address]).pop().and_then(|f| f.symbol)
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

/// The kernel's `in_sched_functions`: the text of the functions marked `__sched` and of
/// the lock functions, which `get_wchan` passes over to name what a thread waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedText {
    sched: (u64, u64),
    lock: (u64, u64),
}

impl SchedText {
    /// The bounds from kallsyms' lines (`ADDRESS TYPE NAME`); `None` when one is missing
    /// or hidden (addresses read as 0 without CAP_SYSLOG).
    fn find(kallsyms: impl std::io::BufRead) -> Option<Self> {
        let mut bounds = [0u64; 4];
        const NAMES: [&str; 4] = [
            "__sched_text_start",
            "__sched_text_end",
            "__lock_text_start",
            "__lock_text_end",
        ];
        let mut found = 0;
        for line in kallsyms.lines() {
            let line = line.ok()?;
            let mut fields = line.split_ascii_whitespace();
            let (Some(address), Some(_), Some(name)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if let Some(i) = NAMES.iter().position(|n| *n == name)
                && bounds[i] == 0
            {
                bounds[i] = u64::from_str_radix(address, 16).ok()?;
                found += 1;
                if found == NAMES.len() {
                    break;
                }
            }
        }
        (bounds.iter().all(|&b| b != 0) && bounds[0] < bounds[1] && bounds[2] <= bounds[3])
            .then_some(Self {
                sched: (bounds[0], bounds[1]),
                lock: (bounds[2], bounds[3]),
            })
    }

    fn contains(&self, address: u64) -> bool {
        (self.sched.0..self.sched.1).contains(&address)
            || (self.lock.0..self.lock.1).contains(&address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KALLSYMS: &str = "ffffffff81000000 T _stext\n\
        ffffffff821f84a0 T __sched_text_start\n\
        ffffffff821f84b0 T __schedule\n\
        ffffffff82200fb7 T __sched_text_end\n\
        ffffffff82200fc0 T __lock_text_start\n\
        ffffffff82202a08 T __lock_text_end\n\
        ffffffffc0000000 t helper\t[some_module]\n";

    #[test]
    fn the_scheduler_text_is_found_and_passed_over_as_the_kernel_does() {
        let text = SchedText::find(KALLSYMS.as_bytes()).expect("bounds");
        assert!(text.contains(0xffffffff821f84b5), "__schedule");
        assert!(text.contains(0xffffffff82201000), "a lock function");
        assert!(!text.contains(0xffffffff82200fb7), "the end is outside");
        assert!(!text.contains(0xffffffff81000010));
    }

    #[test]
    fn hidden_or_missing_bounds_give_none() {
        let hidden: String = KALLSYMS
            .lines()
            .map(|l| format!("0000000000000000{}\n", &l[16..]))
            .collect();
        assert_eq!(SchedText::find(hidden.as_bytes()), None);
        let missing = KALLSYMS.replace("__lock_text_end", "other");
        assert_eq!(SchedText::find(missing.as_bytes()), None);
    }
}
