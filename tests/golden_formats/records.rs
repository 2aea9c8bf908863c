//! Log records (`src/record.rs`): one version byte, then postcard, with
//! JSON text inside for documents (meters, licenses, products). One fixed
//! value per variant, every optional field set in one and absent in another.

use keymeter::license::License;
use keymeter::meter::MeterDef;
use keymeter::product::{Product, SigningSecret};
use keymeter::record::*;
use keymeter::scope::Scope;
use serde_json::json;

use crate::{unhex, Golden};

/// Every variant of [`Record`], in declaration order. Adding a variant
/// breaks the exhaustive match in [`variant`] until it has a golden here.
const VARIANTS: [&str; 29] = [
    "Event",
    "Rejected",
    "MeterCreated",
    "MeterDeleted",
    "ApiKeyCreated",
    "ApiKeyRevoked",
    "SourceOffsets",
    "LicenseCreated",
    "LicenseChanged",
    "LicenseSuspended",
    "LicenseReinstated",
    "LicenseRevoked",
    "LicenseRenewed",
    "SeatCheckedOut",
    "SeatHeartbeat",
    "SeatReleased",
    "SeatLeaseExpired",
    "ProductSaved",
    "KeysRotated",
    "Checkpoint",
    "LicenseFileIssued",
    "SeatLeased",
    "TenantEvent",
    "BillingSettings",
    "BillingClose",
    "MeterUpdated",
    "PlanSaved",
    "MigrationSaved",
    "LicenseMigrated",
];

fn variant(r: &Record) -> &'static str {
    match r {
        Record::Event(_) => "Event",
        Record::Rejected(_) => "Rejected",
        Record::MeterCreated { .. } => "MeterCreated",
        Record::MeterDeleted { .. } => "MeterDeleted",
        Record::ApiKeyCreated { .. } => "ApiKeyCreated",
        Record::ApiKeyRevoked { .. } => "ApiKeyRevoked",
        Record::SourceOffsets(_) => "SourceOffsets",
        Record::LicenseCreated { .. } => "LicenseCreated",
        Record::LicenseChanged { .. } => "LicenseChanged",
        Record::LicenseSuspended { .. } => "LicenseSuspended",
        Record::LicenseReinstated { .. } => "LicenseReinstated",
        Record::LicenseRevoked { .. } => "LicenseRevoked",
        Record::LicenseRenewed { .. } => "LicenseRenewed",
        Record::SeatCheckedOut { .. } => "SeatCheckedOut",
        Record::SeatHeartbeat { .. } => "SeatHeartbeat",
        Record::SeatReleased { .. } => "SeatReleased",
        Record::SeatLeaseExpired { .. } => "SeatLeaseExpired",
        Record::ProductSaved { .. } => "ProductSaved",
        Record::KeysRotated { .. } => "KeysRotated",
        Record::Checkpoint(_) => "Checkpoint",
        Record::LicenseFileIssued { .. } => "LicenseFileIssued",
        Record::SeatLeased { .. } => "SeatLeased",
        Record::TenantEvent { .. } => "TenantEvent",
        Record::BillingSettings { .. } => "BillingSettings",
        Record::BillingClose { .. } => "BillingClose",
        Record::MeterUpdated { .. } => "MeterUpdated",
        Record::PlanSaved { .. } => "PlanSaved",
        Record::MigrationSaved { .. } => "MigrationSaved",
        Record::LicenseMigrated { .. } => "LicenseMigrated",
    }
}

pub fn audit() -> Audit {
    Audit {
        actor: Some("op".into()),
        at_ms: 1_700_000_000_123,
        request_id: Some("req-1".into()),
    }
}

fn anonymous() -> Audit {
    Audit {
        actor: None,
        at_ms: -5,
        request_id: None,
    }
}

pub fn meter() -> MeterDef {
    serde_json::from_value(json!({"slug": "tokens", "description": "LLM tokens",
        "eventType": "call", "aggregation": "SUM", "valueProperty": "$.tokens",
        "groupBy": {"model": "$.model", "region": "$.region"}, "windowSize": "HOUR"}))
    .unwrap()
}

