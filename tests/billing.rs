//! Billing closes and statements, in process with a clock the test moves:
//! a period closes after its grace and once the sources delivered past it,
//! late events within the horizon give a new version that only adds leaves,
//! older ones are refused and quarantined, proofs verify, and `keymeter
//! replay` rebuilds the same statements.

mod common;

use std::sync::Arc;

use common::engine::{config, ManualClock};
use keymeter::billing::merkle::{self, Node};
use keymeter::billing::statement::Statement;
use keymeter::billing::PeriodState;
use keymeter::engine::decide::CloseBilling;
use keymeter::engine::protocol::{CreateMeter, Ingest, IngestOutcome, Origin};
use keymeter::engine::{Engine, EngineHandle};
use keymeter::event::{decode_event_text, TimeWindow};
use keymeter::meter::MeterDef;
use keymeter::query::View;
use keymeter::record::Audit;
use serde_json::json;

const DAY: i64 = 86_400_000;

fn ms(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap()
        .timestamp_millis()
}

fn audit() -> Audit {
    Audit {
        actor: None,
        at_ms: 0,
        request_id: None,
    }
}

async fn meter(handle: &EngineHandle, def: serde_json::Value) {
    let def: MeterDef = serde_json::from_value(def).unwrap();
    handle
        .send(CreateMeter {
            def,
            audit: audit(),
        })
        .await
        .unwrap();
}

/// Sends one event `id` dated `time` for `subject`, received at `now`.
async fn event(
    handle: &EngineHandle,
    now: i64,
    id: &str,
    subject: &str,
    time: &str,
    tokens: i64,
) -> IngestOutcome {
    let text = json!({
        "specversion": "1.0", "id": id, "source": "app", "type": "request",
        "subject": subject, "time": time,
        "data": {"tokens": tokens, "region": if tokens % 2 == 0 { "eu" } else { "us" }}
    })
    .to_string();
    let window = TimeWindow {
        back_ms: 35 * 86_400_000,
        ahead_ms: 300_000,
    };
    let item = decode_event_text(&text, now, window).unwrap();
    handle
        .send(Ingest {
            items: vec![item],
            received_ms: now,
            origin: Origin::Http {
                tenant: "key:test".into(),
            },
        })
        .await
        .unwrap()
}

async fn close(handle: &EngineHandle, watermark_ms: i64) -> Option<u64> {
    handle.send(CloseBilling { watermark_ms }).await.unwrap()
}

fn statements(view: &View) -> Vec<Statement> {
    let page = view
        .billing()
        .unwrap()
        .feed(None, 100, &Default::default())
        .unwrap();
    page.statements
        .iter()
        .map(|b| serde_json::from_slice(b).unwrap())
        .collect()
}

fn quantities(s: &Statement) -> Vec<(String, String, String)> {
    s.lines
        .iter()
        .map(|l| {
            let region = l.group.get("region").cloned().flatten().unwrap_or_default();
            (l.meter.clone(), region, l.quantity.clone())
        })
        .collect()
}

fn billing_tree(cfg: &keymeter::config::Config) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut dump = common::projections::dump_state(&cfg.data_dir);
    dump.trees.remove("billing").expect("the billing tree")
}

