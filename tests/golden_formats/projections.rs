//! Projection state (`state/`): every sled tree's keys and values, the
//! checkpoints under the empty keys, and the dedup snapshot. A fixed log is
//! rebuilt by `keymeter replay`'s code path and every tree must hold the
//! golden bytes; the golden bytes, loaded into a fresh store, must open as
//! every projection and read back as the values the records describe.

use std::collections::BTreeMap;
use std::path::Path;

use keymeter::config::Config;
use keymeter::crypto::{Keys, MasterKey, SecretString};
use keymeter::event::DedupKey;
use keymeter::license::LicenseBook;
use keymeter::log::{Log, LogConfig, LogDir};
use keymeter::meter::{AggState, Amount, CounterKey, MeterDef, UniqueKey};
use keymeter::projection::dedup::DedupIndex;
use keymeter::projection::{checkpoint, OpenContext, Readers, Registry, Store};
use keymeter::record::*;
use keymeter::scope::Scope;
use serde_json::json;

use crate::records::{audit, license, meter, product};
use crate::{unhex, Golden};

/// `tree key-hex value`, value as JSON text when it is a JSON document, hex
/// otherwise; trees and keys in order.
const TREES: &str = r#"
api_keys  0000000000000018
api_keys 6b31 {"id":"k1","name":"k1-name","scopes":["read"],"key_sha256":[90,90,90,90,90,90,90,90,90,90,90,90,90,90,90,90,90,90,90,90,90,90,90,90,90,90,90,90,90,90,90,90],"created_ms":1700000000000}
billing  0000000000000018
billing 47746f6b656e73 {"slug":"tokens","description":"LLM tokens","eventType":"call","aggregation":"SUM","valueProperty":"$.tokens","groupBy":{"model":"$.model","region":"$.region"},"windowSize":"HOUR"}
billing 477573657273 {"slug":"users","eventType":"call","aggregation":"UNIQUE_COUNT","valueProperty":"$.user","groupBy":{},"windowSize":"MINUTE"}
billing 498000018b882e0800000461636d65 0100
billing 498000018b882e0800000462657461 0101
billing 4c8000018b882e0800000461636d650000000000000002 7c182ecf054f1798eca13ef2a74f5d8bfe9fabfef9620106746f6b656e730353554d02056d6f64656c01056c6172676506726567696f6e0102657580e497d012
billing 4c8000018b882e0800000461636d650000000000000003 5b87cda15d88dc36aee6eab106bb839480e6f3faf9620106746f6b656e730353554d02056d6f64656c01056c6172676506726567696f6e00ffa7d6b907
billing 4c8000018b882e08000004626574610000000000000004 f903f0d37fad9d4d8ae24a481fd6070c80a0abfef9620106746f6b656e730353554d02056d6f64656c0006726567696f6e010275738098dc9334
billing 4d636c6f736564 1880949a85fa6280e09ecce5ee01
billing 4d73657474696e6773 0003555443
billing 530000000000000000 {"statement_id":"2023-11-61636d65","version":1,"subject":"acme","period":{"label":"2023-11","start":"2023-11-01T00:00:00.000Z","end":"2023-12-01T00:00:00.000Z","cycle":"month","time_zone":"UTC"},"cut":{"event_time_before":"2023-12-01T00:00:00.000Z","seq":24,"closed_at":"2023-11-15T00:13:20.000Z"},"lines":[{"line_id":"0f5081665eb14f6e","meter":"tokens","aggregation":"SUM","group":{"model":"large","region":null},"quantity":"-1","leaves":1,"root":{"hash":"a058dcf2cc0c8c94939454fb5303c41ebe73c1ba010bec742f2500c270323281","sum":"-1000000000"}},{"line_id":"484e91d8ab1b79a0","meter":"tokens","aggregation":"SUM","group":{"model":"large","region":"eu"},"quantity":"2.5","leaves":1,"root":{"hash":"736bf4a750922185b1666c745abbc1d7297ae049a212b2879360ccd95bc5a94e","sum":"2500000000"}}],"leaves":2,"root":"9d2dbb15b649350d7dc873ed7c7be8e9ae1e374aefb254d556e2b67f3a623760"}
billing 530000000000000001 {"statement_id":"2023-11-62657461","version":1,"subject":"beta","period":{"label":"2023-11","start":"2023-11-01T00:00:00.000Z","end":"2023-12-01T00:00:00.000Z","cycle":"month","time_zone":"UTC"},"cut":{"event_time_before":"2023-12-01T00:00:00.000Z","seq":24,"closed_at":"2023-11-15T00:13:20.000Z"},"lines":[{"line_id":"c4d8dd92a11802ac","meter":"tokens","aggregation":"SUM","group":{"model":null,"region":"us"},"quantity":"7","leaves":1,"root":{"hash":"df3abf7c93659a9305825e0697f969e94a6dc16d54350961df74104ad77ce96b","sum":"7000000000"}}],"leaves":1,"root":"49d22f9682cb4d2e48aa74ad26db67cbc361fb643098402b89eb8abceb88d7e6"}
counters  0000000000000018
counters 01746f6b656e73 {"slug":"tokens","description":"LLM tokens","eventType":"call","aggregation":"SUM","valueProperty":"$.tokens","groupBy":{"model":"$.model","region":"$.region"},"windowSize":"HOUR"}
counters 017573657273 {"slug":"users","eventType":"call","aggregation":"UNIQUE_COUNT","valueProperty":"$.user","groupBy":{},"windowSize":"MINUTE"}
counters 03 036e5c6444ae173d8c
counters 0475736572730056414c55455f50524f50455254595f4d495353494e47 0000000000000001
counters 746f6b656e7300 030021746f6b656e730061636d65008000018bcfa24480000000066c6172676500000000070101ffa7d6b9071112d93300000000066c6172676500000003657507010180e497d012071762657461008000018bcfd93300000000000000000375730701018098dc9334
counters 757365727300 02001375736572730061636d65008000018bcfae2b60130108017055f1b06ac4c62bde34cdccade1d1df060d62657461008000018bcfe519e013010801269b64739a564e080433a155f72cf78a
license_history  0000000000000018
license_history 6c69635f676f6c64656e00000000000000000b {"seq":11,"at":"2023-11-14T22:13:20.123Z","change":"created","terms":{"policy":{"type":"seat","seats":{"max":3,"mode":"floating","lease_ttl_s":900},"usage":null},"entitlements":["export","pro"],"grace_period_s":86400,"starts_at":"2024-01-02T03:04:05Z","expires_at":"2030-01-01T00:00:00Z"}}
license_history 6c69635f676f6e65000000000000000013 {"seq":19,"at":"2023-11-14T22:13:20.123Z","change":"created","terms":{"policy":{"type":"none","seats":null,"usage":null},"entitlements":["export","pro"],"grace_period_s":86400,"starts_at":"2024-01-02T03:04:05Z","expires_at":"2030-01-01T00:00:00Z"}}
license_history 6c69635f706175736564000000000000000011 {"seq":17,"at":"2023-11-14T22:13:20.123Z","change":"created","terms":{"policy":{"type":"none","seats":null,"usage":null},"entitlements":["export","pro"],"grace_period_s":86400,"starts_at":"2024-01-02T03:04:05Z","expires_at":"2030-01-01T00:00:00Z"}}
licenses  0000000000000018
licenses 6c69635f676f6c64656e {"license":{"id":"lic_golden","product":"ide","customer":"acme","status":"active","status_reason":null,"starts_at":"2024-01-02T03:04:05Z","expires_at":"2030-01-01T00:00:00Z","grace_period_s":86400,"trial":true,"entitlements":["export","pro"],"metadata":{"tier":2},"policy":{"type":"seat","seats":{"max":3,"mode":"floating","lease_ttl_s":900},"usage":null},"created_at":"2024-01-02T03:04:05.006Z","updated_at":"2024-01-02T03:04:05.006Z"},"secret":{"lookup":[10,10,10,10,10,10,10,10,10,10,10,10,10,10,10,10,10,10,10,10,10,10,10,10,10,10,10,10,10,10,10,10],"sealed_key":[9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9]},"seats":{"seats":{"seat_1":{"seat_id":"seat_1","fingerprint":"host-a","checked_out_ms":1700000000000,"heartbeat_ms":1700000060000,"expires_ms":1700000960000},"seat_3":{"seat_id":"seat_3","fingerprint":"host-c","checked_out_ms":1700000000000,"heartbeat_ms":1700000000000,"expires_ms":1700000900000,"token_sha256":[94,94,94,94,94,94,94,94,94,94,94,94,94,94,94,94,94,94,94,94,94,94,94,94,94,94,94,94,94,94,94,94]}}}}
licenses 6c69635f676f6e65 {"license":{"id":"lic_gone","product":"ide","customer":"acme","status":"revoked","status_reason":null,"starts_at":"2024-01-02T03:04:05Z","expires_at":"2030-01-01T00:00:00Z","grace_period_s":86400,"trial":true,"entitlements":["export","pro"],"metadata":{"tier":2},"policy":{"type":"none","seats":null,"usage":null},"created_at":"2024-01-02T03:04:05.006Z","updated_at":"2023-11-14T22:13:20.123Z"},"secret":{"lookup":[8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8],"sealed_key":[9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9]},"seats":{"seats":{}}}
licenses 6c69635f706175736564 {"license":{"id":"lic_paused","product":"ide","customer":"acme","status":"suspended","status_reason":"unpaid","starts_at":"2024-01-02T03:04:05Z","expires_at":"2030-01-01T00:00:00Z","grace_period_s":86400,"trial":true,"entitlements":["export","pro"],"metadata":{"tier":2},"policy":{"type":"none","seats":null,"usage":null},"created_at":"2024-01-02T03:04:05.006Z","updated_at":"2023-11-14T22:13:20.123Z"},"secret":{"lookup":[10,10,10,10,10,10,10,10,10,10,10,10,10,10,10,10,10,10,10,10,10,10,10,10,10,10,10,10,10,10,10,10],"sealed_key":[9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9,9]},"seats":{"seats":{}}}
meters  0000000000000018
meters 746f6b656e73 {"slug":"tokens","description":"LLM tokens","eventType":"call","aggregation":"SUM","valueProperty":"$.tokens","groupBy":{"model":"$.model","region":"$.region"},"windowSize":"HOUR"}
meters 7573657273 {"slug":"users","eventType":"call","aggregation":"UNIQUE_COUNT","valueProperty":"$.user","groupBy":{},"windowSize":"MINUTE"}
migrations  0000000000000018
plans  0000000000000018
products  0000000000000018
products 696465 {"id":"ide","name":"The IDE","requireSignatures":true,"apiKeys":["key1"],"signingSecrets":[{"id":"ss_1","sealed":"c2VhbGVk","createdMs":10,"revokedMs":20}],"createdMs":10,"updatedMs":20,"version":2}
quarantine  0000000000000018
quarantine 0000000000000006 80a0abfef96204687474700101000d494e56414c49445f4556454e54056e6f206964077b2278223a317d00
sources  0000000000000018
sources 75736167650000000002 00000000000000a4
"#;

