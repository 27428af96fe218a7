//! The holdout calls of the engine: stored holdouts and their readout against everyone else.

use crate::core::catalog::validate_slug;
use crate::core::engine::Engine;
use crate::core::engine::experiments::{ExperimentResults, read_out};
use crate::core::engine::meta::MetaKey;
use crate::core::experiment::definition::ReadoutConfig;
use crate::core::experiment::holdout::*;
use crate::core::model::Micros;
use crate::error::{Error, Result};

impl Engine {
    /// Stores a new holdout; it runs from `start_time` (now when unset).
    pub fn create_holdout(&self, project: &str, mut holdout: Holdout) -> Result<Holdout> {
        holdout.validate()?;
        let entry = self.project(project)?;
        let mut state = entry.write();
        if state.defs.holdouts.contains_key(&holdout.key) {
            return Err(Error::AlreadyExists(format!("holdout {:?} already exists", holdout.key)));
        }
        check_metrics(&state.defs.metrics, &holdout)?;
        let now = self.clock.now();
        holdout.start_time.get_or_insert(now);
        (holdout.created, holdout.updated) = (now, now);
        self.put_meta(MetaKey::Holdout { project, key: &holdout.key }, &holdout)?;
        tracing::info!(project = %project, holdout = %holdout.key, percent = holdout.percent, "holdout created");
        state.defs.holdouts.insert(holdout.key.clone(), holdout.clone());
        Ok(holdout)
    }

    pub fn get_holdout(&self, project: &str, key: &str) -> Result<Holdout> {
        validate_slug("holdout_key", key)?;
        let entry = self.project(project)?;
        let state = entry.read();
        state.defs.holdouts.get(key).cloned().ok_or_else(|| not_found(key))
    }

    /// Ordered by key.
    pub fn list_holdouts(&self, project: &str) -> Result<Vec<Holdout>> {
        let entry = self.project(project)?;
        let state = entry.read();
        Ok(state.defs.holdouts.values().cloned().collect())
    }

    /// Ends the holdout now (never before its start); idempotent once its end has passed.
    pub fn stop_holdout(&self, project: &str, key: &str) -> Result<Holdout> {
        validate_slug("holdout_key", key)?;
        let entry = self.project(project)?;
        let mut state = entry.write();
        let mut holdout = state.defs.holdouts.get(key).cloned().ok_or_else(|| not_found(key))?;
        let now = self.clock.now();
        if holdout.end_time.is_some_and(|end| end <= now) {
            return Ok(holdout);
        }
        holdout.end_time = Some(now.max(holdout.start_time.unwrap_or(now)));
        holdout.updated = now;
        self.put_meta(MetaKey::Holdout { project, key }, &holdout)?;
        tracing::info!(project = %project, holdout = %key, "holdout stopped");
        state.defs.holdouts.insert(key.to_owned(), holdout.clone());
        Ok(holdout)
    }

    /// Held-out people (`holdout`, the control) against everyone else seen in
    /// `[start_time, min(end_time, now))` (`general`), each from their first event there, on
    /// the holdout's metrics with the experiment statistics of `config`.
    pub fn holdout_results(
        &self,
        project: &str,
        key: &str,
        config: ReadoutConfig,
        now: Micros,
    ) -> Result<ExperimentResults> {
        validate_slug("holdout_key", key)?;
        config.validate("stats")?;
        let entry = self.project(project)?;
        let state = entry.read();
        let holdout = state.defs.holdouts.get(key).ok_or_else(|| not_found(key))?;
        let start = holdout.start_time.unwrap_or(holdout.created);
        let end = holdout.end_time.map_or(now, |end| end.min(now)).max(start);
        let source = self.events(&state)?;
        let exposures = seen_people(&source, holdout, start, end);
        read_out(&source, &state, &holdout.as_experiment(), &exposures, config, (start, end), now)
    }
}
