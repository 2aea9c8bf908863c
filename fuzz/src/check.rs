//! Checks shared by the event decoding targets.

use std::borrow::Cow;

use keymeter::event::{decode_body, BodyKind, Decoded, DedupKey, TimeWindow, UsageEvent};
use keymeter::projection::EventFacts;
use keymeter::record::{EventRecord, Record};

/// The receive time every target decodes at (2026-05-28T20:26:40Z).
pub const NOW_MS: i64 = 1_780_000_000_000;

/// The identity the dedup projection reads back from a logged event.
#[derive(serde::Deserialize)]
struct LoggedIdentity<'a> {
    #[serde(borrow)]
    source: Cow<'a, str>,
    #[serde(borrow)]
    id: Cow<'a, str>,
}

/// An accepted event is logged as its raw text and parsed again on replay:
/// every reader of the logged text must see the event the writer accepted.
pub fn assert_replays_identically(event: &UsageEvent, window: TimeWindow) {
    let again = decode_body(event.raw.as_bytes(), BodyKind::Single, NOW_MS, window, 1)
        .expect("an accepted event's raw text decodes as a body");
    match again.as_slice() {
        [Decoded::Valid(e)] => {
            assert_eq!(e.key, event.key);
            assert_eq!(e.ty, event.ty);
            assert_eq!(e.subject, event.subject);
            assert_eq!(e.time_ms, event.time_ms);
            assert_eq!(e.data(), event.data());
            assert_eq!(e.raw, event.raw);
        }
        other => panic!("accepted event is refused on re-decoding: {other:?}"),
    }

    let facts = EventFacts::from_logged(&event.raw, event.time_ms)
        .expect("the fold parses every accepted event");
    assert_eq!(facts.ty, event.ty);
    assert_eq!(facts.subject, event.subject);
    assert_eq!(facts.data.as_deref(), event.data());

    let ident: LoggedIdentity<'_> =
        serde_json::from_str(&event.raw).expect("the dedup index parses every accepted event");
    assert_eq!(
        DedupKey::new(&ident.source, &ident.id),
        event.key,
        "replayed identity differs"
    );

    let record = Record::Event(EventRecord {
        received_ms: NOW_MS,
        time_ms: event.time_ms,
        raw: event.raw.clone(),
    });
    assert_eq!(
        Record::decode(&record.encode()).expect("record decodes"),
        record
    );
}

/// Every accepted event lies inside the accepted window around the receive time.
pub fn assert_in_window(event: &UsageEvent, window: TimeWindow) {
    assert!(event.time_ms >= NOW_MS - window.back_ms, "{event:?}");
    assert!(event.time_ms <= NOW_MS + window.ahead_ms, "{event:?}");
}
