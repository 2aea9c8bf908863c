//! The one place that reads counter states back: sled holds what was
//! flushed (in blocks, see [`blocks`]), the overlay what was applied since.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, RwLock};

use super::{blocks, ProjectionError};
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
        for kv in blocks::range_states(tree, r.clone()) {
            let (k, state) = kv?;
            if let std::collections::btree_map::Entry::Vacant(e) = states.entry(k) {
                e.insert(state);
            }
        }
    }
    Ok(states)
}

/// [`read_states`] as a stream, in key order within each range, so a query
/// over many states holds its answer, not every state it reads: the
/// overlay's entries in `ranges` are copied first (they are few: what
/// changed since the last flush), then each sled range is walked and merged
/// with them, the overlay winning on equal keys. Yields at most one error.
pub fn stream_states<'a>(
    tree: &'a sled::Tree,
    overlay: &Overlay,
    ranges: &'a [Range<Vec<u8>>],
) -> impl Iterator<Item = Result<(Vec<u8>, AggState), ProjectionError>> + 'a {
    let pending: BTreeMap<Vec<u8>, AggState> = {
        let overlay = overlay.read().expect("overlay lock");
        ranges
            .iter()
            .flat_map(|r| overlay.range(r.clone()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let pending = Arc::new(pending);
    let mut failed = false;
    ranges
        .iter()
        .flat_map(move |r| merge_range(tree, pending.clone(), r.clone()))
        .take_while(move |item| {
            let go_on = !failed;
            failed |= item.is_err();
            go_on
        })
}

/// One range of sled merged with the overlay entries in it.
fn merge_range<'a>(
    tree: &'a sled::Tree,
    pending: Arc<BTreeMap<Vec<u8>, AggState>>,
    range: Range<Vec<u8>>,
) -> impl Iterator<Item = Result<(Vec<u8>, AggState), ProjectionError>> + 'a {
    let mut stored = blocks::range_states(tree, range.clone()).peekable();
    let keys: Vec<Vec<u8>> = pending.range(range).map(|(k, _)| k.clone()).collect();
    let mut keys = keys.into_iter().peekable();
    std::iter::from_fn(move || {
        let next_stored = match stored.peek() {
            None => None,
            Some(Ok((k, _))) => Some(k.clone()),
            Some(Err(_)) => {
                let e = stored.next().expect("peeked").expect_err("peeked an error");
                return Some(Err(e));
            }
        };
        match (keys.peek(), next_stored) {
            (None, None) => None,
            (Some(p), s) if s.as_ref().is_none_or(|s| p <= s) => {
                if s.as_ref() == Some(p) {
                    stored.next();
                }
                let k = keys.next().expect("peeked");
                let state = pending[&k].clone();
                Some(Ok((k, state)))
            }
            _ => Some(stored.next().expect("peeked")),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stream is the same as the materialised read: every key of the
    /// ranges once, in order, the overlay's state winning over sled's.
    #[test]
    fn streamed_states_merge_the_overlay_over_sled_like_the_full_read() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("counters").unwrap();
        let overlay: Overlay = Default::default();
        let key = |i: u8| vec![b'm', 0, b'a' + i, 0];
        let mut stored = Vec::new();
        for i in 0u8..40 {
            if i % 3 != 0 {
                stored.push((key(i), AggState::Count(u64::from(i))));
            }
            if i % 2 == 0 {
                overlay
                    .write()
                    .unwrap()
                    .insert(key(i), AggState::Count(1000 + u64::from(i)));
            }
        }
        let mut batch = sled::Batch::default();
        let starts = crate::meter::UniqueKey::from_bytes([1; 16]);
        blocks::write_sorted(&tree, &starts, stored, &mut batch).unwrap();
        tree.apply_batch(batch).unwrap();
        let ranges = vec![key(5)..key(17), key(30)..key(60), key(0)..key(3)];
        let streamed: Vec<(Vec<u8>, AggState)> = stream_states(&tree, &overlay, &ranges)
            .collect::<Result<_, _>>()
            .unwrap();
        let full = read_states(&tree, &overlay, &ranges).unwrap();
        let mut sorted = streamed.clone();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(sorted, full.into_iter().collect::<Vec<_>>());
        // Within a range the stream is in key order; ranges in the order given.
        let firsts: Vec<u8> = streamed.iter().map(|(k, _)| k[2] - b'a').collect();
        let expected: Vec<u8> = (5..17)
            .chain(30..40)
            .chain(0..3)
            .filter(|i| i % 3 != 0 || i % 2 == 0)
            .collect();
        assert_eq!(firsts, expected);
        assert_eq!(streamed[0], (key(5), AggState::Count(5)));
        assert_eq!(streamed[1], (key(6), AggState::Count(1006)));
    }
}
