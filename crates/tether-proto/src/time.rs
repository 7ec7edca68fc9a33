//! Times on the wire: RFC 3339 in UTC, and the sane range a peer's time must fall in.
//!
//! Formatting never panics (humantime's formatter panics past year 9999, and one alert with
//! `event_time: 300000000000` once took a hub's store down with it): out-of-range inputs are
//! clamped to the representable range. Whether a peer's time is believable is a separate
//! question, answered by [`check_event_time`] at the edge.

/// Latest second RFC 3339 can spell: 9999-12-31T23:59:59Z.
pub const MAX_RFC3339_SECS: i64 = 253_402_300_799;

/// How far in the future an event time may be before it is taken as a broken clock or a
/// forged value (clock skew between hosts is seconds to minutes; a day is generous).
pub const MAX_FUTURE_SKEW_SECS: i64 = 86_400;

/// RFC 3339 with milliseconds of unix milliseconds, e.g. `2023-11-14T22:13:20.000Z`.
/// Negative and too-large values are clamped to 1970 and 9999.
pub fn rfc3339_ms(ms: i64) -> String {
    let ms = ms.clamp(0, MAX_RFC3339_SECS * 1000 + 999);
    let (secs, millis) = (ms / 1000, ms % 1000);
    let mut s = rfc3339_secs(secs);
    s.pop(); // the `Z`
    s.push_str(&format!(".{millis:03}Z"));
    s
}

/// RFC 3339 (whole seconds) of unix seconds, e.g. `2023-11-14T22:13:20Z`; clamped like
/// [`rfc3339_ms`].
pub fn rfc3339_secs(secs: i64) -> String {
    let secs = secs.clamp(0, MAX_RFC3339_SECS);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (days >= 0).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Howard Hinnant's algorithm, for non-negative day counts.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Why an event time was not believed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventTimeProblem {
    /// Zero or before 1970.
    NotPositive,
    /// More than [`MAX_FUTURE_SKEW_SECS`] after `now`.
    InTheFuture,
}

impl EventTimeProblem {
    pub fn as_str(self) -> &'static str {
        match self {
            EventTimeProblem::NotPositive => "not after 1970",
            EventTimeProblem::InTheFuture => "more than a day in the future",
        }
    }
}

/// Checks a peer's event time (unix seconds) against `now_secs`.
pub fn check_event_time(secs: i64, now_secs: i64) -> Result<i64, EventTimeProblem> {
    if secs <= 0 {
        Err(EventTimeProblem::NotPositive)
    } else if secs > now_secs.saturating_add(MAX_FUTURE_SKEW_SECS) {
        Err(EventTimeProblem::InTheFuture)
    } else {
        Ok(secs)
    }
}

/// Unix seconds now (0 if the clock is before 1970).
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_secs(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339_secs(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_secs(MAX_RFC3339_SECS), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn out_of_range_is_clamped_never_a_panic() {
        // The value from the adversarial run (year 11476), in seconds and as milliseconds.
        assert_eq!(rfc3339_secs(300_000_000_000), "9999-12-31T23:59:59Z");
        assert_eq!(
            rfc3339_ms(300_000_000_000i64.saturating_mul(1000)),
            "9999-12-31T23:59:59.999Z"
        );
        assert_eq!(rfc3339_ms(i64::MIN), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(i64::MAX), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn event_times_are_checked_against_now() {
        let now = 1_700_000_000;
        assert_eq!(check_event_time(now, now), Ok(now));
        assert_eq!(check_event_time(now + 3600, now), Ok(now + 3600));
        assert_eq!(
            check_event_time(300_000_000_000, now),
            Err(EventTimeProblem::InTheFuture)
        );
        assert_eq!(check_event_time(0, now), Err(EventTimeProblem::NotPositive));
        assert_eq!(
            check_event_time(-5, now),
            Err(EventTimeProblem::NotPositive)
        );
    }

    proptest! {
        /// Agrees with humantime (the formatter it replaces) over the whole range humantime
        /// can format.
        #[test]
        fn matches_humantime(ms in 0i64..(MAX_RFC3339_SECS * 1000 + 999)) {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
            prop_assert_eq!(rfc3339_ms(ms), humantime::format_rfc3339_millis(t).to_string());
            prop_assert_eq!(
                rfc3339_secs(ms / 1000),
                humantime::format_rfc3339_seconds(t).to_string()
            );
        }
    }
}
