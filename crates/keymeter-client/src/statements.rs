//! Offline checks of billing statements, with the server's published keys
//! and no secret: the signature, that each line's Merkle sum root totals
//! its quantity, that an event is counted in a line (inclusion proof), and
//! that a later version only added events to an earlier one (consistency
//! proof and the hash link). docs/billing-statements.md specifies the
//! formats.
//!
//! A statement is served as `{"statement": {...}, "jws": "<compact JWS>"}`;
//! the JWS payload is the statement's canonical bytes (what the `previous`
//! link of the next version hashes).

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::merkle::{self, Node};
use crate::{b64, ClientError, Keys};

/// Fixed point of amounts: `value × 10^9`.
const SCALE: i128 = 1_000_000_000;

#[derive(Debug, Clone, Deserialize)]
pub struct Line {
    pub line_id: String,
    pub meter: String,
    pub quantity: String,
    pub leaves: u64,
    pub root: Node,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Previous {
    pub version: u32,
    pub sha256: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PeriodRef {
    pub label: String,
}

/// The parts of a statement the checks read.
#[derive(Debug, Clone, Deserialize)]
pub struct Statement {
    pub statement_id: String,
    pub version: u32,
    pub subject: String,
    pub period: PeriodRef,
    pub lines: Vec<Line>,
    pub leaves: u64,
    pub root: String,
    pub previous: Option<Previous>,
}

/// A statement whose signature and sums verified.
#[derive(Debug, Clone)]
pub struct Verified {
    pub statement: Statement,
    /// The key that signed it.
    pub kid: String,
    /// SHA-256 of its canonical bytes (hex).
    pub sha256: String,
}

#[derive(Deserialize)]
struct Served {
    jws: String,
}

#[derive(Deserialize)]
struct JwsHeader {
    alg: String,
    kid: Option<String>,
}

fn mismatch(what: impl Into<String>) -> ClientError {
    ClientError::Malformed(what.into())
}

/// Parses an exact decimal (at most 9 fractional digits) into fixed point.
pub fn parse_amount(text: &str) -> Result<i128, ClientError> {
    let bad = || mismatch(format!("{text:?} is not an exact decimal"));
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty()
        || frac.len() > 9
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let int: i128 = int.parse().map_err(|_| bad())?;
    let frac_value: i128 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| bad())?
    };
    let magnitude = int
        .checked_mul(SCALE)
        .and_then(|v| v.checked_add(frac_value * 10i128.pow(9 - frac.len() as u32)))
        .ok_or_else(bad)?;
    Ok(if negative { -magnitude } else { magnitude })
}

/// Verifies a served statement (`{"statement", "jws"}` JSON): its JWS
/// signature with `keys`, that each line's root sums to its quantity and
/// that the statement's root and leaf count are those of its lines.
pub fn verify_statement(served_json: &str, keys: &Keys) -> Result<Verified, ClientError> {
    let served: Served =
        serde_json::from_str(served_json).map_err(|e| mismatch(format!("statement: {e}")))?;
    let mut parts = served.jws.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(mismatch("a JWS has three parts"));
    };
    let header: JwsHeader =
        serde_json::from_slice(&b64(h, "header")?).map_err(|e| mismatch(format!("header: {e}")))?;
    if header.alg != "EdDSA" {
        return Err(ClientError::Unsupported(format!("alg {}", header.alg)));
    }
    let kid = header.kid.ok_or_else(|| mismatch("header has no kid"))?;
    keys.verify(
        &kid,
        &served.jws.as_bytes()[..h.len() + 1 + p.len()],
        &b64(s, "signature")?,
    )?;
    let payload = b64(p, "payload")?;
    // What is checked is what was signed; the readable copy must say the same.
    let signed: serde_json::Value =
        serde_json::from_slice(&payload).map_err(|e| mismatch(format!("payload: {e}")))?;
    let shown: serde_json::Value = serde_json::from_str::<serde_json::Value>(served_json)
        .ok()
        .and_then(|v| v.get("statement").cloned())
        .ok_or_else(|| mismatch("no statement beside the jws"))?;
    if signed != shown {
        return Err(mismatch("the statement shown differs from the one signed"));
    }
    let statement: Statement =
        serde_json::from_value(signed).map_err(|e| mismatch(format!("statement: {e}")))?;
    let mut root = Sha256::new();
    root.update([2u8]);
    let mut leaves = 0u64;
    for line in &statement.lines {
        if parse_amount(&line.quantity)? != line.root.sum {
            return Err(mismatch(format!(
                "line {}: the root sums to {} (fixed point) but the quantity is {}",
                line.line_id, line.root.sum, line.quantity
            )));
        }
        root.update(line.root.hash);
        root.update(line.root.sum.to_be_bytes());
        leaves += line.leaves;
    }
    if hex::encode(root.finalize()) != statement.root || leaves != statement.leaves {
        return Err(mismatch(
            "the statement's root or leaf count is not that of its lines",
        ));
    }
    Ok(Verified {
        statement,
        kid,
        sha256: hex::encode(Sha256::digest(&payload)),
    })
}

