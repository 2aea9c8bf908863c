//! Plans: named license terms (policy, entitlements, grace) kept as
//! immutable versions, `pro@1`, `pro@2`, … A change of a plan is a new
//! version; a version never changes, so a license that names one has terms
//! that are fixed by that name.
//!
//! A license on a plan keeps the plan's terms in its own document (policy,
//! entitlements, grace) beside the plan's name: validation reads one
//! document, and since versions are immutable the copy cannot drift from
//! the plan. Moving a license to another version is one record, so a
//! validation sees the old terms or the new ones, never a mix.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::model::{check_text, normalise_entitlements, License, Policy, DURATION_S_MAX};
use super::Refusal;
use crate::error_code::ErrorCode;
use crate::record::Record;

pub const PLAN_NAME_CHARS_MAX: usize = 64;
/// Most versions of one plan.
pub const PLAN_VERSIONS_MAX: u32 = 10_000;

/// One version of a plan (`schemas/plan/v1.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub name: String,
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub policy: Policy,
    /// Feature codes, sorted and unique.
    pub entitlements: Vec<String>,
    pub grace_period_s: u64,
    pub created_at: DateTime<Utc>,
}

/// `POST /api/v1/plans`: the next version of plan `name` (the first if new).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPlan {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub policy: Policy,
    #[serde(default)]
    pub entitlements: Vec<String>,
    #[serde(default)]
    pub grace_period_s: u64,
}

fn invalid(message: impl Into<String>) -> Refusal {
    Refusal::new(ErrorCode::InvalidPlan, message)
}

/// A plan name: 1 to 64 of `a-z`, `0-9`, `-`, `_`, starting with a letter
/// or digit (so `name@version` parses back).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= PLAN_NAME_CHARS_MAX
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "a plan name is 1 to {PLAN_NAME_CHARS_MAX} of a-z, 0-9, `-` and `_`, \
             starting with a letter or digit: `{name}`"
        ))
    }
}

/// `pro@2` → (`pro`, Some(2)); `pro` → (`pro`, None): the latest version.
pub fn parse_ref(s: &str) -> Result<(&str, Option<u32>), String> {
    let (name, version) = match s.split_once('@') {
        None => (s, None),
        Some((name, v)) => {
            let v: u32 = v
                .parse()
                .ok()
                .filter(|&v| v >= 1)
                .ok_or_else(|| format!("`{s}`: a plan version is a number from 1"))?;
            (name, Some(v))
        }
    };
    check_name(name)?;
    Ok((name, version))
}

impl Plan {
    /// `name@version`, how licenses and verdicts name it.
    pub fn reference(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// Version `version` of the plan `new` describes, checked.
    pub fn create(new: NewPlan, version: u32, now: DateTime<Utc>) -> Result<Plan, Refusal> {
        check_name(&new.name).map_err(invalid)?;
        if let Some(d) = &new.description {
            check_text("description", d).map_err(invalid)?;
        }
        if new.grace_period_s > DURATION_S_MAX {
            return Err(invalid("grace_period_s must be at most 10 years"));
        }
        new.policy.validate().map_err(invalid)?;
        Ok(Plan {
            name: new.name,
            version,
            description: new.description,
            policy: new.policy,
            entitlements: normalise_entitlements(new.entitlements).map_err(invalid)?,
            grace_period_s: new.grace_period_s,
            created_at: now,
        })
    }
}

/// `license` moved onto `plan`: the plan's policy and grace, and the plan's
/// entitlements plus those the license held beyond its previous plan's
/// (`previous`; all of them when it had none).
pub fn attach(license: &License, previous: Option<&Plan>, plan: &Plan) -> License {
    let mut l = license.clone();
    let own = license
        .entitlements
        .iter()
        .filter(|e| previous.is_none_or(|p| p.entitlements.binary_search(e).is_err()));
    let mut entitlements: Vec<String> = own.chain(&plan.entitlements).cloned().collect();
    entitlements.sort();
    entitlements.dedup();
    l.entitlements = entitlements;
    l.policy = plan.policy.clone();
    l.grace_period_s = plan.grace_period_s;
    l.plan = Some(plan.reference());
    l
}

/// Every plan version, folded from `PlanSaved` records. The writer decides
/// with one; readers read the `plans` tree, written from the same records.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlanBook {
    by_name: BTreeMap<String, Vec<Plan>>,
}

impl PlanBook {
    pub fn from_plans(plans: impl IntoIterator<Item = Plan>) -> PlanBook {
        let mut book = PlanBook::default();
        for p in plans {
            book.insert(p);
        }
        book
    }

    fn insert(&mut self, plan: Plan) {
        let versions = self.by_name.entry(plan.name.clone()).or_default();
        let at = versions.partition_point(|p| p.version < plan.version);
        if versions.get(at).is_some_and(|p| p.version == plan.version) {
            versions[at] = plan;
        } else {
            versions.insert(at, plan);
        }
    }

