//! Whole-pipeline properties: events → extract → fold → store → query, checked
//! against permutations and against a naive model computed from the raw events.
//! (One idea at about 600 lines: the model and the properties that share it.)

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use serde_json::{json, Map, Value};

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

const DAY_MS: i64 = 86_400_000;

const KEY: UniqueKey = UniqueKey::from_bytes([42; 16]);

/// One raw event plus what the model knows about it, independent of extraction.
#[derive(Debug, Clone)]
struct RawEvent {
    subject: String,
    time_ms: i64,
    data: Value,
    /// Exact value in hundredths (SUM/AVG/MIN/MAX/LATEST).
    cents: i64,
    /// Canonical text of the UNIQUE_COUNT value.
    unique_text: String,
    /// Model group values for keys `g` and `h`.
    group: [Option<String>; 2],
}

fn meter(aggregation: Aggregation, window_size: WindowSize) -> CompiledMeter {
    MeterDef {
        slug: "m".into(),
        description: None,
        event_type: "e".into(),
        aggregation,
        value_property: (aggregation != Aggregation::Count).then(|| "$.v".into()),
        group_by: [("g", "$.g"), ("h", "$.attrs.h")]
            .into_iter()
            .map(|(k, p)| (k.to_owned(), p.to_owned()))
            .collect(),
        window_size,
        allow_negative: true,
        strict: false,
        round_values: false,
        ..MeterDef::blank()
    }
    .validate()
    .unwrap()
}

/// A group value in JSON and in the model. Missing and `null` are both `None`.
fn group_value() -> impl Strategy<Value = (Option<Value>, Option<String>)> {
    prop_oneof![
        Just((Some(json!("a")), Some("a".to_owned()))),
        Just((Some(json!("b")), Some("b".to_owned()))),
        Just((Some(json!("")), Some(String::new()))),
        Just((Some(json!(1)), Some("1".to_owned()))),
        Just((Some(Value::Null), None)),
        Just((None, None)),
    ]
}

fn unique_value() -> impl Strategy<Value = (Value, String)> {
    prop_oneof![
        Just((json!("u1"), "u1".to_owned())),
        Just((json!("u2"), "u2".to_owned())),
        Just((json!("u3"), "u3".to_owned())),
        Just((json!(7), "7".to_owned())),
        Just((json!("7"), "7".to_owned())),
        Just((json!(true), "true".to_owned())),
    ]
}

/// Times around the epoch (negative ones included) spanning several months, drawn
/// often from a few instants so equal times and shared windows are common.
fn time_ms() -> impl Strategy<Value = i64> {
    prop_oneof![
        3 => prop::sample::select(vec![
            -DAY_MS * 31,
            -DAY_MS - 1_000,
            -1,
            0,
            59_999,
            60_000,
            5_430_000, // 01:30:30
            DAY_MS * 40 + 7,
        ]),
        3 => -7_200_000i64..7_200_000,
        1 => -DAY_MS * 70..DAY_MS * 70,
    ]
}

fn raw_event() -> impl Strategy<Value = RawEvent> {
    (
        prop::sample::select(vec!["s1", "s2", "s3"]),
        time_ms(),
        -100_000i64..100_000,
        any::<bool>(),
        unique_value(),
        group_value(),
        group_value(),
    )
        .prop_map(
            |(subject, time_ms, cents, as_string, (unique_json, unique_text), g, h)| {
                let text = format!(
                    "{}{}.{:02}",
                    if cents < 0 { "-" } else { "" },
                    cents.abs() / 100,
                    cents.abs() % 100
                );
                let number: Value = serde_json::from_str(&text).unwrap();
                let mut data = Map::new();
                data.insert("v".into(), if as_string { json!(text) } else { number });
                data.insert("u".into(), unique_json);
                let mut attrs = Map::new();
                if let Some(g) = g.0 {
                    data.insert("g".into(), g);
                }
                if let Some(h) = h.0 {
                    attrs.insert("h".into(), h);
                }
                data.insert("attrs".into(), Value::Object(attrs));
                RawEvent {
                    subject: subject.to_owned(),
                    time_ms,
                    data: Value::Object(data),
                    cents,
                    unique_text,
                    group: [g.1, h.1],
                }
            },
        )
}

