//! `keymeter keys rotate`: a new master key (re-wraps the keyring) or a new
//! signing key, with the server stopped. Each rotation is a `KeysRotated`
//! record in the log, with the operating-system user as the actor.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use keymeter::config::Config;
use keymeter::crypto::keyring::{keyring_path, Kek, Keyring};
use keymeter::crypto::{generate_key_file, is_inside, load_master_key, MasterKey};
use keymeter::log::{Log, LogConfig, LogError};
use keymeter::record::{Audit, Record};

#[derive(Args, Clone)]
pub struct RotateArgs {
    /// Re-wrap every keyring entry under a new master key.
    #[arg(long, conflicts_with = "signing", required_unless_present = "signing")]
    pub master: bool,
    /// Where the new master key is (created there, mode 0600, if missing).
    /// Never inside the data directory.
    #[arg(long, requires = "master")]
    pub new_master_key_file: Option<PathBuf>,
    /// Start signing with a new Ed25519 key; the current one stays published
    /// until everything it signed has expired.
    #[arg(long)]
    pub signing: bool,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn audit() -> Audit {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    Audit {
        actor: Some(format!("cli:{user}")),
        at_ms: now_ms(),
        request_id: Some(keymeter::api_keys::generate_id()),
    }
}

pub fn rotate(cfg: Config, args: RotateArgs) -> anyhow::Result<()> {
    // The log lock first: no rotation under a running server, which holds
    // the keys in memory and would not see the change.
    let (mut log, _) = Log::open(
        &cfg.log_dir(),
        LogConfig {
            segment_bytes_max: cfg.segment_bytes_max,
        },
    )
    .map_err(|e| match e {
        LogError::Locked { .. } => {
            anyhow::anyhow!("the data directory is in use: stop the server first ({e})")
        }
        e => anyhow::anyhow!(e),
    })?;
    let (master, _) = load_master_key(
        cfg.master_key.as_ref().map(|s| s.expose()),
        cfg.master_key_file.as_deref(),
        &cfg.data_dir,
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    let kek = Kek::new(&master);
    let path = keyring_path(&cfg.data_dir);
    let mut ring = Keyring::load(&path)?.with_context(|| {
        format!(
            "no keyring at {}: start the server once to create it",
            path.display()
        )
    })?;
    let record = if args.master {
        let new_path = args.new_master_key_file.clone().unwrap_or_else(|| {
            let mut p = keymeter::crypto::default_key_path(&cfg.data_dir).into_os_string();
            p.push(".next");
            PathBuf::from(p)
        });
        rotate_master(&cfg, &mut ring, &path, &kek, &new_path)?
    } else {
        let old = ring.current_signing()?.id.clone();
        let publish_for = cfg.token_ttl.max(cfg.license_file_ttl_max).as_millis() as i64;
        let new = ring.rotate_signing(&kek, now_ms(), publish_for)?;
        ring.save(&path)?;
        println!(
            "new signing key {new}; {old} stays published for {} for tokens and license files it signed",
            humantime::format_duration(std::time::Duration::from_millis(publish_for as u64))
        );
        Record::KeysRotated {
            kind: "signing".into(),
            from: old,
            to: new,
            audit: audit(),
        }
    };
    log.append_batch(&[record.encode()])?;
    if let Record::KeysRotated { kind, audit, .. } = &record {
        tracing::info!(
            target: "keymeter::admin",
            action = %format!("keys.rotate_{kind}"),
            actor = audit.actor.as_deref().unwrap_or("-"),
            request_id = audit.request_id.as_deref().unwrap_or("-"),
            "admin action"
        );
    }
    Ok(())
}

fn rotate_master(
    cfg: &Config,
    ring: &mut Keyring,
    path: &std::path::Path,
    old: &Kek,
    new_path: &std::path::Path,
) -> anyhow::Result<Record> {
    anyhow::ensure!(
        !is_inside(new_path, &cfg.data_dir),
        "the new master key file {} is inside the data directory; keep it elsewhere",
        new_path.display()
    );
    let new_master: MasterKey = if new_path.exists() {
        load_master_key(None, Some(new_path), &cfg.data_dir)
            .map_err(|e| anyhow::anyhow!(e))?
            .0
    } else {
        let key = generate_key_file(new_path).map_err(|e| anyhow::anyhow!(e))?;
        println!(
            "created the new master key {} (mode 0600)",
            new_path.display()
        );
        key
    };
    let new = Kek::new(&new_master);
    anyhow::ensure!(
        new.id() != old.id(),
        "the new master key is the configured one already"
    );
    for e in &ring.entries {
        anyhow::ensure!(
            e.kek == old.id() || e.kek == new.id(),
            "keyring entry {} is wrapped by master key {}, neither the configured ({}) nor the new one ({})",
            e.id,
            e.kek,
            old.id(),
            new.id()
        );
    }
    let todo = ring.entries.iter().filter(|e| e.kek != new.id()).count();
    let bar = indicatif::ProgressBar::new(ring.entries.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("re-wrapping [{bar:40}] {pos}/{len} keys")?
            .progress_chars("=> "),
    );
    bar.set_position((ring.entries.len() - todo) as u64);
    // One entry at a time, saved after each: an interrupted rotation leaves
    // every entry wrapped by one of the two keys, and running the same
    // command again finishes it.
    for i in 0..ring.entries.len() {
        if ring.entries[i].kek == new.id() {
            continue;
        }
        ring.rewrap(i, old, &new)?;
        ring.save(path)?;
        bar.inc(1);
    }
    bar.finish();
    println!(
        "the keyring is now wrapped by master key {} ({}); start keymeter with it \
         (--master-key-file {} or KEYMETER_MASTER_KEY), then destroy the old key once no \
         backup made before this rotation needs it",
        new.id(),
        new_path.display(),
        new_path.display()
    );
    Ok(Record::KeysRotated {
        kind: "master".into(),
        from: old.id().to_owned(),
        to: new.id().to_owned(),
        audit: audit(),
    })
}
