//! ExperimentService: the stateless calls (AnalyzeSummaries, AdjustPValues, PlanExperiment).
//! The stateful calls answer UNIMPLEMENTED through the generated defaults.

use tonic::{Request, Response, Status};

use super::Api;
use super::convert::enum_error;
use crate::core::experiment::stats::{
    self, Correction, Covariate, Difference, Engine, GaussianPrior, Moments, Sided, StatsConfig, StatsError, Summary,
    SummaryKind,
};
use crate::core::metric::Direction;
use crate::error::{Error, Result};
use crate::pb::{self, experiment_service_server::ExperimentService};

/// Power at which `Comparison.mde` is computed.
const MDE_POWER: f64 = 0.8;
/// Default planning power.
const DEFAULT_POWER: f64 = 0.8;
/// Default minimum detectable effect: 10% (relative, or of the control mean when absolute).
const DEFAULT_MDE_SHARE: f64 = 0.1;

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

/// The request's `config` with the proto defaults resolved; errors name `config.*`.
fn stats_config_from_pb(config: Option<pb::StatsConfig>, direction: Direction) -> Result<StatsConfig> {
    let c = config.unwrap_or_default();
    let engine = match pb::Engine::try_from(c.engine).map_err(|_| enum_error("config.engine", c.engine))? {
        pb::Engine::Unspecified | pb::Engine::Frequentist => Engine::Frequentist,
        pb::Engine::Bayesian => Engine::Bayesian,
    };
    let difference =
        match pb::Difference::try_from(c.difference).map_err(|_| enum_error("config.difference", c.difference))? {
            pb::Difference::Unspecified | pb::Difference::Relative => Difference::Relative,
            pb::Difference::Absolute => Difference::Absolute,
        };
    let config = StatsConfig {
        engine,
        alpha: if c.alpha == 0.0 { stats::DEFAULT_ALPHA } else { c.alpha },
        sided: sided_from_pb("config.sided", c.sided)?,
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
        direction,
        cuped: c.cuped,
        correction: correction_from_pb("config.correction", c.correction)?,
        winsorize_percentile: (c.winsorize_percentile != 0.0).then_some(c.winsorize_percentile),
    };
    config.validate().map_err(|e| Error::from(e).under("config"))?;
    Ok(config)
}

fn summary_from_pb(v: &pb::VariantSummary) -> Summary {
    Summary {
        users: v.users as f64,
        sum: v.sum,
        sum_squares: v.sum_squares,
        denominator_sum: v.denominator_sum,
        denominator_sum_squares: v.denominator_sum_squares,
        cross_sum: v.cross_sum,
    }
}

/// A comparison's error with `control.*` / `treatment.*` renamed to the request's
/// `variants[i].*` (and the data-wide errors placed on `variants`).
fn comparison_error(err: StatsError, control: usize, treatment: usize) -> Error {
    let field = match err.field() {
        Some(f) if f.starts_with("control") => f.replacen("control", &format!("variants[{control}]"), 1),
        Some(f) if f.starts_with("treatment") => f.replacen("treatment", &format!("variants[{treatment}]"), 1),
        Some(f) if !f.is_empty() => f.to_string(),
        _ => "variants".to_string(),
    };
    Error::invalid(field, err.to_string())
}

// ---------------------------------------------------------------------------------------------
// domain → pb
// ---------------------------------------------------------------------------------------------

/// One comparison, with power and MDE at the comparison's standard error.
fn comparison_to_pb(
    variant: &str,
    c: &stats::ComparisonResult,
    config: &StatsConfig,
    mde: f64,
    variance_reduction: f64,
) -> pb::Comparison {
    // Comparison.power / mde are diagnostics: a degenerate input gives 0 rather than an error.
    let power = stats::power_from_standard_error(mde, c.standard_error, config.alpha, config.sided).unwrap_or(0.0);
    let mde = stats::mde_from_standard_error(c.standard_error, config.alpha, MDE_POWER, config.sided).unwrap_or(0.0);
    let relative = c.relative.unwrap_or_default();
    pb::Comparison {
        variant: variant.to_string(),
        effect: c.effect,
        ci_lower: c.ci_lower,
        ci_upper: c.ci_upper,
        p_value: c.p_value,
        adjusted_p_value: c.adjusted_p_value,
        chance_to_win: c.chance_to_win,
        risk_control: c.risk_control,
        risk_treatment: c.risk_treatment,
        significant: c.significant,
        absolute_effect: c.absolute.effect,
        absolute_ci_lower: c.absolute.ci_lower,
        absolute_ci_upper: c.absolute.ci_upper,
        relative_effect: relative.effect,
        relative_ci_lower: relative.ci_lower,
        relative_ci_upper: relative.ci_upper,
        standard_error: c.standard_error,
        power,
        mde,
        regressed: c.regressed,
        variance_reduction,
    }
}

