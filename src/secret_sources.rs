//! The tenant `config.yaml`'s external secret sources, read as the gateway
//! reads them.
//!
//! hermes-agent 0.19.0 (`hermes_cli/env_loader.py`) runs, after the tenant
//! `.env` files and right before the managed `.env`, every source enabled
//! under `secrets:` in `HERMES_HOME/config.yaml` (Bitwarden, 1Password; at
//! start and again before every cron job). A source with
//! `override_existing` on (its default) may set any variable, including
//! `HERMES_MANAGED_DIR`, which the managed `.env` is then read from: the
//! whole managed scope (port, host, key, policy) redirected. The agent
//! needs no vault for that: the Bitwarden source runs
//! `HERMES_HOME/bin/bws` first, a file the agent can write.
//!
//! So a gateway is never started on a `config.yaml` that enables a source
//! that may override (the supervisor, before every spawn), and the `.env`
//! guard restarts a running gateway when one appears. A source with
//! `override_existing: false` only fills variables nothing set, and every
//! key of the managed scope is set (the spawn environment, the managed
//! `.env` applied after it).
//!
//! Parsed exactly enough, and where the two parsers differ, toward
//! refusing: the gateway's PyYAML reads YAML 1.1 (`off`, `no` are false
//! there), this daemon's parser YAML 1.2, so a value counts as false only
//! when it is false in both (`false`, null, `""`, `[]`, `{}`; not numbers,
//! not `no`/`off`); merge keys (`<<`) are applied as PyYAML applies them,
//! nested ones included; a document this parser cannot read is refused.

use std::path::Path;

use serde_yaml_ng::{Mapping, Value};

/// Whether a gateway may be started on the Hermes home's `config.yaml`:
/// `Err` says why not (no path, no value: safe for `last_error` and logs).
pub async fn check(hermes_home: &Path) -> Result<(), String> {
    let config = crate::settings::read_tenant_config(hermes_home.join("config.yaml"))
        .await
        .map_err(|e| format!("{e}; its external secret sources (`secrets:`) cannot be checked"))?;
    let names = overriding(&config)
        .map_err(|e| format!("config.yaml cannot be checked for external secret sources: {e}"))?;
    if names.is_empty() {
        return Ok(());
    }
    let list = names
        .iter()
        .map(|n| format!("secrets.{n}"))
        .collect::<Vec<_>>()
        .join(", ");
    Err(format!(
        "config.yaml enables {list} with `override_existing` on (its default): such a source may replace the managed environment (HERMES_MANAGED_DIR); set `override_existing: false` there"
    ))
}

/// The sources that may override the gateway's environment, by name
/// (sorted); empty when none can.
pub fn overriding(config: &Mapping) -> Result<Vec<String>, &'static str> {
    let mut doc = Value::Mapping(config.clone());
    merge_all(&mut doc)?;
    let Some(Value::Mapping(secrets)) = doc.get("secrets") else {
        // `data.get("secrets") or {}`, then `isinstance(…, dict)`: anything
        // but a mapping runs no source.
        return Ok(Vec::new());
    };
    let mut names: Vec<String> = secrets
        .iter()
        .filter_map(|(name, section)| {
            // `secrets.sources` orders sources; sources are looked up by
            // their (string) names.
            let name = name.as_str().filter(|n| *n != "sources")?;
            let Value::Mapping(section) = section else {
                return None; // not a dict: `{}`, not enabled
            };
            let enabled = section.get("enabled").is_some_and(|v| !is_false(v));
            // `cfg.get("override_existing", True)`.
            let overrides = section
                .get("override_existing")
                .is_none_or(|v| !is_false(v));
            (enabled && overrides).then(|| name.to_owned())
        })
        .collect();
    names.sort();
    Ok(names)
}

/// False for Python's `bool()` under both YAML 1.1 and 1.2 readings.
fn is_false(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::String(s) => s.is_empty(),
        Value::Sequence(s) => s.is_empty(),
        Value::Mapping(m) => m.is_empty(),
        // `0o0` is 0 in YAML 1.2 and a (true) string in PyYAML: never
        // trusted as false.
        Value::Number(_) | Value::Tagged(_) => false,
    }
}

/// Most rounds of merging: one nesting level of `<<` each.
const MERGE_ROUNDS: usize = 64;

/// Apply every merge key, nested ones included (a mapping merged in may
/// carry its own `<<`, which PyYAML flattens too).
fn merge_all(doc: &mut Value) -> Result<(), &'static str> {
    for _ in 0..MERGE_ROUNDS {
        if !has_merge_key(doc) {
            return Ok(());
        }
        doc.apply_merge()
            .map_err(|_| "a merge key (<<) that is not a mapping or a list of mappings")?;
    }
    Err("merge keys (<<) nested too deeply")
}

