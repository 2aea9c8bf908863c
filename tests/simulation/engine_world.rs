//! The world of the engine simulation: the engine on a simulated disk, the operations the
//! simulation sends it, the model of what the engine must hold, and what the log holds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use keymeter::config::Config;
use keymeter::engine::protocol::{
    CheckoutSeat, CreateApiKey, CreateLicense, CreateMeter, Ingest, Origin, ReleaseSeat,
    RevokeApiKey, SeatReleaser,
};
use keymeter::engine::{Engine, EngineError, EngineHandle};
use keymeter::id::LicenseId;
use keymeter::license::model::NewLicense;
use keymeter::license::License;
use keymeter::log::sim::SimDisk;
use keymeter::log::{LogDir, Seq};
use keymeter::query::meters::QueryRequest;
use keymeter::query::View;
use keymeter::record::{ApiKeyRecord, Audit, LicenseSecret, Record};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::common::engine::{config, ManualClock};

pub const T0: i64 = 1_800_000_000_000;
pub const METER: &str = "calls";
/// UNIQUE_COUNT of `$.user` (`u` and the event's value mod [`USERS`]).
pub const UNIQUE_METER: &str = "users";
const USERS: u64 = 7;
pub const LICENSE: &str = "lic_0000000000000sim";
pub const SEATS_MAX: usize = 3;
const SUBJECTS: u64 = 5;
const FINGERPRINTS: u64 = 6;

/// One request of the simulation, as sent (and resent after a crash).
#[derive(Debug, Clone)]
pub enum Op {
    /// Event texts; `new` are the ids among them the engine has not counted yet.
    Ingest {
        texts: Vec<String>,
        new: Vec<String>,
    },
    Checkout {
        fingerprint: String,
        seat_id: String,
    },
    Release {
        fingerprint: String,
        seat_id: String,
    },
    CreateKey {
        name: String,
    },
    RevokeKey {
        name: String,
    },
}

impl Op {
    /// What the op leaves in the log when it is recorded: one identity per record, each
    /// of which must then appear exactly once.
    pub fn identities(&self) -> Vec<String> {
        match self {
            Op::Ingest { new, .. } => new.iter().map(|id| format!("event:{id}")).collect(),
            Op::Checkout { seat_id, .. } => vec![format!("checkout:{seat_id}")],
            Op::Release { seat_id, .. } => vec![format!("release:{seat_id}")],
            Op::CreateKey { name } => vec![format!("key:{}", key_id(name))],
            Op::RevokeKey { name } => vec![format!("revoke:{}", key_id(name))],
        }
    }
}

pub fn key_id(name: &str) -> String {
    format!("id-{name}")
}

pub fn key_plaintext(name: &str) -> String {
    format!("km_secret_{name}_0123456789")
}

/// What the engine must hold: every recorded event, the seats held, the keys made.
#[derive(Debug, Default)]
pub struct Model {
    /// Event id → (subject, value, text).
    pub events: BTreeMap<String, (String, u64, String)>,
    /// The event ids of every acknowledged ingest request, for resending.
    pub batches: Vec<Vec<String>>,
    /// Fingerprint → seat id.
    pub seats: BTreeMap<String, String>,
    /// Key name → live (not revoked).
    pub keys: BTreeMap<String, bool>,
    /// Every identity the engine has recorded.
    pub recorded: BTreeSet<String>,
    next_id: u64,
}

impl Model {
    /// The op is recorded: the model takes its effect.
    pub fn adopt(&mut self, op: &Op) {
        self.recorded.extend(op.identities());
        match op {
            Op::Ingest { texts, new } => {
                for text in texts {
                    let v: serde_json::Value = serde_json::from_str(text).unwrap();
                    let id = v["id"].as_str().unwrap().to_owned();
                    if new.contains(&id) && !self.events.contains_key(&id) {
                        let subject = v["subject"].as_str().unwrap().to_owned();
                        let value = v["data"]["value"].as_u64().unwrap();
                        self.events.insert(id, (subject, value, text.clone()));
                    }
                }
                self.batches.push(new.clone());
            }
            Op::Checkout {
                fingerprint,
                seat_id,
            } => {
                self.seats.insert(fingerprint.clone(), seat_id.clone());
            }
            Op::Release { fingerprint, .. } => {
                self.seats.remove(fingerprint);
            }
            Op::CreateKey { name } => {
                self.keys.insert(name.clone(), true);
            }
            Op::RevokeKey { name } => {
                self.keys.insert(name.clone(), false);
            }
        }
    }

