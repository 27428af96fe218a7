//! Experiments of the engine: stored definitions with their lifecycle, assignment, exposure
//! logging and the readout over stored events.

use crate::core::store::source::EventSource;
use std::sync::Arc;

use crate::core::catalog::validate_slug;
use crate::core::engine::meta::MetaKey;
use crate::core::engine::{Definitions, Engine, ProjectState, Settings};
use crate::core::experiment::definition::{
    EXPERIMENT_PROPERTY, EXPOSURE_EVENT, Experiment, ExperimentStatus, MetricRole, ReadoutConfig, VARIANT_PROPERTY,
};
use crate::core::experiment::holdout::holding_out;
use crate::core::experiment::measure::{self, MetricPlan, Windows};
use crate::core::experiment::readout::{self, Decision, MetricFinding, MetricReadout};
use crate::core::experiment::stats::SummaryKind;
use crate::core::ingest::{self, Incoming, ItemError};
use crate::core::metric::definition::{Direction, Metric};
use crate::core::model::{Event, Micros, Value, now_micros};
use crate::error::{Error, Result, echo};

/// An exposure to record as a `$exposure` event.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExposureItem {
    pub event_id: String,
    pub user_id: String,
    pub anonymous_id: String,
    pub experiment_key: String,
    pub variant: String,
    /// `None`: the server's receive time.
    pub timestamp: Option<Micros>,
}

#[derive(Debug, Default)]
pub struct ExposureOutcome {
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: Vec<ItemError>,
}

/// The answer of Assign.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// Empty when not in the experiment.
    pub variant: String,
    pub bucket: f64,
    /// The running holdout keeping the id out of every experiment; empty when none does.
    pub holdout_key: String,
}

impl Assignment {
    pub fn in_experiment(&self) -> bool {
        !self.variant.is_empty()
    }
}

/// One metric of a readout.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricResults {
    pub key: String,
    pub role: MetricRole,
    pub version: u32,
    pub direction: Direction,
    /// Control first, then the other variants in definition order.
    pub readout: MetricReadout,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExperimentResults {
    pub metrics: Vec<MetricResults>,
    pub srm_p_value: f64,
    pub srm_detected: bool,
    pub excluded_users: u64,
    /// Exposed users per variant, in variant order.
    pub variant_users: Vec<u64>,
    pub decision: Decision,
    pub reasons: Vec<String>,
    /// `[start_time, min(end_time, now))`.
    pub analysis_range: (Micros, Micros),
}

/// Checks that every metric exists and can be analysed in an experiment.
fn check_metrics(defs: &Definitions, experiment: &Experiment) -> Result<()> {
    let metrics = defs.metrics.latest_metrics();
    let mut index = [0usize; 3];
    for (role, key) in experiment.metrics() {
        let slot = &mut index[role as usize];
        let field = Experiment::metric_field(role, *slot);
        *slot += 1;
        let metric =
            metrics.get(key).ok_or_else(|| Error::invalid(&field, format!("unknown metric {key}", key = echo(key))))?;
        measure::summary_kind(metric, &metrics).map_err(|message| Error::invalid(&field, message))?;
    }
    Ok(())
}

fn not_found(key: &str) -> Error {
    Error::NotFound(format!("experiment {key} not found", key = echo(key)))
}

impl Definitions {
    fn experiment(&self, key: &str) -> Result<&Experiment> {
        self.experiments.get(key).ok_or_else(|| not_found(key))
    }
}

impl Engine {
    pub fn create_experiment(&self, project: &str, mut experiment: Experiment) -> Result<Experiment> {
        experiment.normalize()?;
        let entry = self.project(project)?;
        entry.change_settings(|state| {
            if state.defs.experiments.contains_key(&experiment.key) {
                return Err(Error::AlreadyExists(format!("experiment {} already exists", echo(&experiment.key))));
            }
            check_metrics(&state.defs, &experiment)?;
            experiment.status = ExperimentStatus::Draft;
            (experiment.created, experiment.updated) = (now_micros(), now_micros());
            self.put_meta(MetaKey::Experiment { project, key: &experiment.key }, &experiment)?;
            tracing::info!(project = %project, experiment = %experiment.key, "experiment created");
            state.defs_mut().experiments.insert(experiment.key.clone(), experiment.clone());
            Ok(experiment)
        })
    }

