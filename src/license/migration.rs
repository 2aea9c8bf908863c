//! Migrations, the pure part: which licenses a migration selects, how its
//! declarative conversion rules turn a license document into its new one,
//! and the dry-run report. No I/O, no clock.
//!
//! A migration document (`schemas/migration/v1.json`) names a selection
//! (product, customer, plan, explicit ids: all given criteria must hold), a
//! target plan version, and rules:
//!
//! - `seats`: `target` (the plan's seat terms), `keep` (the license keeps its
//!   own seat policy, so a seat plan moving to usage becomes a hybrid while
//!   both coexist), or `drop`;
//! - `quotas_from_seats`: quotas whose limit is the license's seat count
//!   times `per_seat` (seats N → a usage quota of N × allowance); they
//!   replace the plan's quota on the same meter;
//! - `entitlements`: `carry` (the license's own plus the plan's) or `target`;
//! - expiry, start, status, grace and metadata are carried over.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::model::{License, Overage, Policy, PolicyType, Quota, Status, UsagePolicy};
use super::period::Period;
use super::plan::{parse_ref, Plan};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
    /// `pro@1` (that version) or `pro` (any version of the plan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// Explicit license ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub licenses: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeatRule {
    #[default]
    Target,
    Keep,
    Drop,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntitlementRule {
    #[default]
    Carry,
    Target,
}

/// A quota computed from the license's seat count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeatQuota {
    pub meter: String,
    pub per_seat: f64,
    pub period: Period,
    pub overage: Overage,
    #[serde(default)]
    pub alert_thresholds_pct: Vec<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    #[serde(default)]
    pub seats: SeatRule,
    #[serde(default)]
    pub quotas_from_seats: Vec<SeatQuota>,
    #[serde(default)]
    pub entitlements: EntitlementRule,
}

/// What a migration changes: `POST /api/v1/migrations`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub selection: Selection,
    /// The plan version the licenses move to (`usage@1`).
    pub target: String,
    #[serde(default)]
    pub rules: Rules,
}

impl MigrationSpec {
    /// The checks that need no state: a selection that selects by
    /// something, references that parse, rules that can hold.
    pub fn check(&self) -> Result<(), String> {
        let s = &self.selection;
        if s.product.is_none() && s.customer.is_none() && s.plan.is_none() && s.licenses.is_none() {
            return Err("the selection needs a product, customer, plan or licenses".into());
        }
        if let Some(p) = &s.plan {
            parse_ref(p)?;
        }
        if parse_ref(&self.target)?.1.is_none() {
            return Err(format!(
                "target `{}` must name a plan version (`name@version`)",
                self.target
            ));
        }
        let mut meters = BTreeSet::new();
        for q in &self.rules.quotas_from_seats {
            if !meters.insert(q.meter.as_str()) {
                return Err(format!("two quotas_from_seats name meter `{}`", q.meter));
            }
            if !q.per_seat.is_finite() || q.per_seat < 0.0 {
                return Err(format!(
                    "quotas_from_seats `{}`: per_seat must be a number >= 0",
                    q.meter
                ));
            }
        }
        Ok(())
    }

    /// Whether `license` (as it is now) falls under the selection.
    pub fn selects(&self, license: &License) -> bool {
        let s = &self.selection;
        let plan_matches = |want: &str| match (&license.plan, want.contains('@')) {
            (None, _) => false,
            (Some(have), true) => have == want,
            (Some(have), false) => have.split_once('@').is_some_and(|(n, _)| n == want),
        };
        s.product.as_ref().is_none_or(|p| *p == license.product)
            && s.customer.as_ref().is_none_or(|c| *c == license.customer)
            && s.plan.as_deref().is_none_or(plan_matches)
            && s.licenses
                .as_ref()
                .is_none_or(|ids| ids.iter().any(|id| id.as_str() == license.id.as_str()))
    }
}