    /// Applies one record; true if it was a plan.
    pub fn apply(&mut self, record: &Record) -> bool {
        match record {
            Record::PlanSaved { plan, .. } => {
                self.insert((*plan.0).clone());
                true
            }
            _ => false,
        }
    }

    pub fn next_version(&self, name: &str) -> u32 {
        self.by_name
            .get(name)
            .and_then(|v| v.last())
            .map_or(1, |p| p.version + 1)
    }

    pub fn get(&self, name: &str, version: u32) -> Option<&Plan> {
        let versions = self.by_name.get(name)?;
        versions
            .binary_search_by_key(&version, |p| p.version)
            .ok()
            .map(|i| &versions[i])
    }

    /// The plan `reference` names (`pro@2`, or `pro`: its latest version).
    pub fn resolve(&self, reference: &str) -> Result<&Plan, Refusal> {
        let (name, version) = parse_ref(reference).map_err(invalid)?;
        let found = match version {
            Some(v) => self.get(name, v),
            None => self.by_name.get(name).and_then(|v| v.last()),
        };
        found.ok_or_else(|| {
            Refusal::new(
                ErrorCode::NotFound,
                format!("plan `{reference}` does not exist"),
            )
        })
    }

    /// Every version of every plan, by name then version.
    pub fn iter(&self) -> impl Iterator<Item = &Plan> {
        self.by_name.values().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::license::model::NewLicense;
    use crate::record::{AsJson, Audit};
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn plan(v: serde_json::Value, version: u32) -> Result<Plan, Refusal> {
        Plan::create(serde_json::from_value(v).unwrap(), version, now())
    }

    fn saved(p: Plan) -> Record {
        Record::PlanSaved {
            plan: AsJson::new(p),
            audit: Audit {
                actor: None,
                at_ms: 0,
                request_id: None,
            },
        }
    }

    #[test]
    fn references_parse_and_name_rules_hold() {
        assert_eq!(parse_ref("pro@2").unwrap(), ("pro", Some(2)));
        assert_eq!(parse_ref("pro").unwrap(), ("pro", None));
        for bad in ["pro@0", "pro@x", "Pro@1", "@1", "-a", "a b", ""] {
            assert!(parse_ref(bad).is_err(), "{bad}");
        }
        let e = plan(json!({"name": "pro", "policy": {"type": "seat"}}), 1).unwrap_err();
        assert_eq!(e.code, "INVALID_PLAN");
        assert!(e.message.contains("policy.seats"), "{}", e.message);
    }

    #[test]
    fn versions_are_kept_apart_and_latest_resolves_to_the_highest() {
        let mut book = PlanBook::default();
        assert_eq!(book.next_version("pro"), 1);
        let p1 = plan(json!({"name": "pro", "entitlements": ["a"]}), 1).unwrap();
        let p2 = plan(json!({"name": "pro", "entitlements": ["b"]}), 2).unwrap();
        assert!(book.apply(&saved(p2.clone())));
        assert!(book.apply(&saved(p1.clone())));
        assert_eq!(book.next_version("pro"), 3);
        assert_eq!(book.resolve("pro").unwrap(), &p2);
        assert_eq!(book.resolve("pro@1").unwrap(), &p1);
        assert_eq!(book.resolve("pro@3").unwrap_err().code, "NOT_FOUND");
        let refs: Vec<String> = book.iter().map(Plan::reference).collect();
        assert_eq!(refs, ["pro@1", "pro@2"]);
    }

    #[test]
    fn attaching_takes_the_plan_terms_and_keeps_the_licenses_own_entitlements() {
        let seats = json!({"type": "seat", "seats": {"max": 5, "mode": "floating"}});
        let p1 = plan(
            json!({"name": "pro", "policy": seats, "entitlements": ["a", "b"], "grace_period_s": 60}),
            1,
        )
        .unwrap();
        let p2 = plan(json!({"name": "pro", "entitlements": ["b", "c"]}), 2).unwrap();
        let n: NewLicense = serde_json::from_value(
            json!({"product": "p", "customer": "c", "entitlements": ["own"], "plan": "pro@1"}),
        )
        .unwrap();
        let l = License::create("lic_1".into(), n, now()).unwrap();
        let on1 = attach(&l, None, &p1);
        assert_eq!(on1.entitlements, ["a", "b", "own"]);
        assert_eq!(
            (on1.grace_period_s, on1.plan.as_deref()),
            (60, Some("pro@1"))
        );
        assert_eq!(on1.policy.seats.as_ref().unwrap().max, 5);
        let on2 = attach(&on1, Some(&p1), &p2);
        assert_eq!(on2.entitlements, ["b", "c", "own"]);
        assert_eq!(on2.policy, Policy::default());
        assert_eq!(on2.plan.as_deref(), Some("pro@2"));
    }
}