/// The format before tenants (`KMDEDUP1`), which still opens.
const DEDUP_SNAPSHOT_V1: &str = "4b4d444544555031150000000000000003000000000000007c182ecf054f1798eca13ef2a74f5d8bff67e5cf8b010000
    f903f0d37fad9d4d8ae24a481fd6070c0068e5cf8b0100005b87cda15d88dc36aee6eab106bb83948079aecf8b010000
    1469cdd6";

/// The format with a tenant per entry (`KMDEDUP2`), which still opens.
const DEDUP_SNAPSHOT_V2: &str =
    "4b4d44454455503216000000000000000200000000000b0070726f647563743a69646503000000
    000000007c182ecf054f1798eca13ef2a74f5d8bff67e5cf8b01000000000000f903f0d37fad9d4d8ae24a481fd6070c
    0068e5cf8b010000010000005b87cda15d88dc36aee6eab106bb83948079aecf8b010000000000009ef2043f";

/// The current format (`KMDEDUP3`): applied seq 0x16; tenants "" and
/// "product:ide"; (hour, tenant, count) rows for the hours 472221 and
/// 472222; three identities by identity, each with its hour.
const DEDUP_SNAPSHOT: &str = "4b4d44454455503318000000000000000200000000000b0070726f647563743a696465030000009d3407000000000001
    000000000000009e3407000000000001000000000000009e34070001000000010000000000000003000000000000005b
    87cda15d88dc36aee6eab106bb83949d3407007c182ecf054f1798eca13ef2a74f5d8b9e340700f903f0d37fad9d4d8a
    e24a481fd6070c9e3407000f028aba";

