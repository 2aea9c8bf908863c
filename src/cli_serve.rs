//! `keymeter serve`: the HTTP API (and the Kafka source) over one engine.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use keymeter::config::Config;
use keymeter::engine::{self, Engine, SystemClock};
use keymeter::http_serve::{Connections, Limits};
use keymeter::source::kafka::KafkaSource;
use keymeter::source::SourceHealth;
use keymeter::tls::{TlsFiles, TlsListener};

/// Serves until Ctrl-C, SIGTERM or an engine failure, then stops the Kafka
/// source and drains the writer.
pub fn serve(mut cfg: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("keymeter-http")
        .build()?;
    // Before the engine opens: a bad certificate stops the start at once.
    let tls = tls_config(&cfg)?;
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
    // The keyring is open and the first key exists: the configuration no
    // longer needs to hold secrets for the process's life.
    cfg.master_key = None;
    cfg.bootstrap_admin_key = None;
    let engine = started.engine;
    let handle = engine.handle();
    let (kafka, source_health) = match &cfg.kafka {
        None => (None, None),
        Some(k) => {
            let health = Arc::new(SourceHealth::new());
            handle.shared.watermarks.register(health.clone());
            let source = KafkaSource::start(k, handle.clone(), health.clone())?;
            (Some(source), Some(health))
        }
    };
    let cfg = Arc::new(cfg);
    let state = keymeter::api::AppState::open(handle.clone(), cfg.clone(), source_health)?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("cannot listen on {}", cfg.listen))?;
        let addr = listener.local_addr()?;
        // Before the address is announced: a SIGTERM right after it must
        // shut down cleanly, not kill the process.
        let shutdown = shutdown_signal(handle.shared.clone())?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        announce(scheme, addr, started.bootstrap_key.as_deref())?;
        if let Some(metrics_addr) = cfg.metrics_listen {
            spawn_metrics_listener(metrics_addr).await?;
        }
        let client_certs = cfg.tls_client_ca.is_some();
        tracing::info!(%addr, tls = tls.is_some(), client_certs, "HTTP API listening");
        let connections = match tls {
            None => Connections::Tcp(listener),
            Some(config) => Connections::Tls(TlsListener::new(
                listener,
                config,
                cfg.tls_handshake_timeout,
            )),
        };
        let limits = Limits {
            header_read_timeout: cfg.header_read_timeout,
            body_read_timeout: cfg.body_read_timeout,
            connections_max: cfg.connections_max,
            shutdown_grace: cfg.shutdown_grace,
        };
        keymeter::http_serve::serve(connections, keymeter::api::router(state), limits, shutdown)
            .await
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

/// The HTTPS settings when a certificate and its key are configured.
fn tls_config(cfg: &Config) -> anyhow::Result<Option<rustls::ServerConfig>> {
    let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) else {
        return Ok(None);
    };
    let files = TlsFiles {
        cert,
        key,
        client_ca: cfg.tls_client_ca.as_deref(),
    };
    Ok(Some(keymeter::tls::server_config(&files)?))
}

/// Tells the caller (and the tests, which read stdout) where to connect,
/// and shows a bootstrap admin key the only time it exists in clear.
fn announce(scheme: &str, addr: SocketAddr, bootstrap_key: Option<&str>) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "keymeter listening on {scheme}://{addr}")?;
    if let Some(key) = bootstrap_key {
        writeln!(
            stdout,
            "\nCreated the first admin API key. It is shown only this once; store it now:\n\n  {key}\n\n\
             Try it:\n  curl -H 'Authorization: Bearer {key}' {scheme}://{addr}/api/v1/meters\n"
        )?;
    }
    stdout.flush()?;
    Ok(())
}

/// `/metrics` without authentication on its own address; a failure there
/// is logged and leaves the API serving.
async fn spawn_metrics_listener(addr: SocketAddr) -> anyhow::Result<()> {
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(addr = %l.local_addr()?, "metrics listener");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(l, keymeter::api::metrics_router()).await {
            tracing::error!(error = %e, "metrics listener failed");
        }
    });
    Ok(())
}

/// Resolves on Ctrl-C, SIGTERM, or when the engine has failed (so the process
/// exits instead of answering 503 forever).
/// The handlers are installed when this is called, not when the future is
/// first polled.
fn shutdown_signal(
    shared: Arc<engine::Shared>,
) -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    Ok(async move {
        let failed = async {
            while !shared.failed.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("Ctrl-C received; shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
            _ = failed => tracing::error!("engine failed; shutting down"),
        }
    })
}
