//! The facts kept in the event log: the payload of every log frame.
//!
//! Encoding: one version byte, then postcard. New variants are only ever
//! appended at the end of [`Record`], so older logs keep decoding.

use crate::id::{ApiKeyId, LicenseId, MeterSlug, SeatId};
use serde::{Deserialize, Serialize};

use crate::meter::MeterDef;
use crate::scope::Scope;

pub const RECORD_VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Record {
    /// An accepted usage event.
    Event(EventRecord),
    /// Input that was refused, kept with its reason.
    Rejected(RejectedRecord),
    MeterCreated {
        meter: AsJson<MeterDef>,
        audit: Audit,
    },
    MeterDeleted {
        slug: MeterSlug,
        audit: Audit,
    },
    ApiKeyCreated {
        key: ApiKeyRecord,
        audit: Audit,
    },
    ApiKeyRevoked {
        id: ApiKeyId,
        audit: Audit,
    },
    /// Messages `from..to` of a source partition were consumed, and their
    /// effects are the other records of the same batch.
    SourceOffsets(OffsetDelta),
    /// A license and its key, sealed (never the key in plaintext).
    LicenseCreated {
        license: AsJson<crate::license::License>,
        secret: LicenseSecret,
        audit: Audit,
    },
    /// The whole license document after an update.
    LicenseChanged {
        license: AsJson<crate::license::License>,
        audit: Audit,
    },
    LicenseSuspended {
        id: LicenseId,
        reason: Option<String>,
        audit: Audit,
    },
    LicenseReinstated {
        id: LicenseId,
        audit: Audit,
    },
    LicenseRevoked {
        id: LicenseId,
        reason: Option<String>,
        audit: Audit,
    },
    /// New `expires_at` (ms; `None`: perpetual).
    LicenseRenewed {
        id: LicenseId,
        expires_at_ms: Option<i64>,
        audit: Audit,
    },
    SeatCheckedOut {
        license_id: LicenseId,
        seat: SeatRecord,
        audit: Audit,
    },
    SeatHeartbeat {
        license_id: LicenseId,
        seat_id: SeatId,
        at_ms: i64,
        expires_ms: Option<i64>,
    },
    SeatReleased {
        license_id: LicenseId,
        seat_id: SeatId,
        audit: Audit,
    },
    /// The writer found the lease lapsed at `at_ms` and reclaimed the seat.
    SeatLeaseExpired {
        license_id: LicenseId,
        seat_id: SeatId,
        at_ms: i64,
    },
    /// A product document after a change (creation included).
    ProductSaved {
        product: AsJson<crate::product::Product>,
        audit: Audit,
    },
    /// `keymeter keys rotate`: the master key (`kind` "master", kek ids)
    /// or the signing key ("signing", key ids) changed from `from` to `to`.
    KeysRotated {
        kind: String,
        from: String,
        to: String,
        audit: Audit,
    },
    /// A signed statement of the log's hash chain at an earlier seq (see
    /// [`crate::audit`]). Affects no projection.
    Checkpoint(CheckpointRecord),
    /// An offline license file was issued (the file itself is not kept).
    LicenseFileIssued {
        issue: LicenseFileIssue,
        audit: Audit,
    },
    /// A seat was taken under a lease token (its SHA-256; the token itself
    /// is never stored). Replaces `SeatCheckedOut`, which older logs hold.
    SeatLeased {
        license_id: LicenseId,
        seat: SeatRecord,
        token_sha256: [u8; 32],
        audit: Audit,
    },
    /// An accepted usage event sent by `tenant` (see [`Record::event`]):
    /// the product an API key is bound to (`product:<id>`) or an unbound
    /// key (`key:<id>`). The dedup index gives each tenant a fair share.
    /// Shared: every event of a request names the same tenant.
    TenantEvent {
        tenant: std::sync::Arc<str>,
        event: EventRecord,
    },
    /// The billing cycle this data directory bills on, written once, before
    /// its first close (see [`crate::billing`]).
    BillingSettings {
        cycle: crate::billing::CycleKind,
        time_zone: String,
    },
    /// The writer closed every billing period that ends at or before
    /// `closed_before_ms` (at `at_ms`, by its clock, once each source had
    /// delivered past them); with `restate`, statements that late events
    /// changed since their last version get a new one.
    BillingClose {
        at_ms: i64,
        closed_before_ms: i64,
        restate: bool,
    },
    /// A meter's descriptive fields changed (name, description, metadata):
    /// the whole new definition, whose measuring fields are the old ones.
    MeterUpdated {
        meter: AsJson<MeterDef>,
        audit: Audit,
    },
    /// A new, immutable version of a plan.
    PlanSaved {
        plan: AsJson<crate::license::plan::Plan>,
        audit: Audit,
    },
    /// A migration document after a change (creation, dry run, step,
    /// rollback, completion).
    MigrationSaved {
        migration: AsJson<crate::license::migration_book::Migration>,
        audit: Audit,
    },
    /// Migration `migration` moved a license from `before` to `after` in
    /// `step`; with `rollback`, it restored `after`, the document `before`
    /// had replaced.
    LicenseMigrated {
        migration: String,
        step: u32,
        rollback: bool,
        before: AsJson<crate::license::License>,
        after: AsJson<crate::license::License>,
        audit: Audit,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseFileIssue {
    pub license_id: LicenseId,
    pub fingerprint_bound: bool,
    pub expires_at_ms: i64,
    /// The signing key's id.
    pub kid: String,
}

/// "At seq `seq` the chain hash was `chain`", signed at `time_ms` by the key
/// `kid`. The signature covers [`crate::audit::checkpoint_message`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    /// The last record covered: the one just before this checkpoint.
    pub seq: u64,
    /// The chain hash after `seq` (the hash stored in its frame).
    pub chain: [u8; 32],
    pub time_ms: i64,
    pub kid: String,
    /// Ed25519, 64 bytes (serde has no 64-byte arrays).
    pub signature: Vec<u8>,
}

/// How a license key is kept: an HMAC-SHA256 lookup digest (server-side
/// pepper) and the key sealed with AES-256-GCM under the master key (random
/// nonce, the license id as associated data). See [`crate::crypto`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseSecret {
    pub lookup: [u8; 32],
    /// `nonce ‖ ciphertext ‖ tag`.
    pub sealed_key: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatRecord {
    pub seat_id: SeatId,
    pub fingerprint: String,
    pub at_ms: i64,
    /// Lease end; `None` for a node-locked seat.
    pub expires_ms: Option<i64>,
}

/// Where a message came from in a partitioned source (Kafka).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SourcePosition {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// A contiguous range of consumed offsets of one partition: `from` is the
/// first offset consumed, `to` the next offset to consume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetDelta {
    pub topic: String,
    pub partition: i32,
    pub from: i64,
    pub to: i64,
}

