//! Reads of plans and license histories, from their projections' trees.

use super::View;
use crate::license::history::TermsChange;
use crate::license::migration_book::{Entry, Migration};
use crate::license::plan::Plan;
use crate::projection::ProjectionError;

impl View {
    /// Every plan version, by name then version.
    pub fn plans(&self) -> Result<Vec<Plan>, ProjectionError> {
        self.shared.store.plans()
    }

    /// License `id`'s changes of terms, in log order.
    pub fn license_history(&self, id: &str) -> Result<Vec<TermsChange>, ProjectionError> {
        crate::projection::plans::history(&self.shared.store.license_history, id)
    }

    /// Migration `id`'s document, if it exists.
    pub fn migration(&self, id: &str) -> Result<Option<Migration>, ProjectionError> {
        crate::projection::plans::migration(&self.shared.store.migrations, id)
    }

    /// The licenses migration `id` changed, by license id.
    pub fn migration_entries(&self, id: &str) -> Result<Vec<Entry>, ProjectionError> {
        crate::projection::plans::migration_entries(&self.shared.store.migrations, id)
    }

    /// Every migration document, by id.
    pub fn migrations(&self) -> Result<Vec<Migration>, ProjectionError> {
        crate::projection::plans::migrations(&self.shared.store.migrations)
    }
}