const T0: i64 = 1_700_000_000_000;

/// The master key of the golden data directory; its log predates the
/// keyring, so the keys are the ones this key derives, and the unique sets
/// above (SipHash-2-4-128 of `u1` and `5`, computed independently of
/// keymeter) are made under the UNIQUE_COUNT key derived from its pepper.
const MASTER: [u8; 32] = [7; 32];

fn unique_key() -> UniqueKey {
    Keys::derive(&MasterKey::from_bytes(MASTER))
        .unique_key()
        .clone()
}

pub fn users_meter() -> MeterDef {
    serde_json::from_value(json!({"slug": "users", "eventType": "call",
        "aggregation": "UNIQUE_COUNT", "valueProperty": "$.user"}))
    .unwrap()
}

fn event(id: &str, subject: &str, time_ms: i64, data: serde_json::Value) -> Record {
    let raw = json!({"specversion": "1.0", "id": id, "source": "s", "type": "call",
        "subject": subject, "data": data});
    Record::Event(EventRecord {
        received_ms: T0,
        time_ms,
        raw: raw.to_string(),
    })
}

fn lic(id: &str, policy: serde_json::Value) -> Record {
    let mut l = license();
    l.id = id.into();
    l.policy = serde_json::from_value(policy).unwrap();
    let secret = LicenseSecret {
        lookup: [id.len() as u8; 32],
        sealed_key: vec![9; 40],
    };
    Record::LicenseCreated {
        license: AsJson::new(l),
        secret,
        audit: audit(),
    }
}

