//! ExperimentService: thin handlers over `core::engine::experiments` (definitions, lifecycle,
//! assignment, exposures, results) and `core::experiment::readout` (AnalyzeSummaries), plus
//! the stateless AdjustPValues and PlanExperiment over the statistics module.

use tonic::{Request, Response, Status};

use super::convert::{enum_error, micros_from_timestamp, optional_timestamp, timestamp};
use super::metric::{duration_from_pb, duration_to_pb};
use super::{Api, Reply};
use crate::core::engine::Engine;
use crate::core::engine::experiments::{ExperimentResults, ExposureItem};
use crate::core::experiment::definition::{Experiment, ExperimentStatus, MetricRole, ReadoutConfig, Variant};
use crate::core::experiment::holdout::Holdout;
use crate::core::experiment::plan::{self, PlanRequest};
use crate::core::experiment::readout::{
    self, Comparison, Decision, MetricReadout, SummariesRequest, VariantData, VariantReadout,
};
use crate::core::experiment::stats::{
    self, Correction, Covariate, Difference, GaussianPrior, Sided, StatsConfig, StatsMethod, Summary, SummaryKind,
};
use crate::core::metric::definition::Direction;
use crate::core::model::now_micros;
use crate::core::page::{PageRequest, paginate};
use crate::error::{Error, Result};
use crate::pb::{self, experiment_service_server::ExperimentService};

// ---------------------------------------------------------------------------------------------
// pb → domain
// ---------------------------------------------------------------------------------------------

fn summary_kind_from_pb(value: i32) -> Result<SummaryKind> {
    Ok(match pb::SummaryType::try_from(value).map_err(|_| enum_error("summary_type", value))? {
        pb::SummaryType::Unspecified | pb::SummaryType::Mean => SummaryKind::Mean,
        pb::SummaryType::Proportion => SummaryKind::Proportion,
        pb::SummaryType::Ratio => SummaryKind::Ratio,
    })
}

fn sided_from_pb(field: &str, value: i32) -> Result<Sided> {
    Ok(match pb::Sided::try_from(value).map_err(|_| enum_error(field, value))? {
        pb::Sided::Unspecified | pb::Sided::TwoSided => Sided::TwoSided,
        pb::Sided::Greater => Sided::Greater,
        pb::Sided::Less => Sided::Less,
    })
}

fn correction_from_pb(field: &str, value: i32) -> Result<Correction> {
    Ok(match pb::Correction::try_from(value).map_err(|_| enum_error(field, value))? {
        pb::Correction::Unspecified | pb::Correction::None => Correction::None,
        pb::Correction::Holm => Correction::Holm,
        pb::Correction::BenjaminiHochberg => Correction::BenjaminiHochberg,
    })
}

fn direction_from_pb(value: i32) -> Result<Direction> {
    Ok(match pb::Direction::try_from(value).map_err(|_| enum_error("direction", value))? {
        pb::Direction::Unspecified | pb::Direction::Increase => Direction::Increase,
        pb::Direction::Decrease => Direction::Decrease,
    })
}

