//! Decisions against simple models: for any sequence of requests, the
//! writer's answers and records match what the model says, and the
//! invariants users rely on hold after every step.

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;

use super::WriterState;
use crate::engine::batch::Batch;
use crate::engine::protocol::{
    ChangeLicenseStatus, CheckoutSeat, CreateLicense, EngineError, Ingest, Origin, ReleaseSeat,
    SaveProduct, SeatReleaser,
};
use crate::event::{decode_event_text, Decoded, TimeWindow};
use crate::id::{LicenseId, SeatId};
use crate::license::model::{NewLicense, Status, StatusAction};
use crate::license::{License, LicenseBook};
use crate::meter::{MeterSet, UniqueKey};
use crate::product::Product;
use crate::projection::dedup::DedupIndex;
use crate::record::{Audit, LicenseSecret, OffsetDelta, Record};
use crate::source::checkpoint::SourceCheckpoint;

const T0: i64 = 1_800_000_000_000;

fn state(dir: &std::path::Path) -> WriterState {
    WriterState {
        next_seq: 1,
        sources: SourceCheckpoint::default(),
        dedup: DedupIndex::open(dir, 100_000).unwrap(),
        meters: MeterSet::default(),
        unique_key: UniqueKey::from_bytes([42; 16]),
        key_ids: HashSet::new(),
        products: HashMap::new(),
        licenses: LicenseBook::default(),
        plans: Default::default(),
        migrations: Default::default(),
        window: TimeWindow::default(),
        dedup_keys_max: 100_000,
        dedup_tenant_keys_max: 50_000,
        billing: super::BillingWriter::new(
            crate::billing::Settings {
                cycle: crate::billing::Cycle::parse("day", "UTC").unwrap(),
                grace_ms: 3_600_000,
                restatement_horizon: 1,
            },
            crate::billing::Closed::default(),
            false,
            false,
            None,
        ),
    }
}

fn audit() -> Audit {
    Audit {
        actor: Some("test".into()),
        at_ms: 0,
        request_id: None,
    }
}

/// Decides one request in a batch of its own and seals it.
fn decide<R: super::Request>(
    s: &mut WriterState,
    request: R,
    now_ms: i64,
) -> (Result<R::Output, EngineError>, Batch) {
    let mut batch = Batch::default();
    let out = s.decide(request, now_ms, &mut batch);
    s.seal(&batch, now_ms);
    (out, batch)
}

fn event(source: u8, id: u8) -> Decoded {
    let text = format!(
        r#"{{"specversion":"1.0","id":"e{id}","source":"s{source}","type":"t","subject":"c","time":"2027-01-15T08:00:00Z"}}"#
    );
    decode_event_text(&text, T0, TimeWindow::default()).unwrap()
}

fn identity(d: &Decoded) -> (u8, u8) {
    let Decoded::Valid(e) = d else {
        panic!("test events are valid")
    };
    let v: serde_json::Value = serde_json::from_str(&e.raw).unwrap();
    let num = |k: &str| v[k].as_str().unwrap()[1..].parse::<u8>().unwrap();
    (num("source"), num("id"))
}

fn logged_identities(batch: &Batch) -> Vec<(u8, u8)> {
    let mut out = Vec::new();
    for r in &batch.records {
        if let Some((e, _)) = r.event() {
            let v: serde_json::Value = serde_json::from_str(&e.raw).unwrap();
            let num = |k: &str| v[k].as_str().unwrap()[1..].parse::<u8>().unwrap();
            out.push((num("source"), num("id")));
        }
    }
    out
}

