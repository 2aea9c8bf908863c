//! The dedup index's bounds, through the HTTP API in process with a clock the
//! test moves: at `dedup_keys_max` ingest is refused with `503
//! DEDUP_CAPACITY` and nothing is recorded; an identity is remembered while
//! a resend of it could be accepted, and forgotten (its room freed) once the
//! hour holding its event time ends `event_time_back + event_time_ahead`
//! before now. One product (or unbound key) holds at most its share of the
//! index, so filling it cannot stop another product's ingest.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::engine::{config, ManualClock};
use common::{event, rfc3339_ms, ADMIN_KEY};
use keymeter::engine::Engine;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// On an hour boundary, as the index's pruning is by whole hours.
const T0: i64 = 1_800_000_000_000;
const HOUR_MS: i64 = 3_600_000;
const BACK_MS: i64 = HOUR_MS;
const AHEAD_MS: i64 = 5 * 60_000;

/// The API over an engine whose clock stands at `T0` until moved.
struct InProcess {
    /// Dropped before the engine shuts down: its server task holds an
    /// engine handle.
    rt: Option<tokio::runtime::Runtime>,
    engine: Option<Engine>,
    clock: Arc<ManualClock>,
    base: String,
    client: reqwest::Client,
}

impl InProcess {
    /// One sender may fill the whole index.
    fn start(root: &std::path::Path, dedup_keys_max: usize) -> InProcess {
        InProcess::start_shared(root, dedup_keys_max, 100)
    }

    fn start_shared(root: &std::path::Path, dedup_keys_max: usize, share_pct: u8) -> InProcess {
        let mut cfg = config(root);
        cfg.dedup_keys_max = dedup_keys_max;
        cfg.dedup_tenant_share_pct = share_pct;
        cfg.event_time_back = Duration::from_millis(BACK_MS as u64);
        cfg.event_time_ahead = Duration::from_millis(AHEAD_MS as u64);
        let clock = Arc::new(ManualClock::new(T0));
        let rt = tokio::runtime::Runtime::new().unwrap();
        let engine = Engine::open(&cfg, clock.clone()).unwrap().engine;
        let state = keymeter::api::AppState::new(engine.handle(), Arc::new(cfg), None);
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        rt.spawn(async move {
            axum::serve(listener, keymeter::api::router(state))
                .await
                .unwrap()
        });
        let server = InProcess {
            rt: Some(rt),
            engine: Some(engine),
            clock,
            base,
            client: reqwest::Client::new(),
        };
        let meter = json!({"slug": "calls", "eventType": "call", "aggregation": "COUNT"});
        // Created on the first start; a restart finds it.
        let status = server.post(ADMIN_KEY, "/api/v1/meters", &meter).0;
        assert!(matches!(status, StatusCode::CREATED | StatusCode::CONFLICT));
        server
    }

    fn post(&self, key: &str, path: &str, body: &Value) -> (StatusCode, Value) {
        self.rt().block_on(async {
            let r = self
                .client
                .post(format!("{}{path}", self.base))
                .bearer_auth(key)
                .json(body)
                .send()
                .await
                .unwrap();
            (r.status(), r.json().await.unwrap_or(Value::Null))
        })
    }

    /// An `ingest` key bound to a new product `product`.
    fn product_key(&self, product: &str) -> String {
        let body = json!({"id": product, "requireSignatures": false});
        assert_eq!(
            self.post(ADMIN_KEY, "/api/v1/products", &body).0,
            StatusCode::CREATED
        );
        let body = json!({"name": product, "scopes": ["ingest"], "product": product});
        let (status, key) = self.post(ADMIN_KEY, "/api/v1/api-keys", &body);
        assert_eq!(status, StatusCode::CREATED, "{key}");
        key["key"].as_str().unwrap().to_owned()
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("running")
    }

    /// Posts events `ids`, all dated `time_ms`, as one batch at the clock's
    /// `now_ms`: the status and the body (or the counts of a 204).
    fn ingest(&self, now_ms: i64, ids: &[&str], time_ms: i64) -> (StatusCode, Value) {
        self.ingest_as(ADMIN_KEY, now_ms, ids, time_ms)
    }

