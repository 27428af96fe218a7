//! Readouts: from per-variant sufficient statistics to variant means, comparisons with power
//! and MDE, the multiple-testing correction across a family of comparisons, the sample-ratio
//! check and the decision. Shared by AnalyzeSummaries (statistics sent by the client) and
//! GetExperimentResults (statistics measured from stored events).

use super::definition::MetricRole;
use super::stats::{
    self, ComparisonResult, Correction, Covariate, Difference, Moments, StatsConfig, StatsError, Summary, SummaryKind,
};
use crate::error::{Error, Result, echo};

/// Power at which `mde` is computed, and below which a comparison is underpowered.
pub const TARGET_POWER: f64 = 0.8;
/// Default minimum detectable effect: 10% (relative, or of the control mean when absolute).
pub const DEFAULT_MDE_SHARE: f64 = 0.1;
/// SRM is flagged below this p-value (SPEC §8).
pub const SRM_THRESHOLD: f64 = 0.001;

/// One variant's statistics as measured or sent.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VariantData {
    pub key: String,
    pub summary: Summary,
    /// CUPED covariate (zeros when not measured).
    pub covariate: Covariate,
    /// Expected traffic share, for the SRM check.
    pub weight: f64,
}

/// A variant's mean with its interval.
#[derive(Debug, Clone, PartialEq)]
pub struct VariantReadout {
    pub data: VariantData,
    /// Proportion, per-user mean or ratio Σx/Σy (0 when undefined).
    pub mean: f64,
    /// Normal-approximation interval at 1 − α; `None` with fewer than 2 users.
    pub ci: Option<(f64, f64)>,
    /// Why the moments are undefined (fewer than 2 users, a zero denominator, …).
    pub problem: Option<StatsError>,
}

/// Treatment versus control, with power and MDE at the comparison's standard error.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub result: ComparisonResult,
    /// Power to detect the minimum detectable effect (0 when undefined).
    pub power: f64,
    /// Smallest effect detectable with power 0.8, in the configured difference's units.
    pub mde: f64,
    pub variance_reduction: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ComparisonReadout {
    /// Index of the treatment variant.
    pub variant: usize,
    /// Errors name `control.*`/`treatment.*` or `variants[i].*`.
    pub outcome: std::result::Result<Comparison, StatsError>,
}

/// The readout of one metric.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricReadout {
    pub kind: SummaryKind,
    pub control: usize,
    pub config: StatsConfig,
    /// The effect power is computed for, in the configured difference's units.
    pub mde_target: f64,
    /// In input order.
    pub variants: Vec<VariantReadout>,
    /// One per treatment, in input order.
    pub comparisons: Vec<ComparisonReadout>,
    /// CUPED variance reduction (0 without CUPED).
    pub variance_reduction: f64,
}

fn fallback_mean(kind: SummaryKind, s: &Summary) -> f64 {
    match kind {
        SummaryKind::Ratio if s.denominator_sum != 0.0 => s.sum / s.denominator_sum,
        SummaryKind::Mean | SummaryKind::Proportion if s.users > 0.0 => s.sum / s.users,
        _ => 0.0,
    }
}