fn api_key(id: &str) -> ApiKeyRecord {
    ApiKeyRecord {
        id: id.into(),
        name: format!("{id}-name"),
        scopes: vec![Scope::Read],
        key_sha256: [0x5A; 32],
        created_ms: T0,
    }
}

/// The log: one of every record a projection keeps something of.
// Over 80 lines: a table of fixed records, one per fact, no logic.
pub fn log_records() -> Vec<Record> {
    let seat = |seat_id: &str, fp: &str| Record::SeatCheckedOut {
        license_id: "lic_golden".into(),
        seat: SeatRecord {
            seat_id: seat_id.into(),
            fingerprint: fp.into(),
            at_ms: T0,
            expires_ms: Some(T0 + 900_000),
        },
        audit: audit(),
    };
    vec![
        Record::MeterCreated {
            meter: AsJson::new(meter()),
            audit: audit(),
        },
        event(
            "e1",
            "acme",
            T0 - 1,
            json!({"tokens": 2.5, "model": "large", "region": "eu"}),
        ),
        event(
            "e2",
            "acme",
            T0 - 3_600_000,
            json!({"tokens": -1, "model": "large", "user": "u1"}),
        ),
        // Sent by a key bound to product `ide`.
        match event(
            "e3",
            "beta",
            T0,
            json!({"tokens": "7", "region": "us", "user": 5}),
        ) {
            Record::Event(event) => Record::TenantEvent {
                tenant: "product:ide".into(),
                event,
            },
            _ => unreachable!(),
        },
        Record::MeterCreated {
            meter: AsJson::new(users_meter()),
            audit: audit(),
        },
        Record::Rejected(RejectedRecord {
            received_ms: T0,
            origin: "http".into(),
            index: Some(1),
            position: None,
            code: "INVALID_EVENT".into(),
            message: "no id".into(),
            raw: b"{\"x\":1}".to_vec(),
            truncated: false,
        }),
        Record::ApiKeyCreated {
            key: api_key("k1"),
            audit: audit(),
        },
        Record::ApiKeyCreated {
            key: api_key("k2"),
            audit: audit(),
        },
        Record::ApiKeyRevoked {
            id: "k2".into(),
            audit: audit(),
        },
        Record::ProductSaved {
            product: AsJson::new(product()),
            audit: audit(),
        },
        lic(
            "lic_golden",
            json!({"type": "seat",
            "seats": {"max": 3, "mode": "floating", "lease_ttl_s": 900}}),
        ),
        seat("seat_1", "host-a"),
        seat("seat_2", "host-b"),
        Record::SeatHeartbeat {
            license_id: "lic_golden".into(),
            seat_id: "seat_1".into(),
            at_ms: T0 + 60_000,
            expires_ms: Some(T0 + 960_000),
        },
        Record::SeatReleased {
            license_id: "lic_golden".into(),
            seat_id: "seat_2".into(),
            audit: audit(),
        },
        Record::SeatLeased {
            license_id: "lic_golden".into(),
            seat: SeatRecord {
                seat_id: "seat_3".into(),
                fingerprint: "host-c".into(),
                at_ms: T0,
                expires_ms: Some(T0 + 900_000),
            },
            token_sha256: [0x5e; 32],
            audit: audit(),
        },
        lic("lic_paused", json!({"type": "none"})),
        Record::LicenseSuspended {
            id: "lic_paused".into(),
            reason: Some("unpaid".into()),
            audit: audit(),
        },
        lic("lic_gone", json!({"type": "none"})),
        Record::LicenseRevoked {
            id: "lic_gone".into(),
            reason: None,
            audit: audit(),
        },
        Record::SourceOffsets(OffsetDelta {
            topic: "usage".into(),
            partition: 2,
            from: 100,
            to: 164,
        }),
        Record::Checkpoint(CheckpointRecord {
            seq: 20,
            chain: [1; 32],
            time_ms: T0,
            kid: "k".into(),
            signature: vec![2; 64],
        }),
        Record::BillingSettings {
            cycle: keymeter::billing::CycleKind::Month,
            time_zone: "UTC".into(),
        },
        // Closes every month before 2100: the events' statements.
        Record::BillingClose {
            at_ms: T0 + 7_200_000,
            closed_before_ms: 4_102_444_800_000,
            restate: false,
        },
    ]
}