fn has_merge_key(v: &Value) -> bool {
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::Mapping(m) => {
                if m.contains_key("<<") {
                    return true;
                }
                stack.extend(m.values());
            }
            Value::Sequence(s) => stack.extend(s),
            Value::Tagged(t) => stack.push(&t.value),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> Result<Vec<String>, &'static str> {
        match serde_yaml_ng::from_str::<Value>(yaml).expect("yaml") {
            Value::Mapping(m) => overriding(&m),
            other => panic!("not a mapping: {other:?}"),
        }
    }

    #[test]
    fn an_enabled_source_overrides_unless_told_not_to() {
        assert_eq!(
            check("secrets:\n  bitwarden:\n    enabled: true\n"),
            Ok(vec!["bitwarden".into()])
        );
        assert_eq!(
            check(
                "secrets:\n  bitwarden: {enabled: true, override_existing: true}\n  onepassword: {enabled: yes}\n"
            ),
            Ok(vec!["bitwarden".into(), "onepassword".into()])
        );
        for off in ["false", "null", "~", "''", "[]", "{}"] {
            assert_eq!(
                check(&format!(
                    "secrets:\n  bitwarden: {{enabled: true, override_existing: {off}}}\n"
                )),
                Ok(vec![]),
                "{off}"
            );
        }
        // PyYAML reads these as false, this parser as strings or numbers:
        // refused rather than trusted.
        for unsure in ["no", "off", "0", "0o0", "'false'"] {
            assert_eq!(
                check(&format!(
                    "secrets:\n  bitwarden: {{enabled: true, override_existing: {unsure}}}\n"
                )),
                Ok(vec!["bitwarden".into()]),
                "{unsure}"
            );
        }
    }

    #[test]
    fn what_runs_no_source_is_accepted() {
        for yaml in [
            "model: x\n",
            "secrets:\n",
            "secrets: [bitwarden]\n",
            "secrets: {sources: [bitwarden]}\n",
            "secrets:\n  bitwarden: {enabled: false}\n",
            "secrets:\n  bitwarden: {override_existing: true}\n",
            "secrets:\n  bitwarden: [enabled]\n",
        ] {
            assert_eq!(check(yaml), Ok(vec![]), "{yaml}");
        }
    }

    /// The section as hermes-agent 0.19.0 writes its defaults
    /// (`yaml.safe_dump` of `DEFAULT_CONFIG["secrets"]`): nothing enabled,
    /// so accepted; `enabled: true` on either source (what `hermes secrets
    /// … setup` turns on) with the default `override_existing: true` is not.
    #[test]
    fn the_gateways_own_defaults_pass_and_turning_a_source_on_does_not() {
        let defaults = "secrets:\n  bitwarden:\n    enabled: false\n    access_token_env: BWS_ACCESS_TOKEN\n    project_id: ''\n    cache_ttl_seconds: 300\n    override_existing: true\n    auto_install: true\n    server_url: ''\n  onepassword:\n    enabled: false\n    env: {}\n    account: ''\n    service_account_token_env: OP_SERVICE_ACCOUNT_TOKEN\n    binary_path: ''\n    cache_ttl_seconds: 300\n    override_existing: true\n";
        assert_eq!(check(defaults), Ok(vec![]));
        let on = defaults.replacen("enabled: false", "enabled: true", 2);
        assert_eq!(
            check(&on),
            Ok(vec!["bitwarden".into(), "onepassword".into()])
        );
    }

    /// Merge keys hide nothing, however deep.
    #[test]
    fn merged_sections_are_seen() {
        let yaml = "a: &a {enabled: true}\nb: &b {<<: *a}\nc: &c {bitwarden: {<<: *b}}\nsecrets:\n  <<: *c\n";
        assert_eq!(check(yaml), Ok(vec!["bitwarden".into()]));
        let top = "x: &x {secrets: {onepassword: {enabled: true}}}\n<<: *x\n";
        assert_eq!(check(top), Ok(vec!["onepassword".into()]));
        // An explicit key beats the merged one, as in PyYAML.
        let explicit = "a: &a {enabled: true, override_existing: true}\nsecrets:\n  bitwarden: {<<: *a, override_existing: false}\n";
        assert_eq!(check(explicit), Ok(vec![]));
        assert!(check("secrets: {<<: 5}\n").is_err());
    }
}