/// A `StatsConfig` with the proto defaults resolved and validated; errors name `field.*`.
fn readout_config_from_pb(field: &str, config: Option<pb::StatsConfig>) -> Result<ReadoutConfig> {
    let c = config.unwrap_or_default();
    let sub = |name: &str| format!("{field}.{name}");
    let engine = match pb::Engine::try_from(c.engine).map_err(|_| enum_error(&sub("engine"), c.engine))? {
        pb::Engine::Unspecified | pb::Engine::Frequentist => StatsMethod::Frequentist,
        pb::Engine::Bayesian => StatsMethod::Bayesian,
    };
    let difference =
        match pb::Difference::try_from(c.difference).map_err(|_| enum_error(&sub("difference"), c.difference))? {
            pb::Difference::Unspecified | pb::Difference::Relative => Difference::Relative,
            pb::Difference::Absolute => Difference::Absolute,
        };
    let stats = StatsConfig {
        engine,
        alpha: if c.alpha == 0.0 { stats::DEFAULT_ALPHA } else { c.alpha },
        sided: sided_from_pb(&sub("sided"), c.sided)?,
        difference,
        sequential: c.sequential,
        sequential_tuning: if c.sequential_tuning == 0.0 {
            stats::DEFAULT_SEQUENTIAL_TUNING
        } else {
            c.sequential_tuning
        },
        prior: c.use_prior.then_some(GaussianPrior {
            mean: c.prior_mean,
            variance: if c.prior_variance == 0.0 { stats::DEFAULT_PRIOR_VARIANCE } else { c.prior_variance },
        }),
        direction: Direction::Increase,
        cuped: c.cuped,
        correction: correction_from_pb(&sub("correction"), c.correction)?,
        winsorize_percentile: (c.winsorize_percentile != 0.0).then_some(c.winsorize_percentile),
    };
    let config =
        ReadoutConfig { stats, cuped_pre_period: duration_from_pb(&sub("cuped_pre_period"), c.cuped_pre_period)? };
    config.validate(field)?;
    Ok(config)
}

fn optional_time(field: &str, t: Option<&prost_types::Timestamp>) -> Result<Option<i64>> {
    t.map(|t| micros_from_timestamp(field, t)).transpose()
}

fn experiment_from_pb(e: pb::Experiment) -> Result<Experiment> {
    Ok(Experiment {
        readout: readout_config_from_pb("experiment.stats", e.stats)?,
        attribution_window: duration_from_pb("experiment.attribution_window", e.attribution_window)?,
        start_time: optional_time("experiment.start_time", e.start_time.as_ref())?,
        end_time: optional_time("experiment.end_time", e.end_time.as_ref())?,
        key: e.key,
        name: e.name,
        hypothesis: e.hypothesis,
        seed: e.seed,
        variants: e
            .variants
            .into_iter()
            .map(|v| Variant { key: v.key, weight: v.weight, name: v.name, description: v.description })
            .collect(),
        coverage: e.coverage,
        control_variant: e.control_variant,
        primary_metric_keys: e.primary_metric_keys,
        secondary_metric_keys: e.secondary_metric_keys,
        guardrail_metric_keys: e.guardrail_metric_keys,
        minimum_detectable_effect: e.minimum_detectable_effect,
        status: ExperimentStatus::Draft,
        created: 0,
        updated: 0,
    })
}

fn status_from_pb(value: i32) -> Result<Option<ExperimentStatus>> {
    Ok(match pb::ExperimentStatus::try_from(value).map_err(|_| enum_error("statuses", value))? {
        pb::ExperimentStatus::Unspecified => None,
        pb::ExperimentStatus::Draft => Some(ExperimentStatus::Draft),
        pb::ExperimentStatus::Running => Some(ExperimentStatus::Running),
        pb::ExperimentStatus::Stopped => Some(ExperimentStatus::Stopped),
    })
}

fn summary_from_pb(v: &pb::VariantSummary) -> VariantData {
    VariantData {
        key: v.key.clone(),
        summary: Summary {
            users: v.users as f64,
            sum: v.sum,
            sum_squares: v.sum_squares,
            denominator_sum: v.denominator_sum,
            denominator_sum_squares: v.denominator_sum_squares,
            cross_sum: v.cross_sum,
        },
        covariate: Covariate { sum: v.pre_sum, sum_squares: v.pre_sum_squares, cross_sum: v.pre_cross_sum },
        weight: v.weight,
    }
}

fn exposure_from_pb(index: usize, e: pb::Exposure) -> Result<ExposureItem> {
    let timestamp = e
        .timestamp
        .as_ref()
        .map(|t| micros_from_timestamp("timestamp", t))
        .transpose()
        .map_err(|err| err.under(&format!("exposures[{index}]")))?;
    Ok(ExposureItem {
        event_id: e.event_id,
        user_id: e.user_id,
        anonymous_id: e.anonymous_id,
        experiment_key: e.experiment_key,
        variant: e.variant,
        timestamp,
    })
}

