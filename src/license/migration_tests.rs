//! The conversion rules against a simple model of what each rule promises,
//! over generated licenses.

use super::*;
use crate::license::model::{NewLicense, SeatMode, SeatPolicy};
use crate::license::plan::NewPlan;
use proptest::prelude::*;
use serde_json::json;

const NOW_MS: i64 = 1_800_000_000_000;

fn plan(v: serde_json::Value) -> Plan {
    let n: NewPlan = serde_json::from_value(v).unwrap();
    Plan::create(n, 1, crate::license::utc_ms(0)).unwrap()
}

fn usage_plan() -> Plan {
    plan(json!({"name": "usage", "entitlements": ["metered"],
        "policy": {"type": "usage", "usage": {"quotas": [
            {"meter": "calls", "limit": 10, "period": "month", "overage": "block"}]}}}))
}

fn spec(v: serde_json::Value) -> MigrationSpec {
    serde_json::from_value(v).unwrap()
}

fn seat_license(id: &str, product: &str, seats: Option<u32>, entitlements: &[&str]) -> License {
    let n: NewLicense = serde_json::from_value(json!({"product": product, "customer": "c",
        "entitlements": entitlements, "expires_at": "2030-01-01T00:00:00Z",
        "metadata": {"k": 1}}))
    .unwrap();
    let mut l = License::create(id.into(), n, crate::license::utc_ms(0)).unwrap();
    if let Some(max) = seats {
        l.policy = Policy {
            ty: PolicyType::Seat,
            seats: Some(SeatPolicy {
                max,
                mode: SeatMode::Floating,
                lease_ttl_s: 900,
            }),
            usage: None,
        };
        l.plan = Some("seats@1".into());
    }
    l
}

fn all_meters(_: &str) -> bool {
    true
}

fn seat_rule(per_seat: f64, seats: &str) -> MigrationSpec {
    spec(json!({"selection": {"product": "cad"}, "target": "usage@1",
        "rules": {"seats": seats, "quotas_from_seats": [
            {"meter": "calls", "per_seat": per_seat, "period": "month", "overage": "block"}]}}))
}

proptest! {
    #[test]
    fn seats_become_a_quota_of_seats_times_the_allowance_and_the_rest_carries_over(
        max in 1u32..=100_000,
        per_seat in 0.0f64..1e6,
        keep in any::<bool>(),
        own in proptest::collection::vec("[a-z]{1,6}", 0..5),
    ) {
        let own: Vec<&str> = own.iter().map(String::as_str).collect();
        let before = seat_license("lic_1", "cad", Some(max), &own);
        let rule = seat_rule(per_seat, if keep { "keep" } else { "target" });
        let after = convert(&rule, &usage_plan(), &before, &all_meters, NOW_MS).unwrap();
        // The model: one quota on `calls` of max × per_seat, replacing the
        // plan's; seats kept only when asked (a hybrid during coexistence).
        let quotas = after.policy.quotas();
        prop_assert_eq!(quotas.len(), 1);
        prop_assert_eq!(quotas[0].limit, f64::from(max) * per_seat);
        prop_assert_eq!(after.policy.seats.clone(), if keep { before.policy.seats.clone() } else { None });
        let ty = if keep { PolicyType::Hybrid } else { PolicyType::Usage };
        prop_assert_eq!(after.policy.ty, ty);
        let mut want: Vec<String> = own.iter().map(|s| s.to_string()).chain(["metered".to_string()]).collect();
        want.sort();
        want.dedup();
        prop_assert_eq!(&after.entitlements, &want);
        prop_assert_eq!(after.plan.as_deref(), Some("usage@1"));
        let kept = |l: &License| (l.id.clone(), l.product.clone(), l.customer.clone(), l.status,
            l.starts_at, l.expires_at, l.grace_period_s, l.metadata.clone(), l.created_at);
        prop_assert_eq!(kept(&after), kept(&before));
        // The same input converts to the same document.
        prop_assert_eq!(convert(&rule, &usage_plan(), &before, &all_meters, NOW_MS).unwrap(), after);
    }

    #[test]
    fn a_dry_run_reports_every_selected_license_once_in_id_order_and_no_other(
        licenses in proptest::collection::vec((0u32..1000, prop::option::of(1u32..50), any::<bool>()), 0..40),
    ) {
        let docs: Vec<License> = licenses
            .iter()
            .map(|(n, seats, cad)| seat_license(&format!("lic_{n:04}"), if *cad { "cad" } else { "ide" }, *seats, &[]))
            .collect();
        let rule = seat_rule(10.0, "target");
        let report = dry_run(&rule, &usage_plan(), &docs, &all_meters, NOW_MS);
        let mut want: Vec<&str> = docs.iter().filter(|l| l.product == "cad").map(|l| l.id.as_str()).collect();
        want.sort();
        let got: Vec<&str> = report.iter().map(|i| i.license_id.as_str()).collect();
        prop_assert_eq!(got, want);
        for item in &report {
            // Exactly one of after and reason, and the reason is the
            // missing seat policy the rule needs.
            prop_assert_eq!(item.after.is_some(), item.reason.is_none());
            prop_assert_eq!(item.after.is_some(), item.before.policy.seats.is_some());
        }
    }

    #[test]
    fn percent_steps_reach_the_whole_selection_and_never_overshoot(
        selected in 0usize..100_000,
        steps in proptest::collection::vec(1u32..=100, 1..6),
    ) {
        let mut migrated = 0;
        for p in steps.iter().copied().chain([100]) {
            let goal = StepSize::Percent(p).goal(selected, migrated);
            prop_assert!(migrated + goal <= selected);
            migrated += goal;
            prop_assert!(migrated >= (selected * p as usize).div_ceil(100).min(selected));
        }
        prop_assert_eq!(migrated, selected);
    }
}

#[test]
fn a_mapping_that_would_make_an_invalid_license_names_the_reason() {
    let before = seat_license("lic_1", "cad", Some(3), &[]);
    let unknown = |m: &str| m != "calls";
    let e = convert(
        &seat_rule(1.0, "target"),
        &usage_plan(),
        &before,
        &unknown,
        NOW_MS,
    )
    .unwrap_err();
    assert!(e.contains("meter `calls`"), "{e}");
    let mut revoked = before.clone();
    revoked.status = Status::Revoked;
    let e = convert(
        &seat_rule(1.0, "target"),
        &usage_plan(),
        &revoked,
        &all_meters,
        NOW_MS,
    )
    .unwrap_err();
    assert!(e.contains("revoked"), "{e}");
    let bad = [
        json!({"selection": {}, "target": "usage@1"}),
        json!({"selection": {"product": "cad"}, "target": "usage"}),
        json!({"selection": {"product": "cad"}, "target": "usage@1", "rules": {"quotas_from_seats": [
            {"meter": "calls", "per_seat": -1, "period": "month", "overage": "block"}]}}),
    ];
    for b in bad {
        assert!(spec(b.clone()).check().is_err(), "{b}");
    }
}

#[test]
fn selection_by_plan_name_takes_every_version_and_by_version_only_that_one() {
    let mut l = seat_license("lic_1", "cad", Some(1), &[]);
    let by = |plan: &str, l: &License| {
        spec(json!({"selection": {"plan": plan}, "target": "usage@1"})).selects(l)
    };
    assert!(by("seats", &l) && by("seats@1", &l) && !by("seats@2", &l) && !by("seat", &l));
    l.plan = None;
    assert!(!by("seats", &l));
}
