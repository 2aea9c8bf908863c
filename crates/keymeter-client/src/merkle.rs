//! Merkle sum trees: RFC 6962's tree shape and domain separation, with each
//! node also carrying the sum of the values below it, so that a proof that an
//! event is a leaf also proves it is counted in the root's total.
//!
//! - leaf: `hash = SHA-256(0x00 ‖ leaf bytes)`, `sum = value`;
//! - node: `hash = SHA-256(0x01 ‖ left.hash ‖ left.sum ‖ right.hash ‖ right.sum)`,
//!   `sum = left.sum + right.sum`, sums as 16-byte big-endian two's complement
//!   (the engine's fixed-point amounts, `value × 10^9`);
//! - the tree of `n` leaves splits at `k`, the largest power of two below
//!   `n` (RFC 6962 §2.1); the empty tree is `(SHA-256(""), 0)`.
//!
//! Inclusion and consistency proofs are RFC 6962's `PATH` and `PROOF`; their
//! checks are RFC 9162 §2.1.3.2 and §2.1.4.2 with sums carried along. The
//! functions here are pure and need no secret: the server builds statements
//! with them and a customer checks them with the same code
//! (docs/billing-statements.md shows the checks in a few lines of Python).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A subtree: its hash and the sum of its leaves' values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    #[serde(with = "hex32")]
    pub hash: [u8; 32],
    /// Sum of the leaves' values (fixed point, `value × 10^9`).
    #[serde(with = "i128_text")]
    pub sum: i128,
}

impl Node {
    /// The leaf of `bytes` (a canonical encoding) with value `value`.
    pub fn leaf(bytes: &[u8], value: i128) -> Node {
        let mut h = Sha256::new();
        h.update([0u8]);
        h.update(bytes);
        Node {
            hash: h.finalize().into(),
            sum: value,
        }
    }

    /// The parent of `left` and `right`.
    pub fn parent(left: &Node, right: &Node) -> Node {
        let mut h = Sha256::new();
        h.update([1u8]);
        h.update(left.hash);
        h.update(left.sum.to_be_bytes());
        h.update(right.hash);
        h.update(right.sum.to_be_bytes());
        Node {
            hash: h.finalize().into(),
            sum: left.sum.saturating_add(right.sum),
        }
    }

    /// The root of the empty tree.
    pub fn empty() -> Node {
        Node {
            hash: Sha256::digest([]).into(),
            sum: 0,
        }
    }
}

/// The largest power of two strictly below `n` (`n ≥ 2`).
fn split(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// The root of the tree over `leaves` (RFC 6962's MTH).
///
/// Folds the leaves left to right keeping one pending subtree per height
/// (perfect subtrees of 2^h leaves merge as soon as a twin completes, as in
/// RFC 6962's split), then joins the pending ones right to left: one pass, no
/// recursion, memory in the tree's height.
pub fn root(leaves: &[Node]) -> Node {
    let mut stack: Vec<(u32, Node)> = Vec::with_capacity(64);
    for leaf in leaves {
        let mut node = (0u32, *leaf);
        while let Some(&(height, left)) = stack.last() {
            if height != node.0 {
                break;
            }
            stack.pop();
            node = (height + 1, Node::parent(&left, &node.1));
        }
        stack.push(node);
    }
    let mut pending = stack.into_iter().rev().map(|(_, n)| n);
    let Some(mut right) = pending.next() else {
        return Node::empty();
    };
    for left in pending {
        right = Node::parent(&left, &right);
    }
    right
}

/// The audit path of leaf `index` in the tree over `leaves` (RFC 6962's
/// `PATH(m, D[n])`), siblings from the leaf up. `None` when out of range.
pub fn inclusion_proof(leaves: &[Node], index: usize) -> Option<Vec<Node>> {
    (index < leaves.len()).then(|| {
        let mut path = Vec::new();
        path_into(leaves, index, &mut path);
        path
    })
}

fn path_into(leaves: &[Node], m: usize, out: &mut Vec<Node>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path_into(&leaves[..k], m, out);
        out.push(root(&leaves[k..]));
    } else {
        path_into(&leaves[k..], m - k, out);
        out.push(root(&leaves[..k]));
    }
}

/// Whether `path` proves that `leaf` is leaf `index` of the tree of `size`
/// leaves whose root is `root_node` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    leaf: &Node,
    index: u64,
    size: u64,
    path: &[Node],
    root_node: &Node,
) -> bool {
    if index >= size {
        return false;
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in path {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = Node::parent(p, &r);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = Node::parent(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && r == *root_node
}

/// The consistency proof from the tree of the first `old_size` leaves to the
/// tree of all `leaves` (RFC 6962's `PROOF(m, D[n])`). `None` when
/// `old_size` is 0 or more than the leaves.
pub fn consistency_proof(leaves: &[Node], old_size: usize) -> Option<Vec<Node>> {
    (old_size > 0 && old_size <= leaves.len()).then(|| {
        let mut proof = Vec::new();
        if old_size < leaves.len() {
            subproof(leaves, old_size, true, &mut proof);
        }
        proof
    })
}

fn subproof(leaves: &[Node], m: usize, whole: bool, out: &mut Vec<Node>) {
    let n = leaves.len();
    if m == n {
        if !whole {
            out.push(root(leaves));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(&leaves[..k], m, whole, out);
        out.push(root(&leaves[k..]));
    } else {
        subproof(&leaves[k..], m - k, false, out);
        out.push(root(&leaves[..k]));
    }
}

/// Whether `proof` shows that the tree of `old_size` leaves with root `old`
/// is a prefix of the tree of `new_size` leaves with root `new` (RFC 9162
/// §2.1.4.2): the newer version only added leaves.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    proof: &[Node],
    old: &Node,
    new: &Node,
) -> bool {
    if old_size == 0 || old_size > new_size {
        return false;
    }
    if old_size == new_size {
        return proof.is_empty() && old == new;
    }
    let mut path: Vec<Node> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(*old);
    }
    path.extend_from_slice(proof);
    let (mut fn_, mut sn) = (old_size - 1, new_size - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = Node::parent(c, &fr);
            sr = Node::parent(c, &sr);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            sr = Node::parent(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && fr == *old && sr == *new
}

/// `[u8; 32]` as lowercase hex in JSON.
pub mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let bytes = hex::decode(&text).map_err(serde::de::Error::custom)?;
        bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom("expected 32 bytes of hex"))
    }
}

/// An `i128` as decimal text in JSON (JSON numbers lose precision past 2^53).
pub mod i128_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &i128, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i128, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}