    /// Per-subject sums of the recorded events.
    pub fn totals(&self) -> BTreeMap<String, u64> {
        let mut totals = BTreeMap::new();
        for (subject, value, _) in self.events.values() {
            *totals.entry(subject.clone()).or_default() += value;
        }
        totals
    }

    /// Per-subject numbers of distinct users of the recorded events.
    pub fn distinct_users(&self) -> BTreeMap<String, u64> {
        let mut users: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
        for (subject, value, _) in self.events.values() {
            users
                .entry(subject.clone())
                .or_default()
                .insert(value % USERS);
        }
        users
            .into_iter()
            .map(|(subject, set)| (subject, set.len() as u64))
            .collect()
    }

    /// A random next op that the engine should accept. Ingests dominate; an ingest may
    /// repeat events already counted and may carry the same new event twice.
    pub fn random_op(&mut self, rng: &mut StdRng) -> Op {
        match rng.gen_range(0..10) {
            0..=5 => self.random_ingest(rng),
            6 | 7 => {
                let fingerprint = format!("fp{}", rng.gen_range(0..FINGERPRINTS));
                match self.seats.get(&fingerprint) {
                    Some(seat_id) => Op::Release {
                        fingerprint,
                        seat_id: seat_id.clone(),
                    },
                    None if self.seats.len() < SEATS_MAX => Op::Checkout {
                        fingerprint,
                        seat_id: format!("seat_{}", self.fresh()),
                    },
                    None => self.random_ingest(rng),
                }
            }
            _ => {
                let live: Vec<&String> = self
                    .keys
                    .iter()
                    .filter(|(_, l)| **l)
                    .map(|(n, _)| n)
                    .collect();
                if !live.is_empty() && rng.gen_bool(0.4) {
                    let name = live[rng.gen_range(0..live.len())].clone();
                    Op::RevokeKey { name }
                } else {
                    Op::CreateKey {
                        name: format!("simkey{}", self.fresh()),
                    }
                }
            }
        }
    }

    fn random_ingest(&mut self, rng: &mut StdRng) -> Op {
        let mut texts = Vec::new();
        let mut new = Vec::new();
        // Sometimes large events, so that a batch spans several pages of the log.
        let pad = if rng.gen_bool(0.2) {
            rng.gen_range(0..1500)
        } else {
            0
        };
        for _ in 0..rng.gen_range(1..=12) {
            let id = format!("e{}", self.fresh());
            let subject = format!("s{}", rng.gen_range(0..SUBJECTS));
            // Distinct values: a lost event and a doubled one cannot cancel out.
            let value = rng.gen_range(1..1_000_000u64) * 1000 + self.next_id % 1000;
            let user = value % USERS;
            texts.push(format!(
                r#"{{"specversion":"1.0","id":"{id}","source":"sim","type":"api.calls","subject":"{subject}","data":{{"value":{value},"user":"u{user}","pad":"{}"}}}}"#,
                "x".repeat(pad)
            ));
            new.push(id);
        }
        if rng.gen_bool(0.3) {
            texts.push(texts[0].clone());
        }
        if !self.events.is_empty() && rng.gen_bool(0.3) {
            let old = rng.gen_range(0..self.events.len());
            let (_, (_, _, text)) = self.events.iter().nth(old).unwrap();
            texts.push(text.clone());
        }
        Op::Ingest { texts, new }
    }