pub fn license() -> License {
    serde_json::from_value(
        json!({"id": "lic_golden", "product": "ide", "customer": "acme",
        "status": "active", "status_reason": null,
        "starts_at": "2024-01-02T03:04:05Z", "expires_at": "2030-01-01T00:00:00Z",
        "grace_period_s": 86400, "trial": true, "entitlements": ["export", "pro"],
        "metadata": {"tier": 2},
        "policy": {"type": "hybrid",
            "seats": {"max": 3, "mode": "floating", "lease_ttl_s": 900},
            "usage": {"quotas": [{"meter": "tokens", "limit": 1.5, "period": "month",
                "overage": "allow", "alert_thresholds_pct": [80, 100]}]}},
        "created_at": "2024-01-02T03:04:05.006Z", "updated_at": "2024-01-02T03:04:05.006Z"}),
    )
    .unwrap()
}

pub fn product() -> Product {
    Product {
        id: "ide".into(),
        name: Some("The IDE".into()),
        require_signatures: true,
        api_keys: vec!["key1".into()],
        signing_secrets: vec![SigningSecret {
            id: "ss_1".into(),
            sealed: "c2VhbGVk".into(),
            created_ms: 10,
            revoked_ms: Some(20),
        }],
        created_ms: 10,
        updated_ms: 20,
        version: 2,
    }
}

/// Every variant with its golden encoding, in declaration order.
fn goldens() -> Vec<(Record, &'static str)> {
    [
        usage_and_admin(),
        licenses(),
        products_keys_and_audit(),
        plans_and_migrations(),
    ]
    .concat()
}

/// Usage, refused input, meters, API keys and source offsets.
fn usage_and_admin() -> Vec<(Record, &'static str)> {
    vec![
        (
            Record::Event(EventRecord {
                received_ms: 1_700_000_000_000,
                time_ms: 1_699_999_999_999,
                raw: r#"{"id":"e1","source":"s","type":"call","subject":"acme"}"#.into(),
            }),
            EVENT,
        ),
        (
            Record::Rejected(RejectedRecord {
                received_ms: 7,
                origin: "kafka".into(),
                index: Some(3),
                position: Some(SourcePosition {
                    topic: "usage".into(),
                    partition: -1,
                    offset: 40,
                }),
                code: "INVALID_EVENT".into(),
                message: "no id".into(),
                raw: b"{}".to_vec(),
                truncated: true,
            }),
            REJECTED,
        ),
        (
            Record::MeterCreated {
                meter: AsJson::new(meter()),
                audit: audit(),
            },
            METER_CREATED,
        ),
        (
            Record::MeterDeleted {
                slug: "tokens".into(),
                audit: anonymous(),
            },
            METER_DELETED,
        ),
        (
            Record::ApiKeyCreated {
                key: ApiKeyRecord {
                    id: "k1".into(),
                    name: "app".into(),
                    scopes: vec![Scope::Ingest, Scope::Read, Scope::Admin],
                    key_sha256: [0x22; 32],
                    created_ms: 5,
                },
                audit: audit(),
            },
            API_KEY_CREATED,
        ),
        (
            Record::ApiKeyRevoked {
                id: "k1".into(),
                audit: audit(),
            },
            API_KEY_REVOKED,
        ),
        (
            Record::SourceOffsets(OffsetDelta {
                topic: "usage".into(),
                partition: 2,
                from: 100,
                to: 164,
            }),
            SOURCE_OFFSETS,
        ),
    ]
}