    fn ingest_as(&self, key: &str, now_ms: i64, ids: &[&str], time_ms: i64) -> (StatusCode, Value) {
        self.clock.set(now_ms);
        let events: Vec<Value> = ids
            .iter()
            .map(|id| event(id, "call", "acme", &rfc3339_ms(time_ms), json!({})))
            .collect();
        self.rt().block_on(async {
            let r = self
                .client
                .post(format!("{}/api/v1/events", self.base))
                .bearer_auth(key)
                .header("content-type", "application/cloudevents-batch+json")
                .json(&events)
                .send()
                .await
                .unwrap();
            let status = r.status();
            if status == StatusCode::NO_CONTENT {
                let h = |name: &str| r.headers()[name].to_str().unwrap().parse::<u64>().unwrap();
                let counts = json!({"accepted": h("keymeter-accepted"),
                    "duplicates": h("keymeter-duplicates")});
                return (status, counts);
            }
            (status, r.json().await.unwrap())
        })
    }

    /// Events counted by the meter, over all time.
    fn counted(&self) -> f64 {
        self.rt().block_on(async {
            let r = self
                .client
                .get(format!("{}/api/v1/meters/calls/query", self.base))
                .bearer_auth(ADMIN_KEY)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            let body: Value = r.json().await.unwrap();
            body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|row| row["value"].as_f64().unwrap())
                .sum()
        })
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        drop(self.rt.take());
        if let Some(engine) = self.engine.take() {
            let _ = engine.shutdown();
        }
    }
}

fn accepted(n: u64, duplicates: u64) -> (StatusCode, Value) {
    (
        StatusCode::NO_CONTENT,
        json!({"accepted": n, "duplicates": duplicates}),
    )
}

fn assert_dedup_capacity((status, body): (StatusCode, Value)) {
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "DEDUP_CAPACITY", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("dedup_keys_max"),
        "the message names the setting to raise: {body}"
    );
}

#[test]
fn a_full_dedup_index_refuses_ingest_with_503_and_records_nothing() {
    let root = tempfile::tempdir().unwrap();
    let server = InProcess::start(root.path(), 5);
    assert_eq!(server.ingest(T0, &["a", "b", "c"], T0), accepted(3, 0));

    // Three more would pass the limit: the whole request is refused, none of
    // it is counted, and none of it is remembered (a later resend is new).
    assert_dedup_capacity(server.ingest(T0 + 1, &["d", "e", "f"], T0));
    assert_eq!(server.counted(), 3.0);
    assert_eq!(server.ingest(T0 + 2, &["d", "e"], T0), accepted(2, 0));
    assert_eq!(server.counted(), 5.0);

    // At the limit even one new event is refused; a resend is answered
    // as the duplicate it is.
    assert_dedup_capacity(server.ingest(T0 + 3, &["g"], T0 + 3));
    assert_eq!(server.ingest(T0 + 4, &["a", "b"], T0), accepted(0, 2));
    assert_dedup_capacity(server.ingest(T0 + 4, &["a", "g"], T0));
    assert_eq!(server.counted(), 5.0);
}

#[test]
fn room_is_freed_when_the_window_passes_without_waiting_for_another_batch() {
    let root = tempfile::tempdir().unwrap();
    let server = InProcess::start(root.path(), 2);
    assert_eq!(server.ingest(T0, &["a", "b"], T0), accepted(2, 0));
    // The identities' hour ends back + ahead before now: the first request
    // that finds the index full is taken, not refused.
    let later = T0 + HOUR_MS + BACK_MS + AHEAD_MS;
    assert_eq!(server.ingest(later, &["c", "d"], later), accepted(2, 0));
    assert_eq!(server.counted(), 4.0);
}