// ---------------------------------------------------------------------------------------------
// domain → pb
// ---------------------------------------------------------------------------------------------

fn stats_config_to_pb(config: &ReadoutConfig) -> pb::StatsConfig {
    let s = &config.stats;
    pb::StatsConfig {
        engine: match s.engine {
            StatsMethod::Frequentist => pb::Engine::Frequentist,
            StatsMethod::Bayesian => pb::Engine::Bayesian,
        } as i32,
        alpha: s.alpha,
        sided: match s.sided {
            Sided::TwoSided => pb::Sided::TwoSided,
            Sided::Greater => pb::Sided::Greater,
            Sided::Less => pb::Sided::Less,
        } as i32,
        difference: match s.difference {
            Difference::Relative => pb::Difference::Relative,
            Difference::Absolute => pb::Difference::Absolute,
        } as i32,
        sequential: s.sequential,
        sequential_tuning: s.sequential_tuning,
        cuped: s.cuped,
        correction: match s.correction {
            Correction::None => pb::Correction::None,
            Correction::Holm => pb::Correction::Holm,
            Correction::BenjaminiHochberg => pb::Correction::BenjaminiHochberg,
        } as i32,
        winsorize_percentile: s.winsorize_percentile.unwrap_or(0.0),
        prior_mean: s.prior.map_or(0.0, |p| p.mean),
        prior_variance: s.prior.map_or(0.0, |p| p.variance),
        use_prior: s.prior.is_some(),
        cuped_pre_period: duration_to_pb(Some(config.cuped_pre_period())),
    }
}

fn status_to_pb(status: ExperimentStatus) -> pb::ExperimentStatus {
    match status {
        ExperimentStatus::Draft => pb::ExperimentStatus::Draft,
        ExperimentStatus::Running => pb::ExperimentStatus::Running,
        ExperimentStatus::Stopped => pb::ExperimentStatus::Stopped,
    }
}

fn experiment_to_pb(e: Experiment) -> pb::Experiment {
    pb::Experiment {
        stats: Some(stats_config_to_pb(&e.readout)),
        attribution_window: duration_to_pb(e.attribution_window),
        start_time: optional_timestamp(e.start_time),
        end_time: optional_timestamp(e.end_time),
        status: status_to_pb(e.status) as i32,
        created_time: Some(timestamp(e.created)),
        updated_time: Some(timestamp(e.updated)),
        key: e.key,
        name: e.name,
        hypothesis: e.hypothesis,
        seed: e.seed,
        variants: e
            .variants
            .into_iter()
            .map(|v| pb::Variant { key: v.key, weight: v.weight, name: v.name, description: v.description })
            .collect(),
        coverage: e.coverage,
        control_variant: e.control_variant,
        primary_metric_keys: e.primary_metric_keys,
        secondary_metric_keys: e.secondary_metric_keys,
        guardrail_metric_keys: e.guardrail_metric_keys,
        minimum_detectable_effect: e.minimum_detectable_effect,
    }
}

fn comparison_to_pb(variant: &str, c: &Comparison) -> pb::Comparison {
    let r = &c.result;
    let relative = r.relative.unwrap_or_default();
    pb::Comparison {
        variant: variant.to_string(),
        effect: r.effect,
        ci_lower: r.ci_lower,
        ci_upper: r.ci_upper,
        p_value: r.p_value,
        adjusted_p_value: r.adjusted_p_value,
        chance_to_win: r.chance_to_win,
        risk_control: r.risk_control,
        risk_treatment: r.risk_treatment,
        significant: r.significant,
        absolute_effect: r.absolute.effect,
        absolute_ci_lower: r.absolute.ci_lower,
        absolute_ci_upper: r.absolute.ci_upper,
        relative_effect: relative.effect,
        relative_ci_lower: relative.ci_lower,
        relative_ci_upper: relative.ci_upper,
        standard_error: r.standard_error,
        power: c.power,
        mde: c.mde,
        regressed: r.regressed,
        variance_reduction: c.variance_reduction,
    }
}

