//! Seeds of the counter block target: blocks as the counters tree stores them.

use keymeter::meter::{AggState, Amount, CounterKey};
use keymeter::projection::blocks::encode_block;

/// A head block of three subjects' counters, and a block of one.
pub fn counter_block(write: impl Fn(&str, &str, &[u8])) {
    let key = |subject: &str, window: i64| {
        CounterKey {
            meter: "tokens".into(),
            subject: subject.into(),
            window_start_ms: window,
            group: vec![Some("eu".into()), None],
        }
        .encode()
    };
    let three = vec![
        (key("acme", 0), AggState::Sum(Amount::from_int(7))),
        (key("acme", 3_600_000), AggState::Count(2)),
        (key("beta", 0), AggState::Unique(vec![1, 2, 3])),
    ];
    write("counter_block", "three", &encode_block(&three));
    let one = vec![(key("zeta", -60_000), AggState::Max(Amount::from_int(-1)))];
    write("counter_block", "one", &encode_block(&one));
}
