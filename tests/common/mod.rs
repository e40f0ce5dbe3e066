//! Test harness: start the real `hermes-tenantd` binary on an ephemeral
//! loopback port with a temporary data directory, and talk HTTP to it.
#![allow(dead_code)]

pub mod hub;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const TENANT: &str = "tenant-test";
pub const TOKEN: &str = "test-credential-0123456789abcdef";

/// How to start a daemon.
#[derive(Default, Clone)]
pub struct Options {
    /// Extra TOML appended to the generated config file (top-level keys
    /// must come before any `[section]`, so prefer full sections here).
    pub config_extra: String,
    /// Extra environment for the process.
    pub env: Vec<(String, String)>,
    /// Reuse this directory (restart after a kill); default: a new temp dir.
    pub dir: Option<PathBuf>,
}

/// A running daemon process; killed on drop.
pub struct TestDaemon {
    pub addr: std::net::SocketAddr,
    pub base: String,
    pub dir: PathBuf,
    pub client: reqwest::Client,
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    _tmp: Option<tempfile::TempDir>,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_hermes-tenantd")
}

/// Write a 0600 file.
pub fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

impl TestDaemon {
    pub async fn start() -> TestDaemon {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(opts: Options) -> TestDaemon {
        Self::start_with_nofile(opts, None).await
    }

    /// As `start_with`, with the process's `RLIMIT_NOFILE` (soft and hard)
    /// set to `nofile` before exec.
    pub async fn start_with_nofile(opts: Options, nofile: Option<u64>) -> TestDaemon {
        Self::spawn(opts, nofile, false, &[]).await
    }

    /// As `start_with`, with the binary run by `wrapper` (for example
    /// `setpriv` switching to an unprivileged user with ambient
    /// capabilities: the production shape).
    pub async fn start_wrapped(opts: Options, wrapper: &[String]) -> TestDaemon {
        Self::spawn(opts, None, false, wrapper).await
    }

    /// As `start_with`, as `run --dev --config FILE`: the generated file
    /// still wins, `--dev` supplies the other defaults.
    pub async fn start_dev(opts: Options) -> TestDaemon {
        Self::spawn(opts, None, true, &[]).await
    }

    async fn spawn(
        opts: Options,
        nofile: Option<u64>,
        dev: bool,
        wrapper: &[String],
    ) -> TestDaemon {
        let (tmp, dir) = match &opts.dir {
            Some(d) => (None, d.clone()),
            None => {
                let t = tempfile::tempdir().expect("tempdir");
                let d = t.path().to_path_buf();
                (Some(t), d)
            }
        };
        let cred = dir.join("credential");
        if !cred.exists() {
            write_private(&cred, TOKEN);
        }
        let config = dir.join("config.toml");
        let text = format!(
            "tenant_id = \"{TENANT}\"\ndata_dir = \"{data}\"\n\n[listen]\naddr = \"127.0.0.1:0\"\n\n[auth]\ncredential_file = \"{cred}\"\n\n[log]\nformat = \"json\"\nlevel = \"info\"\n\n{extra}\n",
            data = dir.join("data").display(),
            cred = cred.display(),
            extra = opts.config_extra,
        );
        std::fs::write(&config, text).expect("write config");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(binary());
                c
            }
            None => Command::new(binary()),
        };
        cmd.arg("run");
        if dev {
            cmd.arg("--dev");
        }
        cmd.arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("HERMES_TENANTD_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: only setrlimit (async-signal-safe) between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("spawn hermes-tenantd");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<Result<String, String>>();
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                let mut sent = false;
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if !sent {
                        if let Some(addr) = listening_addr(&line) {
                            let _ = tx.send(Ok(addr));
                            sent = true;
                        }
                    }
                    if let Ok(mut l) = logs.lock() {
                        l.push(line);
                    }
                }
                if !sent {
                    let _ = tx.send(Err("daemon exited before listening".into()));
                }
            });
        }
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(a)) => a,
            other => {
                let _ = child.kill();
                let logs = logs.lock().map(|l| l.join("\n")).unwrap_or_default();
                panic!("daemon did not start: {other:?}\n{logs}");
            }
        };
        let addr: std::net::SocketAddr = addr.parse().expect("addr");
        TestDaemon {
            addr,
            base: format!("http://{addr}"),
            dir,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            child,
            logs,
            _tmp: tmp,
        }
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// URL of a tenant-runtime route for this VM's tenant.
    pub fn tenant_url(&self, path: &str) -> String {
        format!("{}/v1/tenant-runtime/{TENANT}{path}", self.base)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(self.tenant_url(path)).bearer_auth(TOKEN)
    }

    /// `GET` a tenant-runtime route and parse its JSON body.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.get(path)
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json")
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(self.tenant_url(path)).bearer_auth(TOKEN)
    }

    pub fn put(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.put(self.tenant_url(path)).bearer_auth(TOKEN)
    }

    pub fn patch(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.patch(self.tenant_url(path)).bearer_auth(TOKEN)
    }

    pub fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.delete(self.tenant_url(path)).bearer_auth(TOKEN)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the daemon logged so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Wait until a log line contains `needle`.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.logs().into_iter().find(|l| l.contains(needle)) {
                return l;
            }
            if Instant::now() > deadline {
                panic!(
                    "no log line with {needle:?} within {timeout:?}:\n{}",
                    self.logs().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        signal(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("daemon did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The data directory (`dir/data`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Keep the directory after this daemon is dropped (for a restart).
    pub fn keep_dir(&mut self) -> Option<tempfile::TempDir> {
        self._tmp.take()
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

fn listening_addr(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v.get("message")?.as_str()? != "listening" {
        return None;
    }
    Some(v.get("addr")?.as_str()?.to_owned())
}

/// Assert a response is problem JSON with `status` and `code`; returns it.
pub async fn expect_problem(resp: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    let got = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = resp.text().await.expect("body");
    assert_eq!(got, status, "unexpected status; body: {text}");
    assert!(ctype.contains("json"), "content type {ctype}: {text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("problem JSON");
    assert_eq!(v["code"], code, "{v}");
    assert_eq!(v["status"], status, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    v
}

/// Peak resident memory (`VmHWM`) of a running process, in KiB.
pub fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// The path of a Python interpreter for the fake peers.
pub fn python() -> String {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 is needed for the fake gateway");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A free loopback port (for the fake gateway, which the daemon tells
/// where to listen).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A daemon supervising `tests/fake_gateway.py`, with fast timings.
pub struct GatewayWorld {
    _tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub port: u16,
    pub env: Vec<(String, String)>,
    pub extra: String,
}

impl GatewayWorld {
    pub fn new() -> GatewayWorld {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        GatewayWorld {
            _tmp: tmp,
            dir,
            port: free_port(),
            env: Vec::new(),
            extra: String::new(),
        }
    }

    /// Set a fake gateway switch (`FAKE_GW_<NAME>`).
    pub fn fake(mut self, name: &str, value: &str) -> GatewayWorld {
        self.env
            .push((format!("FAKE_GW_{}", name.to_uppercase()), value.to_owned()));
        self
    }

    pub fn home(&self) -> PathBuf {
        self.dir.join("home")
    }

    /// Make the fake gateway die by `signal` (its `/fake/crash`; it dies
    /// with the request open, so the answer is not looked at).
    pub async fn crash_gateway(&self, signal: i32) {
        let _ = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/fake/crash", self.port))
            .json(&serde_json::json!({ "signal": signal }))
            .send()
            .await;
    }

    pub fn config(&self) -> String {
        format!(
            "[gateway]\ncommand = \"{py} {gw}\"\nhermes_home = \"{home}\"\nport = {port}\nstart_timeout = \"10s\"\nstop_grace = \"3s\"\nhealth_interval = \"100ms\"\nunhealthy_threshold = 2\nbackoff_base = \"100ms\"\nbackoff_cap = \"400ms\"\ncrash_loop_window = \"60s\"\ncrash_loop_count = 10\n\n{extra}\n",
            py = python(),
            gw = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fake_gateway.py"),
            home = self.home().display(),
            port = self.port,
            extra = self.extra,
        )
    }

    pub async fn daemon(&self) -> TestDaemon {
        self.daemon_in(self.dir.clone()).await
    }

    /// A daemon using `dir` (the same one again after a kill).
    pub async fn daemon_in(&self, dir: PathBuf) -> TestDaemon {
        TestDaemon::start_with(Options {
            config_extra: self.config(),
            env: self.env.clone(),
            dir: Some(dir),
        })
        .await
    }

    /// Poll `GET /agent` until its state is `state`; returns the body.
    pub async fn wait_agent(&self, d: &TestDaemon, state: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v: serde_json::Value = d
                .get("/agent")
                .send()
                .await
                .expect("GET /agent")
                .json()
                .await
                .expect("json");
            if v["state"] == state {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "agent never reached {state}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Default for GatewayWorld {
    fn default() -> Self {
        Self::new()
    }
}

/// `expect_problem` for a `400 invalid_argument` whose message names `field`.
pub async fn expect_invalid_field(resp: reqwest::Response, field: &str) {
    let p = expect_problem(resp, 400, "invalid_argument").await;
    let m = p["message"].as_str().unwrap_or_default();
    assert!(m.contains(field), "the message should name `{field}`: {p}");
}

/// `POST /runs`, expecting `202`; the accepted run.
pub async fn start_run(d: &TestDaemon, body: serde_json::Value) -> serde_json::Value {
    let r = d.post("/runs").json(&body).send().await.expect("post run");
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
    r.json().await.expect("json")
}

/// Poll `GET /runs/{id}` until its status is `status` (30 s at most).
pub async fn wait_run(d: &TestDaemon, run_id: &str, status: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v: serde_json::Value = d
            .get(&format!("/runs/{run_id}"))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        if v["status"] == status {
            return v;
        }
        assert!(Instant::now() < deadline, "run never reached {status}: {v}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
