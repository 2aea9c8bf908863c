//! Old versions of the license document, and how they are read as the
//! current one. The log is never rewritten: a `LicenseCreated` or
//! `LicenseChanged` record written before plans holds a version 1 document
//! (`schemas/license/v1.json`), which is upcast to the current [`License`]
//! as it is decoded (version 2 adds only the optional `plan`, absent in
//! version 1, so the upcast sets it to none). A version 2 document without
//! a plan renders exactly as version 1 did, which keeps the projections'
//! bytes, and so `keymeter replay`'s, the same for old logs.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::model::{License, Policy, Status};
use crate::id::LicenseId;

/// The license document as version 1 wrote it, field for field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LicenseV1 {
    pub id: LicenseId,
    pub product: String,
    pub customer: String,
    pub status: Status,
    #[serde(default)]
    pub status_reason: Option<String>,
    pub starts_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub grace_period_s: u64,
    pub trial: bool,
    pub entitlements: Vec<String>,
    pub metadata: Map<String, Value>,
    pub policy: Policy,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Version 1 → the current document: no plan.
pub fn upcast_license_v1(v1: LicenseV1) -> License {
    License {
        id: v1.id,
        product: v1.product,
        customer: v1.customer,
        status: v1.status,
        status_reason: v1.status_reason,
        starts_at: v1.starts_at,
        expires_at: v1.expires_at,
        grace_period_s: v1.grace_period_s,
        trial: v1.trial,
        entitlements: v1.entitlements,
        metadata: v1.metadata,
        policy: v1.policy,
        created_at: v1.created_at,
        updated_at: v1.updated_at,
        plan: None,
    }
}

/// The schema version of a license document's JSON: 2 if it names a plan.
pub fn license_version(doc: &Value) -> u32 {
    if doc.get("plan").is_some() {
        2
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::license::model::{Overage, PolicyType, Quota, SeatMode, SeatPolicy, UsagePolicy};
    use crate::license::period::Period;
    use crate::license::LicenseBook;
    use crate::record::{AsJson, Audit, LicenseSecret, Record};
    use proptest::prelude::*;

    fn policy(seats: Option<u32>, quota: Option<f64>) -> Policy {
        let seats = seats.map(|max| SeatPolicy {
            max,
            mode: SeatMode::Floating,
            lease_ttl_s: 900,
        });
        let usage = quota.map(|limit| UsagePolicy {
            quotas: vec![Quota {
                meter: "calls".into(),
                limit,
                period: Period::Month,
                overage: Overage::Block,
                alert_thresholds_pct: vec![80],
            }],
        });
        let ty = match (seats.is_some(), usage.is_some()) {
            (false, false) => PolicyType::None,
            (true, false) => PolicyType::Seat,
            (false, true) => PolicyType::Usage,
            (true, true) => PolicyType::Hybrid,
        };
        Policy { ty, seats, usage }
    }

    prop_compose! {
        fn v1_doc()(
            customer in "[a-z]{1,12}",
            entitlements in proptest::collection::btree_set("[a-z]{1,6}", 0..4),
            expires in prop::option::of(1i64..4_000_000_000_000),
            grace in 0u64..1_000_000,
            seats in prop::option::of(1u32..1000),
            quota in prop::option::of(0.0f64..1e9),
            tier in any::<i32>(),
            status in prop::sample::select(vec![Status::Active, Status::Suspended, Status::Revoked]),
        ) -> LicenseV1 {
            let t = |ms: i64| DateTime::from_timestamp_millis(ms).unwrap();
            let mut metadata = Map::new();
            metadata.insert("tier".into(), tier.into());
            LicenseV1 {
                id: "lic_0123456789abcdef".into(),
                product: "cad".into(),
                customer,
                status,
                status_reason: None,
                starts_at: t(0),
                expires_at: expires.map(t),
                grace_period_s: grace,
                trial: false,
                entitlements: entitlements.into_iter().collect(),
                metadata,
                policy: policy(seats, quota),
                created_at: t(5),
                updated_at: t(6),
            }
        }
    }

    fn created(text: &str) -> Vec<u8> {
        // A record as the version 1 build encoded it: the document is JSON
        // text inside the record, so its bytes are the v1 text.
        let license: License = serde_json::from_str(text).unwrap();
        let record = Record::LicenseCreated {
            license: AsJson::new(license),
            secret: LicenseSecret {
                lookup: [7; 32],
                sealed_key: vec![1, 2],
            },
            audit: Audit {
                actor: None,
                at_ms: 6,
                request_id: None,
            },
        };
        record.encode()
    }

    proptest! {
        #[test]
        fn an_old_document_decodes_to_its_upcast_and_folds_the_same(v1 in v1_doc()) {
            let old_text = serde_json::to_string(&v1).unwrap();
            prop_assert_eq!(license_version(&serde_json::from_str(&old_text).unwrap()), 1);
            let upcast = upcast_license_v1(v1.clone());
            // Decoding the old text is the upcast.
            let decoded: License = serde_json::from_str(&old_text).unwrap();
            prop_assert_eq!(&decoded, &upcast);
            // The current encoding of the upcast is the old text, byte for
            // byte: the log's record and a replay's projections are unchanged.
            prop_assert_eq!(serde_json::to_string(&upcast).unwrap(), old_text.clone());
            // The fold of the old record equals the fold of the current one.
            let old_record = Record::decode(&created(&old_text)).unwrap();
            let current = Record::LicenseCreated {
                license: AsJson::new(upcast),
                secret: LicenseSecret { lookup: [7; 32], sealed_key: vec![1, 2] },
                audit: Audit { actor: None, at_ms: 6, request_id: None },
            };
            let (mut a, mut b) = (LicenseBook::default(), LicenseBook::default());
            a.apply(&old_record);
            b.apply(&current);
            prop_assert_eq!(a.get("lic_0123456789abcdef"), b.get("lic_0123456789abcdef"));
        }
    }
}
