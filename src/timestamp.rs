//! The instants a response can carry: RFC 3339 with a four-digit year, so
//! 0000-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z. Client input that would
//! produce a time outside that is refused (`400`); a stored time outside
//! it (the agent's files and history are hostile) is clamped on output.

use chrono::{DateTime, SecondsFormat, Utc};

/// 0000-01-01T00:00:00.000Z in unix milliseconds.
pub const MIN_MS: i64 = -62_167_219_200_000;
/// 9999-12-31T23:59:59.999Z in unix milliseconds.
pub const MAX_MS: i64 = 253_402_300_799_999;

/// Whether `ms` renders with a four-digit year.
pub fn in_range(ms: i64) -> bool {
    (MIN_MS..=MAX_MS).contains(&ms)
}

/// Whether a time renders with a four-digit year.
pub fn in_range_utc(t: &DateTime<Utc>) -> bool {
    in_range(t.timestamp_millis())
}

/// RFC 3339 text (any offset) as unix ms, if it is within the range.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
        .filter(|ms| in_range(*ms))
}

/// Unix ms as RFC 3339 UTC with milliseconds, clamped to the range.
pub fn format(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms.clamp(MIN_MS, MAX_MS))
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Why a client's time was refused, naming the field.
pub fn out_of_range(field: &str) -> String {
    format!("`{field}` is outside the years 0000 to 9999")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_render_with_four_digit_years() {
        assert_eq!(format(MIN_MS), "0000-01-01T00:00:00.000Z");
        assert_eq!(format(MAX_MS), "9999-12-31T23:59:59.999Z");
        assert_eq!(format(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(format(i64::MIN), "0000-01-01T00:00:00.000Z");
        assert_eq!(parse_rfc3339("9999-12-31T23:59:59Z"), Some(MAX_MS - 999));
        // An offset can push a four-digit local time past the range.
        assert_eq!(parse_rfc3339("9999-12-31T23:00:00-02:00"), None);
        assert_eq!(parse_rfc3339("0000-01-01T00:30:00+01:00"), None);
    }
}