proptest! {
    /// An identity is logged once, ever: within a request, across requests,
    /// and whether it came over HTTP or Kafka.
    #[test]
    fn a_duplicate_never_reaches_a_batch(
        requests in prop::collection::vec(
            (any::<bool>(), prop::collection::vec((0u8..2, 0u8..6), 0..8)),
            1..20,
        ),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = state(dir.path());
        let mut seen: HashSet<(u8, u8)> = HashSet::new();
        let mut next_offset = 0i64;
        for (kafka, ids) in requests {
            let items: Vec<Decoded> = ids.iter().map(|&(src, id)| event(src, id)).collect();
            let fresh: Vec<_> = items.iter().map(identity).filter(|i| seen.insert(*i)).collect();
            let origin = if kafka {
                let n = items.len() as i64;
                let delta = OffsetDelta { topic: "t".into(), partition: 0, from: next_offset, to: next_offset + n };
                next_offset += n;
                Origin::Kafka { delta, offsets: (0..n).collect() }
            } else {
                // Two products: an identity is one identity whoever sends it.
                Origin::Http { tenant: format!("product:p{}", ids.len() % 2).into() }
            };
            let n = items.len() as u32;
            let (out, batch) = decide(&mut s, Ingest { items, received_ms: T0, origin }, T0);
            let out = out.unwrap();
            prop_assert_eq!(out.accepted as usize, fresh.len());
            prop_assert_eq!(out.accepted + out.duplicates, n);
            prop_assert!(out.rejected.is_empty());
            prop_assert_eq!(logged_identities(&batch), fresh);
        }
    }

    /// A Kafka batch moves its partition's position only when it starts
    /// where the position is; a refused batch changes nothing (its events
    /// are not claimed, so the right batch later accepts them).
    #[test]
    fn offset_deltas_never_skip_or_overlap_through_ingest(
        deltas in prop::collection::vec((0i64..12, 0i64..4), 1..30),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = state(dir.path());
        let mut position: Option<i64> = None;
        for (i, (from, len)) in deltas.into_iter().enumerate() {
            let delta = OffsetDelta { topic: "t".into(), partition: 3, from, to: from + len };
            let items: Vec<Decoded> = (0..len).map(|k| event(0, (i * 4) as u8 + k as u8)).collect();
            let origin = Origin::Kafka { delta: delta.clone(), offsets: (from..from + len).collect() };
            let accept = position.is_none_or(|p| p == from);
            let (out, batch) = decide(&mut s, Ingest { items, received_ms: T0, origin }, T0);
            if accept {
                let out = out.unwrap();
                prop_assert_eq!(out.accepted as i64, len);
                prop_assert!(matches!(batch.records.last(), Some(Record::SourceOffsets(d)) if *d == delta));
                position = Some(from + len);
            } else {
                prop_assert!(matches!(out, Err(EngineError::Conflict(_))));
                prop_assert!(batch.is_empty());
                // The same events, at the right position, are new.
                let p = position.unwrap();
                let items: Vec<Decoded> = (0..len).map(|k| event(0, (i * 4) as u8 + k as u8)).collect();
                let delta = OffsetDelta { topic: "t".into(), partition: 3, from: p, to: p + len };
                let origin = Origin::Kafka { delta, offsets: (p..p + len).collect() };
                let (out, _) = decide(&mut s, Ingest { items, received_ms: T0, origin }, T0);
                prop_assert_eq!(out.unwrap().accepted as i64, len);
                position = Some(p + len);
            }
            prop_assert_eq!(s.sources.next_offset("t", 3), position);
        }
    }
}

fn create_license(s: &mut WriterState, policy: serde_json::Value) -> LicenseId {
    let new: NewLicense = serde_json::from_value(
        serde_json::json!({"product": "p", "customer": "c", "policy": policy}),
    )
    .unwrap();
    let license = License::create(
        "lic_0000000000000001".into(),
        new,
        crate::license::utc_ms(T0),
    )
    .unwrap();
    let request = CreateLicense {
        license: Box::new(license),
        secret: LicenseSecret {
            lookup: [1; 32],
            sealed_key: vec![0; 40],
        },
        audit: audit(),
    };
    let (out, _) = decide(s, request, T0);
    out.unwrap().unwrap().id
}

/// `who`: 0 and 1 are two machines claiming the same fingerprint, each
/// with its own lease token (the first to check out holds the seat; the
/// other knows the fingerprint and the seat id, not the token); 2 is an
/// admin (release only).
#[derive(Debug, Clone)]
enum SeatOp {
    Checkout(u8, u8),
    Release(u8, u8),
}

fn seat_op() -> impl Strategy<Value = SeatOp> {
    prop_oneof![
        (0u8..6, 0u8..2).prop_map(|(f, who)| SeatOp::Checkout(f, who)),
        (0u8..6, 0u8..3).prop_map(|(f, who)| SeatOp::Release(f, who)),
    ]
}

/// The lease token digest each fingerprint's holder presents; `who` 1
/// presents another.
fn lease_token(f: u8, who: u8) -> [u8; 32] {
    [
        f, who, 0x5e, 0xa7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0,
    ]
}