/// Compares every variant with `control`. Never fails: a variant or comparison that cannot be
/// computed carries its error, so a caller can report it (GetExperimentResults) or refuse the
/// request (AnalyzeSummaries). `mde_setting` 0 means [`DEFAULT_MDE_SHARE`].
pub fn analyze_metric(
    kind: SummaryKind,
    variants: Vec<VariantData>,
    control: usize,
    config: &StatsConfig,
    mde_setting: f64,
) -> MetricReadout {
    let plain: Vec<std::result::Result<Moments, StatsError>> =
        variants.iter().enumerate().map(|(i, v)| v.summary.moments(kind, &format!("variants[{i}]"))).collect();

    // CUPED over the variants whose moments exist; RATIO metrics are not adjusted.
    let mut moments: Vec<Option<Moments>> = plain.iter().map(|m| m.as_ref().ok().copied()).collect();
    let mut variance_reduction = 0.0;
    let mut cuped_error = None;
    let usable: Vec<usize> = (0..variants.len()).filter(|&i| plain[i].is_ok()).collect();
    if config.cuped && kind != SummaryKind::Ratio && usable.len() >= 2 {
        let summaries: Vec<Summary> = usable.iter().map(|&i| variants[i].summary).collect();
        let covariates: Vec<Covariate> = usable.iter().map(|&i| variants[i].covariate).collect();
        match stats::cuped_adjust(&summaries, &covariates, kind) {
            Ok(adjusted) => {
                variance_reduction = adjusted.variance_reduction;
                for (&i, m) in usable.iter().zip(adjusted.moments) {
                    moments[i] = Some(m);
                }
            }
            Err(e) => cuped_error = Some(e),
        }
    }

    let control_mean = plain[control].as_ref().map(|m| m.mean).unwrap_or(0.0);
    let mde_target = if mde_setting != 0.0 {
        mde_setting.abs()
    } else if config.difference == Difference::Relative {
        DEFAULT_MDE_SHARE
    } else {
        DEFAULT_MDE_SHARE * control_mean.abs()
    };
    let comparisons = (0..variants.len())
        .filter(|&i| i != control)
        .map(|i| {
            let outcome = (|| {
                plain[control].clone()?;
                plain[i].clone()?;
                if let Some(e) = &cuped_error {
                    return Err(e.clone());
                }
                let (Some(a), Some(b)) = (moments[control], moments[i]) else {
                    return Err(StatsError::ZeroVariance);
                };
                let result = stats::compare_moments(&a, &b, config)?;
                // Diagnostics: a degenerate input gives 0 rather than an error.
                let power =
                    stats::power_from_standard_error(mde_target, result.standard_error, config.alpha, config.sided)
                        .unwrap_or(0.0);
                let mde =
                    stats::mde_from_standard_error(result.standard_error, config.alpha, TARGET_POWER, config.sided)
                        .unwrap_or(0.0);
                Ok(Comparison { result, power, mde, variance_reduction })
            })();
            ComparisonReadout { variant: i, outcome }
        })
        .collect();

    let variants = variants
        .into_iter()
        .zip(plain)
        .map(|(data, m)| match m {
            Ok(m) => VariantReadout { mean: m.mean, ci: m.confidence_interval(config.alpha).ok(), data, problem: None },
            Err(e) => VariantReadout { mean: fallback_mean(kind, &data.summary), ci: None, data, problem: Some(e) },
        })
        .collect();
    MetricReadout { kind, control, config: *config, mde_target, variants, comparisons, variance_reduction }
}

/// Adjusts the p-values of every computed comparison of `family` together (Holm or
/// Benjamini–Hochberg) and updates significance with each metric's own configuration.
pub fn correct(family: &mut [&mut MetricReadout], correction: Correction) {
    let p_values: Vec<f64> = family
        .iter()
        .flat_map(|m| m.comparisons.iter())
        .filter_map(|c| c.outcome.as_ref().ok().map(|c| c.result.p_value))
        .collect();
    let mut adjusted = stats::adjust_p_values(&p_values, correction).into_iter();
    for metric in family.iter_mut() {
        let config = metric.config;
        for comparison in metric.comparisons.iter_mut() {
            if let Ok(c) = comparison.outcome.as_mut()
                && let Some(p) = adjusted.next()
            {
                c.result.apply_adjusted_p_value(p, &config);
            }
        }
    }
}

/// SRM p-value of users per variant against the weights; all weights 0 means equal shares.
/// Errors name `weights[i]`.
pub fn srm_p_value(users: &[u64], weights: &[f64]) -> std::result::Result<f64, StatsError> {
    if weights.iter().all(|&w| w == 0.0) {
        let equal = vec![1.0 / users.len().max(1) as f64; users.len()];
        return stats::srm_p_value(users, &equal);
    }
    stats::srm_p_value(users, weights)
}

// ---------------------------------------------------------------------------------------------
// AnalyzeSummaries
// ---------------------------------------------------------------------------------------------

