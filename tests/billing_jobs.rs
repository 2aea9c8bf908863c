//! A billing job that reads the statement feed with a cursor, crashes at
//! random points (losing what it had read since its last saved cursor) and
//! resumes, while closes and restatements keep issuing versions: it ends
//! having processed every statement version exactly once.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::engine::{config, ManualClock};
use keymeter::billing::statement::Statement;
use keymeter::engine::decide::CloseBilling;
use keymeter::engine::protocol::{CreateMeter, Ingest, Origin};
use keymeter::engine::{Clock, Engine, EngineHandle};
use keymeter::event::{decode_event_text, TimeWindow};
use keymeter::meter::MeterDef;
use keymeter::query::View;
use keymeter::record::Audit;
use rand::{Rng, SeedableRng};

const DAY: i64 = 86_400_000;
const T0: i64 = 1_800_000_000_000 / DAY * DAY;

async fn send(handle: &EngineHandle, now: i64, events: &[(String, String, i64)]) {
    let window = TimeWindow {
        back_ms: 35 * DAY,
        ahead_ms: 300_000,
    };
    let items = events
        .iter()
        .map(|(id, subject, time)| {
            let time = chrono::DateTime::from_timestamp_millis(*time).unwrap().to_rfc3339();
            let text = format!(
                r#"{{"specversion":"1.0","id":"{id}","source":"jobs","type":"call","subject":"{subject}","time":"{time}","data":{{"n":2}}}}"#
            );
            decode_event_text(&text, now, window).unwrap()
        })
        .collect();
    let origin = Origin::Http {
        tenant: "key:jobs".into(),
    };
    let out = handle
        .send(Ingest {
            items,
            received_ms: now,
            origin,
        })
        .await
        .unwrap();
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
}

/// The job: what it processed (statement id, version → times), and the
/// cursor it saved after the last page it finished.
#[derive(Default)]
struct Job {
    processed: BTreeMap<(String, u32), u32>,
    saved: Option<String>,
}

impl Job {
    /// Reads pages until the feed is drained; crashes (forgets the pages
    /// read since the saved cursor) with probability `crash`.
    fn run(&mut self, view: &View, rng: &mut rand::rngs::StdRng, crash: f64) {
        loop {
            let mut cursor = self.saved.clone();
            let mut pending = Vec::new();
            let mut drained = false;
            // A few pages between saves.
            for _ in 0..rng.gen_range(1..4) {
                let limit = rng.gen_range(1..7);
                let page = view
                    .billing()
                    .unwrap()
                    .feed(cursor.as_deref(), limit, &Default::default())
                    .unwrap();
                for bytes in &page.statements {
                    let s: Statement = serde_json::from_slice(bytes).unwrap();
                    pending.push((s.statement_id, s.version));
                }
                drained = page.statements.is_empty();
                if !page.next_cursor.is_empty() {
                    cursor = Some(page.next_cursor);
                }
                if drained {
                    break;
                }
            }
            if rng.gen_bool(crash) {
                continue; // crashed before saving: the pages are read again
            }
            for k in pending {
                *self.processed.entry(k).or_default() += 1;
            }
            self.saved = cursor;
            if drained {
                return;
            }
        }
    }
}

#[test]
fn a_job_that_crashes_and_resumes_from_its_cursor_sees_each_version_once() {
    let root = tempfile::tempdir().unwrap();
    let mut cfg = config(root.path());
    cfg.billing.cycle = "day".into();
    cfg.billing.close_interval = std::time::Duration::from_secs(3600);
    let clock = Arc::new(ManualClock::new(T0 + 1000));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let engine = Engine::open(&cfg, clock.clone()).unwrap().engine;
    let handle = engine.handle();
    let view = View::new(handle.shared.clone(), None);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut job = Job::default();
    rt.block_on(async {
        let def: MeterDef = serde_json::from_value(serde_json::json!({
            "slug": "n", "eventType": "call", "aggregation": "SUM", "valueProperty": "$.n"
        }))
        .unwrap();
        let audit = Audit {
            actor: None,
            at_ms: 0,
            request_id: None,
        };
        handle.send(CreateMeter { def, audit }).await.unwrap();
    });
    let mut id = 0;
    let next = |n: &mut i32| {
        *n += 1;
        format!("e{n}")
    };
    for day in 0..6i64 {
        let start = T0 + day * DAY;
        rt.block_on(async {
            clock.set(start + 3 * 3_600_000);
            let events: Vec<_> = (0..40)
                .map(|s| (next(&mut id), format!("sub-{s:02}"), start + s))
                .collect();
            send(&handle, clock.now_ms(), &events).await;
            // Late events for the day before, some subjects: restatements.
            if day > 0 {
                let late: Vec<_> = (0..rng.gen_range(0..15))
                    .map(|s| (next(&mut id), format!("sub-{s:02}"), start - DAY + 500 + s))
                    .collect();
                send(&handle, clock.now_ms(), &late).await;
            }
            clock.set(start + DAY + 2 * 3_600_000);
            handle
                .send(CloseBilling {
                    watermark_ms: i64::MAX,
                })
                .await
                .unwrap();
        });
        // The job reads while versions keep coming.
        job.run(&view, &mut rng, 0.3);
    }
    job.run(&view, &mut rng, 0.0);
    let all = view
        .billing()
        .unwrap()
        .feed(None, 10_000, &Default::default())
        .unwrap();
    let issued: Vec<(String, u32)> = all
        .statements
        .iter()
        .map(|b| {
            let s: Statement = serde_json::from_slice(b).unwrap();
            (s.statement_id, s.version)
        })
        .collect();
    assert!(
        issued.len() > 6 * 40,
        "restatements were issued: {}",
        issued.len()
    );
    assert_eq!(
        job.processed.len(),
        issued.len(),
        "every version, none missed"
    );
    assert!(job.processed.values().all(|n| *n == 1), "none twice");
    for k in &issued {
        assert!(job.processed.contains_key(k), "{k:?} missed");
    }
    drop(view);
    drop(handle);
    engine.shutdown().unwrap();
}
