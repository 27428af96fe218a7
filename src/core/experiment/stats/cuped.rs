//! CUPED: variance reduction with a pre-exposure covariate, θ pooled across variants.

#[allow(unused_imports)]
use super::*;

/// The pre-exposure covariate of one variant (proto `pre_sum`, `pre_sum_squares`,
/// `pre_cross_sum`): `Σp`, `Σp²` and `Σxp` over the same users as the [`Summary`].
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Covariate {
    pub sum: f64,
    pub sum_squares: f64,
    pub cross_sum: f64,
}

/// Result of [`cuped_adjust`].
#[derive(Debug, Clone, PartialEq)]
pub struct CupedAdjustment {
    /// The pooled regression coefficient θ (0 when it does not apply).
    pub theta: f64,
    /// `1 − Σ σ²_adj,i/n_i ÷ Σ σ²_i/n_i` over the variants: 0.3 means 30% less variance
    /// (negative if the adjustment hurt; 0 without adjustment).
    pub variance_reduction: f64,
    /// Adjusted moments per variant, in input order, for [`compare_moments`].
    pub moments: Vec<Moments>,
}

/// CUPED (Deng et al. 2013; gbstats' regression adjustment) with θ pooled across variants.
///
/// Per variant `i` (means `x̄_i`, `p̄_i`; divisor `d = n − 1` for MEAN, `d = n` for PROPORTION,
/// matching [`Summary::moments`]):
/// `σ²_p,i = (Σp² − (Σp)²/n)/d`, `σ_xp,i = (Σxp − ΣxΣp/n)/d`.
/// θ comes from the same formulas over all variants' users pooled (`N = Σn`, pooled sums):
/// `θ = σ_xp / σ²_p` (0 when the pooled σ²_p or σ²_x is 0).
/// Adjusted: `mean_i = x̄_i − θ(p̄_i − P̄)` with `P̄` the pooled covariate mean (centring keeps
/// the metric's scale; differences between variants are gbstats' `x̄ − θp̄`),
/// `σ²_adj,i = σ²_x,i + θ² σ²_p,i − 2θ σ_xp,i`, and `unadjusted_mean = x̄_i` (the relative
/// effect's denominator, as gbstats).
///
/// RATIO metrics are not adjusted (SPEC: ignored): θ = 0 and the plain moments are returned.
/// Errors name `variants[i].*` (`pre_sum`, `pre_sum_squares`, `pre_cross_sum` for the
/// covariate).
pub fn cuped_adjust(
    summaries: &[Summary],
    covariates: &[Covariate],
    kind: SummaryKind,
) -> Result<CupedAdjustment, StatsError> {
    if summaries.is_empty() {
        return Err(StatsError::TooFewEntries { field: "variants".into(), min: 1, got: 0 });
    }
    if covariates.len() != summaries.len() {
        return Err(StatsError::LengthMismatch {
            field: "covariates".into(),
            expected: summaries.len(),
            got: covariates.len(),
        });
    }
    let labels: Vec<String> = (0..summaries.len()).map(|i| format!("variants[{i}]")).collect();
    let plain =
        summaries.iter().zip(&labels).map(|(s, label)| s.moments(kind, label)).collect::<Result<Vec<_>, _>>()?;
    if kind == SummaryKind::Ratio {
        return Ok(CupedAdjustment { theta: 0.0, variance_reduction: 0.0, moments: plain });
    }
    let divisor = |n: f64| if kind == SummaryKind::Proportion { n } else { n - 1.0 };
    // Σx² as the model sees it: proportions are 0/1 values.
    let x_squares = |s: &Summary| if kind == SummaryKind::Proportion { s.sum } else { s.sum_squares };

    let mut per_variant = Vec::with_capacity(summaries.len());
    let (mut n_all, mut x_all, mut xx_all, mut p_all, mut pp_all, mut xp_all) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for ((summary, covariate), label) in summaries.iter().zip(covariates).zip(&labels) {
        let p_sum = finite(|| path(label, "pre_sum"), covariate.sum)?;
        let p_squares = finite(|| path(label, "pre_sum_squares"), covariate.sum_squares)?;
        let xp = finite(|| path(label, "pre_cross_sum"), covariate.cross_sum)?;
        let n = summary.users;
        let d = divisor(n);
        let var_p = sample_variance(n, p_sum, p_squares, || path(label, "pre_sum_squares"))? * (n - 1.0) / d;
        let cov = (xp - summary.sum * p_sum / n) / d;
        per_variant.push((var_p, cov, p_sum / n));
        n_all += n;
        x_all += summary.sum;
        xx_all += x_squares(summary);
        p_all += p_sum;
        pp_all += p_squares;
        xp_all += xp;
    }
    let d_all = divisor(n_all);
    let pooled_var_p = ((pp_all - p_all * p_all / n_all) / d_all).max(0.0);
    let pooled_var_x = ((xx_all - x_all * x_all / n_all) / d_all).max(0.0);
    let pooled_cov = (xp_all - x_all * p_all / n_all) / d_all;
    let theta = if pooled_var_p > 0.0 && pooled_var_x > 0.0 { pooled_cov / pooled_var_p } else { 0.0 };
    let theta = finite(|| "variants".into(), theta)?;
    let pooled_pre_mean = p_all / n_all;

    let mut adjusted = Vec::with_capacity(plain.len());
    let (mut before, mut after) = (0.0, 0.0);
    for ((m, &(var_p, cov, p_mean)), label) in plain.iter().zip(&per_variant).zip(&labels) {
        let raw = m.variance + theta * theta * var_p - 2.0 * theta * cov;
        let variance = clamp_variance(raw, m.variance + theta * theta * var_p, || path(label, "pre_cross_sum"))?;
        before += m.variance / m.users;
        after += variance / m.users;
        adjusted.push(Moments {
            users: m.users,
            mean: m.mean - theta * (p_mean - pooled_pre_mean),
            variance,
            unadjusted_mean: m.mean,
        });
    }
    let variance_reduction = if before > 0.0 { 1.0 - after / before } else { 0.0 };
    Ok(CupedAdjustment { theta, variance_reduction, moments: adjusted })
}