// One scenario in the order its steps depend on (each step reads what
// the one before left), hence its length.
#[test]
fn periods_close_on_grace_and_watermark_and_late_events_restate_or_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let mut cfg = config(root.path());
    cfg.billing.cycle = "day".into();
    cfg.billing.close_interval = std::time::Duration::from_secs(3600);
    let clock = Arc::new(ManualClock::new(ms("2026-03-10T12:00:00Z")));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let engine = Engine::open(&cfg, clock.clone()).unwrap().engine;
    let handle = engine.handle();
    let view = View::new(handle.shared.clone(), None);
    rt.block_on(async {
        meter(
            &handle,
            json!({"slug": "tokens", "eventType": "request", "aggregation": "SUM",
            "valueProperty": "$.tokens", "groupBy": {"region": "$.region"}}),
        )
        .await;
        meter(
            &handle,
            json!({"slug": "calls", "eventType": "request", "aggregation": "COUNT"}),
        )
        .await;
        for (id, time, tokens) in [
            ("e1", "2026-03-10T01:00:00Z", 4),
            ("e2", "2026-03-10T02:00:00Z", 7),
            ("e3", "2026-03-10T23:59:59.999Z", 2),
        ] {
            clock.set(clock_now(&clock).max(ms(time)));
            let out = event(&handle, clock_now(&clock), id, "acme", time, tokens).await;
            assert_eq!(out.accepted, 1, "{out:?}");
        }
        // Just after midnight: the next day's first event, and day 10 in its grace.
        clock.set(ms("2026-03-11T00:00:05Z"));
        event(
            &handle,
            clock_now(&clock),
            "e4",
            "acme",
            "2026-03-11T00:00:00Z",
            10,
        )
        .await;
        clock.set(ms("2026-03-11T00:30:00Z"));
        close(&handle, i64::MAX).await;
        let day10 = view.billing().unwrap().period("2026-03-10").unwrap();
        assert_eq!(day10.state, PeriodState::Closing);
        assert!(day10.waiting_for.unwrap().contains("grace"));
        assert!(statements(&view).is_empty());
        // Grace over, but a source has delivered only up to 23:00: held.
        clock.set(ms("2026-03-11T01:00:00Z"));
        assert_eq!(close(&handle, ms("2026-03-10T23:00:00Z")).await, None);
        assert!(
            statements(&view).is_empty(),
            "a lagging source holds the close"
        );
        assert!(close(&handle, i64::MAX).await.is_some());
    });
    let v1 = statements(&view);
    assert_eq!(v1.len(), 1, "{v1:?}");
    let v1 = &v1[0];
    assert_eq!(v1.version, 1);
    assert_eq!(v1.period.label, "2026-03-10");
    assert_eq!(
        quantities(v1),
        vec![
            ("calls".into(), "".into(), "3".into()),
            ("tokens".into(), "eu".into(), "6".into()),
            ("tokens".into(), "us".into(), "7".into()),
        ]
    );
    let reads = view.billing().unwrap();
    assert_eq!(
        reads.period("2026-03-10").unwrap().state,
        PeriodState::Closed
    );
    // (Readers hold the store open: each is dropped before the engine stops.)
    // Each counted event proves its inclusion in the signed total; e4 (the
    // next day) is in no line of this statement.
    for id in ["e1", "e2", "e3"] {
        let p = reads.proof(v1, "app", id).unwrap();
        let leaf = Node::leaf(&hex::decode(&p.leaf_bytes).unwrap(), leaf_value(&p.value));
        assert!(
            merkle::verify_inclusion(&leaf, p.index, p.size, &p.path, &p.root),
            "{id}"
        );
    }
    assert!(reads.proof(v1, "app", "e4").is_err());
    drop(reads);

    // A late event for day 10, inside the horizon: version 2, which only adds.
    rt.block_on(async {
        clock.set(ms("2026-03-11T01:05:00Z"));
        let out = event(
            &handle,
            clock_now(&clock),
            "late1",
            "acme",
            "2026-03-10T15:00:00Z",
            8,
        )
        .await;
        assert_eq!(out.accepted, 1);
        close(&handle, i64::MAX).await;
    });
    let all = statements(&view);
    assert_eq!(all.len(), 2);
    let v2 = &all[1];
    assert_eq!(
        (v2.statement_id.as_str(), v2.version),
        (v1.statement_id.as_str(), 2)
    );
    assert_eq!(v2.previous.as_ref().unwrap().sha256, v1.sha256());
    let eu = v2
        .lines
        .iter()
        .find(|l| l.group.get("region") == Some(&Some("eu".into())))
        .unwrap();
    assert_eq!(
        (eu.quantity.as_str(), eu.delta.as_deref()),
        ("14", Some("8"))
    );
    let reads = view.billing().unwrap();
    let c = reads.consistency(v1, v2).unwrap();
    for line in &c.lines {
        let old = line.old_root.unwrap();
        assert!(
            merkle::verify_consistency(
                line.old_size,
                line.new_size,
                &line.proof,
                &old,
                &line.new_root
            ),
            "{line:?}"
        );
    }
    drop(reads);

    // Days later: day 10 is beyond the horizon (two days back), day 12 is not.
    rt.block_on(async {
        clock.set(ms("2026-03-14T02:00:00Z"));
        close(&handle, i64::MAX).await;
        let now = clock_now(&clock);
        let refused = event(&handle, now, "late2", "acme", "2026-03-10T16:00:00Z", 1).await;
        assert_eq!(refused.accepted, 0);
        assert_eq!(refused.rejected[0].code.as_str(), "PERIOD_CLOSED");
        assert!(
            refused.rejected[0].message.contains("2026-03-10"),
            "{}",
            refused.rejected[0].message
        );
        let ok = event(&handle, now, "late3", "beta", "2026-03-12T16:00:00Z", 2).await;
        assert_eq!(ok.accepted, 1);
        close(&handle, i64::MAX).await;
    });
    let all = statements(&view);
    // acme day 11 (e4), then beta's day 12 restated from nothing.
    let labels: Vec<_> = all
        .iter()
        .map(|s| (s.subject.as_str(), s.period.label.as_str(), s.version))
        .collect();
    assert_eq!(
        labels,
        vec![
            ("acme", "2026-03-10", 1),
            ("acme", "2026-03-10", 2),
            ("acme", "2026-03-11", 1),
            ("beta", "2026-03-12", 1),
        ]
    );
    drop(view);
    drop(handle);
    engine.shutdown().unwrap();

    // The same statements, byte for byte, when rebuilt from the log.
    let before = billing_tree(&cfg);
    keymeter::engine::rebuild(&cfg, |_, _| {}).unwrap();
    assert_eq!(billing_tree(&cfg), before);
}

