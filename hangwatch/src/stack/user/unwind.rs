//! Walking a user stack from the registers saved at kernel entry: DWARF CFI with framehop
//! for every module that has it, frame pointers where a module has none (framehop's own
//! fallback). `frame_pointer_walk` is the naive walk, kept to say how much CFI adds.
use std::sync::Arc;

use framehop::{
    ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder,
    x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64},
};

use super::{
    maps::Mapping,
    memory::StackCopy,
    modules::UnwindSections,
    signal_frame::{self, SignalFrame},
};

/// Frames kept per stack.
pub const MAX_FRAMES: usize = 128;

/// Nested signal handlers walked through (a handler interrupted by another signal).
const MAX_SIGNAL_FRAMES: usize = 4;

/// One frame found by the unwinder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawFrame {
    /// The instruction pointer (first frame) or a return address.
    pub address: u64,
    /// The address to symbolize: a return address points after the call, so the call
    /// instruction is one byte before it.
    pub lookup: u64,
}

pub struct Unwound {
    pub frames: Vec<RawFrame>,
    /// Why the walk stopped before reaching the outermost frame, if it did.
    pub stopped: Option<String>,
    /// The signal frames walked through, innermost first (`signal_frame`).
    pub signal_frames: Vec<SignalFrame>,
}

/// The modules of one process, as framehop sees them.
pub struct ProcessUnwinder {
    unwinder: UnwinderX86_64<Arc<[u8]>>,
    cache: CacheX86_64,
}

impl ProcessUnwinder {
    pub fn new(modules: &[(Mapping, Arc<UnwindSections>)]) -> Self {
        let mut unwinder = UnwinderX86_64::new();
        for (mapping, sections) in modules {
            // The caller leaves out (and reports) a module without a segment at the offset.
            let Some(svma_of_start) = sections.svma_of_offset(mapping.offset) else {
                continue;
            };
            let info = ExplicitModuleSectionInfo {
                base_svma: 0,
                text_svma: sections.text_svma.clone(),
                eh_frame_svma: sections.eh_frame_svma.clone(),
                eh_frame: sections.eh_frame.clone(),
                eh_frame_hdr_svma: sections.eh_frame_hdr_svma.clone(),
                eh_frame_hdr: sections.eh_frame_hdr.clone(),
                debug_frame: sections.debug_frame.clone(),
                got_svma: sections.got_svma.clone(),
                ..Default::default()
            };
            let bias = mapping.start.wrapping_sub(svma_of_start);
            unwinder.add_module(Module::new(
                mapping.path.clone(),
                mapping.start..mapping.end,
                bias,
                info,
            ));
        }
        Self {
            unwinder,
            cache: CacheX86_64::new(),
        }
    }

    /// Walks the stack from the registers `ip`, `sp`, `fp`. Where the walk fails after a
    /// return address into a sigreturn trampoline (`is_trampoline` reads its code), that
    /// is a signal frame: the walk goes on from the registers it saved (the code the
    /// signal interrupted), up to `MAX_SIGNAL_FRAMES` nested ones.
    pub fn unwind(
        &mut self,
        (ip, sp, fp): (u64, u64, u64),
        stack: &StackCopy,
        is_trampoline: &mut dyn FnMut(u64) -> bool,
    ) -> Unwound {
        let mut read = |address: u64| stack.word(address).ok_or(());
        let mut frames = Vec::new();
        let mut signal_frames = Vec::new();
        let mut stopped = None;
        let mut from = (ip, sp, fp);
        // Where the current stretch of the walk (from the registers, or from a signal
        // frame's) begins in `frames`.
        let mut stretch = 0;
        'walks: loop {
            let mut iter = self.unwinder.iter_frames(
                from.0,
                UnwindRegsX86_64::new(from.0, from.1, from.2),
                &mut self.cache,
                &mut read,
            );
            while frames.len() < MAX_FRAMES {
                match iter.next() {
                    Ok(Some(FrameAddress::InstructionPointer(ip))) => frames.push(RawFrame {
                        address: ip,
                        lookup: ip,
                    }),
                    Ok(Some(FrameAddress::ReturnAddress(ra))) => frames.push(RawFrame {
                        address: ra.get(),
                        lookup: ra.get() - 1,
                    }),
                    Ok(None) => break,
                    Err(err) => {
                        // DWARF has no rule past the sigreturn trampoline: a walk that went
                        // wrong may have met a signal frame. Its return addresses are looked
                        // at (their code read) only then, so a whole stack costs no read.
                        let signal = (signal_frames.len() < MAX_SIGNAL_FRAMES)
                            .then(|| {
                                frames[stretch..]
                                    .iter()
                                    .position(|f| f.lookup != f.address && is_trampoline(f.address))
                            })
                            .flatten()
                            .and_then(|i| {
                                let at = stretch + i;
                                Some((at, signal_frame::read(stack, from.1, frames[at].address)?))
                            });
                        if let Some((at, signal)) = signal {
                            // What followed the trampoline was the wrong walk. The
                            // trampoline is entered at its first byte, not called: its own
                            // address is symbolized.
                            frames.truncate(at + 1);
                            frames[at].lookup = frames[at].address;
                            from = (signal.ip, signal.sp, signal.bp);
                            signal_frames.push(signal);
                            stretch = frames.len();
                            continue 'walks;
                        }
                        stopped = Some(unwind_error(&err, stack));
                        break;
                    }
                }
            }
            break;
        }
        if frames.len() == MAX_FRAMES {
            stopped = Some(format!("cut at {MAX_FRAMES} frames"));
        }
        Unwound {
            frames,
            stopped,
            signal_frames,
        }
    }
}

fn unwind_error(err: &framehop::Error, stack: &StackCopy) -> String {
    let text = err.to_string();
    if stack.truncated && text.contains("read") {
        format!(
            "stack deeper than the {} KiB copied ({text})",
            stack.bytes.len() / 1024
        )
    } else {
        text
    }
}

/// The frames a frame-pointer walk reaches from the same registers and stack copy: what a
/// profiler without CFI would show. Counted, not reported.
pub fn frame_pointer_walk(fp: u64, stack: &StackCopy) -> usize {
    let mut frames = 1; // the instruction pointer
    let mut fp = fp;
    while frames < MAX_FRAMES {
        let (Some(next_fp), Some(ra)) = (stack.word(fp), stack.word(fp.wrapping_add(8))) else {
            break;
        };
        if ra == 0 {
            break;
        }
        frames += 1;
        if next_fp <= fp {
            break;
        }
        fp = next_fp;
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_pointer_walk_follows_the_chain_and_stops_at_its_end() {
        // Two frames: [fp] -> next fp, [fp+8] -> return address.
        let base = 0x1000;
        let mut bytes = vec![0u8; 64];
        let put = |bytes: &mut Vec<u8>, at: u64, v: u64| {
            let o = (at - base) as usize;
            bytes[o..o + 8].copy_from_slice(&v.to_ne_bytes());
        };
        put(&mut bytes, 0x1000, 0x1010);
        put(&mut bytes, 0x1008, 0xaaaa);
        put(&mut bytes, 0x1010, 0);
        put(&mut bytes, 0x1018, 0xbbbb);
        let stack = StackCopy {
            base,
            bytes,
            truncated: false,
        };
        assert_eq!(frame_pointer_walk(0x1000, &stack), 3);
        assert_eq!(
            frame_pointer_walk(0x9999, &stack),
            1,
            "fp outside the stack"
        );
    }
}
