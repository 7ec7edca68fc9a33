//! Thresholds and the alert lifecycle. Pure: no I/O, no clock — the caller passes the time.
//!
//! * [`evaluate`] / [`judge`] map a [`Value`] to a [`Status`] with [`Thresholds`].
//! * [`overlay`] merges thresholds (an instance's settings over a plugin's defaults).
//! * [`step`] advances one alert key's [`AlertState`] by one observation and says which event,
//!   if any, to send, following the [`Lifecycle`] rules.
//!
//! Time is a [`Duration`] since any fixed origin (the engine uses the time since it started);
//! it must not go backwards (if it does, elapsed times count as zero).

use crate::plugin::{Status, Thresholds, Value};
use std::time::Duration;

/// Which threshold bound a number crossed, e.g. `critical_ge 90`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bound {
    /// The config key: `critical_ge`, `warn_lt`, …
    pub key: &'static str,
    /// The configured limit.
    pub limit: f64,
}

impl std::fmt::Display for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.key, self.limit)
    }
}

/// A status with the bound that produced it (none for `Ok` or for a plugin's own verdict).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Verdict {
    pub status: Status,
    pub bound: Option<Bound>,
}

/// The status of a value: a plugin's own verdict ([`Value::Status`]) is taken as is; a number
/// is `Critical` if it crosses any `critical_*` bound, else `Warning` if it crosses any `warn_*`
/// bound, else `Ok`. `ge` is `>=`, `gt` is `>`, `le` is `<=`, `lt` is `<`. NaN crosses nothing.
pub fn evaluate(value: &Value, t: &Thresholds) -> Status {
    judge(value, t).status
}

/// [`evaluate`], also naming the bound that fired (the first crossed, in the order
/// `ge`, `gt`, `le`, `lt`).
pub fn judge(value: &Value, t: &Thresholds) -> Verdict {
    let x = match value {
        Value::Status(s) => {
            return Verdict {
                status: *s,
                bound: None,
            };
        }
        Value::Number(x) => *x,
    };
    let critical = [
        ("critical_ge", t.critical_ge, Cmp::Ge),
        ("critical_gt", t.critical_gt, Cmp::Gt),
        ("critical_le", t.critical_le, Cmp::Le),
        ("critical_lt", t.critical_lt, Cmp::Lt),
    ];
    let warn = [
        ("warn_ge", t.warn_ge, Cmp::Ge),
        ("warn_gt", t.warn_gt, Cmp::Gt),
        ("warn_le", t.warn_le, Cmp::Le),
        ("warn_lt", t.warn_lt, Cmp::Lt),
    ];
    for (status, bounds) in [(Status::Critical, critical), (Status::Warning, warn)] {
        for (key, limit, cmp) in bounds {
            if let Some(limit) = limit
                && cmp.crossed(x, limit)
            {
                return Verdict {
                    status,
                    bound: Some(Bound { key, limit }),
                };
            }
        }
    }
    Verdict {
        status: Status::Ok,
        bound: None,
    }
}

#[derive(Clone, Copy)]
enum Cmp {
    Ge,
    Gt,
    Le,
    Lt,
}

impl Cmp {
    fn crossed(self, x: f64, limit: f64) -> bool {
        match self {
            Cmp::Ge => x >= limit,
            Cmp::Gt => x > limit,
            Cmp::Le => x <= limit,
            Cmp::Lt => x < limit,
        }
    }
}

/// `over`'s bounds where set, else `base`'s (field by field).
pub fn overlay(base: &Thresholds, over: &Thresholds) -> Thresholds {
    Thresholds {
        warn_ge: over.warn_ge.or(base.warn_ge),
        critical_ge: over.critical_ge.or(base.critical_ge),
        warn_gt: over.warn_gt.or(base.warn_gt),
        critical_gt: over.critical_gt.or(base.critical_gt),
        warn_le: over.warn_le.or(base.warn_le),
        critical_le: over.critical_le.or(base.critical_le),
        warn_lt: over.warn_lt.or(base.warn_lt),
        critical_lt: over.critical_lt.or(base.critical_lt),
    }
}

/// The lifecycle rules of an alert key (an instance's `for_duration`, `repeat_interval`,
/// `repeat_number`, `recovery`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifecycle {
    /// How long a non-Ok status must hold, uninterrupted by Ok, before it fires.
    pub for_duration: Duration,
    /// Re-send a firing alert whose severity has not changed this often (`None` or zero: never).
    pub repeat_interval: Option<Duration>,
    /// At most this many reminders per severity (`None`: unlimited).
    pub repeat_number: Option<u32>,
    /// Send an `Ok` event when a firing alert clears.
    pub recovery: bool,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            for_duration: Duration::ZERO,
            repeat_interval: None,
            repeat_number: None,
            recovery: true,
        }
    }
}

