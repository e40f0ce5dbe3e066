use super::*;

fn load(toml_text: &str, env: &[(&str, &str)], dev: bool) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("config.toml");
    std::fs::write(&file, toml_text).expect("write");
    Config::load_with_env(
        &Source {
            file: Some(file),
            dev,
        },
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

#[test]
fn env_overrides_file_with_double_underscore_nesting() {
    let c = load(
        "tenant_id = \"t1\"\n[gateway]\nport = 9000\n",
        &[
            ("HERMES_TENANTD_GATEWAY__PORT", "9100"),
            ("HERMES_TENANTD_GATEWAY__COMMAND", "python3 'my gw.py' --x"),
        ],
        false,
    )
    .expect("valid");
    assert_eq!(c.gateway.port, 9100);
    assert_eq!(c.gateway.command, vec!["python3", "my gw.py", "--x"]);
}

#[test]
fn bad_values_name_the_key() {
    let e = load("tenant_id = \"t1\"\n[gateway]\nport = \"x\"\n", &[], false).unwrap_err();
    assert!(e.to_string().contains("gateway.port"), "{e}");
    let e = load(
        "tenant_id = \"t1\"\n[auth]\nrotation_overlap = \"soon\"\n",
        &[],
        false,
    )
    .unwrap_err();
    assert!(e.to_string().contains("auth.rotation_overlap"), "{e}");
    let e = load("tenant_id = \"t1\"\n[listen]\nadr = \"x\"\n", &[], false).unwrap_err();
    assert!(e.to_string().contains("adr"), "{e}");
    let e = load("", &[], false).unwrap_err();
    assert!(e.to_string().contains("tenant_id"), "{e}");
}

#[test]
fn cron_keys_have_defaults_and_are_validated_by_name() {
    let c = load("tenant_id = \"t1\"\n", &[], false).expect("defaults");
    assert_eq!(c.cron.max_jobs, 100);
    assert_eq!(c.cron.min_interval, Duration::from_secs(60));
    assert_eq!(c.cron.missed_grace, Duration::from_secs(600));
    let c = load(
        "tenant_id = \"t1\"\n[cron]\nmissed_grace = \"30s\"\nmax_jobs = 7\n",
        &[("HERMES_TENANTD_CRON__MIN_INTERVAL", "1s")],
        false,
    )
    .expect("set");
    assert_eq!(c.cron.missed_grace, Duration::from_secs(30));
    assert_eq!(c.cron.max_jobs, 7);
    assert_eq!(c.cron.min_interval, Duration::from_secs(1));
    for (text, key) in [
        ("[cron]\nmax_jobs = 0\n", "cron.max_jobs"),
        ("[cron]\nmissed_grace = \"soon\"\n", "cron.missed_grace"),
        (
            "[cron]\ndelivery_backoff_base = \"10m\"\ndelivery_backoff_cap = \"1s\"\n",
            "cron.delivery_backoff_cap",
        ),
        ("[cron]\nbogus = 1\n", "bogus"),
    ] {
        let e = load(&format!("tenant_id = \"t1\"\n{text}"), &[], false).unwrap_err();
        assert!(e.to_string().contains(key), "{text}: {e}");
    }
}

#[test]
fn gateway_supervision_keys_are_validated_by_name() {
    let c = load(
        "tenant_id = \"t1\"\n[gateway]\nbackoff_base = \"100ms\"\nhealth_interval = \"250ms\"\ncrash_loop_count = 2\n",
        &[("HERMES_TENANTD_GATEWAY__UNHEALTHY_THRESHOLD", "4")],
        false,
    )
    .expect("valid");
    assert_eq!(c.gateway.backoff_base, Duration::from_millis(100));
    assert_eq!(c.gateway.backoff_cap, Duration::from_secs(300));
    assert_eq!(c.gateway.health_interval, Duration::from_millis(250));
    assert_eq!(c.gateway.unhealthy_threshold, 4);
    assert_eq!(c.gateway.crash_loop_count, 2);
    assert_eq!(c.gateway.workdir, c.gateway.hermes_home);
    for (toml_text, key) in [
        (
            "backoff_base = \"10s\"\nbackoff_cap = \"1s\"",
            "gateway.backoff_cap",
        ),
        ("unhealthy_threshold = 0", "gateway.unhealthy_threshold"),
        ("crash_loop_count = 0", "gateway.crash_loop_count"),
        ("health_interval = \"often\"", "gateway.health_interval"),
        ("log_file_bytes = 10", "gateway.log_file_bytes"),
        ("venv = \"/nonexistent/venv\"", "gateway.venv"),
    ] {
        let e = load(
            &format!("tenant_id = \"t1\"\n[gateway]\n{toml_text}\n"),
            &[],
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains(key), "{toml_text}: {e}");
    }
}

#[test]
fn non_loopback_without_tls_is_refused() {
    let e = load(
        "tenant_id = \"t1\"\n[listen]\naddr = \"0.0.0.0:8643\"\n",
        &[],
        false,
    )
    .unwrap_err();
    assert!(e.to_string().contains("listen.addr"), "{e}");
    assert!(e.to_string().contains("tls"), "{e}");
}

#[test]
fn dev_needs_nothing_but_explicit_values_still_apply() {
    let c = load(
        "",
        &[("HERMES_TENANTD_HUB__URL", "http://127.0.0.1:9")],
        true,
    )
    .expect("valid");
    assert_eq!(c.tenant_id, DEV_TENANT_ID);
    assert!(c.data_dir.ends_with(DEV_DATA_DIR));
    assert_eq!(c.hub.url.as_deref(), Some("http://127.0.0.1:9"));
}

#[test]
fn surface_sections_validate() {
    let c = load(
        "tenant_id = \"t1\"\n[gateway]\nhermes_home = \"/h\"\n",
        &[],
        false,
    )
    .expect("valid");
    let names: Vec<&str> = c.files.roots.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["workspace", "skills"]);
    assert_eq!(c.files.roots[1].path, PathBuf::from("/h/skills"));
    let e = load(
        "tenant_id = \"t1\"\n[[files.roots]]\nname = \"a\"\npath = \"rel\"\n",
        &[],
        false,
    )
    .unwrap_err();
    assert!(e.to_string().contains("files.roots[0].path"), "{e}");
    let e = load(
        "tenant_id = \"t1\"\n[[files.roots]]\nname = \"A B\"\npath = \"/x\"\n",
        &[],
        false,
    )
    .unwrap_err();
    assert!(e.to_string().contains("files.roots[0].name"), "{e}");
    let c = load(
        "tenant_id = \"t1\"\n",
        &[("HERMES_TENANTD_ENV__RESERVED", "OPENAI_API_KEY, CORP_*")],
        false,
    )
    .expect("valid");
    assert_eq!(c.env.reserved, vec!["OPENAI_API_KEY", "CORP_*"]);
    let e = load(
        "tenant_id = \"t1\"\n[env]\nreserved = [\"lower\"]\n",
        &[],
        false,
    )
    .unwrap_err();
    assert!(e.to_string().contains("env.reserved"), "{e}");
    let e = load(
        "tenant_id = \"t1\"\n[skills]\ndebounce = \"1h\"\n",
        &[],
        false,
    )
    .unwrap_err();
    assert!(e.to_string().contains("skills.debounce"), "{e}");
}

