//! HTTPS on the API listener (TLS 1.2 and 1.3 with rustls) and client
//! certificates for ingest, against the real binary, with certificates made
//! here: a CA, a server certificate for localhost/127.0.0.1, a client
//! certificate from that CA and one from a CA the server does not know.

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    /// Certificate and key of a client of the trusted CA, in one PEM.
    client_pem: String,
    /// Certificate and key of a client of an unknown CA, in one PEM.
    stranger_pem: String,
}

impl Pki {
    fn new() -> Pki {
        let ca = certificate_authority("keymeter test CA");
        let stranger_ca = certificate_authority("some other CA");
        let (server_cert, server_key) = leaf(
            &ca,
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) =
            leaf(&ca, &["meter-agent"], ExtendedKeyUsagePurpose::ClientAuth);
        let (stranger_cert, stranger_key) = leaf(
            &stranger_ca,
            &["meter-agent"],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write("ca.pem", &ca.pem());
        write("server.pem", &server_cert);
        write("server.key", &server_key);
        Pki {
            ca_pem: ca.pem(),
            client_pem: format!("{client_cert}{client_key}"),
            stranger_pem: format!("{stranger_cert}{stranger_key}"),
            dir,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_owned()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts the server with the certificate and key as flags, its client
    /// trusting the test CA.
    fn start_https(&self) -> Server {
        let (cert, key) = (self.path("server.pem"), self.path("server.key"));
        let mut server =
            Server::start_with(&self.data_dir(), &["--tls-cert", &cert, "--tls-key", &key]);
        server.client = self.client(None);
        server
    }

    /// An HTTPS client that trusts only the test CA, with an optional client
    /// certificate (cert and key PEM).
    fn client(&self, identity: Option<&str>) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap());
        if let Some(pem) = identity {
            builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
        }
        builder.build().unwrap()
    }
}

fn certificate_authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A certificate signed by `ca`, and its key, both PEM.
fn leaf(
    ca: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn tokens_meter() -> Value {
    json!({"slug": "tokens", "eventType": "api_call", "aggregation": "SUM",
           "valueProperty": "$.tokens"})
}

fn usage(id: &str, tokens: u64) -> Value {
    event(
        id,
        "api_call",
        "customer-1",
        &time_from_now(0),
        json!({"tokens": tokens}),
    )
}

async fn tokens_of_customer_1(server: &Server) -> f64 {
    server.query("tokens", "subject=customer-1").await["data"][0]["value"]
        .as_f64()
        .unwrap()
}

async fn handshake_failures(server: &Server) -> u64 {
    let text = server.metrics_text().await;
    text.lines()
        .find_map(|l| l.strip_prefix("keymeter_tls_handshake_failures_total "))
        .expect("the handshake failure counter is exported")
        .parse()
        .unwrap()
}

/// Waits until the failure counter exceeds `before`: the client may see the
/// server's alert before the server's handshake task has counted it.
async fn handshake_failure_counted(server: &Server, before: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if handshake_failures(server).await > before {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

async fn error_code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (status, body["code"].as_str().unwrap_or_default().to_owned())
}

fn socket_addr(server: &Server) -> SocketAddr {
    server
        .base
        .strip_prefix("https://")
        .expect("the server reports an https:// address")
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_api_ingests_and_answers_queries_and_stops_cleanly() {
    let pki = Pki::new();
    let server = pki.start_https();
    assert!(
        server.base.starts_with("https://127.0.0.1:"),
        "{}",
        server.base
    );

    server.create_meter(tokens_meter()).await;
    let r = server
        .ingest(ADMIN_KEY, &[usage("e1", 1200), usage("e2", 34)])
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["keymeter-accepted"], "2");
    assert_eq!(tokens_of_customer_1(&server).await, 1234.0);

    // The same name the certificate holds works too, not only the address.
    let by_name = server.base.replace("127.0.0.1", "localhost");
    let r = server
        .client
        .get(format!("{by_name}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // SIGTERM drains and exits 0 as over plain HTTP.
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_the_tls_port_fails_and_is_counted() {
    let pki = Pki::new();
    let server = pki.start_https();
    assert_eq!(handshake_failures(&server).await, 0);

    let plain_url = server.base.replace("https://", "http://");
    let plain = reqwest::Client::new()
        .get(format!("{plain_url}/api/v1/meters"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP got an answer: {plain:?}");

    assert!(handshake_failure_counted(&server, 0).await);
    // The failed handshake did not stop the listener.
    assert_eq!(server.get(ADMIN_KEY, "/api/v1/meters").await.status(), 200);
}

/// Connects with rustls offering only `versions`, asks for `/healthz`, and
/// returns the negotiated version and the response's status line.
async fn healthz_with_versions(
    addr: SocketAddr,
    ca_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> (rustls::ProtocolVersion, String) {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("handshake");
    let version = tls.get_ref().1.protocol_version().unwrap();
    tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    while !response.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tls.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed before the response");
        response.extend_from_slice(&buf[..n]);
    }
    let status_line = String::from_utf8_lossy(&response)
        .lines()
        .next()
        .unwrap()
        .to_owned();
    (version, status_line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_12_and_13_clients_are_served_while_a_handshake_stalls() {
    let pki = Pki::new();
    let server = pki.start_https();
    let addr = socket_addr(&server);

    // A client that connects and never starts its handshake.
    let mut silent = std::net::TcpStream::connect(addr).unwrap();

    let (version, status) =
        healthz_with_versions(addr, &pki.ca_pem, &[&rustls::version::TLS12]).await;
    assert_eq!(version, rustls::ProtocolVersion::TLSv1_2);
    assert_eq!(status, "HTTP/1.1 200 OK");

    let (version, status) = healthz_with_versions(
        addr,
        &pki.ca_pem,
        &[&rustls::version::TLS13, &rustls::version::TLS12],
    )
    .await;
    assert_eq!(version, rustls::ProtocolVersion::TLSv1_3);
    assert_eq!(status, "HTTP/1.1 200 OK");

    // Both were served while the silent connection's handshake was still
    // pending (the server has not given up on it).
    silent.set_nonblocking(true).unwrap();
    let pending = silent.read(&mut [0u8; 16]);
    assert!(
        matches!(&pending, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the stalled connection was already closed: {pending:?}"
    );
}

/// Reads from `conn` until the server closes it (or resets it), at most
/// `limit`; returns how long that took, or `None` if it stayed open.
fn closed_within(conn: &mut std::net::TcpStream, limit: Duration) -> Option<Duration> {
    let opened = Instant::now();
    conn.set_read_timeout(Some(limit)).unwrap();
    match conn.read(&mut [0u8; 64]) {
        Ok(0) => Some(opened.elapsed()),
        Ok(_) => panic!("the server sent bytes to a client that sent none"),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Some(opened.elapsed()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(e) => panic!("reading the stalled connection: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_sends_a_client_hello_is_disconnected_after_the_timeout() {
    let pki = Pki::new();
    let config = pki.path("keymeter.toml");
    std::fs::write(&config, "tls_handshake_timeout = \"2s\"\n").unwrap();
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let mut server = Server::start_with(
        &pki.data_dir(),
        &["--tls-cert", &cert, "--tls-key", &key, "--config", &config],
    );
    server.client = pki.client(None);
    let addr = socket_addr(&server);
    let before = handshake_failures(&server).await;

    let connected = Instant::now();
    let mut silent = std::net::TcpStream::connect(addr).unwrap();
    // Meanwhile others are served.
    let (_, status) = healthz_with_versions(addr, &pki.ca_pem, &[&rustls::version::TLS13]).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    // Well before the 10 s default: the configured timeout is the one used.
    let closed =
        tokio::task::spawn_blocking(move || closed_within(&mut silent, Duration::from_secs(8)))
            .await
            .unwrap()
            .expect("the silent connection is still open 8 s after connecting");
    let waited = connected.elapsed();
    assert!(
        waited >= Duration::from_millis(1900),
        "closed after {waited:?} ({closed:?} of reading), before the 2 s timeout"
    );
    assert!(handshake_failure_counted(&server, before).await);
    // And the listener goes on accepting.
    assert_eq!(server.get(ADMIN_KEY, "/api/v1/meters").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_client_ca_ingest_requires_a_verified_client_certificate() {
    let pki = Pki::new();
    // From the environment this time, as a deployment would set them.
    let (cert, key, ca) = (
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
    );
    let mut server = Server::start_with_env(
        &pki.data_dir(),
        &[],
        &[
            ("KEYMETER_TLS_CERT", &cert),
            ("KEYMETER_TLS_KEY", &key),
            ("KEYMETER_TLS_CLIENT_CA", &ca),
        ],
    );
    let anonymous = pki.client(None);
    let agent = pki.client(Some(&pki.client_pem));
    let stranger = pki.client(Some(&pki.stranger_pem));

    // Admin and read routes work without a client certificate.
    server.client = anonymous.clone();
    server.create_meter(tokens_meter()).await;
    let ingest_key = server.create_key(&["ingest"]).await;
    assert_eq!(server.get(ADMIN_KEY, "/api/v1/meters").await.status(), 200);

    // Ingest without a certificate: refused, nothing counted.
    let refused = server.ingest(&ingest_key, &[usage("e1", 5)]).await;
    assert_eq!(
        error_code(refused).await,
        (401, "CLIENT_CERT_REQUIRED".to_owned())
    );

    // With the CA's client certificate but no API key: still refused.
    server.client = agent.clone();
    let r = server
        .client
        .post(server.url("/api/v1/events"))
        .header("content-type", "application/cloudevents-batch+json")
        .body(serde_json::to_vec(&[usage("e1", 5)]).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (401, "UNAUTHENTICATED".to_owned()));

    // Certificate and key: accepted and counted.
    let r = server.ingest(&ingest_key, &[usage("e1", 5)]).await;
    assert_eq!(r.status(), 204);
    assert_eq!(tokens_of_customer_1(&server).await, 5.0);

    // A certificate from another CA fails the handshake itself.
    let failures_before = handshake_failures(&server).await;
    let r = stranger
        .get(server.url("/api/v1/meters"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await;
    assert!(
        r.is_err(),
        "a foreign client certificate got an answer: {r:?}"
    );
    assert!(handshake_failure_counted(&server, failures_before).await);
    assert_eq!(tokens_of_customer_1(&server).await, 5.0);

    server.stop();
}

/// Runs `keymeter serve` with `args` and expects it to exit on its own with
/// an error; returns its stderr.
fn serve_must_fail(data_dir: &Path, args: &[&str]) -> String {
    exits_with_error(
        serve_command(data_dir)
            .args(args)
            .env("KEYMETER_MASTER_KEY", TEST_MASTER_KEY)
            .env_remove("KEYMETER_TLS_CERT")
            .env_remove("KEYMETER_TLS_KEY")
            .env_remove("KEYMETER_TLS_CLIENT_CA"),
    )
}

#[test]
fn serve_refuses_half_a_tls_setup_and_unreadable_pem() {
    let pki = Pki::new();
    let data = pki.data_dir();
    let (cert, key, ca) = (
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
    );

    let stderr = serve_must_fail(&data, &["--tls-cert", &cert]);
    assert!(stderr.contains("tls_key is missing"), "{stderr}");
    let stderr = serve_must_fail(&data, &["--tls-key", &key]);
    assert!(stderr.contains("tls_cert is missing"), "{stderr}");
    let stderr = serve_must_fail(&data, &["--tls-client-ca", &ca]);
    assert!(stderr.contains("tls_client_ca"), "{stderr}");

    let garbage = pki.path("garbage.pem");
    std::fs::write(&garbage, "this is not a certificate\n").unwrap();
    let stderr = serve_must_fail(&data, &["--tls-cert", &garbage, "--tls-key", &key]);
    assert!(stderr.contains(&garbage), "{stderr}");
    let stderr = serve_must_fail(&data, &["--tls-cert", &cert, "--tls-key", &garbage]);
    assert!(stderr.contains(&garbage), "{stderr}");
    let missing = pki.path("missing.pem");
    let stderr = serve_must_fail(&data, &["--tls-cert", &cert, "--tls-key", &missing]);
    assert!(stderr.contains(&missing), "{stderr}");
    // The CA's key is not the server certificate's key.
    let stderr = serve_must_fail(&data, &["--tls-cert", &ca, "--tls-key", &key]);
    assert!(stderr.contains("cannot be used together"), "{stderr}");
}