/// UNIQUE_COUNT reads `$.u`; everything else `$.v`.
fn meter_for(aggregation: Aggregation, window_size: WindowSize) -> CompiledMeter {
    if aggregation != Aggregation::UniqueCount {
        return meter(aggregation, window_size);
    }
    let mut def = meter(aggregation, window_size).def().clone();
    def.value_property = Some("$.u".into());
    def.validate().unwrap()
}

fn fold_all<'a>(meter: &CompiledMeter, events: impl IntoIterator<Item = &'a RawEvent>) -> Fold {
    let mut fold = Fold::new();
    for e in events {
        let obs = meter.extract(Some(&e.data.to_string()), &KEY).unwrap();
        fold.apply(meter, &e.subject, e.time_ms, &obs);
    }
    fold
}

fn encoded(fold: Fold) -> Vec<(Vec<u8>, Vec<u8>)> {
    fold.into_sorted()
        .into_iter()
        .map(|(k, s)| (k.encode(), s.encode()))
        .collect()
}

/// What the engine does: fold each batch, then merge into the stored bytes.
fn store_in_batches(
    meter: &CompiledMeter,
    events: &[RawEvent],
    batch_len: usize,
) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut store: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for batch in events.chunks(batch_len.max(1)) {
        for (key, delta) in fold_all(meter, batch).into_sorted() {
            let bytes = key.encode();
            let state = match store.get(&bytes) {
                Some(old) => {
                    let mut state = AggState::decode(old).unwrap();
                    state.merge(&delta);
                    state
                }
                None => delta,
            };
            store.insert(bytes, state.encode());
        }
    }
    store
}

fn aggregation_and_window() -> impl Strategy<Value = (Aggregation, WindowSize)> {
    (
        prop::sample::select(AGGREGATIONS.to_vec()),
        prop::sample::select(WindowSize::ALL.to_vec()),
    )
}

/// Naive model: aggregate the raw events of one row directly.
fn model_value(aggregation: Aggregation, events: &[&RawEvent]) -> Amount {
    let amount = |e: &RawEvent| Amount(i128::from(e.cents) * 10_000_000);
    let units = |n: usize| Amount(n as i128 * 1_000_000_000);
    match aggregation {
        Aggregation::Sum => Amount(events.iter().map(|e| amount(e).0).sum()),
        Aggregation::Count => units(events.len()),
        Aggregation::Avg => {
            // Cents have 2 decimals: the mean to 9 decimals, half to even,
            // from the exact fraction sum / n in billionths.
            let (sum, n) = (
                events.iter().map(|e| amount(e).0).sum::<i128>(),
                events.len() as i128,
            );
            let floor = sum.div_euclid(n);
            let twice_rest = 2 * sum.rem_euclid(n);
            let up = twice_rest > n || (twice_rest == n && floor.rem_euclid(2) == 1);
            Amount(floor + i128::from(up))
        }
        Aggregation::Min => events.iter().map(|e| amount(e)).min().unwrap(),
        Aggregation::Max => events.iter().map(|e| amount(e)).max().unwrap(),
        Aggregation::UniqueCount => units(
            events
                .iter()
                .map(|e| e.unique_text.as_str())
                .collect::<BTreeSet<_>>()
                .len(),
        ),
        Aggregation::Latest => {
            events
                .iter()
                .map(|e| (e.time_ms, amount(e)))
                .max()
                .unwrap()
                .1
        }
    }
}

