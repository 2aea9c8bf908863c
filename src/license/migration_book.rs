//! Migrations as the log records them: the migration document (status,
//! dry-run mark, each step's and rollback's outcome), and one entry per
//! license it migrated (the document before and after, and whether it was
//! rolled back). The writer holds a [`MigrationBook`] folded from
//! `MigrationSaved` and `LicenseMigrated` records; the `migrations` tree
//! holds the same documents and entries for readers and restarts.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::migration::{MigrationSpec, SelectionMark, StepSize};
use super::model::License;
use crate::id::LicenseId;
use crate::record::Record;

/// Most failures or conflicts a step or rollback lists by name (all are
/// counted).
pub const LISTED_MAX: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationStatus {
    Draft,
    Active,
    Completed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub license_id: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DryRunMark {
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub mark: SelectionMark,
}

/// One step of the rollout, as far as it has got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepReport {
    pub step: u32,
    pub size: StepSize,
    /// How many licenses the step was to take when it started.
    pub goal: usize,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub migrated: usize,
    pub failed: usize,
    /// The first [`LISTED_MAX`] failures.
    pub failures: Vec<Failure>,
    /// The last license id the step considered (licenses go in id order).
    pub cursor: Option<String>,
    /// Set when the selection is not the one the dry run saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection_changed: Option<String>,
}

impl StepReport {
    pub fn remaining(&self) -> usize {
        self.goal.saturating_sub(self.migrated + self.failed)
    }
}

/// One rollback, as far as it has got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackReport {
    pub from_step: u32,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub restored: usize,
    /// Licenses changed by someone else since they were migrated: left as
    /// they are.
    pub conflicts: usize,
    /// The first [`LISTED_MAX`] conflicts.
    pub conflicts_listed: Vec<Failure>,
    pub cursor: Option<String>,
    /// Every license of the steps rolled back has been considered.
    pub done: bool,
}

/// A migration document (`schemas/migration/v1.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Migration {
    pub id: String,
    pub spec: MigrationSpec,
    pub status: MigrationStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<DryRunMark>,
    #[serde(default)]
    pub steps: Vec<StepReport>,
    #[serde(default)]
    pub rollbacks: Vec<RollbackReport>,
}

/// One license a migration changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub license_id: LicenseId,
    pub step: u32,
    pub before: License,
    pub after: License,
    pub rolled_back: bool,
}

impl Entry {
    /// The entry a `LicenseMigrated` record leaves (a rollback record's
    /// `after` is the restored, original document).
    pub fn of(record: &Record) -> Option<(&str, Entry)> {
        let Record::LicenseMigrated {
            migration,
            step,
            rollback,
            before,
            after,
            ..
        } = record
        else {
            return None;
        };
        let (b, a) = match rollback {
            false => (before, after),
            true => (after, before),
        };
        let entry = Entry {
            license_id: a.id.clone(),
            step: *step,
            before: (*b.0).clone(),
            after: (*a.0).clone(),
            rolled_back: *rollback,
        };
        Some((migration.as_str(), entry))
    }
}

#[derive(Debug, Clone, Default)]
pub struct MigrationBook {
    docs: BTreeMap<String, Migration>,
    entries: HashMap<String, BTreeMap<LicenseId, Entry>>,
    /// The open migration each migrated (not rolled back) license is in.
    holder: HashMap<LicenseId, String>,
}

impl MigrationBook {
    pub fn from_parts(
        docs: impl IntoIterator<Item = Migration>,
        entries: impl IntoIterator<Item = (String, Entry)>,
    ) -> MigrationBook {
        let mut book = MigrationBook::default();
        for d in docs {
            book.docs.insert(d.id.clone(), d);
        }
        for (m, e) in entries {
            book.put_entry(&m, e);
        }
        book
    }

    fn put_entry(&mut self, migration: &str, e: Entry) {
        let open = self
            .docs
            .get(migration)
            .is_some_and(|d| d.status != MigrationStatus::Completed);
        if e.rolled_back || !open {
            if self.holder.get(&e.license_id).map(String::as_str) == Some(migration) {
                self.holder.remove(&e.license_id);
            }
        } else {
            self.holder
                .insert(e.license_id.clone(), migration.to_owned());
        }
        self.entries
            .entry(migration.to_owned())
            .or_default()
            .insert(e.license_id.clone(), e);
    }

