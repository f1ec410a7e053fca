//! When updates of a long episode are sent: at 2x, 4x, 8x... the threshold, so a hang that
//! lasts an hour produces a dozen lines, not thousands; never less often than every
//! `MAX_UPDATE_INTERVAL`.
use std::time::Duration;

pub const MAX_UPDATE_INTERVAL: Duration = Duration::from_secs(600);

/// Wait duration (ns since the wait began) at which update number `sent + 1` is due.
pub fn next_update_after(threshold: Duration, sent: u32) -> u64 {
    // Each step is as long as the wait so far (doubling it), at most MAX_UPDATE_INTERVAL.
    let mut at = threshold.max(Duration::from_millis(1));
    for _ in 0..=sent {
        at = at.saturating_add(at.min(MAX_UPDATE_INTERVAL));
    }
    u64::try_from(at.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_then_caps() {
        let s = |t: u64, n| Duration::from_nanos(next_update_after(Duration::from_secs(t), n));
        assert_eq!(s(1, 0), Duration::from_secs(2));
        assert_eq!(s(1, 1), Duration::from_secs(4));
        assert_eq!(s(1, 2), Duration::from_secs(8));
        // 10 s threshold: 20, 40, 80, 160, 320, 640, then +600 s steps.
        let secs: Vec<u64> = (0..8).map(|n| s(10, n).as_secs()).collect();
        assert_eq!(secs, vec![20, 40, 80, 160, 320, 640, 1240, 1840]);
    }
}
