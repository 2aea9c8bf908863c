//! The `keymeter` command line.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use keymeter::config::Config;
use keymeter::engine::{self, Engine, SystemClock};
use keymeter::tls::{TlsFiles, TlsListener, TlsPeer};

mod cli_keys;
mod cli_license;

/// The engine allocates many small, short-lived values per event (parsed
/// JSON, records); mimalloc handles that pattern markedly better than glibc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "keymeter",
    version,
    about = "Event-sourced usage metering and licensing engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API and the engine (embedded: no other server needed).
    Serve(ConfigArgs),
    /// Drop every projection and rebuild it from the event log.
    Replay(ConfigArgs),
    /// Inspect the event log.
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
    /// Manage licenses on a running server (HTTP client; needs an admin key).
    License(cli_license::LicenseArgs),
    /// Rotate the master key or the signing key (server stopped).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Tamper evidence: signed checkpoints and anchors.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Re-wrap the keyring under a new master key (--master), or start
    /// signing with a new key (--signing). Resumable: run it again after an
    /// interruption.
    Rotate {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        rotate: cli_keys::RotateArgs,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute the hash chain and verify every signed checkpoint, and every
    /// anchored one; name the first tampered position. Read-only, safe while
    /// the server runs. Exit status: 0 intact, 1 tampering found, 2 the
    /// audit could not run.
    Verify(AuditVerifyArgs),
}

#[derive(Args)]
struct AuditVerifyArgs {
    #[command(flatten)]
    config: ConfigArgs,
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
}

#[derive(Subcommand)]
enum LogCommand {
    /// Check every frame's checksum, the sequence numbers and the hash chain;
    /// report the first bad position. Read-only.
    Verify(ConfigArgs),
}

/// Settings: a flag beats its `KEYMETER_*` variable, which beats the config
/// file, which beats the built-in default.
#[derive(Args, Clone)]
struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, env = "KEYMETER_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (log and projections) [default: ./keymeter-data].
    #[arg(long, env = "KEYMETER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// HTTP listen address [default: 127.0.0.1:8080].
    #[arg(long, env = "KEYMETER_LISTEN")]
    listen: Option<SocketAddr>,
    /// Serve the API over HTTPS with this PEM certificate chain (needs --tls-key).
    #[arg(long, env = "KEYMETER_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "KEYMETER_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// PEM CA certificate(s): verify client certificates against it and
    /// require one for ingest (needs --tls-cert and --tls-key).
    #[arg(long, env = "KEYMETER_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,
    /// Serve /metrics on this address without authentication (and not on the API listener).
    #[arg(long, env = "KEYMETER_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// API key to create as the first admin key when there is none yet (at least 24 characters).
    #[arg(long, env = "KEYMETER_BOOTSTRAP_ADMIN_KEY", hide_env_values = true)]
    bootstrap_admin_key: Option<String>,
    /// Oldest accepted event time, before the receive time (e.g. "35d") [default: 35d].
    #[arg(long, env = "KEYMETER_EVENT_TIME_BACK", value_parser = humantime::parse_duration)]
    event_time_back: Option<Duration>,
    /// Newest accepted event time, after the receive time (e.g. "5m") [default: 5m].
    #[arg(long, env = "KEYMETER_EVENT_TIME_AHEAD", value_parser = humantime::parse_duration)]
    event_time_ahead: Option<Duration>,
    /// Largest accepted request body in bytes [default: 8388608].
    #[arg(long, env = "KEYMETER_BODY_BYTES_MAX")]
    body_bytes_max: Option<usize>,
    /// Most events in one ingest request [default: 10000].
    #[arg(long, env = "KEYMETER_REQUEST_EVENTS_MAX")]
    request_events_max: Option<usize>,
    /// Most records in one log batch [default: 20000].
    #[arg(long, env = "KEYMETER_BATCH_RECORDS_MAX")]
    batch_records_max: Option<usize>,
    /// Log segment size at which a new segment starts [default: 67108864].
    #[arg(long, env = "KEYMETER_SEGMENT_BYTES_MAX")]
    segment_bytes_max: Option<u64>,
    /// Master key file (base64, 32 bytes); never inside the data directory
    /// [default: <data-dir>.master-key, created on first start]. The key
    /// itself may come from KEYMETER_MASTER_KEY (base64) instead.
    #[arg(long, env = "KEYMETER_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
    /// Lifetime of signed validation verdicts (e.g. "5m") [default: 5m].
    #[arg(long, env = "KEYMETER_TOKEN_TTL", value_parser = humantime::parse_duration)]
    token_ttl: Option<Duration>,
    /// Accepted clock difference of signed calls (e.g. "5m") [default: 5m].
    #[arg(long, env = "KEYMETER_SIGNATURE_TOLERANCE", value_parser = humantime::parse_duration)]
    signature_tolerance: Option<Duration>,
    /// Kafka bootstrap servers (HOST:PORT[,HOST:PORT…]); enables the Kafka source.
    #[arg(long, env = "KEYMETER_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// Kafka topic to consume (repeat the flag, or comma-separate in the variable).
    #[arg(
        long = "kafka-topic",
        env = "KEYMETER_KAFKA_TOPICS",
        value_delimiter = ','
    )]
    kafka_topics: Vec<String>,
    /// Kafka consumer group [default: keymeter].
    #[arg(long, env = "KEYMETER_KAFKA_GROUP")]
    kafka_group: Option<String>,
    /// Topic that receives a copy of every quarantined Kafka message.
    #[arg(long, env = "KEYMETER_KAFKA_DEAD_LETTER_TOPIC")]
    kafka_dead_letter_topic: Option<String>,
    /// Append a signed checkpoint once this many records are not covered by
    /// one [default: 10000].
    #[arg(long, env = "KEYMETER_AUDIT_CHECKPOINT_RECORDS")]
    audit_checkpoint_records: Option<u64>,
    /// ... or once the oldest uncovered record is this old (e.g. "60s")
    /// [default: 60s].
    #[arg(long, env = "KEYMETER_AUDIT_CHECKPOINT_INTERVAL", value_parser = humantime::parse_duration)]
    audit_checkpoint_interval: Option<Duration>,
    /// Also append every checkpoint to this file (JSON lines, fsynced);
    /// never inside the data directory.
    #[arg(long, env = "KEYMETER_AUDIT_ANCHOR_FILE")]
    audit_anchor_file: Option<PathBuf>,
}