    /// Replaces a definition. Once started, the assignment (seed, variants, coverage) is
    /// fixed; start and end times set by Start/Stop are kept when the update leaves them unset.
    pub fn update_experiment(&self, project: &str, mut experiment: Experiment) -> Result<Experiment> {
        validate_slug("experiment.key", &experiment.key)?;
        let entry = self.project(project)?;
        entry.change_settings(|state| {
            let previous = state.defs.experiment(&experiment.key)?.clone();
            if previous.status != ExperimentStatus::Draft {
                experiment.start_time = experiment.start_time.or(previous.start_time);
            }
            if previous.status == ExperimentStatus::Stopped {
                experiment.end_time = experiment.end_time.or(previous.end_time);
            }
            experiment.normalize()?;
            if previous.status != ExperimentStatus::Draft && previous.reassigns(&experiment) {
                return Err(Error::FailedPrecondition(format!(
                    "experiment {} has started: seed, variants and coverage can no longer change (it would reassign users)",
                    echo(&experiment.key)
                )));
            }
            check_metrics(&state.defs, &experiment)?;
            (experiment.status, experiment.created, experiment.updated) = (previous.status, previous.created, now_micros());
            self.put_meta(MetaKey::Experiment { project, key: &experiment.key }, &experiment)?;
            state.defs_mut().experiments.insert(experiment.key.clone(), experiment.clone());
            Ok(experiment)
        })
    }

    pub fn get_experiment(&self, project: &str, key: &str) -> Result<Experiment> {
        validate_slug("experiment_key", key)?;
        let entry = self.project(project)?;
        let state = entry.settings();
        state.defs.experiment(key).cloned()
    }

    /// Ordered by key, filtered by `ExperimentStatus::passes`.
    pub fn list_experiments(&self, project: &str, statuses: &[Option<ExperimentStatus>]) -> Result<Vec<Experiment>> {
        let entry = self.project(project)?;
        let state = entry.settings();
        Ok(state.defs.experiments.values().filter(|e| e.status.passes(statuses)).cloned().collect())
    }

    /// DRAFT → RUNNING (idempotent when RUNNING); start_time becomes now unless set.
    pub fn start_experiment(&self, project: &str, key: &str) -> Result<Experiment> {
        self.transition(project, key, |experiment, now| match experiment.status {
            ExperimentStatus::Running => Ok(false),
            ExperimentStatus::Stopped => Err(Error::FailedPrecondition(format!(
                "experiment {key} is stopped; it cannot start again",
                key = echo(key)
            ))),
            ExperimentStatus::Draft => {
                experiment.status = ExperimentStatus::Running;
                experiment.start_time.get_or_insert(now);
                Ok(true)
            }
        })
    }

    /// RUNNING → STOPPED (idempotent when STOPPED); end_time becomes now unless set.
    pub fn stop_experiment(&self, project: &str, key: &str) -> Result<Experiment> {
        self.transition(project, key, |experiment, now| match experiment.status {
            ExperimentStatus::Stopped => Ok(false),
            ExperimentStatus::Draft => {
                Err(Error::FailedPrecondition(format!("experiment {key} is a draft; start it first", key = echo(key))))
            }
            ExperimentStatus::Running => {
                experiment.status = ExperimentStatus::Stopped;
                // Never before the start: a future start_time gives an empty window.
                let start = experiment.start_time.unwrap_or(now);
                experiment.end_time.get_or_insert(now.max(start));
                Ok(true)
            }
        })
    }

    /// Applies `change` (which says whether it changed anything) and stores the result.
    fn transition(
        &self,
        project: &str,
        key: &str,
        change: impl FnOnce(&mut Experiment, Micros) -> Result<bool>,
    ) -> Result<Experiment> {
        validate_slug("experiment_key", key)?;
        let entry = self.project(project)?;
        entry.change_settings(|state| {
            let mut experiment = state.defs.experiment(key)?.clone();
            let now = now_micros();
            if change(&mut experiment, now)? {
                experiment.updated = now;
                self.put_meta(MetaKey::Experiment { project, key }, &experiment)?;
                tracing::info!(project = %project, experiment = %key, status = ?experiment.status, "experiment status changed");
                state.defs_mut().experiments.insert(key.to_owned(), experiment.clone());
            }
            Ok(experiment)
        })
    }

