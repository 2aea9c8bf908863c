//! What the engine does when the log cannot be written: the request answers 503
//! `ENGINE_UNAVAILABLE`, `/readyz` reports the failure, `serve` exits on its own, and after
//! a restart nothing acknowledged is lost while the failed request is there whole or not
//! at all, so resending it counts it once.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::engine::{config, ManualClock};
use common::{event, http_client, Server, ADMIN_KEY, LISTENING};
use keymeter::engine::Engine;
use keymeter::log::sim::SimDisk;
use reqwest::StatusCode;
use serde_json::{json, Value};

const T0: i64 = 1_800_000_000_000;

fn events(batch: usize, count: usize, pad: usize) -> Vec<Value> {
    (0..count)
        .map(|i| {
            let data = json!({"n": i, "pad": "x".repeat(pad)});
            event(&format!("b{batch}-{i}"), "call", "acme", "", data)
        })
        .map(|mut e| {
            e.as_object_mut().unwrap().remove("time");
            e
        })
        .collect()
}

async fn ingest(client: &reqwest::Client, base: &str, events: &[Value]) -> (StatusCode, Value) {
    let r = client
        .post(format!("{base}/api/v1/events"))
        .bearer_auth(ADMIN_KEY)
        .header("content-type", "application/cloudevents-batch+json")
        .json(events)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The API in process over an engine whose log is on a simulated disk: an fsync fails
/// while the power stays on.
#[test]
fn a_failed_fsync_answers_503_and_readyz_reports_it_and_the_batch_is_whole_or_absent() {
    let root = tempfile::tempdir().unwrap();
    let disk = SimDisk::new(7);
    let mut cfg = config(root.path());
    cfg.log_storage = Some(Arc::new(disk.clone()));
    let clock = Arc::new(ManualClock::new(T0));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let engine = Engine::open(&cfg, clock.clone()).unwrap().engine;
    let cfg = Arc::new(cfg);
    let state = keymeter::api::AppState::new(engine.handle(), cfg.clone(), None);
    let client = http_client();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, keymeter::api::router(state))
                .await
                .unwrap()
        });
        let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), StatusCode::OK);
        let meter = json!({"slug": "calls", "eventType": "call", "aggregation": "COUNT"});
        let r = client
            .post(format!("{base}/api/v1/meters"))
            .bearer_auth(ADMIN_KEY)
            .json(&meter)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let (status, _) = ingest(&client, &base, &events(0, 5, 0)).await;
        assert_eq!(status, StatusCode::NO_CONTENT);

        disk.fail_next_sync();
        let (status, body) = ingest(&client, &base, &events(1, 5, 0)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["code"], "ENGINE_UNAVAILABLE");
        assert!(
            body["message"].as_str().unwrap().contains("may or may not"),
            "a failed fsync cannot tell whether the batch is on disk: {body}"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = client.get(format!("{base}/readyz")).send().await.unwrap();
            if r.status() == StatusCode::SERVICE_UNAVAILABLE {
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["code"], "ENGINE_FAILED");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz still answers {}",
                r.status()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The only engine of this test binary that runs in process: the
        // gauges are its own.
        let m = keymeter::metrics::metrics();
        assert_eq!(m.ready.get(), 0, "keymeter_ready follows /readyz");
        assert_eq!(m.log_append_errors_total.get(), 1, "the failed fsync");
        let (status, _) = ingest(&client, &base, &events(2, 1, 0)).await;
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "later requests too"
        );
    });
    assert!(
        engine.shutdown().is_err(),
        "the syncer stopped on the failure"
    );
    drop(rt);

    // Restart: the page cache kept the batch whose fsync failed, so it is there, whole;
    // resending both batches counts nothing twice.
    let cfg = Arc::unwrap_or_clone(cfg);
    let engine = Engine::open(&cfg, clock).unwrap().engine;
    assert_eq!(keymeter::metrics::metrics().ready.get(), 1, "ready again");
    let handle = engine.handle();
    let view = keymeter::query::View::new(handle.shared.clone(), None);
    let q = keymeter::query::meters::QueryRequest::parse("").unwrap();
    let answer = view.query("calls", &q, usize::MAX).unwrap();
    let total: f64 = answer.rows.iter().map(|r| r.value.to_f64()).sum();
    assert_eq!(total, 10.0, "both batches, each whole");
    drop(handle);
    engine.shutdown().unwrap();
}

/// Kills the server if the test fails before it exits.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `keymeter serve` with a file size limit (`RLIMIT_FSIZE`, with `SIGXFSZ` ignored): the
/// log segment write fails with `EFBIG` once the segment reaches the limit.
fn serve_with_file_size_limit(data_dir: &std::path::Path, bytes: u64) -> (KillOnDrop, String) {
    let mut cmd = common::serve_command(data_dir);
    cmd.args(["--bootstrap-admin-key", ADMIN_KEY])
        .env("KEYMETER_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = loop {
        let line = lines.next().expect("serve printed its address").unwrap();
        if let Some(url) = line.strip_prefix(LISTENING) {
            break url.trim().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (KillOnDrop(child), base)
}

#[test]
fn a_failed_log_write_stops_serve_and_a_restart_keeps_every_acknowledged_event() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let (mut child, base) = serve_with_file_size_limit(&data, 512 * 1024);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = http_client();
    let (acked, failed) = rt.block_on(async {
        let r = client
            .post(format!("{base}/api/v1/meters"))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({"slug": "calls", "eventType": "call", "aggregation": "COUNT"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let mut acked = Vec::new();
        let mut batch = 0;
        loop {
            batch += 1;
            assert!(batch < 1000, "the file size limit was never reached");
            let sent = events(batch, 50, 300);
            let (status, body) = ingest(&client, &base, &sent).await;
            if status == StatusCode::NO_CONTENT {
                acked.push(sent);
                continue;
            }
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
            assert_eq!(body["code"], "ENGINE_UNAVAILABLE", "{body}");
            break (acked, sent);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "serve kept running after the log failed"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "serve exited 0 after a failed log write");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: event log:") && last.contains("File too large"),
        "the exit names the cause: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    let server = Server::start(&data);
    rt.block_on(async {
        let acked_events = acked.len() as f64 * 50.0;
        let total = server.total("calls", "").await;
        assert_eq!(
            total, acked_events,
            "every acknowledged event, once; the failed batch cut"
        );
        for batch in acked.iter().chain([&failed]) {
            let (status, body) = ingest(&server.client, &server.base, batch).await;
            assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        }
        let total = server.total("calls", "").await;
        assert_eq!(
            total,
            acked_events + 50.0,
            "resent: only the failed batch counts"
        );
    });
    server.stop();
}