proptest! {
    /// Checkouts and releases against a model of the seat table: a known
    /// fingerprint gets its seat back with its lease token and is refused
    /// LEASE_TOKEN_INVALID without it; a new one gets a seat while one is
    /// free and SEAT_LIMIT_EXCEEDED after; releasing frees exactly that
    /// seat, for its holder or an admin, never for someone without the
    /// token. The license never holds more seats than its maximum.
    #[test]
    fn seats_follow_the_model_and_never_exceed_the_maximum(
        max in 1u32..4,
        floating in any::<bool>(),
        ops in prop::collection::vec(seat_op(), 1..40),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = state(dir.path());
        // Leases an hour long: nothing lapses within the test's milliseconds.
        let seats = if floating {
            serde_json::json!({"max": max, "mode": "floating", "lease_ttl_s": 3600})
        } else {
            serde_json::json!({"max": max, "mode": "node_locked"})
        };
        let id = create_license(&mut s, serde_json::json!({"type": "seat", "seats": seats}));
        // fingerprint → (seat, who holds its token)
        let mut model: HashMap<String, (SeatId, u8)> = HashMap::new();
        for (n, op) in ops.into_iter().enumerate() {
            let now = T0 + n as i64;
            match op {
                SeatOp::Checkout(f, who) => {
                    let fingerprint = format!("machine-{f}");
                    let request = CheckoutSeat {
                        license_id: id.clone(),
                        fingerprint: fingerprint.clone(),
                        new_seat_id: format!("seat_{n}").into(),
                        token_sha256: lease_token(f, who),
                        audit: audit(),
                    };
                    let (out, _) = decide(&mut s, request, now);
                    match (out.unwrap(), model.get(&fingerprint)) {
                        (Ok(lease), Some((seat, holder))) => {
                            prop_assert_eq!(who, *holder, "a checkout without the token got the seat");
                            prop_assert!(!lease.new && lease.tokened);
                            prop_assert_eq!(&lease.seat_id, seat);
                        }
                        (Err(refusal), Some((_, holder))) if who != *holder => {
                            prop_assert_eq!(refusal.code, "LEASE_TOKEN_INVALID");
                        }
                        (Ok(lease), None) => {
                            prop_assert!(lease.new && lease.tokened);
                            prop_assert!(model.len() < max as usize);
                            model.insert(fingerprint, (lease.seat_id, who));
                        }
                        (Err(refusal), known) => {
                            prop_assert!(known.is_none(), "{refusal:?}");
                            prop_assert_eq!(refusal.code, "SEAT_LIMIT_EXCEEDED");
                            prop_assert_eq!(model.len(), max as usize);
                        }
                    }
                }
                SeatOp::Release(f, who) => {
                    let fingerprint = format!("machine-{f}");
                    let seat_id = model.get(&fingerprint).map_or_else(|| SeatId::from("seat_none"), |(s, _)| s.clone());
                    let by = match who {
                        2 => SeatReleaser::Admin,
                        _ => SeatReleaser::Holder { token_sha256: Some(lease_token(f, who)) },
                    };
                    let request = ReleaseSeat { license_id: id.clone(), seat_id, by, audit: audit() };
                    let (out, _) = decide(&mut s, request, now);
                    let holder = model.get(&fingerprint).map(|(_, h)| *h);
                    let opens = who == 2 || holder == Some(who);
                    match out.unwrap() {
                        Ok(()) => {
                            prop_assert!(holder.is_some() && opens, "released by {}", who);
                            model.remove(&fingerprint);
                        }
                        Err(refusal) if holder.is_some() => {
                            prop_assert!(!opens, "refused its holder: {:?}", refusal);
                            prop_assert_eq!(refusal.code, "LEASE_TOKEN_INVALID");
                        }
                        Err(refusal) => prop_assert_eq!(refusal.code, "NO_SEAT"),
                    }
                }
            }
            let seats: HashMap<String, SeatId> = s.licenses.get(&id).unwrap().seats.all()
                .map(|seat| (seat.fingerprint.clone(), seat.seat_id.clone()))
                .collect();
            let expected: HashMap<String, SeatId> =
                model.iter().map(|(f, (seat, _))| (f.clone(), seat.clone())).collect();
            prop_assert!(seats.len() <= max as usize);
            prop_assert_eq!(&seats, &expected);
        }
    }

    /// Product saves carry the version they were edited from; one based on
    /// a stale version is refused, so no accepted edit is overwritten
    /// unseen, and every accepted edit is logged.
    #[test]
    fn a_product_edit_is_never_lost(
        offsets in prop::collection::vec(-1i64..3, 1..30),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = state(dir.path());
        let mut stored: Option<u64> = None;
        for (n, offset) in offsets.into_iter().enumerate() {
            let base = stored.unwrap_or(0) as i64;
            let version = (base + offset).max(1) as u64;
            let product = Product {
                id: "p".into(),
                name: Some(format!("edit {n}")),
                require_signatures: false,
                api_keys: Vec::new(),
                signing_secrets: Vec::new(),
                created_ms: 0,
                updated_ms: 0,
                version,
            };
            let (out, batch) = decide(&mut s, SaveProduct { product: Box::new(product), audit: audit() }, T0);
            if version == stored.unwrap_or(0) + 1 {
                let saved = out.unwrap();
                prop_assert_eq!(saved.version, version);
                let logged = matches!(&batch.records[..], [Record::ProductSaved { product, .. }]
                    if product.version == version && product.name.as_deref() == Some(format!("edit {n}").as_str()));
                prop_assert!(logged);
                stored = Some(version);
            } else {
                let refused = matches!(out, Err(EngineError::Conflict(_) | EngineError::NotFound(_)));
                prop_assert!(refused);
                prop_assert!(batch.is_empty());
            }
            prop_assert_eq!(s.products.get("p").map(|p| p.version), stored);
        }
    }

    /// Any sequence of status actions follows the transition table, and a
    /// record is logged exactly when the status changes.
    #[test]
    fn license_status_follows_the_transition_table(
        actions in prop::collection::vec(0u8..3, 1..12),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = state(dir.path());
        let id = create_license(&mut s, serde_json::json!({"type": "seat", "seats": {"max": 1, "mode": "node_locked"}}));
        let mut status = Status::Active;
        for a in actions {
            let action = [StatusAction::Suspend, StatusAction::Reinstate, StatusAction::Revoke][a as usize];
            let expected = table(status, action);
            let request = ChangeLicenseStatus { id: id.clone(), action, reason: None, audit: audit() };
            let (out, batch) = decide(&mut s, request, T0);
            match (out.unwrap(), expected) {
                (Ok(license), Ok(next)) => {
                    prop_assert_eq!(license.status, next);
                    prop_assert_eq!(batch.len(), 1);
                    status = next;
                }
                (Err(refusal), Err(code)) => {
                    prop_assert_eq!(refusal.code, code);
                    prop_assert!(batch.is_empty());
                }
                (got, want) => prop_assert!(false, "{status:?} + {action:?}: got {got:?}, want {want:?}"),
            }
            prop_assert_eq!(s.licenses.get(&id).unwrap().license.status, status);
        }
    }
}

