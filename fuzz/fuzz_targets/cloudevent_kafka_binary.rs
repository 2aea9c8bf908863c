//! Kafka message decoding: binary mode (attributes in `ce_*` headers, the
//! value is `data`) and structured mode (the value is the CloudEvent JSON).
//!
//! Properties: never panics; the verdict and fields are those of an
//! independent decoder (`keymeter_fuzz::event_model`); an accepted binary-mode message is rebuilt as a
//! structured event that decodes to the same event, over HTTP and over Kafka
//! structured mode, and replays identically.

#![no_main]

use keymeter::event::{Decoded, TimeWindow};
use keymeter::source::binding::{decode_message, Header};
use keymeter_fuzz::check::{assert_in_window, assert_replays_identically, NOW_MS};
use keymeter_fuzz::event_model;
use keymeter_fuzz::input::kafka::{Message, Name, Value, NAMES, VALUES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|msg: Message| {
    let names: Vec<String> = msg
        .headers
        .iter()
        .map(|(name, _)| match name {
            Name::Known(i) => NAMES[usize::from(*i) % NAMES.len()].to_owned(),
            Name::Other(s) => s.clone(),
        })
        .collect();
    let headers: Vec<Header<'_>> = msg
        .headers
        .iter()
        .zip(&names)
        .map(|((_, value), name)| {
            let bytes = match value {
                Value::Null => None,
                Value::Known(i) => Some(VALUES[usize::from(*i) % VALUES.len()].as_bytes()),
                Value::Bytes(b) => Some(b.as_slice()),
            };
            (name.as_str(), bytes)
        })
        .collect();

    let window = TimeWindow::default();
    let decoded = decode_message(msg.value.as_deref(), &headers, NOW_MS, window);
    let model = event_model::decode_message(msg.value.as_deref(), &headers, NOW_MS, window);
    event_model::assert_agrees(&decoded, &model);
    match decoded {
        Decoded::Valid(event) => {
            assert_in_window(&event, window);
            assert_replays_identically(&event, window);
            // The rebuilt event, sent in structured mode, is the same event.
            let structured: [Header<'_>; 1] =
                [("content-type", Some(b"application/cloudevents+json"))];
            match decode_message(Some(event.raw.as_bytes()), &structured, NOW_MS, window) {
                Decoded::Valid(again) => {
                    assert_eq!(again.key, event.key);
                    assert_eq!(again.time_ms, event.time_ms);
                    assert_eq!(again.data(), event.data());
                    assert_eq!(again.raw, event.raw);
                }
                Decoded::Invalid { rejection, .. } => {
                    panic!("rebuilt event refused in structured mode: {rejection}")
                }
            }
        }
        Decoded::Invalid { rejection, raw } => {
            assert!(!rejection.message.is_empty(), "a rejection says why");
            // The quarantine keeps the input: never an empty record for a non-empty value.
            if msg.value.as_deref().is_some_and(|v| !v.is_empty()) {
                assert!(!raw.is_empty());
            }
        }
    }
});