/// A stateless readout request: sufficient statistics per variant.
#[derive(Debug, Clone, PartialEq)]
pub struct SummariesRequest {
    pub kind: SummaryKind,
    /// Empty: the first variant.
    pub control_variant: String,
    pub variants: Vec<VariantData>,
    /// With `direction` set from the request.
    pub config: StatsConfig,
    pub minimum_detectable_effect: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SummariesReadout {
    pub metric: MetricReadout,
    pub srm_p_value: f64,
}

/// A comparison's error with `control.*` / `treatment.*` renamed to the request's
/// `variants[i].*` (and data-wide errors placed on `variants`).
fn comparison_error(err: StatsError, control: usize, treatment: usize) -> Error {
    let field = match err.field() {
        Some(f) if f.starts_with("control") => f.replacen("control", &format!("variants[{control}]"), 1),
        Some(f) if f.starts_with("treatment") => f.replacen("treatment", &format!("variants[{treatment}]"), 1),
        Some(f) if !f.is_empty() => f.to_string(),
        _ => "variants".to_string(),
    };
    Error::invalid(field, err.to_string())
}

/// Analyzes client-sent statistics; any input that cannot be analysed is INVALID_ARGUMENT
/// naming `variants[i].*`, `control_variant` or `minimum_detectable_effect`.
pub fn analyze_summaries(request: SummariesRequest) -> Result<SummariesReadout> {
    let variants = &request.variants;
    if variants.len() < 2 {
        return Err(Error::invalid("variants", format!("at least 2 variants are required, got {}", variants.len())));
    }
    for (i, v) in variants.iter().enumerate() {
        if !v.key.is_empty() && variants[..i].iter().any(|w| w.key == v.key) {
            return Err(Error::invalid(
                format!("variants[{i}].key"),
                format!("duplicate variant key {}", echo(&v.key)),
            ));
        }
    }
    let control = if request.control_variant.is_empty() {
        0
    } else {
        variants.iter().position(|v| v.key == request.control_variant).ok_or_else(|| {
            Error::invalid("control_variant", format!("{} names none of the variants", echo(&request.control_variant)))
        })?
    };
    if !request.minimum_detectable_effect.is_finite() {
        return Err(Error::invalid("minimum_detectable_effect", "must be a finite number"));
    }
    let users: Vec<u64> = variants.iter().map(|v| v.summary.users as u64).collect();
    let weights: Vec<f64> = variants.iter().map(|v| v.weight).collect();
    let mut metric =
        analyze_metric(request.kind, request.variants, control, &request.config, request.minimum_detectable_effect);
    if let Some(problem) = metric.variants.iter().find_map(|v| v.problem.clone()) {
        return Err(problem.into());
    }
    for comparison in &metric.comparisons {
        if let Err(e) = &comparison.outcome {
            return Err(comparison_error(e.clone(), control, comparison.variant));
        }
    }
    correct(&mut [&mut metric], request.config.correction);
    let srm_p_value = srm_p_value(&users, &weights).map_err(|e| {
        let field = match e.field() {
            Some(f) if f.starts_with("weights[") => format!("variants[{}].weight", &f["weights[".len()..f.len() - 1]),
            _ => "variants".to_string(),
        };
        Error::invalid(field, e.to_string())
    })?;
    Ok(SummariesReadout { metric, srm_p_value })
}

// ---------------------------------------------------------------------------------------------
// Decision
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Ship,
    Rollback,
    KeepRunning,
    Inconclusive,
}

/// A metric's readout as the decision sees it.
pub struct MetricFinding<'a> {
    pub key: &'a str,
    pub role: MetricRole,
    pub readout: &'a MetricReadout,
}

/// `+7.1%` for relative effects, `+0.29` for absolute ones.
fn effect_words(c: &ComparisonResult) -> String {
    match c.relative {
        Some(relative) => format!("{:+.1}%", relative.effect * 100.0),
        None => format!("{:+.4}", c.absolute.effect),
    }
}

/// Two significant digits: 0.50, 0.031, 0.00021; scientific notation below 1e-6.
pub fn p_words(p: f64) -> String {
    if p <= 0.0 {
        return "0".into();
    }
    if p < 1e-6 {
        return format!("{p:.1e}");
    }
    let digits = (-p.log10().floor()).max(0.0) as usize + 1;
    format!("{p:.digits$}")
}

/// Words for a statistics error met on measured data.
pub fn problem_words(e: &StatsError) -> String {
    match e {
        StatsError::TooFewUsers { .. } => "fewer than 2 users in a variant".into(),
        StatsError::ZeroControlMean { .. } => "the control mean is 0, so no relative effect exists".into(),
        StatsError::ZeroVariance => "every user has the same value, so no test is possible".into(),
        StatsError::ZeroDenominator { .. } => "the ratio's denominator is 0 in a variant".into(),
        other => other.to_string(),
    }
}

fn mde_words(readout: &MetricReadout) -> String {
    match readout.config.difference {
        Difference::Relative => format!("{}% effect", trim(readout.mde_target * 100.0)),
        Difference::Absolute => format!("{} absolute effect", trim(readout.mde_target)),
    }
}

