use proptest::prelude::*;

use super::*;

/// RFC 6962's MTH, written as the RFC states it.
fn naive_root(leaves: &[Node]) -> Node {
    match leaves.len() {
        0 => Node::empty(),
        1 => leaves[0],
        n => {
            let mut k = 1;
            while k * 2 < n {
                k *= 2;
            }
            Node::parent(&naive_root(&leaves[..k]), &naive_root(&leaves[k..]))
        }
    }
}

fn leaves(values: &[i64]) -> Vec<Node> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| Node::leaf(format!("event {i}").as_bytes(), i128::from(*v)))
        .collect()
}

#[test]
fn the_empty_tree_is_the_hash_of_nothing_with_sum_zero() {
    let empty = root(&[]);
    assert_eq!(
        hex::encode(empty.hash),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(empty.sum, 0);
}

#[test]
fn leaves_and_nodes_are_domain_separated() {
    let a = Node::leaf(b"a", 1);
    let b = Node::leaf(b"b", 2);
    let parent = Node::parent(&a, &b);
    // The parent's preimage, presented as a leaf, does not give its hash.
    let mut preimage = Vec::new();
    preimage.extend_from_slice(&a.hash);
    preimage.extend_from_slice(&a.sum.to_be_bytes());
    preimage.extend_from_slice(&b.hash);
    preimage.extend_from_slice(&b.sum.to_be_bytes());
    assert_ne!(Node::leaf(&preimage, 3).hash, parent.hash);
    assert_eq!(parent.sum, 3);
}

#[test]
fn a_changed_value_changes_the_root_even_when_the_total_is_kept() {
    let tree = leaves(&[5, 7]);
    let mut moved = tree.clone();
    moved[0].sum = 6;
    moved[1].sum = 6;
    assert_eq!(root(&tree).sum, root(&moved).sum);
    assert_ne!(root(&tree).hash, root(&moved).hash);
}

proptest! {
    #[test]
    fn root_equals_the_rfc_recursion(values in prop::collection::vec(-1000i64..1000, 0..70)) {
        let tree = leaves(&values);
        let r = root(&tree);
        prop_assert_eq!(r, naive_root(&tree));
        prop_assert_eq!(r.sum, values.iter().map(|v| i128::from(*v)).sum::<i128>());
    }

    #[test]
    fn every_leaf_has_a_verifying_proof_and_no_other_leaf_does(
        values in prop::collection::vec(0i64..1000, 1..70),
        pick in any::<prop::sample::Index>(),
    ) {
        let tree = leaves(&values);
        let r = root(&tree);
        let n = tree.len() as u64;
        let m = pick.index(tree.len());
        let path = inclusion_proof(&tree, m).unwrap();
        prop_assert!(verify_inclusion(&tree[m], m as u64, n, &path, &r));
        // Another leaf, or the same leaf with another value, does not verify.
        let other = Node::leaf(b"not counted", i128::from(values[m]));
        prop_assert!(!verify_inclusion(&other, m as u64, n, &path, &r));
        let mut inflated = tree[m];
        inflated.sum += 1;
        prop_assert!(!verify_inclusion(&inflated, m as u64, n, &path, &r));
        if n > 1 {
            let wrong = (m + 1) % tree.len();
            prop_assert!(
                tree[wrong] == tree[m]
                    || !verify_inclusion(&tree[wrong], m as u64, n, &path, &r)
            );
        }
        prop_assert!(!verify_inclusion(&tree[m], n, n, &path, &r));
    }

    #[test]
    fn every_prefix_is_consistent_with_the_whole(
        values in prop::collection::vec(-50i64..1000, 1..70),
        pick in any::<prop::sample::Index>(),
    ) {
        let tree = leaves(&values);
        let n = tree.len();
        let m = pick.index(n) + 1;
        let (old, new) = (root(&tree[..m]), root(&tree));
        let proof = consistency_proof(&tree, m).unwrap();
        prop_assert!(verify_consistency(m as u64, n as u64, &proof, &old, &new));
        // A version that changed an old leaf is not an extension.
        let mut changed = tree.clone();
        changed[0] = Node::leaf(b"rewritten", changed[0].sum);
        let changed_root = root(&changed);
        if m < n {
            prop_assert!(!verify_consistency(m as u64, n as u64, &proof, &old, &changed_root));
            let other_proof = consistency_proof(&changed, m).unwrap();
            prop_assert!(!verify_consistency(m as u64, n as u64, &other_proof, &old, &changed_root));
        }
    }
}