impl ConfigArgs {
    /// Kafka flags create the `[kafka]` section when the file has none.
    fn apply_kafka(&self, cfg: &mut Config) {
        let any = self.kafka_brokers.is_some()
            || !self.kafka_topics.is_empty()
            || self.kafka_group.is_some()
            || self.kafka_dead_letter_topic.is_some();
        if !any {
            return;
        }
        let kafka = cfg.kafka.get_or_insert_with(Default::default);
        if let Some(brokers) = &self.kafka_brokers {
            kafka.brokers = brokers.clone();
        }
        if !self.kafka_topics.is_empty() {
            kafka.topics = self.kafka_topics.clone();
        }
        if let Some(group) = &self.kafka_group {
            kafka.group = group.clone();
        }
        if let Some(topic) = &self.kafka_dead_letter_topic {
            kafka.dead_letter_topic = Some(topic.clone());
        }
    }

    fn load(&self) -> anyhow::Result<Config> {
        let mut cfg = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => {$(
                if let Some(v) = self.$field.clone() {
                    cfg.$field = v;
                }
            )*};
        }
        set!(
            data_dir,
            listen,
            event_time_back,
            event_time_ahead,
            body_bytes_max,
            request_events_max,
            batch_records_max,
            segment_bytes_max,
            signature_tolerance,
            audit_checkpoint_records,
            audit_checkpoint_interval
        );
        if self.audit_anchor_file.is_some() {
            cfg.audit_anchor_file = self.audit_anchor_file.clone();
        }
        if self.metrics_listen.is_some() {
            cfg.metrics_listen = self.metrics_listen;
        }
        if self.tls_cert.is_some() {
            cfg.tls_cert = self.tls_cert.clone();
        }
        if self.tls_key.is_some() {
            cfg.tls_key = self.tls_key.clone();
        }
        if self.tls_client_ca.is_some() {
            cfg.tls_client_ca = self.tls_client_ca.clone();
        }
        if self.bootstrap_admin_key.is_some() {
            cfg.bootstrap_admin_key = self.bootstrap_admin_key.clone();
        }
        if self.master_key_file.is_some() {
            cfg.master_key_file = self.master_key_file.clone();
        }
        if let Some(ttl) = self.token_ttl {
            cfg.token_ttl = ttl;
        }
        if let Ok(key) = std::env::var("KEYMETER_MASTER_KEY") {
            cfg.master_key = Some(keymeter::crypto::SecretString::new(key));
        }
        self.apply_kafka(&mut cfg);
        cfg.validate()?;
        Ok(cfg)
    }
}

