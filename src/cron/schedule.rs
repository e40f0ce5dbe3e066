//! Schedule expressions and their next firing time: 5-field cron, 6-field
//! cron with seconds, `every 15m` intervals, one-shot delays (`30m`) and ISO
//! timestamps, evaluated in an IANA time zone.

use std::time::Duration;

use chrono::{DateTime, SubsecRound, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// A parsed schedule.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// A cron expression; `seconds` when it has the seconds field.
    Cron { expr: Box<Cron>, seconds: bool },
    /// Every `period`, counted from the job's anchor time.
    Every(Duration),
    /// Once, `delay` after the job was created (or its schedule changed).
    OnceIn(Duration),
    /// Once, at a fixed instant.
    OnceAt(DateTime<Utc>),
}

/// Why a schedule or time zone was refused; the text names the reason.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ScheduleError(pub String);

fn err(m: impl Into<String>) -> ScheduleError {
    ScheduleError(m.into())
}

/// Parse an IANA time zone name.
pub fn parse_timezone(name: &str) -> Result<Tz, ScheduleError> {
    name.trim().parse::<Tz>().map_err(|_| {
        err(format!(
            "`{name}` is not an IANA time zone name like `Europe/Paris`"
        ))
    })
}

/// Longest interval or delay: firings must stay within the years a
/// response can carry (0000–9999, see `crate::timestamp`).
const MAX_SPAN: Duration = Duration::from_secs(100 * 366 * 86_400);

fn within_max_span(text: &str, span: Duration) -> Result<Duration, ScheduleError> {
    if span > MAX_SPAN {
        return Err(err(format!(
            "`{text}`: an interval or delay must be at most 100 years"
        )));
    }
    Ok(span)
}

fn once_at(text: &str, at: DateTime<Utc>) -> Result<Schedule, ScheduleError> {
    if !crate::timestamp::in_range_utc(&at) {
        return Err(err(format!("`{text}` is outside the years 0000 to 9999")));
    }
    Ok(Schedule::OnceAt(at))
}

/// A duration like `15m`, `2h`, `1d`, `30s` (one number, one unit).
fn parse_span(text: &str) -> Option<Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult = match unit.trim() {
        "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "m" | "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3600,
        "d" | "day" | "days" => 86_400,
        "w" | "week" | "weeks" => 7 * 86_400,
        _ => return None,
    };
    let secs = n.checked_mul(mult)?;
    (secs > 0).then(|| Duration::from_secs(secs))
}