/// Licenses and their seats.
// Over 80 lines: a table of ten fixed records, no logic.
fn licenses() -> Vec<(Record, &'static str)> {
    let secret = LicenseSecret {
        lookup: [0x11; 32],
        sealed_key: vec![1, 2, 3],
    };
    vec![
        (
            Record::LicenseCreated {
                license: AsJson::new(license()),
                secret,
                audit: audit(),
            },
            LICENSE_CREATED,
        ),
        (
            Record::LicenseChanged {
                license: AsJson::new(license()),
                audit: anonymous(),
            },
            LICENSE_CHANGED,
        ),
        (
            Record::LicenseSuspended {
                id: "lic_golden".into(),
                reason: Some("unpaid".into()),
                audit: audit(),
            },
            LICENSE_SUSPENDED,
        ),
        (
            Record::LicenseReinstated {
                id: "lic_golden".into(),
                audit: audit(),
            },
            LICENSE_REINSTATED,
        ),
        (
            Record::LicenseRevoked {
                id: "lic_golden".into(),
                reason: None,
                audit: audit(),
            },
            LICENSE_REVOKED,
        ),
        (
            Record::LicenseRenewed {
                id: "lic_golden".into(),
                expires_at_ms: Some(1_900_000_000_000),
                audit: audit(),
            },
            LICENSE_RENEWED,
        ),
        (
            Record::SeatCheckedOut {
                license_id: "lic_golden".into(),
                seat: SeatRecord {
                    seat_id: "seat_1".into(),
                    fingerprint: "host-a".into(),
                    at_ms: 100,
                    expires_ms: Some(900_100),
                },
                audit: audit(),
            },
            SEAT_CHECKED_OUT,
        ),
        (
            Record::SeatHeartbeat {
                license_id: "lic_golden".into(),
                seat_id: "seat_1".into(),
                at_ms: 200,
                expires_ms: None,
            },
            SEAT_HEARTBEAT,
        ),
        (
            Record::SeatReleased {
                license_id: "lic_golden".into(),
                seat_id: "seat_1".into(),
                audit: audit(),
            },
            SEAT_RELEASED,
        ),
        (
            Record::SeatLeaseExpired {
                license_id: "lic_golden".into(),
                seat_id: "seat_2".into(),
                at_ms: 300,
            },
            SEAT_LEASE_EXPIRED,
        ),
    ]
}

/// Products, key rotation, audit checkpoints and license files.
fn products_keys_and_audit() -> Vec<(Record, &'static str)> {
    vec![
        (
            Record::ProductSaved {
                product: AsJson::new(product()),
                audit: audit(),
            },
            PRODUCT_SAVED,
        ),
        (
            Record::KeysRotated {
                kind: "master".into(),
                from: "aaaa".into(),
                to: "bbbb".into(),
                audit: audit(),
            },
            KEYS_ROTATED,
        ),
        (
            Record::Checkpoint(CheckpointRecord {
                seq: 7,
                chain: [0x33; 32],
                time_ms: 1_800_000_000_000,
                kid: "0123456789abcdef".into(),
                signature: vec![0x44; 64],
            }),
            CHECKPOINT,
        ),
        (
            Record::LicenseFileIssued {
                issue: LicenseFileIssue {
                    license_id: "lic_golden".into(),
                    fingerprint_bound: true,
                    expires_at_ms: 1_900_000_000_000,
                    kid: "0123456789abcdef".into(),
                },
                audit: audit(),
            },
            LICENSE_FILE_ISSUED,
        ),
        (
            Record::SeatLeased {
                license_id: "lic_golden".into(),
                seat: SeatRecord {
                    seat_id: "seat_3".into(),
                    fingerprint: "host-c".into(),
                    at_ms: 100,
                    expires_ms: None,
                },
                token_sha256: [0x5e; 32],
                audit: audit(),
            },
            SEAT_LEASED,
        ),
        (
            Record::TenantEvent {
                tenant: "product:ide".into(),
                event: EventRecord {
                    received_ms: 1_700_000_000_000,
                    time_ms: 1_699_999_999_000,
                    raw: r#"{"id":"e1"}"#.into(),
                },
            },
            TENANT_EVENT,
        ),
        (
            Record::BillingSettings {
                cycle: keymeter::billing::CycleKind::Day,
                time_zone: "Europe/Paris".into(),
            },
            BILLING_SETTINGS,
        ),
        (
            Record::BillingClose {
                at_ms: 1_700_000_000_000,
                closed_before_ms: 1_699_920_000_000,
                restate: true,
            },
            BILLING_CLOSE,
        ),
        (
            Record::MeterUpdated {
                meter: AsJson::new(updated_meter()),
                audit: audit(),
            },
            METER_UPDATED,
        ),
    ]
}

/// A meter with every field a definition has grown since the first one.
pub fn updated_meter() -> MeterDef {
    serde_json::from_value(json!({"id": "01JEXAMPLE0000000000000000", "slug": "tokens",
        "name": "LLM tokens", "description": "per model", "metadata": {"team": "ml"},
        "eventType": "call", "aggregation": "SUM", "valueProperty": "$.tokens",
        "windowSize": "HOUR", "strict": true, "roundValues": true,
        "createdAt": "2024-01-02T03:04:05.000Z", "updatedAt": "2024-01-03T03:04:05.000Z"}))
    .unwrap()
}

