//! How many logged events each meter skipped, by reason, stored in the
//! counters tree beside the counters (`0x04 slug 0x00 reason` → u64 big
//! endian) and written with them, so the totals are a fold of the log like
//! the counters: a restart, a backfill and `keymeter replay` give the same.
//! They are exported as `keymeter_meter_events_skipped_total{meter,reason}`.

use std::collections::{BTreeMap, BTreeSet};

use super::ProjectionError;
use crate::error_code::ErrorCode;
use crate::metrics::metrics;

const SKIP_PREFIX: u8 = 0x04;

type SkipKey = (String, String);

/// The skip totals of every meter, and which changed since they were
/// stored and since they were exported.
#[derive(Default)]
pub(super) struct Skips {
    totals: BTreeMap<SkipKey, u64>,
    unstored: BTreeSet<SkipKey>,
    unexported: BTreeSet<SkipKey>,
}

fn key_bytes(meter: &str, reason: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + meter.len() + reason.len());
    k.push(SKIP_PREFIX);
    k.extend_from_slice(meter.as_bytes());
    k.push(0);
    k.extend_from_slice(reason.as_bytes());
    k
}

/// `0x04 slug 0x00`: a slug holds no NUL, so no other meter's keys match.
fn meter_prefix(meter: &str) -> Vec<u8> {
    key_bytes(meter, "")
}

impl Skips {
    pub fn load(tree: &sled::Tree) -> Result<Skips, ProjectionError> {
        let mut skips = Skips::default();
        for kv in tree.scan_prefix([SKIP_PREFIX]) {
            let (k, v) = kv?;
            let malformed = || ProjectionError::Value {
                tree: "counters",
                key: hex::encode(&k),
                reason: "malformed skip count".into(),
            };
            let text = std::str::from_utf8(&k[1..]).map_err(|_| malformed())?;
            let (meter, reason) = text.split_once('\0').ok_or_else(malformed)?;
            let total = u64::from_be_bytes(v.as_ref().try_into().map_err(|_| malformed())?);
            let key = (meter.to_owned(), reason.to_owned());
            skips.unexported.insert(key.clone());
            skips.totals.insert(key, total);
        }
        Ok(skips)
    }

    /// Adds a fold's skips ([`crate::meter::Fold::take_skips`]).
    pub fn add(&mut self, skipped: Vec<(Box<str>, ErrorCode, u64)>) {
        for (meter, reason, events) in skipped {
            let key = (meter.into_string(), reason.as_str().to_owned());
            *self.totals.entry(key.clone()).or_default() += events;
            self.unstored.insert(key.clone());
            self.unexported.insert(key);
        }
    }

    pub fn unstored(&self) -> bool {
        !self.unstored.is_empty()
    }

    /// Puts the totals that changed into `batch`.
    pub fn store(&mut self, batch: &mut sled::Batch) {
        for key in std::mem::take(&mut self.unstored) {
            let total = self.totals[&key];
            batch.insert(key_bytes(&key.0, &key.1), &total.to_be_bytes());
        }
    }

    /// Forgets a deleted meter's totals, in memory, in the metric and (in
    /// `batch`) in `tree`.
    pub fn remove_meter(
        &mut self,
        tree: &sled::Tree,
        meter: &str,
        batch: &mut sled::Batch,
    ) -> Result<(), ProjectionError> {
        for kv in tree.scan_prefix(meter_prefix(meter)) {
            batch.remove(kv?.0);
        }
        let gone: Vec<SkipKey> = (self.totals.keys())
            .filter(|(m, _)| m == meter)
            .cloned()
            .collect();
        let counter = &metrics().meter_events_skipped_total;
        for key in gone {
            self.totals.remove(&key);
            self.unstored.remove(&key);
            self.unexported.remove(&key);
            let _ = counter.remove_label_values(&[&key.0, &key.1]);
        }
        Ok(())
    }

    /// Raises the exported counters to the totals.
    pub fn export(&mut self) {
        let counter = &metrics().meter_events_skipped_total;
        for key in std::mem::take(&mut self.unexported) {
            let c = counter.with_label_values(&[&key.0, &key.1]);
            let (total, shown) = (self.totals[&key], c.get());
            if total > shown {
                c.inc_by(total - shown);
            }
        }
    }
}