    /// The variant `user_id` (or `anonymous_id` without one) gets, in any status; none while a
    /// running holdout holds the id out.
    pub fn assign(&self, project: &str, key: &str, user_id: &str, anonymous_id: &str) -> Result<Assignment> {
        validate_slug("experiment_key", key)?;
        let id = if user_id.is_empty() { anonymous_id } else { user_id };
        if id.is_empty() {
            return Err(Error::invalid("user_id", "user_id or anonymous_id is required"));
        }
        crate::core::ingest::validate_user_id("user_id", user_id)?;
        crate::core::ingest::validate_user_id("anonymous_id", anonymous_id)?;
        // Definitions only: an assignment never waits for a query on the project.
        let entry = self.project(project)?;
        let state = entry.settings();
        let experiment = state.defs.experiment(key)?;
        let (variant, bucket) = experiment.assign(id);
        if let Some(holdout) = holding_out(&state.defs.holdouts, id, now_micros()) {
            return Ok(Assignment { variant: String::new(), bucket, holdout_key: holdout.key.clone() });
        }
        let variant = variant.map(|v| experiment.variants[v].key.clone()).unwrap_or_default();
        Ok(Assignment { variant, bucket, holdout_key: String::new() })
    }

    /// Stores exposures as `$exposure` events through the durable ingest path. Items that
    /// failed decoding arrive as errors; each bad item is returned with its index.
    pub async fn log_exposures(
        self: &Arc<Self>,
        project: &str,
        items: Vec<Result<ExposureItem>>,
    ) -> Result<ExposureOutcome> {
        self.limits.check_batch("exposures", items.len())?;
        let entry = self.project(project)?;
        let now = now_micros();
        // Definitions only (the experiment's variants): queued writes are not applied for them,
        // so logging exposures waits for no query on the project.
        let (mut outcome, events, origin) = self
            .off_executor(move |engine| {
                let state = &*entry.settings();
                let mut outcome = ExposureOutcome::default();
                let mut events = Vec::with_capacity(items.len());
                let mut origin = Vec::with_capacity(items.len());
                for (index, item) in items.into_iter().enumerate() {
                    let event_id = item.as_ref().map(|i| i.event_id.clone()).unwrap_or_default();
                    let event = item.and_then(|item| exposure_event(state, item, now)).and_then(|mut event| {
                        let len = event.event_id.len() + event.user_id.len() + event.anonymous_id.len() + 64;
                        ingest::validate_event(&mut event, len, &engine.limits, now)?;
                        Ok(event)
                    });
                    match event {
                        Ok(event) => {
                            events.push(Incoming { event: Ok(event), encoded_len: 0 });
                            origin.push(index as u32);
                        }
                        Err(error) => outcome.rejected.push(ItemError {
                            index: index as u32,
                            event_id,
                            error: error.under(&format!("exposures[{index}]")),
                        }),
                    }
                }
                Ok((outcome, events, origin))
            })
            .await?;
        if events.is_empty() {
            return Ok(outcome);
        }
        // The server checked these against the experiment: the tracking plan does not apply.
        let tracked = self.track_with_plan(project, events, false, Default::default()).await?;
        outcome.accepted = tracked.accepted;
        outcome.duplicates = tracked.duplicates;
        for mut item in tracked.rejected {
            item.index = origin[item.index as usize];
            outcome.rejected.push(item);
        }
        outcome.rejected.sort_by_key(|item| item.index);
        Ok(outcome)
    }

