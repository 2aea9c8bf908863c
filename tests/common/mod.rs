//! Runs the real `keymeter` binary on an ephemeral port for end-to-end tests.
#![allow(dead_code)]

pub mod engine;
pub mod kafka;
pub mod log_files;
pub mod log_records;
pub mod projections;

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
    /// Ends when the server's stderr closes: joined after an exit, so the
    /// panic check sees everything the process wrote.
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

/// The longest a test waits for the server: to start, to answer a request,
/// to exit after SIGTERM. A hang fails the test instead of stalling CI.
pub const WAIT_MAX: Duration = Duration::from_secs(120);

/// What Rust's default panic hook writes to stderr.
pub const PANIC_MARK: &str = "panicked at";

/// An HTTP client whose requests fail after `WAIT_MAX` instead of hanging.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(WAIT_MAX)
        .build()
        .expect("HTTP client")
}

/// What `keymeter serve` prints, followed by its base URL, once it listens.
pub const LISTENING: &str = "keymeter listening on ";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_keymeter")
}

/// `keymeter serve` on `data_dir` and an ephemeral loopback port.
pub fn serve_command(data_dir: &Path) -> Command {
    let mut cmd = keymeter_on(data_dir);
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", "127.0.0.1:0"]);
    cmd
}

/// The binary, with the master key a command on `data_dir` needs.
fn keymeter_on(data_dir: &Path) -> Command {
    let mut cmd = Command::new(bin());
    // A data dir directly in the system temp dir would leave its generated
    // `<data>.master-key` behind there: give those a fixed test key.
    if data_dir.parent() == Some(std::env::temp_dir().as_path()) {
        cmd.env("KEYMETER_MASTER_KEY", TEST_MASTER_KEY);
    }
    cmd
}

