//! Power and planning: sample size per variant and minimum detectable effect.

#[allow(unused_imports)]
use super::*;

/// The per-comparison α when `variants` (including control) are tested against one control:
/// Bonferroni `α/(variants − 1)` for more than two variants, else α.
pub fn bonferroni_alpha(alpha: f64, variants: u32) -> f64 {
    if variants > 2 { alpha / f64::from(variants - 1) } else { alpha }
}

/// `z_{1−α/s} + z_{power}` with `s` = 2 for two-sided tests, 1 otherwise.
/// What a planned test is to achieve: its level, its power and its sides.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Design {
    pub alpha: f64,
    pub power: f64,
    pub sided: Sided,
}

impl Design {
    fn z_sum(self) -> Result<f64, StatsError> {
        z_sum(self.alpha, self.power, self.sided)
    }
}

pub(crate) fn z_sum(alpha: f64, power: f64, sided: Sided) -> Result<f64, StatsError> {
    unit_open("alpha", alpha)?;
    unit_open("power", power)?;
    Ok(normal_upper_quantile(alpha / sided.tails()) + normal_upper_quantile(1.0 - power))
}

/// The absolute effect for `mde`, which is relative to `|mean|` when `relative`.
pub(crate) fn absolute_mde(mde: f64, mean: f64, relative: bool, mean_field: &str) -> Result<f64, StatsError> {
    if !mde.is_finite() || mde == 0.0 {
        return Err(StatsError::OutOfRange { field: "mde".into(), expected: "a non-zero finite number", value: mde });
    }
    let mde = mde.abs();
    if !relative {
        return Ok(mde);
    }
    let mean = finite(|| mean_field.to_string(), mean)?;
    if mean == 0.0 {
        return Err(StatsError::ZeroControlMean { field: mean_field.to_string() });
    }
    Ok(mde * mean.abs())
}

/// Users per variant to detect an effect of `mde` (relative to `baseline_mean` when
/// `relative`, e.g. 0.05 = 5%) with probability `power` at level `alpha`:
/// `n = (z_{1−α/s} + z_{power})² (σ²_A + σ²_B)/Δ²` with `σ²_A = σ²_B = baseline_variance`,
/// `s` = 2 for two-sided tests, 1 otherwise (SPEC PlanExperiment; the far tail of a two-sided
/// test is ignored). Not rounded: PlanExperiment rounds up. Split α with [`bonferroni_alpha`]
/// first for more than two variants. The sign of `mde` is ignored.
pub fn sample_size_per_variant(
    baseline_mean: f64,
    baseline_variance: f64,
    mde: f64,
    relative: bool,
    design: Design,
) -> Result<f64, StatsError> {
    let variance = positive("baseline_variance", baseline_variance)?;
    let delta = absolute_mde(mde, baseline_mean, relative, "baseline_mean")?;
    let z = design.z_sum()?;
    finite(|| "mde".into(), z * z * 2.0 * variance / (delta * delta))
}

/// [`sample_size_per_variant`] for a proportion: `σ²_A = p(1 − p)` at the baseline and
/// `σ²_B = p′(1 − p′)` at `p′ = p + Δ`, which must stay within (0, 1].
pub fn sample_size_per_variant_proportion(
    baseline_proportion: f64,
    mde: f64,
    relative: bool,
    design: Design,
) -> Result<f64, StatsError> {
    let p = unit_open("baseline_proportion", baseline_proportion)?;
    let delta = absolute_mde(mde, p, relative, "baseline_proportion")?;
    let target = p + delta;
    if target > 1.0 {
        return Err(StatsError::Infeasible {
            field: "mde".into(),
            reason: format!("the baseline proportion plus the effect is {target}, above 1"),
        });
    }
    let z = design.z_sum()?;
    finite(|| "mde".into(), z * z * (p * (1.0 - p) + target * (1.0 - target)) / (delta * delta))
}

/// Smallest effect detectable with `power` at `users_per_variant` per variant:
/// `Δ = (z_{1−α/s} + z_{power}) sqrt(2σ²/n)`, divided by `|mean|` when `relative`
/// (the inverse of [`sample_size_per_variant`]).
pub fn minimum_detectable_effect(
    users_per_variant: f64,
    variance: f64,
    mean: f64,
    relative: bool,
    design: Design,
) -> Result<f64, StatsError> {
    let n = positive("users_per_variant", users_per_variant)?;
    let variance = positive("variance", variance)?;
    let delta = mde_from_standard_error((2.0 * variance / n).sqrt(), design.alpha, design.power, design.sided)?;
    scale_effect(delta, mean, relative)
}

