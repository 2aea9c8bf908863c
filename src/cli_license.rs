//! `keymeter license …`: a thin HTTP client for the license admin API of a
//! running server. It prints the server's JSON answer; a refusal prints the
//! error body and exits non-zero. The admin key comes from `--admin-key` or
//! `KEYMETER_ADMIN_KEY`; the server from `--url` or `KEYMETER_URL`. Plain
//! `http://` only (put TLS in front of keymeter, and use curl, for remote
//! servers).

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
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
    Create {
        #[arg(long)]
        product: String,
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
    },
    /// Show one license.
    Show { id: String },
    /// List licenses, optionally filtered.
    List {
        #[arg(long)]
        product: Option<String>,
        #[arg(long)]
        customer: Option<String>,
        /// active, suspended or revoked.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long)]
        after: Option<String>,
    },
    /// Suspend an active license.
    Suspend {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Reinstate a suspended license.
    Reinstate { id: String },
    /// Revoke a license (final).
    Revoke {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Set a new expiry, or extend the current one.
    Renew {
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
        id: String,
        #[arg(long)]
        fingerprint: Option<String>,
        /// e.g. "30d".
        #[arg(long)]
        ttl: Option<String>,
    },
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
    let (method, path, body) = match args.command {
        LicenseCommand::Create {
            product,
            customer,
            starts_at,
            expires_at,
            grace,
            trial,
            entitlements,
            policy,
            metadata,
        } => {
            let mut b = json!({"product": product, "customer": customer, "trial": trial,
                "entitlements": entitlements});
            if let Some(v) = starts_at {
                b["starts_at"] = json!(v);
            }
            if let Some(v) = expires_at {
                b["expires_at"] = json!(v);
            }
            if let Some(g) = grace {
                b["grace_period_s"] = json!(g.as_secs());
            }
            if let Some(p) = policy {
                b["policy"] = serde_json::from_str(&p).context("--policy is not JSON")?;
            }
            if let Some(m) = metadata {
                b["metadata"] = serde_json::from_str(&m).context("--metadata is not JSON")?;
            }
            ("POST", "/api/v1/licenses".to_owned(), Some(b))
        }
        LicenseCommand::Show { id } => ("GET", format!("/api/v1/licenses/{}", seg(&id)), None),
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
            ("GET", format!("/api/v1/licenses{q}"), None)
        }
        LicenseCommand::Suspend { id, reason } => (
            "POST",
            format!("/api/v1/licenses/{}/suspend", seg(&id)),
            Some(json!({"reason": reason})),
        ),
        LicenseCommand::Reinstate { id } => (
            "POST",
            format!("/api/v1/licenses/{}/reinstate", seg(&id)),
            None,
        ),
        LicenseCommand::Revoke { id, reason } => (
            "POST",
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
                "POST",
                format!("/api/v1/licenses/{}/renew", seg(&id)),
                Some(body),
            )
        }
        LicenseCommand::File {
            id,
            fingerprint,
            ttl,
        } => (
            "POST",
            format!("/api/v1/licenses/{}/license-file", seg(&id)),
            Some(json!({"fingerprint": fingerprint, "ttl": ttl})),
        ),
    };
    let (status, text) = request(&args.url, method, &path, &key, body.as_ref())?;
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

/// One HTTP/1.1 request over a fresh connection; returns status and body.
fn request(
    base: &str,
    method: &str,
    path: &str,
    key: &str,
    body: Option<&Value>,
) -> anyhow::Result<(u16, String)> {
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
    let mut stream =
        std::net::TcpStream::connect(&addr).with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let mut head = format!(
        "{method} {prefix}{path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {key}\r\n\
         Connection: close\r\nAccept: application/json\r\nContent-Length: {}\r\n",
        payload.len()
    );
    if body.is_some() {
        head.push_str("Content-Type: application/json\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(payload.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (headers, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    let status: u16 = headers
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed HTTP status line")?;
    let chunked = headers.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
