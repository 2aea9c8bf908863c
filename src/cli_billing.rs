//! `keymeter billing …`: export a period's statements from a running server
//! into files with a manifest, and verify a statement (and proofs) offline
//! with the server's published keys.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use hyper::Method;
use keymeter_client::statements;
use sha2::{Digest, Sha256};

use crate::cli_license::request_into;

#[derive(Args)]
pub struct BillingArgs {
    #[command(subcommand)]
    command: BillingCommand,
}

#[derive(Subcommand)]
enum BillingCommand {
    /// Download every statement version of a period from a running server
    /// into DIR: `statements-<period>.<format>` and `manifest.json` (SHA-256
    /// of the file, each statement's root). The same log gives the same files.
    Export(ExportArgs),
    /// Check a statement as the server serves it (`{"statement", "jws"}`):
    /// its signature against a saved JWK Set, and that each line's Merkle
    /// sum root totals its quantity; with --proof, that an event is counted;
    /// with --previous and --consistency, that it only added events to an
    /// earlier version. Exit status 0 when everything verifies, 1 otherwise.
    Verify(VerifyArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Csv,
    Jsonl,
}

impl Format {
    fn as_str(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
        }
    }
}

#[derive(Args)]
struct ExportArgs {
    /// Server base URL.
    #[arg(long, env = "KEYMETER_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// An API key with the read scope, not bound to a product.
    #[arg(long, env = "KEYMETER_API_KEY", hide_env_values = true)]
    api_key: String,
    /// The period's label: `2026-11` (monthly cycle) or `2026-11-05` (daily).
    #[arg(long)]
    period: String,
    /// csv: one row per line; jsonl: one signed statement per line.
    #[arg(long, value_enum, default_value = "csv")]
    format: Format,
    /// Directory to write into (created if missing).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct VerifyArgs {
    /// The statement as served (a version from GET /api/v1/billing/statements/{id}).
    statement: PathBuf,
    /// The server's JWK Set (a saved /.well-known/jwks.json).
    #[arg(long)]
    jwks: PathBuf,
    /// An inclusion proof (GET …/statements/{id}/proof) to check against it.
    #[arg(long)]
    proof: Option<PathBuf>,
    /// An earlier version of the same statement (needs --consistency).
    #[arg(long, requires = "consistency")]
    previous: Option<PathBuf>,
    /// The consistency proof from --previous to this version (GET …/consistency).
    #[arg(long, requires = "previous")]
    consistency: Option<PathBuf>,
}

pub fn run(args: BillingArgs) -> std::process::ExitCode {
    let outcome = match args.command {
        BillingCommand::Export(a) => export(&a),
        BillingCommand::Verify(a) => verify(&a),
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn export(args: &ExportArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let format = args.format.as_str();
    let name = format!("statements-{}.{format}", args.period);
    let path = args.out.join(&name);
    let part = args.out.join(format!("{name}.part"));
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&part)
            .with_context(|| format!("cannot create {}", part.display()))?,
    );
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(indicatif::ProgressStyle::with_template(
        "{spinner} {bytes} ({bytes_per_sec}) {msg}",
    )?);
    bar.set_message(name.clone());
    let mut sha = Sha256::new();
    let mut error_body = Vec::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let target = format!(
        "/api/v1/billing/periods/{}/export?format={format}",
        args.period
    );
    let status = runtime.block_on(request_into(
        &args.url,
        Method::GET,
        &target,
        Some(&args.api_key),
        None,
        |data| {
            if error_body.len() < 64 * 1024 {
                error_body.extend_from_slice(data);
            }
            sha.update(data);
            bar.inc(data.len() as u64);
            file.write_all(data).context("cannot write the export")
        },
    ))?;
    bar.finish_and_clear();
    if status != 200 {
        let _ = std::fs::remove_file(&part);
        bail!(
            "the server answered {status}: {}",
            String::from_utf8_lossy(&error_body)
        );
    }
    file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&part, &path)?;
    let roots = statement_roots(&path, args.format)?;
    let manifest = serde_json::json!({
        "period": args.period,
        "format": format,
        "files": [{"name": name, "sha256": hex::encode(sha.finalize()), "bytes": std::fs::metadata(&path)?.len()}],
        "statements": roots.len(),
        "roots": roots,
    });
    let mut text = serde_json::to_string_pretty(&manifest)?;
    text.push('\n');
    std::fs::write(args.out.join("manifest.json"), text)?;
    println!(
        "{} statement versions of {} in {}",
        roots.len(),
        args.period,
        path.display()
    );
    Ok(())
}

/// Each statement version's `{statementId, version, root}`, in file order.
fn statement_roots(path: &Path, format: Format) -> anyhow::Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(path)?;
    let mut out: Vec<serde_json::Value> = Vec::new();
    let mut push = |id: &str, version: &str, root: &str| {
        let entry = serde_json::json!({"statementId": id, "version": version.parse::<u32>().unwrap_or(0), "root": root});
        if out.last() != Some(&entry) {
            out.push(entry);
        }
    };
    match format {
        Format::Jsonl => {
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line)?;
                let s = &v["statement"];
                let version = s["version"].to_string();
                push(
                    s["statement_id"].as_str().unwrap_or(""),
                    &version,
                    s["root"].as_str().unwrap_or(""),
                );
            }
        }
        Format::Csv => {
            // Columns: statement_id, version, …, statement_root (second to last).
            for row in text.lines().skip(1) {
                let cols: Vec<&str> = row.split(',').collect();
                if cols.len() >= 3 {
                    push(cols[0], cols[1], cols[cols.len() - 2]);
                }
            }
        }
    }
    Ok(out)
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn verify(args: &VerifyArgs) -> anyhow::Result<()> {
    let keys = keymeter_client::Keys::from_jwks(&read(&args.jwks)?)?;
    let verified = statements::verify_statement(&read(&args.statement)?, &keys)
        .with_context(|| format!("{} does not verify", args.statement.display()))?;
    let s = &verified.statement;
    println!(
        "statement {} version {} ({} {}): signed by {}, {} lines, {} events",
        s.statement_id,
        s.version,
        s.subject,
        s.period.label,
        verified.kid,
        s.lines.len(),
        s.leaves
    );
    for line in &s.lines {
        println!(
            "  line {} {}: {} ({} events)",
            line.line_id, line.meter, line.quantity, line.leaves
        );
    }
    if let Some(proof) = &args.proof {
        let event = statements::verify_inclusion(&verified, &read(proof)?)
            .with_context(|| format!("{} does not verify", proof.display()))?;
        println!(
            "event {} (log seq {}) is counted in line {}",
            event.identity, event.seq, event.line_id
        );
    }
    if let (Some(previous), Some(consistency)) = (&args.previous, &args.consistency) {
        let old = statements::verify_statement(&read(previous)?, &keys)
            .with_context(|| format!("{} does not verify", previous.display()))?;
        statements::verify_consistency(&old, &verified, &read(consistency)?)
            .with_context(|| format!("{} does not verify", consistency.display()))?;
        println!(
            "version {} only adds events to version {}",
            s.version, old.statement.version
        );
    }
    Ok(())
}
