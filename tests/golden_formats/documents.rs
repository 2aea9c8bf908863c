//! The spelling of every enum value inside stored JSON documents (meter
//! definitions, licenses and their policies, API keys, the keyring): a
//! renamed variant would leave every stored document that uses it
//! undecodable. Whole documents are pinned where they are stored, in
//! `projections.rs`.

use keymeter::crypto::keyring::Purpose;
use keymeter::license::model::{Overage, PolicyType};
use keymeter::license::{Period, SeatMode, Status};
use keymeter::meter::{Aggregation, WindowSize};
use keymeter::scope::Scope;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::Golden;

fn pin<T>(golden: &mut Golden, name: &str, table: &[(T, &str)])
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    for (value, text) in table {
        let name = format!("{name}::{value:?}");
        golden.text(&name, &serde_json::to_vec(value).unwrap(), text);
        let back: Result<T, _> = serde_json::from_str(text);
        golden.check(&name, back.as_ref().ok() == Some(value), || {
            format!("{text} decodes to {back:?}")
        });
    }
}

/// Over 80 lines only because each table row takes several once
/// formatted: a list of values, no logic to split.
#[test]
fn every_enum_stored_in_a_json_document_keeps_its_spelling_both_ways() {
    let mut g = Golden::default();
    use Aggregation as A;
    pin(
        &mut g,
        "Aggregation",
        &[
            (A::Sum, r#""SUM""#),
            (A::Count, r#""COUNT""#),
            (A::Avg, r#""AVG""#),
            (A::Min, r#""MIN""#),
            (A::Max, r#""MAX""#),
            (A::UniqueCount, r#""UNIQUE_COUNT""#),
            (A::Latest, r#""LATEST""#),
        ],
    );
    use WindowSize as W;
    pin(
        &mut g,
        "WindowSize",
        &[
            (W::Minute, r#""MINUTE""#),
            (W::Hour, r#""HOUR""#),
            (W::Day, r#""DAY""#),
            (W::Month, r#""MONTH""#),
        ],
    );
    pin(
        &mut g,
        "Status",
        &[
            (Status::Active, r#""active""#),
            (Status::Suspended, r#""suspended""#),
            (Status::Revoked, r#""revoked""#),
        ],
    );
    pin(
        &mut g,
        "SeatMode",
        &[
            (SeatMode::NodeLocked, r#""node_locked""#),
            (SeatMode::Floating, r#""floating""#),
        ],
    );
    use PolicyType as P;
    pin(
        &mut g,
        "PolicyType",
        &[
            (P::None, r#""none""#),
            (P::Seat, r#""seat""#),
            (P::Usage, r#""usage""#),
            (P::Hybrid, r#""hybrid""#),
        ],
    );
    pin(
        &mut g,
        "Overage",
        &[
            (Overage::Block, r#""block""#),
            (Overage::Allow, r#""allow""#),
        ],
    );
    pin(
        &mut g,
        "Period",
        &[
            (Period::Month, r#""month""#),
            (Period::Day, r#""day""#),
            (Period::Lifetime, r#""lifetime""#),
        ],
    );
    pin(
        &mut g,
        "Scope",
        &[
            (Scope::Ingest, r#""ingest""#),
            (Scope::Read, r#""read""#),
            (Scope::Admin, r#""admin""#),
        ],
    );
    pin(
        &mut g,
        "Purpose",
        &[
            (Purpose::Pepper, r#""pepper""#),
            (Purpose::Data, r#""data""#),
            (Purpose::Signing, r#""signing""#),
        ],
    );
    g.finish();
}

/// In log records (postcard), a scope is its variant index, not its name.
#[test]
fn scopes_in_log_records_keep_their_variant_index() {
    for (scope, index) in [(Scope::Ingest, 0u8), (Scope::Read, 1), (Scope::Admin, 2)] {
        assert_eq!(postcard::to_allocvec(&scope).unwrap(), [index], "{scope:?}");
        assert_eq!(postcard::from_bytes::<Scope>(&[index]).unwrap(), scope);
    }
}