impl Schedule {
    /// Parse a schedule string.
    pub fn parse(text: &str) -> Result<Schedule, ScheduleError> {
        let t = text.trim();
        if t.is_empty() {
            return Err(err("must not be empty"));
        }
        if let Some(rest) = t
            .strip_prefix("every ")
            .or_else(|| t.strip_prefix("every:"))
        {
            let span = parse_span(rest).ok_or_else(|| {
                err(format!(
                    "`{t}` is not an interval like `every 15m`, `every 2h` or `every 1d`"
                ))
            })?;
            return within_max_span(t, span).map(Schedule::Every);
        }
        if let Some(d) = parse_span(t) {
            return within_max_span(t, d).map(Schedule::OnceIn);
        }
        if let Ok(at) = DateTime::parse_from_rfc3339(t) {
            return once_at(t, at.with_timezone(&Utc));
        }
        if t.starts_with(|c: char| c.is_ascii_digit()) && t.contains('-') && t.contains(':') {
            // An ISO timestamp without an offset is read as UTC.
            if let Ok(naive) = chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S") {
                return once_at(t, Utc.from_utc_datetime(&naive));
            }
            if let Ok(naive) = chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M") {
                return once_at(t, Utc.from_utc_datetime(&naive));
            }
        }
        let fields = t.split_whitespace().count();
        if t.starts_with('@') {
            let expr = CronParser::builder()
                .seconds(Seconds::Disallowed)
                .year(Year::Disallowed)
                .build()
                .parse(t)
                .map_err(|e| err(format!("`{t}`: {e}")))?;
            return Ok(Schedule::Cron {
                expr: Box::new(expr),
                seconds: false,
            });
        }
        if fields != 5 && fields != 6 {
            return Err(err(format!(
                "expected 5 or 6 fields (or `every 15m`, `30m`, an ISO timestamp), got {fields}"
            )));
        }
        let seconds = fields == 6;
        let expr = CronParser::builder()
            .seconds(if seconds {
                Seconds::Required
            } else {
                Seconds::Disallowed
            })
            .year(Year::Disallowed)
            .build()
            .parse(t)
            .map_err(|e| err(format!("`{t}`: {e}")))?;
        Ok(Schedule::Cron {
            expr: Box::new(expr),
            seconds,
        })
    }

    pub fn is_one_shot(&self) -> bool {
        matches!(self, Schedule::OnceIn(_) | Schedule::OnceAt(_))
    }

    /// The first firing strictly after `after`. `anchor` is when the job's
    /// schedule was set (intervals count from it, delays start there).
    /// `None`: no firing left.
    pub fn next_after(
        &self,
        after: DateTime<Utc>,
        anchor: DateTime<Utc>,
        tz: Tz,
    ) -> Option<DateTime<Utc>> {
        // A firing past 9999 is no firing: it could not be shown.
        self.next_unbounded(after, anchor, tz)
            .filter(crate::timestamp::in_range_utc)
    }

    fn next_unbounded(
        &self,
        after: DateTime<Utc>,
        anchor: DateTime<Utc>,
        tz: Tz,
    ) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Cron { expr, .. } => {
                // Whole seconds: croner works at second granularity.
                let start = tz.from_utc_datetime(&after.trunc_subsecs(0).naive_utc());
                expr.find_next_occurrence(&start, false)
                    .ok()
                    .map(|t| t.with_timezone(&Utc))
            }
            Schedule::Every(period) => {
                let p = i64::try_from(period.as_millis()).ok()?.max(1);
                let a = anchor.timestamp_millis();
                let x = after.timestamp_millis();
                let k = if x < a { 0 } else { (x - a) / p + 1 };
                DateTime::from_timestamp_millis(a.checked_add(k.checked_mul(p)?)?)
            }
            Schedule::OnceIn(d) => {
                let at = anchor.checked_add_signed(chrono::Duration::from_std(*d).ok()?)?;
                (at > after).then_some(at)
            }
            Schedule::OnceAt(at) => (*at > after).then_some(*at),
        }
    }

    /// The last firing at or before `now` (and after `anchor` for interval
    /// and delay schedules), without walking every occurrence.
    pub fn latest_at_or_before(
        &self,
        now: DateTime<Utc>,
        anchor: DateTime<Utc>,
        tz: Tz,
    ) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Cron { expr, .. } => {
                let start = tz.from_utc_datetime(&now.trunc_subsecs(0).naive_utc());
                expr.find_previous_occurrence(&start, true)
                    .ok()
                    .map(|t| t.with_timezone(&Utc))
            }
            Schedule::Every(period) => {
                let p = i64::try_from(period.as_millis()).ok()?.max(1);
                let (a, x) = (anchor.timestamp_millis(), now.timestamp_millis());
                (x >= a).then(|| DateTime::from_timestamp_millis(a + (x - a) / p * p))?
            }
            Schedule::OnceIn(d) => {
                let at = anchor.checked_add_signed(chrono::Duration::from_std(*d).ok()?)?;
                (at <= now).then_some(at)
            }
            Schedule::OnceAt(at) => (*at <= now).then_some(*at),
        }
    }

    /// The shortest gap between firings seen over the next few (for the
    /// minimum-interval limit); `None` for one-shot schedules.
    pub fn shortest_gap(&self, from: DateTime<Utc>, tz: Tz) -> Option<Duration> {
        match self {
            Schedule::Every(p) => Some(*p),
            Schedule::OnceIn(_) | Schedule::OnceAt(_) => None,
            Schedule::Cron { .. } => {
                let mut prev = self.next_after(from, from, tz)?;
                let mut best: Option<Duration> = None;
                for _ in 0..8 {
                    let next = self.next_after(prev, from, tz)?;
                    let gap = (next - prev).to_std().ok()?;
                    best = Some(best.map_or(gap, |b| b.min(gap)));
                    prev = next;
                }
                best
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn field_counts_and_forms() {
        let e = Schedule::parse("* * * *").unwrap_err();
        assert!(e.0.contains("expected 5 or 6 fields"), "{e}");
        assert!(e.0.contains("got 4"), "{e}");
        assert!(Schedule::parse("* * * * * * *").is_err());
        assert!(Schedule::parse("61 * * * *").is_err());
        assert!(matches!(
            Schedule::parse("0 8 * * 1-5"),
            Ok(Schedule::Cron { seconds: false, .. })
        ));
        assert!(matches!(
            Schedule::parse("*/5 * * * * *"),
            Ok(Schedule::Cron { seconds: true, .. })
        ));
        assert!(
            matches!(Schedule::parse("every 15m"), Ok(Schedule::Every(d)) if d.as_secs() == 900)
        );
        assert!(
            matches!(Schedule::parse("every 2h"), Ok(Schedule::Every(d)) if d.as_secs() == 7200)
        );
        assert!(matches!(Schedule::parse("30m"), Ok(Schedule::OnceIn(d)) if d.as_secs() == 1800));
        assert!(matches!(
            Schedule::parse("2030-01-02T03:04:05Z"),
            Ok(Schedule::OnceAt(_))
        ));
        assert!(matches!(
            Schedule::parse("2030-01-02T03:04:05"),
            Ok(Schedule::OnceAt(_))
        ));
        let daily = Schedule::parse("@daily").expect("nickname");
        let t = utc("2026-01-01T10:00:00Z");
        assert_eq!(
            daily.next_after(t, t, Tz::UTC),
            Some(utc("2026-01-02T00:00:00Z"))
        );
        // Absurd spans are refused: a firing must be showable (year ≤ 9999).
        let e = Schedule::parse("165343915w").unwrap_err();
        assert!(e.0.contains("at most 100 years"), "{e}");
        assert!(Schedule::parse("99999999999m").is_err());
        assert!(Schedule::parse("9999-12-31T23:00:00-02:00").is_err());
        let century = Schedule::parse("every 5200w").expect("100 years");
        let t = utc("9990-01-01T10:00:00Z");
        assert_eq!(century.next_after(t, t, Tz::UTC), None, "past 9999");
        assert!(Schedule::parse("every 99999999999999w").is_err());
        assert!(Schedule::parse("every 0m").is_err());
        assert!(Schedule::parse("every banana").is_err());
        assert!(Schedule::parse("").is_err());
        assert!(parse_timezone("Europe/Paris").is_ok());
        assert!(parse_timezone("Mars/Olympus").is_err());
    }

    #[test]
    fn interval_counts_from_the_anchor() {
        let s = Schedule::parse("every 15m").expect("parse");
        let anchor = utc("2026-01-01T00:00:00Z");
        let n = s.next_after(utc("2026-01-01T00:20:00Z"), anchor, Tz::UTC);
        assert_eq!(n, Some(utc("2026-01-01T00:30:00Z")));
        let n = s.next_after(utc("2026-01-01T00:30:00Z"), anchor, Tz::UTC);
        assert_eq!(n, Some(utc("2026-01-01T00:45:00Z")));
    }

    #[test]
    fn one_shot_fires_once() {
        let s = Schedule::parse("30m").expect("parse");
        let anchor = utc("2026-01-01T00:00:00Z");
        assert_eq!(
            s.next_after(anchor, anchor, Tz::UTC),
            Some(utc("2026-01-01T00:30:00Z"))
        );
        assert_eq!(
            s.next_after(utc("2026-01-01T00:30:00Z"), anchor, Tz::UTC),
            None
        );
    }

    #[test]
    fn daily_job_across_spring_forward_fires_once_at_the_first_real_instant() {
        // Europe/Paris 2026-03-29: 02:00 local jumps to 03:00.
        let tz = parse_timezone("Europe/Paris").expect("tz");
        let s = Schedule::parse("30 2 * * *").expect("parse");
        let a = utc("2026-03-27T12:00:00Z");
        let d1 = s.next_after(a, a, tz).expect("next");
        assert_eq!(d1, utc("2026-03-28T01:30:00Z")); // 02:30 CET
        let d2 = s.next_after(d1, a, tz).expect("next");
        // 02:30 does not exist on the 29th: the job runs at 03:00 CEST (01:00Z), once.
        assert_eq!(d2, utc("2026-03-29T01:00:00Z"));
        let d3 = s.next_after(d2, a, tz).expect("next");
        assert_eq!(d3, utc("2026-03-30T00:30:00Z")); // 02:30 CEST
    }

    #[test]
    fn daily_job_across_fall_back_fires_once() {
        // Europe/Paris 2026-10-25: 03:00 local goes back to 02:00.
        let tz = parse_timezone("Europe/Paris").expect("tz");
        let s = Schedule::parse("30 2 * * *").expect("parse");
        let a = utc("2026-10-24T12:00:00Z");
        let d1 = s.next_after(a, a, tz).expect("next");
        assert_eq!(d1, utc("2026-10-25T00:30:00Z")); // first 02:30 (CEST)
        let d2 = s.next_after(d1, a, tz).expect("next");
        // Not again at the second 02:30 (CET, 01:30Z): next day.
        assert_eq!(d2, utc("2026-10-26T01:30:00Z"));
    }

    #[test]
    fn hourly_job_keeps_running_through_dst_changes() {
        let tz = parse_timezone("America/New_York").expect("tz");
        let s = Schedule::parse("0 * * * *").expect("parse");
        // 2026-11-01 02:00 EDT -> 01:00 EST: the UTC hours go on one by one.
        let mut t = utc("2026-11-01T04:30:00Z");
        let mut seen = Vec::new();
        for _ in 0..4 {
            t = s.next_after(t, t, tz).expect("next");
            seen.push(t);
        }
        for w in seen.windows(2) {
            assert_eq!((w[1] - w[0]).num_minutes(), 60, "{seen:?}");
        }
    }

    #[test]
    fn latest_occurrence_before_now() {
        let now = utc("2026-01-01T10:07:30Z");
        let s = Schedule::parse("*/5 * * * *").expect("parse");
        assert_eq!(
            s.latest_at_or_before(now, now, Tz::UTC),
            Some(utc("2026-01-01T10:05:00Z"))
        );
        let s = Schedule::parse("every 15m").expect("parse");
        let anchor = utc("2026-01-01T09:00:00Z");
        assert_eq!(
            s.latest_at_or_before(now, anchor, Tz::UTC),
            Some(utc("2026-01-01T10:00:00Z"))
        );
        let s = Schedule::parse("2026-01-01T11:00:00Z").expect("parse");
        assert_eq!(s.latest_at_or_before(now, now, Tz::UTC), None);
    }

    #[test]
    fn every_second_and_minimum_gap() {
        let s = Schedule::parse("* * * * * *").expect("parse");
        let now = utc("2026-01-01T00:00:00.400Z");
        assert_eq!(
            s.next_after(now, now, Tz::UTC),
            Some(utc("2026-01-01T00:00:01Z"))
        );
        assert_eq!(s.shortest_gap(now, Tz::UTC), Some(Duration::from_secs(1)));
        let s = Schedule::parse("0 8 * * 1-5").expect("parse");
        assert!(s.shortest_gap(now, Tz::UTC).expect("gap") >= Duration::from_secs(86_400));
    }
}
