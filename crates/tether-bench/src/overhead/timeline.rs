//! One clock for the whole process, per-chunk instants, the pacer, and percentiles.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Nanoseconds since one shared epoch (everything runs in this process).
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            epoch: Instant::now(),
        }
    }

    /// Never 0: 0 marks "not stamped" in [`Stamps`].
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }
}

/// One instant per chunk (indexed by its sequence number), written once, lock-free.
pub struct Stamps {
    ns: Vec<AtomicU64>,
    /// Stamps refused because the chunk was stamped already (or its number is out of range).
    extra: AtomicU64,
}

impl Stamps {
    pub fn new(n: u64) -> Arc<Stamps> {
        Arc::new(Stamps {
            ns: (0..n).map(|_| AtomicU64::new(0)).collect(),
            extra: AtomicU64::new(0),
        })
    }

    pub fn set(&self, seq: u64, ns: u64) {
        let slot = usize::try_from(seq).ok().and_then(|i| self.ns.get(i));
        match slot {
            Some(s)
                if s.compare_exchange(0, ns, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok() => {}
            _ => {
                self.extra.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn get(&self, seq: usize) -> Option<u64> {
        self.ns
            .get(seq)
            .map(|s| s.load(Ordering::Relaxed))
            .filter(|v| *v != 0)
    }

    pub fn len(&self) -> usize {
        self.ns.len()
    }

    /// Chunks stamped.
    pub fn count(&self) -> u64 {
        self.ns
            .iter()
            .filter(|s| s.load(Ordering::Relaxed) != 0)
            .count() as u64
    }

    /// Duplicate or out-of-range stamps (should be 0).
    pub fn extra(&self) -> u64 {
        self.extra.load(Ordering::Relaxed)
    }

    /// Mean spacing of consecutive stamps, in microseconds (the cadence actually achieved).
    pub fn mean_interval_us(&self) -> f64 {
        let (first, last) = (self.get(0), self.get(self.len().saturating_sub(1)));
        match (first, last) {
            (Some(a), Some(b)) if self.len() > 1 => {
                b.saturating_sub(a) as f64 / 1e3 / (self.len() - 1) as f64
            }
            _ => 0.0,
        }
    }
}

/// `later - earlier` per chunk, in microseconds, for chunks stamped in both.
pub fn deltas_us(earlier: &Stamps, later: &Stamps) -> Vec<f64> {
    (0..earlier.len().min(later.len()))
        .filter_map(|i| {
            let (a, b) = (earlier.get(i)?, later.get(i)?);
            Some((b as f64 - a as f64) / 1e3)
        })
        .collect()
}

/// Hands out sequence numbers `0..n`, `interval` apart, from a thread of its own: tokio's
/// timer has a 1 ms resolution, too coarse for a 200 µs cadence. The thread follows a
/// schedule (number `i` at `start + i × interval`), so the oversleeping of each wake-up does
/// not add up; when it falls behind by more than half an interval it starts the schedule
/// afresh rather than catching up in a burst. Each number comes with the instant it was
/// handed out; the cadence achieved is reported from the model server's send instants.
pub fn pacer(
    n: u64,
    interval: Duration,
    clock: Clock,
) -> anyhow::Result<mpsc::UnboundedReceiver<(u64, u64)>> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("overhead-pacer".into())
        .spawn(move || {
            let mut next = Instant::now();
            for seq in 0..n {
                if seq > 0 && !interval.is_zero() {
                    next += interval;
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    } else if now - next > interval / 2 {
                        next = now;
                    }
                }
                if tx.send((seq, clock.now_ns())).is_err() {
                    return;
                }
            }
        })?;
    Ok(rx)
}

/// Nearest-rank quantiles of one sample.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Quantiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Quantiles {
    pub fn of(values: &[f64]) -> Quantiles {
        if values.is_empty() {
            return Quantiles::default();
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let rank = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
            v[rank]
        };
        Quantiles {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: v[v.len() - 1],
        }
    }

    /// Every quantile lowered by `by`.
    pub fn minus(self, by: f64) -> Quantiles {
        Quantiles {
            p50: self.p50 - by,
            p90: self.p90 - by,
            p99: self.p99 - by,
            max: self.max - by,
        }
    }

    /// The median of each quantile over several runs.
    pub fn median_of(runs: &[Quantiles]) -> Quantiles {
        let m = |f: fn(&Quantiles) -> f64| median(runs.iter().map(f).collect());
        Quantiles {
            p50: m(|q| q.p50),
            p90: m(|q| q.p90),
            p99: m(|q| q.p99),
            max: m(|q| q.max),
        }
    }
}

pub(crate) use crate::median;

/// Share of `values` above `limit`.
pub fn share_above(values: &[f64], limit: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.iter().filter(|v| **v > limit).count() as f64 / values.len() as f64
}

/// The sequence number at the start of `text` (`"123 "` → 123).
pub fn leading_number(text: &str) -> Option<u64> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    text.get(..digits)?.parse().ok()
}

/// The chunk text carrying sequence number `seq`: the number, then a space (a short token).
pub fn chunk_text(seq: u64) -> String {
    format!("{seq} ")
}

/// Time this process's live threads have spent runnable but waiting for a CPU, in
/// nanoseconds (`/proc/self/task/*/schedstat`); `None` where that is not available. On a
/// shared machine its growth during a run says how much the run queued behind others.
pub fn runqueue_wait_ns() -> Option<u64> {
    let mut total = 0u64;
    for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path().join("schedstat")) else {
            continue;
        };
        if let Some(wait) = text
            .split_whitespace()
            .nth(1)
            .and_then(|w| w.parse::<u64>().ok())
        {
            total += wait;
        }
    }
    Some(total)
}

/// The 1-minute load average.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let q = Quantiles::of(&v);
        assert_eq!((q.p50, q.p90, q.p99, q.max), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(Quantiles::of(&[]).p99, 0.0);
        assert_eq!(median(vec![3.0, 1.0, 2.0, 10.0]), 2.5);
    }

    #[test]
    fn stamps_are_written_once() {
        let s = Stamps::new(3);
        s.set(1, 10);
        s.set(1, 20);
        s.set(7, 5);
        assert_eq!(
            (s.get(0), s.get(1), s.count(), s.extra()),
            (None, Some(10), 1, 2)
        );
    }

    #[test]
    fn chunk_text_round_trips() {
        assert_eq!(leading_number(&chunk_text(4711)), Some(4711));
        assert_eq!(leading_number("x"), None);
    }
}
