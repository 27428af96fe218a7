//! Comparisons of a treatment with the control: Welch's t-test (fixed horizon and sequential) and the Bayesian model.

#[allow(unused_imports)]
use super::*;

/// Treatment versus control on one scale (absolute or relative).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Estimate {
    /// Frequentist: the observed difference; Bayesian: the posterior mean.
    pub effect: f64,
    /// Confidence interval, confidence sequence or credible interval at 1 − α;
    /// ±infinity on the open side of a one-sided test.
    pub ci_lower: f64,
    pub ci_upper: f64,
    /// Frequentist: `sqrt(Var(effect))`; Bayesian: the posterior standard deviation.
    pub standard_error: f64,
    /// Welch's t-test p-value for the configured alternative (fixed horizon, also computed
    /// for Bayesian and sequential analyses, for reference).
    pub p_value: f64,
    /// P(treatment better than control) under the normal posterior (a flat prior for the
    /// frequentist engine), "better" following the metric's direction.
    pub chance_to_win: f64,
    /// Expected loss of shipping control, `E[max(G, 0)]`, and of shipping treatment,
    /// `E[max(−G, 0)]`, with `G` the effect in the good direction.
    pub risk_control: f64,
    pub risk_treatment: f64,
    /// Before any multiple-testing correction: frequentist `p < α` (sequential: the sequence
    /// excludes 0); Bayesian `chance_to_win ∉ [α, 1 − α]`.
    pub significant: bool,
}

/// Result of [`compare`]. The flat fields use the configured [`Difference`]; `absolute` and
/// `relative` hold both scales (proto `Comparison.absolute_*`, `relative_*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ComparisonResult {
    pub difference: Difference,
    pub effect: f64,
    pub ci_lower: f64,
    pub ci_upper: f64,
    pub standard_error: f64,
    pub p_value: f64,
    /// Equal to `p_value` until [`ComparisonResult::apply_adjusted_p_value`].
    pub adjusted_p_value: f64,
    pub chance_to_win: f64,
    pub risk_control: f64,
    pub risk_treatment: f64,
    pub significant: bool,
    /// Significant in the metric's bad direction (guardrails).
    pub regressed: bool,
    /// Welch–Satterthwaite degrees of freedom of the t-test.
    pub degrees_of_freedom: f64,
    pub control_mean: f64,
    pub treatment_mean: f64,
    pub absolute: Estimate,
    /// `None` when the control mean is 0 (or the relative effect has no variance) and the
    /// configured difference is absolute; with a relative difference those cases are errors.
    pub relative: Option<Estimate>,
}

impl ComparisonResult {
    /// Records the corrected p-value of this comparison within its family. For the fixed
    /// horizon frequentist engine `significant` becomes `adjusted_p_value < α` (and `regressed`
    /// follows); sequential and Bayesian significance do not use p-values and stay as they are.
    pub fn apply_adjusted_p_value(&mut self, adjusted_p_value: f64, config: &StatsConfig) {
        self.adjusted_p_value = sanitize_p(adjusted_p_value);
        if config.engine == StatsMethod::Frequentist && !config.sequential {
            self.significant = self.adjusted_p_value < config.alpha;
            self.regressed = self.significant && is_bad(self.effect, config.direction);
        }
    }
}

/// Compares a treatment with the control from their sufficient statistics: [`Summary::moments`]
/// for both (errors name `control.*` and `treatment.*`), then [`compare_moments`].
pub fn compare(
    control: &Summary,
    treatment: &Summary,
    kind: SummaryKind,
    config: &StatsConfig,
) -> Result<ComparisonResult, StatsError> {
    config.validate()?;
    let a = control.moments(kind, "control")?;
    let b = treatment.moments(kind, "treatment")?;
    compare_moments(&a, &b, config)
}

