//! QueryRetention and QueryCohortTable: the project's default zone, then the table.

use crate::core::analysis::retention::*;
use crate::core::engine::Engine;
use crate::error::Result;

impl Engine {
    pub fn query_retention(&self, project: &str, mut query: RetentionQuery) -> Result<RetentionTable> {
        query.validate()?;
        let entry = self.project(project)?;
        let state = entry.read_for_answer();
        if query.shape.timezone.is_empty() {
            query.shape.timezone = state.project.timezone.clone();
        }
        let source = self.events_in_cohort(&state, &query.shape.cohort_id, |counted| fetch(&query, counted))?;
        retention(&source, &state.defs.cohorts, &query)
    }

    pub fn query_cohort_table(&self, project: &str, mut query: CohortTableQuery) -> Result<CohortTable> {
        query.validate()?;
        let entry = self.project(project)?;
        let state = entry.read_for_answer();
        if query.shape.timezone.is_empty() {
            query.shape.timezone = state.project.timezone.clone();
        }
        cohort_table(&self.events(&state)?, &state.defs.cohorts, &query)
    }
}