#[test]
fn an_identity_is_kept_while_a_resend_is_accepted_and_forgotten_after_its_hour_leaves_the_window() {
    let root = tempfile::tempdir().unwrap();
    let server = InProcess::start(root.path(), 5);
    let early = T0 + 10 * 60_000;
    assert_eq!(
        server.ingest(early, &["a", "b", "c", "d"], early),
        accepted(4, 0)
    );

    // Up to the window's edge, and after batches sealed in the next hour:
    // still a duplicate, counted once.
    for now in [early + 20 * 60_000, early + BACK_MS - 1, early + BACK_MS] {
        assert_eq!(
            server.ingest(now, &["a"], early),
            accepted(0, 1),
            "at {now}"
        );
    }
    assert_eq!(server.counted(), 4.0);

    // Just outside the window a resend is refused for its time, not
    // recognised as a duplicate.
    let (status, body) = server.ingest(early + BACK_MS + 1, &["a"], early);
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["rejected"][0]["code"], "EVENT_TIME_OUT_OF_RANGE");
    assert_eq!(server.counted(), 4.0);

    // Fill the index; "a".."d" are outside the window but their hour (T0's)
    // does not yet end back + ahead before now, so they still hold room.
    let t = T0 + HOUR_MS + 30 * 60_000;
    assert_eq!(server.ingest(t, &["e"], t), accepted(1, 0));
    let forget_at = T0 + HOUR_MS + BACK_MS + AHEAD_MS;
    assert_dedup_capacity(server.ingest(forget_at - 1, &["f"], forget_at - 1));
    // From that instant on they are forgotten: four new events fit, and "e"
    // (a later hour) is still remembered.
    assert_eq!(
        server.ingest(forget_at, &["f", "g", "h", "i"], forget_at),
        accepted(4, 0)
    );
    assert_dedup_capacity(server.ingest(forget_at, &["j"], forget_at));
    assert_eq!(server.counted(), 9.0);
}

#[test]
fn a_product_that_fills_its_share_holds_up_no_one_else_across_restarts() {
    let root = tempfile::tempdir().unwrap();
    let server = InProcess::start_shared(root.path(), 12, 50);
    let (acme, globex) = (server.product_key("acme"), server.product_key("globex"));
    let ids = |p: &str, n: usize| (0..n).map(|i| format!("{p}-{i}")).collect::<Vec<_>>();
    fn refs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }

    // acme fills its half; its next event is refused, naming the share.
    let flood = ids("acme", 7);
    assert_eq!(
        server.ingest_as(&acme, T0, &refs(&flood[..6]), T0),
        accepted(6, 0)
    );
    let (status, body) = server.ingest_as(&acme, T0 + 1, &refs(&flood[6..]), T0);
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("DEDUP_CAPACITY"))
    );
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("product:acme") && message.contains("dedup_tenant_share_pct"),
        "{message}"
    );
    // A resend of what acme already sent is still only a duplicate.
    assert_eq!(
        server.ingest_as(&acme, T0 + 2, &refs(&flood[..6]), T0),
        accepted(0, 6)
    );

    // globex and the admin's unbound key still get in.
    assert_eq!(
        server.ingest_as(&globex, T0 + 3, &refs(&ids("globex", 4)), T0),
        accepted(4, 0)
    );
    assert_eq!(server.ingest(T0 + 4, &["admin-0"], T0), accepted(1, 0));
    assert_eq!(server.counted(), 11.0);
    drop(server);

    // The shares are rebuilt on restart, from the snapshot and then from
    // the log alone.
    for lose_snapshot in [false, true] {
        if lose_snapshot {
            std::fs::remove_file(root.path().join("data/state/dedup.snapshot")).unwrap();
        }
        let server = InProcess::start_shared(root.path(), 12, 50);
        let (status, _) = server.ingest_as(&acme, T0 + 5, &["acme-late"], T0);
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "snapshot lost: {lose_snapshot}"
        );
        assert_eq!(
            server.ingest_as(&globex, T0 + 6, &["globex-0"], T0),
            accepted(0, 1)
        );
        assert_eq!(server.counted(), 11.0);
    }
}
