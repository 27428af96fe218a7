//! QueryFunnel: the project's default zone, then the funnel over its events.

use crate::core::analysis::funnel::*;
use crate::core::engine::Engine;
use crate::error::Result;

impl Engine {
    pub fn query_funnel(&self, project: &str, mut query: FunnelQuery) -> Result<FunnelResult> {
        query.validate()?;
        let entry = self.project(project)?;
        let state = entry.read_for_answer();
        if query.timezone.is_empty() {
            query.timezone = state.project.timezone.clone();
        }
        let source = self.events_in_cohort(&state, &query.cohort_id, |counted| fetch(&query, counted))?;
        run(&source, &state.defs.cohorts, &query)
    }
}