#[test]
fn split_command_handles_quotes() {
    assert_eq!(
        split_command(r#"a "b c" d\ e 'f"g'"#).expect("ok"),
        vec!["a", "b c", "d e", "f\"g"]
    );
    assert!(split_command("a 'b").is_err());
    assert!(split_command("  ").is_err());
}

#[test]
fn credential_defaults_to_the_systemd_credential_when_the_unit_delivers_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("config.toml");
    std::fs::write(&file, "tenant_id = \"t1\"\n").expect("write");
    let source = Source {
        file: Some(file.clone()),
        dev: false,
    };
    let c = Config::load_with_env(
        &source,
        [(
            "CREDENTIALS_DIRECTORY".to_owned(),
            "/run/credentials/x.service".to_owned(),
        )],
    )
    .expect("load");
    assert_eq!(
        c.auth.credential_file,
        PathBuf::from("/run/credentials/x.service/tenant-runtime")
    );
    let c = Config::load_with_env(&source, Vec::<(String, String)>::new()).expect("load");
    assert_eq!(
        c.auth.credential_file,
        PathBuf::from("/etc/hermes-tenantd/credential")
    );
    // An explicit file wins.
    std::fs::write(
        &file,
        "tenant_id = \"t1\"\n[auth]\ncredential_file = \"/x/cred\"\n",
    )
    .expect("write");
    let c = Config::load_with_env(
        &source,
        [(
            "CREDENTIALS_DIRECTORY".to_owned(),
            "/run/credentials/x.service".to_owned(),
        )],
    )
    .expect("load");
    assert_eq!(c.auth.credential_file, PathBuf::from("/x/cred"));
}