/// A value kept as JSON text inside a postcard record. Used for documents
/// whose serde form skips absent fields (postcard is not self-describing and
/// cannot decode those), and so new optional fields never break old logs.
///
/// Boxed: these documents are large and rare, while events are small and
/// many; inline, they would make every record (and every batch vector of
/// records) several times larger than an event needs.
#[derive(Debug, Clone, PartialEq)]
pub struct AsJson<T>(pub Box<T>);

impl<T> AsJson<T> {
    pub fn new(value: T) -> AsJson<T> {
        AsJson(Box::new(value))
    }
}

impl<T> std::ops::Deref for AsJson<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Serialize> Serialize for AsJson<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = serde_json::to_string(&self.0).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }
}

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for AsJson<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        serde_json::from_str(&text)
            .map(AsJson::new)
            .map_err(serde::de::Error::custom)
    }
}

/// Who did an admin action, and when (the writer's clock, in ms).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audit {
    pub actor: Option<String>,
    pub at_ms: i64,
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub received_ms: i64,
    /// The resolved event time (the receive time when the event had none).
    pub time_ms: i64,
    /// The CloudEvent JSON exactly as received.
    pub raw: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedRecord {
    pub received_ms: i64,
    /// Where it came from, e.g. `http`.
    pub origin: String,
    /// Position in its batch, when it was one element of a batch.
    pub index: Option<u32>,
    /// Topic, partition and offset, when it came from Kafka.
    pub position: Option<SourcePosition>,
    pub code: String,
    pub message: String,
    /// The input's bytes, cut to a bound that the engine sets.
    pub raw: Vec<u8>,
    /// The input was longer than `raw`.
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub id: ApiKeyId,
    pub name: String,
    pub scopes: Vec<Scope>,
    /// SHA-256 of the full key; the key itself is never stored.
    pub key_sha256: [u8; 32],
    pub created_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record is empty")]
    Empty,
    #[error("record version {0} is not supported by this build (expected {RECORD_VERSION})")]
    Version(u8),
    #[error("record does not decode: {0}")]
    Decode(#[from] postcard::Error),
}

impl Record {
    /// The accepted usage event this record holds, with its tenant (empty
    /// for an `Event`: Kafka, or a log from before tenants were recorded).
    pub fn event(&self) -> Option<(&EventRecord, &str)> {
        match self {
            Record::Event(e) => Some((e, "")),
            Record::TenantEvent { tenant, event } => Some((event, tenant)),
            _ => None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.encode_into(&mut out);
        out
    }

    /// Appends the encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(RECORD_VERSION);
        postcard::to_io(self, out).expect("encoding into a Vec cannot fail");
    }

    pub fn decode(bytes: &[u8]) -> Result<Record, RecordError> {
        match bytes.split_first() {
            None => Err(RecordError::Empty),
            Some((&RECORD_VERSION, rest)) => Ok(postcard::from_bytes(rest)?),
            Some((&v, _)) => Err(RecordError::Version(v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let r = Record::Event(EventRecord {
            received_ms: 5,
            time_ms: 4,
            raw: "{\"id\":\"x\"}".into(),
        });
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        let q = Record::Rejected(RejectedRecord {
            received_ms: 1,
            origin: "kafka".into(),
            index: Some(3),
            position: Some(SourcePosition {
                topic: "usage".into(),
                partition: 2,
                offset: 40,
            }),
            code: "C".into(),
            message: "m".into(),
            raw: vec![b'x'; 100],
            truncated: true,
        });
        assert_eq!(Record::decode(&q.encode()).unwrap(), q);
    }

    #[test]
    fn meter_records_round_trip_with_absent_optional_fields() {
        let meter: MeterDef = serde_json::from_value(serde_json::json!({
            "slug": "calls", "eventType": "call", "aggregation": "COUNT"
        }))
        .unwrap();
        let r = Record::MeterCreated {
            meter: AsJson::new(meter),
            audit: Audit {
                actor: None,
                at_ms: 1,
                request_id: None,
            },
        };
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn checkpoint_records_round_trip_and_earlier_variants_keep_their_encoding() {
        let r = Record::Checkpoint(CheckpointRecord {
            seq: 7,
            chain: [3; 32],
            time_ms: 1_800_000_000_000,
            kid: "0123456789abcdef".into(),
            signature: vec![9; 64],
        });
        let bytes = r.encode();
        assert_eq!(Record::decode(&bytes).unwrap(), r);
        // Appended after the product and key-rotation records: variant index
        // 19, so every older record decodes as before.
        assert_eq!(bytes[..2], [RECORD_VERSION, 19]);
        let expired = Record::SeatLeaseExpired {
            license_id: "l".into(),
            seat_id: "s".into(),
            at_ms: 1,
        };
        assert_eq!(expired.encode()[1], 16);
    }

    #[test]
    fn api_key_records_keep_their_encoding() {
        let r = Record::ApiKeyCreated {
            key: ApiKeyRecord {
                id: "ab".into(),
                name: "k".into(),
                scopes: vec![Scope::Ingest, Scope::Admin],
                key_sha256: [7; 32],
                created_ms: 5,
            },
            audit: Audit {
                actor: Some("op".into()),
                at_ms: 6,
                request_id: None,
            },
        };
        let mut expected = vec![RECORD_VERSION, 4, 2, b'a', b'b', 1, b'k', 2, 0, 2];
        expected.extend([7; 32]);
        expected.extend([10, 1, 2, b'o', b'p', 12, 0]);
        assert_eq!(r.encode(), expected);
        assert_eq!(Record::decode(&expected).unwrap(), r);
        let Record::ApiKeyCreated { key, .. } = r else {
            unreachable!()
        };
        let json = serde_json::to_value(&key).unwrap();
        assert_eq!(json["scopes"], serde_json::json!(["ingest", "admin"]));
    }

    #[test]
    fn unknown_version_is_refused() {
        assert!(matches!(
            Record::decode(&[9, 0]),
            Err(RecordError::Version(9))
        ));
    }
}
