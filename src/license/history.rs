//! Which terms applied to a license when: one entry per log record that
//! changed a license's terms (created, changed, renewed, migrated, rolled
//! back), kept by the `license_history` projection, and the fold that turns
//! those entries into the terms in force from each record on.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::model::{License, Policy};
use super::utc_ms;
use crate::id::LicenseId;
use crate::record::Record;

/// The parts of a license that decide its validations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Terms {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    pub policy: Policy,
    pub entitlements: Vec<String>,
    pub grace_period_s: u64,
    pub starts_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl Terms {
    pub fn of(license: &License) -> Terms {
        Terms {
            plan: license.plan.clone(),
            policy: license.policy.clone(),
            entitlements: license.entitlements.clone(),
            grace_period_s: license.grace_period_s,
            starts_at: license.starts_at,
            expires_at: license.expires_at,
        }
    }
}

/// One record that changed a license's terms. `terms` is the whole set
/// except for a renewal, which moves `expires_at` only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TermsChange {
    pub seq: u64,
    pub at: DateTime<Utc>,
    /// `created`, `changed`, `renewed`, `migrated` or `rolled_back`.
    pub change: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terms: Option<Terms>,
    /// A renewal's new expiry (`None`: perpetual).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewed_to: Option<Option<DateTime<Utc>>>,
}

/// The history entry record `seq` adds, with the license it is about.
pub fn change_of(seq: u64, record: &Record) -> Option<(LicenseId, TermsChange)> {
    let entry = |license: &License, change: &str, at_ms: i64| {
        let e = TermsChange {
            seq,
            at: utc_ms(at_ms),
            change: change.into(),
            migration: None,
            step: None,
            terms: Some(Terms::of(license)),
            renewed_to: None,
        };
        Some((license.id.clone(), e))
    };
    match record {
        Record::LicenseCreated { license, audit, .. } => entry(license, "created", audit.at_ms),
        Record::LicenseChanged { license, audit } => entry(license, "changed", audit.at_ms),
        Record::LicenseMigrated {
            migration,
            step,
            rollback,
            after,
            audit,
            ..
        } => {
            let change = if *rollback { "rolled_back" } else { "migrated" };
            let (id, mut e) = entry(after, change, audit.at_ms)?;
            e.migration = Some(migration.clone());
            e.step = Some(*step);
            Some((id, e))
        }
        Record::LicenseRenewed {
            id,
            expires_at_ms,
            audit,
        } => Some((
            id.clone(),
            TermsChange {
                seq,
                at: utc_ms(audit.at_ms),
                change: "renewed".into(),
                migration: None,
                step: None,
                terms: None,
                renewed_to: Some(expires_at_ms.map(utc_ms)),
            },
        )),
        _ => None,
    }
}

/// The terms in force from each entry on (entries in log order): a renewal
/// carries the terms before it forward with its new expiry. Entries before
/// the first whole set (none in a consistent log) are left out.
pub fn in_force(entries: &[TermsChange]) -> Vec<(TermsChange, Terms)> {
    let mut out = Vec::with_capacity(entries.len());
    let mut current: Option<Terms> = None;
    for e in entries {
        let terms = match (&e.terms, &e.renewed_to, &current) {
            (Some(t), _, _) => t.clone(),
            (None, Some(to), Some(c)) => Terms {
                expires_at: *to,
                ..c.clone()
            },
            _ => continue,
        };
        current = Some(terms.clone());
        out.push((e.clone(), terms));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::license::model::NewLicense;
    use crate::record::{AsJson, Audit, LicenseSecret};
    use serde_json::json;

    fn audit(at_ms: i64) -> Audit {
        Audit {
            actor: None,
            at_ms,
            request_id: None,
        }
    }

    #[test]
    fn renewal_moves_only_the_expiry_of_the_terms_in_force() {
        let n: NewLicense = serde_json::from_value(json!({"product": "p", "customer": "c",
            "entitlements": ["a"], "expires_at": "2027-01-01T00:00:00Z"}))
        .unwrap();
        let l = License::create("lic_1".into(), n, utc_ms(0)).unwrap();
        let mut changed = l.clone();
        changed.entitlements = vec!["b".into()];
        let records = [
            Record::LicenseCreated {
                license: AsJson::new(l.clone()),
                secret: LicenseSecret {
                    lookup: [0; 32],
                    sealed_key: vec![],
                },
                audit: audit(1),
            },
            Record::LicenseRenewed {
                id: "lic_1".into(),
                expires_at_ms: None,
                audit: audit(2),
            },
            Record::LicenseSuspended {
                id: "lic_1".into(),
                reason: None,
                audit: audit(3),
            },
            Record::LicenseChanged {
                license: AsJson::new(changed),
                audit: audit(4),
            },
        ];
        let entries: Vec<TermsChange> = records
            .iter()
            .enumerate()
            .filter_map(|(i, r)| change_of(i as u64 + 1, r).map(|(_, e)| e))
            .collect();
        let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2, 4], "a status change is not a change of terms");
        let terms = in_force(&entries);
        assert_eq!(terms[0].1.expires_at, l.expires_at);
        assert_eq!(terms[1].1.expires_at, None);
        assert_eq!(terms[1].1.entitlements, ["a"]);
        assert_eq!(terms[2].1.entitlements, ["b"]);
    }
}
