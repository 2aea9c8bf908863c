//! Ingest decisions: the meter check, dedup, a Kafka batch's offset delta,
//! and the quarantine records of what was refused.

use std::collections::HashMap;

use super::{Request, WriterState};
use crate::engine::batch::Batch;
use crate::engine::protocol::{
    EngineError, Ingest, IngestOutcome, Origin, RejectBody, RejectedItem, SourcePositions,
};
use crate::error_code::ErrorCode;
use crate::event::{Decoded, DedupKey, Rejection};
use crate::log::Seq;
use crate::metrics::metrics;
use crate::projection::dedup::{room, NoRoom, TenantIx, PREFETCH_AHEAD, UNATTRIBUTED};
use crate::projection::EventFacts;
use crate::record::{EventRecord, Record, RejectedRecord, SourcePosition};
use crate::source::checkpoint::PartitionId;

/// Longest raw input kept for a quarantined record; longer input is cut and
/// marked `truncated`.
const QUARANTINE_RAW_BYTES_MAX: usize = 64 * 1024;

impl Request for Ingest {
    type Output = IngestOutcome;

    fn records_max(&self) -> usize {
        self.items.len() + 1
    }

    fn decide(
        self,
        state: &mut WriterState,
        now_ms: i64,
        batch: &mut Batch,
    ) -> Result<IngestOutcome, EngineError> {
        let Ingest {
            items,
            received_ms,
            origin,
        } = self;
        let tenant = match &origin {
            Origin::Http { tenant } => state.dedup.tenant(tenant),
            Origin::Kafka { .. } => UNATTRIBUTED,
        };
        if let Origin::Kafka { delta, .. } = &origin {
            // Both checks come first: a refused delta, or a full dedup
            // index, leaves the position where it was.
            let refused =
                |r: crate::source::checkpoint::DeltaRefused| EngineError::Conflict(r.to_string());
            state.sources.check_delta(delta).map_err(refused)?;
            state.dedup_room(&items, tenant, now_ms)?;
            state.sources.try_apply_delta(delta).map_err(refused)?;
        } else {
            state.dedup_room(&items, tenant, now_ms)?;
        }
        let outcome = state.ingest_items(items, received_ms, &origin, tenant, batch);
        if let Origin::Kafka { delta, .. } = origin {
            batch.push(Record::SourceOffsets(delta), None);
        }
        Ok(outcome)
    }
}

impl Request for RejectBody {
    type Output = Seq;

    fn decide(
        self,
        state: &mut WriterState,
        _now_ms: i64,
        batch: &mut Batch,
    ) -> Result<Seq, EngineError> {
        metrics()
            .events_rejected_total
            .with_label_values(&[self.rejection.code])
            .inc();
        let record = quarantine_record(
            self.received_ms,
            self.origin,
            None,
            &self.rejection,
            &self.raw,
        );
        batch.push(Record::Rejected(record), None);
        Ok(state.last_seq(batch))
    }
}

impl Request for SourcePositions {
    type Output = HashMap<PartitionId, i64>;

    fn records_max(&self) -> usize {
        0
    }

    fn decide(
        self,
        state: &mut WriterState,
        _now_ms: i64,
        _batch: &mut Batch,
    ) -> Result<Self::Output, EngineError> {
        Ok(state.sources.positions().clone())
    }
}

impl WriterState {
    /// Refuses `items` (HTTP or Kafka alike) when claiming them could take
    /// the dedup index past its bound, or `tenant` past its share.
    /// Identities that left the window are forgotten first: the last
    /// batch's pruning ran at its own `now`, and room freed since must not
    /// be refused. Near the bound only identities not yet held count, so a
    /// resend is still answered as a duplicate.
    fn dedup_room(
        &mut self,
        items: &[Decoded],
        tenant: TenantIx,
        now_ms: i64,
    ) -> Result<(), EngineError> {
        let mut incoming = items.len();
        let check = |state: &WriterState, incoming: usize| {
            let held = state.dedup.tenants().held(tenant);
            let share =
                (tenant != UNATTRIBUTED).then_some((held, state.dedup_tenant_keys_max as u64));
            room(
                state.dedup.len() as u64,
                state.dedup_keys_max as u64,
                incoming as u64,
                share,
            )
        };
        if check(self, incoming).is_ok() {
            return Ok(());
        }
        self.prune_dedup(now_ms);
        incoming = items
            .iter()
            .filter(|i| matches!(i, Decoded::Valid(e) if !self.dedup.contains(&e.key)))
            .count();
        let Err(no_room) = check(self, incoming) else {
            return Ok(());
        };
        metrics()
            .events_rejected_total
            .with_label_values(&[ErrorCode::DedupCapacity])
            .inc_by(incoming as u64);
        Err(EngineError::Overloaded(match no_room {
            NoRoom::Full { held, max } => format!(
                "the dedup index holds {held} identities, its limit is {max}; raise dedup_keys_max or shorten event_time_back"
            ),
            NoRoom::Share { held, max } => format!(
                "{} holds {held} identities of the dedup index, its share is {max} \
                 (dedup_tenant_share_pct of dedup_keys_max); other senders are not held up",
                self.dedup.tenants().name(tenant)
            ),
        }))
    }

    /// The identities of the valid `items`, the first [`PREFETCH_AHEAD`]
    /// of them prefetched in the dedup index; the claim loop asks for each
    /// next one that far ahead, so its cache misses overlap the meter
    /// checks.
    fn prefetch_dedup(&self, items: &[Decoded]) -> Vec<DedupKey> {
        let keys: Vec<_> = (items.iter())
            .filter_map(|i| match i {
                Decoded::Valid(e) => Some(e.key),
                Decoded::Invalid { .. } => None,
            })
            .collect();
        for k in keys.iter().take(PREFETCH_AHEAD) {
            self.dedup.prefetch(k);
        }
        keys
    }