fn trim(x: f64) -> String {
    let s = format!("{x:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The recommendation and the findings behind it, in words (rules in the proto's `Decision`):
/// ROLLBACK when a guardrail or a primary metric regressed; INCONCLUSIVE on a sample-ratio
/// mismatch; SHIP when some treatment has every primary metric significant in its good
/// direction; KEEP_RUNNING when a primary comparison is underpowered (or not computable yet)
/// and the experiment has not ended; else INCONCLUSIVE.
pub fn decide(
    metrics: &[MetricFinding],
    variant_keys: &[&str],
    srm_p_value: f64,
    excluded_users: u64,
    ended: bool,
) -> (Decision, Vec<String>) {
    let mut regressions = Vec::new();
    let mut primary = Vec::new();
    let mut underpowered = Vec::new();
    let mut ship_candidates: Vec<(usize, bool)> = Vec::new(); // (variant, every primary better)
    let primaries: Vec<&MetricFinding> = metrics.iter().filter(|m| m.role == MetricRole::Primary).collect();
    for finding in metrics {
        let readout = finding.readout;
        for comparison in &readout.comparisons {
            let variant = variant_keys[comparison.variant];
            let c = match &comparison.outcome {
                Ok(c) => c,
                Err(e) => {
                    if finding.role == MetricRole::Primary {
                        underpowered.push(format!(
                            "primary metric {}: no comparison of {variant} yet: {}",
                            finding.key,
                            problem_words(e)
                        ));
                    }
                    continue;
                }
            };
            let r = &c.result;
            let effect = effect_words(r);
            let p = p_words(r.adjusted_p_value);
            match finding.role {
                MetricRole::Guardrail if r.regressed => {
                    regressions.push(format!("guardrail {}: {variant} regressed ({effect}, p = {p})", finding.key))
                }
                MetricRole::Primary if r.regressed => regressions
                    .push(format!("primary metric {}: {variant} significantly worse ({effect}, p = {p})", finding.key)),
                MetricRole::Primary if r.significant => primary.push(format!(
                    "primary metric {}: {variant} significantly better ({effect}, p = {p})",
                    finding.key
                )),
                MetricRole::Primary => primary
                    .push(format!("primary metric {}: {variant} not significant ({effect}, p = {p})", finding.key)),
                _ => {}
            }
            if finding.role == MetricRole::Primary && c.power < TARGET_POWER {
                underpowered.push(format!(
                    "underpowered: primary metric {}, {variant}: power {:.2} for a {}",
                    finding.key,
                    c.power,
                    mde_words(readout)
                ));
            }
        }
    }
    // Per treatment: does every primary metric have a significant improvement?
    for (v, _) in variant_keys.iter().enumerate() {
        let mut all_better = !primaries.is_empty();
        let mut is_treatment = false;
        for finding in &primaries {
            match finding.readout.comparisons.iter().find(|c| c.variant == v) {
                Some(c) => {
                    is_treatment = true;
                    let better = c.outcome.as_ref().is_ok_and(|c| c.result.significant && !c.result.regressed);
                    all_better &= better;
                }
                None => all_better = false,
            }
        }
        if is_treatment {
            ship_candidates.push((v, all_better));
        }
    }

    let srm = srm_p_value < SRM_THRESHOLD;
    let srm_words = format!("sample ratio mismatch (p = {})", p_words(srm_p_value));
    let winners: Vec<&str> =
        ship_candidates.iter().filter(|(_, better)| *better).map(|(v, _)| variant_keys[*v]).collect();
    let (decision, headline) = if !regressions.is_empty() {
        (
            Decision::Rollback,
            "roll back: a guardrail or primary metric moved significantly in its bad direction".to_string(),
        )
    } else if srm {
        (
            Decision::Inconclusive,
            format!("inconclusive: {srm_words}; the assignment or the exposure logging is suspect"),
        )
    } else if !winners.is_empty() {
        (Decision::Ship, format!("ship {}: every primary metric is significantly better", winners.join(", ")))
    } else if primaries.is_empty() {
        (Decision::Inconclusive, "inconclusive: the experiment has no primary metric".to_string())
    } else if !underpowered.is_empty() && !ended {
        (Decision::KeepRunning, "keep running: not enough data yet to detect the minimum detectable effect".to_string())
    } else {
        (
            Decision::Inconclusive,
            "inconclusive: no treatment is significantly better on every primary metric".to_string(),
        )
    };
    let mut reasons = vec![headline];
    reasons.extend(regressions);
    if srm {
        reasons.push(srm_words);
    }
    reasons.extend(primary);
    reasons.extend(underpowered);
    if excluded_users > 0 {
        reasons.push(format!("{excluded_users} users saw more than one variant and are left out"));
    }
    (decision, reasons)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(key: &str, users: f64, converted: f64) -> VariantData {
        VariantData { key: key.into(), summary: Summary::proportion(users, converted), ..Default::default() }
    }

    #[test]
    fn p_values_read_with_two_significant_digits() {
        assert_eq!(p_words(0.5), "0.50");
        assert_eq!(p_words(0.031), "0.031");
        assert_eq!(p_words(1.0), "1.0");
        assert_eq!(p_words(2e-9), "2.0e-9");
        assert_eq!(p_words(0.00021), "0.00021");
        assert_eq!(p_words(0.0), "0");
    }

    #[test]
    fn comparisons_that_cannot_be_computed_carry_their_error() {
        let config = StatsConfig::default();
        let readout =
            analyze_metric(SummaryKind::Proportion, vec![data("a", 1.0, 1.0), data("b", 100.0, 10.0)], 0, &config, 0.0);
        assert!(readout.variants[0].ci.is_none());
        assert_eq!(readout.variants[0].mean, 1.0);
        assert!(matches!(readout.comparisons[0].outcome, Err(StatsError::TooFewUsers { .. })));
        let (decision, reasons) = decide(
            &[MetricFinding { key: "m", role: MetricRole::Primary, readout: &readout }],
            &["a", "b"],
            0.5,
            0,
            false,
        );
        assert_eq!(decision, Decision::KeepRunning, "{reasons:?}");
    }

    #[test]
    fn decisions_follow_the_rules_in_order() {
        let config = StatsConfig::default();
        let strong = analyze_metric(
            SummaryKind::Proportion,
            vec![data("a", 10_000.0, 1000.0), data("b", 10_000.0, 1300.0)],
            0,
            &config,
            0.0,
        );
        let worse = analyze_metric(
            SummaryKind::Proportion,
            vec![data("a", 10_000.0, 1300.0), data("b", 10_000.0, 1000.0)],
            0,
            &config,
            0.0,
        );
        let flat = analyze_metric(
            SummaryKind::Proportion,
            vec![data("a", 10_000.0, 1000.0), data("b", 10_000.0, 1001.0)],
            0,
            &config,
            0.0,
        );
        let find = |key, role, readout| MetricFinding { key, role, readout };
        let keys = ["a", "b"];
        let (d, r) = decide(&[find("p", MetricRole::Primary, &strong)], &keys, 0.5, 0, false);
        assert_eq!(d, Decision::Ship, "{r:?}");
        assert!(r[1].contains("significantly better (+30.0%"), "{r:?}");
        let (d, r) = decide(
            &[find("p", MetricRole::Primary, &strong), find("g", MetricRole::Guardrail, &worse)],
            &keys,
            0.5,
            0,
            false,
        );
        assert_eq!(d, Decision::Rollback, "{r:?}");
        assert!(r.iter().any(|s| s.starts_with("guardrail g: b regressed")), "{r:?}");
        let (d, r) = decide(&[find("p", MetricRole::Primary, &strong)], &keys, 0.0001, 3, false);
        assert_eq!(d, Decision::Inconclusive, "{r:?}");
        assert!(r.iter().any(|s| s == "sample ratio mismatch (p = 0.00010)"), "{r:?}");
        assert!(r.last().unwrap().starts_with("3 users"), "{r:?}");
        let (d, r) = decide(&[find("p", MetricRole::Primary, &flat)], &keys, 0.5, 0, false);
        assert_eq!(d, Decision::KeepRunning, "{r:?}");
        let (d, _) = decide(&[find("p", MetricRole::Primary, &flat)], &keys, 0.5, 0, true);
        assert_eq!(d, Decision::Inconclusive);
    }

    #[test]
    fn correction_spans_the_family() {
        let config = StatsConfig { correction: Correction::Holm, ..Default::default() };
        let make = |b: f64| {
            analyze_metric(
                SummaryKind::Proportion,
                vec![data("a", 1000.0, 100.0), data("b", 1000.0, b)],
                0,
                &config,
                0.0,
            )
        };
        let (mut one, mut two) = (make(130.0), make(110.0));
        let p = |m: &MetricReadout| m.comparisons[0].outcome.as_ref().unwrap().result.p_value;
        let (p1, p2) = (p(&one), p(&two));
        correct(&mut [&mut one, &mut two], Correction::Holm);
        let adjusted = |m: &MetricReadout| m.comparisons[0].outcome.as_ref().unwrap().result.adjusted_p_value;
        assert_eq!(adjusted(&one), (2.0 * p1).min(1.0));
        assert_eq!(adjusted(&two), (2.0 * p1).max(p2).min(1.0));
    }
}
