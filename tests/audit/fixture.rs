//! The log every audit test damages a copy of: one server run writes it,
//! with signed checkpoints every 50 records and anchors outside the data
//! directory; and the tools to damage, rechain and audit a copy.

use super::*;
/// What the server left behind, held in memory so that no directory
/// outlives the test run (statics are never dropped).
pub(crate) struct Fixture {
    /// Every file of the data directory, by path relative to it.
    pub(crate) data: Vec<(PathBuf, Vec<u8>)>,
    pub(crate) master_key: Vec<u8>,
    pub(crate) anchors: Vec<u8>,
    /// `/.well-known/jwks.json` as the running server served it.
    pub(crate) jwks: String,
}

pub(crate) static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let root = tempfile::tempdir().unwrap();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(build_fixture(root.path()))
});

pub(crate) async fn build_fixture(root: &Path) -> Fixture {
    let data = root.join("data");
    let anchors = root.join("anchors.jsonl");
    let server = Server::start_with(
        &data,
        &[
            "--audit-checkpoint-records",
            &CHECKPOINT_RECORDS.to_string(),
            "--audit-anchor-file",
            anchors.to_str().unwrap(),
            "--segment-bytes-max",
            "16384",
        ],
    );
    // Admin records: meters, an API key, a license and their changes.
    server
        .create_meter(json!({"slug": "tokens", "eventType": "api_call",
                             "aggregation": "SUM", "valueProperty": "$.tokens"}))
        .await;
    server
        .create_meter(json!({"slug": "calls", "eventType": "api_call", "aggregation": "COUNT"}))
        .await;
    let key: Value = server
        .post_json(
            ADMIN_KEY,
            "/api/v1/api-keys",
            &json!({"name": "billing", "scopes": ["read"]}),
        )
        .await
        .json()
        .await
        .unwrap();
    let license = server
        .create_license(json!({"product": "cad", "customer": "acme", "policy": {"type": "none"}}))
        .await;
    let license_id = license["id"].as_str().unwrap();
    for action in ["suspend", "reinstate"] {
        let path = format!("/api/v1/licenses/{license_id}/{action}");
        let r = server.post_json(ADMIN_KEY, &path, &json!({})).await;
        assert_eq!(r.status(), 200, "{action}");
    }
    for path in [
        format!("/api/v1/api-keys/{}", key["id"].as_str().unwrap()),
        "/api/v1/meters/calls".to_string(),
    ] {
        let r = server.delete(ADMIN_KEY, &path).await;
        assert_eq!(r.status(), 204, "{path}");
    }
    // Usage: 12 requests of 20 events.
    let now = time_from_now(0);
    for b in 0..12 {
        let events: Vec<Value> = (0..EVENTS_PER_REQUEST)
            .map(|i| {
                event(
                    &format!("{b}-{i}"),
                    "api_call",
                    "acme",
                    &now,
                    json!({"tokens": 100}),
                )
            })
            .collect();
        assert_eq!(server.ingest(ADMIN_KEY, &events).await.status(), 204);
    }
    let jwks = server.jwks_text().await;
    server.stop();
    Fixture {
        data: walk(&data)
            .into_iter()
            .map(|file| {
                let bytes = std::fs::read(&file).unwrap();
                (file.strip_prefix(&data).unwrap().to_owned(), bytes)
            })
            .collect(),
        // The server generated it beside its data directory.
        master_key: std::fs::read(root.join("data.master-key")).unwrap(),
        anchors: std::fs::read(&anchors).unwrap(),
        jwks,
    }
}

/// A test's own copy of the server's files. The master key is not at its
/// default place beside `data`, so only what a test passes is used.
pub(crate) struct Copy {
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) data: PathBuf,
    pub(crate) master_key_file: PathBuf,
    pub(crate) anchors: PathBuf,
}

pub(crate) fn copy_of_log() -> Copy {
    let fx = &*FIXTURE;
    let dir = tempfile::tempdir().unwrap();
    let write = |path: &Path, bytes: &[u8]| {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    };
    let data = dir.path().join("data");
    for (name, bytes) in &fx.data {
        write(&data.join(name), bytes);
    }
    let master_key_file = dir.path().join("keys/master.key");
    write(&master_key_file, &fx.master_key);
    let anchors = dir.path().join("audit/anchors.jsonl");
    write(&anchors, &fx.anchors);
    Copy {
        _dir: dir,
        data,
        master_key_file,
        anchors,
    }
}

