//! `keymeter license …`: a thin HTTP client for the license admin API of a
//! running server. It prints the server's JSON answer; a refusal prints the
//! error body and exits non-zero. The admin key comes from `--admin-key` or
//! `KEYMETER_ADMIN_KEY`; the server from `--url` or `KEYMETER_URL`. Plain
//! `http://` only (put TLS in front of keymeter, and use curl, for remote
//! servers).

use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

#[derive(Args)]
pub struct LicenseArgs {
    /// Server base URL.
    #[arg(
        long,
        env = "KEYMETER_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// An API key with the admin scope.
    #[arg(
        long,
        env = "KEYMETER_ADMIN_KEY",
        hide_env_values = true,
        global = true
    )]
    admin_key: Option<String>,
    #[command(subcommand)]
    command: LicenseCommand,
}

#[derive(Subcommand)]
enum LicenseCommand {
    /// Create a license; prints it with its key (shown only this once).
    Create(CreateArgs),
    /// Show one license.
    Show {
        /// The license's id (lic_…).
        id: String,
    },
    /// List licenses, optionally filtered.
    List {
        /// Only the licenses of this product.
        #[arg(long)]
        product: Option<String>,
        /// Only the licenses of this customer.
        #[arg(long)]
        customer: Option<String>,
        /// active, suspended or revoked.
        #[arg(long)]
        status: Option<String>,
        /// Most licenses in the answer (one page).
        #[arg(long)]
        limit: Option<usize>,
        /// The page after this cursor (the previous answer's `next`).
        #[arg(long)]
        after: Option<String>,
    },
    /// Suspend an active license.
    Suspend {
        /// The license's id (lic_…).
        id: String,
        /// Why, kept in the license's history.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Reinstate a suspended license.
    Reinstate {
        /// The license's id (lic_…).
        id: String,
    },
    /// Revoke a license (final).
    Revoke {
        /// The license's id (lic_…).
        id: String,
        /// Why, kept in the license's history.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Set a new expiry, or extend the current one.
    Renew {
        /// The license's id (lic_…).
        id: String,
        /// RFC 3339 expiry, or "never".
        #[arg(long, conflicts_with = "extend", required_unless_present = "extend")]
        expires_at: Option<String>,
        /// Extend the later of the current expiry and now, e.g. "365d".
        #[arg(long)]
        extend: Option<String>,
    },
    /// Issue an offline license file (JSON on stdout).
    File {
        /// The license's id (lic_…).
        id: String,
        /// Bind the file to this machine fingerprint.
        #[arg(long)]
        fingerprint: Option<String>,
        /// e.g. "30d".
        #[arg(long)]
        ttl: Option<String>,
    },
}

#[derive(Args)]
struct CreateArgs {
    /// The product the license is for.
    #[arg(long)]
    product: String,
    /// The customer who holds it.
    #[arg(long)]
    customer: String,
    /// RFC 3339 start [default: now].
    #[arg(long)]
    starts_at: Option<String>,
    /// RFC 3339 expiry [default: perpetual].
    #[arg(long)]
    expires_at: Option<String>,
    /// Grace period after expiry, e.g. "7d".
    #[arg(long, value_parser = humantime::parse_duration)]
    grace: Option<Duration>,
    /// Mark the license as a trial.
    #[arg(long)]
    trial: bool,
    /// Feature code (repeat).
    #[arg(long = "entitlement")]
    entitlements: Vec<String>,
    /// Policy as JSON, e.g. '{"type":"seat","seats":{"max":5,"mode":"floating"}}'.
    #[arg(long)]
    policy: Option<String>,
    /// Metadata as a JSON object.
    #[arg(long)]
    metadata: Option<String>,
}

fn query(pairs: &[(&str, &Option<String>)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if let Some(v) = v {
            q.append_pair(k, v);
        }
    }
    let q = q.finish();
    if q.is_empty() {
        q
    } else {
        format!("?{q}")
    }
}

fn seg(id: &str) -> String {
    form_urlencoded::byte_serialize(id.as_bytes()).collect()
}

pub fn run(args: LicenseArgs) -> anyhow::Result<()> {
    let key = args
        .admin_key
        .clone()
        .context("an admin key is required: --admin-key or KEYMETER_ADMIN_KEY")?;
    let (method, path, body) = route(args.command)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, text) = runtime.block_on(request(&args.url, method, &path, Some(&key), body))?;
    let pretty = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or(text);
    if !(200..300).contains(&status) {
        bail!("server answered {status}: {pretty}");
    }
    println!("{pretty}");
    Ok(())
}

/// The method, path and JSON body of the admin API call for `command`.
fn route(command: LicenseCommand) -> anyhow::Result<(Method, String, Option<Value>)> {
    Ok(match command {
        LicenseCommand::Create(create) => (
            Method::POST,
            "/api/v1/licenses".to_owned(),
            Some(create_body(create)?),
        ),
        LicenseCommand::Show { id } => {
            (Method::GET, format!("/api/v1/licenses/{}", seg(&id)), None)
        }
        LicenseCommand::List {
            product,
            customer,
            status,
            limit,
            after,
        } => {
            let limit = limit.map(|l| l.to_string());
            let q = query(&[
                ("product", &product),
                ("customer", &customer),
                ("status", &status),
                ("limit", &limit),
                ("after", &after),
            ]);
            (Method::GET, format!("/api/v1/licenses{q}"), None)
        }
        LicenseCommand::Suspend { id, reason } => (
            Method::POST,
            format!("/api/v1/licenses/{}/suspend", seg(&id)),
            Some(json!({"reason": reason})),
        ),
        LicenseCommand::Reinstate { id } => (
            Method::POST,
            format!("/api/v1/licenses/{}/reinstate", seg(&id)),
            None,
        ),
        LicenseCommand::Revoke { id, reason } => (
            Method::POST,
            format!("/api/v1/licenses/{}/revoke", seg(&id)),
            Some(json!({"reason": reason})),
        ),
        LicenseCommand::Renew {
            id,
            expires_at,
            extend,
        } => {
            let body = match (expires_at, extend) {
                (Some(e), _) if e == "never" => json!({"expires_at": null}),
                (Some(e), _) => json!({"expires_at": e}),
                (None, Some(x)) => json!({"extend": x}),
                (None, None) => bail!("give --expires-at or --extend"),
            };
            (
                Method::POST,
                format!("/api/v1/licenses/{}/renew", seg(&id)),
                Some(body),
            )
        }
        LicenseCommand::File {
            id,
            fingerprint,
            ttl,
        } => (
            Method::POST,
            format!("/api/v1/licenses/{}/license-file", seg(&id)),
            Some(json!({"fingerprint": fingerprint, "ttl": ttl})),
        ),
    })
}

fn create_body(a: CreateArgs) -> anyhow::Result<Value> {
    let mut b = json!({"product": a.product, "customer": a.customer, "trial": a.trial,
        "entitlements": a.entitlements});
    if let Some(v) = a.starts_at {
        b["starts_at"] = json!(v);
    }
    if let Some(v) = a.expires_at {
        b["expires_at"] = json!(v);
    }
    if let Some(g) = a.grace {
        b["grace_period_s"] = json!(g.as_secs());
    }
    if let Some(p) = a.policy {
        b["policy"] = serde_json::from_str(&p).context("--policy is not JSON")?;
    }
    if let Some(m) = a.metadata {
        b["metadata"] = serde_json::from_str(&m).context("--metadata is not JSON")?;
    }
    Ok(b)
}

/// How long the server may stay silent: while waiting for the answer's head
/// and between two pieces of its body. A slow answer that keeps arriving is
/// not cut off, so a large license list on a busy server still comes through.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

async fn within_idle_timeout<F: Future>(step: F) -> anyhow::Result<F::Output> {
    tokio::time::timeout(IDLE_TIMEOUT, step)
        .await
        .map_err(|_| anyhow!("no answer from the server for {} s", IDLE_TIMEOUT.as_secs()))
}

/// One HTTP/1.1 request over a fresh connection; returns status and body.
pub async fn request(
    base: &str,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> anyhow::Result<(u16, String)> {
    let mut bytes = Vec::new();
    let status = request_into(base, method, path, key, body, |data| {
        bytes.extend_from_slice(data);
        Ok(())
    })
    .await?;
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// [`request`], handing the answer's body to `sink` as it arrives (a large
/// download is never held whole); returns the status.
pub async fn request_into(
    base: &str,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
    mut sink: impl FnMut(&[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<u16> {
    let rest = base
        .strip_prefix("http://")
        .context("--url must start with http:// (use a TLS proxy and curl for https)")?;
    let (authority, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    let addr = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let mut req = Request::builder()
        .method(method)
        .uri(format!("{prefix}{path}"))
        .header(HOST, authority)
        .header(ACCEPT, "application/json")
        .header(CONNECTION, "close");
    if let Some(key) = key {
        req = req.header(AUTHORIZATION, format!("Bearer {key}"));
    }
    if body.is_some() {
        req = req.header(CONTENT_TYPE, "application/json");
    }
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    // Sent even when zero: some proxies refuse a POST without a length.
    let req = req
        .header(CONTENT_LENGTH, payload.len())
        .body(Full::<Bytes>::from(payload))
        .context("cannot build the request from --url and the API key")?;
    let stream = tokio::net::TcpStream::connect(&addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        // Header names as most clients write them, for servers and proxies
        // that still compare them case-sensitively.
        .title_case_headers(true)
        .handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("request to {addr} failed"))?;
    // Errors of the connection itself also fail the request or the body
    // read below, which is where they are reported.
    tokio::spawn(connection);
    let response = within_idle_timeout(sender.send_request(req))
        .await?
        .with_context(|| format!("request to {addr} failed"))?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    while let Some(frame) = within_idle_timeout(body.frame()).await? {
        let frame = frame.with_context(|| format!("reading the answer from {addr} failed"))?;
        if let Ok(data) = frame.into_data() {
            sink(&data)?;
        }
    }
    Ok(status)
}