/// `license` converted by `spec` onto `target` at `now_ms`, or why it
/// cannot be. `meter_exists` says whether a quota's meter exists.
pub fn convert(
    spec: &MigrationSpec,
    target: &Plan,
    license: &License,
    meter_exists: &dyn Fn(&str) -> bool,
    now_ms: i64,
) -> Result<License, String> {
    if license.status == Status::Revoked {
        return Err("the license is revoked, and a revoked license cannot change".into());
    }
    let own_seats = license.policy.seats.clone();
    let seats = match spec.rules.seats {
        SeatRule::Target => target.policy.seats.clone(),
        SeatRule::Keep => own_seats.clone(),
        SeatRule::Drop => None,
    };
    let mut quotas: Vec<Quota> = target.policy.quotas().to_vec();
    for rule in &spec.rules.quotas_from_seats {
        let Some(n) = own_seats.as_ref().map(|s| s.max) else {
            return Err(format!(
                "quota `{}` is computed from seats, and the license has no seat policy",
                rule.meter
            ));
        };
        let quota = Quota {
            meter: rule.meter.clone(),
            limit: f64::from(n) * rule.per_seat,
            period: rule.period,
            overage: rule.overage,
            alert_thresholds_pct: rule.alert_thresholds_pct.clone(),
        };
        match quotas.iter_mut().find(|q| q.meter == rule.meter) {
            Some(q) => *q = quota,
            None => quotas.push(quota),
        }
    }
    let ty = match (seats.is_some(), !quotas.is_empty()) {
        (false, false) => PolicyType::None,
        (true, false) => PolicyType::Seat,
        (false, true) => PolicyType::Usage,
        (true, true) => PolicyType::Hybrid,
    };
    let usage = (!quotas.is_empty()).then_some(UsagePolicy { quotas });
    let mut after = license.clone();
    after.policy = Policy { ty, seats, usage };
    after.entitlements = match spec.rules.entitlements {
        EntitlementRule::Target => target.entitlements.clone(),
        EntitlementRule::Carry => {
            let mut e: Vec<String> = license
                .entitlements
                .iter()
                .chain(&target.entitlements)
                .cloned()
                .collect();
            e.sort();
            e.dedup();
            e
        }
    };
    after.plan = Some(target.reference());
    after.updated_at = super::utc_ms(now_ms);
    after.validate().map_err(|r| r.message)?;
    if let Some(q) = after
        .policy
        .quotas()
        .iter()
        .find(|q| !meter_exists(&q.meter))
    {
        return Err(format!(
            "quota names meter `{}`, which does not exist",
            q.meter
        ));
    }
    Ok(after)
}

/// One selected license in a dry run: its document now and after the
/// conversion, or why it cannot convert.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DryRunItem {
    pub license_id: String,
    pub before: License,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<License>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A dry run's summary, kept in the migration document so that a later
/// step can say whether the selection changed since.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelectionMark {
    pub selected: usize,
    pub convertible: usize,
    /// SHA-256 (hex) over the selected ids, in order, each ended by a 0.
    pub selection_sha256: String,
}

/// The dry run of `spec` over `licenses` (the pending ones: not yet
/// migrated by it), sorted by id.
pub fn dry_run<'a>(
    spec: &MigrationSpec,
    target: &Plan,
    licenses: impl IntoIterator<Item = &'a License>,
    meter_exists: &dyn Fn(&str) -> bool,
    now_ms: i64,
) -> Vec<DryRunItem> {
    let mut items: Vec<DryRunItem> = licenses
        .into_iter()
        .filter(|l| spec.selects(l))
        .map(|l| {
            let (after, reason) = match convert(spec, target, l, meter_exists, now_ms) {
                Ok(a) => (Some(a), None),
                Err(r) => (None, Some(r)),
            };
            DryRunItem {
                license_id: l.id.to_string(),
                before: l.clone(),
                after,
                reason,
            }
        })
        .collect();
    items.sort_by(|a, b| a.license_id.cmp(&b.license_id));
    items
}

/// The mark of a selection of `ids` (in order), `convertible` of them
/// convertible.
pub fn mark<'a>(ids: impl IntoIterator<Item = &'a str>, convertible: usize) -> SelectionMark {
    let mut hash = Sha256::new();
    let mut selected = 0;
    for id in ids {
        hash.update(id.as_bytes());
        hash.update([0]);
        selected += 1;
    }
    SelectionMark {
        selected,
        convertible,
        selection_sha256: hex::encode(hash.finalize()),
    }
}

/// How much a step migrates: `percent` of the selection in total by the
/// end of the step (canary 1, then 10, then 100), or `count` more licenses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepSize {
    Percent(u32),
    Count(u32),
}

impl StepSize {
    pub fn check(self) -> Result<(), String> {
        match self {
            StepSize::Percent(p) if (1..=100).contains(&p) => Ok(()),
            StepSize::Count(n) if n >= 1 => Ok(()),
            StepSize::Percent(_) => Err("percent must be 1 to 100".into()),
            StepSize::Count(_) => Err("count must be at least 1".into()),
        }
    }

    /// How many licenses this step migrates, given `selected` licenses in
    /// all of which `migrated` are migrated already.
    pub fn goal(self, selected: usize, migrated: usize) -> usize {
        match self {
            StepSize::Percent(p) => (selected * p as usize)
                .div_ceil(100)
                .saturating_sub(migrated),
            StepSize::Count(n) => (n as usize).min(selected.saturating_sub(migrated)),
        }
    }
}

#[cfg(test)]
#[path = "migration_tests.rs"]
mod tests;
