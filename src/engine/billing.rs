//! The shell around billing closes: the writer's billing state on start
//! (checked against the configuration), the sources' watermarks, and the
//! ticker that asks the writer to close what can be closed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::decide::{BillingWriter, CloseBilling};
use super::handle::Command;
use super::protocol::StartError;
use crate::billing::{Closed, Cycle, Settings};
use crate::clock::Clock;
use crate::config::Config;
use crate::projection::billing::keys;
use crate::projection::Store;
use crate::source::SourceHealth;

/// The sources whose delivery holds billing closes: HTTP needs none (an
/// accepted event is in the log before its answer), each Kafka source
/// registers its health once started.
#[derive(Default)]
pub struct Watermarks {
    /// Sources the configuration names; until each registered, nothing closes.
    expected: usize,
    sources: Mutex<Vec<Arc<SourceHealth>>>,
}

impl Watermarks {
    pub fn new(expected: usize) -> Watermarks {
        Watermarks {
            expected,
            sources: Mutex::new(Vec::new()),
        }
    }

    pub fn register(&self, source: Arc<SourceHealth>) {
        self.sources.lock().expect("watermarks lock").push(source);
    }

    /// Everything every source received before this instant is in the log.
    pub fn watermark_ms(&self, now_ms: i64) -> i64 {
        let sources = self.sources.lock().expect("watermarks lock");
        if sources.len() < self.expected {
            return i64::MIN;
        }
        sources
            .iter()
            .map(|s| s.watermark_ms())
            .fold(now_ms, i64::min)
    }
}

/// The writer's billing state: the configured settings, and what the log
/// closed. The cycle is fixed by the log: a data directory whose log names
/// another cycle, or that counted events under the default before it named
/// one, refuses to start rather than re-cut issued periods.
pub(crate) fn billing_writer(cfg: &Config, store: &Store) -> Result<BillingWriter, StartError> {
    let settings: Settings =
        (cfg.billing.settings()).map_err(|e| StartError::Other(e.to_string()))?;
    let tree = store
        .db
        .open_tree("billing")
        .map_err(crate::projection::ProjectionError::from)?;
    let keys::StoredState {
        settings: logged,
        last_close,
        has_leaves,
        has_dirty,
        unclosed_from_ms,
    } = keys::stored_state(&tree).map_err(crate::projection::ProjectionError::from)?;
    let logged_cycle = match &logged {
        Some((kind, tz)) => Some(Cycle::parse(kind.as_str(), tz).map_err(|e| {
            StartError::Other(format!("the log's billing settings are invalid: {e}"))
        })?),
        None if has_leaves => Some(Cycle::default()),
        None => None,
    };
    if let Some(logged) = logged_cycle.filter(|c| *c != settings.cycle) {
        return Err(StartError::Other(format!(
            "this data directory bills by {} in {}, fixed by its log; the configuration asks for \
             billing.cycle = {:?}, billing.time_zone = {:?}. Periods already cut cannot change: \
             set the cycle back, or start a new data directory",
            logged.kind.as_str(),
            logged.tz.name(),
            cfg.billing.cycle,
            cfg.billing.time_zone
        )));
    }
    let closed = Closed {
        before_ms: last_close.map(|c| c.closed_before_ms),
    };
    Ok(BillingWriter::new(
        settings,
        closed,
        logged.is_some(),
        has_dirty,
        unclosed_from_ms,
    ))
}

/// Asks the writer to close billing periods now and then every `every`.
/// Holds only a weak sender, so it ends at the first tick after the engine
/// stops; a full queue skips a tick.
pub(crate) fn spawn_closer(
    tx: mpsc::WeakSender<Command>,
    every: Duration,
    clock: Arc<dyn Clock>,
    watermarks: Arc<Watermarks>,
) -> Result<(), StartError> {
    let close = move || CloseBilling {
        watermark_ms: watermarks.watermark_ms(clock.now_ms()),
    };
    if let Some(tx) = tx.upgrade() {
        let _ = tx.try_send(Command::unanswered(close()));
    }
    std::thread::Builder::new()
        .name("keymeter-billing-closer".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            let Some(tx) = tx.upgrade() else {
                return;
            };
            let _ = tx.try_send(Command::unanswered(close()));
        })
        .map(|_| ())
        .map_err(|source| StartError::Spawn {
            name: "billing-closer",
            source,
        })
}