/// The transition table, written out.
fn table(from: Status, action: StatusAction) -> Result<Status, &'static str> {
    use StatusAction::*;
    match (from, action) {
        (Status::Active, Suspend) => Ok(Status::Suspended),
        (Status::Active, Reinstate) => Err("CONFLICT"),
        (Status::Active, Revoke) => Ok(Status::Revoked),
        (Status::Suspended, Suspend) => Err("CONFLICT"),
        (Status::Suspended, Reinstate) => Ok(Status::Active),
        (Status::Suspended, Revoke) => Ok(Status::Revoked),
        (Status::Revoked, _) => Err("REVOKED"),
    }
}

/// Creates product `p` (version 1).
fn create_product(s: &mut WriterState, name: Option<&str>) {
    let product = Product {
        id: "p".into(),
        name: name.map(Into::into),
        require_signatures: false,
        api_keys: Vec::new(),
        signing_secrets: Vec::new(),
        created_ms: 0,
        updated_ms: 0,
        version: 1,
    };
    let request = SaveProduct {
        product: Box::new(product),
        audit: audit(),
    };
    decide(s, request, T0).0.unwrap();
}

/// A product-bound key and its binding are one decision: both records in one
/// batch, or neither.
#[test]
fn a_key_and_its_product_binding_land_together_or_not_at_all() {
    use crate::engine::protocol::CreateApiKey;
    use crate::record::ApiKeyRecord;
    let dir = tempfile::tempdir().unwrap();
    let mut s = state(dir.path());
    let key = |id: &str, product: Option<&str>| CreateApiKey {
        key: ApiKeyRecord {
            id: id.into(),
            name: id.into(),
            scopes: vec![crate::scope::Scope::Ingest],
            key_sha256: [0; 32],
            created_ms: 0,
        },
        product: product.map(Into::into),
        audit: audit(),
    };
    let (out, batch) = decide(&mut s, key("k1", Some("p")), T0);
    assert!(matches!(out, Err(EngineError::Invalid(r)) if r.code == "INVALID_API_KEY"));
    assert!(batch.is_empty());
    assert!(s.key_ids.is_empty(), "a refused key is not taken");

    create_product(&mut s, None);
    let (out, batch) = decide(&mut s, key("k1", Some("p")), T0 + 1);
    out.unwrap();
    match &batch.records[..] {
        [Record::ProductSaved { product, .. }, Record::ApiKeyCreated { key, .. }] => {
            assert_eq!(product.version, 2);
            assert_eq!(product.api_keys, vec!["k1".to_owned()]);
            assert_eq!(key.id, "k1");
        }
        other => panic!("expected the binding and the key, got {other:?}"),
    }
    assert_eq!(s.products.get("p").unwrap().version, 2);
}