fn main() -> std::process::ExitCode {
    let thp_off = keymeter::memory::disable_transparent_huge_pages();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEYMETER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    tracing::debug!(thp_off, "transparent huge pages");
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => args.load().and_then(serve),
        Command::Replay(args) => args.load().and_then(replay),
        Command::Log {
            command: LogCommand::Verify(args),
        } => args.load().and_then(verify),
        Command::License(args) => cli_license::run(args),
        Command::Keys {
            command: KeysCommand::Rotate { config, rotate },
        } => config.load().and_then(|cfg| cli_keys::rotate(cfg, rotate)),
        Command::Audit {
            command: AuditCommand::Verify(args),
        } => return audit_verify(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn serve(cfg: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("keymeter-http")
        .build()?;
    // Before the engine opens: a bad certificate stops the start at once.
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => Some(keymeter::tls::server_config(&TlsFiles {
            cert,
            key,
            client_ca: cfg.tls_client_ca.as_deref(),
        })?),
        _ => None,
    };
    tracing::info!(data_dir = %cfg.data_dir.display(), "starting keymeter");
    let started = Engine::open(&cfg, Arc::new(SystemClock))
        .with_context(|| format!("cannot open data directory {}", cfg.data_dir.display()))?;
    let r = &started.recovery;
    tracing::info!(
        head_seq = r.head_seq,
        segments = r.segments,
        torn_tail_bytes = r.torn_tail_bytes,
        replayed_records = started.replayed_records,
        "event log open"
    );
    let engine = started.engine;
    let handle = engine.handle();
    let kafka = match &cfg.kafka {
        None => None,
        Some(k) => Some(keymeter::source::kafka::KafkaSource::start(
            k,
            handle.clone(),
        )?),
    };
    let cfg = Arc::new(cfg);
    let state = keymeter::api::AppState::new(handle.clone(), cfg.clone());
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("cannot listen on {}", cfg.listen))?;
        let addr = listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "keymeter listening on {scheme}://{addr}")?;
        if let Some(key) = &started.bootstrap_key {
            writeln!(
                stdout,
                "\nCreated the first admin API key. It is shown only this once; store it now:\n\n  {key}\n\n\
                 Try it:\n  curl -H 'Authorization: Bearer {key}' {scheme}://{addr}/api/v1/meters\n"
            )?;
        }
        stdout.flush()?;
        drop(stdout);
        if let Some(metrics_addr) = cfg.metrics_listen {
            let l = tokio::net::TcpListener::bind(metrics_addr)
                .await
                .with_context(|| format!("cannot listen on {metrics_addr}"))?;
            tracing::info!(addr = %l.local_addr()?, "metrics listener");
            tokio::spawn(async move {
                if let Err(e) = axum::serve(l, keymeter::api::metrics_router()).await {
                    tracing::error!(error = %e, "metrics listener failed");
                }
            });
        }
        let client_certs = cfg.tls_client_ca.is_some();
        tracing::info!(%addr, tls = tls.is_some(), client_certs, "HTTP API listening");
        let shutdown = shutdown_signal(handle.shared.clone());
        let router = keymeter::api::router(state);
        match tls {
            None => {
                axum::serve(listener, router)
                    .with_graceful_shutdown(shutdown)
                    .await?
            }
            Some(config) => {
                axum::serve(
                    TlsListener::new(listener, config),
                    router.into_make_service_with_connect_info::<TlsPeer>(),
                )
                .with_graceful_shutdown(shutdown)
                .await?
            }
        }
        anyhow::Ok(())
    })?;
    if let Some(kafka) = kafka {
        // Before the engine drains: batches in the engine are awaited, the
        // rest is consumed again from the stored positions on the next start.
        tracing::info!("stopping the Kafka source");
        kafka.stop();
    }
    drop(handle);
    runtime.shutdown_timeout(Duration::from_secs(5));
    tracing::info!("HTTP server stopped; draining the writer");
    engine.shutdown()?;
    tracing::info!("keymeter stopped cleanly");
    Ok(())
}

/// Resolves on Ctrl-C, SIGTERM, or when the engine has failed (so the process
/// exits instead of answering 503 forever).
async fn shutdown_signal(shared: Arc<engine::Shared>) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    let failed = async {
        while !shared.failed.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C received; shutting down"),
        _ = term => tracing::info!("SIGTERM received; shutting down"),
        _ = failed => tracing::error!("engine failed; shutting down"),
    }
}

fn replay(cfg: Config) -> anyhow::Result<()> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} replaying [{bar:40}] {pos}/{len} records ({per_sec}, eta {eta})",
        )?
        .progress_chars("=> "),
    );
    let head = engine::rebuild(&cfg, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .with_context(|| format!("cannot rebuild projections in {}", cfg.data_dir.display()))?;
    bar.finish();
    println!("rebuilt all projections from {head} log records");
    Ok(())
}

fn verify(cfg: Config) -> anyhow::Result<()> {
    let report = keymeter::log::verify(&cfg.log_dir())?;
    println!(
        "log ok: {} records in {} segments ({} bytes), head seq {}, head hash {}",
        report.records,
        report.segments,
        report.bytes,
        report.head_seq,
        hex::encode(report.head_hash)
    );
    if let Some(t) = &report.torn_tail {
        println!(
            "torn tail: {} bytes at {} offset {} ({}); the next start cuts it and keeps a copy",
            t.bytes,
            t.segment.display(),
            t.offset,
            t.reason
        );
    }
    Ok(())
}

/// `keymeter audit verify`: 0 intact, 1 tampering found, 2 could not audit.
fn audit_verify(args: &AuditVerifyArgs) -> std::process::ExitCode {
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
    let cfg = args.config.load()?;
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
    let report = audit_log(&cfg.log_dir(), &keys, &anchors.anchors)
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
