//! The agent's identity and cgroup limits (`gateway.user`, `gateway.group`,
//! `gateway.memory_max`, `gateway.tasks_max`, `gateway.cpu_weight`).

use super::{AgentLimits, ConfigError, MemoryMax, invalid};
use crate::identity::{self, AgentIdentity};

/// Default share of the machine's memory the agent may use: on the smallest
/// plan (1 GiB) this leaves ~150 MiB for the daemon (~12 MiB) and the OS.
pub const DEFAULT_MEMORY_MAX: &str = "85%";
/// Default `pids.max` of the agent: the unit's `TasksMax=4096` covers daemon
/// and agent together, so a fork bomb in the agent leaves the daemon half.
pub const DEFAULT_TASKS_MAX: u64 = 2048;
/// Default `cpu.weight` of the agent (the daemon's cgroup gets
/// `supervisor::cgroup::DAEMON_CPU_WEIGHT`).
pub const DEFAULT_CPU_WEIGHT: u32 = 100;

/// A user or group name as given, surrounding blanks ignored.
fn non_empty(v: Option<String>) -> Option<String> {
    super::validate::non_empty(v).map(|s| s.trim().to_owned())
}

pub(super) fn identity(
    user: Option<String>,
    group: Option<String>,
) -> Result<AgentIdentity, ConfigError> {
    let (user, group) = (non_empty(user), non_empty(group));
    identity::resolve(user.as_deref(), group.as_deref()).map_err(|e| {
        let key = match e {
            identity::IdentityError::NoGroup(_) => "gateway.group",
            _ if user.is_none() => "gateway.group",
            _ => "gateway.user",
        };
        invalid(key, e.to_string())
    })
}

pub(super) fn limits(
    memory_max: Option<String>,
    tasks_max: Option<u64>,
    cpu_weight: Option<u32>,
) -> Result<AgentLimits, ConfigError> {
    let text = non_empty(memory_max).unwrap_or_else(|| DEFAULT_MEMORY_MAX.to_owned());
    let memory_max = parse_memory_max(&text).ok_or_else(|| {
        invalid(
            "gateway.memory_max",
            format!("`{text}` is not `max`, a size like `768M` / `2G`, or a percentage like `85%` (10-100)"),
        )
    })?;
    let tasks_max = tasks_max.unwrap_or(DEFAULT_TASKS_MAX);
    if !(16..=4_194_304).contains(&tasks_max) {
        return Err(invalid(
            "gateway.tasks_max",
            "must be between 16 and 4194304",
        ));
    }
    let cpu_weight = cpu_weight.unwrap_or(DEFAULT_CPU_WEIGHT);
    if !(1..=10_000).contains(&cpu_weight) {
        return Err(invalid("gateway.cpu_weight", "must be between 1 and 10000"));
    }
    Ok(AgentLimits {
        memory_max,
        tasks_max,
        cpu_weight,
    })
}

/// `max`, bytes with an optional `K`/`M`/`G`/`T` suffix (powers of 1024,
/// at least 32 MiB), or `N%` of the machine's memory (10-100).
pub fn parse_memory_max(text: &str) -> Option<MemoryMax> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("max") || t.eq_ignore_ascii_case("infinity") {
        return Some(MemoryMax::Unlimited);
    }
    if let Some(p) = t.strip_suffix('%') {
        let p: u8 = p.trim().parse().ok()?;
        return (10..=100).contains(&p).then_some(MemoryMax::Percent(p));
    }
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, ""),
    };
    let shift = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches(['B', 'I'])
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return None,
    };
    let n: u64 = digits.parse().ok()?;
    let bytes = n.checked_mul(1u64 << shift)?;
    (bytes >= 32 << 20).then_some(MemoryMax::Bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_max_forms() {
        assert_eq!(parse_memory_max("max"), Some(MemoryMax::Unlimited));
        assert_eq!(parse_memory_max("85%"), Some(MemoryMax::Percent(85)));
        assert_eq!(parse_memory_max("768M"), Some(MemoryMax::Bytes(768 << 20)));
        assert_eq!(parse_memory_max("2GiB"), Some(MemoryMax::Bytes(2 << 30)));
        assert_eq!(
            parse_memory_max("1073741824"),
            Some(MemoryMax::Bytes(1 << 30))
        );
        for bad in [
            "",
            "5%",
            "101%",
            "12X",
            "1M",
            "-1G",
            "99999999999999999999G",
        ] {
            assert_eq!(parse_memory_max(bad), None, "{bad}");
        }
    }

    #[test]
    fn limit_ranges_name_their_key() {
        let e = limits(None, Some(2), None).expect_err("tasks");
        assert!(e.to_string().contains("gateway.tasks_max"), "{e}");
        let e = limits(None, None, Some(0)).expect_err("weight");
        assert!(e.to_string().contains("gateway.cpu_weight"), "{e}");
        let e = limits(Some("lots".into()), None, None).expect_err("memory");
        assert!(e.to_string().contains("gateway.memory_max"), "{e}");
        let ok = limits(None, None, None).expect("defaults");
        assert_eq!(ok.tasks_max, DEFAULT_TASKS_MAX);
        assert_eq!(ok.memory_max, MemoryMax::Percent(85));
    }

    #[test]
    fn unknown_user_names_gateway_user() {
        let e = identity(Some("no-such-user-xyzzy".into()), None).expect_err("user");
        assert!(e.to_string().contains("gateway.user"), "{e}");
        let e = identity(None, Some("no-such-group-xyzzy".into())).expect_err("group");
        assert!(e.to_string().contains("gateway.group"), "{e}");
    }
}
