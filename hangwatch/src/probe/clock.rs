//! Calibrating the probes' clock (`hangwatch_ebpf::JiffiesClock`): the scheduler probe
//! stamps switches with `jiffies` turned into CLOCK_MONOTONIC ns, because reading the
//! monotonic clock itself is a helper call that cost about 70 ns per context switch here
//! (docs/design.md, "The per-switch cost"). Turning jiffies into ns needs the kernel's HZ,
//! which userspace cannot read, and where jiffies stand against the monotonic clock: both
//! come from two `sample_clocks` reads (jiffies and the monotonic clock read together in
//! the kernel) at least [`SPAN`] apart.
use std::time::{Duration, Instant};

use hangwatch_ebpf::{ClockSample, JiffiesClock};

/// How far apart the first and last samples must be: at HZ=250 that is 25 ticks, so the
/// ±1 tick of each reading cannot make one HZ look like another.
pub const SPAN: Duration = Duration::from_millis(100);

/// The `CONFIG_HZ` values Linux offers (kernel/Kconfig.hz). Another HZ is refused rather
/// than guessed: a tick length off by a few percent would put stamps that far off the
/// monotonic clock, more with every hour.
const KNOWN_HZ: [u64; 4] = [100, 250, 300, 1000];

/// Samples taken so far; the first one starts the span.
#[derive(Debug)]
pub struct Calibration {
    started: Instant,
    samples: Vec<ClockSample>,
}

impl Calibration {
    pub fn start(first: ClockSample) -> Self {
        Self {
            started: Instant::now(),
            samples: vec![first],
        }
    }

    pub fn add(&mut self, sample: ClockSample) {
        self.samples.push(sample);
    }

    /// How much longer to wait before the last sample.
    pub fn remaining(&self) -> Duration {
        SPAN.saturating_sub(self.started.elapsed())
    }

    pub fn clock(&self) -> Result<JiffiesClock, ClockError> {
        derive(&self.samples)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ClockError {
    #[error("fewer than two clock samples")]
    TooFewSamples,
    #[error("jiffies did not advance over {span_ms} ms (from {first} to {last})")]
    Stalled { span_ms: u64, first: u64, last: u64 },
    #[error("jiffies advanced at {hz:.1} per second, no known HZ (100, 250, 300, 1000) within 8%")]
    UnknownHz { hz: f64 },
}

/// The clock that maps the samples' jiffies onto their monotonic times: HZ from the rate
/// between the first and the last sample, snapped to a known value, and the offset from the
/// sample read closest after a tick (the smallest `ns - jiffies * tick`), so that a stamp
/// is at most one tick before the true time, never after it.
pub fn derive(samples: &[ClockSample]) -> Result<JiffiesClock, ClockError> {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return Err(ClockError::TooFewSamples);
    };
    if samples.len() < 2 {
        return Err(ClockError::TooFewSamples);
    }
    let ticks = last.jiffies.wrapping_sub(first.jiffies);
    let span_ns = last.ns.saturating_sub(first.ns);
    if ticks == 0 || ticks > 1 << 40 || span_ns == 0 {
        return Err(ClockError::Stalled {
            span_ms: span_ns / 1_000_000,
            first: first.jiffies,
            last: last.jiffies,
        });
    }
    let hz = ticks as f64 * 1e9 / span_ns as f64;
    // The nearest known HZ, if the rate is within 8% of it (±1 tick over 25 is 4%).
    let known = KNOWN_HZ
        .into_iter()
        .min_by(|a, b| (hz - *a as f64).abs().total_cmp(&(hz - *b as f64).abs()))
        .filter(|&k| (hz - k as f64).abs() <= k as f64 * 0.08)
        .ok_or(ClockError::UnknownHz { hz })?;
    // TICK_NSEC: how the kernel steps jiffies along the monotonic clock.
    let tick_ns = (1_000_000_000 + known / 2) / known;
    let jiffies0 = first.jiffies;
    let ns0 = samples
        .iter()
        .map(|s| {
            s.ns.wrapping_sub(s.jiffies.wrapping_sub(jiffies0).wrapping_mul(tick_ns)) as i64
        })
        .min()
        .unwrap_or(first.ns as i64) as u64;
    Ok(JiffiesClock {
        jiffies0,
        ns0,
        tick_ns,
        _reserved: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Samples of a kernel at `hz` whose jiffies were `j0` at monotonic time 0, each read
    /// `late_ns` after the tick that set it.
    fn samples(hz: u64, j0: u64, at_ns: &[u64], late_ns: u64) -> Vec<ClockSample> {
        let tick = (1_000_000_000 + hz / 2) / hz;
        at_ns
            .iter()
            .map(|&t| ClockSample {
                jiffies: j0.wrapping_add(t / tick),
                ns: t / tick * tick + late_ns,
            })
            .collect()
    }

    #[test]
    fn finds_hz_and_puts_stamps_at_the_tick() {
        for hz in [100, 250, 300, 1000] {
            // jiffies start 300 s before the 32-bit wrap, as the kernel's do.
            let j0 = (1u64 << 32) - 300 * hz;
            let s = samples(hz, j0, &[5_000_000_123, 5_100_000_456], 0);
            let clock = derive(&s).expect("calibrates");
            assert_eq!(clock.tick_ns, (1_000_000_000 + hz / 2) / hz, "hz {hz}");
            for sample in &s {
                assert_eq!(clock.ns(sample.jiffies), sample.ns, "hz {hz}");
            }
            // An hour later, still on the tick: no drift.
            let later = samples(hz, j0, &[3_605_000_000_000], 0)[0];
            assert_eq!(clock.ns(later.jiffies), later.ns, "hz {hz}");
        }
    }

    #[test]
    fn a_late_reading_does_not_move_stamps_after_the_time() {
        let hz = 250;
        let mut s = samples(hz, 1000, &[1_000_000_000], 3_000_000);
        s.extend(samples(hz, 1000, &[1_104_000_000], 10_000));
        let clock = derive(&s).expect("calibrates");
        for sample in &s {
            assert!(clock.ns(sample.jiffies) <= sample.ns);
            assert!(sample.ns - clock.ns(sample.jiffies) < clock.tick_ns);
        }
    }

    #[test]
    fn refuses_what_it_cannot_trust() {
        assert_eq!(derive(&[]), Err(ClockError::TooFewSamples));
        let one = samples(250, 1000, &[1_000_000_000], 0);
        assert_eq!(derive(&one), Err(ClockError::TooFewSamples));
        let stalled = [
            ClockSample {
                jiffies: 5,
                ns: 1_000_000_000,
            },
            ClockSample {
                jiffies: 5,
                ns: 1_100_000_000,
            },
        ];
        assert!(matches!(derive(&stalled), Err(ClockError::Stalled { .. })));
        // 175 ticks a second is no HZ Linux offers.
        let odd = [
            ClockSample { jiffies: 0, ns: 0 },
            ClockSample {
                jiffies: 35,
                ns: 200_000_000,
            },
        ];
        assert!(matches!(derive(&odd), Err(ClockError::UnknownHz { .. })));
    }
}