/// Two changes sent from the same read of a product both apply, in order:
/// neither overwrites the other.
#[test]
fn concurrent_product_changes_are_both_kept() {
    use crate::engine::protocol::{ChangeProduct, ProductChange};
    use crate::product::SigningSecret;
    let dir = tempfile::tempdir().unwrap();
    let mut s = state(dir.path());
    create_product(&mut s, Some("before"));
    let change = |change| ChangeProduct {
        id: "p".into(),
        change,
        audit: audit(),
    };
    let rename = ProductChange::Edit {
        name: Some("after".into()),
        require_signatures: None,
    };
    let secret = SigningSecret {
        id: "sec_1".into(),
        sealed: String::new(),
        created_ms: T0,
        revoked_ms: None,
    };
    decide(&mut s, change(rename), T0).0.unwrap();
    decide(&mut s, change(ProductChange::AddSecret(secret)), T0)
        .0
        .unwrap();
    let (revoked, batch) = decide(
        &mut s,
        change(ProductChange::RevokeSecret {
            secret_id: "sec_9".into(),
        }),
        T0 + 5,
    );
    assert!(matches!(revoked, Err(EngineError::Invalid(r)) if r.code == "NOT_FOUND"));
    assert!(batch.is_empty());
    let (revoked, _) = decide(
        &mut s,
        change(ProductChange::RevokeSecret {
            secret_id: "sec_1".into(),
        }),
        T0 + 5,
    );
    let p = revoked.unwrap();
    assert_eq!((p.name.as_deref(), p.version), (Some("after"), 4));
    assert_eq!(p.signing_secrets[0].revoked_ms, Some(T0 + 5));
}

#[test]
fn billing_closes_are_logged_once_and_late_events_restate_or_are_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = state(dir.path());
    let day = 86_400_000;
    let t = (T0 / day) * day; // a midnight
    let close = |st: &mut WriterState, now: i64| {
        let mut batch = Batch::default();
        let seq = st
            .decide(
                super::CloseBilling {
                    watermark_ms: i64::MAX,
                },
                now,
                &mut batch,
            )
            .unwrap();
        st.seal(&batch, now);
        (seq, batch.records)
    };
    // Nothing counted: nothing to close, but the first close names the cycle.
    let (seq, records) = close(&mut st, t + 3_600_000);
    assert_eq!(seq, None);
    assert!(matches!(records[..], [Record::BillingSettings { .. }]));
    // An event of yesterday: closed once the grace is over.
    assert_eq!(ingest_one(&mut st, "e-1", t - 5_000, t).accepted, 1);
    let (seq, records) = close(&mut st, t + 3_600_000);
    assert!(
        matches!(records[..], [Record::BillingClose { closed_before_ms, restate: false, .. }] if closed_before_ms == t)
    );
    assert!(seq.is_some());
    // Nothing new to close: nothing is logged.
    assert_eq!(close(&mut st, t + 7_200_000), (None, vec![]));
    // Yesterday's event is within the horizon (one period): counted, then restated.
    let late = ingest_one(&mut st, "late-1", t - 1_000, t + 7_200_000);
    assert_eq!(late.accepted, 1);
    let (_, records) = close(&mut st, t + 7_300_000);
    assert!(matches!(
        records[..],
        [Record::BillingClose { restate: true, .. }]
    ));
    // The day before is beyond it: quarantined with its reason.
    let old = ingest_one(&mut st, "late-2", t - day - 1_000, t + 7_400_000);
    assert_eq!(old.accepted, 0);
    assert_eq!(
        old.rejected[0].code,
        crate::error_code::ErrorCode::PeriodClosed
    );
}

fn ingest_one(
    st: &mut WriterState,
    id: &str,
    time_ms: i64,
    now: i64,
) -> crate::engine::protocol::IngestOutcome {
    let time = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(time_ms)
        .unwrap()
        .to_rfc3339();
    let text = format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"s","type":"t","subject":"a","time":"{time}"}}"#
    );
    let window = TimeWindow {
        back_ms: 35 * 86_400_000,
        ahead_ms: 300_000,
    };
    let item = decode_event_text(&text, now, window).unwrap();
    let mut batch = Batch::default();
    let out = st
        .decide(
            Ingest {
                items: vec![item],
                received_ms: now,
                origin: Origin::Http {
                    tenant: "key:t".into(),
                },
            },
            now,
            &mut batch,
        )
        .unwrap();
    st.seal(&batch, now);
    out
}