fn model_query(meter: &CompiledMeter, events: &[RawEvent], p: &QueryParams) -> Vec<QueryRow> {
    let mw = meter.window_size();
    let keys = ["g", "h"];
    let selected: Vec<usize> = (0..2)
        .filter(|i| p.group_by.iter().any(|g| g == keys[*i]))
        .collect();
    let included: Vec<&RawEvent> = events
        .iter()
        .filter(|e| {
            let ws = mw.start_of(e.time_ms);
            p.from_ms.is_none_or(|f| ws >= f)
                && p.to_ms.is_none_or(|t| ws < t)
                && (p.subjects.is_empty() || p.subjects.contains(&e.subject))
                && p.filter_group_by.iter().all(|(k, v)| {
                    let i = keys.iter().position(|key| key == k).unwrap();
                    e.group[i].as_deref() == Some(v.as_str())
                })
        })
        .collect();
    if included.is_empty() {
        return Vec::new();
    }
    let earliest = included
        .iter()
        .map(|e| mw.start_of(e.time_ms))
        .min()
        .unwrap();
    let latest = included
        .iter()
        .map(|e| mw.start_of(e.time_ms))
        .max()
        .unwrap();
    type RowKey = (i64, Option<String>, Vec<Option<String>>);
    let mut buckets: BTreeMap<RowKey, Vec<&RawEvent>> = BTreeMap::new();
    for e in included {
        let start = p.window_size.map_or(0, |w| w.start_of(e.time_ms));
        let subject = p.split_by_subject.then(|| e.subject.clone());
        let group = selected.iter().map(|i| e.group[*i].clone()).collect();
        buckets.entry((start, subject, group)).or_default().push(e);
    }
    buckets
        .into_iter()
        .map(|((start, subject, group), rows)| {
            let (window_start_ms, window_end_ms) = match p.window_size {
                Some(w) => (
                    p.from_ms.map_or(start, |f| start.max(f)),
                    p.to_ms
                        .map_or(w.end_of_window(start), |t| w.end_of_window(start).min(t)),
                ),
                None => (
                    p.from_ms.unwrap_or(earliest),
                    p.to_ms.unwrap_or(mw.end_of_window(latest)),
                ),
            };
            QueryRow {
                value: model_value(meter.aggregation(), &rows),
                window_start_ms,
                window_end_ms,
                subject,
                group_by: selected
                    .iter()
                    .map(|i| keys[*i].to_owned())
                    .zip(group)
                    .collect(),
            }
        })
        .collect()
}

