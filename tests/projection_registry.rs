//! A projection is one entry in the registry: a projection defined here,
//! outside the crate, is opened, fed live batches, caught up on start after
//! its state was lost, and rebuilt by replay, with no other change.

mod common;

use std::sync::Arc;

use keymeter::config::Config;
use keymeter::engine::protocol::CreateApiKey;
use keymeter::engine::{Engine, SystemClock};
use keymeter::log::Seq;
use keymeter::projection::store::tree_dump;
use keymeter::projection::{
    checkpoint, Applied, OpenContext, Projection, ProjectionError, ProjectionSpec, Registry, Store,
    CHECKPOINT_KEY,
};
use keymeter::record::{ApiKeyRecord, Audit, Record};

const TREE: &str = "test_key_names";

/// Every API key ever created, by log seq → key name.
struct KeyNames {
    tree: sled::Tree,
    applied: Seq,
}

fn open_key_names(ctx: &OpenContext<'_>) -> Result<Box<dyn Projection>, ProjectionError> {
    let tree = ctx.store.db.open_tree(TREE)?;
    Ok(Box::new(KeyNames {
        applied: checkpoint(&tree)?,
        tree,
    }))
}

impl Projection for KeyNames {
    fn name(&self) -> &'static str {
        "key_names"
    }

    fn applied(&self) -> Seq {
        self.applied
    }

    fn apply(&mut self, records: &[Applied<'_>]) -> Result<bool, ProjectionError> {
        let Some(last) = records.last().map(|a| a.seq) else {
            return Ok(false);
        };
        if last <= self.applied {
            return Ok(false);
        }
        let mut batch = sled::Batch::default();
        for a in records.iter().filter(|a| a.seq > self.applied) {
            if let Record::ApiKeyCreated { key, .. } = a.record {
                batch.insert(&a.seq.to_be_bytes(), key.name.as_bytes());
            }
        }
        batch.insert(CHECKPOINT_KEY, &last.to_be_bytes());
        self.tree.apply_batch(batch)?;
        self.applied = last;
        Ok(true)
    }

    fn flush(&mut self) -> Result<(), ProjectionError> {
        Ok(())
    }
}

fn registry() -> Registry {
    Registry::standard().with(ProjectionSpec {
        name: "key_names",
        trees: &[TREE],
        open: open_key_names,
    })
}

fn key(name: &str) -> CreateApiKey {
    CreateApiKey {
        key: ApiKeyRecord {
            id: format!("id-{name}").into(),
            name: name.into(),
            scopes: vec![keymeter::scope::Scope::Ingest],
            key_sha256: keymeter::api_keys::key_digest(&format!("km_secret_{name}_0123456789")),
            created_ms: 0,
        },
        product: None,
        audit: Audit {
            actor: Some("test".into()),
            at_ms: 0,
            request_id: None,
        },
    }
}

/// The test tree's content, checkpoint excluded.
fn names(cfg: &Config) -> Vec<(Vec<u8>, Vec<u8>)> {
    let store = Store::open(&cfg.state_dir()).unwrap();
    tree_dump(&store.db.open_tree(TREE).unwrap()).unwrap()
}

/// What the log says the tree must hold.
fn expected(cfg: &Config) -> Vec<(Vec<u8>, Vec<u8>)> {
    let head = keymeter::log::verify(&cfg.log_dir()).unwrap().head_seq;
    let mut out = Vec::new();
    for entry in keymeter::log::read_range(&cfg.log_dir(), 1, head).unwrap() {
        let entry = entry.unwrap();
        if let Record::ApiKeyCreated { key, .. } = Record::decode(&entry.payload).unwrap() {
            out.push((entry.seq.to_be_bytes().to_vec(), key.name.into_bytes()));
        }
    }
    out
}

fn run(cfg: &Config, keys: &[&str]) {
    let started = Engine::open_with(cfg, Arc::new(SystemClock), &registry()).unwrap();
    let handle = started.engine.handle();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for name in keys {
        rt.block_on(handle.send(key(name))).unwrap();
    }
    drop(handle);
    started.engine.shutdown().unwrap();
}

#[test]
fn a_registered_projection_is_fed_live_caught_up_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::engine::config(dir.path());

    // Live: the projector hands it every batch (the bootstrap key included).
    run(&cfg, &["alpha", "beta"]);
    let live = names(&cfg);
    assert_eq!(live, expected(&cfg));
    let bootstrap = b"bootstrap-admin".to_vec();
    let got: Vec<_> = live.iter().map(|(_, v)| v.clone()).collect();
    assert_eq!(got, [bootstrap, b"alpha".to_vec(), b"beta".to_vec()]);

    // Catch-up: its state lost while stopped, the next start restores it
    // from the log before serving, and it keeps following.
    {
        let store = Store::open(&cfg.state_dir()).unwrap();
        store.db.open_tree(TREE).unwrap().clear().unwrap();
        store.db.flush().unwrap();
    }
    run(&cfg, &["gamma"]);
    let caught_up = names(&cfg);
    assert_eq!(caught_up.len(), 4);
    assert_eq!(caught_up, expected(&cfg));

    // Replay: dropped and rebuilt with every other projection, byte-identical.
    let counters_before = Store::open(&cfg.state_dir())
        .unwrap()
        .counters_dump()
        .unwrap();
    keymeter::engine::rebuild_with(&cfg, &registry(), |_, _| {}).unwrap();
    assert_eq!(names(&cfg), caught_up);
    let store = Store::open(&cfg.state_dir()).unwrap();
    assert_eq!(store.counters_dump().unwrap(), counters_before);
    assert_eq!(store.api_keys().unwrap().len(), 4);
    drop(store);

    // An engine without it opens the same data and leaves its tree alone.
    let started = Engine::open(&cfg, Arc::new(SystemClock)).unwrap();
    started.engine.shutdown().unwrap();
    assert_eq!(names(&cfg), caught_up);
}
