//! The front door: the documented configuration cannot drift from the
//! daemon's parser, the example configuration is valid, and `--dev`
//! without an agent says so instead of failing in a loop.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::binary;

fn repo_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

/// `hermes-tenantd check-config --config FILE` with none of the caller's
/// `HERMES_TENANTD_*` overrides (they would change what is checked).
fn check_config(file: &Path) -> Output {
    let mut cmd = Command::new(binary());
    cmd.arg("check-config").arg("--config").arg(file);
    for (k, _) in std::env::vars() {
        if k.starts_with("HERMES_TENANTD_") || k == "CREDENTIALS_DIRECTORY" {
            cmd.env_remove(k);
        }
    }
    cmd.output().expect("run check-config")
}

// ---- the keys the daemon reads, asked of the daemon itself -----------------------

/// What the parser says about a probe field put inside `section` (dotted,
/// empty for the top level): the fields of that section when it is one,
/// `None` when it is a value (a leaf key).
fn fields_of(dir: &Path, section: &str) -> Option<Vec<String>> {
    let file = dir.join("probe.toml");
    let text = if section.is_empty() {
        "__probe__ = 1\n".to_owned()
    } else {
        format!("[{section}]\n__probe__ = 1\n")
    };
    std::fs::write(&file, text).expect("write probe");
    let out = check_config(&file);
    assert!(!out.status.success(), "a probe field must be refused");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    // serde: "unknown field `__probe__`, expected one of `a`, `b`" (or
    // "expected `a`" for a single field); anything else means `section`
    // is not a table, so it is a key.
    let rest = err.split("unknown field `__probe__`, expected ").nth(1)?;
    let names: Vec<String> = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    assert!(!names.is_empty(), "cannot read the fields from: {err}");
    Some(names)
}

/// Every dotted key the daemon's configuration accepts, found by walking
/// its sections with probe files (new sections and keys are found without
/// touching this test).
fn daemon_keys() -> BTreeSet<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut keys = BTreeSet::new();
    let mut todo = vec![String::new()];
    while let Some(section) = todo.pop() {
        let fields =
            fields_of(dir.path(), &section).expect("the top level and sections are tables");
        for f in fields {
            let key = if section.is_empty() {
                f
            } else {
                format!("{section}.{f}")
            };
            if fields_of(dir.path(), &key).is_some() {
                todo.push(key);
            } else {
                keys.insert(key);
            }
        }
    }
    keys
}

fn is_dotted_key(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

/// The keys of the reference table in docs/configuration.md: every
/// backticked dotted name in the first cell of a table row.
fn documented_keys() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo_file("docs/configuration.md")).expect("read reference");
    let mut keys = BTreeSet::new();
    for line in text.lines() {
        let Some(row) = line.strip_prefix('|') else {
            continue;
        };
        let first = row.split('|').next().unwrap_or("");
        for (i, piece) in first.split('`').enumerate() {
            if i % 2 == 1 && is_dotted_key(piece) {
                keys.insert(piece.to_owned());
            }
        }
    }
    keys
}

#[test]
fn every_config_key_is_in_the_reference_and_no_documented_key_is_unknown() {
    let daemon = daemon_keys();
    // A floor, so a broken probe cannot pass with an empty set.
    for k in [
        "tenant_id",
        "gateway.venv",
        "hub.url",
        "files.roots",
        "agent_card.name",
    ] {
        assert!(daemon.contains(k), "probe missed `{k}`: {daemon:?}");
    }
    let documented = documented_keys();
    let undocumented: Vec<_> = daemon.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&daemon).collect();
    assert!(
        undocumented.is_empty(),
        "keys the daemon reads but docs/configuration.md does not list (add a row): {undocumented:?}"
    );
    assert!(
        unknown.is_empty(),
        "keys docs/configuration.md lists but the daemon does not know: {unknown:?}"
    );
}

#[test]
fn example_config_passes_check_config() {
    let out = check_config(&repo_file("config.example.toml"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check-config refused config.example.toml: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("ok: tenant a1b2 listening on 127.0.0.1:8643 (http)"),
        "{stdout}"
    );
}

/// The example shows defaults as commented lines; those must name real
/// keys too, or uncommenting one would stop the daemon.
#[test]
fn every_key_in_the_example_config_is_known_commented_or_not() {
    let known = daemon_keys();
    let text = std::fs::read_to_string(repo_file("config.example.toml")).expect("read example");
    let mut section = String::new();
    let mut seen = 0;
    for line in text.lines() {
        let line = line.strip_prefix('#').unwrap_or(line).trim();
        if let Some(h) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
            section = h.to_owned();
            continue;
        }
        if let Some(h) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = h.to_owned();
            continue;
        }
        let Some((name, _)) = line.split_once(" = ") else {
            continue;
        };
        if !is_dotted_key(name) || known.contains(&section) {
            // Prose, or a field inside an array-of-tables key (files.roots).
            continue;
        }
        let key = if section.is_empty() {
            name.to_owned()
        } else {
            format!("{section}.{name}")
        };
        assert!(
            known.contains(&key),
            "config.example.toml shows `{key}`, which the daemon does not know"
        );
        seen += 1;
    }
    assert!(seen > 50, "only {seen} keys read from the example");
}