/// `keymeter replay` on `data_dir`, with the master key `serve` had.
pub fn replay(data_dir: &Path) -> std::process::Output {
    keymeter_on(data_dir)
        .args(["replay", "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("run keymeter replay")
}

/// Waits for `child` to exit, at most `limit`; None if it is still running.
pub fn wait_with_deadline(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd`, which must exit on its own, within a minute, with an error;
/// returns its stderr.
pub fn exits_with_error(cmd: &mut Command) -> String {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("{cmd:?} kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "{cmd:?} exited 0: {stderr}");
    stderr
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
        let mut child = serve_command(data_dir)
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
        let stderr_reader = std::thread::spawn(move || {
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
        // stdout is read on a thread of its own, so that a server that
        // neither prints nor exits fails the test at the deadline.
        let (line_tx, line_rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line_tx.send(line).is_err() {
                    // Nobody waits for lines any more: keep draining the
                    // pipe so the server never blocks on a full one.
                    continue;
                }
            }
        });
        let deadline = Instant::now() + WAIT_MAX;
        let base = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match line_rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(url) = line.strip_prefix(LISTENING) {
                        break url.trim().to_owned();
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    panic!(
                        "server did not listen within {WAIT_MAX:?}: {}",
                        stderr.lock().unwrap()
                    )
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = child.wait();
                    let _ = stderr_reader.join();
                    panic!("server exited before listening: {}", stderr.lock().unwrap())
                }
            }
        };
        Server {
            child,
            base,
            data_dir: data_dir.to_owned(),
            client: http_client(),
            stderr,
            stderr_reader: Some(stderr_reader),
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// SIGKILL: no shutdown, nothing flushed. Fails the test if the
    /// server panicked before.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.assert_no_panic();
    }

    /// SIGTERM and wait (at most `WAIT_MAX`) for a clean exit. Fails the
    /// test if the server panicked, even on a thread it survived.
    pub fn stop(mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = wait_with_deadline(&mut self.child, WAIT_MAX);
        let Some(status) = status else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            panic!(
                "no exit within {WAIT_MAX:?} of SIGTERM: {}",
                self.exited_stderr()
            );
        };
        assert!(
            status.success(),
            "clean exit expected: {}",
            self.exited_stderr()
        );
        self.assert_no_panic();
    }

    /// [`Server::stop`], then everything the server wrote to stderr.
    pub fn stop_and_stderr(mut self) -> String {
        let reader = self.stderr_reader.take();
        let stderr = self.stderr.clone();
        self.stop();
        if let Some(reader) = reader {
            let _ = reader.join();
        }
        let text = stderr.lock().unwrap().clone();
        text
    }

    /// The whole stderr of a server that has exited.
    fn exited_stderr(&mut self) -> String {
        if let Some(reader) = self.stderr_reader.take() {
            // The pipe closes with the process (the server spawns no
            // children), so this returns promptly.
            let _ = reader.join();
        }
        self.stderr()
    }

    fn assert_no_panic(&mut self) {
        let stderr = self.exited_stderr();
        assert!(
            !stderr.contains(PANIC_MARK),
            "the server panicked: {stderr}"
        );
    }

    /// A request to `path` with `key`, to be completed and sent.
    pub fn request(
        &self,
        method: reqwest::Method,
        key: &str,
        path: &str,
    ) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path)).bearer_auth(key)
    }

    pub async fn post_json(&self, key: &str, path: &str, body: &Value) -> reqwest::Response {
        self.request(reqwest::Method::POST, key, path)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, key: &str, path: &str) -> reqwest::Response {
        self.request(reqwest::Method::GET, key, path)
            .send()
            .await
            .unwrap()
    }

    pub async fn delete(&self, key: &str, path: &str) -> reqwest::Response {
        self.request(reqwest::Method::DELETE, key, path)
            .send()
            .await
            .unwrap()
    }

    /// The JSON body of a GET, whatever its status (`/readyz` answers 503
    /// with a body worth reading).
    pub async fn get_json(&self, key: &str, path: &str) -> Value {
        self.get(key, path).await.json().await.unwrap()
    }

    /// Posts `body` as it is to the ingest route, under `content_type`.
    pub async fn post_events(
        &self,
        key: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.request(reqwest::Method::POST, key, "/api/v1/events")
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// Posts one event body (`application/cloudevents+json`), with a
    /// `Keymeter-Signature` when given.
    pub async fn post_event(
        &self,
        key: &str,
        body: &[u8],
        signature: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self
            .request(reqwest::Method::POST, key, "/api/v1/events")
            .header("content-type", "application/cloudevents+json")
            .body(body.to_vec());
        if let Some(s) = signature {
            req = req.header("Keymeter-Signature", s);
        }
        req.send().await.unwrap()
    }

    /// Posts one event body signed with a product's signing secret `secret`
    /// (id `sid`).
    pub async fn post_signed_event(
        &self,
        key: &str,
        body: &[u8],
        secret: &str,
        sid: &str,
    ) -> reqwest::Response {
        let signature =
            keymeter_client::signing::sign_request(secret, sid, "POST", "/api/v1/events", body);
        self.post_event(key, body, Some(&signature)).await
    }

    pub async fn ingest(&self, key: &str, events: &[Value]) -> reqwest::Response {
        self.post_events(
            key,
            "application/cloudevents-batch+json",
            serde_json::to_vec(events).unwrap(),
        )
        .await
    }

    pub async fn create_meter(&self, meter: Value) {
        let r = self.post_json(ADMIN_KEY, "/api/v1/meters", &meter).await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }

    pub async fn create_key(&self, scopes: &[&str]) -> String {
        self.create_key_with(json!({"name": format!("{scopes:?}"), "scopes": scopes}))
            .await
    }

    /// Creates an API key from a full request body; returns the key.
    pub async fn create_key_with(&self, body: Value) -> String {
        let r = self.post_json(ADMIN_KEY, "/api/v1/api-keys", &body).await;
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.unwrap()["key"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Creates a license; returns the answer, which alone holds its key.
    pub async fn create_license(&self, body: Value) -> Value {
        let r = self.post_json(ADMIN_KEY, "/api/v1/licenses", &body).await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        r.json().await.unwrap()
    }

    /// Creates a product; returns its first signing secret as (id, secret).
    pub async fn create_product(&self, body: Value) -> (String, String) {
        let r = self.post_json(ADMIN_KEY, "/api/v1/products", &body).await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        let p: Value = r.json().await.unwrap();
        (
            p["signingSecret"]["id"].as_str().unwrap().to_owned(),
            p["signingSecret"]["secret"].as_str().unwrap().to_owned(),
        )
    }

    pub async fn validate_license(&self, key: &str, body: Value) -> Value {
        let r = self
            .post_json(key, "/api/v1/licenses/validate", &body)
            .await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        r.json().await.unwrap()
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
        let r = self
            .client
            .get(self.url("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }

    /// The published verifying keys, as a client holds them.
    pub async fn jwks_keys(&self) -> keymeter_client::Keys {
        keymeter_client::Keys::from_jwks(&self.jwks_text().await).unwrap()
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
    /// A server the test neither stopped nor killed is killed here, and its
    /// panics fail the test too (unless it is failing already).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.stderr_reader.is_some() && !std::thread::panicking() {
            self.assert_no_panic();
        }
    }
}

/// The seed of a randomized test: `KEYMETER_TEST_SEED` when set (to replay
/// a failure), else a fresh one. Printed either way, with the command that
/// replays it, so a failing run names its seed.
pub fn test_seed(test_binary: &str, test: &str) -> u64 {
    let seed = match std::env::var("KEYMETER_TEST_SEED") {
        Ok(s) => s.parse().expect("KEYMETER_TEST_SEED is a number"),
        Err(_) => rand::random(),
    };
    println!(
        "seed {seed}; replay: KEYMETER_TEST_SEED={seed} cargo test --test {test_binary} {test}"
    );
    seed
}

/// Unix milliseconds as an event `time`: RFC 3339 in UTC, to the millisecond.
pub fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// An event `time` `offset_ms` from now (negative: in the past).
pub fn time_from_now(offset_ms: i64) -> String {
    rfc3339_ms(chrono::Utc::now().timestamp_millis() + offset_ms)
}

/// Now in Unix seconds, the clock signed tokens and files are checked against.
pub fn now_s() -> i64 {
    chrono::Utc::now().timestamp()
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

/// Runs `keymeter license <args> --url <url>` with the test admin key:
/// success, stdout, stderr.
pub async fn license_cli(url: &str, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(bin())
        .arg("license")
        .args(args)
        .args(["--url", url])
        .env("KEYMETER_ADMIN_KEY", ADMIN_KEY)
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// The published JSON Schema at `schemas/<path>`, which must be draft 2020-12.
pub fn schema(path: &str) -> jsonschema::Validator {
    let text =
        std::fs::read_to_string(format!("{}/schemas/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let schema: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    jsonschema::draft202012::new(&schema).unwrap()
}

/// Runs `keymeter <args>` to completion.
pub fn run(args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run keymeter")
}

/// Fails, showing its stderr, unless a finished command succeeded.
pub fn assert_success(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
