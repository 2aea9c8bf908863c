//! Request signing: the `Keymeter-Signature` scheme, shared by clients and
//! the server (which re-exports this module as `keymeter::signing`).
//!
//! A product signs a call with one of its signing secrets and sends
//!
//! ```text
//! Keymeter-Signature: k=<secret id>, t=<unix seconds>, n=<nonce>, v1=<hex HMAC-SHA256>
//! ```
//!
//! where the HMAC key is the signing secret (its UTF-8 bytes, `kss_…`) and the
//! message is the **canonical request**: eight lines joined by `\n`, no
//! trailing newline:
//!
//! ```text
//! KEYMETER-HMAC-SHA256
//! <k>
//! <t>
//! <n>
//! <HTTP method, upper case>
//! <path, exactly as on the request line (still percent-encoded)>
//! <query, exactly as on the request line, without `?`; empty line if none>
//! <lower-case hex SHA-256 of the body bytes (of the empty string if no body)>
//! ```
//!
//! The scheme follows Stripe's webhook signatures (`t=`, `v1=` in one header,
//! HMAC-SHA256, a timestamp tolerance) and AWS SigV4 (method, path, query and
//! a body digest in a canonical request), and adds a nonce: the server
//! remembers every nonce for the tolerance window, so a captured request
//! cannot be sent again even within the window. Sign every call anew,
//! retries included (new `t`, new `n`): [`sign_request`] does.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The request header carrying the signature (lower case, as HTTP/2 sends it).
pub const SIGNATURE_HEADER: &str = "keymeter-signature";
/// First line of the canonical request; names the scheme and its version.
pub const SCHEME: &str = "KEYMETER-HMAC-SHA256";
/// Longest header value accepted.
pub const HEADER_BYTES_MAX: usize = 1024;
/// Nonce length bounds, in characters of `[A-Za-z0-9_.-]`.
pub const NONCE_CHARS_MIN: usize = 16;
pub const NONCE_CHARS_MAX: usize = 128;
/// Prefix of every signing secret.
pub const SECRET_PREFIX: &str = "kss_";

/// A parsed `Keymeter-Signature` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeader {
    /// The signing secret's id.
    pub key_id: String,
    /// Unix seconds when the client signed.
    pub timestamp: i64,
    pub nonce: String,
    /// The `v1` HMAC-SHA256.
    pub v1: [u8; 32],
}

/// A header that is not `k=…, t=…, n=…, v1=…`; the message says which part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HeaderError(pub String);

fn malformed(msg: impl Into<String>) -> HeaderError {
    HeaderError(msg.into())
}

fn valid_token(s: &str, extra: &[u8]) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || extra.contains(&b))
}

