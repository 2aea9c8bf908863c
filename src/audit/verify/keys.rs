//! The keys and anchors an audit checks against: the public keys
//! checkpoints may be signed with, and the checkpoints of an anchors file.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, VerifyingKey};
use serde_json::Value;

use crate::audit::{checkpoint_message, parse_anchor_line};
use crate::crypto::Keys;
use crate::record::CheckpointRecord;

/// The public keys checkpoints may be signed with, by key id.
#[derive(Debug, Clone, Default)]
pub struct VerifyingKeys {
    by_kid: BTreeMap<String, VerifyingKey>,
}

impl VerifyingKeys {
    /// The key the engine signs with.
    pub fn of(keys: &Keys) -> VerifyingKeys {
        VerifyingKeys {
            by_kid: BTreeMap::from([(keys.kid().to_owned(), keys.verifying_key())]),
        }
    }

    /// Every key of `kid → key` pairs (all signing keys ever used).
    pub fn from_keys(keys: impl IntoIterator<Item = (String, VerifyingKey)>) -> VerifyingKeys {
        VerifyingKeys {
            by_kid: keys.into_iter().collect(),
        }
    }

    /// The Ed25519 keys of a JWK Set, as served at `/.well-known/jwks.json`.
    pub fn from_jwks(text: &str) -> Result<VerifyingKeys, String> {
        let doc: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let keys = doc["keys"]
            .as_array()
            .ok_or("no \"keys\" array: not a JWK Set")?;
        let mut by_kid = BTreeMap::new();
        for jwk in keys {
            if jwk["kty"] != "OKP" || jwk["crv"] != "Ed25519" {
                continue;
            }
            let (Some(kid), Some(x)) = (jwk["kid"].as_str(), jwk["x"].as_str()) else {
                return Err("an Ed25519 key lacks \"kid\" or \"x\"".into());
            };
            let bytes: [u8; 32] = B64
                .decode(x)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| format!("key {kid}: x is not 32 bytes of base64url"))?;
            let key = VerifyingKey::from_bytes(&bytes)
                .map_err(|_| format!("key {kid}: not an Ed25519 public key"))?;
            by_kid.insert(kid.to_owned(), key);
        }
        if by_kid.is_empty() {
            return Err("the JWK Set holds no Ed25519 key".into());
        }
        Ok(VerifyingKeys { by_kid })
    }

    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.by_kid.keys().map(String::as_str)
    }

    /// Why the checkpoint's signature does not hold, if it does not.
    pub fn check(&self, checkpoint: &CheckpointRecord) -> Result<(), String> {
        let key = self.by_kid.get(&checkpoint.kid).ok_or_else(|| {
            format!(
                "signed by key {:?}, which is not among the verifying keys ({})",
                checkpoint.kid,
                self.kids().collect::<Vec<_>>().join(", ")
            )
        })?;
        let signature = Signature::from_slice(&checkpoint.signature).map_err(|_| {
            format!(
                "the signature is {} bytes, not 64",
                checkpoint.signature.len()
            )
        })?;
        let message = checkpoint_message(checkpoint.seq, &checkpoint.chain, checkpoint.time_ms);
        key.verify_strict(&message, &signature).map_err(|_| {
            format!(
                "the signature does not verify with key {} (the checkpoint was altered or forged)",
                checkpoint.kid
            )
        })
    }
}

/// One checkpoint read from the anchors file, with its 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    pub line: usize,
    pub checkpoint: CheckpointRecord,
}

/// The anchors file's checkpoints, and the lines that are not one (a line
/// cut short by a crash while it was written, say).
#[derive(Debug, Clone, Default)]
pub struct Anchors {
    pub anchors: Vec<Anchor>,
    pub skipped: Vec<(usize, String)>,
}

pub fn read_anchors(path: &Path) -> io::Result<Anchors> {
    let text = std::fs::read_to_string(path)?;
    let mut out = Anchors::default();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_anchor_line(line) {
            Ok(cp) if cp.seq == 0 => out.skipped.push((i + 1, "seq 0 covers nothing".into())),
            Ok(checkpoint) => out.anchors.push(Anchor {
                line: i + 1,
                checkpoint,
            }),
            Err(why) => out.skipped.push((i + 1, why)),
        }
    }
    Ok(out)
}
