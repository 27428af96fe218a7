//! QueryAttribution: attribution over the project's events with its spend metric.

use crate::core::analysis::attribution::{Attribution, AttributionQuery, fetch, run};
use crate::core::engine::Engine;
use crate::error::Result;

impl Engine {
    pub fn query_attribution(&self, project: &str, query: AttributionQuery) -> Result<Attribution> {
        query.validate()?;
        let entry = self.project(project)?;
        let state = entry.read_for_answer();
        let started = std::time::Instant::now();
        let source = self.events_in_cohort(&state, &query.cohort_id, |counted| fetch(&query, counted))?;
        let result = run(&source, &state.defs.metrics, &state.defs.cohorts, &query)?;
        tracing::debug!(
            project = %project,
            model = ?query.model,
            conversions = result.conversions,
            channels = result.rows.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "attribution"
        );
        Ok(result)
    }
}