/// The state of one alert key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AlertState {
    /// Nothing wrong (or nothing seen yet).
    #[default]
    Idle,
    /// A non-Ok status has been observed continuously since `since`, not yet for long enough.
    Pending { since: Duration },
    /// An event with `status` has been sent; `last_sent` is when the last event (first,
    /// severity change or reminder) was sent; `reminders` counts reminders at this severity.
    Firing {
        status: Status,
        last_sent: Duration,
        reminders: u32,
    },
}

impl AlertState {
    /// The severity being alerted on, if firing.
    pub fn firing(&self) -> Option<Status> {
        match self {
            AlertState::Firing { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn is_idle(&self) -> bool {
        matches!(self, AlertState::Idle)
    }
}

/// Advances `state` by one observation at time `now`; returns the status of the event to
/// send, if any.
///
/// * Idle + non-Ok: pending from now (fires at once if `for_duration` is zero).
/// * Pending: fires with the observed status once it has been non-Ok for `for_duration`
///   (Warning ↔ Critical ↔ Info changes keep the pending start); Ok resets silently.
/// * Firing: a different non-Ok status is sent at once (and resets the reminder count); the
///   same status is re-sent when `repeat_interval` has passed since the last send, at most
///   `repeat_number` times; Ok sends an Ok recovery (unless `recovery` is false) and resets.
///
/// `Info` counts as a non-Ok severity like `Warning` and `Critical`.
pub fn step(
    state: &mut AlertState,
    observed: Status,
    now: Duration,
    rules: &Lifecycle,
) -> Option<Status> {
    match (*state, observed) {
        (AlertState::Idle, Status::Ok) => None,
        (AlertState::Idle, s) => {
            if rules.for_duration.is_zero() {
                *state = fire(s, now);
                Some(s)
            } else {
                *state = AlertState::Pending { since: now };
                None
            }
        }
        (AlertState::Pending { .. }, Status::Ok) => {
            *state = AlertState::Idle;
            None
        }
        (AlertState::Pending { since }, s) => {
            if now.saturating_sub(since) >= rules.for_duration {
                *state = fire(s, now);
                Some(s)
            } else {
                None
            }
        }
        (AlertState::Firing { .. }, Status::Ok) => {
            *state = AlertState::Idle;
            rules.recovery.then_some(Status::Ok)
        }
        (
            AlertState::Firing {
                status,
                last_sent,
                reminders,
            },
            s,
        ) => {
            if s != status {
                *state = fire(s, now);
                return Some(s);
            }
            let interval = rules.repeat_interval.filter(|d| !d.is_zero())?;
            let allowed = rules.repeat_number.is_none_or(|n| reminders < n);
            if allowed && now.saturating_sub(last_sent) >= interval {
                *state = AlertState::Firing {
                    status,
                    last_sent: now,
                    reminders: reminders.saturating_add(1),
                };
                Some(s)
            } else {
                None
            }
        }
    }
}

fn fire(status: Status, now: Duration) -> AlertState {
    AlertState::Firing {
        status,
        last_sent: now,
        reminders: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn bounds_are_exact() {
        let t = Thresholds {
            warn_ge: Some(80.0),
            critical_gt: Some(90.0),
            ..Thresholds::default()
        };
        assert_eq!(evaluate(&Value::Number(79.9), &t), Status::Ok);
        assert_eq!(evaluate(&Value::Number(80.0), &t), Status::Warning);
        assert_eq!(evaluate(&Value::Number(90.0), &t), Status::Warning);
        assert_eq!(evaluate(&Value::Number(90.1), &t), Status::Critical);
        let v = judge(&Value::Number(95.0), &t);
        assert_eq!(
            v.bound.map(|b| b.to_string()),
            Some("critical_gt 90".into())
        );
    }

    #[test]
    fn pending_survives_severity_changes() {
        let rules = Lifecycle {
            for_duration: secs(60),
            ..Lifecycle::default()
        };
        let mut s = AlertState::Idle;
        assert_eq!(step(&mut s, Status::Warning, secs(0), &rules), None);
        assert_eq!(step(&mut s, Status::Critical, secs(30), &rules), None);
        assert_eq!(
            step(&mut s, Status::Critical, secs(60), &rules),
            Some(Status::Critical)
        );
        assert_eq!(step(&mut s, Status::Ok, secs(61), &rules), Some(Status::Ok));
        assert!(s.is_idle());
    }
}
