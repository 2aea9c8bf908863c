//! Products: the software that emits events and validates licenses, as a
//! signer of its calls. A product holds signing secrets (HMAC keys for the
//! `Keymeter-Signature` scheme, see [`crate::signing`]) and the API keys that
//! belong to it; with `require_signatures`, calls made with those API keys
//! must be signed with one of its live secrets.
//!
//! A product is kept as one document; every change is a whole-document
//! `ProductSaved` log record with a version one higher than the last (the
//! writer refuses a stale version, so concurrent admin edits cannot lose
//! each other's changes). Secrets are stored sealed (AES-256-GCM under the
//! data key, the secret id as associated data), never in plaintext.

use crate::id::ProductId;
use std::collections::HashMap;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::Keys;
use crate::signing::SECRET_PREFIX;

/// Most live (unrevoked) signing secrets per product.
pub const LIVE_SECRETS_MAX: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Product {
    pub id: ProductId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub require_signatures: bool,
    /// Ids of the API keys that belong to this product.
    #[serde(default)]
    pub api_keys: Vec<String>,
    #[serde(default)]
    pub signing_secrets: Vec<SigningSecret>,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// 1 at creation, one more at every change.
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SigningSecret {
    pub id: String,
    /// base64 of the sealed secret (see [`Keys::seal`]).
    pub sealed: String,
    pub created_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<i64>,
}

impl Product {
    pub fn live_secrets(&self) -> impl Iterator<Item = &SigningSecret> {
        self.signing_secrets
            .iter()
            .filter(|s| s.revoked_ms.is_none())
    }
}

/// Is `id` usable as a product id (URL path segment, metric label)?
pub fn valid_product_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// A new signing secret: its id and plaintext (`kss_` + 32 random bytes in
/// base64url), sealed for storage.
pub fn new_secret(keys: &Keys, now_ms: i64) -> (SigningSecret, Zeroizing<String>) {
    let mut id = [0u8; 6];
    let mut raw = Zeroizing::new([0u8; 32]);
    rand::thread_rng().fill_bytes(&mut id);
    rand::thread_rng().fill_bytes(raw.as_mut());
    let id = hex::encode(id);
    let plaintext = Zeroizing::new(format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.as_ref())
    ));
    let sealed = B64.encode(keys.seal(plaintext.as_bytes(), id.as_bytes()));
    (
        SigningSecret {
            id,
            sealed,
            created_ms: now_ms,
            revoked_ms: None,
        },
        plaintext,
    )
}

/// What request authentication needs to know about products, published to
/// readers whenever a product changes. Secrets are held unsealed in memory.
#[derive(Default)]
pub struct ProductRing {
    /// API key id → product id.
    by_api_key: HashMap<String, ProductId>,
    require: HashMap<ProductId, bool>,
    /// Live secret id → (product id, secret bytes).
    secrets: HashMap<String, (ProductId, Zeroizing<Vec<u8>>)>,
}

impl ProductRing {
    /// Builds the ring, unsealing every live secret. A secret that does not
    /// unseal (wrong master key) is an error: refusing every signed call
    /// would be worse than refusing to start.
    pub fn build(products: &[Product], keys: &Keys) -> Result<ProductRing, String> {
        let mut ring = ProductRing::default();
        for p in products {
            ring.require.insert(p.id.clone(), p.require_signatures);
            for k in &p.api_keys {
                ring.by_api_key.insert(k.clone(), p.id.clone());
            }
            for s in p.live_secrets() {
                let sealed = B64
                    .decode(&s.sealed)
                    .map_err(|_| format!("product {}: secret {} is not base64", p.id, s.id))?;
                let plain = keys.unseal(&sealed, s.id.as_bytes()).map_err(|_| {
                    format!(
                        "product {}: signing secret {} does not unseal with this master key",
                        p.id, s.id
                    )
                })?;
                ring.secrets.insert(s.id.clone(), (p.id.clone(), plain));
            }
        }
        Ok(ring)
    }

    /// The product an API key belongs to, and whether it requires signatures.
    pub fn product_of_key(&self, api_key_id: &str) -> Option<(&str, bool)> {
        let product = self.by_api_key.get(api_key_id)?;
        Some((
            product.as_str(),
            self.require.get(product).copied().unwrap_or(false),
        ))
    }

    /// A live secret: its product and bytes.
    pub fn secret(&self, secret_id: &str) -> Option<(&str, &[u8])> {
        self.secrets
            .get(secret_id)
            .map(|(p, s)| (p.as_str(), s.as_slice()))
    }
}

pub type SharedProducts = arc_swap::ArcSwap<ProductRing>;

pub fn publish(target: &SharedProducts, ring: ProductRing) {
    target.store(Arc::new(ring));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;

    #[test]
    fn the_ring_finds_live_secrets_and_key_bindings_only() {
        let keys = Keys::derive(&MasterKey::from_bytes([3; 32]));
        let (live, live_plain) = new_secret(&keys, 1);
        let (mut revoked, _) = new_secret(&keys, 1);
        revoked.revoked_ms = Some(2);
        assert!(live_plain.starts_with("kss_"));
        assert!(!live.sealed.contains(&live_plain[4..]));
        let p = Product {
            id: "app".into(),
            name: None,
            require_signatures: true,
            api_keys: vec!["key1".into()],
            signing_secrets: vec![live.clone(), revoked.clone()],
            created_ms: 1,
            updated_ms: 1,
            version: 1,
        };
        let ring = ProductRing::build(std::slice::from_ref(&p), &keys).unwrap();
        assert_eq!(ring.product_of_key("key1"), Some(("app", true)));
        assert_eq!(ring.product_of_key("key2"), None);
        let (product, secret) = ring.secret(&live.id).unwrap();
        assert_eq!((product, secret), ("app", live_plain.as_bytes()));
        assert!(ring.secret(&revoked.id).is_none());
        // Another master key cannot open the secrets.
        let other = Keys::derive(&MasterKey::from_bytes([4; 32]));
        assert!(ProductRing::build(&[p], &other).is_err());
    }

    #[test]
    fn product_ids_are_path_and_label_safe() {
        assert!(valid_product_id("acme-app_2.0"));
        for bad in ["", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(!valid_product_id(bad), "{bad:?}");
        }
    }
}