fn query_params(meter_window: WindowSize) -> impl Strategy<Value = QueryParams> {
    let bound = move || prop::option::of(time_ms().prop_map(move |t| meter_window.start_of(t)));
    (
        bound(),
        bound(),
        prop::option::of(prop::sample::select(
            WindowSize::ALL
                .into_iter()
                .filter(|w| meter_window.can_rollup_to(*w))
                .collect::<Vec<_>>(),
        )),
        prop::sample::subsequence(vec!["s1", "s3", "nobody"], 0..=2),
        prop::sample::subsequence(vec!["g", "h"], 0..=2),
        any::<bool>(),
        prop::sample::subsequence(vec![("g", "a"), ("h", "1"), ("h", "")], 0..=2),
    )
        .prop_map(|(a, b, window_size, subjects, group_by, split, filters)| {
            // Order the bounds; equal bounds become an open end.
            let (from_ms, to_ms) = match (a, b) {
                (Some(a), Some(b)) if a == b => (Some(a), None),
                (Some(a), Some(b)) => (Some(a.min(b)), Some(a.max(b))),
                other => other,
            };
            QueryParams {
                from_ms,
                to_ms,
                window_size,
                subjects: subjects.into_iter().map(String::from).collect(),
                group_by: group_by.into_iter().map(String::from).collect(),
                split_by_subject: split,
                filter_group_by: (filters.into_iter())
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
                time_zone: None,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_permutation_folds_to_identical_counters(
        (aggregation, window_size) in aggregation_and_window(),
        (events, shuffled) in prop::collection::vec(raw_event(), 0..40)
            .prop_flat_map(|events| (Just(events.clone()), Just(events).prop_shuffle())),
        batch_len in 1usize..8,
    ) {
        let meter = meter_for(aggregation, window_size);
        let in_order = encoded(fold_all(&meter, &events));
        prop_assert_eq!(&in_order, &encoded(fold_all(&meter, &shuffled)));
        // Batched through stored bytes, in another order, gives the same bytes too.
        let stored: Vec<(Vec<u8>, Vec<u8>)> =
            store_in_batches(&meter, &shuffled, batch_len).into_iter().collect();
        prop_assert_eq!(&in_order, &stored);
        // As do partial folds merged with merge_into, and single-event folds.
        let (left, right) = shuffled.split_at(shuffled.len() / 2);
        let mut merged = fold_all(&meter, right);
        fold_all(&meter, left).merge_into(&mut merged).unwrap();
        prop_assert_eq!(&in_order, &encoded(merged));
        let mut one_by_one = Fold::new();
        for e in shuffled.iter().rev() {
            let (key, state) = fold_event(&meter, &KEY, &e.subject, e.time_ms, Some(&e.data.to_string())).unwrap();
            one_by_one.merge_state(&key, &state).unwrap();
        }
        prop_assert_eq!(&in_order, &encoded(one_by_one));
        // Keys encoded straight from the fold's series: same bytes, same order.
        let direct: Vec<(Vec<u8>, Vec<u8>)> = fold_all(&meter, &shuffled)
            .drain_encoded()
            .into_iter()
            .map(|(k, s)| (k, s.encode()))
            .collect();
        prop_assert_eq!(&in_order, &direct);
    }

    #[test]
    fn fold_then_query_equals_naive_recomputation(
        (aggregation, window_size, params) in aggregation_and_window()
            .prop_flat_map(|(a, w)| (Just(a), Just(w), query_params(w))),
        events in prop::collection::vec(raw_event(), 0..40),
        batch_len in 1usize..8,
    ) {
        let meter = meter_for(aggregation, window_size);
        let store = store_in_batches(&meter, &events, batch_len);
        let stored = store.iter().map(|(k, v)| {
            (CounterKey::decode(k).unwrap(), AggState::decode(v).unwrap())
        });
        let rows = query(&meter, stored, &params).unwrap();
        prop_assert_eq!(rows, model_query(&meter, &events, &params));
    }
}

#[test]
fn fold_counts_minute_windows_per_subject_and_group() {
    let meter = meter(Aggregation::Sum, WindowSize::Minute);
    let mut fold = Fold::new();
    for (subject, time_ms, data) in [
        ("s1", 1_000, json!({"v": 0.1, "g": "a"})),
        ("s1", 59_999, json!({"v": "0.2", "g": "a"})),
        ("s1", 60_000, json!({"v": 5, "g": "a"})),
        ("s2", 1_000, json!({"v": 1, "g": "a"})),
        ("s1", 2_000, json!({"v": 1})),
    ] {
        fold.apply(
            &meter,
            subject,
            time_ms,
            &meter.extract(Some(&data.to_string()), &KEY).unwrap(),
        );
    }
    assert_eq!(fold.len(), 4);
    let key = |subject: &str, window_start_ms, g: Option<&str>| CounterKey {
        meter: "m".into(),
        subject: subject.into(),
        window_start_ms,
        group: vec![g.map(String::from), None],
    };
    assert_eq!(
        fold.get(&key("s1", 0, Some("a"))),
        Some(AggState::Sum(Amount::parse_decimal("0.3").unwrap()))
    );
    assert_eq!(
        fold.get(&key("s1", 0, None)),
        Some(AggState::Sum(Amount::from_int(1)))
    );
    assert_eq!(fold.get(&key("s3", 0, None)), None);
    let sorted = fold.into_sorted();
    let subjects_and_windows: Vec<(&str, i64)> = sorted
        .iter()
        .map(|(k, _)| (k.subject.as_str(), k.window_start_ms))
        .collect();
    assert_eq!(
        subjects_and_windows,
        [("s1", 0), ("s1", 0), ("s1", 60_000), ("s2", 0)]
    );
}

#[test]
fn a_drained_fold_is_empty_and_folds_the_next_batch_alike() {
    let meter = meter_for(Aggregation::UniqueCount, WindowSize::Minute);
    let data = json!({"u": "x", "g": "a"});
    let mut fold = Fold::new();
    let mut batches = Vec::new();
    for subject in ["s1", "s2"] {
        fold.apply(
            &meter,
            subject,
            0,
            &meter.extract(Some(&data.to_string()), &KEY).unwrap(),
        );
        batches.push(fold.drain_sorted());
        assert!(fold.is_empty());
    }
    assert_eq!(batches[0].len(), 1);
    assert_eq!(batches[1][0].0.subject, "s2");
    assert_eq!(batches[0][0].1, batches[1][0].1);
}

#[test]
fn query_validates_bounds_window_size_and_group_keys() {
    let hourly = meter(Aggregation::Count, WindowSize::Hour);
    let run = |p: QueryParams| query(&hourly, std::iter::empty(), &p);
    let err = run(QueryParams {
        window_size: Some(WindowSize::Minute),
        ..QueryParams::default()
    })
    .unwrap_err();
    assert_eq!(err.code(), "INVALID_WINDOW_SIZE");
    let err = run(QueryParams {
        from_ms: Some(60_000),
        ..QueryParams::default()
    })
    .unwrap_err();
    assert_eq!(err.code(), "INVALID_QUERY");
    assert!(err.to_string().contains("from"), "{err}");
    let err = run(QueryParams {
        from_ms: Some(3_600_000),
        to_ms: Some(3_600_000),
        ..QueryParams::default()
    })
    .unwrap_err();
    assert_eq!(err.code(), "INVALID_QUERY");
    let err = run(QueryParams {
        group_by: vec!["subject".into()],
        ..QueryParams::default()
    })
    .unwrap_err();
    assert_eq!(err.code(), "INVALID_GROUP_BY");
    assert!(run(QueryParams::default()).unwrap().is_empty());
}

#[test]
fn query_refuses_stored_states_of_another_shape() {
    let meter = meter(Aggregation::Sum, WindowSize::Minute);
    let key = CounterKey {
        meter: "m".into(),
        subject: "s".into(),
        window_start_ms: 0,
        group: vec![None, None],
    };
    let wrong_state = (key.clone(), AggState::Count(1));
    let err = query(
        &meter,
        std::iter::once(wrong_state),
        &QueryParams::default(),
    )
    .unwrap_err();
    assert_eq!(err.code(), "CORRUPT_STATE");
    let wrong_arity = (
        CounterKey {
            group: vec![None],
            ..key.clone()
        },
        AggState::Sum(Amount::ZERO),
    );
    let err = query(
        &meter,
        std::iter::once(wrong_arity),
        &QueryParams::default(),
    )
    .unwrap_err();
    assert_eq!(err.code(), "CORRUPT_STATE");
    let other_meter = (
        CounterKey {
            meter: "other".into(),
            ..key
        },
        AggState::Count(1),
    );
    let rows = query(
        &meter,
        std::iter::once(other_meter),
        &QueryParams::default(),
    )
    .unwrap();
    assert!(rows.is_empty());
}

#[test]
fn windowed_query_rows_are_clipped_to_the_requested_range() {
    let meter = meter(Aggregation::Count, WindowSize::Minute);
    let mut fold = Fold::new();
    for t in [0, 30 * 60_000, 61 * 60_000] {
        fold.apply(&meter, "s", t, &meter.extract(None, &KEY).unwrap());
    }
    let rows = query(
        &meter,
        fold.into_sorted().into_iter(),
        &QueryParams {
            from_ms: Some(30 * 60_000),
            window_size: Some(WindowSize::Hour),
            ..QueryParams::default()
        },
    )
    .unwrap();
    let spans: Vec<(Amount, i64, i64)> = rows
        .iter()
        .map(|r| (r.value, r.window_start_ms, r.window_end_ms))
        .collect();
    let one = Amount::from_int(1);
    assert_eq!(
        spans,
        [
            (one, 30 * 60_000, 60 * 60_000),
            (one, 60 * 60_000, 120 * 60_000)
        ]
    );
}

/// 64-bit FNV-1a, what UNIQUE_COUNT once counted.
fn fnv1a64(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Two values with one 64-bit FNV-1a hash, which UNIQUE_COUNT once counted
/// as one: distinct values are distinct identities.
#[test]
fn values_whose_64_bit_fnv_hashes_collide_count_twice() {
    let pair = ["MhsivmhiSIF", "0a7B_Bz1ObN"];
    assert_eq!(fnv1a64(pair[0]), fnv1a64(pair[1]));
    assert_eq!(fnv1a64(pair[0]), 0xe44d_a65f_01a3_2948);
    let meter = meter_for(Aggregation::UniqueCount, WindowSize::Minute);
    let mut fold = Fold::new();
    for value in [pair[0], pair[1], pair[0]] {
        let data = json!({"u": value}).to_string();
        fold.apply(&meter, "s", 0, &meter.extract(Some(&data), &KEY).unwrap());
    }
    let (_, state) = fold.into_sorted().remove(0);
    assert_eq!(state.value(), Some(2.0));
    assert_eq!(AggState::decode(&state.encode()), Ok(state));
}