/// A data directory whose log holds [`log_records`], one batch each.
pub fn write_log(data: &Path) {
    let (mut log, _) = Log::open(&data.join("log"), LogConfig::default()).unwrap();
    for r in log_records() {
        log.append_batch(&[r.encode()]).unwrap();
    }
}

fn is_json(v: &[u8]) -> bool {
    v.first() == Some(&b'{') && serde_json::from_slice::<serde_json::Value>(v).is_ok()
}

/// Every tree of a store as golden lines.
fn tree_lines(state: &Path) -> String {
    let store = Store::open(state).unwrap();
    let mut out = String::from("\n");
    let mut names: Vec<String> = store
        .db
        .tree_names()
        .iter()
        .map(|n| String::from_utf8(n.to_vec()).unwrap())
        .collect();
    names.sort();
    for name in names {
        for kv in store.db.open_tree(&name).unwrap().iter() {
            let (k, v) = kv.unwrap();
            let value = if is_json(&v) {
                String::from_utf8(v.to_vec()).unwrap()
            } else {
                hex::encode(&v)
            };
            out.push_str(&format!("{name} {} {value}\n", hex::encode(&k)));
        }
    }
    out
}

/// Fills a fresh store from golden lines.
fn load_lines(state: &Path, lines: &str) {
    let store = Store::open(state).unwrap();
    for line in lines.lines().filter(|l| !l.is_empty()) {
        let mut parts = line.splitn(3, ' ');
        let (tree, key, value) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        let value = if value.starts_with('{') {
            value.as_bytes().to_vec()
        } else {
            unhex(value)
        };
        store
            .db
            .open_tree(tree)
            .unwrap()
            .insert(unhex(key), value)
            .unwrap();
    }
    store.db.flush().unwrap();
}