pub fn plan() -> keymeter::license::plan::Plan {
    serde_json::from_value(
        json!({"name": "pro", "version": 2, "description": "Pro seats",
        "policy": {"type": "seat", "seats": {"max": 5, "mode": "node_locked", "lease_ttl_s": 900}},
        "entitlements": ["export"], "grace_period_s": 3600,
        "created_at": "2024-01-02T03:04:05Z"}),
    )
    .unwrap()
}

pub fn migration() -> keymeter::license::migration_book::Migration {
    serde_json::from_value(json!({"id": "mig_golden",
        "spec": {"selection": {"product": "ide", "plan": "pro@2"}, "target": "usage@1",
            "rules": {"seats": "keep", "quotas_from_seats": [{"meter": "tokens", "per_seat": 1000,
                "period": "month", "overage": "block", "alert_thresholds_pct": [80]}],
                "entitlements": "carry"}},
        "status": "active", "created_at": "2024-01-02T03:04:05Z",
        "updated_at": "2024-01-02T03:04:06Z",
        "dry_run": {"at": "2024-01-02T03:04:05.5Z", "selected": 2, "convertible": 1,
            "selection_sha256": "00ff"},
        "steps": [{"step": 1, "size": {"percent": 10}, "goal": 1,
            "started_at": "2024-01-02T03:04:06Z", "updated_at": "2024-01-02T03:04:06Z",
            "migrated": 1, "failed": 0, "failures": [], "cursor": "lic_golden"}],
        "rollbacks": []}))
    .unwrap()
}

fn plans_and_migrations() -> Vec<(Record, &'static str)> {
    let mut migrated = license();
    migrated.plan = Some("usage@1".into());
    vec![
        (
            Record::PlanSaved {
                plan: AsJson::new(plan()),
                audit: audit(),
            },
            PLAN_SAVED,
        ),
        (
            Record::MigrationSaved {
                migration: AsJson::new(migration()),
                audit: anonymous(),
            },
            MIGRATION_SAVED,
        ),
        (
            Record::LicenseMigrated {
                migration: "mig_golden".into(),
                step: 1,
                rollback: false,
                before: AsJson::new(license()),
                after: AsJson::new(migrated),
                audit: audit(),
            },
            LICENSE_MIGRATED,
        ),
    ]
}

#[test]
fn every_log_record_variant_keeps_its_bytes_both_ways() {
    let table = goldens();
    let names: Vec<&str> = table.iter().map(|(r, _)| variant(r)).collect();
    assert_eq!(
        names, VARIANTS,
        "one golden per record variant, in declaration order"
    );
    let mut golden = Golden::default();
    for (record, hex) in &table {
        let name = format!("Record::{}", variant(record));
        golden.hex(&name, &record.encode(), hex);
        match Record::decode(&unhex(hex)) {
            Ok(decoded) => golden.check(&name, &decoded == record, || {
                format!("golden bytes decode to {decoded:?}")
            }),
            Err(e) => golden.check(&name, false, || format!("golden bytes do not decode: {e}")),
        }
    }
    golden.finish();
}

#[test]
fn a_record_of_an_unknown_version_is_refused_not_misread() {
    let mut bytes = goldens()[0].0.encode();
    assert_eq!(bytes[0], RECORD_VERSION);
    assert_eq!(RECORD_VERSION, 1);
    bytes[0] = 2;
    assert!(matches!(
        Record::decode(&bytes),
        Err(RecordError::Version(2))
    ));
}

// Golden encodings: version byte, variant index, then the fields in order.

const EVENT: &str = "010080a0abfef962fe9fabfef962377b226964223a226531222c22736f75726365223a2273222c2274797065223a2263
    616c6c222c227375626a656374223a2261636d65227d";
const REJECTED: &str =
    "01010e056b61666b6101030105757361676501500d494e56414c49445f4556454e54056e6f206964027b7d01";
const METER_CREATED: &str = "0102b4017b22736c7567223a22746f6b656e73222c226465736372697074696f6e223a224c4c4d20746f6b656e73222c
    226576656e7454797065223a2263616c6c222c226167677265676174696f6e223a2253554d222c2276616c756550726f
    7065727479223a22242e746f6b656e73222c2267726f75704279223a7b226d6f64656c223a22242e6d6f64656c222c22
    726567696f6e223a22242e726567696f6e227d2c2277696e646f7753697a65223a22484f5552227d01026f70f6a1abfe
    f96201057265712d31";
