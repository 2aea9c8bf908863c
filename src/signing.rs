//! Signed client calls on the server side: the time window and the nonce
//! memory that refuse replays.
//!
//! The scheme itself (`Keymeter-Signature` header, canonical request,
//! HMAC-SHA256) is specified and implemented once, in
//! `keymeter_client::signing`, shared with clients and re-exported here;
//! docs/signing.md is the language-neutral description with a worked
//! example. The HTTP layer (`api::guard`) decides which calls must be
//! signed and maps [`SignatureError`]s to responses.

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::error_code::ErrorCode;

pub use keymeter_client::signing::{
    canonical_request, sign, sign_request, HeaderError, RequestParts, SignatureHeader,
    HEADER_BYTES_MAX, NONCE_CHARS_MAX, NONCE_CHARS_MIN, SCHEME, SECRET_PREFIX, SIGNATURE_HEADER,
};

/// Why a signed call was refused. Each has its own stable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the Keymeter-Signature header is malformed: {0}")]
    Malformed(String),
    #[error("this API key's product requires signed calls; send a Keymeter-Signature header")]
    Required,
    #[error("signing secret `{0}` is unknown, revoked, or not this API key's product's")]
    UnknownKey(String),
    #[error(
        "the signature timestamp is {skew_s} s away from the server clock (allowed: ±{allowed_s} s); \
         check the client clock and sign again"
    )]
    Stale { skew_s: i64, allowed_s: i64 },
    #[error("the signature timestamp is from before the server started; sign the call again")]
    BeforeStart,
    #[error("the signature does not match the request")]
    Mismatch,
    #[error("this nonce was already used; sign every call, including retries, with a new nonce")]
    Replayed,
    #[error("too many signed calls in the replay window to remember their nonces; retry shortly")]
    NonceCapacity,
    #[error(
        "the nonce of this call could not be stored; nothing was recorded, retry with a new nonce"
    )]
    NonceJournal,
}

impl From<HeaderError> for SignatureError {
    fn from(e: HeaderError) -> SignatureError {
        SignatureError::Malformed(e.0)
    }
}

impl SignatureError {
    pub fn code(&self) -> ErrorCode {
        match self {
            SignatureError::Malformed(_) => ErrorCode::SignatureMalformed,
            SignatureError::Required => ErrorCode::SignatureRequired,
            SignatureError::UnknownKey(_) => ErrorCode::SignatureKeyUnknown,
            SignatureError::Stale { .. } | SignatureError::BeforeStart => {
                ErrorCode::SignatureExpired
            }
            SignatureError::Mismatch => ErrorCode::SignatureInvalid,
            SignatureError::Replayed => ErrorCode::RequestReplayed,
            SignatureError::NonceCapacity => ErrorCode::NonceCapacity,
            SignatureError::NonceJournal => ErrorCode::Internal,
        }
    }

    /// The `reason` label of `keymeter_signature_refusals_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            SignatureError::Malformed(_) => "malformed",
            SignatureError::Required => "missing",
            SignatureError::UnknownKey(_) => "unknown_key",
            SignatureError::Stale { .. } | SignatureError::BeforeStart => "expired",
            SignatureError::Mismatch => "invalid",
            SignatureError::Replayed => "replayed",
            SignatureError::NonceCapacity => "nonce_capacity",
            SignatureError::NonceJournal => "nonce_journal",
        }
    }
}

