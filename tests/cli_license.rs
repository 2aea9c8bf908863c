//! `keymeter license …` against a real server whose answers arrive with
//! chunked transfer encoding, as they do behind many reverse proxies: the
//! server itself answers with a length, so a relay in front re-frames each
//! answer into small chunks (with chunk extensions, split inside UTF-8
//! characters, written separately) and the CLI must print what the server
//! said.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Small enough that every answer spans many chunks and multi-byte
/// characters straddle chunk boundaries.
const CHUNK: usize = 5;

const PREFIX: &str = "/keymeter";

/// Forwards each request to `upstream` and answers it chunked; returns the
/// relay's base URL, which has a path prefix as a server behind a proxy may.
async fn chunking_relay(upstream: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}{PREFIX}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (conn, _) = listener.accept().await.unwrap();
            tokio::spawn(relay_one(conn, upstream.clone()));
        }
    });
    base
}

async fn relay_one(mut conn: TcpStream, upstream: String) {
    let mut raw = Vec::new();
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut buf = [0u8; 4096];
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "request ended inside its head");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8(raw[..head_end].to_vec()).unwrap();
    let mut lines = head.lines();
    let mut start = lines.next().unwrap().split(' ');
    let (method, target) = (start.next().unwrap(), start.next().unwrap());
    let target = target.strip_prefix(PREFIX).unwrap();
    let mut forward = reqwest::Client::new().request(
        reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
        format!("{upstream}{target}"),
    );
    let mut length = 0;
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').unwrap();
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse().unwrap(),
            "authorization" | "content-type" | "accept" => {
                forward = forward.header(name, value);
            }
            _ => {}
        }
    }
    while raw.len() < head_end + length {
        let mut buf = [0u8; 4096];
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "request ended inside its body");
        raw.extend_from_slice(&buf[..n]);
    }
    let answer = forward.body(raw[head_end..].to_vec()).send().await.unwrap();
    let status = answer.status();
    let body = answer.bytes().await.unwrap();
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    for (i, chunk) in body.chunks(CHUNK).enumerate() {
        let size = if i % 2 == 0 {
            format!("{:x}\r\n", chunk.len())
        } else {
            format!("{:X};relay=\"odd\"\r\n", chunk.len())
        };
        conn.write_all(size.as_bytes()).await.unwrap();
        conn.write_all(chunk).await.unwrap();
        conn.write_all(b"\r\n").await.unwrap();
        conn.flush().await.unwrap();
        if i % 8 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    conn.write_all(b"0\r\n\r\n").await.unwrap();
    conn.shutdown().await.unwrap();
}

/// What the CLI prints for a JSON answer.
fn printed(v: &Value) -> String {
    format!("{}\n", serde_json::to_string_pretty(v).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn license_cli_reads_chunked_answers() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("data"));
    let relay = chunking_relay(server.base.clone()).await;
    let customer = "Ærøskøbing Værft — 株式会社";

    let (ok, out, err) = license_cli(
        &relay,
        &[
            "create",
            "--product",
            "cad",
            "--customer",
            customer,
            "--entitlement",
            "pro",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let created: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(out, printed(&created));
    assert_eq!(created["customer"], customer);
    assert!(created["key"].as_str().unwrap().starts_with("lk_"));
    let id = created["id"].as_str().unwrap();

    let direct = server
        .get_json(ADMIN_KEY, &format!("/api/v1/licenses/{id}"))
        .await;
    let (ok, out, err) = license_cli(&relay, &["show", id]).await;
    assert!(ok, "{err}");
    assert_eq!(out, printed(&direct), "show prints the server's answer");

    let (ok, out, err) = license_cli(&relay, &["suspend", id, "--reason", "audit"]).await;
    assert!(ok, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["status"],
        "suspended"
    );
    // A refusal, chunked too: status and the error body, pretty-printed.
    let (ok, out, err) = license_cli(&relay, &["suspend", id]).await;
    assert!(!ok && out.is_empty());
    let refusal = err
        .strip_prefix("error: server answered 409: ")
        .unwrap_or_else(|| panic!("{err}"));
    let refusal: Value = serde_json::from_str(refusal).unwrap_or_else(|e| panic!("{e}: {err}"));
    assert_eq!(
        err,
        format!("error: server answered 409: {}", printed(&refusal))
    );
    assert!(refusal["code"].is_string() && refusal["message"].is_string());
}
