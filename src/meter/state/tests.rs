//! Tests of merging, values and the encoding of aggregation states.

use proptest::prelude::*;

use super::encoding::{TAG_COUNT, TAG_SUM, TAG_UNIQUE, TAG_UNIQUE_FNV64};
use super::*;

const AGGREGATIONS: [Aggregation; 7] = [
    Aggregation::Sum,
    Aggregation::Count,
    Aggregation::Avg,
    Aggregation::Min,
    Aggregation::Max,
    Aggregation::UniqueCount,
    Aggregation::Latest,
];

fn amount() -> impl Strategy<Value = Amount> {
    prop_oneof![
        (-1000i128..1000).prop_map(Amount),
        any::<i64>().prop_map(|v| Amount(i128::from(v) * 1000)),
    ]
}

/// A state of the given aggregation, as produced by folding observations.
fn state_of(aggregation: Aggregation) -> BoxedStrategy<AggState> {
    match aggregation {
        Aggregation::Sum => amount().prop_map(AggState::Sum).boxed(),
        Aggregation::Count => (1u64..1_000_000).prop_map(AggState::Count).boxed(),
        Aggregation::Avg => (amount(), 1u64..1000)
            .prop_map(|(sum, count)| AggState::Avg { sum, count })
            .boxed(),
        Aggregation::Min => amount().prop_map(AggState::Min).boxed(),
        Aggregation::Max => amount().prop_map(AggState::Max).boxed(),
        Aggregation::UniqueCount => {
            prop::collection::btree_set(prop_oneof![0u128..20, any::<u128>()], 1..8)
                .prop_map(|set| AggState::Unique(set.into_iter().collect()))
                .boxed()
        }
        // Few distinct times so equal-time tie-breaks get exercised.
        Aggregation::Latest => (-3i64..3, amount())
            .prop_map(|(time_ms, value)| AggState::Latest { time_ms, value })
            .boxed(),
    }
}

fn three_states() -> impl Strategy<Value = (AggState, AggState, AggState)> {
    (0..AGGREGATIONS.len()).prop_flat_map(|i| {
        let s = state_of(AGGREGATIONS[i]);
        (s.clone(), s.clone(), s)
    })
}

fn any_state() -> impl Strategy<Value = AggState> {
    (0..AGGREGATIONS.len()).prop_flat_map(|i| state_of(AGGREGATIONS[i]))
}

fn merged(a: &AggState, b: &AggState) -> AggState {
    let mut out = a.clone();
    out.merge(b);
    out
}

#[test]
fn latest_prefers_later_time_then_larger_value() {
    let mut state = AggState::Latest {
        time_ms: 10,
        value: Amount(5),
    };
    state.observe(&ObservedValue::Amount(Amount(1)), 9);
    assert_eq!(
        state,
        AggState::Latest {
            time_ms: 10,
            value: Amount(5)
        }
    );
    state.observe(&ObservedValue::Amount(Amount(7)), 10);
    assert_eq!(
        state,
        AggState::Latest {
            time_ms: 10,
            value: Amount(7)
        }
    );
    state.observe(&ObservedValue::Amount(Amount(-1)), 11);
    assert_eq!(state.value(), Some(-0.000000001));
}

#[test]
fn values_report_means_and_distinct_counts() {
    let avg = AggState::Avg {
        sum: Amount::from_int(3),
        count: 2,
    };
    assert_eq!(avg.value(), Some(1.5));
    assert_eq!(
        AggState::Avg {
            sum: Amount::ZERO,
            count: 0
        }
        .value(),
        None
    );
    assert_eq!(AggState::Unique(vec![1, 5, 9]).value(), Some(3.0));
    assert_eq!(AggState::Count(4).value(), Some(4.0));
}

#[test]
fn merging_different_aggregations_is_refused() {
    let mut sum = AggState::Sum(Amount::ZERO);
    let err = sum.try_merge(&AggState::Count(1)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot merge COUNT aggregation state into SUM state"
    );
}

/// `[1, TAG_UNIQUE, len, identities as 16 big-endian bytes…]`.
fn unique_bytes(len: u8, identities: &[u128]) -> Vec<u8> {
    let mut out = vec![1, TAG_UNIQUE, len];
    for identity in identities {
        out.extend_from_slice(&identity.to_be_bytes());
    }
    out
}