fn variant_summary_to_pb(d: &VariantData) -> pb::VariantSummary {
    let s = &d.summary;
    pb::VariantSummary {
        key: d.key.clone(),
        users: s.users as u64,
        sum: s.sum,
        sum_squares: s.sum_squares,
        denominator_sum: s.denominator_sum,
        denominator_sum_squares: s.denominator_sum_squares,
        cross_sum: s.cross_sum,
        pre_sum: d.covariate.sum,
        pre_sum_squares: d.covariate.sum_squares,
        pre_cross_sum: d.covariate.cross_sum,
        weight: d.weight,
    }
}

/// A variant's mean; without an interval (fewer than 2 users) the interval is the mean.
fn variant_result_to_pb(v: &VariantReadout) -> pb::VariantResult {
    let (ci_lower, ci_upper) = v.ci.unwrap_or((v.mean, v.mean));
    pb::VariantResult {
        variant: v.data.key.clone(),
        users: v.data.summary.users as u64,
        mean: v.mean,
        ci_lower,
        ci_upper,
        summary: Some(variant_summary_to_pb(&v.data)),
    }
}

fn comparisons_to_pb(m: &MetricReadout) -> Vec<pb::Comparison> {
    m.comparisons
        .iter()
        .filter_map(|c| {
            c.outcome.as_ref().ok().map(|outcome| comparison_to_pb(&m.variants[c.variant].data.key, outcome))
        })
        .collect()
}

fn summary_kind_to_pb(kind: SummaryKind) -> pb::SummaryType {
    match kind {
        SummaryKind::Mean => pb::SummaryType::Mean,
        SummaryKind::Proportion => pb::SummaryType::Proportion,
        SummaryKind::Ratio => pb::SummaryType::Ratio,
    }
}

