//! HTTP ingest body decoding for all three content types.
//!
//! Input: one selector byte (content type), then the request body.
//! Properties: never panics; a body is refused whole or every element is
//! judged, as an independent decoder (`keymeter_fuzz::event_model`: serde
//! into a plain struct, `data` as a tree) judges it, with the same fields; an
//! accepted event replays to the same event; re-framing the elements as a
//! batch gives the same verdicts.

#![no_main]

use keymeter::event::{decode_body, BodyKind, Decoded, TimeWindow};
use keymeter_fuzz::check::{assert_in_window, assert_replays_identically, NOW_MS};
use keymeter_fuzz::event_model;
use libfuzzer_sys::fuzz_target;

const BATCH_EVENTS_MAX: usize = 64;

const CONTENT_TYPES: [&str; 4] = [
    "application/json",
    "application/cloudevents+json",
    "application/cloudevents-batch+json; charset=utf-8",
    "Application/JSON ; charset=UTF-8",
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let content_type = CONTENT_TYPES[usize::from(selector) % CONTENT_TYPES.len()];
    let kind = BodyKind::from_content_type(content_type).expect("a known content type");
    // The content-type parser itself sees untrusted text too.
    let _ = BodyKind::from_content_type(&String::from_utf8_lossy(body));

    let window = TimeWindow::default();
    let model = event_model::decode_body(body, kind, NOW_MS, window, BATCH_EVENTS_MAX);
    let items = match decode_body(body, kind, NOW_MS, window, BATCH_EVENTS_MAX) {
        Ok(items) => items,
        Err(rejection) => {
            assert!(!rejection.message.is_empty(), "a rejection says why");
            assert!(
                model.is_err(),
                "refused a body the model takes: {rejection}"
            );
            return;
        }
    };
    let model = model.expect("the model refuses a body keymeter takes");
    assert_eq!(model.len(), items.len());
    for (ours, verdict) in items.iter().zip(&model) {
        event_model::assert_agrees(ours, verdict);
    }
    assert!(!items.is_empty(), "a decoded body has at least one element");
    assert!(items.len() <= BATCH_EVENTS_MAX);
    if kind == BodyKind::Single {
        assert_eq!(items.len(), 1);
    }

    let mut elements = Vec::with_capacity(items.len());
    for item in &items {
        match item {
            Decoded::Valid(event) => {
                assert_in_window(event, window);
                assert_replays_identically(event, window);
                elements.push(event.raw.clone());
            }
            Decoded::Invalid { rejection, raw } => {
                assert!(!rejection.message.is_empty(), "a rejection says why");
                let raw = std::str::from_utf8(raw).expect("an element of a UTF-8 body");
                elements.push(raw.to_owned());
            }
        }
    }

    // The same elements sent as a batch are judged the same, one by one.
    let batch = format!("[{}]", elements.join(","));
    let again = decode_body(
        batch.as_bytes(),
        BodyKind::Batch,
        NOW_MS,
        window,
        BATCH_EVENTS_MAX,
    )
    .expect("the re-framed batch decodes");
    assert_eq!(again.len(), items.len());
    for (first, second) in items.iter().zip(&again) {
        match (first, second) {
            (Decoded::Valid(a), Decoded::Valid(b)) => assert_eq!(a.key, b.key),
            (Decoded::Invalid { rejection: a, .. }, Decoded::Invalid { rejection: b, .. }) => {
                assert_eq!(a.code, b.code)
            }
            (a, b) => panic!("verdict changed on re-framing: {a:?} vs {b:?}"),
        }
    }
});
