//! High cardinality: a million subjects, each its own counter. Counters
//! written live (batch by batch, through the overlay) and rebuilt by
//! `keymeter replay` (folded in memory, written in key order) are the same
//! bytes; and a replay killed part-way is finished, identically, by the
//! next start or the next replay.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::engine::config;
use keymeter::config::Config;
use keymeter::engine::protocol::{CreateMeter, Ingest, Origin};
use keymeter::engine::{Engine, EngineHandle, SystemClock};
use keymeter::event::{decode_event_text, Decoded, TimeWindow};
use keymeter::log::Seq;
use keymeter::meter::MeterDef;
use keymeter::projection::checkpoint;
use keymeter::record::Audit;

const BATCH: usize = 10_000;

fn meter(slug: &str) -> MeterDef {
    serde_json::from_value(serde_json::json!({
        "slug": slug, "eventType": "call", "aggregation": "SUM",
        "valueProperty": "$.n", "windowSize": "HOUR"
    }))
    .unwrap()
}

/// Events `from..from + n`, event `i` for subject `cust-{i % subjects}`.
fn events(from: usize, n: usize, subjects: usize, now_ms: i64) -> Vec<Decoded> {
    let time = common::rfc3339_ms(now_ms - 60_000);
    (from..from + n)
        .map(|i| {
            let text = format!(
                r#"{{"specversion":"1.0","id":"e{i}","source":"card","type":"call","subject":"cust-{}","time":"{time}","data":{{"n":{}}}}}"#,
                i % subjects,
                i % 7
            );
            decode_event_text(&text, now_ms, TimeWindow::default()).unwrap()
        })
        .collect()
}

async fn ingest(handle: &EngineHandle, items: Vec<Decoded>) {
    let origin = Origin::Http {
        tenant: "product:card".into(),
    };
    let received_ms = chrono::Utc::now().timestamp_millis();
    let out = handle
        .send(Ingest {
            items,
            received_ms,
            origin,
        })
        .await
        .unwrap();
    assert!(out.rejected.is_empty());
}

/// Runs the engine in process: creates `meters` one after the other, each
/// followed by `n` events over `subjects` subjects.
fn run(cfg: &Config, meters: &[&str], n: usize, subjects: usize) {
    let started = Engine::open(cfg, Arc::new(SystemClock)).unwrap();
    let handle = started.engine.handle();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    rt.block_on(async {
        for (m, slug) in meters.iter().enumerate() {
            let audit = Audit {
                actor: None,
                at_ms: 0,
                request_id: None,
            };
            handle
                .send(CreateMeter {
                    def: meter(slug),
                    audit,
                })
                .await
                .unwrap();
            for from in (m * n..(m + 1) * n).step_by(BATCH) {
                ingest(
                    &handle,
                    events(from, BATCH.min((m + 1) * n - from), subjects, now),
                )
                .await;
            }
        }
    });
    drop(handle);
    started.engine.shutdown().unwrap();
}

fn dump(cfg: &Config) -> Vec<(Vec<u8>, Vec<u8>)> {
    common::projections::open_store(&cfg.data_dir)
        .counters_dump()
        .unwrap()
}

#[test]
fn a_million_subjects_written_live_and_replayed_are_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    const SUBJECTS: usize = 1_000_000;
    run(&cfg, &["tokens"], SUBJECTS, SUBJECTS);
    let live = dump(&cfg);
    {
        let store = common::projections::open_store(&cfg.data_dir);
        let states = store.counter_states().unwrap();
        assert_eq!(states.len(), SUBJECTS, "one counter per subject");
        // Blocks, not a key per counter.
        assert!(live.len() < SUBJECTS / 20, "{} entries", live.len());
    }
    keymeter::engine::rebuild(&cfg, |_, _| {}).unwrap();
    let rebuilt = dump(&cfg);
    assert_eq!(live.len(), rebuilt.len());
    assert!(
        live == rebuilt,
        "replayed counters differ from the live ones"
    );
}

/// The counters tree's checkpoint, once the stopped replay released the store.
fn counters_checkpoint(data: &Path) -> Seq {
    checkpoint(&common::projections::open_store(data).counters).unwrap()
}

#[test]
fn a_replay_killed_part_way_is_finished_identically_by_a_start_or_a_replay() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    // A second meter half-way: its creation makes the replay write what it
    // folded so far, so a kill after it leaves counters part-way down the log.
    run(&cfg, &["tokens", "calls"], 80_000, 50_000);
    // Where `serve` and `replay` look for the master key the engine had.
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    std::fs::write(dir.path().join("data.master-key"), key).unwrap();
    // A start appends a record at its stop, so the checkpoint moves on: the
    // counters (and the meters they count) are what must not change.
    let counters = |cfg: &Config| {
        let mut d = dump(cfg);
        d.retain(|(k, _)| !k.is_empty());
        d
    };
    // The engine may have stopped before the second meter counted its past
    // (the next start finishes that): a whole replay gives the reference.
    // Kills are spread over the time it takes on this machine.
    let started = std::time::Instant::now();
    common::assert_success(&common::replay(&cfg.data_dir));
    let whole = started.elapsed();
    let reference = counters(&cfg);
    let head = keymeter::log::verify(&cfg.log_dir()).unwrap().head_seq;

    let mut part_way = 0;
    for (fraction, finish_by_start) in [(0.2, true), (0.4, false), (0.6, true), (0.8, false)] {
        let kill_after = whole.mul_f64(fraction);
        let mut replay = std::process::Command::new(common::bin())
            .args(["replay", "--data-dir"])
            .arg(&cfg.data_dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(kill_after);
        let finished = replay.try_wait().unwrap().is_some();
        replay.kill().unwrap();
        replay.wait().unwrap();
        let at = counters_checkpoint(&cfg.data_dir);
        if !finished && at < head {
            part_way += 1;
        }
        if finish_by_start {
            common::Server::start(&cfg.data_dir).stop();
        } else {
            common::assert_success(&common::replay(&cfg.data_dir));
        }
        assert!(
            counters(&cfg) == reference,
            "killed after {kill_after:?} of {whole:?} (counters at seq {at} of {head}), then \
             finished by {}: counters differ",
            if finish_by_start {
                "a start"
            } else {
                "a replay"
            }
        );
    }
    assert!(
        part_way >= 1,
        "no kill landed while the replay was part-way"
    );
}
