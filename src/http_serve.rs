//! The HTTP server loop: the API router over hyper, with the bounds a server
//! facing untrusted clients needs, which `axum::serve` does not set:
//!
//! - a client must send a request's headers within `header_read_timeout`
//!   and its body within `body_read_timeout` (a slow client is cut off, it
//!   cannot hold a connection open by trickling bytes);
//! - at most `connections_max` connections are served at once (accepting
//!   waits for one to close);
//! - a graceful shutdown waits at most `shutdown_grace` for open requests,
//!   then drops the connections, so the engine drains and the process exits
//!   on time even while a client holds a half-sent request.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;
use tower::ServiceExt as _;

use crate::tls::{TlsListener, TlsPeer};

/// The bounds on clients (see the module documentation).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub connections_max: usize,
    pub shutdown_grace: Duration,
}

/// Where connections come from: plain TCP, or TLS (whose handlers see the
/// peer as `ConnectInfo<TlsPeer>`).
pub enum Connections {
    Tcp(tokio::net::TcpListener),
    Tls(TlsListener),
}

/// Serves `router` until `shutdown` resolves, then stops accepting, lets
/// open requests finish for at most `limits.shutdown_grace`, and returns.
pub async fn serve(
    incoming: Connections,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let router = router.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        limits.body_read_timeout,
    ));
    // HTTP/1.1 only, as the TLS listener offers (ALPN `http/1.1`): HTTP/2
    // would need its own stream limits and has no header-read timeout.
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let graceful = GracefulShutdown::new();
    let room = Arc::new(Semaphore::new(limits.connections_max));
    let mut incoming = incoming;
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = room.clone().acquire_owned() => p?,
            () = &mut shutdown => break,
        };
        let accepted = tokio::select! {
            a = accept(&mut incoming) => a,
            () = &mut shutdown => break,
        };
        let (io, peer) = accepted;
        let svc = router.clone().map_request(move |req: Request<Incoming>| {
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(ConnectInfo(peer.addr));
            if let Some(tls) = &peer.tls {
                req.extensions_mut().insert(ConnectInfo(tls.clone()));
            }
            req
        });
        let conn = builder
            .serve_connection_with_upgrades(io, TowerToHyperService::new(svc))
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(incoming);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace = ?limits.shutdown_grace,
            "requests still open at the end of the shutdown grace; closing their connections"
        );
    }
    Ok(())
}

/// The next connection, as hyper's I/O, with its TLS peer when on TLS.
async fn accept(incoming: &mut Connections) -> (TokioIo<Box<dyn IoStream>>, Peer) {
    use axum::serve::Listener as _;
    match incoming {
        Connections::Tcp(l) => {
            let (tcp, addr) = l.accept().await;
            (
                TokioIo::new(Box::new(tcp) as Box<dyn IoStream>),
                Peer { addr, tls: None },
            )
        }
        Connections::Tls(l) => {
            let (tls, addr) = l.accept().await;
            let tls_peer = TlsPeer::of(&tls, addr);
            let peer = Peer {
                addr,
                tls: Some(tls_peer),
            };
            (TokioIo::new(Box::new(tls) as Box<dyn IoStream>), peer)
        }
    }
}

/// Who is on the other end of a connection: handlers see the address as
/// `ConnectInfo<SocketAddr>`, and on TLS the session as `ConnectInfo<TlsPeer>`.
#[derive(Clone)]
struct Peer {
    addr: std::net::SocketAddr,
    tls: Option<TlsPeer>,
}

/// A connection's byte stream, plain or TLS.
pub trait IoStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> IoStream for T {}