fn results_to_pb(r: ExperimentResults) -> pb::GetExperimentResultsResponse {
    let metrics = r
        .metrics
        .iter()
        .map(|m| pb::MetricResult {
            metric_key: m.key.clone(),
            role: match m.role {
                MetricRole::Primary => pb::ExperimentMetricRole::Primary,
                MetricRole::Secondary => pb::ExperimentMetricRole::Secondary,
                MetricRole::Guardrail => pb::ExperimentMetricRole::Guardrail,
            } as i32,
            variants: m.readout.variants.iter().map(variant_result_to_pb).collect(),
            comparisons: comparisons_to_pb(&m.readout),
            summary_type: summary_kind_to_pb(m.readout.kind) as i32,
            metric_version: m.version,
            direction: match m.direction {
                Direction::Increase => pb::Direction::Increase,
                Direction::Decrease => pb::Direction::Decrease,
            } as i32,
        })
        .collect();
    pb::GetExperimentResultsResponse {
        metrics,
        srm_p_value: r.srm_p_value,
        excluded_users: r.excluded_users,
        decision: match r.decision {
            Decision::Ship => pb::Decision::Ship,
            Decision::Rollback => pb::Decision::Rollback,
            Decision::KeepRunning => pb::Decision::KeepRunning,
            Decision::Inconclusive => pb::Decision::Inconclusive,
        } as i32,
        reasons: r.reasons,
        srm_detected: r.srm_detected,
        variant_users: r.variant_users,
        analysis_range: Some(pb::TimeRange {
            from: Some(timestamp(r.analysis_range.0)),
            to: Some(timestamp(r.analysis_range.1)),
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Stateless calls
// ---------------------------------------------------------------------------------------------

fn analyze_summaries(request: pb::AnalyzeSummariesRequest) -> Result<pb::AnalyzeSummariesResponse> {
    let kind = summary_kind_from_pb(request.summary_type)?;
    let mut config = readout_config_from_pb("config", request.config)?.stats;
    config.direction = direction_from_pb(request.direction)?;
    let readout = readout::analyze_summaries(SummariesRequest {
        kind,
        control_variant: request.control_variant,
        variants: request.variants.iter().map(summary_from_pb).collect(),
        config,
        minimum_detectable_effect: request.minimum_detectable_effect,
    })?;
    Ok(pb::AnalyzeSummariesResponse {
        comparisons: comparisons_to_pb(&readout.metric),
        srm_p_value: readout.srm_p_value,
        variants: readout.metric.variants.iter().map(variant_result_to_pb).collect(),
    })
}

fn adjust_p_values(request: pb::AdjustPValuesRequest) -> Result<pb::AdjustPValuesResponse> {
    if request.p_values.is_empty() {
        return Err(Error::invalid("p_values", "at least one p-value is required"));
    }
    stats::check_p_values(&request.p_values)?;
    let correction = correction_from_pb("correction", request.correction)?;
    Ok(pb::AdjustPValuesResponse { adjusted_p_values: stats::adjust_p_values(&request.p_values, correction) })
}

/// Renames the planning functions' parameter names to the request's fields.
fn plan_from_pb(r: pb::PlanExperimentRequest) -> Result<PlanRequest> {
    Ok(PlanRequest {
        baseline_mean: r.baseline_mean,
        baseline_variance: r.baseline_variance,
        baseline_proportion: r.baseline_proportion,
        mde: r.mde,
        relative: r.relative,
        alpha: r.alpha,
        power: r.power,
        variants: r.variants,
        sided: sided_from_pb("sided", r.sided)?,
        users_per_variant: r.users_per_variant,
        daily_users: r.daily_users,
    })
}

fn holdout_from_pb(h: pb::Holdout) -> Result<Holdout> {
    Ok(Holdout {
        start_time: optional_time("holdout.start_time", h.start_time.as_ref())?,
        end_time: optional_time("holdout.end_time", h.end_time.as_ref())?,
        key: h.key,
        name: h.name,
        percent: h.percent,
        seed: h.seed,
        metric_keys: h.metric_keys,
        created: 0,
        updated: 0,
    })
}

fn holdout_to_pb(h: Holdout) -> pb::Holdout {
    let now = now_micros();
    pb::Holdout {
        running: h.running(now),
        key: h.key,
        name: h.name,
        percent: h.percent,
        seed: h.seed,
        metric_keys: h.metric_keys,
        start_time: optional_timestamp(h.start_time),
        end_time: optional_timestamp(h.end_time),
        created_time: Some(timestamp(h.created)),
        updated_time: Some(timestamp(h.updated)),
    }
}

fn required<T>(field: &str, value: Option<T>) -> Result<T> {
    value.ok_or_else(|| Error::invalid(field, "required"))
}

impl Api {
    /// Get, Start and StopExperiment, GetHoldout and StopHoldout: one engine call on (project,
    /// key), its answer converted by `to_pb`.
    async fn keyed<T: Send + 'static, P>(
        &self,
        (project, key): (String, String),
        call: fn(&Engine, &str, &str) -> Result<T>,
        to_pb: fn(T) -> P,
    ) -> Result<Option<P>, Status> {
        Ok(Some(to_pb(self.blocking(move |engine| call(engine, &project, &key)).await?)))
    }

    /// CreateExperiment and UpdateExperiment: convert the definition, store it through `save`.
    async fn save_experiment(
        &self,
        project: String,
        experiment: Option<pb::Experiment>,
        save: fn(&Engine, &str, Experiment) -> Result<Experiment>,
    ) -> Result<pb::Experiment, Status> {
        let experiment = experiment_from_pb(required("experiment", experiment)?)?;
        Ok(experiment_to_pb(self.blocking(move |engine| save(engine, &project, experiment)).await?))
    }
}

#[tonic::async_trait]
impl ExperimentService for Api {
    async fn create_experiment(
        &self,
        request: Request<pb::CreateExperimentRequest>,
    ) -> Reply<pb::CreateExperimentResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        let experiment = self.save_experiment(request.project, request.experiment, Engine::create_experiment).await?;
        Ok(Response::new(pb::CreateExperimentResponse { experiment: Some(experiment) }))
    }

    async fn update_experiment(
        &self,
        request: Request<pb::UpdateExperimentRequest>,
    ) -> Reply<pb::UpdateExperimentResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        let experiment = self.save_experiment(request.project, request.experiment, Engine::update_experiment).await?;
        Ok(Response::new(pb::UpdateExperimentResponse { experiment: Some(experiment) }))
    }

    async fn get_experiment(&self, request: Request<pb::GetExperimentRequest>) -> Reply<pb::GetExperimentResponse> {
        let r = self.scoped(request, |r| &r.project)?;
        let experiment = self.keyed((r.project, r.experiment_key), Engine::get_experiment, experiment_to_pb).await?;
        Ok(Response::new(pb::GetExperimentResponse { experiment }))
    }

    async fn list_experiments(
        &self,
        request: Request<pb::ListExperimentsRequest>,
    ) -> Reply<pb::ListExperimentsResponse> {
        let r = self.scoped(request, |r| &r.project)?;
        let page = PageRequest { size: r.page_size, token: r.page_token };
        let statuses = r.statuses.iter().map(|&s| status_from_pb(s)).collect::<Result<Vec<_>>>()?;
        let project = r.project;
        let (experiments, next_page_token) = self
            .blocking(move |engine| paginate(engine.list_experiments(&project, &statuses)?, |e| e.key.clone(), &page))
            .await?;
        Ok(Response::new(pb::ListExperimentsResponse {
            experiments: experiments.into_iter().map(experiment_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn start_experiment(
        &self,
        request: Request<pb::StartExperimentRequest>,
    ) -> Reply<pb::StartExperimentResponse> {
        let r = self.scoped(request, |r| &r.project)?;
        let experiment = self.keyed((r.project, r.experiment_key), Engine::start_experiment, experiment_to_pb).await?;
        Ok(Response::new(pb::StartExperimentResponse { experiment }))
    }

    async fn stop_experiment(&self, request: Request<pb::StopExperimentRequest>) -> Reply<pb::StopExperimentResponse> {
        let r = self.scoped(request, |r| &r.project)?;
        let experiment = self.keyed((r.project, r.experiment_key), Engine::stop_experiment, experiment_to_pb).await?;
        Ok(Response::new(pb::StopExperimentResponse { experiment }))
    }

    async fn assign(&self, request: Request<pb::AssignRequest>) -> Reply<pb::AssignResponse> {
        let r = self.scoped(request, |r| &r.project)?;
        let assignment = self
            .engine
            .assign_and_log(&r.project, &r.experiment_key, &r.user_id, &r.anonymous_id, r.log_exposure)
            .await?;
        let in_experiment = assignment.in_experiment();
        Ok(Response::new(pb::AssignResponse {
            variant: assignment.variant,
            bucket: assignment.bucket,
            in_experiment,
            holdout_key: assignment.holdout_key,
        }))
    }

    async fn log_exposures(&self, request: Request<pb::LogExposuresRequest>) -> Reply<pb::LogExposuresResponse> {
        let r = self.scoped(request, |r| &r.project)?;
        let items = r.exposures.into_iter().enumerate().map(|(i, e)| exposure_from_pb(i, e)).collect();
        let outcome = self.engine.log_exposures(&r.project, items).await?;
        Ok(Response::new(pb::LogExposuresResponse {
            accepted: outcome.accepted,
            duplicates: outcome.duplicates,
            rejected: outcome.rejected.into_iter().map(super::convert::item_error).collect(),
        }))
    }

    async fn get_experiment_results(
        &self,
        request: Request<pb::GetExperimentResultsRequest>,
    ) -> Reply<pb::GetExperimentResultsResponse> {
        let r = self.scoped(request, |r| &r.project)?;
        let config = r.stats.map(|s| readout_config_from_pb("stats", Some(s))).transpose()?;
        let results = self
            .query(move |engine| {
                engine.experiment_results(&r.project, &r.experiment_key, &r.cohort_id, config, engine.clock.now())
            })
            .await?;
        Ok(Response::new(results_to_pb(results)))
    }

    async fn analyze_summaries(
        &self,
        request: Request<pb::AnalyzeSummariesRequest>,
    ) -> Reply<pb::AnalyzeSummariesResponse> {
        self.authorize(&request, &request.get_ref().project)?;
        Ok(Response::new(analyze_summaries(request.into_inner())?))
    }

    async fn adjust_p_values(&self, request: Request<pb::AdjustPValuesRequest>) -> Reply<pb::AdjustPValuesResponse> {
        self.authorize(&request, &request.get_ref().project)?;
        Ok(Response::new(adjust_p_values(request.into_inner())?))
    }

    async fn plan_experiment(&self, request: Request<pb::PlanExperimentRequest>) -> Reply<pb::PlanExperimentResponse> {
        self.authorize(&request, &request.get_ref().project)?;
        let plan = plan::plan(&plan_from_pb(request.into_inner())?)?;
        Ok(Response::new(pb::PlanExperimentResponse {
            users_per_variant: plan.users_per_variant,
            total_users: plan.total_users,
            mde: plan.mde,
            days: plan.days,
        }))
    }

    async fn create_holdout(&self, request: Request<pb::CreateHoldoutRequest>) -> Reply<pb::CreateHoldoutResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        let holdout = holdout_from_pb(required("holdout", request.holdout)?)?;
        let holdout = self.blocking(move |engine| engine.create_holdout(&request.project, holdout)).await?;
        Ok(Response::new(pb::CreateHoldoutResponse { holdout: Some(holdout_to_pb(holdout)) }))
    }

    async fn get_holdout(&self, request: Request<pb::GetHoldoutRequest>) -> Reply<pb::GetHoldoutResponse> {
        let r = self.scoped(request, |r| &r.project)?;
        let holdout = self.keyed((r.project, r.holdout_key), Engine::get_holdout, holdout_to_pb).await?;
        Ok(Response::new(pb::GetHoldoutResponse { holdout }))
    }

    async fn list_holdouts(&self, request: Request<pb::ListHoldoutsRequest>) -> Reply<pb::ListHoldoutsResponse> {
        let r = self.scoped(request, |r| &r.project)?;
        let page = PageRequest { size: r.page_size, token: r.page_token };
        let project = r.project;
        let (holdouts, next_page_token) =
            self.blocking(move |engine| paginate(engine.list_holdouts(&project)?, |h| h.key.clone(), &page)).await?;
        Ok(Response::new(pb::ListHoldoutsResponse {
            holdouts: holdouts.into_iter().map(holdout_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn stop_holdout(&self, request: Request<pb::StopHoldoutRequest>) -> Reply<pb::StopHoldoutResponse> {
        let r = self.scoped(request, |r| &r.project)?;
        let holdout = self.keyed((r.project, r.holdout_key), Engine::stop_holdout, holdout_to_pb).await?;
        Ok(Response::new(pb::StopHoldoutResponse { holdout }))
    }

    async fn get_holdout_results(
        &self,
        request: Request<pb::GetHoldoutResultsRequest>,
    ) -> Reply<pb::GetExperimentResultsResponse> {
        let r = self.scoped(request, |r| &r.project)?;
        let config = readout_config_from_pb("stats", r.stats)?;
        let results = self
            .blocking(move |engine| engine.holdout_results(&r.project, &r.holdout_key, config, engine.clock.now()))
            .await?;
        Ok(Response::new(results_to_pb(results)))
    }
}
