//! Runs the real `keymeter` binary on an ephemeral port for end-to-end tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const ADMIN_KEY: &str = "km_test_admin_key_0123456789abcdef";
/// 32 bytes, base64.
pub const TEST_MASTER_KEY: &str = "dGVzdC1tYXN0ZXIta2V5LTAxMjM0NTY3ODlhYmNkZWY=";

pub struct Server {
    pub child: Child,
    pub base: String,
    pub data_dir: PathBuf,
    pub client: reqwest::Client,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_keymeter")
}

impl Server {
    pub fn start(data_dir: &Path) -> Server {
        Server::start_with(data_dir, &[])
    }

    pub fn start_with(data_dir: &Path, extra: &[&str]) -> Server {
        Server::start_with_env(data_dir, extra, &[])
    }

    /// Like `start_with`, with extra `KEYMETER_*` environment variables.
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(bin());
        // A data dir directly in the system temp dir would leave its generated
        // `<data>.master-key` behind there: give those a fixed test key.
        if data_dir.parent() == Some(std::env::temp_dir().as_path()) {
            cmd.env("KEYMETER_MASTER_KEY", TEST_MASTER_KEY);
        }
        let mut child = cmd
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(["--bootstrap-admin-key", ADMIN_KEY])
            .args(extra)
            .envs(env.iter().copied())
            .env("KEYMETER_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start keymeter");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let deadline = Instant::now() + Duration::from_secs(60);
        let base = loop {
            assert!(Instant::now() < deadline, "server did not start");
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(url) = line.strip_prefix("keymeter listening on ") {
                        break url.trim().to_owned();
                    }
                }
                _ => panic!("server exited before listening: {}", stderr.lock().unwrap()),
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            base,
            data_dir: data_dir.to_owned(),
            client: reqwest::Client::new(),
            stderr,
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// SIGKILL: no shutdown, nothing flushed.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "clean exit expected: {}", self.stderr());
    }

    pub async fn post_json(&self, key: &str, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, key: &str, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
    }

    pub async fn ingest(&self, key: &str, events: &[Value]) -> reqwest::Response {
        self.client
            .post(self.url("/api/v1/events"))
            .bearer_auth(key)
            .header("content-type", "application/cloudevents-batch+json")
            .body(serde_json::to_vec(events).unwrap())
            .send()
            .await
            .unwrap()
    }

    pub async fn create_meter(&self, meter: Value) {
        let r = self.post_json(ADMIN_KEY, "/api/v1/meters", &meter).await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }

    pub async fn create_key(&self, scopes: &[&str]) -> String {
        let r = self
            .post_json(
                ADMIN_KEY,
                "/api/v1/api-keys",
                &json!({"name": format!("{scopes:?}"), "scopes": scopes}),
            )
            .await;
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.unwrap()["key"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The `/metrics` text (read scope).
    pub async fn metrics_text(&self) -> String {
        self.get(ADMIN_KEY, "/metrics").await.text().await.unwrap()
    }

    /// The value of the metric line starting with `series` (name and
    /// labels), 0 when absent (counters not yet incremented).
    pub async fn metric(&self, series: &str) -> f64 {
        self.metrics_text()
            .await
            .lines()
            .find(|l| {
                l.strip_prefix(series)
                    .is_some_and(|rest| rest.starts_with(' '))
            })
            .and_then(|l| l.rsplit(' ').next())
            .map(|v| v.parse().unwrap())
            .unwrap_or(0.0)
    }

    /// The published `/.well-known/jwks.json` document.
    pub async fn jwks_text(&self) -> String {
        self.client
            .get(self.url("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The sum of every row of a meter query.
    pub async fn total(&self, slug: &str, params: &str) -> f64 {
        self.query(slug, params).await["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["value"].as_f64().unwrap())
            .sum()
    }

    pub async fn query(&self, slug: &str, params: &str) -> Value {
        let r = self
            .get(ADMIN_KEY, &format!("/api/v1/meters/{slug}/query?{params}"))
            .await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        r.json().await.unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn event(id: &str, ty: &str, subject: &str, time: &str, data: Value) -> Value {
    json!({
        "specversion": "1.0",
        "id": id,
        "source": "test",
        "type": ty,
        "subject": subject,
        "time": time,
        "data": data,
    })
}

/// Runs `keymeter <args>` to completion.
pub fn run(args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run keymeter")
}

/// Every file below `dir`, recursively.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Fails if any byte sequence in `secrets` occurs in any file below `dir`.
pub fn assert_no_file_holds(dir: &Path, secrets: &[&[u8]]) {
    for file in walk(dir) {
        let bytes = std::fs::read(&file).unwrap();
        for secret in secrets {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == *secret),
                "{} holds a secret ({} bytes)",
                file.display(),
                secret.len()
            );
        }
    }
}