#[test]
fn corrupt_bytes_are_refused() {
    assert_eq!(AggState::decode(&[]), Err(DecodeError::Empty));
    assert_eq!(
        AggState::decode(&[2, 1, 0]),
        Err(DecodeError::UnsupportedVersion(2))
    );
    assert_eq!(AggState::decode(&[1, 99]), Err(DecodeError::UnknownTag(99)));
    assert_eq!(AggState::decode(&[1, TAG_SUM]), Err(DecodeError::Truncated));
    assert_eq!(
        AggState::decode(&[1, TAG_SUM, 0x80, 0x00]),
        Err(DecodeError::BadVarint)
    );
    assert_eq!(
        AggState::decode(&[1, TAG_COUNT, 1, 0]),
        Err(DecodeError::TrailingBytes(1))
    );
    let too_long = [&[1, TAG_COUNT][..], &[0xff; 10], &[0x01]].concat();
    assert_eq!(AggState::decode(&too_long), Err(DecodeError::BadVarint));
}

#[test]
fn unique_sets_are_sorted_identities_of_16_bytes() {
    let good = unique_bytes(2, &[3, 9]);
    assert_eq!(AggState::Unique(vec![3, 9]).encode(), good);
    assert_eq!(AggState::decode(&good), Ok(AggState::Unique(vec![3, 9])));
    for unsorted in [[9, 3], [3, 3]] {
        assert_eq!(
            AggState::decode(&unique_bytes(2, &unsorted)),
            Err(DecodeError::UniqueNotSorted)
        );
    }
    assert_eq!(
        AggState::decode(&unique_bytes(3, &[3, 9])),
        Err(DecodeError::Truncated)
    );
    assert_eq!(
        AggState::decode(&good[..good.len() - 1]),
        Err(DecodeError::Truncated)
    );
    assert_eq!(
        AggState::decode(&[&good[..], &[0]].concat()),
        Err(DecodeError::TrailingBytes(1))
    );
    let huge_len = [&[1, TAG_UNIQUE][..], &[0xff; 9], &[0x01]].concat();
    assert_eq!(AggState::decode(&huge_len), Err(DecodeError::Truncated));
}

#[test]
fn sets_of_64_bit_hashes_are_recognised_and_refused() {
    // `{1, 200, u64::MAX}` as the 64-bit era wrote it (delta varints).
    let old = [1, TAG_UNIQUE_FNV64, 3, 1, 0xc7, 1, 0xb7, 0xfe];
    assert_eq!(AggState::decode(&old), Err(DecodeError::UniqueFnv64));
    assert_eq!(
        AggState::decode(&[1, TAG_UNIQUE_FNV64, 0]),
        Err(DecodeError::UniqueFnv64)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn merge_is_commutative_and_associative((a, b, c) in three_states()) {
        prop_assert_eq!(merged(&a, &b).encode(), merged(&b, &a).encode());
        prop_assert_eq!(
            merged(&merged(&a, &b), &c).encode(),
            merged(&a, &merged(&b, &c)).encode()
        );
    }

    #[test]
    fn observe_equals_merging_a_single_observation_state(
        (state, other) in (0..AGGREGATIONS.len()).prop_flat_map(|i| (state_of(AGGREGATIONS[i]), state_of(AGGREGATIONS[i]))),
    ) {
        // Turn `other` into one observation of the same aggregation.
        let (observed, time_ms) = match &other {
            AggState::Sum(a) | AggState::Min(a) | AggState::Max(a) | AggState::Avg { sum: a, .. } => (ObservedValue::Amount(*a), 0),
            AggState::Latest { time_ms, value } => (ObservedValue::Amount(*value), *time_ms),
            AggState::Unique(h) => (ObservedValue::Unique(h[0]), 0),
            AggState::Count(_) => (ObservedValue::None, 0),
        };
        let mut in_place = state.clone();
        in_place.observe(&observed, time_ms);
        let single = AggState::from_observation(state.aggregation(), &observed, time_ms);
        prop_assert_eq!(in_place, merged(&state, &single));
    }

    #[test]
    fn encoding_round_trips(state in any_state()) {
        let bytes = state.encode();
        prop_assert_eq!(bytes[0], STATE_ENCODING_VERSION);
        prop_assert_eq!(AggState::decode(&bytes), Ok(state));
    }

    #[test]
    fn extreme_values_round_trip(v in any::<i128>(), t in any::<i64>(), n in any::<u64>(), h in any::<u128>()) {
        for state in [
            AggState::Sum(Amount(v)),
            AggState::Avg { sum: Amount(v), count: n },
            AggState::Latest { time_ms: t, value: Amount(v) },
            AggState::Count(n),
            AggState::Unique(vec![0, h.max(1)]),
            AggState::Unique(vec![h]),
        ] {
            prop_assert_eq!(AggState::decode(&state.encode()), Ok(state));
        }
    }

    #[test]
    fn decode_never_panics_and_accepts_only_canonical_bytes(bytes in prop::collection::vec(any::<u8>(), 0..40)) {
        let mut input = bytes;
        if input.len() > 1 {
            input[0] = STATE_ENCODING_VERSION;
            input[1] %= 9;
        }
        if let Ok(state) = AggState::decode(&input) {
            prop_assert_eq!(state.encode(), input);
        }
    }
}