    /// Assign, and with `log_exposure` an exposure for an id in the experiment (none for an
    /// id outside it), stored before the answer.
    pub async fn assign_and_log(
        self: &Arc<Self>,
        project: &str,
        key: &str,
        user_id: &str,
        anonymous_id: &str,
        log_exposure: bool,
    ) -> Result<Assignment> {
        let (p, k, u, a) = (project.to_owned(), key.to_owned(), user_id.to_owned(), anonymous_id.to_owned());
        let assignment = self.off_executor(move |engine| engine.assign(&p, &k, &u, &a)).await?;
        if log_exposure && assignment.in_experiment() {
            self.log_assignment(project, key, user_id, anonymous_id, &assignment.variant).await?;
        }
        Ok(assignment)
    }

    /// Records the exposure of an Assign call with `log_exposure`.
    async fn log_assignment(
        self: &Arc<Self>,
        project: &str,
        key: &str,
        user_id: &str,
        anonymous_id: &str,
        variant: &str,
    ) -> Result<()> {
        let item = ExposureItem {
            user_id: user_id.to_owned(),
            anonymous_id: anonymous_id.to_owned(),
            experiment_key: key.to_owned(),
            variant: variant.to_owned(),
            ..Default::default()
        };
        let outcome = self.log_exposures(project, vec![Ok(item)]).await?;
        match outcome.rejected.into_iter().next() {
            Some(item) => Err(item.error),
            None => Ok(()),
        }
    }

    /// The readout of an experiment as of `now`; `config` replaces the stored statistics
    /// configuration for this call.
    pub fn experiment_results(
        &self,
        project: &str,
        key: &str,
        cohort_id: &str,
        config: Option<ReadoutConfig>,
        now: Micros,
    ) -> Result<ExperimentResults> {
        validate_slug("experiment_key", key)?;
        if let Some(config) = &config {
            config.validate("stats")?;
        }
        let entry = self.project(project)?;
        let state = entry.read();
        let experiment = state.defs.experiment(key)?;
        let compute = || {
            let metrics = state.defs.metrics.latest_metrics();
            let fetch = |counted: bool| measure::fetch(experiment, &metrics, !cohort_id.is_empty() && !counted);
            let source = self.events_in_cohort(&state, cohort_id, fetch)?;
            results(&source, &state, experiment, cohort_id, config, now)
        };
        // A remote engine's events change without this node knowing: nothing is cached then.
        if cohort_id.is_empty() && config.is_none() && self.remote().is_none() {
            return self.readouts.get_or_compute(project, &state, experiment, now, compute);
        }
        compute()
    }
}

/// A `$exposure` event for an exposure, checked against its experiment.
fn exposure_event(state: &Settings, item: ExposureItem, now: Micros) -> Result<Event> {
    validate_slug("experiment_key", &item.experiment_key)?;
    let experiment = state.defs.experiment(&item.experiment_key)?;
    if experiment.variant_index(&item.variant).is_none() {
        return Err(Error::invalid(
            "variant",
            format!("{} is not a variant of experiment {}", echo(&item.variant), echo(&item.experiment_key)),
        ));
    }
    if item.user_id.is_empty() && item.anonymous_id.is_empty() {
        return Err(Error::invalid("user_id", "user_id or anonymous_id is required"));
    }
    Ok(Event {
        event_id: item.event_id,
        name: EXPOSURE_EVENT.to_owned(),
        user_id: item.user_id,
        anonymous_id: item.anonymous_id,
        timestamp: item.timestamp.unwrap_or(now),
        properties: vec![
            (EXPERIMENT_PROPERTY.to_owned(), Value::String(item.experiment_key)),
            (VARIANT_PROPERTY.to_owned(), Value::String(item.variant)),
        ],
    })
}

/// Measures and analyses an experiment: exposures in `[start, min(end, now))`, per-user
/// values, comparisons with the correction over primary and secondary metrics, SRM and the
/// decision.
pub fn results(
    source: &impl EventSource,
    state: &ProjectState,
    experiment: &Experiment,
    cohort_id: &str,
    config: Option<ReadoutConfig>,
    now: Micros,
) -> Result<ExperimentResults> {
    let config = config.unwrap_or(experiment.readout);
    let members = crate::core::cohort::resolve(source, &state.defs.cohorts, "cohort_id", cohort_id)?;
    let start = experiment.start_time.ok_or_else(|| {
        Error::FailedPrecondition(format!(
            "experiment {} has no start_time: start it, or set start_time for a backfill",
            echo(&experiment.key)
        ))
    })?;
    let end = experiment.end_time.map_or(now, |end| end.min(now)).max(start);
    let exposures = measure::exposures(source, experiment, start, end, members.as_ref().map(|m| m.as_slice()));
    read_out(source, state, experiment, &exposures, config, (start, end), now)
}