#[test]
fn every_projection_tree_and_the_dedup_snapshot_keep_their_bytes() {
    let root = tempfile::tempdir().unwrap();
    use base64::Engine as _;
    let cfg = Config {
        data_dir: root.path().join("data"),
        master_key: Some(SecretString::new(
            base64::engine::general_purpose::STANDARD.encode(MASTER),
        )),
        ..Config::default()
    };
    write_log(&cfg.data_dir);
    keymeter::engine::rebuild(&cfg, |_, _| {}).unwrap();
    let mut g = Golden::default();
    g.text(
        "projection trees",
        tree_lines(&cfg.state_dir()).as_bytes(),
        TREES,
    );
    let now = std::fs::read(cfg.state_dir().join("dedup.snapshot")).unwrap();
    let golden = unhex(DEDUP_SNAPSHOT);
    g.check("dedup snapshot", now == golden, || {
        format!(
            "differs from its golden bytes\n  golden: {DEDUP_SNAPSHOT}\n  now:    {}",
            hex::encode(&now)
        )
    });
    g.finish();
}

/// What the log's records say the stores hold, computed without the stores.
fn expected_counters() -> BTreeMap<CounterKey, AggState> {
    let key = |meter: &str, subject: &str, window: i64, group: &[Option<&str>]| CounterKey {
        meter: meter.into(),
        subject: subject.into(),
        window_start_ms: window,
        group: group.iter().map(|g| g.map(str::to_owned)).collect(),
    };
    let hour = |t: i64| t.div_euclid(3_600_000) * 3_600_000;
    let amount = |s: &str| Amount::parse_decimal(s).unwrap();
    let unique = unique_key();
    BTreeMap::from([
        (
            key("tokens", "acme", hour(T0 - 1), &[Some("large"), Some("eu")]),
            AggState::Sum(amount("2.5")),
        ),
        (
            key(
                "tokens",
                "acme",
                hour(T0 - 3_600_000),
                &[Some("large"), None],
            ),
            AggState::Sum(amount("-1")),
        ),
        (
            key("tokens", "beta", hour(T0), &[None, Some("us")]),
            AggState::Sum(amount("7")),
        ),
        (
            key(
                "users",
                "acme",
                (T0 - 3_600_000).div_euclid(60_000) * 60_000,
                &[],
            ),
            AggState::Unique(vec![unique.hash("u1")]),
        ),
        (
            key("users", "beta", T0.div_euclid(60_000) * 60_000, &[]),
            AggState::Unique(vec![unique.hash("5")]),
        ),
    ])
}