    /// Every valid event that all meters of its type can read, and whose
    /// identity is new, becomes an event record; the rest become quarantine
    /// records (duplicates are only counted).
    fn ingest_items(
        &mut self,
        items: Vec<Decoded>,
        received_ms: i64,
        origin: &Origin,
        tenant: TenantIx,
        batch: &mut Batch,
    ) -> IngestOutcome {
        let mut outcome = IngestOutcome::default();
        let keys = self.prefetch_dedup(&items);
        let mut valid = 0;
        for (index, item) in items.into_iter().enumerate() {
            let index = index as u32;
            let (rejection, raw) = match item {
                Decoded::Invalid { rejection, raw } => (rejection, raw),
                Decoded::Valid(event) => {
                    if let Some(k) = keys.get(valid + PREFETCH_AHEAD) {
                        self.dedup.prefetch(k);
                    }
                    valid += 1;
                    let checked = self.billing.admit(event.time_ms).and_then(|()| {
                        (self.meters.check(&event.ty, event.data(), &self.unique_key))
                            .map_err(Rejection::from)
                    });
                    match checked {
                        Err(rejection) => (rejection, event.raw.into_bytes()),
                        Ok(observations) => {
                            if !self.dedup.claim_one(event.key, event.time_ms, tenant) {
                                // The original is logged at or before the end
                                // of the batch so far (the answer waits for it).
                                outcome.duplicates += 1;
                                outcome.last_seq = outcome.last_seq.max(self.last_seq(batch));
                                continue;
                            }
                            let facts = EventFacts {
                                ty: event.ty,
                                subject: event.subject,
                                time_ms: event.time_ms,
                                data: None,
                                observations: Some(observations),
                                identity: Some(event.key),
                            };
                            let record = EventRecord {
                                received_ms,
                                time_ms: event.time_ms,
                                raw: event.raw,
                            };
                            let record = match origin {
                                Origin::Http { tenant } => Record::TenantEvent {
                                    tenant: tenant.clone(),
                                    event: record,
                                },
                                Origin::Kafka { .. } => Record::Event(record),
                            };
                            batch.push(record, Some(facts));
                            outcome.accepted += 1;
                            outcome.last_seq = self.last_seq(batch);
                            continue;
                        }
                    }
                }
            };
            let record = quarantined(received_ms, origin, index, &rejection, &raw);
            batch.push(Record::Rejected(record), None);
            outcome.last_seq = self.last_seq(batch);
            outcome.rejected.push(RejectedItem {
                index,
                code: rejection.code,
                message: rejection.message,
            });
        }
        let m = metrics();
        for r in &outcome.rejected {
            m.events_rejected_total.with_label_values(&[r.code]).inc();
        }
        m.events_accepted_total.inc_by(u64::from(outcome.accepted));
        m.events_duplicate_total
            .inc_by(u64::from(outcome.duplicates));
        outcome
    }
}

/// The quarantine record of item `index`, with its Kafka position if any.
fn quarantined(
    received_ms: i64,
    origin: &Origin,
    index: u32,
    rejection: &Rejection,
    raw: &[u8],
) -> RejectedRecord {
    let mut record = quarantine_record(received_ms, origin.label(), Some(index), rejection, raw);
    if let Origin::Kafka { delta, offsets } = origin {
        record.position = offsets.get(index as usize).map(|&offset| SourcePosition {
            topic: delta.topic.clone(),
            partition: delta.partition,
            offset,
        });
    }
    record
}

/// The quarantine record of refused input: its first
/// [`QUARANTINE_RAW_BYTES_MAX`] bytes, marked `truncated` when cut, and no
/// source position.
fn quarantine_record(
    received_ms: i64,
    origin: &str,
    index: Option<u32>,
    rejection: &Rejection,
    raw: &[u8],
) -> RejectedRecord {
    let truncated = raw.len() > QUARANTINE_RAW_BYTES_MAX;
    let kept = &raw[..raw.len().min(QUARANTINE_RAW_BYTES_MAX)];
    RejectedRecord {
        received_ms,
        origin: origin.to_owned(),
        index,
        position: None,
        code: rejection.code.as_str().to_owned(),
        message: rejection.message.clone(),
        raw: kept.to_vec(),
        truncated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejection() -> Rejection {
        Rejection {
            code: ErrorCode::MalformedJson,
            message: "not JSON".into(),
        }
    }

    #[test]
    fn quarantine_keeps_short_input_whole() {
        let q = quarantine_record(1, "http", Some(3), &rejection(), b"\xff{");
        assert_eq!(
            q,
            RejectedRecord {
                received_ms: 1,
                origin: "http".into(),
                index: Some(3),
                position: None,
                code: "MALFORMED_JSON".into(),
                message: "not JSON".into(),
                raw: b"\xff{".to_vec(),
                truncated: false,
            }
        );
        let exact = vec![b'x'; QUARANTINE_RAW_BYTES_MAX];
        let q = quarantine_record(1, "http", None, &rejection(), &exact);
        assert!(!q.truncated);
        assert_eq!(q.raw, exact);
    }

    #[test]
    fn quarantine_cuts_long_input_and_marks_it() {
        let q = quarantine_record(1, "http", Some(3), &rejection(), &[b'x'; 70_000]);
        assert!(q.truncated);
        assert_eq!(q.raw.len(), QUARANTINE_RAW_BYTES_MAX);
        let decoded = Record::decode(&Record::Rejected(q.clone()).encode()).unwrap();
        assert_eq!(decoded, Record::Rejected(q));
    }
}