    fn fresh(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

/// How an op was answered: recorded, or not known (the engine stopped).
pub type Sent = Result<(), EngineError>;

/// The engine under test and its surroundings.
pub struct World {
    pub rng: StdRng,
    pub disk: SimDisk,
    /// Holds the state and key directories (the log is on `disk`).
    _root: tempfile::TempDir,
    pub cfg: Config,
    pub clock: Arc<ManualClock>,
    pub now_ms: i64,
    pub rt: tokio::runtime::Runtime,
    pub engine: Option<Engine>,
    pub model: Model,
}

impl World {
    pub fn new(seed: u64) -> World {
        let mut rng = StdRng::seed_from_u64(seed ^ 0xe6_5eed);
        let disk = SimDisk::new(seed);
        let root = tempfile::tempdir().unwrap();
        let mut cfg = config(root.path());
        cfg.log_storage = Some(Arc::new(disk.clone()));
        cfg.segment_bytes_max = rng.gen_range(4096..32 * 1024);
        cfg.audit_checkpoint_records = rng.gen_range(5..60);
        cfg.audit_checkpoint_interval = std::time::Duration::from_secs(3600);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        World {
            rng,
            disk,
            _root: root,
            cfg,
            clock: Arc::new(ManualClock::new(T0)),
            now_ms: T0,
            rt,
            engine: None,
            model: Model::default(),
        }
    }

    pub fn handle(&self) -> EngineHandle {
        self.engine.as_ref().expect("engine open").handle()
    }

    /// Opens the engine; `Err` only if the disk lost power during the start.
    pub fn open(&mut self) -> Result<(), String> {
        // sled 0.34 releases its file lock when its flusher thread, which
        // holds the database, notices the last handle is gone: shortly after
        // the previous engine stopped, not at once. A process that crashed
        // has no such thread; here the open waits for it (a few seconds at
        // most) rather than report a refusal that is not one.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let opened = loop {
            match Engine::open(&self.cfg, self.clock.clone()) {
                Err(e)
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other,
            }
        };
        match opened {
            Ok(started) => {
                self.engine = Some(started.engine);
                Ok(())
            }
            Err(e) if self.disk.is_crashed() => Err(e.to_string()),
            Err(e) => {
                panic!("the engine refused to start on a disk that only lost unsynced writes: {e}")
            }
        }
    }

    /// The meter and the license every run uses, recorded before any crash is armed.
    pub fn setup(&mut self) {
        let handle = self.handle();
        let meters = [
            json!({"slug": METER, "eventType": "api.calls",
                "aggregation": "SUM", "valueProperty": "$.value", "windowSize": "HOUR"}),
            json!({"slug": UNIQUE_METER, "eventType": "api.calls",
                "aggregation": "UNIQUE_COUNT", "valueProperty": "$.user", "windowSize": "HOUR"}),
        ];
        let license = new_license(&handle, self.now_ms);
        self.rt.block_on(async {
            for meter in meters {
                handle
                    .send(CreateMeter {
                        def: serde_json::from_value(meter).unwrap(),
                        audit: audit(),
                    })
                    .await
                    .unwrap();
            }
            handle.send(license).await.unwrap().unwrap();
        });
    }

    /// Sends `op` and waits for its answer. A refusal of an op the model says is valid,
    /// or an ingest whose counts differ from the model's, fails the run.
    pub fn send(&mut self, op: &Op) -> Sent {
        self.now_ms += self.rng.gen_range(0..2_000);
        self.clock.set(self.now_ms);
        let handle = self.handle();
        let now = self.now_ms;
        self.rt.block_on(send(&handle, op, now))
    }

    /// The engine's projections equal the model.
    pub fn check_projections(&self, when: &str) {
        let shared = self.handle().shared;
        let view = View::new(shared.clone(), None);
        let per_subject = |meter: &str| {
            let q = QueryRequest::parse("groupBy=subject").unwrap();
            let answer = view.query(meter, &q, usize::MAX).unwrap();
            let mut totals: BTreeMap<String, u64> = BTreeMap::new();
            for row in answer.rows {
                *totals.entry(row.subject.unwrap()).or_default() +=
                    u64::try_from(row.value.0 / 1_000_000_000).unwrap();
            }
            totals
        };
        assert_eq!(
            per_subject(METER),
            self.model.totals(),
            "{when}: meter totals per subject"
        );
        // The sets of every restart are one: each start hashes under the
        // data directory's key.
        assert_eq!(
            per_subject(UNIQUE_METER),
            self.model.distinct_users(),
            "{when}: distinct users per subject"
        );

        let license = shared.licenses.get(LICENSE).expect("the license exists");
        let seats: BTreeMap<String, String> = license
            .seats
            .all()
            .map(|s| (s.fingerprint.clone(), s.seat_id.to_string()))
            .collect();
        assert_eq!(seats, self.model.seats, "{when}: seats held");

        let ring = shared.keys.load();
        for (name, live) in &self.model.keys {
            let found = ring.lookup(&key_plaintext(name)).is_some();
            assert_eq!(found, *live, "{when}: key {name} live");
        }
    }
}

async fn send(handle: &EngineHandle, op: &Op, now: i64) -> Sent {
    match op {
        Op::Ingest { texts, new } => {
            let window = handle.shared.window;
            let items = texts
                .iter()
                .map(|t| keymeter::event::decode_event_text(t, now, window).unwrap())
                .collect();
            let outcome = handle
                .send(Ingest {
                    items,
                    received_ms: now,
                    origin: Origin::Http {
                        tenant: "product:sim".into(),
                    },
                })
                .await?;
            assert!(outcome.rejected.is_empty(), "{:?}", outcome.rejected);
            assert_eq!(
                (outcome.accepted as usize, outcome.duplicates as usize),
                (new.len(), texts.len() - new.len()),
                "ingest counts (accepted, duplicates)"
            );
        }
        Op::Checkout {
            fingerprint,
            seat_id,
        } => {
            let lease = handle
                .send(CheckoutSeat {
                    license_id: LICENSE.into(),
                    fingerprint: fingerprint.clone(),
                    new_seat_id: seat_id.clone().into(),
                    token_sha256: lease_token(fingerprint),
                    audit: audit(),
                })
                .await?
                .unwrap_or_else(|r| panic!("checkout refused: {r:?}"));
            assert_eq!(lease.seat_id.to_string(), *seat_id);
        }
        Op::Release {
            seat_id,
            fingerprint,
        } => handle
            .send(ReleaseSeat {
                license_id: LICENSE.into(),
                seat_id: seat_id.clone().into(),
                // The token's digest must survive every restart for this
                // release to be accepted.
                by: SeatReleaser::Holder {
                    token_sha256: Some(lease_token(fingerprint)),
                },
                audit: audit(),
            })
            .await?
            .unwrap_or_else(|r| panic!("release refused: {r:?}")),
        Op::CreateKey { name } => {
            handle.send(create_key(name)).await?;
        }
        Op::RevokeKey { name } => {
            handle
                .send(RevokeApiKey {
                    id: key_id(name).into(),
                    audit: audit(),
                })
                .await?
        }
    }
    Ok(())
}

fn create_key(name: &str) -> CreateApiKey {
    CreateApiKey {
        key: ApiKeyRecord {
            id: key_id(name).into(),
            name: name.into(),
            scopes: vec![keymeter::scope::Scope::Ingest],
            key_sha256: keymeter::api_keys::key_digest(&key_plaintext(name)),
            created_ms: 0,
        },
        product: None,
        audit: audit(),
    }
}

fn new_license(handle: &EngineHandle, now_ms: i64) -> CreateLicense {
    let shared = &handle.shared;
    let new: NewLicense = serde_json::from_value(json!({"product": "p", "customer": "c",
        "policy": {"type": "seat", "seats": {"max": SEATS_MAX, "mode": "floating",
        "lease_ttl_s": 30 * 86_400}}}))
    .unwrap();
    let now = keymeter::license::utc_ms(now_ms);
    let license = License::create(LicenseId::from(LICENSE), new, now).unwrap();
    let key = keymeter::crypto::generate_license_key();
    CreateLicense {
        license: Box::new(license),
        secret: LicenseSecret {
            lookup: shared.crypto.lookup_digest(&key),
            sealed_key: shared.crypto.seal(key.as_bytes(), LICENSE.as_bytes()),
        },
        audit: audit(),
    }
}

pub fn audit() -> Audit {
    Audit {
        actor: Some("sim".into()),
        at_ms: 0,
        request_id: None,
    }
}

/// How often each identity the simulation makes appears in the log, read up to `head`
/// from `from`.
pub fn scan_identities(dir: &LogDir, from: Seq, head: Seq, into: &mut BTreeMap<String, u32>) {
    if from > head {
        return;
    }
    for entry in dir.read_range(from, head).expect("the log reads back") {
        let entry = entry.expect("a record reads back");
        if let Some(identity) = identity(&Record::decode(&entry.payload).expect("a record decodes"))
        {
            *into.entry(identity).or_default() += 1;
        }
    }
}

/// The lease token digest the machine `fingerprint` presents.
fn lease_token(fingerprint: &str) -> [u8; 32] {
    let mut t = [0x7b; 32];
    let fp = fingerprint.as_bytes();
    t[..fp.len().min(32)].copy_from_slice(&fp[..fp.len().min(32)]);
    t
}

fn identity(record: &Record) -> Option<String> {
    Some(match record {
        Record::Event(e) | Record::TenantEvent { event: e, .. } => {
            let v: serde_json::Value = serde_json::from_str(&e.raw).ok()?;
            format!("event:{}", v["id"].as_str()?)
        }
        Record::SeatCheckedOut { seat, .. } | Record::SeatLeased { seat, .. } => {
            format!("checkout:{}", seat.seat_id)
        }
        Record::SeatReleased { seat_id, .. } => format!("release:{seat_id}"),
        Record::ApiKeyCreated { key, .. } if key.name.starts_with("simkey") => {
            format!("key:{}", key.id)
        }
        Record::ApiKeyRevoked { id, .. } => format!("revoke:{id}"),
        _ => return None,
    })
}