fn clock_now(clock: &ManualClock) -> i64 {
    use keymeter::engine::Clock;
    clock.now_ms()
}

fn leaf_value(text: &str) -> i128 {
    keymeter::meter::Amount::parse_decimal(text).unwrap().0
}

/// What a crash inside a close leaves behind: its statements and cleared
/// marks written (they go in batches before the checkpoint), the checkpoint
/// and the close state still at the record before. Catch-up applies the
/// late events and the close again: the tree must end as it would have
/// without the crash, with no version issued twice.
// One scenario in the order its steps depend on (each step reads what
// the one before left), hence its length.
#[test]
fn a_close_applied_again_after_a_crash_issues_nothing_twice() {
    use keymeter::projection::billing::keys;
    use keymeter::projection::{Applied, OpenContext, Readers, Registry, Store, CHECKPOINT_KEY};
    use keymeter::record::{AsJson, EventRecord, Record};

    let root = tempfile::tempdir().unwrap();
    let store = Store::open(&root.path().join("state")).unwrap();
    let log = keymeter::log::LogDir::disk(root.path().join("log"));
    let readers = Readers::new(None);
    let key = keymeter::meter::UniqueKey::from_bytes([3; 16]);
    let ctx = OpenContext {
        store: &store,
        log: &log,
        readers: &readers,
        unique_key: &key,
    };
    let spec = *Registry::standard()
        .specs()
        .iter()
        .find(|s| s.name == "billing")
        .unwrap();
    let day = ms("2026-03-10T00:00:00Z");
    let def: MeterDef = serde_json::from_value(json!({"slug": "tokens", "eventType": "request",
        "aggregation": "SUM", "valueProperty": "$.tokens"}))
    .unwrap();
    let event = |id: &str, subject: &str| {
        Record::Event(EventRecord {
            received_ms: day,
            time_ms: day + 1000,
            raw: json!({"specversion": "1.0", "id": id, "source": "app", "type": "request",
                "subject": subject, "data": {"tokens": 2}})
            .to_string(),
        })
    };
    let close = |restate| Record::BillingClose {
        at_ms: day + DAY + 7_200_000,
        closed_before_ms: day + DAY,
        restate,
    };
    let mut records = vec![
        Record::BillingSettings {
            cycle: keymeter::billing::CycleKind::Day,
            time_zone: "UTC".into(),
        },
        Record::MeterCreated {
            meter: AsJson::new(def),
            audit: audit(),
        },
    ];
    records.extend(["a", "b", "c"].map(|s| event(&format!("{s}1"), s)));
    records.push(close(false));
    records.extend(["a", "b", "c"].map(|s| event(&format!("{s}2"), s)));
    records.push(close(true));
    let applied: Vec<Applied<'_>> = (records.iter().enumerate())
        .map(|(i, record)| Applied {
            seq: i as u64 + 1,
            record,
            facts: None,
        })
        .collect();
    let tree = store.db.open_tree("billing").unwrap();
    let dump = || -> Vec<(Vec<u8>, Vec<u8>)> {
        tree.iter()
            .map(|kv| kv.unwrap())
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect()
    };

    let mut p = (spec.open)(&ctx).unwrap();
    p.apply(&applied[..6]).unwrap();
    p.flush().unwrap();
    let first_close = tree.get(keys::META_CLOSED).unwrap().unwrap();
    p.apply(&applied[6..]).unwrap();
    p.flush().unwrap();
    drop(p);
    let whole = dump();
    assert_eq!(
        whole
            .iter()
            .filter(|(k, _)| k.first() == Some(&keys::STATEMENT))
            .count(),
        6,
        "three versions 1, three versions 2"
    );

    tree.insert(CHECKPOINT_KEY, &6u64.to_be_bytes()).unwrap();
    tree.insert(keys::META_CLOSED, first_close).unwrap();
    let mut p = (spec.open)(&ctx).unwrap();
    p.apply(&applied).unwrap();
    p.flush().unwrap();
    drop(p);
    let again = dump();
    let versions = |d: &[(Vec<u8>, Vec<u8>)]| {
        d.iter()
            .filter(|(k, _)| k.first() == Some(&keys::STATEMENT))
            .count()
    };
    assert_eq!(versions(&again), 6, "no version issued twice");
    assert!(
        again == whole,
        "the tree differs from the one without a crash"
    );
}