/// Compares a treatment (B) with the control (A).
///
/// **Effects and their variances** (means `μ`, unadjusted means `u`, per-user variances `σ²`):
/// - absolute: `Δ = μ_B − μ_A`, `Var = σ²_B/n_B + σ²_A/n_A`;
/// - relative (delta method): `Δ = (μ_B − μ_A)/|u_A|`,
///   `Var = σ²_B/(n_B u²_A) + σ²_A u²_B/(n_A u⁴_A)`.
///
/// Dividing by `|u_A|` keeps the relative effect's sign equal to the absolute one's when the
/// control mean is negative (identical to gbstats for positive means).
///
/// **Frequentist** (Welch): `t = Δ/sqrt(Var)` with Satterthwaite degrees of freedom
/// `ν = (σ²_B/n_B + σ²_A/n_A)² / (σ⁴_B/(n²_B(n_B − 1)) + σ⁴_A/(n²_A(n_A − 1)))`
/// (`ν = n − 1` of the other arm when one arm is constant). p-value: two-sided
/// `2 P(T_ν > |t|)`, GREATER `P(T_ν > t)`, LESS `P(T_ν < t)`. Interval: `Δ ± t_{ν,1−α/2} SE`,
/// or `(Δ − t_{ν,1−α} SE, +∞)` / `(−∞, Δ + t_{ν,1−α} SE)` one-sided.
///
/// **Sequential** (asymptotic confidence sequences, Waudby-Smith et al., as gbstats): with
/// `N = n_A + n_B` and `s = sqrt(N·Var)`, two-sided:
/// `ρ = sqrt((−2 ln α + ln(−2 ln α + 1))/N*)`,
/// half-width `s·sqrt(2(Nρ² + 1) ln(sqrt(Nρ² + 1)/α)/(Nρ)²)`; one-sided (gbstats): ρ with 2α
/// in place of α and half-width `s·sqrt(2(Nρ² + 1) ln(1 + sqrt(Nρ² + 1)/(2α))/(Nρ)²)`.
/// Significant when the sequence excludes 0; `p_value` stays the fixed-horizon value.
///
/// **Bayesian** (gbstats' effect-based model): the effect is normal with the data's `Δ` and
/// `Var`; with a prior `N(m₀, v₀)` the posterior has precision `1/Var + 1/v₀` and mean
/// `(Δ/Var + m₀/v₀)/precision`, flat prior: `N(Δ, Var)`. The prior is in the configured
/// scale; for the other scale it is converted with `|u_A|` (mean × |u_A|, variance × u²_A, or
/// the inverse). Credible interval from the normal quantiles (one-sided ones open like the
/// frequentist intervals).
///
/// **Chance to win and risk** (every engine, on the posterior `N(m, s²)`, flat for the
/// frequentist engine) with `G` the effect signed so that positive is good (`direction`):
/// `P(G > 0) = Φ(m_G/s)`, `risk_control = E[max(G, 0)] = m_G Φ(m_G/s) + s φ(m_G/s)`,
/// `risk_treatment = E[max(−G, 0)] = −m_G Φ(−m_G/s) + s φ(m_G/s)`.
///
/// **Degenerate input**: `n < 2` in either arm → [`StatsError::TooFewUsers`]; a relative
/// difference with a control mean of 0 → [`StatsError::ZeroControlMean`]; both arms with zero
/// variance → [`StatsError::ZeroVariance`]. One constant arm is fine (its variance term is 0).
pub fn compare_moments(
    control: &Moments,
    treatment: &Moments,
    config: &StatsConfig,
) -> Result<ComparisonResult, StatsError> {
    config.validate()?;
    control.validate("control")?;
    treatment.validate("treatment")?;
    let relative_requested = config.difference == Difference::Relative;
    let base = control.unadjusted_mean.abs();
    if relative_requested && base == 0.0 {
        return Err(StatsError::ZeroControlMean { field: "control.sum".into() });
    }
    if control.variance == 0.0 && treatment.variance == 0.0 {
        return Err(StatsError::ZeroVariance);
    }

    let (n_a, n_b) = (control.users, treatment.users);
    let (va, vb) = (control.variance / n_a, treatment.variance / n_b);
    let dof = welch_dof(control, treatment);
    let n_total = n_a + n_b;

    let absolute_effect = treatment.mean - control.mean;
    let absolute_variance = va + vb;
    // Both scales share one configured prior; convert it to the other scale with |u_A|.
    let prior_absolute = config.prior.map(|p| match config.difference {
        Difference::Absolute => p,
        Difference::Relative => GaussianPrior { mean: p.mean * base, variance: p.variance * base * base },
    });
    let absolute = estimate(absolute_effect, absolute_variance, prior_absolute, dof, n_total, config)?;

    let relative = if base > 0.0 {
        let effect = absolute_effect / base;
        let u_b = treatment.unadjusted_mean;
        let variance = vb / (base * base) + va * u_b * u_b / base.powi(4);
        let prior = config.prior.map(|p| match config.difference {
            Difference::Relative => p,
            Difference::Absolute => GaussianPrior { mean: p.mean / base, variance: p.variance / (base * base) },
        });
        if variance > 0.0 {
            Some(estimate(effect, variance, prior, dof, n_total, config)?)
        } else if relative_requested {
            return Err(StatsError::ZeroVariance);
        } else {
            None
        }
    } else {
        None
    };

    let chosen = match (config.difference, relative) {
        (Difference::Relative, Some(r)) => r,
        _ => absolute,
    };
    Ok(ComparisonResult {
        difference: config.difference,
        effect: chosen.effect,
        ci_lower: chosen.ci_lower,
        ci_upper: chosen.ci_upper,
        standard_error: chosen.standard_error,
        p_value: chosen.p_value,
        adjusted_p_value: chosen.p_value,
        chance_to_win: chosen.chance_to_win,
        risk_control: chosen.risk_control,
        risk_treatment: chosen.risk_treatment,
        significant: chosen.significant,
        regressed: chosen.significant && is_bad(chosen.effect, config.direction),
        degrees_of_freedom: dof,
        control_mean: control.mean,
        treatment_mean: treatment.mean,
        absolute,
        relative,
    })
}

