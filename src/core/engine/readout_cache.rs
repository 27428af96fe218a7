//! Readouts of ended experiments, kept between calls: a STOPPED experiment's results change
//! only with its definition or the project's data, so they are reused until either moves.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::core::engine::ProjectState;
use crate::core::engine::experiments::ExperimentResults;
use crate::core::experiment::definition::{Experiment, ExperimentStatus};
use crate::core::model::Micros;

/// What a cached readout was computed from; any difference recomputes it.
#[derive(Debug, Clone, PartialEq)]
struct Inputs {
    experiment: Experiment,
    /// The project's change counter (bumped by every applied write and metric change, and by
    /// a remote engine's writes).
    changes: u64,
    /// The state's own version: a query on a snapshot may see the counter of a later one.
    version: u64,
    generation: u64,
    rows: usize,
    traits_version: u64,
}

/// A readout and what it was computed from.
type Entry = (Inputs, Arc<ExperimentResults>);

/// The latest readout of each ended experiment, by (project, experiment key).
#[derive(Debug, Default)]
pub struct ReadoutCache {
    entries: Mutex<HashMap<(String, String), Entry>>,
}

impl ReadoutCache {
    /// The readout of `experiment` with its own config and no cohort: the cached one when its
    /// inputs are unchanged, else `compute`'s (kept when the experiment has ended). Running
    /// experiments are always computed: their range grows with `now`.
    pub fn get_or_compute(
        &self,
        project: &str,
        state: &ProjectState,
        experiment: &Experiment,
        now: Micros,
        compute: impl FnOnce() -> crate::error::Result<ExperimentResults>,
    ) -> crate::error::Result<ExperimentResults> {
        let ended = experiment.status == ExperimentStatus::Stopped && experiment.end_time.is_some_and(|end| end <= now);
        if !ended {
            return compute();
        }
        let inputs = Inputs {
            experiment: experiment.clone(),
            changes: *state.changes.borrow(),
            version: state.version,
            generation: state.data.table.generation(),
            rows: state.data.table.len(),
            traits_version: state.data.traits.changes(),
        };
        let key = (project.to_owned(), experiment.key.clone());
        if let Some((cached, results)) = self.entries.lock().get(&key)
            && *cached == inputs
        {
            return Ok(results.as_ref().clone());
        }
        let results = compute()?;
        self.entries.lock().insert(key, (inputs, Arc::new(results.clone())));
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::experiment::readout::Decision;
    use crate::core::model::{UserUpdate, Value};

    fn state() -> ProjectState {
        ProjectState::for_test("p")
    }

    fn results(users: u64) -> ExperimentResults {
        ExperimentResults {
            metrics: vec![],
            srm_p_value: 1.0,
            srm_detected: false,
            excluded_users: 0,
            variant_users: vec![users],
            decision: Decision::Inconclusive,
            reasons: vec![],
            analysis_range: (0, 10),
        }
    }

    /// Reads through the cache, counting the computations.
    fn read(cache: &ReadoutCache, state: &ProjectState, experiment: &Experiment, calls: &mut u64) -> u64 {
        let answer = cache.get_or_compute("p", state, experiment, 100, || {
            *calls += 1;
            Ok(results(*calls))
        });
        answer.unwrap().variant_users[0]
    }

    #[test]
    fn a_stopped_experiment_is_computed_again_only_when_its_inputs_move() {
        let cache = ReadoutCache::default();
        let mut state = state();
        let mut experiment = Experiment {
            key: "e".into(),
            status: ExperimentStatus::Stopped,
            start_time: Some(0),
            end_time: Some(10),
            ..Default::default()
        };
        let mut calls = 0;
        assert_eq!(read(&cache, &state, &experiment, &mut calls), 1);
        assert_eq!(read(&cache, &state, &experiment, &mut calls), 1);
        // New data (the change counter), a changed definition, new traits: computed again.
        state.changes.send_modify(|n| *n += 1);
        assert_eq!(read(&cache, &state, &experiment, &mut calls), 2);
        experiment.name = "renamed".into();
        assert_eq!(read(&cache, &state, &experiment, &mut calls), 3);
        let update = UserUpdate {
            user_id: "u1".into(),
            set: vec![("plan".into(), Value::String("pro".into()))],
            set_once: vec![],
            unset: vec![],
        };
        state.data.traits_mut().update(0, &update);
        assert_eq!(read(&cache, &state, &experiment, &mut calls), 4);
        assert_eq!(read(&cache, &state, &experiment, &mut calls), 4);
        // A failure is not kept.
        state.changes.send_modify(|n| *n += 1);
        let failed =
            cache.get_or_compute("p", &state, &experiment, 100, || Err(crate::error::Error::Internal("x".into())));
        assert!(failed.is_err());
        assert_eq!(read(&cache, &state, &experiment, &mut calls), 5);
    }

    #[test]
    fn running_experiments_and_future_ends_are_always_computed() {
        let cache = ReadoutCache::default();
        let state = state();
        let mut experiment = Experiment {
            key: "e".into(),
            status: ExperimentStatus::Running,
            start_time: Some(0),
            ..Default::default()
        };
        let mut calls = 0;
        assert_eq!(read(&cache, &state, &experiment, &mut calls), 1);
        assert_eq!(read(&cache, &state, &experiment, &mut calls), 2);
        // Stopped with an end after now (100): the range is still growing.
        experiment.status = ExperimentStatus::Stopped;
        experiment.end_time = Some(200);
        assert_eq!(read(&cache, &state, &experiment, &mut calls), 3);
        assert_eq!(read(&cache, &state, &experiment, &mut calls), 4);
    }
}