#[test]
fn golden_projection_bytes_open_as_every_projection_and_read_back_as_the_logs_facts() {
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    load_lines(&state, TREES);
    std::fs::write(state.join("dedup.snapshot"), unhex(DEDUP_SNAPSHOT)).unwrap();
    let head = log_records().len() as u64;
    let store = Store::open(&state).unwrap();

    let log = LogDir::disk(root.path().join("log"));
    let readers = Readers::new(None);
    let key = unique_key();
    let ctx = OpenContext {
        store: &store,
        log: &log,
        readers: &readers,
        unique_key: &key,
    };
    for p in Registry::standard().open(&ctx).unwrap() {
        assert_eq!(p.applied(), head, "projection {} checkpoint", p.name());
    }
    for tree in [
        "billing",
        "counters",
        "licenses",
        "meters",
        "api_keys",
        "products",
        "quarantine",
        "sources",
    ] {
        assert_eq!(
            checkpoint(&store.db.open_tree(tree).unwrap()).unwrap(),
            head,
            "{tree}"
        );
    }

    let mut book = LicenseBook::default();
    log_records().iter().for_each(|r| {
        book.apply(r);
    });
    let mut want: Vec<_> = book.iter().cloned().collect();
    want.sort_by(|a, b| a.license.id.cmp(&b.license.id));
    assert_eq!(store.licenses().unwrap(), want, "licenses with their seats");
    assert_eq!(store.meter_defs().unwrap(), vec![meter(), users_meter()]);
    assert_eq!(store.api_keys().unwrap(), vec![api_key("k1")]);
    assert_eq!(store.products().unwrap(), vec![product()]);
    let positions = store.source_positions().unwrap();
    assert_eq!(
        positions,
        [(("usage".to_owned(), 2), 164)].into_iter().collect()
    );
    let Record::Rejected(rejected) = &log_records()[5] else {
        unreachable!()
    };
    assert_eq!(
        store.quarantine_page(0, 10).unwrap(),
        vec![(6, rejected.clone())]
    );

    let counters: BTreeMap<CounterKey, AggState> = store
        .counter_states()
        .unwrap()
        .into_iter()
        .map(|(k, v)| (CounterKey::decode(&k).unwrap(), v))
        .collect();
    assert_eq!(counters, expected_counters());

    let mut dedup = DedupIndex::open(&state, 100).unwrap();
    assert_eq!((dedup.applied(), dedup.len()), (head, 3));
    for id in ["e1", "e2", "e3"] {
        assert!(dedup.contains(&DedupKey::new("s", id)), "identity {id}");
    }
    let ide = dedup.tenant("product:ide");
    assert_eq!(dedup.tenants().held(ide), 1);
}

#[test]
fn a_dedup_snapshot_with_a_tenant_per_entry_opens_with_the_same_identities_and_shares() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("dedup.snapshot"), unhex(DEDUP_SNAPSHOT_V2)).unwrap();
    let mut dedup = DedupIndex::open(root.path(), 100).unwrap();
    let mut current = DedupIndex::in_memory(100);
    current.read_snapshot(&unhex(DEDUP_SNAPSHOT)).unwrap();
    // Written when the golden log ended before its billing records.
    assert_eq!((dedup.applied(), dedup.len()), (22, 3));
    assert_eq!(current.len(), 3);
    assert_eq!(dedup.entries(), current.entries());
    assert_eq!(dedup.hour_counts(), current.hour_counts());
    let ide = dedup.tenant("product:ide");
    assert_eq!(dedup.tenants().held(ide), 1);
}

#[test]
fn a_dedup_snapshot_from_before_tenants_opens_with_its_identities_unattributed() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("dedup.snapshot"), unhex(DEDUP_SNAPSHOT_V1)).unwrap();
    let dedup = DedupIndex::open(root.path(), 100).unwrap();
    assert_eq!((dedup.applied(), dedup.len()), (0x15, 3));
    for id in ["e1", "e2", "e3"] {
        assert!(dedup.contains(&DedupKey::new("s", id)), "identity {id}");
    }
    assert_eq!(
        dedup
            .tenants()
            .held(keymeter::projection::dedup::UNATTRIBUTED),
        3
    );
}
