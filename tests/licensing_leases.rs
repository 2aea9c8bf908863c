//! Seat leases with a controlled clock, in process: a lapsed lease is
//! reclaimed through a logged `SeatLeaseExpired`, so a rebuild from the log
//! gives the same seats; a heartbeat keeps a lease alive.

mod common;

use std::sync::Arc;

use common::engine::{config, ManualClock};
use keymeter::engine::protocol::{CheckoutSeat, CreateLicense, HeartbeatSeat};
use keymeter::engine::{Engine, EngineHandle};
use keymeter::id::{LicenseId, SeatId};
use keymeter::license::model::NewLicense;
use keymeter::license::License;
use keymeter::record::{Audit, LicenseSecret, Record};
use serde_json::json;

const T0: i64 = 1_800_000_000_000;

fn audit() -> Audit {
    Audit {
        actor: Some("test".into()),
        at_ms: 0,
        request_id: None,
    }
}

async fn create(handle: &EngineHandle, ttl_s: u64) -> LicenseId {
    let shared = &handle.shared;
    let new: NewLicense = serde_json::from_value(json!({"product": "p", "customer": "c",
        "policy": {"type": "seat", "seats": {"max": 1, "mode": "floating", "lease_ttl_s": ttl_s}}}))
    .unwrap();
    let now = keymeter::license::utc_ms(shared.clock.now_ms());
    let license = License::create("lic_00000000000000aa".into(), new, now).unwrap();
    let key = keymeter::crypto::generate_license_key();
    let secret = LicenseSecret {
        lookup: shared.crypto.lookup_digest(&key),
        sealed_key: shared.crypto.seal(key.as_bytes(), license.id.as_bytes()),
    };
    handle
        .send(CreateLicense {
            license: Box::new(license),
            secret,
            audit: audit(),
        })
        .await
        .unwrap()
        .unwrap()
        .id
}

fn checkout(license_id: &LicenseId, fingerprint: &str) -> CheckoutSeat {
    CheckoutSeat {
        license_id: license_id.clone(),
        fingerprint: fingerprint.to_owned(),
        new_seat_id: format!("seat_{fingerprint}").into(),
        token_sha256: token(fingerprint),
        audit: audit(),
    }
}

/// The lease token digest a fingerprint's holder presents.
fn token(fingerprint: &str) -> [u8; 32] {
    [fingerprint.as_bytes()[0]; 32]
}

fn seats(handle: &EngineHandle, id: &str) -> Vec<(SeatId, String, Option<i64>)> {
    let state = handle.shared.licenses.get(id).unwrap();
    state
        .seats
        .all()
        .map(|s| (s.seat_id.clone(), s.fingerprint.clone(), s.expires_ms))
        .collect()
}

#[test]
fn a_lapsed_lease_is_reclaimed_through_the_log_and_replays_the_same() {
    let root = tempfile::tempdir().unwrap();
    let cfg = config(root.path());
    let clock = Arc::new(ManualClock::new(T0));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let engine = Engine::open(&cfg, clock.clone()).unwrap().engine;
    let handle = engine.handle();
    let before = rt.block_on(async {
        let id = create(&handle, 60).await;
        let a = handle.send(checkout(&id, "a")).await.unwrap().unwrap();
        assert_eq!(a.expires_ms, Some(T0 + 60_000));
        let refused = handle.send(checkout(&id, "b")).await.unwrap().unwrap_err();
        assert_eq!(refused.code, "SEAT_LIMIT_EXCEEDED");
        // A heartbeat 50 s in moves the lease end to 110 s.
        clock.set(T0 + 50_000);
        let hb = handle
            .send(HeartbeatSeat {
                license_id: id.clone(),
                seat_id: a.seat_id.clone(),
                token_sha256: Some(token("a")),
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(hb.expires_ms, Some(T0 + 110_000));
        clock.set(T0 + 109_999);
        let still = handle.send(checkout(&id, "b")).await.unwrap();
        assert!(still.is_err(), "the lease has not lapsed yet");
        // Exactly at the lease end the seat is free again.
        clock.set(T0 + 110_000);
        let b = handle.send(checkout(&id, "b")).await.unwrap().unwrap();
        assert!(b.new);
        let gone = handle
            .send(HeartbeatSeat {
                license_id: id.clone(),
                seat_id: a.seat_id.clone(),
                token_sha256: Some(token("a")),
            })
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(gone.code, "NO_SEAT");
        let live = seats(&handle, &id);
        (id, a.seat_id, live)
    });
    let (id, a_seat, live) = before;
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].1, "b");
    drop(handle);
    engine.shutdown().unwrap();

    // The reclaim is a fact in the log.
    let head = keymeter::log::verify(&cfg.log_dir()).unwrap().head_seq;
    let expired: Vec<Record> = keymeter::log::read_range(&cfg.log_dir(), 1, head)
        .unwrap()
        .map(|e| Record::decode(&e.unwrap().payload).unwrap())
        .filter(|r| matches!(r, Record::SeatLeaseExpired { .. }))
        .collect();
    assert_eq!(expired.len(), 1);
    match &expired[0] {
        Record::SeatLeaseExpired {
            license_id,
            seat_id,
            at_ms,
        } => assert_eq!(
            (license_id.as_str(), seat_id.as_str(), *at_ms),
            (id.as_str(), a_seat.as_str(), T0 + 110_000)
        ),
        _ => unreachable!(),
    }

    // Rebuilt from the log alone: the same seats.
    keymeter::engine::rebuild(&cfg, |_, _| {}).unwrap();
    let engine = Engine::open(&cfg, clock.clone()).unwrap().engine;
    let handle = engine.handle();
    assert_eq!(seats(&handle, &id), live);
    drop(handle);
    engine.shutdown().unwrap();
}

/// Once a lease lapses, the seat is freed with no request touching the
/// license: the writer's timer sweeps lapsed leases every 5 s and logs the
/// reclaim, so readers (seat listings, validation) see the seat free and a
/// replay of the log frees it too.
#[test]
fn the_sweeper_frees_a_lapsed_seat_without_any_request() {
    let root = tempfile::tempdir().unwrap();
    let cfg = config(root.path());
    let clock = Arc::new(ManualClock::new(T0));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let engine = Engine::open(&cfg, clock.clone()).unwrap().engine;
    let handle = engine.handle();
    let (id, seat) = rt.block_on(async {
        let id = create(&handle, 60).await;
        let a = handle.send(checkout(&id, "a")).await.unwrap().unwrap();
        (id, a.seat_id)
    });
    assert_eq!(seats(&handle, &id).len(), 1);
    clock.set(T0 + 60_000);
    // Two sweep periods and then some; nothing is sent to the engine meanwhile.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !seats(&handle, &id).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the lapsed seat is still held: {:?}",
            seats(&handle, &id)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    drop(handle);
    engine.shutdown().unwrap();

    let head = keymeter::log::verify(&cfg.log_dir()).unwrap().head_seq;
    let expired: Vec<(String, String, i64)> = keymeter::log::read_range(&cfg.log_dir(), 1, head)
        .unwrap()
        .filter_map(|e| match Record::decode(&e.unwrap().payload).unwrap() {
            Record::SeatLeaseExpired {
                license_id,
                seat_id,
                at_ms,
            } => Some((license_id.to_string(), seat_id.to_string(), at_ms)),
            _ => None,
        })
        .collect();
    assert_eq!(
        expired,
        vec![(id.to_string(), seat.to_string(), T0 + 60_000)],
        "the reclaim is a fact in the log"
    );
}