/// Checks the HMAC in constant time.
pub fn verify_mac(
    secret: &[u8],
    header: &SignatureHeader,
    req: &RequestParts,
) -> Result<(), SignatureError> {
    if keymeter_client::signing::verify_mac(secret, header, req) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Is `timestamp` within `±tolerance_s` of `now_s`, and not before
/// `not_before_s` (the server's start: only the nonces of calls dated ahead
/// of their arrival are kept across restarts, so older signatures could be
/// replays)?
pub fn check_time(
    timestamp: i64,
    now_s: i64,
    tolerance_s: i64,
    not_before_s: i64,
) -> Result<(), SignatureError> {
    let skew = timestamp.saturating_sub(now_s);
    if skew.abs() > tolerance_s {
        return Err(SignatureError::Stale {
            skew_s: skew,
            allowed_s: tolerance_s,
        });
    }
    if timestamp < not_before_s {
        return Err(SignatureError::BeforeStart);
    }
    Ok(())
}

const NONCE_SHARDS: usize = 16;

/// What the nonce memory keys on: SHA-256(key id ‖ 0 ‖ nonce).
pub fn nonce_digest(key_id: &str, nonce: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(key_id.as_bytes());
    h.update([0]);
    h.update(nonce.as_bytes());
    h.finalize().into()
}

/// The nonces seen within the tolerance window, per product. A nonce is
/// remembered until its timestamp leaves the window (`t + tolerance`), so
/// memory is bounded by the signed-call rate times the window, and each
/// product by `capacity`: one product filling its memory (by mistake or by
/// grinding nonces) refuses only its own calls.
///
/// Within a product the shard is chosen by a hash keyed at random when the
/// server starts, so a caller cannot aim its nonces at one shard and fill it
/// at a sixteenth of the capacity.
pub struct NonceCache {
    capacity_per_shard: usize,
    shard_of: std::hash::RandomState,
    products: Mutex<HashMap<String, std::sync::Arc<ProductNonces>>>,
    /// Nonces claimed before a restart (their product is not stored with
    /// them; the digest names the signing secret, so they cannot collide).
    restored: Mutex<HashMap<[u8; 32], i64>>,
}

struct ProductNonces {
    shards: Vec<Mutex<Shard>>,
}

#[derive(Default)]
struct Shard {
    /// SHA-256(key id ‖ 0 ‖ nonce) → forget after (unix seconds).
    seen: HashMap<[u8; 32], i64>,
    /// Smallest forget-after in `seen`, to skip sweeps that find nothing.
    next_expiry: i64,
}

impl NonceCache {
    /// `capacity`: most live nonces per product.
    pub fn new(capacity: usize) -> NonceCache {
        NonceCache {
            capacity_per_shard: capacity.div_ceil(NONCE_SHARDS).max(1),
            shard_of: std::hash::RandomState::new(),
            products: Mutex::new(HashMap::new()),
            restored: Mutex::new(HashMap::new()),
        }
    }

    /// Records `nonce` for `key_id` of `product` until `forget_after_s`.
    /// Fails if it was already recorded (a replay) or if the product's
    /// memory is full of live nonces.
    pub fn claim(
        &self,
        product: &str,
        key_id: &str,
        nonce: &str,
        now_s: i64,
        forget_after_s: i64,
    ) -> Result<(), SignatureError> {
        self.claim_digest(product, nonce_digest(key_id, nonce), now_s, forget_after_s)
    }

    /// [`Self::claim`] by the digest of key id and nonce.
    pub fn claim_digest(
        &self,
        product: &str,
        digest: [u8; 32],
        now_s: i64,
        forget_after_s: i64,
    ) -> Result<(), SignatureError> {
        if lock(&self.restored)
            .get(&digest)
            .is_some_and(|&until| until >= now_s)
        {
            return Err(SignatureError::Replayed);
        }
        let nonces = self.product(product);
        let mut shard = lock(&nonces.shards[self.shard_index(&digest)]);
        if let Some(&until) = shard.seen.get(&digest) {
            if until >= now_s {
                return Err(SignatureError::Replayed);
            }
        }
        if shard.seen.len() >= self.capacity_per_shard && shard.next_expiry < now_s {
            shard.seen.retain(|_, until| *until >= now_s);
            shard.next_expiry = shard.seen.values().copied().min().unwrap_or(i64::MAX);
        }
        if shard.seen.len() >= self.capacity_per_shard {
            return Err(SignatureError::NonceCapacity);
        }
        shard.seen.insert(digest, forget_after_s);
        shard.next_expiry = shard.next_expiry.min(forget_after_s);
        Ok(())
    }

    /// Remembers a nonce claimed before a restart, whatever the capacity:
    /// it was within the bound when claimed.
    pub fn remember(&self, digest: [u8; 32], forget_after_s: i64) {
        lock(&self.restored).insert(digest, forget_after_s);
    }

    fn product(&self, product: &str) -> std::sync::Arc<ProductNonces> {
        let mut products = lock(&self.products);
        if let Some(p) = products.get(product) {
            return p.clone();
        }
        let p = std::sync::Arc::new(ProductNonces {
            shards: (0..NONCE_SHARDS)
                .map(|_| Mutex::new(Shard::default()))
                .collect(),
        });
        products.insert(product.to_owned(), p.clone());
        p
    }

    fn shard_index(&self, digest: &[u8; 32]) -> usize {
        use std::hash::BuildHasher as _;
        (self.shard_of.hash_one(digest) % NONCE_SHARDS as u64) as usize
    }

    pub fn len(&self) -> usize {
        let products: Vec<_> = lock(&self.products).values().cloned().collect();
        let live: usize = products
            .iter()
            .flat_map(|p| p.shards.iter())
            .map(|s| lock(s).seen.len())
            .sum();
        live + lock(&self.restored).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of docs/signing.md, byte for byte.
    #[test]
    fn worked_example_from_the_docs() {
        let secret = "kss_7mY3q0d1bX2n9sV4cR8tL5wZ6hJ0kP1a";
        let req = RequestParts {
            method: "POST",
            path: "/api/v1/events",
            query: "",
            body: br#"{"specversion":"1.0","id":"evt-1","source":"app","type":"api-call","subject":"customer-1"}"#,
        };
        let canonical = canonical_request("a1b2c3d4e5f6", 1767225600, "n-0123456789abcdef", &req);
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/signing.md"))
            .unwrap();
        assert!(
            doc.contains(&format!("```text\n{canonical}\n```")),
            "docs/signing.md does not show this canonical request:\n{canonical}"
        );
        let header = sign(
            secret,
            "a1b2c3d4e5f6",
            1767225600,
            "n-0123456789abcdef",
            &req,
        );
        let value = header.to_header_value();
        assert!(
            doc.contains(&format!("Keymeter-Signature: {value}")),
            "docs/signing.md does not show this header:\n{value}"
        );
        assert_eq!(SignatureHeader::parse(&value).unwrap(), header);
        assert!(verify_mac(secret.as_bytes(), &header, &req).is_ok());
    }

    fn req(body: &[u8]) -> RequestParts<'_> {
        RequestParts {
            method: "POST",
            path: "/api/v1/licenses/validate",
            query: "a=1",
            body,
        }
    }

    #[test]
    fn any_change_to_a_signed_part_breaks_the_signature() {
        let secret = "kss_secret";
        let h = sign(secret, "kid1", 100, "nonce-0123456789ab", &req(b"{}"));
        assert!(verify_mac(secret.as_bytes(), &h, &req(b"{}")).is_ok());
        assert_eq!(
            verify_mac(secret.as_bytes(), &h, &req(b"{} ")),
            Err(SignatureError::Mismatch)
        );
        let mut other = req(b"{}");
        other.method = "PUT";
        assert!(verify_mac(secret.as_bytes(), &h, &other).is_err());
        let mut other = req(b"{}");
        other.path = "/api/v1/events";
        assert!(verify_mac(secret.as_bytes(), &h, &other).is_err());
        let mut other = req(b"{}");
        other.query = "a=2";
        assert!(verify_mac(secret.as_bytes(), &h, &other).is_err());
        let mut moved = h.clone();
        moved.timestamp += 1;
        assert!(verify_mac(secret.as_bytes(), &moved, &req(b"{}")).is_err());
        let mut renonced = h.clone();
        renonced.nonce = "nonce-0123456789ac".into();
        assert!(verify_mac(secret.as_bytes(), &renonced, &req(b"{}")).is_err());
        assert!(verify_mac(b"kss_other", &h, &req(b"{}")).is_err());
    }

    #[test]
    fn header_parsing_names_what_is_wrong() {
        let ok = "k=abc, t=100, n=0123456789abcdef, v1=".to_owned() + &"0f".repeat(32);
        let h = SignatureHeader::parse(&ok).unwrap();
        assert_eq!((h.key_id.as_str(), h.timestamp), ("abc", 100));
        // Order and spacing do not matter; unknown fields are ignored.
        let shuffled = format!(
            "v1={},n=0123456789abcdef ,  t=100,k=abc,v2=zz",
            "0f".repeat(32)
        );
        assert_eq!(SignatureHeader::parse(&shuffled).unwrap(), h);
        for (bad, needle) in [
            ("k=abc, t=100, n=0123456789abcdef", "`v1`"),
            (&*ok.replace("t=100", "t=-100"), "`t`"),
            (&*ok.replace("t=100", "t=1e3"), "`t`"),
            (&*ok.replace("n=0123456789abcdef", "n=short"), "`n`"),
            (&*ok.replace("k=abc", "k=a b"), "`k`"),
            (&*format!("{ok}, k=abc"), "twice"),
            (&*ok.replace("v1=0f", "v1=zz"), "`v1`"),
            ("garbage", "name=value"),
        ] {
            match SignatureHeader::parse(bad).map_err(SignatureError::from) {
                Err(SignatureError::Malformed(msg)) => {
                    assert!(msg.contains(needle), "{bad:?}: {msg}")
                }
                other => panic!("{bad:?} parsed as {other:?}"),
            }
        }
        assert!(SignatureHeader::parse(&"k=a,".repeat(400)).is_err());
    }

    #[test]
    fn timestamps_outside_the_window_or_before_start_are_refused() {
        assert!(check_time(1000, 1000, 300, 0).is_ok());
        assert!(check_time(1300, 1000, 300, 0).is_ok());
        assert!(check_time(700, 1000, 300, 0).is_ok());
        assert_eq!(
            check_time(699, 1000, 300, 0),
            Err(SignatureError::Stale {
                skew_s: -301,
                allowed_s: 300
            })
        );
        assert!(check_time(1301, 1000, 300, 0).is_err());
        assert_eq!(
            check_time(990, 1000, 300, 995),
            Err(SignatureError::BeforeStart)
        );
    }

    #[test]
    fn a_nonce_is_refused_a_second_time_until_it_leaves_the_window() {
        let cache = NonceCache::new(1000);
        cache.claim("p", "k1", "nonce-a", 100, 400).unwrap();
        assert_eq!(
            cache.claim("p", "k1", "nonce-a", 200, 500),
            Err(SignatureError::Replayed)
        );
        // Another secret may use the same nonce.
        cache.claim("p", "k2", "nonce-a", 200, 500).unwrap();
        // After its window the old entry no longer blocks (its timestamp
        // would be refused as stale anyway).
        cache.claim("p", "k1", "nonce-a", 401, 701).unwrap();
        // A nonce remembered from before a restart is refused too.
        cache.remember(nonce_digest("k3", "nonce-b"), 800);
        assert_eq!(
            cache.claim("p", "k3", "nonce-b", 700, 800),
            Err(SignatureError::Replayed)
        );
    }

    #[test]
    fn the_nonce_cache_is_bounded_and_frees_expired_entries() {
        let cache = NonceCache::new(NONCE_SHARDS * 4);
        let mut refused = 0;
        for i in 0..(NONCE_SHARDS * 16) {
            match cache.claim("p", "k", &format!("n{i}"), 10, 20) {
                Ok(()) => {}
                Err(SignatureError::NonceCapacity) => refused += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(refused > 0);
        assert!(cache.len() <= NONCE_SHARDS * 4);
        // Once those expire, new nonces fit again: as many as one shard
        // holds, since the keyed shard choice may put them all in one.
        for i in 0..4 {
            cache.claim("p", "k", &format!("later{i}"), 21, 31).unwrap();
        }
    }

    #[test]
    fn a_product_that_fills_its_nonce_memory_refuses_only_its_own_calls() {
        let cache = NonceCache::new(NONCE_SHARDS * 4);
        let mut refused = 0;
        for i in 0..(NONCE_SHARDS * 16) {
            if cache.claim("grinder", "kg", &format!("n{i}"), 10, 20)
                == Err(SignatureError::NonceCapacity)
            {
                refused += 1;
            }
        }
        assert!(refused >= NONCE_SHARDS * 12, "{refused}");
        // As many as one shard holds, so wherever the keyed choice puts
        // them they fit: the grinder's full memory is not the other's.
        for i in 0..4 {
            cache
                .claim("other", "ko", &format!("n{i}"), 10, 20)
                .unwrap();
        }
    }

    #[test]
    fn shards_are_chosen_by_a_key_the_caller_does_not_know() {
        // Nonces aimed at one shard of an unkeyed choice (the first digest
        // byte) spread over every shard of the keyed one.
        let cache = NonceCache::new(1000);
        let aimed: Vec<[u8; 32]> = (0..)
            .map(|i| nonce_digest("k", &format!("n{i}")))
            .filter(|d| (d[0] as usize).is_multiple_of(NONCE_SHARDS))
            .take(200)
            .collect();
        let used: std::collections::BTreeSet<usize> =
            aimed.iter().map(|d| cache.shard_index(d)).collect();
        assert!(used.len() > NONCE_SHARDS / 2, "{used:?}");
    }
}