/// An inclusion proof as `GET …/statements/{id}/proof` serves it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InclusionProof {
    pub statement_id: String,
    pub version: u32,
    pub line_id: String,
    pub leaf_bytes: String,
    pub index: u64,
    pub size: u64,
    pub path: Vec<Node>,
    pub root: Node,
}

/// What a verified inclusion proof shows: this event is counted in the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountedEvent {
    pub line_id: String,
    pub seq: u64,
    /// First 16 bytes of SHA-256(source ‖ 0x00 ‖ id), hex.
    pub identity: String,
    pub time_ms: i64,
    /// Fixed point, `value × 10^9`.
    pub value: i128,
}

/// Verifies that the proof's leaf is counted in `verified`'s line: the leaf
/// names the statement's subject and the line's meter, and its path leads to
/// the line's signed root.
pub fn verify_inclusion(
    verified: &Verified,
    proof_json: &str,
) -> Result<CountedEvent, ClientError> {
    let proof: InclusionProof =
        serde_json::from_str(proof_json).map_err(|e| mismatch(format!("proof: {e}")))?;
    let s = &verified.statement;
    if proof.statement_id != s.statement_id || proof.version != s.version {
        return Err(mismatch("the proof is for another statement or version"));
    }
    let line = (s.lines.iter())
        .find(|l| l.line_id == proof.line_id)
        .ok_or_else(|| mismatch(format!("the statement has no line {}", proof.line_id)))?;
    if proof.root != line.root || proof.size != line.leaves {
        return Err(mismatch("the proof's root is not the line's signed root"));
    }
    let bytes = hex::decode(&proof.leaf_bytes).map_err(|e| mismatch(format!("leafBytes: {e}")))?;
    let event = decode_leaf(&bytes, &s.subject, &line.meter)?;
    let leaf = Node::leaf(&bytes, event.value);
    if !merkle::verify_inclusion(&leaf, proof.index, proof.size, &proof.path, &line.root) {
        return Err(mismatch("the inclusion proof does not verify"));
    }
    Ok(CountedEvent {
        line_id: line.line_id.clone(),
        ..event
    })
}

/// The fields of a leaf's canonical bytes, which must name `subject` and `meter`.
fn decode_leaf(b: &[u8], subject: &str, meter: &str) -> Result<CountedEvent, ClientError> {
    let short = || mismatch("leaf bytes are too short");
    let fixed = b.get(..48).ok_or_else(short)?;
    let mut rest = &b[48..];
    let mut text = || -> Result<String, ClientError> {
        let len =
            u32::from_be_bytes(rest.get(..4).ok_or_else(short)?.try_into().expect("4")) as usize;
        let t = rest.get(4..4 + len).ok_or_else(short)?;
        rest = &rest[4 + len..];
        String::from_utf8(t.to_vec()).map_err(|_| mismatch("leaf text is not UTF-8"))
    };
    let (leaf_subject, leaf_meter) = (text()?, text()?);
    if leaf_subject != subject || leaf_meter != meter || !rest.is_empty() {
        return Err(mismatch("the leaf is for another subject or meter"));
    }
    Ok(CountedEvent {
        line_id: String::new(),
        seq: u64::from_be_bytes(fixed[..8].try_into().expect("8")),
        identity: hex::encode(&fixed[8..24]),
        time_ms: i64::from_be_bytes(fixed[24..32].try_into().expect("8")),
        value: i128::from_be_bytes(fixed[32..48].try_into().expect("16")),
    })
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LineConsistency {
    line_id: String,
    old_size: u64,
    new_size: u64,
    proof: Vec<Node>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConsistencyProof {
    lines: Vec<LineConsistency>,
}

/// Verifies that `new` is a later version of `old` that only added events:
/// it links to `old`'s hash, keeps every line, and each line's tree extends
/// the old one (the proofs of `GET …/consistency`).
pub fn verify_consistency(
    old: &Verified,
    new: &Verified,
    proof_json: &str,
) -> Result<(), ClientError> {
    let (o, n) = (&old.statement, &new.statement);
    if o.statement_id != n.statement_id || n.version <= o.version {
        return Err(mismatch("not a later version of the same statement"));
    }
    if n.version == o.version + 1
        && n.previous.as_ref().map(|p| p.sha256.as_str()) != Some(old.sha256.as_str())
    {
        return Err(mismatch(
            "the new version does not link to the old one's hash",
        ));
    }
    let proof: ConsistencyProof =
        serde_json::from_str(proof_json).map_err(|e| mismatch(format!("proof: {e}")))?;
    for old_line in &o.lines {
        let new_line = (n.lines.iter()).find(|l| l.line_id == old_line.line_id);
        let p = proof.lines.iter().find(|l| l.line_id == old_line.line_id);
        let (Some(new_line), Some(p)) = (new_line, p) else {
            return Err(mismatch(format!("line {} is missing", old_line.line_id)));
        };
        let sizes = (p.old_size, p.new_size) == (old_line.leaves, new_line.leaves);
        if !sizes
            || !merkle::verify_consistency(
                p.old_size,
                p.new_size,
                &p.proof,
                &old_line.root,
                &new_line.root,
            )
        {
            return Err(mismatch(format!(
                "line {} does not extend the old version",
                old_line.line_id
            )));
        }
    }
    Ok(())
}
