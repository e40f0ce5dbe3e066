//! The job bodies clients send, in three accepted shapes, reduced to one
//! partial update: the design's (`schedule`, `timezone`, `paused`, ...), the
//! platform's `{cron, prompt, enabled}` (`cron` is `schedule`), and Hermes
//! Agent's jobs API (`schedule` as a string or as its stored object
//! `{kind, expr|minutes|run_at}`, `repeat` as a count or `{times}`).

use serde_json::{Map, Value};

use super::CronError;

/// A partial job: `None` leaves a field as it is; `Some(None)` clears it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct JobPatch {
    pub name: Option<String>,
    pub schedule: Option<String>,
    pub timezone: Option<String>,
    pub prompt: Option<String>,
    pub enabled: Option<bool>,
    pub paused: Option<bool>,
    pub skills: Option<Option<Vec<String>>>,
    pub deliver: Option<Option<String>>,
    pub repeat: Option<Option<i64>>,
}

const FIELDS: &[&str] = &[
    "name", "schedule", "cron", "timezone", "prompt", "enabled", "paused", "skills", "skill",
    "deliver", "repeat",
];

fn bad(field: &str, why: impl std::fmt::Display) -> CronError {
    CronError::Invalid(format!("{field}: {why}"))
}

fn string(obj: &Map<String, Value>, field: &str) -> Result<Option<String>, CronError> {
    match obj.get(field) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(field, "must be a string")),
    }
}

fn boolean(obj: &Map<String, Value>, field: &str) -> Result<Option<bool>, CronError> {
    match obj.get(field) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(bad(field, "must be true or false")),
    }
}

/// Hermes' stored schedule object back to its string form.
pub(super) fn schedule_object(o: &Map<String, Value>) -> Result<String, CronError> {
    let kind = o.get("kind").and_then(Value::as_str).unwrap_or_default();
    match kind {
        "cron" => o
            .get("expr")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| bad("schedule", "a `cron` schedule needs `expr`")),
        "interval" => o
            .get("minutes")
            .and_then(Value::as_u64)
            .map(|m| format!("every {m}m"))
            .ok_or_else(|| bad("schedule", "an `interval` schedule needs `minutes`")),
        "once" => o
            .get("run_at")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| bad("schedule", "a `once` schedule needs `run_at`")),
        _ => Err(bad(
            "schedule",
            "an object schedule must have `kind` cron, interval or once",
        )),
    }
}

/// Parse a request body into a patch. Unknown fields are refused.
pub fn parse(body: &Value) -> Result<JobPatch, CronError> {
    let Value::Object(obj) = body else {
        return Err(CronError::Invalid("the body must be a JSON object".into()));
    };
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(bad(
            unknown,
            format!("unknown field; expected one of {}", FIELDS.join(", ")),
        ));
    }
    let schedule = match obj.get("schedule") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Object(o)) => Some(schedule_object(o)?),
        Some(_) => return Err(bad("schedule", "must be a string")),
    };
    let cron = string(obj, "cron")?;
    let schedule = match (schedule, cron) {
        // Even equal values are refused: the document says one or the
        // other (`not: required [cron, schedule]`), and a caller sending
        // both is confused about which one counts.
        (Some(_), Some(_)) => {
            return Err(bad("cron", "`cron` is an alias of `schedule`: give one"));
        }
        (s, c) => s.or(c),
    };
    let skills = match (obj.get("skills"), obj.get("skill")) {
        (None, None) => None,
        (Some(Value::Null), _) | (None, Some(Value::Null)) => Some(None),
        (Some(Value::Array(a)), _) => {
            let mut v = Vec::with_capacity(a.len());
            for s in a {
                match s.as_str().map(str::trim) {
                    Some(n) if !n.is_empty() && n.len() <= 64 => v.push(n.to_owned()),
                    _ => {
                        return Err(bad(
                            "skills",
                            "must be a list of skill names (1-64 characters)",
                        ));
                    }
                }
            }
            if v.len() > 32 {
                return Err(bad("skills", "at most 32 skills"));
            }
            Some(Some(v))
        }
        (None, Some(Value::String(s))) if !s.trim().is_empty() => {
            Some(Some(vec![s.trim().to_owned()]))
        }
        (Some(_), _) => return Err(bad("skills", "must be a list of skill names")),
        (None, Some(_)) => return Err(bad("skill", "must be a skill name")),
    };
    let deliver = match obj.get("deliver") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 256 => {
            Some(Some(s.trim().to_owned()))
        }
        Some(_) => {
            return Err(bad(
                "deliver",
                "must be a target like `local`, `origin` or `telegram:123` (at most 256 characters)",
            ));
        }
    };
    let times = |v: &Value| -> Result<Option<i64>, CronError> {
        match v {
            Value::Null => Ok(None),
            Value::Number(n) => match n.as_i64() {
                Some(t) if t >= 1 => Ok(Some(t)),
                _ => Err(bad("repeat", "times must be a whole number of at least 1")),
            },
            _ => Err(bad(
                "repeat",
                "must be a number of firings or {\"times\": N}",
            )),
        }
    };
    let repeat = match obj.get("repeat") {
        None => None,
        Some(Value::Object(o)) => {
            if let Some(k) = o
                .keys()
                .find(|k| !["times", "completed"].contains(&k.as_str()))
            {
                return Err(bad(
                    "repeat",
                    format!("unknown field `{k}`; expected times"),
                ));
            }
            Some(times(o.get("times").unwrap_or(&Value::Null))?)
        }
        Some(v) => Some(times(v)?),
    };
    Ok(JobPatch {
        name: string(obj, "name")?,
        schedule,
        timezone: string(obj, "timezone")?,
        prompt: string(obj, "prompt")?,
        enabled: boolean(obj, "enabled")?,
        paused: boolean(obj, "paused")?,
        skills,
        deliver,
        repeat,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn three_shapes() {
        let p = parse(&json!({"cron": "0 8 * * *", "prompt": "hi", "enabled": true}))
            .expect("platform");
        assert_eq!(p.schedule.as_deref(), Some("0 8 * * *"));
        let p = parse(&json!({"name": "n", "schedule": "every 30m", "prompt": "p", "deliver": "telegram", "skills": ["a"], "repeat": 3, "enabled": true})).expect("hermes");
        assert_eq!(p.repeat, Some(Some(3)));
        assert_eq!(p.skills, Some(Some(vec!["a".to_owned()])));
        let p = parse(&json!({"schedule": {"kind": "interval", "minutes": 15, "display": "every 15m"}, "prompt": "p", "repeat": {"times": 2, "completed": 0}})).expect("stored");
        assert_eq!(p.schedule.as_deref(), Some("every 15m"));
        assert_eq!(p.repeat, Some(Some(2)));
    }

    #[test]
    fn refusals_name_the_field() {
        for (body, field) in [
            (json!({"bogus": 1}), "bogus:"),
            (json!({"schedule": 5}), "schedule:"),
            (json!({"schedule": "a", "cron": "b"}), "cron:"),
            (json!({"enabled": "yes"}), "enabled:"),
            (json!({"repeat": 0}), "repeat:"),
            (json!({"skills": [""]}), "skills:"),
            (json!({"deliver": ""}), "deliver:"),
        ] {
            let e = parse(&body).unwrap_err().to_string();
            assert!(e.starts_with(field), "{body} -> {e}");
        }
    }
}
