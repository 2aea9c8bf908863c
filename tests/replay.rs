//! Rebuild: `keymeter replay` drops every projection and rebuilds it from the
//! log; the counters come out byte-identical to the live ones.

mod common;

use common::*;
use keymeter::projection::Store;
use serde_json::json;

fn dump(dir: &std::path::Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let store = Store::open(&dir.join("state")).unwrap();
    store.counters_dump().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_rebuilds_counters_byte_identical_to_the_live_ones() {
    let dir = tempfile::tempdir().unwrap();
    // Signed checkpoints between the batches: replay must step over them.
    let server = Server::start_with(dir.path(), &["--audit-checkpoint-records", "100"]);
    for (slug, agg, value) in [
        ("sum", "SUM", Some("$.n")),
        ("count", "COUNT", None),
        ("avg", "AVG", Some("$.n")),
        ("uniq", "UNIQUE_COUNT", Some("$.user")),
        ("latest", "LATEST", Some("$.n")),
    ] {
        let mut m = json!({"slug": slug, "eventType": "e", "aggregation": agg, "groupBy": {"region": "$.region"}});
        if let Some(v) = value {
            m["valueProperty"] = json!(v);
        }
        server.create_meter(m).await;
    }
    let now = chrono::Utc::now().timestamp_millis();
    for b in 0..20 {
        let events: Vec<_> = (0..50)
            .map(|i| {
                let t = rfc3339_ms(now - (b * 50 + i) * 37_013);
                event(
                    &format!("{b}-{i}"),
                    "e",
                    &format!("cust-{}", i % 7),
                    &t,
                    json!({"n": i as f64 / 4.0, "user": format!("u{}", i % 11), "region": if i % 2 == 0 { "eu" } else { "us" }}),
                )
            })
            .collect();
        assert_eq!(server.ingest(ADMIN_KEY, &events).await.status(), 204);
    }
    // A meter defined after the events, and one deleted: both must replay the same.
    server
        .create_meter(
            json!({"slug": "late", "eventType": "e", "aggregation": "MAX", "valueProperty": "$.n"}),
        )
        .await;
    let r = server.delete(ADMIN_KEY, "/api/v1/meters/avg").await;
    assert_eq!(r.status(), 204);
    let before = server
        .query("sum", "windowSize=HOUR&groupBy=subject&groupBy=region")
        .await;
    server.stop();

    let live = dump(dir.path());
    assert!(
        live.len() > 100,
        "expected many counters, got {}",
        live.len()
    );
    let out = run(&["replay", "--data-dir", dir.path().to_str().unwrap()]);
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("rebuilt all projections"));
    let rebuilt = dump(dir.path());
    assert_eq!(live.len(), rebuilt.len());
    assert!(
        live == rebuilt,
        "replayed counters differ from the live ones"
    );

    let server = Server::start(dir.path());
    let after = server
        .query("sum", "windowSize=HOUR&groupBy=subject&groupBy=region")
        .await;
    assert_eq!(before, after);
    let meters = server.get_json(ADMIN_KEY, "/api/v1/meters").await;
    let slugs: Vec<&str> = meters
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["slug"].as_str().unwrap())
        .collect();
    assert_eq!(slugs, vec!["count", "late", "latest", "sum", "uniq"]);
}