/// Welch–Satterthwaite degrees of freedom (at least one arm has a positive variance).
pub(crate) fn welch_dof(a: &Moments, b: &Moments) -> f64 {
    let (va, vb) = (a.variance / a.users, b.variance / b.users);
    let denominator = va * va / (a.users - 1.0) + vb * vb / (b.users - 1.0);
    let dof = (va + vb).powi(2) / denominator;
    // Bounded by min(n) − 1 ≤ ν ≤ n_A + n_B − 2 mathematically; guard against rounding.
    if dof.is_finite() && dof >= 1.0 { dof } else { (a.users.min(b.users) - 1.0).max(1.0) }
}

/// Whether `effect` moves in the metric's bad direction.
pub(crate) fn is_bad(effect: f64, direction: Direction) -> bool {
    match direction {
        Direction::Increase => effect < 0.0,
        Direction::Decrease => effect > 0.0,
    }
}

/// One scale of a comparison: `effect` and its sampling `variance` (> 0) from the data.
pub(crate) fn estimate(
    effect: f64,
    variance: f64,
    prior: Option<GaussianPrior>,
    dof: f64,
    n_total: f64,
    config: &StatsConfig,
) -> Result<Estimate, StatsError> {
    if variance == 0.0 {
        return Err(StatsError::ZeroVariance);
    }
    finite(|| "variants".into(), variance)?;
    let alpha = config.alpha;
    let se = variance.sqrt();
    let t = effect / se;
    let p_value = sanitize_p(match config.sided {
        Sided::TwoSided => 2.0 * t_sf(t.abs(), dof),
        Sided::Greater => t_sf(t, dof),
        Sided::Less => t_sf(-t, dof),
    });

    let (post_mean, post_sd) = match (config.engine, prior) {
        (StatsMethod::Bayesian, Some(p)) => {
            let precision = 1.0 / variance + 1.0 / p.variance;
            ((effect / variance + p.mean / p.variance) / precision, (1.0 / precision).sqrt())
        }
        _ => (effect, se),
    };
    let (chance_to_win, risk_control, risk_treatment) = win_and_risk(post_mean, post_sd, config.direction);

    let (center, spread, half_width) = match config.engine {
        StatsMethod::Frequentist if config.sequential => {
            (effect, se, sequential_half_width(variance, n_total, config.sequential_tuning, alpha, config.sided))
        }
        StatsMethod::Frequentist => {
            let q = t_upper_quantile(alpha / config.sided.tails(), dof);
            (effect, se, q * se)
        }
        StatsMethod::Bayesian => {
            let z = normal_upper_quantile(alpha / config.sided.tails());
            (post_mean, post_sd, z * post_sd)
        }
    };
    let (ci_lower, ci_upper) = match config.sided {
        Sided::TwoSided => (center - half_width, center + half_width),
        Sided::Greater => (center - half_width, f64::INFINITY),
        Sided::Less => (f64::NEG_INFINITY, center + half_width),
    };
    let significant = match config.engine {
        StatsMethod::Frequentist if config.sequential => ci_lower > 0.0 || ci_upper < 0.0,
        StatsMethod::Frequentist => p_value < alpha,
        StatsMethod::Bayesian => chance_to_win < alpha || chance_to_win > 1.0 - alpha,
    };
    let result = Estimate {
        effect: center,
        ci_lower,
        ci_upper,
        standard_error: spread,
        p_value,
        chance_to_win,
        risk_control,
        risk_treatment,
        significant,
    };
    // Defensive: finite inputs and a positive finite variance give finite numbers here.
    for value in [center, spread, chance_to_win, risk_control, risk_treatment] {
        finite(|| "variants".into(), value)?;
    }
    if ci_lower.is_nan() || ci_upper.is_nan() {
        return Err(StatsError::NotFinite { field: "variants".into(), value: f64::NAN });
    }
    Ok(result)
}

/// Chance to win and the two risks for a normal effect `N(mean, sd²)` (see [`compare_moments`]).
pub(crate) fn win_and_risk(mean: f64, sd: f64, direction: Direction) -> (f64, f64, f64) {
    let gain = match direction {
        Direction::Increase => mean,
        Direction::Decrease => -mean,
    };
    let z = gain / sd;
    let density = sd * normal_pdf(z);
    let chance = normal_cdf(z);
    let risk_control = (gain * chance + density).max(0.0);
    let risk_treatment = (-gain * normal_cdf(-z) + density).max(0.0);
    (chance, risk_control, risk_treatment)
}

/// Half-width of the asymptotic confidence sequence (see [`compare_moments`]) for an effect
/// whose estimate has variance `variance` after `n` users in total.
pub(crate) fn sequential_half_width(variance: f64, n: f64, tuning: f64, alpha: f64, sided: Sided) -> f64 {
    let s2 = n * variance;
    let level = if sided == Sided::TwoSided { alpha } else { 2.0 * alpha };
    let rho2 = (-2.0 * level.ln() + (-2.0 * level.ln() + 1.0).ln()) / tuning;
    let n_rho2 = n * rho2 + 1.0;
    let denominator = n * n * rho2;
    let log_term = if sided == Sided::TwoSided {
        (n_rho2.sqrt() / alpha).ln()
    } else {
        (1.0 + n_rho2.sqrt() / (2.0 * alpha)).ln()
    };
    (s2 * 2.0 * n_rho2 * log_term / denominator).sqrt()
}