impl SignatureHeader {
    /// Parses `k=…, t=…, n=…, v1=…` (any order, spaces around commas
    /// allowed). Each of the four appears exactly once; other names are
    /// ignored so later versions can add fields.
    pub fn parse(value: &str) -> Result<SignatureHeader, HeaderError> {
        if value.len() > HEADER_BYTES_MAX {
            return Err(malformed(format!("longer than {HEADER_BYTES_MAX} bytes")));
        }
        let (mut k, mut t, mut n, mut v1) = (None, None, None, None);
        for part in value.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (name, val) = part
                .split_once('=')
                .ok_or_else(|| malformed(format!("`{part}` is not name=value")))?;
            let slot = match name.trim() {
                "k" => &mut k,
                "t" => &mut t,
                "n" => &mut n,
                "v1" => &mut v1,
                _ => continue,
            };
            if slot.replace(val.trim()).is_some() {
                return Err(malformed(format!("`{}` appears twice", name.trim())));
            }
        }
        let k = k.ok_or_else(|| malformed("`k` (signing secret id) is missing"))?;
        let t = t.ok_or_else(|| malformed("`t` (unix seconds) is missing"))?;
        let n = n.ok_or_else(|| malformed("`n` (nonce) is missing"))?;
        let v1 = v1.ok_or_else(|| malformed("`v1` (signature) is missing"))?;
        if !valid_token(k, b"") || k.len() > 64 {
            return Err(malformed("`k` must be 1-64 characters of [A-Za-z0-9_-]"));
        }
        if t.is_empty() || t.len() > 12 || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed("`t` must be unix seconds (digits only)"));
        }
        let timestamp: i64 = t.parse().map_err(|_| malformed("`t` is out of range"))?;
        if !valid_token(n, b".") || n.len() < NONCE_CHARS_MIN || n.len() > NONCE_CHARS_MAX {
            return Err(malformed(format!(
                "`n` must be {NONCE_CHARS_MIN}-{NONCE_CHARS_MAX} characters of [A-Za-z0-9_.-]"
            )));
        }
        let mut mac = [0u8; 32];
        if v1.len() != 64 || hex_decode(v1, &mut mac).is_none() {
            return Err(malformed("`v1` must be 64 hex characters"));
        }
        Ok(SignatureHeader {
            key_id: k.to_owned(),
            timestamp,
            nonce: n.to_owned(),
            v1: mac,
        })
    }

    /// The header value, as a client sends it.
    pub fn to_header_value(&self) -> String {
        format!(
            "k={}, t={}, n={}, v1={}",
            self.key_id,
            self.timestamp,
            self.nonce,
            hex(&self.v1)
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn hex_decode(text: &str, out: &mut [u8]) -> Option<()> {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let bytes = text.as_bytes();
    if bytes.len() != out.len() * 2 {
        return None;
    }
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(())
}

/// The parts of a request that are signed.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    pub method: &'a str,
    /// As on the request line, percent-encoded.
    pub path: &'a str,
    /// Without the leading `?`; empty if none.
    pub query: &'a str,
    pub body: &'a [u8],
}

/// The canonical request (see the module docs).
pub fn canonical_request(key_id: &str, timestamp: i64, nonce: &str, req: &RequestParts) -> String {
    let body_hash = hex(&Sha256::digest(req.body));
    format!(
        "{SCHEME}\n{key_id}\n{timestamp}\n{nonce}\n{}\n{}\n{}\n{body_hash}",
        req.method.to_ascii_uppercase(),
        req.path,
        req.query
    )
}

fn mac_for(secret: &[u8], canonical: &str) -> HmacSha256 {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(canonical.as_bytes());
    mac
}

/// Signs a request with a given time and nonce.
pub fn sign(
    secret: &str,
    key_id: &str,
    timestamp: i64,
    nonce: &str,
    req: &RequestParts,
) -> SignatureHeader {
    let canonical = canonical_request(key_id, timestamp, nonce, req);
    SignatureHeader {
        key_id: key_id.to_owned(),
        timestamp,
        nonce: nonce.to_owned(),
        v1: mac_for(secret.as_bytes(), &canonical)
            .finalize()
            .into_bytes()
            .into(),
    }
}

/// Signs a request now, with a fresh random nonce, and returns the
/// `Keymeter-Signature` header value. `path_and_query` is what goes on the
/// request line (`/api/v1/meters/m/query?windowSize=DAY`).
pub fn sign_request(
    secret: &str,
    key_id: &str,
    method: &str,
    path_and_query: &str,
    body: &[u8],
) -> String {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut raw = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut raw);
    let nonce = hex(&raw);
    let req = RequestParts {
        method,
        path,
        query,
        body,
    };
    sign(secret, key_id, now, &nonce, &req).to_header_value()
}

/// Checks the HMAC in constant time. The server checks the timestamp and the
/// nonce separately.
pub fn verify_mac(secret: &[u8], header: &SignatureHeader, req: &RequestParts) -> bool {
    let canonical = canonical_request(&header.key_id, header.timestamp, &header.nonce, req);
    mac_for(secret, &canonical).verify_slice(&header.v1).is_ok()
}
