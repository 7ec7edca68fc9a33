//! Property tests of the pure rules: threshold evaluation and the alert lifecycle.

use proptest::prelude::*;
use std::time::Duration;
use tether_checks::plugin::{Status, Thresholds, Value};
use tether_checks::rules::{AlertState, Lifecycle, evaluate, judge, overlay, step};

fn status() -> impl Strategy<Value = Status> {
    prop_oneof![
        4 => Just(Status::Ok),
        1 => Just(Status::Info),
        3 => Just(Status::Warning),
        3 => Just(Status::Critical),
    ]
}

fn bound() -> impl Strategy<Value = Option<f64>> {
    prop_oneof![Just(None), (-100i32..100).prop_map(|x| Some(f64::from(x)))]
}

fn thresholds() -> impl Strategy<Value = Thresholds> {
    (
        (bound(), bound(), bound(), bound()),
        (bound(), bound(), bound(), bound()),
    )
        .prop_map(|((wge, cge, wgt, cgt), (wle, cle, wlt, clt))| Thresholds {
            warn_ge: wge,
            critical_ge: cge,
            warn_gt: wgt,
            critical_gt: cgt,
            warn_le: wle,
            critical_le: cle,
            warn_lt: wlt,
            critical_lt: clt,
        })
}

fn lifecycle() -> impl Strategy<Value = Lifecycle> {
    (
        0u64..120,
        prop_oneof![Just(None), (1u64..90).prop_map(Some)],
        prop_oneof![Just(None), (0u32..4).prop_map(Some)],
        any::<bool>(),
    )
        .prop_map(|(f, r, n, recovery)| Lifecycle {
            for_duration: Duration::from_secs(f),
            repeat_interval: r.map(Duration::from_secs),
            repeat_number: n,
            recovery,
        })
}

/// Observations: (status, seconds since the previous one).
fn observations() -> impl Strategy<Value = Vec<(Status, u64)>> {
    prop::collection::vec((status(), 0u64..40), 1..80)
}

fn crossed(x: f64, t: &Thresholds, critical: bool) -> bool {
    let (ge, gt, le, lt) = if critical {
        (t.critical_ge, t.critical_gt, t.critical_le, t.critical_lt)
    } else {
        (t.warn_ge, t.warn_gt, t.warn_le, t.warn_lt)
    };
    ge.is_some_and(|b| x >= b)
        || gt.is_some_and(|b| x > b)
        || le.is_some_and(|b| x <= b)
        || lt.is_some_and(|b| x < b)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn evaluate_follows_the_bounds(x in -120i32..120, t in thresholds()) {
        let x = f64::from(x);
        let expected = if crossed(x, &t, true) {
            Status::Critical
        } else if crossed(x, &t, false) {
            Status::Warning
        } else {
            Status::Ok
        };
        prop_assert_eq!(evaluate(&Value::Number(x), &t), expected);
        let v = judge(&Value::Number(x), &t);
        prop_assert_eq!(v.status, expected);
        // The named bound is set, and it is crossed.
        match v.bound {
            None => prop_assert_eq!(expected, Status::Ok),
            Some(b) => {
                let crossed = match &b.key[b.key.len() - 2..] {
                    "ge" => x >= b.limit,
                    "gt" => x > b.limit,
                    "le" => x <= b.limit,
                    _ => x < b.limit,
                };
                prop_assert!(crossed, "{b} does not hold for {x}");
                prop_assert_eq!(b.key.starts_with("critical"), expected == Status::Critical);
            }
        }
    }

    #[test]
    fn verdicts_pass_through(s in status(), t in thresholds()) {
        prop_assert_eq!(evaluate(&Value::Status(s), &t), s);
    }

    #[test]
    fn upper_bounds_are_monotonic(a in -120i32..120, b in -120i32..120,
                                  w in bound(), c in bound()) {
        let t = Thresholds { warn_ge: w, critical_gt: c, ..Thresholds::default() };
        let (lo, hi) = (f64::from(a.min(b)), f64::from(a.max(b)));
        prop_assert!(evaluate(&Value::Number(lo), &t) <= evaluate(&Value::Number(hi), &t));
    }

    #[test]
    fn overlay_prefers_the_override(base in thresholds(), over in thresholds()) {
        prop_assert_eq!(overlay(&base, &Thresholds::default()), base.clone());
        prop_assert_eq!(overlay(&Thresholds::default(), &over), over.clone());
        let m = overlay(&base, &over);
        prop_assert_eq!(m.warn_ge, over.warn_ge.or(base.warn_ge));
        prop_assert_eq!(m.critical_lt, over.critical_lt.or(base.critical_lt));
    }

    /// Drives `step` over random sequences and checks every lifecycle rule against what the
    /// test itself observed.
    #[test]
    fn lifecycle_rules_hold(rules in lifecycle(), obs in observations()) {
        let mut state = AlertState::Idle;
        let mut now = Duration::ZERO;
        // Start of the current run of non-Ok observations.
        let mut streak: Option<Duration> = None;
        // What was last sent for the current firing episode, and when.
        let mut firing: Option<(Status, Duration, u32)> = None;
        let mut fired_episodes = 0u32;
        let mut recoveries = 0u32;
        for (observed, dt) in obs {
            now += Duration::from_secs(dt);
            if observed != Status::Ok && streak.is_none() {
                streak = Some(now);
            }
            let before = state;
            let event = step(&mut state, observed, now, &rules);
            match (firing, observed, event) {
                // Not firing, Ok: silent.
                (None, Status::Ok, e) => {
                    prop_assert_eq!(e, None, "event while nothing was firing");
                }
                // Not firing, non-Ok: fires exactly when the streak is old enough.
                (None, s, e) => {
                    let since = streak.unwrap_or(now);
                    let due = now - since >= rules.for_duration;
                    if due {
                        prop_assert_eq!(e, Some(s), "due after {:?} but not fired", now - since);
                        firing = Some((s, now, 0));
                        fired_episodes += 1;
                    } else {
                        prop_assert_eq!(e, None, "fired before for_duration");
                    }
                }
                // Firing, Ok: one recovery (or none when recovery is off), then idle.
                (Some(_), Status::Ok, e) => {
                    if rules.recovery {
                        prop_assert_eq!(e, Some(Status::Ok));
                        recoveries += 1;
                    } else {
                        prop_assert_eq!(e, None);
                    }
                    firing = None;
                }
                // Firing, another severity: sent at once.
                (Some((prev, _, _)), s, e) if s != prev => {
                    prop_assert_eq!(e, Some(s), "severity change not sent");
                    firing = Some((s, now, 0));
                }
                // Firing, same severity: a reminder only when one is due.
                (Some((prev, last, reminders)), s, e) => {
                    let due = rules.repeat_interval.is_some_and(|i| now - last >= i)
                        && rules.repeat_number.is_none_or(|n| reminders < n);
                    if due {
                        prop_assert_eq!(e, Some(s));
                        firing = Some((prev, now, reminders + 1));
                    } else {
                        prop_assert_eq!(e, None, "event with nothing changed and no reminder due");
                    }
                    if let (Some(n), Some((_, _, r))) = (rules.repeat_number, firing) {
                        prop_assert!(r <= n, "{r} reminders, limit {n}");
                    }
                }
            }
            if observed == Status::Ok {
                streak = None;
            }
            prop_assert_eq!(state.firing(), firing.map(|f| f.0), "state {:?} -> {:?}", before, state);
            if observed == Status::Ok {
                prop_assert!(state.is_idle());
            }
        }
        // Every episode that ended with Ok recovered exactly once (if recovery is on).
        let ended = fired_episodes - u32::from(firing.is_some());
        prop_assert_eq!(recoveries, if rules.recovery { ended } else { 0 });
    }

    /// The same state and observation at the same time give the same answer, and a repeated
    /// identical observation right away never sends twice.
    #[test]
    fn no_duplicate_events_at_one_instant(rules in lifecycle(), obs in observations()) {
        let mut state = AlertState::Idle;
        let mut now = Duration::ZERO;
        for (observed, dt) in obs {
            now += Duration::from_secs(dt);
            let _ = step(&mut state, observed, now, &rules);
            let again = step(&mut state, observed, now, &rules);
            prop_assert_eq!(again, None, "second identical observation at {:?} sent", now);
        }
    }
}