// ---- `--dev` without an agent --------------------------------------------------

/// A `--dev` daemon on a machine where no `hermes` can be found: an empty
/// `PATH` and no `.tenantd-dev/agent-venv`. A short backoff, so a retry
/// loop (the old behaviour) would show at once.
async fn dev_daemon_without_agent(empty_bin: &Path) -> common::TestDaemon {
    common::TestDaemon::start_dev(common::Options {
        env: vec![
            ("PATH".into(), empty_bin.display().to_string()),
            ("HERMES_TENANTD_GATEWAY__BACKOFF_BASE".into(), "10ms".into()),
            ("HERMES_TENANTD_GATEWAY__BACKOFF_CAP".into(), "50ms".into()),
        ],
        ..Default::default()
    })
    .await
}

async fn wait_agent_state(d: &common::TestDaemon, state: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let v = d.get_json("/agent").await;
        if v["state"] == state {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "agent never reached {state}: {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

fn log_lines_at(d: &common::TestDaemon, level: &str) -> Vec<String> {
    d.logs()
        .into_iter()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .is_ok_and(|v| v["level"].as_str() == Some(level))
        })
        .collect()
}

#[tokio::test]
async fn dev_without_an_agent_is_not_installed_with_one_warning_and_refuses_runs_at_once() {
    let empty = tempfile::tempdir().expect("tempdir");
    let mut d = dev_daemon_without_agent(empty.path()).await;

    let agent = wait_agent_state(&d, "not_installed").await;
    let hint = agent["last_error"].as_str().unwrap_or_default().to_owned();
    assert!(
        hint.contains("scripts/dev-agent"),
        "GET /agent says how to install: {agent}"
    );
    assert!(
        !hint.contains(&d.dir.display().to_string()),
        "no host path: {hint}"
    );
    assert_eq!(agent["pid"], serde_json::Value::Null, "{agent}");

    // A run is refused at once, not left queued.
    let r = d
        .post("/runs")
        .json(&serde_json::json!({"input": "hello"}))
        .send()
        .await
        .expect("post run");
    let problem = common::expect_problem(r, 409, "agent_not_installed").await;
    assert!(
        problem["message"]
            .as_str()
            .unwrap_or_default()
            .contains("scripts/dev-agent"),
        "{problem}"
    );
    let runs = d.get_json("/runs").await;
    assert_eq!(
        runs["items"].as_array().map(Vec::len),
        Some(0),
        "nothing recorded: {runs}"
    );

    // A start looks again, and stays put without another warning.
    let r = d.post("/agent/start").send().await.expect("start");
    assert_eq!(r.status(), 202);
    d.wait_for_log("\"command\":\"Start\"", std::time::Duration::from_secs(30))
        .await;
    let agent = wait_agent_state(&d, "not_installed").await;
    assert_eq!(agent["restarts"], 0, "{agent}");

    assert!(d.terminate().success());
    let warnings: Vec<_> = log_lines_at(&d, "WARN")
        .into_iter()
        .filter(|l| l.contains("no agent installed"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning: {warnings:#?}");
    assert!(warnings[0].contains("scripts/dev-agent"), "{}", warnings[0]);
    let errors = log_lines_at(&d, "ERROR");
    assert!(errors.is_empty(), "no ERROR line: {errors:#?}");
}

#[tokio::test]
async fn dev_run_that_wakes_a_stopped_agent_without_one_fails_at_once() {
    let empty = tempfile::tempdir().expect("tempdir");
    let d = dev_daemon_without_agent(empty.path()).await;
    wait_agent_state(&d, "not_installed").await;
    let r = d.post("/agent/stop").send().await.expect("stop");
    assert_eq!(r.status(), 202);
    wait_agent_state(&d, "stopped").await;

    // Accepted (the agent might be there), then failed as soon as the wake
    // finds no agent: well before the wake timeout.
    let run = common::start_run(&d, serde_json::json!({"input": "hello"})).await;
    let run_id = run["run_id"].as_str().expect("run id");
    let done = common::wait_run(&d, run_id, "failed").await;
    assert_eq!(done["error"]["code"], "agent_not_installed", "{done}");
    wait_agent_state(&d, "not_installed").await;
}

// ---- `scripts/dev-agent` and `--dev` finding what it installed --------------------

/// A virtualenv that looks installed to `scripts/dev-agent` without PyPI:
/// a real venv (system site packages, so PyYAML is there when the system
/// has it), hermes-agent's metadata, and `bin/hermes` running `hermes`.
fn fake_agent_venv(venv: &Path, hermes: &str) -> bool {
    let ok = Command::new(common::python())
        .args(["-m", "venv", "--without-pip", "--system-site-packages"])
        .arg(venv)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return false;
    }
    let site = std::fs::read_dir(venv.join("lib"))
        .expect("lib")
        .filter_map(Result::ok)
        .map(|e| e.path().join("site-packages"))
        .find(|p| p.is_dir())
        .expect("site-packages");
    let meta = site.join("hermes_agent-0.19.0.dist-info");
    std::fs::create_dir_all(&meta).expect("dist-info");
    std::fs::write(
        meta.join("METADATA"),
        "Metadata-Version: 2.1\nName: hermes-agent\nVersion: 0.19.0\n",
    )
    .expect("metadata");
    write_hermes(venv, hermes);
    true
}

/// `venv/bin/hermes`, executable, running `script`.
fn write_hermes(venv: &Path, script: &str) {
    let bin = venv.join("bin/hermes");
    std::fs::write(&bin, script).expect("hermes");
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
}

#[tokio::test]
async fn dev_finds_the_agent_venv_in_its_data_dir_without_configuration() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let venv = dir.join("data").join("agent-venv");
    std::fs::create_dir_all(venv.join("bin")).expect("venv");
    // The daemon runs `hermes gateway run --external-supervisor`: here the
    // fake gateway (it ignores its arguments).
    let hermes = format!(
        "#!/bin/sh\nexec {} {}/tests/fake_gateway.py\n",
        common::python(),
        env!("CARGO_MANIFEST_DIR")
    );
    write_hermes(&venv, &hermes);
    let empty = tempfile::tempdir().expect("tempdir");
    let port = common::free_port();
    let d = common::TestDaemon::start_dev(common::Options {
        // Nothing about the venv or the command: `--dev` finds it.
        config_extra: format!("[gateway]\nport = {port}\nhealth_interval = \"100ms\"\n"),
        env: vec![("PATH".into(), empty.path().display().to_string())],
        dir: Some(dir),
    })
    .await;
    let agent = wait_agent_state(&d, "running").await;
    assert!(agent["pid"].as_u64().is_some(), "{agent}");
    assert_eq!(agent["release"], "0.19.0-fake", "{agent}");
}

/// `scripts/dev-agent` with none of the caller's provider variables.
fn dev_agent(dev_dir: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(repo_file("scripts/dev-agent"));
    cmd.env("TENANTD_DEV_DIR", dev_dir);
    for k in [
        "OPENAI_BASE_URL",
        "OPENAI_API_KEY",
        "OPENROUTER_API_KEY",
        "ANTHROPIC_API_KEY",
        "HERMES_MODEL",
        "PIP_ARGS",
    ] {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run scripts/dev-agent")
}

/// `scripts/dev-agent` that must succeed: its stdout and the dev agent's
/// `config.yaml` after it.
fn configure(dev_dir: &Path, env: &[(&str, &str)]) -> (String, String) {
    let out = dev_agent(dev_dir, env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = std::fs::read_to_string(dev_dir.join("hermes-home/config.yaml")).expect("config");
    (String::from_utf8_lossy(&out.stdout).into_owned(), config)
}

#[test]
fn dev_agent_configures_the_provider_from_the_environment_and_switches_cleanly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dev_dir = tmp.path().join(".tenantd-dev");
    let venv = dev_dir.join("agent-venv");
    if !fake_agent_venv(&venv, "#!/bin/sh\nexit 0\n") {
        eprintln!(
            "SKIPPED: cannot create a virtualenv with {}",
            common::python()
        );
        return;
    }
    let has_yaml = Command::new(venv.join("bin/python"))
        .args(["-c", "import yaml"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_yaml {
        eprintln!("SKIPPED: the system Python has no PyYAML (the real agent venv always has it)");
        return;
    }
    let home = dev_dir.join("hermes-home");

    // Nothing set: installed (already), nothing configured, said so.
    let out = dev_agent(&dev_dir, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("already installed"), "{stdout}");
    assert!(
        stdout.contains("OPENROUTER_API_KEY"),
        "lists what to set: {stdout}"
    );
    assert!(!home.join("config.yaml").exists());

    // An OpenRouter key: provider, model, and the key in .env (0600).
    std::fs::create_dir_all(&home).expect("home");
    std::fs::write(home.join("config.yaml"), "display:\n  personality: terse\n").expect("config");
    std::fs::write(home.join(".env"), "OTHER=1\nOPENROUTER_API_KEY='old'\n").expect(".env");
    let (stdout, config) = configure(
        &dev_dir,
        &[
            ("OPENROUTER_API_KEY", "sk-or-test-123"),
            ("HERMES_MODEL", "vendor/model-a"),
        ],
    );
    assert!(
        config.contains("provider: openrouter") && config.contains("default: vendor/model-a"),
        "{config}"
    );
    assert!(
        config.contains("personality: terse"),
        "other settings kept: {config}"
    );
    let dotenv = std::fs::read_to_string(home.join(".env")).expect(".env");
    assert_eq!(dotenv, "OTHER=1\nOPENROUTER_API_KEY='sk-or-test-123'\n");
    let mode = std::fs::metadata(home.join(".env"))
        .expect("meta")
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    assert!(!stdout.contains("sk-or-test-123"), "the key is not printed");

    // A switch to a local OpenAI-compatible server leaves no OpenRouter
    // setting in the model section.
    let (_, config) = configure(
        &dev_dir,
        &[
            ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1"),
            ("HERMES_MODEL", "local-model"),
        ],
    );
    assert!(
        config.contains("provider: custom")
            && config.contains("base_url: http://127.0.0.1:9/v1")
            && config.contains("default: local-model")
            && !config.contains("openrouter"),
        "{config}"
    );
}

// ---- the Ansible example inventory ------------------------------------------------

/// Every variable name in a YAML inventory: keys of `vars:` maps and of
/// host entries, at any depth.
fn inventory_variables(
    v: &serde_yaml_ng::Value,
    under_vars_or_host: bool,
    out: &mut BTreeSet<String>,
) {
    let serde_yaml_ng::Value::Mapping(map) = v else {
        return;
    };
    for (k, child) in map {
        let Some(key) = k.as_str() else { continue };
        if under_vars_or_host {
            out.insert(key.to_owned());
            continue;
        }
        match key {
            "vars" => inventory_variables(child, true, out),
            "hosts" => {
                if let serde_yaml_ng::Value::Mapping(hosts) = child {
                    for host_vars in hosts.values() {
                        inventory_variables(host_vars, true, out);
                    }
                }
            }
            _ => inventory_variables(child, false, out),
        }
    }
}

/// Every `hermes_tenantd_*` name the role and playbooks mention (defaults,
/// tasks, templates, playbooks), the example inventory aside.
fn role_variables() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut todo = vec![repo_file("ansible")];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).expect("read ansible dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
                continue;
            }
            if path
                .file_name()
                .is_some_and(|n| n == "inventory.example.yml")
            {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            for (i, _) in text.match_indices("hermes_tenantd_") {
                let name: String = text[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                names.insert(name);
            }
        }
    }
    names
}

/// The example once said `hermes_agent_version` while the role reads
/// `hermes_tenantd_agent_version`: a copy silently installed no agent.
/// (The deploy suite also runs the example itself: tests/deploy.)
#[test]
fn every_variable_of_the_example_inventory_is_one_the_role_reads() {
    let text =
        std::fs::read_to_string(repo_file("ansible/inventory.example.yml")).expect("read example");
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&text).expect("example inventory is YAML");
    let mut vars = BTreeSet::new();
    inventory_variables(&doc, false, &mut vars);
    assert!(vars.contains("hermes_tenantd_agent_version"), "{vars:?}");
    let known = role_variables();
    assert!(known.contains("hermes_tenantd_binary_sha256"), "{known:?}");
    let unknown: Vec<_> = vars
        .iter()
        .filter(|v| v.starts_with("hermes") && !known.contains(*v))
        .collect();
    assert!(
        unknown.is_empty(),
        "the example sets variables the role never reads: {unknown:?}"
    );
}

// ---- `search` on the command line ---------------------------------------------------

#[tokio::test]
async fn cli_search_prints_plain_text_when_piped() {
    let mut d = common::TestDaemon::start().await;
    let r = d
        .post("/conversations/s1/messages")
        .json(&serde_json::json!({
            "platform": "web",
            "messages": [{"role": "user", "content": "Plan a trip to <Lisbon> & Porto"}]
        }))
        .send()
        .await
        .expect("import");
    assert!(
        r.status().is_success(),
        "{}",
        r.text().await.unwrap_or_default()
    );
    // Stopped first: the store is checkpointed, and search opens it read-only.
    assert!(d.terminate().success());
    let out = Command::new(binary())
        .args(["search", "--config"])
        .arg(d.dir.join("config.toml"))
        .arg("lisbon")
        .output()
        .expect("run search");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("Plan a trip to <Lisbon> & Porto"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("<mark>") && !stdout.contains('\u{1b}'),
        "plain when piped: {stdout}"
    );
}