    /// Applies one record; true if it was a migration record.
    pub fn apply(&mut self, record: &Record) -> bool {
        match record {
            Record::MigrationSaved { migration, .. } => {
                let m = (*migration.0).clone();
                if m.status == MigrationStatus::Completed {
                    let id = m.id.clone();
                    self.holder.retain(|_, holder| *holder != id);
                }
                self.docs.insert(m.id.clone(), m);
                true
            }
            Record::LicenseMigrated { .. } => {
                let (m, e) = Entry::of(record).expect("a LicenseMigrated record");
                let m = m.to_owned();
                self.put_entry(&m, e);
                true
            }
            _ => false,
        }
    }

    pub fn get(&self, id: &str) -> Option<&Migration> {
        self.docs.get(id)
    }

    /// The open migration holding `license`, if any.
    pub fn holder(&self, license: &str) -> Option<&str> {
        self.holder.get(license).map(String::as_str)
    }

    /// Migration `id`'s entries, by license id.
    pub fn entries(&self, id: &str) -> impl Iterator<Item = &Entry> {
        self.entries.get(id).into_iter().flat_map(|e| e.values())
    }

    /// How many licenses migration `id` holds migrated now.
    pub fn migrated(&self, id: &str) -> usize {
        self.entries(id).filter(|e| !e.rolled_back).count()
    }

    pub fn docs(&self) -> impl Iterator<Item = &Migration> {
        self.docs.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::license::model::NewLicense;
    use crate::record::{AsJson, Audit};
    use serde_json::json;

    fn audit() -> Audit {
        Audit {
            actor: None,
            at_ms: 0,
            request_id: None,
        }
    }

    fn doc(status: MigrationStatus) -> Record {
        let spec: MigrationSpec =
            serde_json::from_value(json!({"selection": {"product": "p"}, "target": "u@1"}))
                .unwrap();
        Record::MigrationSaved {
            migration: AsJson::new(Migration {
                id: "mig_1".into(),
                spec,
                status,
                created_at: super::super::utc_ms(0),
                updated_at: super::super::utc_ms(0),
                dry_run: None,
                steps: vec![],
                rollbacks: vec![],
            }),
            audit: audit(),
        }
    }

    fn migrated(rollback: bool) -> Record {
        let n: NewLicense =
            serde_json::from_value(json!({"product": "p", "customer": "c"})).unwrap();
        let a = License::create("lic_1".into(), n, super::super::utc_ms(0)).unwrap();
        let mut b = a.clone();
        b.plan = Some("u@1".into());
        let (before, after) = if rollback { (b, a) } else { (a, b) };
        Record::LicenseMigrated {
            migration: "mig_1".into(),
            step: 1,
            rollback,
            before: AsJson::new(before),
            after: AsJson::new(after),
            audit: audit(),
        }
    }

    #[test]
    fn a_license_is_held_from_its_migration_until_rollback_or_completion() {
        let mut book = MigrationBook::default();
        book.apply(&doc(MigrationStatus::Active));
        book.apply(&migrated(false));
        assert_eq!(book.holder("lic_1"), Some("mig_1"));
        assert_eq!(book.migrated("mig_1"), 1);
        book.apply(&migrated(true));
        assert_eq!(book.holder("lic_1"), None);
        let entry = book.entries("mig_1").next().unwrap();
        assert!(entry.rolled_back);
        assert_eq!(
            entry.after.plan.as_deref(),
            Some("u@1"),
            "the migrated form"
        );
        assert_eq!(entry.before.plan, None, "the original form");
        book.apply(&migrated(false));
        book.apply(&doc(MigrationStatus::Completed));
        assert_eq!(book.holder("lic_1"), None);
        // A book rebuilt from the stored documents and entries agrees.
        let docs = book.docs().cloned().collect::<Vec<_>>();
        let entries = book
            .entries("mig_1")
            .map(|e| ("mig_1".to_owned(), e.clone()))
            .collect::<Vec<_>>();
        let again = MigrationBook::from_parts(docs, entries);
        assert_eq!(again.holder("lic_1"), None);
        assert_eq!(again.migrated("mig_1"), 1);
    }
}
