//! HTTPS for the API: the rustls server configuration read from PEM files, a
//! listener that runs every handshake in its own task (bounded in time and in
//! number, so a slow or hostile client cannot hold up the others), and the
//! peer identity that handlers read through axum's connect info.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::metrics::metrics;

/// Longest a client may take to complete its handshake, unless
/// `tls_handshake_timeout` says otherwise.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes in progress at once; beyond it new TCP connections wait
/// in the kernel's accept backlog.
pub const HANDSHAKES_IN_FLIGHT_MAX: usize = 1024;

/// The TLS settings of the API listener, read from the configured files.
pub struct TlsFiles<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
    /// When set, client certificates are verified against these CAs.
    pub client_ca: Option<&'a Path>,
}

/// Builds the server configuration: TLS 1.3 and 1.2 only, the `ring`
/// provider, HTTP/1.1 by ALPN. Every error names the file at fault.
pub fn server_config(files: &TlsFiles<'_>) -> anyhow::Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = read_certificates(files.cert, "TLS certificate")?;
    let key = read_private_key(files.key)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS 1.2 and 1.3 are not available")?;
    let builder = match files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for (i, ca) in read_certificates(path, "TLS client CA")?
                .into_iter()
                .enumerate()
            {
                roots.add(ca).with_context(|| {
                    format!(
                        "TLS client CA file {}: certificate {} is not a usable CA certificate",
                        path.display(),
                        i + 1
                    )
                })?;
            }
            // Callers without a certificate still connect (reads, admin);
            // the ingest route refuses them. A certificate that is presented
            // must chain to these CAs, or the handshake fails.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .with_context(|| format!("TLS client CA file {} is unusable", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).with_context(|| {
        format!(
            "TLS certificate {} and key {} cannot be used together",
            files.cert.display(),
            files.key.display()
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn read_certificates(path: &Path, what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read {what} file {}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{what} file {} is not valid PEM", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{what} file {} holds no PEM CERTIFICATE block",
        path.display()
    );
    Ok(certs)
}

fn read_private_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read TLS key file {}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&pem).with_context(|| {
        format!(
            "TLS key file {} holds no usable PEM private key (PRIVATE KEY, RSA PRIVATE KEY or \
             EC PRIVATE KEY)",
            path.display()
        )
    })
}

/// A TCP listener that hands axum only connections whose TLS handshake
/// succeeded. A failed or timed-out handshake is logged at debug level and
/// counted in `keymeter_tls_handshake_failures_total`; accepting goes on.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    /// Handshakes in progress; dropped (and so aborted) with the listener
    /// when the server stops accepting.
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
    /// Longest a handshake may take; the connection is then closed.
    handshake_timeout: Duration,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: ServerConfig, handshake_timeout: Duration) -> TlsListener {
        TlsListener {
            tcp,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            handshakes: JoinSet::new(),
            handshake_timeout,
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    // Cancel-safe, as axum's graceful shutdown requires: both awaited
    // futures are, and a handshake is spawned without an await in between.
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let room = self.handshakes.len() < HANDSHAKES_IN_FLIGHT_MAX;
            tokio::select! {
                (tcp, addr) = axum::serve::Listener::accept(&mut self.tcp), if room => {
                    let timeout = self.handshake_timeout;
                    self.handshakes.spawn(handshake(self.acceptor.clone(), tcp, addr, timeout));
                }
                Some(done) = self.handshakes.join_next() => match done {
                    Ok(Some(conn)) => return conn,
                    Ok(None) => {}
                    Err(e) => tracing::error!(error = %e, "TLS handshake task failed"),
                },
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    addr: SocketAddr,
    timeout: Duration,
) -> Option<(TlsStream<TcpStream>, SocketAddr)> {
    // The handshake is several small writes each way; Nagle's algorithm
    // would hold them back for the peer's delayed ACK.
    let _ = tcp.set_nodelay(true);
    // On timeout the accept future, and with it the TCP stream, is dropped:
    // the connection is closed.
    let error = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => return Some((stream, addr)),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no handshake within {timeout:?}"),
    };
    metrics().tls_handshake_failures_total.inc();
    tracing::debug!(%addr, %error, "TLS handshake failed");
    None
}

/// Who is on the other end of an HTTPS connection, for handlers:
/// `ConnectInfo<TlsPeer>` in the request extensions.
#[derive(Clone, Debug)]
pub struct TlsPeer {
    pub remote_addr: SocketAddr,
    /// The client's leaf certificate. Present only when the client sent one
    /// and it was verified against `tls_client_ca` during the handshake.
    pub client_cert: Option<CertificateDer<'static>>,
}

impl Connected<IncomingStream<'_, TlsListener>> for TlsPeer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> TlsPeer {
        TlsPeer::of(stream.io(), *stream.remote_addr())
    }
}

impl TlsPeer {
    /// The peer of an accepted connection.
    pub fn of(stream: &TlsStream<TcpStream>, remote_addr: SocketAddr) -> TlsPeer {
        let (_, session) = stream.get_ref();
        TlsPeer {
            remote_addr,
            client_cert: session
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|leaf| leaf.clone().into_owned()),
        }
    }
}