const METER_DELETED: &str = "010306746f6b656e73000900";
const API_KEY_CREATED: &str = "0104026b31036170700300010222222222222222222222222222222222222222222222222222222222222222220a0102
    6f70f6a1abfef96201057265712d31";
const API_KEY_REVOKED: &str = "0105026b3101026f70f6a1abfef96201057265712d31";
const SOURCE_OFFSETS: &str = "010605757361676504c801c802";
const LICENSE_CREATED: &str = "010795047b226964223a226c69635f676f6c64656e222c2270726f64756374223a22696465222c22637573746f6d6572
    223a2261636d65222c22737461747573223a22616374697665222c227374617475735f726561736f6e223a6e756c6c2c
    227374617274735f6174223a22323032342d30312d30325430333a30343a30355a222c22657870697265735f6174223a
    22323033302d30312d30315430303a30303a30305a222c2267726163655f706572696f645f73223a38363430302c2274
    7269616c223a747275652c22656e7469746c656d656e7473223a5b226578706f7274222c2270726f225d2c226d657461
    64617461223a7b2274696572223a327d2c22706f6c696379223a7b2274797065223a22687962726964222c2273656174
    73223a7b226d6178223a332c226d6f6465223a22666c6f6174696e67222c226c656173655f74746c5f73223a3930307d
    2c227573616765223a7b2271756f746173223a5b7b226d65746572223a22746f6b656e73222c226c696d6974223a312e
    352c22706572696f64223a226d6f6e7468222c226f766572616765223a22616c6c6f77222c22616c6572745f74687265
    73686f6c64735f706374223a5b38302c3130305d7d5d7d7d2c22637265617465645f6174223a22323032342d30312d30
    325430333a30343a30352e3030365a222c22757064617465645f6174223a22323032342d30312d30325430333a30343a
    30352e3030365a227d11111111111111111111111111111111111111111111111111111111111111110301020301026f
    70f6a1abfef96201057265712d31";
const LICENSE_CHANGED: &str = "010895047b226964223a226c69635f676f6c64656e222c2270726f64756374223a22696465222c22637573746f6d6572
    223a2261636d65222c22737461747573223a22616374697665222c227374617475735f726561736f6e223a6e756c6c2c
    227374617274735f6174223a22323032342d30312d30325430333a30343a30355a222c22657870697265735f6174223a
    22323033302d30312d30315430303a30303a30305a222c2267726163655f706572696f645f73223a38363430302c2274
    7269616c223a747275652c22656e7469746c656d656e7473223a5b226578706f7274222c2270726f225d2c226d657461
    64617461223a7b2274696572223a327d2c22706f6c696379223a7b2274797065223a22687962726964222c2273656174
    73223a7b226d6178223a332c226d6f6465223a22666c6f6174696e67222c226c656173655f74746c5f73223a3930307d
    2c227573616765223a7b2271756f746173223a5b7b226d65746572223a22746f6b656e73222c226c696d6974223a312e
    352c22706572696f64223a226d6f6e7468222c226f766572616765223a22616c6c6f77222c22616c6572745f74687265
    73686f6c64735f706374223a5b38302c3130305d7d5d7d7d2c22637265617465645f6174223a22323032342d30312d30
    325430333a30343a30352e3030365a222c22757064617465645f6174223a22323032342d30312d30325430333a30343a
    30352e3030365a227d000900";
const LICENSE_SUSPENDED: &str =
    "01090a6c69635f676f6c64656e0106756e7061696401026f70f6a1abfef96201057265712d31";
const LICENSE_REINSTATED: &str = "010a0a6c69635f676f6c64656e01026f70f6a1abfef96201057265712d31";
const LICENSE_REVOKED: &str = "010b0a6c69635f676f6c64656e0001026f70f6a1abfef96201057265712d31";
const LICENSE_RENEWED: &str =
    "010c0a6c69635f676f6c64656e0180e0998dcc6e01026f70f6a1abfef96201057265712d31";
