//! What leaves the daemon without its secrets: raw kernel addresses (a KASLR bypass for
//! whoever reads them) and command-line arguments (passwords and tokens passed as flags).
//!
//! Kernel frames keep their symbol, offset and module, which is what people read; only the
//! absolute address goes. The API strips per caller (`api::access`); stdout and the webhook
//! strip when `--redact-kernel-addresses` is on. Command lines are redacted for every
//! output alike with `--redact-cmdline`.
use super::HangEvent;
use crate::{
    stack::{Frame, ThreadStacks},
    state::Wait,
};

/// What stands for each redacted argument.
pub const REDACTED: &str = "<redacted>";

/// What the daemon's outputs leave out (`hangwatch run --redact-*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Redaction {
    /// Raw kernel addresses leave out of stdout and webhook events.
    pub kernel_addresses: bool,
    /// Command lines keep only argv[0], in events, the API and the metrics.
    pub cmdline: bool,
}

/// Drops the absolute address of every kernel frame: the kernel's layout stays secret,
/// the symbol and offset still say where the thread is.
fn strip_frames(frames: &mut [Frame]) {
    for frame in frames {
        frame.address.clear();
    }
}

/// A wait channel is a symbol name (`/proc/PID/wchan` prints `%ps`); anything that reads as
/// a number would be an address, and goes.
pub fn strip_wchan(wait: &mut Wait) {
    let numeric = wait.wchan.as_deref().is_some_and(|w| {
        let digits = w.strip_prefix("0x").unwrap_or(w);
        !digits.is_empty() && digits.chars().all(|c| c.is_ascii_hexdigit())
    });
    if numeric {
        wait.wchan = None;
    }
}

/// Removes the raw kernel addresses of one thread's stacks.
pub fn strip_stacks(stacks: &mut ThreadStacks) {
    strip_frames(&mut stacks.kernel_stack);
}

/// Removes every raw kernel address from an event: its stacks, its deadlock cycle's and
/// its exiting threads' stacks, and wait channels.
pub fn strip_kernel_addresses(event: &mut HangEvent) {
    strip_stacks(&mut event.stacks);
    strip_wchan(&mut event.wait);
    for member in event.cycle.iter_mut().chain(event.threads.iter_mut()) {
        strip_frames(&mut member.kernel_stack);
        strip_wchan(&mut member.wait);
    }
    for holder in &mut event.blocked_on {
        strip_frames(&mut holder.kernel_stack);
    }
}

/// Keeps argv[0] (what runs) and replaces each argument by [`REDACTED`].
pub fn redact_cmdline(cmdline: &mut [String]) {
    for arg in cmdline.iter_mut().skip(1) {
        REDACTED.clone_into(arg);
    }
}

impl Redaction {
    /// The event as every output sees it (`--redact-cmdline`).
    pub fn everywhere(self, event: &mut HangEvent) {
        if self.cmdline {
            redact_cmdline(&mut event.cmdline);
        }
    }

    /// The event as stdout and the webhook see it (`--redact-kernel-addresses`).
    pub fn outbound(self, event: &mut HangEvent) {
        if self.kernel_addresses {
            strip_kernel_addresses(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        sink::{CycleMember, EventType, event::example},
        stack::FrameTag,
    };

    fn kernel_frame(address: &str, symbol: &str) -> Frame {
        Frame {
            address: address.into(),
            symbol: Some(symbol.into()),
            offset: Some(0x1e),
            module: Some("kernel".into()),
            file: None,
            line: None,
            inlined: false,
            python: false,
            tag: FrameTag::Kernel,
        }
    }

    #[test]
    fn kernel_addresses_go_and_symbols_stay() {
        let mut event = example(EventType::Hang, "a", 1, 10);
        event.stacks.kernel_stack = vec![kernel_frame("0xffffffff820cb41e", "futex_wait")];
        event.wait.wchan = Some("futex_wait_queue".into());
        let mut member = CycleMember {
            tid: 2,
            thread_name: "b".into(),
            wait: event.wait.clone(),
            blocked_here: None,
            user_stack: Vec::new(),
            kernel_stack: vec![kernel_frame("0xffffffff81000000", "schedule")],
            stacks_error: None,
            signal_handler: None,
        };
        member.wait.wchan = Some("0xffffffff81234567".into());
        event.cycle.push(member.clone());
        event.threads.push(member);
        strip_kernel_addresses(&mut event);
        let json = serde_json::to_string(&event).expect("serializes");
        assert!(!json.contains("0xffffffff"), "{json}");
        assert!(json.contains("\"symbol\":\"futex_wait\""), "{json}");
        assert!(json.contains("\"offset\":30"), "{json}");
        assert_eq!(event.wait.wchan.as_deref(), Some("futex_wait_queue"));
        assert_eq!(event.cycle[0].wait.wchan, None);
    }

    #[test]
    fn cmdline_keeps_argv0() {
        let mut event = example(EventType::Hang, "a", 1, 10);
        event.cmdline = vec!["/usr/bin/psql".into(), "--password=hunter2".into()];
        Redaction {
            cmdline: true,
            ..Redaction::default()
        }
        .everywhere(&mut event);
        assert_eq!(event.cmdline, ["/usr/bin/psql", REDACTED]);
        let mut untouched = example(EventType::Hang, "a", 1, 10);
        untouched.stacks.kernel_stack = vec![kernel_frame("0xffffffff820cb41e", "x")];
        Redaction::default().outbound(&mut untouched);
        assert_eq!(
            untouched.stacks.kernel_stack[0].address,
            "0xffffffff820cb41e"
        );
    }
}