/// `keymeter audit verify --json` on `data`, with nothing from the
/// environment: keys and anchors only as `args` give them.
pub(crate) fn audit_command(data: &Path) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(["audit", "verify", "--json", "--data-dir"])
        .arg(data)
        .env_remove("KEYMETER_MASTER_KEY")
        .env_remove("KEYMETER_MASTER_KEY_FILE")
        .env_remove("KEYMETER_AUDIT_ANCHOR_FILE")
        .env_remove("KEYMETER_CONFIG");
    cmd
}

pub(crate) struct Audit {
    pub(crate) code: i32,
    pub(crate) report: Value,
    pub(crate) stderr: String,
}

pub(crate) fn run_audit(mut cmd: Command) -> Audit {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    Audit {
        code: out.status.code().unwrap(),
        report,
        stderr,
    }
}

/// Audits with the engine's master key, and the anchors when asked.
pub(crate) fn audit(copy: &Copy, with_anchors: bool) -> Audit {
    let mut cmd = audit_command(&copy.data);
    cmd.arg("--master-key-file").arg(&copy.master_key_file);
    if with_anchors {
        cmd.arg("--anchors").arg(&copy.anchors);
    }
    run_audit(cmd)
}

/// What someone who knows the documented format, but not the signing key,
/// does after editing a payload: recompute the hash and CRC of every frame
/// from `from_seq` on, across segments, so the chain is valid again.
pub(crate) fn rechain_from(data: &Path, from_seq: u64) {
    let mut prev = [0u8; 32];
    for segment in segments(&data.join("log")) {
        modify(&segment, |bytes| {
            let mut at = SEGMENT_HEADER_LEN;
            while at < bytes.len() {
                let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
                let seq = u64::from_le_bytes(bytes[at + 9..at + 17].try_into().unwrap());
                let end = at + FRAME_HEADER_LEN + len;
                if seq >= from_seq {
                    let hash: [u8; 32] = Sha256::new()
                        .chain_update(prev)
                        .chain_update(seq.to_le_bytes())
                        .chain_update(&bytes[at + FRAME_HEADER_LEN..end])
                        .finalize()
                        .into();
                    bytes[at + 17..at + 49].copy_from_slice(&hash);
                    let crc = crc32c::crc32c(&bytes[at + 8..end]);
                    bytes[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
                }
                prev = bytes[at + 17..at + 49].try_into().unwrap();
                at = end;
            }
        });
    }
}

pub(crate) fn is_checkpoint(frame: &Frame) -> bool {
    matches!(Record::decode(&frame.payload()), Ok(Record::Checkpoint(_)))
}

/// A usage event in the middle of a segment that is neither the first nor
/// the last, followed by another frame in the same segment.
pub(crate) fn middle_event(frames: &[Frame]) -> usize {
    let segs: Vec<&PathBuf> = {
        let mut s: Vec<&PathBuf> = frames.iter().map(|f| &f.segment).collect();
        s.dedup();
        s
    };
    assert!(segs.len() >= 3, "expected several segments: {segs:?}");
    let middle = segs[segs.len() / 2];
    let events: Vec<usize> = frames
        .iter()
        .enumerate()
        .filter(|(i, f)| {
            &f.segment == middle
                && frames
                    .get(i + 1)
                    .is_some_and(|next| &next.segment == middle)
                && Record::decode(&f.payload()).is_ok_and(|r| r.event().is_some())
        })
        .map(|(i, _)| i)
        .collect();
    assert!(events.len() > 10, "events in {}", middle.display());
    events[events.len() / 2]
}

pub(crate) fn assert_finding(audit: &Audit, kind: &str, seq: u64, segment: &Path) {
    assert_eq!(audit.code, 1, "tampering exits 1: {}", audit.stderr);
    let finding = &audit.report["finding"];
    assert_eq!(audit.report["status"], "tampered");
    assert_eq!(finding["kind"], kind, "{finding}");
    assert_eq!(finding["seq"], seq, "{finding}");
    assert_eq!(
        finding["segment"].as_str().map(PathBuf::from).as_deref(),
        Some(segment),
        "{finding}"
    );
    // The human line on stderr names the same position.
    let name = segment.file_name().unwrap().to_str().unwrap();
    assert!(
        audit.stderr.contains("TAMPERED: ")
            && audit.stderr.contains(name)
            && audit.stderr.contains(&format!("record seq {seq}")),
        "{}",
        audit.stderr
    );
}