const SEAT_CHECKED_OUT: &str = "010d0a6c69635f676f6c64656e06736561745f3106686f73742d61c8010188f06d01026f70f6a1abfef9620105726571
    2d31";
const SEAT_HEARTBEAT: &str = "010e0a6c69635f676f6c64656e06736561745f31900300";
const SEAT_RELEASED: &str =
    "010f0a6c69635f676f6c64656e06736561745f3101026f70f6a1abfef96201057265712d31";
const SEAT_LEASE_EXPIRED: &str = "01100a6c69635f676f6c64656e06736561745f32d804";
const PRODUCT_SAVED: &str = "0111c6017b226964223a22696465222c226e616d65223a2254686520494445222c22726571756972655369676e617475
    726573223a747275652c226170694b657973223a5b226b657931225d2c227369676e696e6753656372657473223a5b7b
    226964223a2273735f31222c227365616c6564223a22633256686247566b222c22637265617465644d73223a31302c22
    7265766f6b65644d73223a32307d5d2c22637265617465644d73223a31302c22757064617465644d73223a32302c2276
    657273696f6e223a327d01026f70f6a1abfef96201057265712d31";
const KEYS_ROTATED: &str =
    "0112066d61737465720461616161046262626201026f70f6a1abfef96201057265712d31";
const CHECKPOINT: &str = "011307333333333333333333333333333333333333333333333333333333333333333380c0e285e36810303132333435
    363738396162636465664044444444444444444444444444444444444444444444444444444444444444444444444444
    444444444444444444444444444444444444444444444444444444";
const LICENSE_FILE_ISSUED: &str = "01140a6c69635f676f6c64656e0180e0998dcc6e103031323334353637383961626364656601026f70f6a1abfef96201
    057265712d31";
const SEAT_LEASED: &str =
    "01150a6c69635f676f6c64656e06736561745f3306686f73742d63c801005e5e5e5e5e5e5e5e
    5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e01026f70f6a1abfef96201057265712d31";
// Variant 23 (0x17), appended: the definition as JSON text.
const METER_UPDATED: &str = "0119cc027b226964223a2230314a4558414d504c4530303030303030303030303030303030222c22736c7567223a2274
    6f6b656e73222c226e616d65223a224c4c4d20746f6b656e73222c226465736372697074696f6e223a22706572206d6f
    64656c222c226d65746164617461223a7b227465616d223a226d6c227d2c226576656e7454797065223a2263616c6c22
    2c226167677265676174696f6e223a2253554d222c2276616c756550726f7065727479223a22242e746f6b656e73222c
    2267726f75704279223a7b7d2c2277696e646f7753697a65223a22484f5552222c22737472696374223a747275652c22
    726f756e6456616c756573223a747275652c22637265617465644174223a22323032342d30312d30325430333a30343a
    30352e3030305a222c22757064617465644174223a22323032342d30312d30335430333a30343a30352e3030305a227d
    01026f70f6a1abfef96201057265712d31";
const TENANT_EVENT: &str =
    "01160b70726f647563743a69646580a0abfef962b090abfef9620b7b226964223a226531227d";
const BILLING_SETTINGS: &str = "0117010c4575726f70652f5061726973";
const BILLING_CLOSE: &str = "011880a0abfef96280d085b2f96201";
const PLAN_SAVED: &str = "011ae7017b226e616d65223a2270726f222c2276657273696f6e223a322c226465736372697074696f6e223a2250726f
    207365617473222c22706f6c696379223a7b2274797065223a2273656174222c227365617473223a7b226d6178223a35
    2c226d6f6465223a226e6f64655f6c6f636b6564222c226c656173655f74746c5f73223a3930307d2c22757361676522
    3a6e756c6c7d2c22656e7469746c656d656e7473223a5b226578706f7274225d2c2267726163655f706572696f645f73
    223a333630302c22637265617465645f6174223a22323032342d30312d30325430333a30343a30355a227d01026f70f6
    a1abfef96201057265712d31";
