//! Billing decisions: when a period closes, and what happens to an event
//! dated in a closed one (see [`crate::billing::closes`]). The writer decides
//! both, so the close records and the refusals are in log order with the
//! events they judge.

use super::{Request, WriterState};
use crate::billing::{Admission, Closed, Settings};
use crate::engine::batch::Batch;
use crate::engine::protocol::EngineError;
use crate::error_code::ErrorCode;
use crate::event::Rejection;
use crate::metrics::metrics;
use crate::record::Record;

/// The writer's billing state, as of its next seq.
#[derive(Debug, Clone)]
pub struct BillingWriter {
    pub settings: Settings,
    pub closed: Closed,
    /// The log holds the `BillingSettings` record.
    pub settings_logged: bool,
    /// An event was counted in a closed period since the last close.
    pub restate_pending: bool,
    /// No event accepted dates before this and is in a period not closed
    /// (`None`: no such event): a close that would close nothing is not
    /// logged. Conservative: may be earlier than the earliest such event.
    pub unclosed_from_ms: Option<i64>,
}

impl BillingWriter {
    /// The state on start: `restate_pending` when a late event awaits its
    /// restatement, `unclosed_from_ms` the start of the first period not
    /// closed that holds counted events.
    pub fn new(
        settings: Settings,
        closed: Closed,
        settings_logged: bool,
        restate_pending: bool,
        unclosed_from_ms: Option<i64>,
    ) -> BillingWriter {
        BillingWriter {
            settings,
            closed,
            settings_logged,
            restate_pending,
            unclosed_from_ms,
        }
    }

    /// Whether an event dated `time_ms` may be counted.
    pub fn admit(&mut self, time_ms: i64) -> Result<(), Rejection> {
        match self.closed.admits(&self.settings, time_ms) {
            Admission::Open => {
                self.unclosed_from_ms =
                    Some(self.unclosed_from_ms.map_or(time_ms, |t| t.min(time_ms)));
                Ok(())
            }
            Admission::Restate => {
                self.restate_pending = true;
                metrics()
                    .billing_late_events_total
                    .with_label_values(&["restated"])
                    .inc();
                Ok(())
            }
            Admission::Refused {
                period,
                closed_through,
            } => {
                metrics()
                    .billing_late_events_total
                    .with_label_values(&["refused"])
                    .inc();
                Err(Rejection::new(
                    ErrorCode::PeriodClosed,
                    format!(
                        "the event's billing period {period} is closed, and only the last {} \
                         closed periods (through {closed_through}) can still be restated \
                         (billing.restatement_horizon)",
                        self.settings.restatement_horizon
                    ),
                ))
            }
        }
    }
}

/// Close what can be closed at the writer's clock, with every source having
/// delivered past `watermark_ms`; restate statements that late events
/// changed. Sent by a ticker; the answer is the close record's seq, if one
/// was written.
pub struct CloseBilling {
    pub watermark_ms: i64,
}

impl Request for CloseBilling {
    type Output = Option<u64>;

    fn records_max(&self) -> usize {
        2
    }

    fn decide(
        self,
        state: &mut WriterState,
        now_ms: i64,
        batch: &mut Batch,
    ) -> Result<Option<u64>, EngineError> {
        let b = &mut state.billing;
        // The default cycle needs no record: a log without one bills by it.
        if !b.settings_logged && b.settings.cycle != crate::billing::Cycle::default() {
            batch.push(
                Record::BillingSettings {
                    cycle: b.settings.cycle.kind,
                    time_zone: b.settings.cycle.tz.name().to_owned(),
                },
                None,
            );
            b.settings_logged = true;
        }
        let unclosed = b.unclosed_from_ms;
        let advanced = (b.closed.advance(&b.settings, now_ms, self.watermark_ms))
            .filter(|before| unclosed.is_some_and(|t| t < *before));
        let Some(before) = advanced.or(b.closed.before_ms.filter(|_| b.restate_pending)) else {
            return Ok(None);
        };
        if advanced.is_some() {
            // Events from `before` on may still be open.
            b.unclosed_from_ms = Some(before);
        }
        batch.push(
            Record::BillingClose {
                at_ms: now_ms,
                closed_before_ms: before,
                restate: b.restate_pending,
            },
            None,
        );
        b.closed.before_ms = Some(before);
        b.restate_pending = false;
        metrics().billing_closed_before_seconds.set(before / 1000);
        Ok(Some(state.last_seq(batch)))
    }
}
