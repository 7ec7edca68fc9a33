//! Wall-clock timestamps for events (`ts`): RFC 3339, UTC, milliseconds.

/// Now, as `2026-11-20T22:33:05.123Z`.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