/// Measures and analyses `exposures` of an experiment (or of a holdout, read as one) over the
/// analysis range `[start, end)`: per-user values, comparisons with the correction over
/// primary and secondary metrics, SRM and the decision.
pub fn read_out(
    source: &impl EventSource,
    state: &ProjectState,
    experiment: &Experiment,
    exposures: &measure::Exposures,
    config: ReadoutConfig,
    (start, end): (Micros, Micros),
    now: Micros,
) -> Result<ExperimentResults> {
    let metrics = state.defs.metrics.latest_metrics();
    let mut chosen: Vec<(MetricRole, &Metric, SummaryKind)> = Vec::new();
    for (role, key) in experiment.metrics() {
        let metric = metrics.get(key).ok_or_else(|| {
            Error::FailedPrecondition(format!("metric {key} of the experiment no longer exists", key = echo(key)))
        })?;
        let kind = measure::summary_kind(metric, &metrics).map_err(Error::FailedPrecondition)?;
        chosen.push((role, metric, kind));
    }

    let stats = config.stats;
    let windows = Windows {
        attribution: experiment.attribution_window,
        end,
        cuped_pre_period: stats.cuped.then(|| config.cuped_pre_period()),
        winsorize_percentile: stats.winsorize_percentile,
    };
    let plans: Vec<MetricPlan> = chosen.iter().map(|&(_, metric, kind)| MetricPlan { metric, kind }).collect();
    let measured = measure::measure(source, &metrics, experiment, exposures, &plans, &windows)?;

    // Control first, then the other variants in definition order.
    let control = experiment.control();
    let order: Vec<usize> =
        std::iter::once(control).chain((0..experiment.variants.len()).filter(|&v| v != control)).collect();
    let mut results: Vec<MetricResults> = chosen
        .iter()
        .zip(measured)
        .map(|(&(role, metric, kind), data)| {
            let mut data: Vec<Option<_>> = data.into_iter().map(Some).collect();
            let ordered = order.iter().map(|&v| data[v].take().unwrap_or_default()).collect();
            let metric_config = crate::core::experiment::stats::StatsConfig { direction: metric.direction, ..stats };
            let readout =
                readout::analyze_metric(kind, ordered, 0, &metric_config, experiment.minimum_detectable_effect);
            MetricResults {
                key: metric.key.clone(),
                role,
                version: metric.version,
                direction: metric.direction,
                readout,
            }
        })
        .collect();
    let mut family: Vec<&mut MetricReadout> =
        results.iter_mut().filter(|m| m.role != MetricRole::Guardrail).map(|m| &mut m.readout).collect();
    readout::correct(&mut family, stats.correction);

    let srm_p_value = readout::srm_p_value(&exposures.per_variant, &experiment.weights()).unwrap_or(1.0);
    let keys: Vec<&str> = order.iter().map(|&v| experiment.variants[v].key.as_str()).collect();
    let findings: Vec<MetricFinding> =
        results.iter().map(|m| MetricFinding { key: &m.key, role: m.role, readout: &m.readout }).collect();
    let ended = experiment.end_time.is_some_and(|end| end <= now);
    let (decision, reasons) = readout::decide(&findings, &keys, srm_p_value, exposures.excluded, ended);
    tracing::debug!(
        experiment = %experiment.key,
        exposed = exposures.users.len(),
        excluded = exposures.excluded,
        "experiment measured"
    );
    Ok(ExperimentResults {
        metrics: results,
        srm_p_value,
        srm_detected: srm_p_value < readout::SRM_THRESHOLD,
        excluded_users: exposures.excluded,
        variant_users: exposures.per_variant.clone(),
        decision,
        reasons,
        analysis_range: (start, end),
    })
}