fn variant_result_to_pb(summary: &pb::VariantSummary, m: &Moments, alpha: f64) -> Result<pb::VariantResult> {
    let (ci_lower, ci_upper) = m.confidence_interval(alpha)?;
    Ok(pb::VariantResult {
        variant: summary.key.clone(),
        users: summary.users,
        mean: m.mean,
        ci_lower,
        ci_upper,
        summary: Some(summary.clone()),
    })
}

// ---------------------------------------------------------------------------------------------
// Calls
// ---------------------------------------------------------------------------------------------

fn analyze_summaries(request: pb::AnalyzeSummariesRequest) -> Result<pb::AnalyzeSummariesResponse> {
    let variants = &request.variants;
    if variants.len() < 2 {
        return Err(Error::invalid("variants", format!("at least 2 variants are required, got {}", variants.len())));
    }
    for (i, v) in variants.iter().enumerate() {
        if !v.key.is_empty() && variants[..i].iter().any(|w| w.key == v.key) {
            return Err(Error::invalid(format!("variants[{i}].key"), format!("duplicate variant key {:?}", v.key)));
        }
    }
    let control = if request.control_variant.is_empty() {
        0
    } else {
        variants.iter().position(|v| v.key == request.control_variant).ok_or_else(|| {
            Error::invalid("control_variant", format!("{:?} names none of the variants", request.control_variant))
        })?
    };
    let kind = summary_kind_from_pb(request.summary_type)?;
    let direction = direction_from_pb(request.direction)?;
    let config = stats_config_from_pb(request.config, direction)?;
    let mde_request = request.minimum_detectable_effect;
    if !mde_request.is_finite() {
        return Err(Error::invalid("minimum_detectable_effect", "must be a finite number"));
    }

    let summaries: Vec<Summary> = variants.iter().map(summary_from_pb).collect();
    let plain = summaries
        .iter()
        .enumerate()
        .map(|(i, s)| s.moments(kind, &format!("variants[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let (moments, variance_reduction) = if config.cuped && kind != SummaryKind::Ratio {
        let covariates: Vec<Covariate> = variants
            .iter()
            .map(|v| Covariate { sum: v.pre_sum, sum_squares: v.pre_sum_squares, cross_sum: v.pre_cross_sum })
            .collect();
        let adjusted = stats::cuped_adjust(&summaries, &covariates, kind)?;
        (adjusted.moments, adjusted.variance_reduction)
    } else {
        (plain.clone(), 0.0)
    };

    let mut comparisons = Vec::with_capacity(variants.len() - 1);
    for (i, m) in moments.iter().enumerate().filter(|&(i, _)| i != control) {
        let result =
            stats::compare_moments(&moments[control], m, &config).map_err(|e| comparison_error(e, control, i))?;
        comparisons.push((i, result));
    }
    let p_values: Vec<f64> = comparisons.iter().map(|(_, c)| c.p_value).collect();
    let adjusted = stats::adjust_p_values(&p_values, config.correction);

    // 0 = 0.1 relative, or 10% of the control mean for an absolute difference.
    let mde = if mde_request != 0.0 {
        mde_request.abs()
    } else if config.difference == Difference::Relative {
        DEFAULT_MDE_SHARE
    } else {
        DEFAULT_MDE_SHARE * plain[control].mean.abs()
    };
    let comparisons = comparisons
        .iter_mut()
        .zip(adjusted)
        .map(|((i, c), adjusted_p)| {
            c.apply_adjusted_p_value(adjusted_p, &config);
            comparison_to_pb(&variants[*i].key, c, &config, mde, variance_reduction)
        })
        .collect();

    let observed: Vec<u64> = variants.iter().map(|v| v.users).collect();
    let weights: Vec<f64> = if variants.iter().all(|v| v.weight == 0.0) {
        vec![1.0 / variants.len() as f64; variants.len()]
    } else {
        variants.iter().map(|v| v.weight).collect()
    };
    let srm_p_value = stats::srm_p_value(&observed, &weights).map_err(|e| {
        let field = match e.field() {
            Some(f) if f.starts_with("weights[") => format!("variants[{}].weight", &f["weights[".len()..f.len() - 1]),
            _ => "variants".to_string(),
        };
        Error::invalid(field, e.to_string())
    })?;

    let variants = variants
        .iter()
        .zip(&plain)
        .enumerate()
        .map(|(i, (v, m))| variant_result_to_pb(v, m, config.alpha).map_err(|e| e.under(&format!("variants[{i}]"))))
        .collect::<Result<Vec<_>>>()?;
    Ok(pb::AnalyzeSummariesResponse { comparisons, srm_p_value, variants })
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
fn plan_error(err: StatsError) -> Error {
    let field = match err.field() {
        Some("variance") => "baseline_variance",
        Some("mean") => "baseline_mean",
        Some("standard_error") => "users_per_variant",
        Some(f) => f,
        None => "",
    };
    Error::invalid(field, err.to_string())
}

/// `n` rounded up, ignoring floating-point noise just above an integer.
fn round_up(n: f64) -> f64 {
    if (n - n.round()).abs() <= 1e-9 * n.abs().max(1.0) { n.round() } else { n.ceil() }
}

fn plan_experiment(r: pb::PlanExperimentRequest) -> Result<pb::PlanExperimentResponse> {
    let alpha = if r.alpha == 0.0 { stats::DEFAULT_ALPHA } else { r.alpha };
    let power = if r.power == 0.0 { DEFAULT_POWER } else { r.power };
    let variants = if r.variants == 0 { 2 } else { r.variants };
    if variants < 2 {
        return Err(Error::invalid("variants", "at least 2 variants (including control) are required"));
    }
    if !r.alpha.is_finite() || !(0.0..1.0).contains(&r.alpha) {
        return Err(Error::invalid("alpha", format!("must be in (0, 1), got {}", r.alpha)));
    }
    if !r.power.is_finite() || !(0.0..1.0).contains(&r.power) {
        return Err(Error::invalid("power", format!("must be in (0, 1), got {}", r.power)));
    }
    if !r.mde.is_finite() || r.mde < 0.0 {
        return Err(Error::invalid("mde", format!("must be positive, got {}", r.mde)));
    }
    if r.mde == 0.0 && r.users_per_variant == 0 {
        return Err(Error::invalid("mde", "an effect above 0 (or users_per_variant) is required"));
    }
    if !r.daily_users.is_finite() || r.daily_users < 0.0 {
        return Err(Error::invalid("daily_users", format!("must be non-negative, got {}", r.daily_users)));
    }
    let sided = sided_from_pb("sided", r.sided)?;
    let test_alpha = stats::bonferroni_alpha(alpha, variants);
    let proportion = r.baseline_proportion != 0.0;

    let (users_per_variant, mde) = if r.mde > 0.0 {
        let n = if proportion {
            stats::sample_size_per_variant_proportion(
                r.baseline_proportion,
                r.mde,
                r.relative,
                test_alpha,
                power,
                sided,
            )
        } else {
            stats::sample_size_per_variant(
                r.baseline_mean,
                r.baseline_variance,
                r.mde,
                r.relative,
                test_alpha,
                power,
                sided,
            )
        }
        .map_err(plan_error)?;
        let n = round_up(n);
        if n >= u64::MAX as f64 {
            return Err(Error::invalid("mde", "the effect is too small: the sample size overflows"));
        }
        (n as u64, r.mde)
    } else {
        let n = r.users_per_variant as f64;
        let mde = if proportion {
            stats::minimum_detectable_effect_proportion(n, r.baseline_proportion, r.relative, test_alpha, power, sided)
        } else {
            stats::minimum_detectable_effect(
                n,
                r.baseline_variance,
                r.baseline_mean,
                r.relative,
                test_alpha,
                power,
                sided,
            )
        }
        .map_err(plan_error)?;
        (r.users_per_variant, mde)
    };
    let total_users = users_per_variant.saturating_mul(u64::from(variants));
    let days =
        if r.daily_users > 0.0 { (total_users as f64 / r.daily_users).ceil().min(u32::MAX as f64) as u32 } else { 0 };
    Ok(pb::PlanExperimentResponse { users_per_variant, total_users, mde, days })
}

#[tonic::async_trait]
impl ExperimentService for Api {
    async fn analyze_summaries(
        &self,
        request: Request<pb::AnalyzeSummariesRequest>,
    ) -> Result<Response<pb::AnalyzeSummariesResponse>, Status> {
        self.authorize(&request, &request.get_ref().project)?;
        Ok(Response::new(analyze_summaries(request.into_inner())?))
    }

    async fn adjust_p_values(
        &self,
        request: Request<pb::AdjustPValuesRequest>,
    ) -> Result<Response<pb::AdjustPValuesResponse>, Status> {
        self.authorize(&request, &request.get_ref().project)?;
        Ok(Response::new(adjust_p_values(request.into_inner())?))
    }

    async fn plan_experiment(
        &self,
        request: Request<pb::PlanExperimentRequest>,
    ) -> Result<Response<pb::PlanExperimentResponse>, Status> {
        self.authorize(&request, &request.get_ref().project)?;
        Ok(Response::new(plan_experiment(request.into_inner())?))
    }
}
