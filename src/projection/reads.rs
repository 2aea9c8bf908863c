//! The one place that reads counter states back: sled holds what was
//! flushed, the overlay what was applied since.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, RwLock};

use super::ProjectionError;
use crate::meter::AggState;

/// Counter states changed since the last flush, shared with queries.
pub type Overlay = Arc<RwLock<BTreeMap<Vec<u8>, AggState>>>;

/// The states of the counter keys in `ranges`, newest first: the overlay is
/// read before sled, so a state flushed (and dropped from the overlay)
/// between the two reads is still found in sled, and nothing a query could
/// see before it started is missing from its answer.
pub fn read_states(
    tree: &sled::Tree,
    overlay: &Overlay,
    ranges: &[Range<Vec<u8>>],
) -> Result<BTreeMap<Vec<u8>, AggState>, ProjectionError> {
    let mut states = BTreeMap::new();
    {
        let overlay = overlay.read().expect("overlay lock");
        for r in ranges {
            for (k, v) in overlay.range(r.clone()) {
                states.insert(k.clone(), v.clone());
            }
        }
    }
    for r in ranges {
        for kv in tree.range(r.clone()) {
            let (k, v) = kv?;
            if let std::collections::btree_map::Entry::Vacant(e) = states.entry(k.to_vec()) {
                e.insert(decode_state(&k, &v)?);
            }
        }
    }
    Ok(states)
}

pub(super) fn decode_state(k: &[u8], v: &[u8]) -> Result<AggState, ProjectionError> {
    AggState::decode(v).map_err(|e| ProjectionError::Value {
        tree: "counters",
        key: hex::encode(k),
        reason: e.to_string(),
    })
}