/// Absolute effect → relative to `|mean|` when `relative`.
pub(crate) fn scale_effect(delta: f64, mean: f64, relative: bool) -> Result<f64, StatsError> {
    if !relative {
        return Ok(delta);
    }
    let mean = finite(|| "mean".into(), mean)?;
    if mean == 0.0 {
        return Err(StatsError::ZeroControlMean { field: "mean".into() });
    }
    Ok(delta / mean.abs())
}

/// The inverse of [`sample_size_per_variant_proportion`]: the increase `Δ` solving
/// `Δ² n = k² (p(1 − p) + (p + Δ)(1 − p − Δ))` with `k = z_{1−α/s} + z_{power}`, i.e. with
/// `c = k²/n`: `Δ = (c(1 − 2p) + sqrt(c²(1 − 2p)² + 8c(1 + c)p(1 − p))) / (2(1 + c))`;
/// relative to `p` when `relative`. Infeasible when `p + Δ` would exceed 1.
pub fn minimum_detectable_effect_proportion(
    users_per_variant: f64,
    baseline_proportion: f64,
    relative: bool,
    design: Design,
) -> Result<f64, StatsError> {
    let n = positive("users_per_variant", users_per_variant)?;
    let p = unit_open("baseline_proportion", baseline_proportion)?;
    let k = design.z_sum()?;
    let c = k * k / n;
    let b = c * (1.0 - 2.0 * p);
    let delta = (b + (b * b + 8.0 * c * (1.0 + c) * p * (1.0 - p)).sqrt()) / (2.0 * (1.0 + c));
    if p + delta > 1.0 {
        return Err(StatsError::Infeasible {
            field: "users_per_variant".into(),
            reason: "too few users: no increase of the baseline proportion is detectable".into(),
        });
    }
    scale_effect(delta, p, relative)
}

/// Power to detect `effect` (relative to `|mean|` when `relative`) with `users_per_variant`
/// per variant and per-user variance `variance` in both: [`power_from_standard_error`] with
/// `SE = sqrt(2σ²/n)`.
pub fn power(
    effect: f64,
    users_per_variant: f64,
    variance: f64,
    mean: f64,
    relative: bool,
    alpha: f64,
    sided: Sided,
) -> Result<f64, StatsError> {
    let n = positive("users_per_variant", users_per_variant)?;
    let variance = positive("variance", variance)?;
    let effect = finite(|| "effect".into(), effect)?;
    let delta = if relative {
        let mean = finite(|| "mean".into(), mean)?;
        if mean == 0.0 {
            return Err(StatsError::ZeroControlMean { field: "mean".into() });
        }
        effect * mean.abs()
    } else {
        effect
    };
    power_from_standard_error(delta, (2.0 * variance / n).sqrt(), alpha, sided)
}

/// Power of a z-test whose effect estimate has standard error `standard_error`, for a true
/// effect of size `|effect|` in the direction the test looks for (the sign is ignored), with
/// `d = |effect|/SE`: two-sided `Φ(d − z_{1−α/2}) + Φ(−d − z_{1−α/2})`, one-sided
/// `Φ(d − z_{1−α})`. Works on any scale, e.g. a relative MDE with a relative SE.
pub fn power_from_standard_error(
    effect: f64,
    standard_error: f64,
    alpha: f64,
    sided: Sided,
) -> Result<f64, StatsError> {
    let effect = finite(|| "effect".into(), effect)?.abs();
    let se = positive("standard_error", standard_error)?;
    unit_open("alpha", alpha)?;
    let z = normal_upper_quantile(alpha / sided.tails());
    let d = effect / se;
    let power = match sided {
        Sided::TwoSided => normal_cdf(d - z) + normal_cdf(-d - z),
        Sided::Greater | Sided::Less => normal_cdf(d - z),
    };
    Ok(power.clamp(0.0, 1.0))
}

/// Smallest effect detectable with `power` when the estimate has standard error
/// `standard_error`: `(z_{1−α/s} + z_{power}) · SE`.
pub fn mde_from_standard_error(standard_error: f64, alpha: f64, power: f64, sided: Sided) -> Result<f64, StatsError> {
    let se = positive("standard_error", standard_error)?;
    Ok(z_sum(alpha, power, sided)? * se)
}
