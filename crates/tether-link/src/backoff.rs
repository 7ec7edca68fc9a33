//! Reconnect waits (PROTOCOL.md §2): normal failures 1 s doubling to 300 s; after HTTP 401,
//! 60 s doubling to 1800 s; after `disconnect`, `max(retry_after_sec, 1)` and the backoff
//! resets; a link that had registered and then dropped waits 1 s. Every wait gets uniform
//! ±25 % jitter from a seedable source, so tests can replay any sequence.

use std::time::Duration;

pub const NORMAL_MIN: Duration = Duration::from_secs(1);
pub const NORMAL_MAX: Duration = Duration::from_secs(300);
pub const AUTH_MIN: Duration = Duration::from_secs(60);
pub const AUTH_MAX: Duration = Duration::from_secs(1800);
/// Jitter: each wait is drawn uniformly from [w × (1 − J), w × (1 + J)].
pub const JITTER: f64 = 0.25;

/// Why the link is waiting before it dials again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// Dial failed, handshake failed or timed out, the register was refused, the connection
    /// broke before registering.
    Failure,
    /// The hub answered the upgrade with HTTP 401.
    Unauthorized,
    /// The hub sent `disconnect` with this `retry_after_sec`.
    Disconnect { retry_after_sec: u64 },
    /// The link had registered, then dropped.
    Dropped,
}

/// A small, seedable pseudo-random source (SplitMix64). Not for secrets: only jitter.
#[derive(Clone, Debug)]
pub struct SeededRng(u64);

impl SeededRng {
    pub fn new(seed: u64) -> SeededRng {
        SeededRng(seed)
    }

    /// Seeded from the clock and the process id.
    pub fn from_entropy() -> SeededRng {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        SeededRng(nanos ^ (u64::from(std::process::id()) << 32))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The backoff state: the next base wait.
#[derive(Clone, Debug)]
pub struct Backoff {
    next: Duration,
    rng: SeededRng,
}

impl Backoff {
    pub fn new(rng: SeededRng) -> Backoff {
        Backoff {
            next: NORMAL_MIN,
            rng,
        }
    }

    /// The base (un-jittered) wait the next plain failure would get.
    pub fn next_base(&self) -> Duration {
        self.next
    }

    /// A successful registration: the next failure starts from the bottom again.
    pub fn reset(&mut self) {
        self.next = NORMAL_MIN;
    }

    /// The base wait for `cause`, updating the state. Exposed for property tests.
    pub fn base_wait(&mut self, cause: Cause) -> Duration {
        match cause {
            Cause::Failure => {
                let wait = self.next.clamp(NORMAL_MIN, NORMAL_MAX);
                self.next = (wait * 2).min(NORMAL_MAX);
                wait
            }
            Cause::Unauthorized => {
                let wait = self.next.clamp(AUTH_MIN, AUTH_MAX);
                self.next = (wait * 2).min(AUTH_MAX);
                wait
            }
            Cause::Disconnect { retry_after_sec } => {
                self.next = NORMAL_MIN;
                Duration::from_secs(retry_after_sec.max(1))
            }
            Cause::Dropped => {
                self.next = NORMAL_MIN * 2;
                NORMAL_MIN
            }
        }
    }

    /// The jittered wait before the next dial.
    pub fn wait(&mut self, cause: Cause) -> Duration {
        let base = self.base_wait(cause);
        jitter(base, &mut self.rng)
    }
}

/// `base` scaled by a uniform factor in [1 − J, 1 + J].
pub fn jitter(base: Duration, rng: &mut SeededRng) -> Duration {
    let factor = 1.0 - JITTER + 2.0 * JITTER * rng.next_f64();
    base.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn cause() -> impl Strategy<Value = Cause> {
        prop_oneof![
            Just(Cause::Failure),
            Just(Cause::Unauthorized),
            Just(Cause::Dropped),
            (0u64..4000).prop_map(|s| Cause::Disconnect { retry_after_sec: s }),
        ]
    }

    proptest! {
        /// Every wait lies within ±25 % of the table's base, and the table holds for any
        /// sequence of causes.
        #[test]
        fn waits_follow_the_table(seed in any::<u64>(), causes in proptest::collection::vec(cause(), 1..60)) {
            let mut b = Backoff::new(SeededRng::new(seed));
            let mut model_next = NORMAL_MIN;
            for c in causes {
                let expected_base = match c {
                    Cause::Failure => { let w = model_next.clamp(NORMAL_MIN, NORMAL_MAX); model_next = (w * 2).min(NORMAL_MAX); w }
                    Cause::Unauthorized => { let w = model_next.clamp(AUTH_MIN, AUTH_MAX); model_next = (w * 2).min(AUTH_MAX); w }
                    Cause::Disconnect { retry_after_sec } => { model_next = NORMAL_MIN; Duration::from_secs(retry_after_sec.max(1)) }
                    Cause::Dropped => { model_next = NORMAL_MIN * 2; NORMAL_MIN }
                };
                let w = b.wait(c);
                prop_assert!(w >= expected_base.mul_f64(0.75) && w <= expected_base.mul_f64(1.25),
                    "{c:?}: wait {w:?} outside ±25% of {expected_base:?}");
                // Absolute bounds of the table.
                match c {
                    Cause::Failure => prop_assert!(w >= Duration::from_millis(750) && w <= Duration::from_secs(375)),
                    Cause::Unauthorized => prop_assert!(w >= Duration::from_secs(45) && w <= Duration::from_secs(2250)),
                    Cause::Dropped => prop_assert!(w >= Duration::from_millis(750) && w <= Duration::from_millis(1250)),
                    Cause::Disconnect { .. } => prop_assert!(w >= Duration::from_millis(750)),
                }
            }
        }

        /// Failures alone double from 1 s and stop at 300 s.
        #[test]
        fn failures_double_to_the_cap(seed in any::<u64>(), n in 1usize..20) {
            let mut b = Backoff::new(SeededRng::new(seed));
            let bases: Vec<u64> = (0..n).map(|_| b.base_wait(Cause::Failure).as_secs()).collect();
            for (i, base) in bases.iter().enumerate() {
                prop_assert_eq!(*base, (1u64 << i.min(9)).min(300));
            }
        }
    }

    #[test]
    fn unauthorized_starts_at_sixty_and_doubles_to_1800() {
        let mut b = Backoff::new(SeededRng::new(1));
        let bases: Vec<u64> = (0..7)
            .map(|_| b.base_wait(Cause::Unauthorized).as_secs())
            .collect();
        assert_eq!(bases, vec![60, 120, 240, 480, 960, 1800, 1800]);
    }

    #[test]
    fn the_same_seed_gives_the_same_waits() {
        let waits = |seed| {
            let mut b = Backoff::new(SeededRng::new(seed));
            (0..10).map(|_| b.wait(Cause::Failure)).collect::<Vec<_>>()
        };
        assert_eq!(waits(42), waits(42));
        assert_ne!(waits(42), waits(43));
    }

    #[test]
    fn jitter_covers_both_sides() {
        let mut rng = SeededRng::new(7);
        let base = Duration::from_secs(100);
        let samples: Vec<Duration> = (0..2000).map(|_| jitter(base, &mut rng)).collect();
        assert!(samples.iter().any(|d| *d < Duration::from_secs(80)));
        assert!(samples.iter().any(|d| *d > Duration::from_secs(120)));
        assert!(
            samples
                .iter()
                .all(|d| *d >= Duration::from_secs(75) && *d <= Duration::from_secs(125))
        );
    }
}
