//! The usage report for a billing period: which period a query means, and
//! the totals over it.

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use serde::Serialize;

use crate::store::{Store, StoreResult, hub, ms_to_rfc3339};
use crate::timestamp;

/// Longest `from`/`to` span a report covers.
pub const MAX_SPAN_DAYS: i64 = 400;

/// A half-open period `[from, to)` in unix ms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    /// `YYYY-MM` when the period is a calendar month.
    pub month: Option<String>,
    pub from_ms: i64,
    pub to_ms: i64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct PeriodError(pub String);

fn err(m: impl Into<String>) -> PeriodError {
    PeriodError(m.into())
}

fn month_start(year: i32, month: u32) -> Option<DateTime<Utc>> {
    Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0).single()
}

fn month(year: i32, month: u32) -> Result<Period, PeriodError> {
    let start = month_start(year, month).ok_or_else(|| err("no such month"))?;
    let (ny, nm) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    let end = month_start(ny, nm).ok_or_else(|| err("no such month"))?;
    // `to` is the next month's start: 9999-12 would end in year 10000.
    if !timestamp::in_range_utc(&start) || !timestamp::in_range_utc(&end) {
        return Err(err(timestamp::out_of_range("period")));
    }
    Ok(Period {
        month: Some(format!("{year:04}-{month:02}")),
        from_ms: start.timestamp_millis(),
        to_ms: end.timestamp_millis(),
    })
}

/// RFC 3339, or a date `YYYY-MM-DD` meaning its UTC midnight.
fn instant(name: &str, text: &str) -> Result<i64, PeriodError> {
    let parsed = DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .ok()
        .or_else(|| {
            NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .ok()?
                .and_hms_opt(0, 0, 0)
                .map(|t| t.and_utc().timestamp_millis())
        });
    if let Some(ms) = parsed {
        if !timestamp::in_range(ms) {
            return Err(err(timestamp::out_of_range(name)));
        }
        return Ok(ms);
    }
    Err(err(format!(
        "`{name}` must be an RFC 3339 time or a date YYYY-MM-DD, not `{text}`"
    )))
}

/// The period a query names: `period=YYYY-MM`, or `from` (and optionally
/// `to`, default now), or by default the current UTC month.
pub fn resolve(
    period: Option<&str>,
    from: Option<&str>,
    to: Option<&str>,
    now_ms: i64,
) -> Result<Period, PeriodError> {
    match (period, from, to) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            Err(err("give either `period` or `from`/`to`, not both"))
        }
        (Some(p), None, None) => {
            let bad = || err(format!("`period` must be a month YYYY-MM, not `{p}`"));
            let (y, m) = p.split_once('-').ok_or_else(bad)?;
            if y.len() != 4 || m.len() != 2 {
                return Err(bad());
            }
            let y: i32 = y.parse().map_err(|_| bad())?;
            let m: u32 = m.parse().map_err(|_| bad())?;
            if !(1..=12).contains(&m) {
                return Err(bad());
            }
            month(y, m)
        }
        (None, None, Some(_)) => Err(err("`to` needs `from`")),
        (None, Some(f), t) => {
            let from_ms = instant("from", f)?;
            let to_ms = match t {
                Some(t) => instant("to", t)?,
                None => now_ms,
            };
            if to_ms <= from_ms {
                return Err(err("`from` must be before `to`"));
            }
            if to_ms - from_ms > MAX_SPAN_DAYS * 86_400_000 {
                return Err(err(format!("a period spans at most {MAX_SPAN_DAYS} days")));
            }
            Ok(Period {
                month: None,
                from_ms,
                to_ms,
            })
        }
        (None, None, None) => {
            let now = DateTime::from_timestamp_millis(now_ms).unwrap_or_default();
            month(now.year(), now.month())
        }
    }
}

/// What `GET /usage` answers.
#[derive(Debug, Serialize)]
pub struct UsageReport {
    pub tenant_id: String,
    pub period: Option<String>,
    pub from: String,
    pub to: String,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub tool_calls: i64,
    pub runs: i64,
    /// Seconds the agent was `running`, counted per whole UTC hour that
    /// overlaps the period; up to a minute behind the present.
    pub agent_uptime_s: i64,
    /// Entries of the period the hub has not acknowledged yet.
    pub unreported: i64,
}

/// Totals over `period` (read-only).
pub async fn report(store: &Store, tenant_id: &str, period: Period) -> StoreResult<UsageReport> {
    let (from, to) = (period.from_ms, period.to_ms);
    let s = store.read(move |c| hub::usage_summary(c, from, to)).await?;
    Ok(UsageReport {
        tenant_id: tenant_id.to_owned(),
        period: period.month,
        from: ms_to_rfc3339(from),
        to: ms_to_rfc3339(to),
        tokens_in: s.tokens_in,
        tokens_out: s.tokens_out,
        tool_calls: s.tool_calls,
        runs: s.runs,
        agent_uptime_s: s.agent_uptime_ms / 1000,
        unreported: s.unreported,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> i64 {
        DateTime::parse_from_rfc3339(text)
            .expect("time")
            .timestamp_millis()
    }

    #[test]
    fn months_and_ranges_resolve() {
        let now = at("2026-11-22T10:00:00Z");
        let p = resolve(None, None, None, now).expect("default");
        assert_eq!(p.month.as_deref(), Some("2026-11"));
        assert_eq!(p.from_ms, at("2026-11-01T00:00:00Z"));
        assert_eq!(p.to_ms, at("2026-12-01T00:00:00Z"));
        let p = resolve(Some("2025-12"), None, None, now).expect("december");
        assert_eq!(p.to_ms, at("2026-01-01T00:00:00Z"));
        let p = resolve(
            None,
            Some("2026-11-01"),
            Some("2026-11-02T12:00:00+02:00"),
            now,
        )
        .expect("range");
        assert_eq!(p.from_ms, at("2026-11-01T00:00:00Z"));
        assert_eq!(p.to_ms, at("2026-11-02T10:00:00Z"));
        assert_eq!(
            resolve(None, Some("2026-11-20"), None, now)
                .expect("open")
                .to_ms,
            now
        );
    }

    #[test]
    fn bad_queries_say_why() {
        let now = at("2026-11-22T10:00:00Z");
        for (p, f, t, needle) in [
            (Some("2026-13"), None, None, "YYYY-MM"),
            (Some("2026-1"), None, None, "YYYY-MM"),
            (Some("nov"), None, None, "YYYY-MM"),
            (Some("2026-11"), Some("2026-11-01"), None, "either"),
            (None, None, Some("2026-11-01"), "needs `from`"),
            (None, Some("yesterday"), None, "RFC 3339"),
            (None, Some("2026-11-02"), Some("2026-11-01"), "before"),
            (None, Some("2020-01-01"), Some("2026-01-01"), "at most"),
        ] {
            let e = resolve(p, f, t, now).expect_err("invalid");
            assert!(e.0.contains(needle), "{e} lacks {needle}");
        }
    }
}
