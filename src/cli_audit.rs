//! `keymeter audit verify`: the hash chain, the signed checkpoints and the
//! anchors, checked offline.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use keymeter::config::{Config, KeyedDataArgs};

#[derive(Args)]
pub struct AuditVerifyArgs {
    #[command(flatten)]
    config: KeyedDataArgs,
    /// Anchors file (JSON lines) the log must match [default: the
    /// configured audit_anchor_file, when it exists].
    #[arg(long)]
    anchors: Option<PathBuf>,
    /// Verify with the public keys of this JWK Set (a saved
    /// /.well-known/jwks.json) instead of the master key.
    #[arg(long)]
    jwks: Option<PathBuf>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// The server's audit anchor file; used when it exists [default: the
    /// configuration's audit_anchor_file]. --anchors wins.
    #[arg(long, env = "KEYMETER_AUDIT_ANCHOR_FILE")]
    audit_anchor_file: Option<PathBuf>,
    /// The server's audit_checkpoint_records, which bounds the records a
    /// checkpoint may leave uncovered [default: the configuration's].
    #[arg(long, env = "KEYMETER_AUDIT_CHECKPOINT_RECORDS")]
    audit_checkpoint_records: Option<u64>,
    /// The server's batch_records_max, which bounds the records a
    /// checkpoint may leave uncovered [default: the configuration's].
    #[arg(long, env = "KEYMETER_BATCH_RECORDS_MAX")]
    batch_records_max: Option<usize>,
}

impl AuditVerifyArgs {
    /// The configuration, with the server settings the audit reads.
    fn config(&self) -> anyhow::Result<Config> {
        let mut cfg = self.config.load()?;
        if let Some(path) = &self.audit_anchor_file {
            cfg.audit_anchor_file = Some(path.clone());
        }
        if let Some(n) = self.audit_checkpoint_records {
            anyhow::ensure!(n >= 1, "--audit-checkpoint-records must be >= 1");
            cfg.audit_checkpoint_records = n;
        }
        if let Some(n) = self.batch_records_max {
            cfg.batch_records_max = n;
        }
        Ok(cfg)
    }
}

/// `keymeter audit verify`: 0 intact, 1 tampering found, 2 could not audit.
pub fn audit_verify(args: &AuditVerifyArgs) -> std::process::ExitCode {
    match run_audit(args) {
        Ok(tampered) if tampered => std::process::ExitCode::from(1),
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Audits the log and prints the report; returns whether tampering was found.
fn run_audit(args: &AuditVerifyArgs) -> anyhow::Result<bool> {
    use keymeter::audit::verify::{audit_log, read_anchors, Anchors};
    let cfg = args.config()?;
    let keys = audit_keys(&cfg, args.jwks.as_deref())?;
    let anchors_path = args
        .anchors
        .clone()
        .or_else(|| cfg.audit_anchor_file.clone().filter(|p| p.exists()));
    // Read before the log: an anchor is written only once its checkpoint is
    // durable, so every anchor read now must be in the log scanned next,
    // even while the server appends.
    let anchors = match &anchors_path {
        None => Anchors::default(),
        Some(path) => read_anchors(path)
            .with_context(|| format!("cannot read the anchors file {}", path.display()))?,
    };
    // A running server signs at least every `audit_checkpoint_records`
    // records plus the batch that crosses the count; a crash between two
    // checkpoints can leave that much unsigned twice over.
    let uncovered_max = 2 * (cfg.audit_checkpoint_records + cfg.batch_records_max as u64);
    let report = audit_log(&cfg.log_dir(), &keys, &anchors.anchors, uncovered_max)
        .with_context(|| format!("cannot read the log in {}", cfg.log_dir().display()))?;
    let tampered = report.finding.is_some();
    if args.json {
        let mut json = report.to_json();
        json["anchors_file"] =
            serde_json::json!(anchors_path.as_ref().map(|p| p.display().to_string()));
        json["anchors"] = serde_json::json!(anchors.anchors.len());
        json["anchor_lines_skipped"] = anchors
            .skipped
            .iter()
            .map(|(line, why)| serde_json::json!({"line": line, "reason": why}))
            .collect();
        println!("{json:#}");
    } else {
        let mut out = std::io::stdout().lock();
        if tampered {
            writeln!(
                out,
                "audit FAILED: the log was tampered with (details on stderr)"
            )?;
        } else {
            writeln!(
                out,
                "audit ok: the log is intact and every checkpoint verifies"
            )?;
        }
        write!(out, "{}", report.summary())?;
        if let Some(path) = &anchors_path {
            writeln!(
                out,
                "anchors: {} of {} matched ({})",
                report.anchors_matched,
                anchors.anchors.len(),
                path.display()
            )?;
        }
        for (line, why) in &anchors.skipped {
            writeln!(
                out,
                "anchors file line {line} skipped: not a checkpoint ({why})"
            )?;
        }
    }
    if let Some(finding) = &report.finding {
        eprintln!("TAMPERED: {finding}");
    }
    Ok(tampered)
}

/// The public keys to verify with: a saved JWK Set, or the engine's own key
/// from the master key `serve` uses (never generating one).
fn audit_keys(
    cfg: &Config,
    jwks: Option<&std::path::Path>,
) -> anyhow::Result<keymeter::audit::verify::VerifyingKeys> {
    use keymeter::audit::verify::VerifyingKeys;
    use keymeter::crypto::{all_signing_keys, default_key_path, load_master_key};
    if let Some(path) = jwks {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the JWK Set {}", path.display()))?;
        return VerifyingKeys::from_jwks(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()));
    }
    let env = cfg.master_key.as_ref().map(|k| k.expose());
    if env.is_none() && cfg.master_key_file.is_none() {
        let default = default_key_path(&cfg.data_dir);
        anyhow::ensure!(
            default.exists(),
            "no master key: KEYMETER_MASTER_KEY is unset and {} does not exist; pass \
             --master-key-file, or --jwks with the server's /.well-known/jwks.json",
            default.display()
        );
    }
    let (master, _) = load_master_key(env, cfg.master_key_file.as_deref(), &cfg.data_dir)
        .map_err(anyhow::Error::msg)?;
    let keys = all_signing_keys(&cfg.data_dir, &master)?;
    Ok(VerifyingKeys::from_keys(keys))
}
