//! Property tests over extreme values in license documents: every duration
//! and date is either refused at the door or yields decisions that neither
//! panic nor run backwards (a lease that ends before it starts, an
//! extension that shortens a license).

use chrono::{DateTime, Utc};
use proptest::prelude::*;

use super::decide::availability;
use super::model::{License, NewLicense, Policy, PolicyType, SeatMode, SeatPolicy};
use super::renewal::Renewal;
use super::seats::{CheckoutPlan, SeatTable};
use super::utc_ms;

const NOW_MS: i64 = 1_780_000_000_000;

/// Durations around every boundary that matters: small, the bounds,
/// `i64::MAX` as seconds or milliseconds, and `u64::MAX`.
fn duration_s() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..100_000,
        Just(super::model::DURATION_S_MAX),
        Just(super::model::DURATION_S_MAX + 1),
        Just(i64::MAX as u64 / 1000 + 1),
        Just(i64::MAX as u64),
        Just(i64::MAX as u64 + 1),
        Just(u64::MAX),
        any::<u64>(),
    ]
}

fn date() -> impl Strategy<Value = Option<DateTime<Utc>>> {
    prop_oneof![
        Just(None),
        (NOW_MS - 10_000_000..NOW_MS + 10_000_000).prop_map(|ms| Some(utc_ms(ms))),
        any::<i64>().prop_map(DateTime::from_timestamp_millis),
        Just(Some(DateTime::<Utc>::MAX_UTC)),
        Just(Some(DateTime::<Utc>::MIN_UTC)),
    ]
}

fn new_license(
    starts_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    grace_period_s: u64,
    lease_ttl_s: u64,
    max: u32,
) -> NewLicense {
    NewLicense {
        product: "p".into(),
        customer: "c".into(),
        starts_at,
        expires_at,
        grace_period_s: Some(grace_period_s),
        trial: false,
        entitlements: Vec::new(),
        metadata: Default::default(),
        policy: Some(Policy {
            ty: PolicyType::Seat,
            seats: Some(SeatPolicy {
                max,
                mode: SeatMode::Floating,
                lease_ttl_s,
            }),
            usage: None,
        }),
        plan: None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn extreme_durations_and_dates_are_refused_or_decided_sanely(
        starts_at in date(),
        expires_at in date(),
        grace in duration_s(),
        ttl in duration_s(),
        max in prop_oneof![Just(0u32), 1u32..4, Just(u32::MAX)],
        extend in duration_s(),
        now_offset_ms in -1_000_000_000i64..1_000_000_000,
    ) {
        let created = License::create(
            "lic_x".into(),
            new_license(starts_at, expires_at, grace, ttl, max),
            utc_ms(NOW_MS),
        );
        let Ok(license) = created else { return Ok(()) };
        let now_ms = NOW_MS + now_offset_ms;
        // Deciding availability never panics, whatever the dates.
        let _ = availability(&license, utc_ms(now_ms));
        // A floating lease runs forward from now: `max` seats checked out
        // now are all live a second later, and one more is refused.
        let seats = license.policy.seats.as_ref().unwrap();
        let mut table = SeatTable::default();
        for i in 0..seats.max.min(3) {
            match table.plan_checkout(seats, &format!("m{i}"), &[1; 32], now_ms) {
                CheckoutPlan::New { expires_ms } => {
                    let end = expires_ms.expect("floating seats lapse");
                    prop_assert!(end > now_ms + 1000, "lease ends at {end}, now {now_ms}");
                    table.checked_out(super::seats::Seat {
                        seat_id: format!("s{i}").into(),
                        fingerprint: format!("m{i}"),
                        checked_out_ms: now_ms,
                        heartbeat_ms: now_ms,
                        expires_ms,
                        token_sha256: Some([1; 32]),
                    });
                }
                other => prop_assert!(false, "seat {i} of {}: {other:?}", seats.max),
            }
        }
        prop_assert_eq!(table.used(now_ms + 1000), seats.max.min(3));
        if seats.max <= 3 {
            let more = table.plan_checkout(seats, "another", &[2; 32], now_ms + 1000);
            prop_assert!(matches!(more, CheckoutPlan::Full), "{:?}", more);
        }
        // An extension never makes the license expire earlier than it did,
        // nor before now.
        if let Ok(Some(new_ms)) = license.renewed_expiry(Renewal::Extend(extend), now_ms) {
            let old_ms = license.expires_at.map_or(now_ms, |e| e.timestamp_millis());
            prop_assert!(new_ms >= old_ms.max(now_ms), "{new_ms} < {old_ms} / {now_ms}");
        }
    }
}
