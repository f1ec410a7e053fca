//! The kernel's timestamps (`bpf_ktime_get_ns`) are CLOCK_MONOTONIC; reports want wall time.
use std::time::{Duration, SystemTime};

/// CLOCK_MONOTONIC in ns, the clock of every timestamp the probes record.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time the calling thread has used (user and system).
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_THREAD_CPUTIME_ID always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The wall-clock time of monotonic instant `mono_ns`, given a pair read together.
pub fn wall_time_of(mono_ns: u64, now_mono_ns: u64, now_wall: SystemTime) -> SystemTime {
    now_wall
        .checked_sub(Duration::from_nanos(now_mono_ns.saturating_sub(mono_ns)))
        .unwrap_or(now_wall)
}

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// `budget`, stretched by the factor in `HANGWATCH_TEST_TIME_SCALE` (1 when unset): the time
/// the daemon gives its own work (a stack read, a report, an answer) rather than a wait the
/// user set. `cargo xtask vmtest` runs the kernel suite under emulation (QEMU TCG, where
/// CPU-bound work is 10 to 20 times slower) and sets it, as the test harness stretches its
/// own waits, so that unwinding a stack there gets the share of the machine it gets natively
/// and the tests can assert on the same frames. Thresholds, the scan interval and every
/// duration a user sets are never stretched.
pub fn stretched(budget: Duration) -> Duration {
    static SCALE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let scale = *SCALE.get_or_init(|| {
        std::env::var("HANGWATCH_TEST_TIME_SCALE")
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .unwrap_or(1)
            .clamp(1, 100)
    });
    budget.saturating_mul(scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_monotonic_instants_to_wall_time() {
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let t = wall_time_of(5_000_000_000, 7_500_000_000, wall);
        assert_eq!(rfc3339(t), "1970-01-01T00:16:37.500Z");
    }
}
