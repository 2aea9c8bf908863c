//! The meters in force at one log position, by slug and by event type, and
//! the one check every ingest path runs against them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::def::{CompiledMeter, MeterDef};
use super::extract::{ExtractError, Observation};
use super::unique::UniqueKey;
use super::MeterError;
use crate::error_code::ErrorCode;

/// The meters known to a fold or a check, by slug and by event type.
#[derive(Default, Clone)]
pub struct MeterSet {
    by_slug: BTreeMap<String, Arc<CompiledMeter>>,
    /// The same meters, in insertion order per event type: looked up for
    /// every event, so a type's meters are one probe away.
    by_type: HashMap<String, Vec<Arc<CompiledMeter>>>,
}

/// A meter of the event's type could not read the event.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("meter `{slug}`: {error}")]
pub struct MeterCheckError {
    pub slug: String,
    pub error: ExtractError,
}

impl MeterCheckError {
    pub fn code(&self) -> crate::error_code::ErrorCode {
        self.error.code()
    }
}

impl From<MeterCheckError> for crate::event::Rejection {
    fn from(e: MeterCheckError) -> Self {
        crate::event::Rejection::new(e.code(), e.to_string())
    }
}

impl MeterSet {
    pub fn from_defs(defs: Vec<MeterDef>) -> Result<MeterSet, MeterError> {
        let mut set = MeterSet::default();
        for def in defs {
            set.insert(def.validate()?);
        }
        Ok(set)
    }

    pub fn insert(&mut self, meter: CompiledMeter) {
        let slug = meter.def().slug.to_string();
        let ty = meter.def().event_type.clone();
        self.remove(&slug);
        let meter = Arc::new(meter);
        self.by_type.entry(ty).or_default().push(meter.clone());
        self.by_slug.insert(slug, meter);
    }

    pub fn remove(&mut self, slug: &str) -> Option<CompiledMeter> {
        let old = self.by_slug.remove(slug)?;
        let ty = &old.def().event_type;
        if let Some(v) = self.by_type.get_mut(ty) {
            v.retain(|m| m.def().slug != slug);
            if v.is_empty() {
                self.by_type.remove(ty);
            }
        }
        Some(Arc::unwrap_or_clone(old))
    }

    pub fn get(&self, slug: &str) -> Option<&CompiledMeter> {
        self.by_slug.get(slug).map(|m| &**m)
    }

    pub fn for_type<'s>(&'s self, ty: &str) -> impl Iterator<Item = &'s CompiledMeter> + 's {
        self.by_type.get(ty).into_iter().flatten().map(|m| &**m)
    }

    pub fn iter(&self) -> impl Iterator<Item = &CompiledMeter> {
        self.by_slug.values().map(|m| &**m)
    }

    pub fn len(&self) -> usize {
        self.by_slug.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_slug.is_empty()
    }

    /// What every meter of event type `ty` reads from `data`, in
    /// [`MeterSet::for_type`] order, so the fold does not extract it again.
    /// A meter that cannot read the event skips it: its entry is the reason
    /// (the fold of the logged event finds the same one, so a replay skips
    /// it too). The event is refused only when a `strict` meter cannot read
    /// it, or when a meter's value is refused by policy whatever the meter
    /// says ([`ExtractError::refuses_event`]: a negative value without
    /// `allowNegative`), which the fold would count. The writer and the
    /// Kafka source's dead-letter pre-check both call this, so they cannot
    /// disagree on what is refused. `key` is the data directory's
    /// UNIQUE_COUNT key (what the fold of the observations is stored under).
    pub fn check(
        &self,
        ty: &str,
        data: Option<&str>,
        key: &UniqueKey,
    ) -> Result<Vec<Reading>, MeterCheckError> {
        self.for_type(ty)
            .map(|meter| match meter.admit(data, key) {
                Ok(obs) => Ok(Ok(obs)),
                Err(error) if meter.def().strict || error.refuses_event() => Err(MeterCheckError {
                    slug: meter.def().slug.to_string(),
                    error,
                }),
                Err(error) => Ok(Err(error.code())),
            })
            .collect()
    }
}

/// What one meter made of one event: what it observed, or why it skipped
/// the event (an [`ExtractError::code`]).
pub type Reading = Result<Observation, ErrorCode>;
