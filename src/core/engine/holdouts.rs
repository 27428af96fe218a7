//! The holdout calls of the engine: stored holdouts and their readout against everyone else.

use crate::core::catalog::validate_slug;
use crate::core::engine::experiments::{ExperimentResults, read_out};
use crate::core::engine::meta::MetaKey;
use crate::core::engine::{Engine, not_before};
use crate::core::experiment::definition::ReadoutConfig;
use crate::core::experiment::holdout::*;
use crate::core::experiment::measure;
use crate::core::model::Micros;
use crate::core::store::remote::Fetch;
use crate::core::store::source::AnySource;
use crate::error::{Error, Result};

impl Engine {
    /// Stores a new holdout; it runs from `start_time` (now when unset).
    pub fn create_holdout(&self, project: &str, mut holdout: Holdout) -> Result<Holdout> {
        holdout.validate()?;
        let entry = self.project(project)?;
        entry.change_settings(|state| {
            if state.defs.holdouts.contains_key(&holdout.key) {
                return Err(Error::AlreadyExists(format!("holdout {:?} already exists", holdout.key)));
            }
            check_metrics(&state.defs.metrics, &holdout)?;
            let now = self.clock.now();
            holdout.start_time.get_or_insert(now);
            (holdout.created, holdout.updated) = (now, now);
            self.put_meta(MetaKey::Holdout { project, key: &holdout.key }, &holdout)?;
            tracing::info!(project = %project, holdout = %holdout.key, percent = holdout.percent, "holdout created");
            state.defs_mut().holdouts.insert(holdout.key.clone(), holdout.clone());
            Ok(holdout)
        })
    }

    pub fn get_holdout(&self, project: &str, key: &str) -> Result<Holdout> {
        validate_slug("holdout_key", key)?;
        let entry = self.project(project)?;
        let state = entry.settings();
        state.defs.holdouts.get(key).cloned().ok_or_else(|| not_found(key))
    }

    /// Ordered by key.
    pub fn list_holdouts(&self, project: &str) -> Result<Vec<Holdout>> {
        let entry = self.project(project)?;
        let state = entry.settings();
        Ok(state.defs.holdouts.values().cloned().collect())
    }

    /// Ends the holdout now (never before its start); idempotent once its end has passed.
    pub fn stop_holdout(&self, project: &str, key: &str) -> Result<Holdout> {
        validate_slug("holdout_key", key)?;
        let entry = self.project(project)?;
        entry.change_settings(|state| {
            let mut holdout = state.defs.holdouts.get(key).cloned().ok_or_else(|| not_found(key))?;
            let now = self.clock.now();
            if holdout.end_time.is_some_and(|end| end <= now) {
                return Ok(holdout);
            }
            holdout.end_time = Some(now.max(holdout.start_time.unwrap_or(now)));
            holdout.updated = now;
            self.put_meta(MetaKey::Holdout { project, key }, &holdout)?;
            tracing::info!(project = %project, holdout = %key, "holdout stopped");
            state.defs_mut().holdouts.insert(key.to_owned(), holdout.clone());
            Ok(holdout)
        })
    }

    /// Held-out people (`holdout`, the control) against everyone else seen in
    /// `[start_time, min(end_time, now))` (`general`), each from their first event there, on
    /// the holdout's metrics with the experiment statistics of `config`. On a remote engine,
    /// who was seen when is counted there, and only the metrics' events are read.
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
        let experiment = holdout.as_experiment();
        let remote = self.remote();
        let fetch = remote.map(|_| measure::metric_fetch(&experiment, &state.defs.metrics.latest_metrics(), false));
        if let (Some(remote), Some(fetch @ Fetch { names: Some(_), .. })) = (remote, &fetch) {
            // Who was seen, and when first, counted where the events are; then only the
            // events the metrics read.
            let range = Fetch { from: start.max(not_before(&state)), to: end, ..Fetch::everything() };
            let seen = remote.first_seen(project, &range)?;
            let mut source = self.events_of(&state, fetch)?;
            let AnySource::Batch(batch) = &mut source else {
                return Err(Error::Internal("a remote engine's events come as a batch".into()));
            };
            let exposures = seen_in_list(batch, holdout, seen)?;
            return read_out(&source, &state, &experiment, &exposures, config, (start, end), now);
        }
        let source = self.events(&state)?;
        let exposures = seen_people(&source, holdout, start, end);
        read_out(&source, &state, &experiment, &exposures, config, (start, end), now)
    }
}
