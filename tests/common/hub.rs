//! The fake hub (`tests/fake_hub.py`, Python stdlib): records beats and
//! answers as the test tells it (ack, 500, hang, garbage, desired state,
//! clock, interval).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct FakeHub {
    child: Child,
    pub port: u16,
    scheme: &'static str,
    http: reqwest::Client,
}

impl FakeHub {
    pub fn start() -> FakeHub {
        Self::start_on(0)
    }

    pub fn start_on(port: u16) -> FakeHub {
        Self::spawn(port, &[])
    }

    /// An HTTPS hub with this certificate and key.
    pub fn start_tls(cert: &Path, key: &Path) -> FakeHub {
        let (c, k) = (cert.display().to_string(), key.display().to_string());
        Self::spawn(0, &["--tls-cert", &c, "--tls-key", &k])
    }

    pub fn spawn(port: u16, extra: &[&str]) -> FakeHub {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fake_hub.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg("--port")
            .arg(port.to_string())
            .arg("--quiet")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 for tests/fake_hub.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("fake hub port line");
        let v: Value = serde_json::from_str(&line).expect("port JSON");
        let tls = !extra.is_empty();
        FakeHub {
            child,
            port: v["port"].as_u64().expect("port") as u16,
            scheme: if tls { "https" } else { "http" },
            // The control client trusts the test's certificate by skipping
            // verification: it only drives the fake, it is not under test.
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .danger_accept_invalid_certs(tls)
                .build()
                .expect("client"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{path}", self.scheme, self.port)
    }

    pub async fn control(&self, change: Value) {
        let r = self
            .http
            .post(self.url("/control"))
            .json(&change)
            .send()
            .await
            .expect("control");
        assert_eq!(r.status(), 200);
    }

    pub async fn beats(&self) -> Vec<Value> {
        let v: Value = self
            .http
            .get(self.url("/beats"))
            .send()
            .await
            .expect("beats")
            .json()
            .await
            .expect("beats JSON");
        v["beats"].as_array().cloned().unwrap_or_default()
    }

    /// Poll until `pred` holds for the recorded beats.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let beats = self.beats().await;
            if pred(&beats) {
                return beats;
            }
            if Instant::now() > deadline {
                panic!(
                    "fake hub: {what} not seen within {timeout:?}; {} beats: {:?}",
                    beats.len(),
                    beats
                        .iter()
                        .map(|b| (&b["mode"], &b["body"]["seq"]))
                        .collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn wait_beats(&self, n: usize, timeout: Duration) -> Vec<Value> {
        self.wait_until(&format!("{n} beats"), timeout, |b| b.len() >= n)
            .await
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