const MIGRATION_SAVED: &str = "011b8a057b226964223a226d69675f676f6c64656e222c2273706563223a7b2273656c656374696f6e223a7b2270726f
    64756374223a22696465222c22706c616e223a2270726f4032227d2c22746172676574223a2275736167654031222c22
    72756c6573223a7b227365617473223a226b656570222c2271756f7461735f66726f6d5f7365617473223a5b7b226d65
    746572223a22746f6b656e73222c227065725f73656174223a313030302e302c22706572696f64223a226d6f6e746822
    2c226f766572616765223a22626c6f636b222c22616c6572745f7468726573686f6c64735f706374223a5b38305d7d5d
    2c22656e7469746c656d656e7473223a226361727279227d7d2c22737461747573223a22616374697665222c22637265
    617465645f6174223a22323032342d30312d30325430333a30343a30355a222c22757064617465645f6174223a223230
    32342d30312d30325430333a30343a30365a222c226472795f72756e223a7b226174223a22323032342d30312d303254
    30333a30343a30352e3530305a222c2273656c6563746564223a322c22636f6e7665727469626c65223a312c2273656c
    656374696f6e5f736861323536223a2230306666227d2c227374657073223a5b7b2273746570223a312c2273697a6522
    3a7b2270657263656e74223a31307d2c22676f616c223a312c22737461727465645f6174223a22323032342d30312d30
    325430333a30343a30365a222c22757064617465645f6174223a22323032342d30312d30325430333a30343a30365a22
    2c226d69677261746564223a312c226661696c6564223a302c226661696c75726573223a5b5d2c22637572736f72223a
    226c69635f676f6c64656e227d5d2c22726f6c6c6261636b73223a5b5d7d000900";
const LICENSE_MIGRATED: &str = "011c0a6d69675f676f6c64656e010095047b226964223a226c69635f676f6c64656e222c2270726f64756374223a2269
    6465222c22637573746f6d6572223a2261636d65222c22737461747573223a22616374697665222c227374617475735f
    726561736f6e223a6e756c6c2c227374617274735f6174223a22323032342d30312d30325430333a30343a30355a222c
    22657870697265735f6174223a22323033302d30312d30315430303a30303a30305a222c2267726163655f706572696f
    645f73223a38363430302c22747269616c223a747275652c22656e7469746c656d656e7473223a5b226578706f727422
    2c2270726f225d2c226d65746164617461223a7b2274696572223a327d2c22706f6c696379223a7b2274797065223a22
    687962726964222c227365617473223a7b226d6178223a332c226d6f6465223a22666c6f6174696e67222c226c656173
    655f74746c5f73223a3930307d2c227573616765223a7b2271756f746173223a5b7b226d65746572223a22746f6b656e
    73222c226c696d6974223a312e352c22706572696f64223a226d6f6e7468222c226f766572616765223a22616c6c6f77
    222c22616c6572745f7468726573686f6c64735f706374223a5b38302c3130305d7d5d7d7d2c22637265617465645f61
    74223a22323032342d30312d30325430333a30343a30352e3030365a222c22757064617465645f6174223a2232303234
    2d30312d30325430333a30343a30352e3030365a227da6047b226964223a226c69635f676f6c64656e222c2270726f64
    756374223a22696465222c22637573746f6d6572223a2261636d65222c22737461747573223a22616374697665222c22
    7374617475735f726561736f6e223a6e756c6c2c227374617274735f6174223a22323032342d30312d30325430333a30
    343a30355a222c22657870697265735f6174223a22323033302d30312d30315430303a30303a30305a222c2267726163
    655f706572696f645f73223a38363430302c22747269616c223a747275652c22656e7469746c656d656e7473223a5b22
    6578706f7274222c2270726f225d2c226d65746164617461223a7b2274696572223a327d2c22706f6c696379223a7b22
    74797065223a22687962726964222c227365617473223a7b226d6178223a332c226d6f6465223a22666c6f6174696e67
    222c226c656173655f74746c5f73223a3930307d2c227573616765223a7b2271756f746173223a5b7b226d6574657222
    3a22746f6b656e73222c226c696d6974223a312e352c22706572696f64223a226d6f6e7468222c226f76657261676522
    3a22616c6c6f77222c22616c6572745f7468726573686f6c64735f706374223a5b38302c3130305d7d5d7d7d2c226372
    65617465645f6174223a22323032342d30312d30325430333a30343a30352e3030365a222c22757064617465645f6174
    223a22323032342d30312d30325430333a30343a30352e3030365a222c22706c616e223a2275736167654031227d0102
    6f70f6a1abfef96201057265712d31";