#[test]
fn reminders_are_spaced_and_capped() {
    let rules = Lifecycle {
        for_duration: Duration::ZERO,
        repeat_interval: Some(Duration::from_secs(60)),
        repeat_number: Some(2),
        recovery: true,
    };
    let mut s = AlertState::Idle;
    let mut sent = Vec::new();
    for t in (0..=600).step_by(10) {
        if let Some(e) = step(&mut s, Status::Critical, Duration::from_secs(t), &rules) {
            sent.push((t, e));
        }
    }
    assert_eq!(
        sent,
        vec![
            (0, Status::Critical),
            (60, Status::Critical),
            (120, Status::Critical)
        ]
    );
    // A severity change is sent at once and starts a new reminder budget.
    assert_eq!(
        step(&mut s, Status::Warning, Duration::from_secs(601), &rules),
        Some(Status::Warning)
    );
    assert_eq!(
        step(&mut s, Status::Warning, Duration::from_secs(661), &rules),
        Some(Status::Warning)
    );
    assert_eq!(
        step(&mut s, Status::Ok, Duration::from_secs(662), &rules),
        Some(Status::Ok)
    );
    assert_eq!(
        step(&mut s, Status::Ok, Duration::from_secs(700), &rules),
        None
    );
}

#[test]
fn ok_while_pending_resets_silently() {
    let rules = Lifecycle {
        for_duration: Duration::from_secs(30),
        ..Lifecycle::default()
    };
    let mut s = AlertState::Idle;
    assert_eq!(
        step(&mut s, Status::Critical, Duration::from_secs(0), &rules),
        None
    );
    assert_eq!(
        step(&mut s, Status::Ok, Duration::from_secs(20), &rules),
        None
    );
    // The streak restarts: 25 s later is not enough.
    assert_eq!(
        step(&mut s, Status::Critical, Duration::from_secs(25), &rules),
        None
    );
    assert_eq!(
        step(&mut s, Status::Critical, Duration::from_secs(50), &rules),
        None
    );
    assert_eq!(
        step(&mut s, Status::Critical, Duration::from_secs(55), &rules),
        Some(Status::Critical)
    );
}
