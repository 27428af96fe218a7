//! Experiment statistics (SPEC §8): sufficient statistics per variant, Welch's t-test (fixed
//! horizon and sequential), the effect-based Bayesian model of GrowthBook's gbstats, CUPED, the
//! sample-ratio-mismatch check, multiple-testing corrections, power planning and winsorizing.
//!
//! Pure arithmetic on plain numbers: the gRPC layer converts its messages into these types.
//! Nothing here panics and nothing returns NaN: invalid or degenerate input gives a
//! [`StatsError`] naming the input, and the documented edge cases (one constant variant, an SRM
//! check without users, …) give well-defined numbers.
//!
//! Notation: variant A is the control, B the treatment. A variant has `n` users (for ratio
//! metrics: units) with per-user values `x` (ratio metrics: numerator `x`, denominator `y`);
//! `μ` is its mean and `σ²` the variance of one user's value, so the mean's variance is `σ²/n`.

use serde::{Deserialize, Serialize};
use statrs::distribution::{ChiSquared, Continuous, ContinuousCDF, StudentsT};
use statrs::function::erf;

use crate::core::metric::definition::Direction;

/// Significance level used when none is configured.
pub const DEFAULT_ALPHA: f64 = 0.05;
/// Tuning parameter N* of the sequential confidence sequences when none is configured.
pub const DEFAULT_SEQUENTIAL_TUNING: f64 = 5000.0;
/// Variance of the Bayesian prior on the effect when a prior is requested without one
/// (σ = 0.3, GrowthBook's default).
pub const DEFAULT_PRIOR_VARIANCE: f64 = 0.09;
/// Tolerance on the sum of the SRM weights (SPEC §8).
pub const WEIGHT_TOLERANCE: f64 = 1e-6;

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Invalid or degenerate input. `field` names the offending input as a path such as
/// `control.users`, `variants[2].pre_sum`, `alpha` or `weights[1]` (see [`StatsError::field`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StatsError {
    /// NaN or ±infinity where a finite number is required.
    #[error("{field} must be a finite number, got {value}")]
    NotFinite { field: String, value: f64 },
    /// A number outside its domain, e.g. alpha outside (0, 1) or a negative count.
    #[error("{field} must be {expected}, got {value}")]
    OutOfRange { field: String, expected: &'static str, value: f64 },
    /// A variance needs at least two users (units) per variant.
    #[error("{field} must be at least 2 (a variance needs two users), got {value}")]
    TooFewUsers { field: String, value: f64 },
    /// A relative effect divides by the control mean.
    #[error("{field} gives a control mean of 0: the relative effect is undefined (use an absolute difference)")]
    ZeroControlMean { field: String },
    /// A ratio metric divides by the denominator sum.
    #[error("{field} is 0: the ratio is undefined")]
    ZeroDenominator { field: String },
    /// The effect estimate has no spread: both variants are constant (or, for a relative
    /// effect, the treatment is constant at 0), so no test or interval exists.
    #[error("the effect has zero variance (constant values): no test is possible")]
    ZeroVariance,
    /// Sufficient statistics that no data can produce, e.g. `Σx² < (Σx)²/n`.
    #[error("{field} is inconsistent: {reason}")]
    Inconsistent { field: String, reason: &'static str },
    /// Expected traffic shares must sum to 1 (± 1e-6).
    #[error("weights must sum to 1 (± 1e-6), got {sum}")]
    WeightsDoNotSumToOne { sum: f64 },
    /// Two inputs that must pair up have different lengths.
    #[error("{field} has {got} entries, expected {expected}")]
    LengthMismatch { field: String, expected: usize, got: usize },
    /// Too few entries, e.g. an SRM check over fewer than two variants.
    #[error("{field} needs at least {min} entries, got {got}")]
    TooFewEntries { field: String, min: usize, got: usize },
    /// A planning question without an answer, e.g. an effect that pushes a proportion past 1.
    #[error("{field}: {reason}")]
    Infeasible { field: String, reason: String },
}

impl StatsError {
    /// The input the error is about (a request field path), or `None` when it concerns the
    /// data as a whole ([`StatsError::ZeroVariance`]).
    pub fn field(&self) -> Option<&str> {
        match self {
            StatsError::NotFinite { field, .. }
            | StatsError::OutOfRange { field, .. }
            | StatsError::TooFewUsers { field, .. }
            | StatsError::ZeroControlMean { field }
            | StatsError::ZeroDenominator { field }
            | StatsError::Inconsistent { field, .. }
            | StatsError::LengthMismatch { field, .. }
            | StatsError::TooFewEntries { field, .. }
            | StatsError::Infeasible { field, .. } => Some(field),
            StatsError::WeightsDoNotSumToOne { .. } => Some("weights"),
            StatsError::ZeroVariance => None,
        }
    }
}

impl From<StatsError> for crate::error::Error {
    /// Every statistics error is a bad request: INVALID_ARGUMENT naming the field.
    fn from(err: StatsError) -> Self {
        crate::error::Error::invalid(err.field().unwrap_or_default(), err.to_string())
    }
}

/// `label.name`, or `name` without a label.
fn path(label: &str, name: &str) -> String {
    if label.is_empty() { name.to_string() } else { format!("{label}.{name}") }
}

fn finite(field: impl FnOnce() -> String, value: f64) -> Result<f64, StatsError> {
    if value.is_finite() { Ok(value) } else { Err(StatsError::NotFinite { field: field(), value }) }
}

/// Checks `value` is finite and in the open unit interval (alpha, power, proportions).
fn unit_open(field: &str, value: f64) -> Result<f64, StatsError> {
    finite(|| field.to_string(), value)?;
    if value > 0.0 && value < 1.0 {
        Ok(value)
    } else {
        Err(StatsError::OutOfRange { field: field.to_string(), expected: "in (0, 1)", value })
    }
}

fn positive(field: &str, value: f64) -> Result<f64, StatsError> {
    finite(|| field.to_string(), value)?;
    if value > 0.0 {
        Ok(value)
    } else {
        Err(StatsError::OutOfRange { field: field.to_string(), expected: "positive", value })
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// The statistical method of a readout (proto enum `Engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum StatsMethod {
    #[default]
    Frequentist,
    Bayesian,
}

/// Alternative hypothesis (proto `Sided`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Sided {
    #[default]
    TwoSided,
    /// H1: treatment > control; intervals are `(lower, +∞)`.
    Greater,
    /// H1: treatment < control; intervals are `(−∞, upper)`.
    Less,
}

impl Sided {
    /// Number of tails α is spread over: 2 for two-sided tests, 1 otherwise.
    fn tails(self) -> f64 {
        if self == Sided::TwoSided { 2.0 } else { 1.0 }
    }
}

/// Scale of effects and intervals (proto `Difference`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Difference {
    /// `(μ_B − μ_A) / |μ_A|`, as GrowthBook.
    #[default]
    Relative,
    /// `μ_B − μ_A`.
    Absolute,
}

/// Multiple-testing correction (proto `Correction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Correction {
    #[default]
    None,
    /// Holm step-down: controls the family-wise error rate.
    Holm,
    /// Benjamini–Hochberg step-up: controls the false discovery rate.
    BenjaminiHochberg,
}

/// Normal prior `N(mean, variance)` on the effect, in the units of [`StatsConfig::difference`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GaussianPrior {
    pub mean: f64,
    pub variance: f64,
}

impl Default for GaussianPrior {
    fn default() -> Self {
        GaussianPrior { mean: 0.0, variance: DEFAULT_PRIOR_VARIANCE }
    }
}

/// How comparisons are computed (proto `StatsConfig`, with the proto defaults resolved).
///
/// [`compare`] uses `engine`, `alpha`, `sided`, `difference`, `sequential`,
/// `sequential_tuning`, `prior` and `direction`. `cuped`, `correction` and
/// `winsorize_percentile` are carried for the caller, who applies them with [`cuped_adjust`],
/// [`adjust_p_values`] and [`winsorize_cap`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatsConfig {
    pub engine: StatsMethod,
    /// Significance level in (0, 1); intervals are at 1 − α.
    pub alpha: f64,
    pub sided: Sided,
    pub difference: Difference,
    /// Frequentist only: asymptotic confidence sequences (peeking-safe).
    pub sequential: bool,
    /// N* of the confidence sequences, > 0.
    pub sequential_tuning: f64,
    /// Bayesian only: prior on the effect; `None` is the flat (improper) prior.
    pub prior: Option<GaussianPrior>,
    /// Which way is good, for `chance_to_win`, the risks and `regressed` (a metric property;
    /// AnalyzeSummaries takes it from the request).
    pub direction: Direction,
    pub cuped: bool,
    pub correction: Correction,
    /// Percentile in (0, 100] at which per-user values are capped; `None`: no winsorizing.
    pub winsorize_percentile: Option<f64>,
}

impl Default for StatsConfig {
    fn default() -> Self {
        StatsConfig {
            engine: StatsMethod::Frequentist,
            alpha: DEFAULT_ALPHA,
            sided: Sided::TwoSided,
            difference: Difference::Relative,
            sequential: false,
            sequential_tuning: DEFAULT_SEQUENTIAL_TUNING,
            prior: None,
            direction: Direction::Increase,
            cuped: false,
            correction: Correction::None,
            winsorize_percentile: None,
        }
    }
}

impl StatsConfig {
    /// Checks every number: `alpha` in (0, 1) (below 0.5 for one-sided sequential tests, whose
    /// boundary uses 2α), `sequential_tuning` > 0, a prior with finite mean and positive
    /// variance, `winsorize_percentile` in (0, 100].
    pub fn validate(&self) -> Result<(), StatsError> {
        unit_open("alpha", self.alpha)?;
        positive("sequential_tuning", self.sequential_tuning)?;
        if self.sequential && self.sided != Sided::TwoSided && self.alpha >= 0.5 {
            return Err(StatsError::OutOfRange {
                field: "alpha".into(),
                expected: "below 0.5 for a one-sided sequential test",
                value: self.alpha,
            });
        }
        if let Some(prior) = self.prior {
            finite(|| "prior_mean".into(), prior.mean)?;
            positive("prior_variance", prior.variance)?;
        }
        if let Some(p) = self.winsorize_percentile {
            finite(|| "winsorize_percentile".into(), p)?;
            if p <= 0.0 || p > 100.0 {
                return Err(StatsError::OutOfRange {
                    field: "winsorize_percentile".into(),
                    expected: "in (0, 100]",
                    value: p,
                });
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Sufficient statistics
// ---------------------------------------------------------------------------------------------

/// Statistical model of a metric's per-user values (proto `SummaryType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SummaryKind {
    /// Sample mean of per-user values: `μ = Σx/n`, `σ² = (Σx² − (Σx)²/n)/(n − 1)`.
    #[default]
    Mean,
    /// Binomial: `sum` is the number of converted users (so `Σx² = Σx`); `p = Σx/n`,
    /// `σ² = p(1 − p)` (as gbstats, no n − 1 correction).
    Proportion,
    /// `Σx/Σy` over units with the delta method (see [`Summary::moments`]).
    Ratio,
}

/// Sufficient statistics of one variant (proto `VariantSummary`).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Summary {
    /// `n`: users (ratio metrics: the units the sums run over).
    pub users: f64,
    /// `Σx` (proportions: converted users).
    pub sum: f64,
    /// `Σx²` (ignored for proportions, where it equals `Σx`).
    pub sum_squares: f64,
    /// Ratio metrics only: `Σy`, `Σy²` and `Σxy`.
    pub denominator_sum: f64,
    pub denominator_sum_squares: f64,
    pub cross_sum: f64,
}

/// Mean and variance of one variant, the input of [`compare_moments`].
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Moments {
    /// `n` (≥ 2).
    pub users: f64,
    /// The estimate compared across variants (CUPED-adjusted when it applies).
    pub mean: f64,
    /// Variance of one user's (unit's) value: the mean's variance is `variance / users`.
    pub variance: f64,
    /// The mean before CUPED: relative effects divide by the control's, and the delta method
    /// uses both variants'. Equal to `mean` without CUPED.
    pub unadjusted_mean: f64,
}

impl Summary {
    /// A MEAN summary from `n`, `Σx`, `Σx²`.
    pub fn new(users: f64, sum: f64, sum_squares: f64) -> Self {
        Summary { users, sum, sum_squares, ..Default::default() }
    }

    /// A PROPORTION summary: `converted` of `users`.
    pub fn proportion(users: f64, converted: f64) -> Self {
        Summary { users, sum: converted, sum_squares: converted, ..Default::default() }
    }

    /// The MEAN (or PROPORTION, for 0/1 values) summary of per-user values.
    pub fn from_values(values: &[f64]) -> Self {
        let mut summary = Summary { users: values.len() as f64, ..Default::default() };
        for &x in values {
            summary.sum += x;
            summary.sum_squares += x * x;
        }
        summary
    }

    /// The RATIO summary of per-unit `(numerator, denominator)` pairs.
    pub fn from_ratio_values(pairs: &[(f64, f64)]) -> Self {
        let mut summary = Summary { users: pairs.len() as f64, ..Default::default() };
        for &(x, y) in pairs {
            summary.sum += x;
            summary.sum_squares += x * x;
            summary.denominator_sum += y;
            summary.denominator_sum_squares += y * y;
            summary.cross_sum += x * y;
        }
        summary
    }

    /// Mean and per-user variance for `kind`; `label` prefixes field names in errors
    /// (`"control"` → `control.users`).
    ///
    /// - MEAN: `μ = Σx/n`, `σ² = (Σx² − (Σx)²/n)/(n − 1)`.
    /// - PROPORTION: `p = Σx/n`, `σ² = p(1 − p)`; requires `0 ≤ Σx ≤ n`.
    /// - RATIO (delta method): `R = Σx/Σy`, and with `x̄ = Σx/n`, `ȳ = Σy/n`,
    ///   `σ²_x = (Σx² − (Σx)²/n)/(n − 1)`, `σ²_y` likewise and
    ///   `σ_xy = (Σxy − ΣxΣy/n)/(n − 1)`:
    ///   `σ² = σ²_x/ȳ² − 2 x̄ σ_xy/ȳ³ + x̄² σ²_y/ȳ⁴` (= the variance of the linearised values
    ///   `(x − R y)/ȳ`), so `Var(R) ≈ σ²/n`. Requires `Σy ≠ 0`.
    ///
    /// Errors: a non-finite input, `n < 2`, sums no data can produce (beyond rounding, which is
    /// clamped to a zero variance). A zero variance is returned as is; [`compare_moments`]
    /// decides whether it can be used.
    pub fn moments(&self, kind: SummaryKind, label: &str) -> Result<Moments, StatsError> {
        let n = finite(|| path(label, "users"), self.users)?;
        let sum = finite(|| path(label, "sum"), self.sum)?;
        if n < 2.0 {
            return Err(StatsError::TooFewUsers { field: path(label, "users"), value: n });
        }
        match kind {
            SummaryKind::Mean => {
                let sum_squares = finite(|| path(label, "sum_squares"), self.sum_squares)?;
                let variance = sample_variance(n, sum, sum_squares, || path(label, "sum_squares"))?;
                let mean = sum / n;
                Ok(Moments { users: n, mean, variance, unadjusted_mean: mean })
            }
            SummaryKind::Proportion => {
                if !(0.0..=n).contains(&sum) {
                    return Err(StatsError::OutOfRange {
                        field: path(label, "sum"),
                        expected: "between 0 and users (converted users)",
                        value: sum,
                    });
                }
                let p = sum / n;
                Ok(Moments { users: n, mean: p, variance: p * (1.0 - p), unadjusted_mean: p })
            }
            SummaryKind::Ratio => {
                let sum_squares = finite(|| path(label, "sum_squares"), self.sum_squares)?;
                let den_sum = finite(|| path(label, "denominator_sum"), self.denominator_sum)?;
                let den_squares = finite(|| path(label, "denominator_sum_squares"), self.denominator_sum_squares)?;
                let cross = finite(|| path(label, "cross_sum"), self.cross_sum)?;
                if den_sum == 0.0 {
                    return Err(StatsError::ZeroDenominator { field: path(label, "denominator_sum") });
                }
                let var_x = sample_variance(n, sum, sum_squares, || path(label, "sum_squares"))?;
                let var_y = sample_variance(n, den_sum, den_squares, || path(label, "denominator_sum_squares"))?;
                let cov = (cross - sum * den_sum / n) / (n - 1.0);
                let (x_bar, y_bar) = (sum / n, den_sum / n);
                let ratio = sum / den_sum;
                let raw =
                    var_x / (y_bar * y_bar) - 2.0 * x_bar * cov / y_bar.powi(3) + x_bar * x_bar * var_y / y_bar.powi(4);
                let scale = var_x / (y_bar * y_bar) + x_bar * x_bar * var_y / y_bar.powi(4);
                let variance = clamp_variance(raw, scale, || path(label, "cross_sum"))?;
                finite(|| path(label, "denominator_sum"), variance)?;
                Ok(Moments { users: n, mean: ratio, variance, unadjusted_mean: ratio })
            }
        }
    }
}

/// `(Σx² − (Σx)²/n)/(n − 1)`, rejecting `Σx² < (Σx)²/n` beyond rounding.
fn sample_variance(n: f64, sum: f64, sum_squares: f64, field: impl Fn() -> String) -> Result<f64, StatsError> {
    let square_of_sum = sum * sum / n;
    let raw = (sum_squares - square_of_sum) / (n - 1.0);
    let scale = (sum_squares.abs() + square_of_sum) / (n - 1.0);
    clamp_variance(raw, scale, field)
}

/// A variance computed by cancellation: tiny negative values (rounding) become 0, clearly
/// negative ones mean inconsistent sums.
fn clamp_variance(raw: f64, scale: f64, field: impl Fn() -> String) -> Result<f64, StatsError> {
    if raw >= 0.0 {
        return Ok(raw);
    }
    if raw >= -1e-9 * scale.abs() || raw >= -1e-300 {
        Ok(0.0)
    } else {
        Err(StatsError::Inconsistent { field: field(), reason: "the sums imply a negative variance" })
    }
}

impl Moments {
    /// Checks the numbers (finite, `users ≥ 2`, `variance ≥ 0`); `label` prefixes field names.
    pub fn validate(&self, label: &str) -> Result<(), StatsError> {
        let n = finite(|| path(label, "users"), self.users)?;
        if n < 2.0 {
            return Err(StatsError::TooFewUsers { field: path(label, "users"), value: n });
        }
        finite(|| path(label, "mean"), self.mean)?;
        finite(|| path(label, "unadjusted_mean"), self.unadjusted_mean)?;
        let variance = finite(|| path(label, "variance"), self.variance)?;
        if variance < 0.0 {
            return Err(StatsError::OutOfRange {
                field: path(label, "variance"),
                expected: "non-negative",
                value: variance,
            });
        }
        Ok(())
    }

    /// Standard error of the mean, `sqrt(σ²/n)`.
    pub fn standard_error(&self) -> f64 {
        (self.variance / self.users).sqrt()
    }

    /// Normal-approximation interval for the variant's mean at 1 − α:
    /// `μ ± z_{1−α/2} sqrt(σ²/n)` (a zero variance gives the point).
    pub fn confidence_interval(&self, alpha: f64) -> Result<(f64, f64), StatsError> {
        unit_open("alpha", alpha)?;
        self.validate("")?;
        let half = normal_upper_quantile(alpha / 2.0) * self.standard_error();
        Ok((self.mean - half, self.mean + half))
    }
}

// ---------------------------------------------------------------------------------------------
// Comparisons
// ---------------------------------------------------------------------------------------------

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
fn welch_dof(a: &Moments, b: &Moments) -> f64 {
    let (va, vb) = (a.variance / a.users, b.variance / b.users);
    let denominator = va * va / (a.users - 1.0) + vb * vb / (b.users - 1.0);
    let dof = (va + vb).powi(2) / denominator;
    // Bounded by min(n) − 1 ≤ ν ≤ n_A + n_B − 2 mathematically; guard against rounding.
    if dof.is_finite() && dof >= 1.0 { dof } else { (a.users.min(b.users) - 1.0).max(1.0) }
}

/// Whether `effect` moves in the metric's bad direction.
fn is_bad(effect: f64, direction: Direction) -> bool {
    match direction {
        Direction::Increase => effect < 0.0,
        Direction::Decrease => effect > 0.0,
    }
}

/// One scale of a comparison: `effect` and its sampling `variance` (> 0) from the data.
fn estimate(
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
fn win_and_risk(mean: f64, sd: f64, direction: Direction) -> (f64, f64, f64) {
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
fn sequential_half_width(variance: f64, n: f64, tuning: f64, alpha: f64, sided: Sided) -> f64 {
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

// ---------------------------------------------------------------------------------------------
// CUPED
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Sample-ratio mismatch
// ---------------------------------------------------------------------------------------------

/// Sample-ratio-mismatch p-value: Pearson's chi-square goodness of fit of the users per
/// variant against the expected shares, `χ² = Σ (o_i − N w_i)²/(N w_i)` with `N = Σ o_i`,
/// p = `P(χ²_{k−1} > χ²)`. SPEC flags a mismatch at p < 0.001.
///
/// Weights must be finite, positive and sum to 1 (± 1e-6; they are then normalised); at least
/// two variants. No users at all gives p = 1 (no evidence of a mismatch).
pub fn srm_p_value(observed: &[u64], weights: &[f64]) -> Result<f64, StatsError> {
    if observed.len() < 2 {
        return Err(StatsError::TooFewEntries { field: "observed".into(), min: 2, got: observed.len() });
    }
    if weights.len() != observed.len() {
        return Err(StatsError::LengthMismatch {
            field: "weights".into(),
            expected: observed.len(),
            got: weights.len(),
        });
    }
    for (i, &w) in weights.iter().enumerate() {
        positive(&format!("weights[{i}]"), w)?;
    }
    let weight_sum: f64 = weights.iter().sum();
    if (weight_sum - 1.0).abs() > WEIGHT_TOLERANCE {
        return Err(StatsError::WeightsDoNotSumToOne { sum: weight_sum });
    }
    let total: f64 = observed.iter().map(|&o| o as f64).sum();
    if total == 0.0 {
        return Ok(1.0);
    }
    let statistic: f64 = observed
        .iter()
        .zip(weights)
        .map(|(&o, &w)| {
            let expected = total * w / weight_sum;
            (o as f64 - expected).powi(2) / expected
        })
        .sum();
    let dof = (observed.len() - 1) as f64;
    let p = match ChiSquared::new(dof) {
        Ok(chi) => chi.sf(statistic),
        Err(_) => 0.0, // unreachable: dof ≥ 1
    };
    Ok(sanitize_p(p))
}

// ---------------------------------------------------------------------------------------------
// Multiple testing
// ---------------------------------------------------------------------------------------------

/// NaN → 1 (no evidence), others clamped to [0, 1].
fn sanitize_p(p: f64) -> f64 {
    if p.is_nan() { 1.0 } else { p.clamp(0.0, 1.0) }
}

/// Checks that every p-value is a number in [0, 1]; errors name `p_values[i]`.
/// [`adjust_p_values`] itself accepts anything (see there).
pub fn check_p_values(p_values: &[f64]) -> Result<(), StatsError> {
    for (i, &p) in p_values.iter().enumerate() {
        let field = || format!("p_values[{i}]");
        finite(field, p)?;
        if !(0.0..=1.0).contains(&p) {
            return Err(StatsError::OutOfRange { field: field(), expected: "in [0, 1]", value: p });
        }
    }
    Ok(())
}

/// Adjusted p-values in input order, each in [0, 1] and ≥ its raw value.
///
/// With `m` p-values sorted ascending `p_(1) ≤ … ≤ p_(m)`:
/// - Holm (step-down): `p̃_(i) = max_{j ≤ i} min(1, (m − j + 1) p_(j))`;
/// - Benjamini–Hochberg (step-up): `p̃_(i) = min_{j ≥ i} min(1, m p_(j) / j)`;
/// - None: the raw values.
///
/// Total function: a NaN counts as 1 (no evidence) and values outside [0, 1] are clamped; use
/// [`check_p_values`] first to reject them instead.
pub fn adjust_p_values(p_values: &[f64], method: Correction) -> Vec<f64> {
    let p: Vec<f64> = p_values.iter().map(|&p| sanitize_p(p)).collect();
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]).then(a.cmp(&b)));
    let mut adjusted = vec![0.0; m];
    let count = m as f64;
    match method {
        Correction::None => return p,
        Correction::Holm => {
            let mut running = 0.0f64;
            for (rank, &i) in order.iter().enumerate() {
                let value = ((count - rank as f64) * p[i]).min(1.0);
                running = running.max(value);
                adjusted[i] = running;
            }
        }
        Correction::BenjaminiHochberg => {
            let mut running = 1.0f64;
            for (rank, &i) in order.iter().enumerate().rev() {
                // m/j first: the rounded factor then never exceeds Holm's (m − j + 1), so BH ≤ Holm
                // holds in floating point too.
                let value = ((count / (rank as f64 + 1.0)) * p[i]).min(1.0);
                running = running.min(value);
                adjusted[i] = running;
            }
        }
    }
    adjusted
}

// ---------------------------------------------------------------------------------------------
// Power and planning
// ---------------------------------------------------------------------------------------------

/// The per-comparison α when `variants` (including control) are tested against one control:
/// Bonferroni `α/(variants − 1)` for more than two variants, else α.
pub fn bonferroni_alpha(alpha: f64, variants: u32) -> f64 {
    if variants > 2 { alpha / f64::from(variants - 1) } else { alpha }
}

/// `z_{1−α/s} + z_{power}` with `s` = 2 for two-sided tests, 1 otherwise.
fn z_sum(alpha: f64, power: f64, sided: Sided) -> Result<f64, StatsError> {
    unit_open("alpha", alpha)?;
    unit_open("power", power)?;
    Ok(normal_upper_quantile(alpha / sided.tails()) + normal_upper_quantile(1.0 - power))
}

/// The absolute effect for `mde`, which is relative to `|mean|` when `relative`.
fn absolute_mde(mde: f64, mean: f64, relative: bool, mean_field: &str) -> Result<f64, StatsError> {
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
    alpha: f64,
    power: f64,
    sided: Sided,
) -> Result<f64, StatsError> {
    let variance = positive("baseline_variance", baseline_variance)?;
    let delta = absolute_mde(mde, baseline_mean, relative, "baseline_mean")?;
    let z = z_sum(alpha, power, sided)?;
    finite(|| "mde".into(), z * z * 2.0 * variance / (delta * delta))
}

/// [`sample_size_per_variant`] for a proportion: `σ²_A = p(1 − p)` at the baseline and
/// `σ²_B = p′(1 − p′)` at `p′ = p + Δ`, which must stay within (0, 1].
pub fn sample_size_per_variant_proportion(
    baseline_proportion: f64,
    mde: f64,
    relative: bool,
    alpha: f64,
    power: f64,
    sided: Sided,
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
    let z = z_sum(alpha, power, sided)?;
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
    alpha: f64,
    power: f64,
    sided: Sided,
) -> Result<f64, StatsError> {
    let n = positive("users_per_variant", users_per_variant)?;
    let variance = positive("variance", variance)?;
    let delta = mde_from_standard_error((2.0 * variance / n).sqrt(), alpha, power, sided)?;
    scale_effect(delta, mean, relative)
}

/// Absolute effect → relative to `|mean|` when `relative`.
fn scale_effect(delta: f64, mean: f64, relative: bool) -> Result<f64, StatsError> {
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
    alpha: f64,
    power: f64,
    sided: Sided,
) -> Result<f64, StatsError> {
    let n = positive("users_per_variant", users_per_variant)?;
    let p = unit_open("baseline_proportion", baseline_proportion)?;
    let k = z_sum(alpha, power, sided)?;
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

// ---------------------------------------------------------------------------------------------
// Winsorizing
// ---------------------------------------------------------------------------------------------

/// Caps `values` at their `percentile` (0–100, e.g. 99) and returns the cap.
///
/// The cap is the percentile of the finite values with linear interpolation between the
/// closest ranks (numpy's default): with the `m` values sorted, rank `h = (m − 1)·q/100`,
/// `cap = v_⌊h⌋ + (h − ⌊h⌋)(v_⌈h⌉ − v_⌊h⌋)`. Values above the cap (including +∞) become the
/// cap; NaNs are left alone and take no part. Pass the values pooled over all variants.
/// A percentile outside [0, 100] is clamped into it; with no finite value or a NaN percentile
/// nothing is capped and the cap is +∞. (StatsConfig's 0 = off is the caller's business.)
pub fn winsorize_cap(values: &mut [f64], percentile: f64) -> f64 {
    if percentile.is_nan() {
        return f64::INFINITY;
    }
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return f64::INFINITY;
    }
    let q = percentile.clamp(0.0, 100.0) / 100.0;
    let rank = (sorted.len() - 1) as f64 * q;
    let low = (rank.floor() as usize).min(sorted.len() - 1);
    let fraction = rank - low as f64;
    let (_, &mut below, above) = sorted.select_nth_unstable_by(low, f64::total_cmp);
    let cap = if fraction > 0.0 && !above.is_empty() {
        let next = above.iter().copied().fold(f64::INFINITY, f64::min);
        below + fraction * (next - below)
    } else {
        below
    };
    for v in values.iter_mut() {
        if *v > cap {
            *v = cap;
        }
    }
    cap
}

// ---------------------------------------------------------------------------------------------
// Distributions
// ---------------------------------------------------------------------------------------------
//
// statrs' normal functions are accurate; its Student's t is accurate for moderate degrees of
// freedom but its inverse CDF drifts (and can hang) for very large ones, which Welch's test
// produces routinely (ν ≈ n). So: t tail probabilities come from statrs up to 10⁶ degrees of
// freedom and from a normal transformation above; t quantiles are solved by safeguarded Newton
// iterations on statrs' tail below 10⁵ degrees of freedom and by the Cornish–Fisher expansion
// above (error O(ν⁻⁵)).

const T_NORMAL_TAIL_DOF: f64 = 1e6;
const T_CORNISH_FISHER_DOF: f64 = 1e5;

fn normal_pdf(x: f64) -> f64 {
    (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

fn normal_cdf(x: f64) -> f64 {
    0.5 * erf::erfc(-x / std::f64::consts::SQRT_2)
}

fn normal_sf(x: f64) -> f64 {
    0.5 * erf::erfc(x / std::f64::consts::SQRT_2)
}

/// `z` with `P(Z > z) = tail`, for `tail` in (0, 1) (0 → +∞, 1 → −∞).
fn normal_upper_quantile(tail: f64) -> f64 {
    if tail <= 0.0 {
        f64::INFINITY
    } else if tail >= 1.0 {
        f64::NEG_INFINITY
    } else {
        std::f64::consts::SQRT_2 * erf::erfc_inv(2.0 * tail)
    }
}

/// `P(T_ν > x)`.
fn t_sf(x: f64, dof: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if dof > T_NORMAL_TAIL_DOF {
        if x.abs() > 1e150 {
            return if x > 0.0 { 0.0 } else { 1.0 };
        }
        // Normal deviate of t (A&S 26.7.8-type transformation, relative error O(ν⁻²)).
        let z = x * (1.0 - 1.0 / (4.0 * dof)) / (1.0 + x * x / (2.0 * dof)).sqrt();
        return normal_sf(z);
    }
    match StudentsT::new(0.0, 1.0, dof) {
        Ok(t) => t.sf(x),
        Err(_) => normal_sf(x),
    }
}

/// `x ≥ 0` with `P(T_ν > x) = tail`, for `tail` in (0, 0.5].
fn t_upper_quantile(tail: f64, dof: f64) -> f64 {
    if tail >= 0.5 {
        return 0.0;
    }
    let z = normal_upper_quantile(tail);
    if !z.is_finite() {
        return z;
    }
    // Cornish–Fisher expansion (Abramowitz & Stegun 26.7.5).
    let cornish_fisher = {
        let (z2, v) = (z * z, dof);
        let g1 = (z2 + 1.0) * z / 4.0;
        let g2 = ((5.0 * z2 + 16.0) * z2 + 3.0) * z / 96.0;
        let g3 = (((3.0 * z2 + 19.0) * z2 + 17.0) * z2 - 15.0) * z / 384.0;
        let g4 = ((((79.0 * z2 + 776.0) * z2 + 1482.0) * z2 - 1920.0) * z2 - 945.0) * z / 92160.0;
        z + g1 / v + g2 / (v * v) + g3 / v.powi(3) + g4 / v.powi(4)
    };
    if dof >= T_CORNISH_FISHER_DOF {
        return cornish_fisher;
    }
    let Ok(dist) = StudentsT::new(0.0, 1.0, dof) else {
        return z;
    };
    // Bracket [lo, hi] with sf(lo) > tail ≥ sf(hi), then Newton steps kept inside the bracket.
    let mut lo = 0.0;
    let mut hi = if cornish_fisher.is_finite() { cornish_fisher.max(1.0) } else { 1.0 };
    let mut doublings = 0;
    while dist.sf(hi) > tail {
        lo = hi;
        hi *= 2.0;
        doublings += 1;
        if !hi.is_finite() || doublings > 1100 {
            return f64::INFINITY;
        }
    }
    let mut x = if cornish_fisher > lo && cornish_fisher < hi { cornish_fisher } else { 0.5 * (lo + hi) };
    for _ in 0..200 {
        let f = dist.sf(x) - tail;
        if f == 0.0 {
            return x;
        }
        if f > 0.0 {
            lo = x;
        } else {
            hi = x;
        }
        let newton = x + f / dist.pdf(x);
        let next = if newton.is_finite() && newton > lo && newton < hi { newton } else { 0.5 * (lo + hi) };
        if (next - x).abs() <= 4.0 * f64::EPSILON * next.abs() || hi - lo <= 4.0 * f64::EPSILON * hi {
            return next;
        }
        x = next;
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `actual` rounds to `expected` at `digits` significant digits.
    #[track_caller]
    fn assert_sig(actual: f64, expected: f64, digits: usize) {
        let fmt = |x: f64| format!("{:.*e}", digits - 1, x);
        assert_eq!(fmt(actual), fmt(expected), "actual {actual}, expected {expected} to {digits} significant digits");
    }

    /// Relative (or, near 0, absolute) agreement within `tol`.
    #[track_caller]
    fn assert_close(actual: f64, expected: f64, tol: f64) {
        if expected.is_infinite() {
            assert_eq!(actual, expected);
            return;
        }
        let err = (actual - expected).abs() / expected.abs().max(1e-300);
        assert!(err <= tol || (actual - expected).abs() <= tol * 1e-3, "actual {actual}, expected {expected}");
    }

    const A: Summary = Summary {
        users: 3407.0,
        sum: 1396.87,
        sum_squares: 52377.9767,
        denominator_sum: 0.0,
        denominator_sum_squares: 0.0,
        cross_sum: 0.0,
    };
    const B: Summary = Summary {
        users: 3461.0,
        sum: 2422.7,
        sum_squares: 134698.29,
        denominator_sum: 0.0,
        denominator_sum_squares: 0.0,
        cross_sum: 0.0,
    };

    fn config() -> StatsConfig {
        StatsConfig::default()
    }

    // ---- SPEC §8 reference numbers (GrowthBook gbstats) ------------------------------------

    #[test]
    fn spec_means_two_sided_relative() {
        let r = compare(&A, &B, SummaryKind::Mean, &config()).unwrap();
        assert_eq!(r.difference, Difference::Relative);
        assert_sig(r.effect, 0.70732, 5);
        assert_sig(r.ci_lower, -0.03526, 4);
        assert_sig(r.ci_upper, 1.44989, 6);
        assert_sig(r.p_value, 0.06191, 4);
        // gbstats' uplift standard deviation for the same test.
        assert_sig(r.standard_error, 0.37879, 5);
        assert!(!r.significant);
        assert_eq!(r.adjusted_p_value, r.p_value);
    }

    #[test]
    fn spec_means_two_sided_absolute() {
        let cfg = StatsConfig { difference: Difference::Absolute, ..config() };
        let r = compare(&A, &B, SummaryKind::Mean, &cfg).unwrap();
        assert_sig(r.effect, 0.29, 4);
        assert_sig(r.ci_lower, 0.04538, 4);
        assert_sig(r.ci_upper, 0.53462, 5);
        assert_sig(r.p_value, 0.02016, 4);
        assert!(r.significant);
        // Both scales are always reported.
        assert_sig(r.absolute.effect, 0.29, 4);
        assert_sig(r.relative.unwrap().effect, 0.70732, 5);
        assert_sig(r.relative.unwrap().p_value, 0.06191, 4);
    }

    #[test]
    fn spec_means_greater_relative() {
        let cfg = StatsConfig { sided: Sided::Greater, ..config() };
        let r = compare(&A, &B, SummaryKind::Mean, &cfg).unwrap();
        assert_sig(r.ci_lower, 0.084157, 5);
        assert_eq!(r.ci_upper, f64::INFINITY);
        assert_sig(r.p_value, 0.030956, 5);
        assert!(r.significant);
    }

    #[test]
    fn spec_sequential_two_sided() {
        let a = Summary { users: 3000.0, ..A };
        let cfg = StatsConfig { sequential: true, sequential_tuning: 1000.0, ..config() };
        let r = compare(&a, &B, SummaryKind::Mean, &cfg).unwrap();
        assert_sig(r.effect, 0.50336, 5);
        assert_sig(r.ci_lower, -0.55844, 5);
        assert_sig(r.ci_upper, 1.56516, 6);
        assert!(!r.significant);
    }

    #[test]
    fn spec_proportions() {
        let r = compare(
            &Summary::proportion(28.0, 14.0),
            &Summary::proportion(30.0, 16.0),
            SummaryKind::Proportion,
            &config(),
        )
        .unwrap();
        assert_sig(r.effect, 0.06667, 4);
        assert_sig(r.ci_lower, -0.47767, 5);
        assert_sig(r.ci_upper, 0.61101, 5);
        assert_sig(r.p_value, 0.80707, 5);
    }

    #[test]
    fn spec_bayesian_proportions() {
        let cfg = StatsConfig { engine: StatsMethod::Bayesian, ..config() };
        let r = compare(
            &Summary::proportion(100.0, 49.0),
            &Summary::proportion(100.0, 51.0),
            SummaryKind::Proportion,
            &cfg,
        )
        .unwrap();
        assert_sig(r.effect, 0.04082, 4);
        assert_sig(r.ci_lower, -0.24779, 5);
        assert_sig(r.ci_upper, 0.32943, 5);
        assert_sig(r.chance_to_win, 0.60918, 5);
        assert_sig(r.risk_control, 0.0814, 4);
        assert_sig(r.risk_treatment, 0.04058, 4);
        assert!(!r.significant);
    }

    #[test]
    fn spec_srm() {
        assert_sig(srm_p_value(&[1000, 1100], &[0.5, 0.5]).unwrap(), 0.0290963, 6);
    }

    #[test]
    fn spec_holm_and_bh() {
        let holm = adjust_p_values(&[0.01, 0.04, 0.03, 0.005, 0.55, 0.6], Correction::Holm);
        for (a, e) in holm.iter().zip([0.05, 0.12, 0.12, 0.03, 1.0, 1.0]) {
            assert_close(*a, e, 1e-12);
        }
        let bh = adjust_p_values(&[0.898, 0.138, 0.007, 0.964, 0.538, 0.006, 0.138], Correction::BenjaminiHochberg);
        for (a, e) in bh.iter().zip([0.964, 0.2415, 0.0245, 0.964, 0.7532, 0.0245, 0.2415]) {
            assert_close(*a, e, 1e-12);
        }
    }

    // ---- Cross-checks against scipy / statsmodels (scipy 1.17.1, statsmodels 0.15.0) -------

    const WELCH_A: [f64; 10] = [12.1, 9.8, 11.4, 10.2, 13.5, 8.9, 10.7, 11.9, 9.4, 12.6];
    const WELCH_B: [f64; 12] = [14.2, 7.1, 16.8, 11.5, 18.3, 6.9, 15.4, 12.2, 19.7, 9.8, 13.1, 17.6];

    fn absolute(sided: Sided, alpha: f64) -> StatsConfig {
        StatsConfig { difference: Difference::Absolute, sided, alpha, ..config() }
    }

    #[test]
    fn welch_unequal_variances_matches_scipy() {
        let (a, b) = (Summary::from_values(&WELCH_A), Summary::from_values(&WELCH_B));
        // r = scipy.stats.ttest_ind(b, a, equal_var=False, alternative=...);
        // (r.statistic, r.pvalue, r.df, *r.confidence_interval(0.95))
        let cases = [
            (Sided::TwoSided, 0.07699929703581387, -0.3086137187936764, 5.308613718793673),
            (Sided::Greater, 0.03849964851790694, 0.19299575198624996, f64::INFINITY),
            (Sided::Less, 0.961500351482093, f64::NEG_INFINITY, 4.8070042480137465),
        ];
        for (sided, p, lower, upper) in cases {
            let r = compare(&a, &b, SummaryKind::Mean, &absolute(sided, 0.05)).unwrap();
            assert_close(r.effect / r.standard_error, 1.907251663469214, 1e-10);
            assert_close(r.degrees_of_freedom, 14.147318978421428, 1e-10);
            assert_close(r.p_value, p, 1e-9);
            assert_close(r.ci_lower, lower, 1e-9);
            assert_close(r.ci_upper, upper, 1e-9);
        }
        // ttest_ind(b, a, equal_var=False).confidence_interval(0.90)
        let r = compare(&a, &b, SummaryKind::Mean, &absolute(Sided::TwoSided, 0.10)).unwrap();
        assert_close(r.ci_lower, 0.19299575198624952, 1e-9);
        assert_close(r.ci_upper, 4.8070042480137465, 1e-9);
        // Relative scale: delta method with scipy.stats.t.sf / t.ppf at the same df.
        let r = compare(&a, &b, SummaryKind::Mean, &config()).unwrap();
        assert_close(r.effect, 0.22624434389140255, 1e-12);
        assert_close(r.standard_error, 0.12244571496191999, 1e-10);
        assert_close(r.p_value, 0.08565824277564832, 1e-9);
        assert_close(r.ci_lower, -0.03611926609594959, 1e-9);
        assert_close(r.ci_upper, 0.48860795387875466, 1e-9);
        // scipy.stats.norm.sf(0, effect, se): flat-prior chance to win.
        assert_close(r.chance_to_win, 0.9676779483204933, 1e-10);
    }

    #[test]
    fn tiny_samples_match_scipy() {
        let a = Summary::from_values(&[1.0, 3.0]);
        let b = Summary::from_values(&[2.0, 6.0, 7.0]);
        let r = compare(&a, &b, SummaryKind::Mean, &absolute(Sided::TwoSided, 0.05)).unwrap();
        // scipy.stats.ttest_ind([2, 6, 7], [1, 3], equal_var=False)
        assert_close(r.effect / r.standard_error, 1.6431676725154982, 1e-10);
        assert_close(r.p_value, 0.19934523044337388, 1e-9);
        assert_close(r.degrees_of_freedom, 2.9850746268656714, 1e-10);
        assert_close(r.ci_lower, -2.8267951763894894, 1e-9);
        assert_close(r.ci_upper, 8.826795176389489, 1e-9);
    }

    #[test]
    fn one_constant_arm_matches_scipy() {
        let a = Summary::from_values(&[5.0, 5.0, 5.0, 5.0]);
        let b = Summary::from_values(&[4.0, 6.0, 7.0, 5.0, 8.0]);
        let r = compare(&a, &b, SummaryKind::Mean, &absolute(Sided::TwoSided, 0.05)).unwrap();
        // scipy.stats.ttest_ind([4, 6, 7, 5, 8], [5, 5, 5, 5], equal_var=False): df = n_B − 1.
        assert_close(r.effect / r.standard_error, std::f64::consts::SQRT_2, 1e-10); // 1.414213562373095
        assert_close(r.p_value, 0.2301996410804989, 1e-9);
        assert_close(r.degrees_of_freedom, 4.0, 1e-12);
        assert_close(r.ci_lower, -0.9632431614775572, 1e-9);
        assert_close(r.ci_upper, 2.963243161477557, 1e-9);
    }

    #[test]
    fn proportions_match_scipy_from_stats() {
        // scipy.stats.ttest_ind_from_stats(p2, sqrt(p2(1-p2)), n2, p1, sqrt(p1(1-p1)), n1,
        // equal_var=False)
        let cases = [
            ((1000.0, 120.0), (1000.0, 150.0), 1.964943729729648, 0.0495603416091694),
            ((28.0, 14.0), (30.0, 16.0), 0.2539807477795634, 0.8004455444388893),
        ];
        for ((n1, k1), (n2, k2), t, p) in cases {
            let r = compare(
                &Summary::proportion(n1, k1),
                &Summary::proportion(n2, k2),
                SummaryKind::Proportion,
                &absolute(Sided::TwoSided, 0.05),
            )
            .unwrap();
            assert_close(r.effect / r.standard_error, t, 1e-10);
            assert_close(r.p_value, p, 1e-9);
        }
    }

    #[test]
    fn ratio_matches_linearised_scipy() {
        let a = [(3.0, 2.0), (5.0, 4.0), (0.0, 1.0), (7.0, 3.0), (2.0, 2.0), (4.0, 5.0), (6.0, 3.0), (1.0, 1.0)];
        let b = [
            (4.0, 2.0),
            (8.0, 3.0),
            (2.0, 2.0),
            (9.0, 4.0),
            (3.0, 1.0),
            (5.0, 2.0),
            (7.0, 5.0),
            (6.0, 3.0),
            (2.0, 1.0),
        ];
        let (sa, sb) = (Summary::from_ratio_values(&a), Summary::from_ratio_values(&b));
        // Delta-method variance = variance (ddof=1) of the linearised values (x − R y)/ȳ, in numpy.
        let ma = sa.moments(SummaryKind::Ratio, "a").unwrap();
        let mb = sb.moments(SummaryKind::Ratio, "b").unwrap();
        assert_close(ma.mean, 1.3333333333333333, 1e-12);
        assert_close(mb.mean, 2.0, 1e-12);
        assert_close(ma.variance, 0.46992765360112293, 1e-10);
        assert_close(mb.variance, 0.3827977315689981, 1e-10);
        // scipy.stats.ttest_ind_from_stats(R_B, s_B, 9, R_A, s_A, 8, equal_var=False); CI with
        // scipy.stats.t.ppf(0.975, df).
        let r = compare(&sa, &sb, SummaryKind::Ratio, &absolute(Sided::TwoSided, 0.05)).unwrap();
        assert_close(r.effect / r.standard_error, 2.094882542933494, 1e-10);
        assert_close(r.p_value, 0.054494128958707165, 1e-9);
        assert_close(r.degrees_of_freedom, 14.263636058498491, 1e-10);
        assert_close(r.ci_lower, -0.014699633197570505, 1e-8);
        assert_close(r.ci_upper, 1.348032966530904, 1e-9);
    }

    #[test]
    fn cuped_matches_scipy_on_adjusted_values() {
        let xa = [10.1, 9.8, 9.3, 8.5, 7.5, 7.1, 8.3, 11.9, 7.0, 8.2, 9.9, 11.2];
        let pa = [10.0, 10.9, 9.2, 7.3, 8.6, 7.0, 10.2, 14.0, 8.5, 8.1, 11.5, 11.1];
        let xb = [10.4, 10.0, 4.6, 9.4, 9.3, 10.9, 8.3, 7.9, 9.1, 8.8, 12.5, 10.7, 11.3, 11.6];
        let pb = [10.5, 9.4, 2.4, 8.4, 9.9, 10.3, 5.4, 8.6, 7.1, 7.6, 13.2, 7.6, 9.9, 12.7];
        let covariate = |x: &[f64], p: &[f64]| Covariate {
            sum: p.iter().sum(),
            sum_squares: p.iter().map(|v| v * v).sum(),
            cross_sum: x.iter().zip(p).map(|(a, b)| a * b).sum(),
        };
        let summaries = [Summary::from_values(&xa), Summary::from_values(&xb)];
        let covariates = [covariate(&xa, &pa), covariate(&xb, &pb)];
        let adj = cuped_adjust(&summaries, &covariates, SummaryKind::Mean).unwrap();
        // numpy: theta = cov(X, P)/var(P) over both variants; y = x − theta (p − P̄);
        // scipy.stats.ttest_ind(y_b, y_a, equal_var=False)
        assert_close(adj.theta, 0.5938219434581975, 1e-10);
        assert_close(adj.moments[0].mean, 8.774323556041093, 1e-10);
        assert_close(adj.moments[1].mean, 9.879151237679064, 1e-10);
        assert_close(adj.moments[0].variance, 0.6833709336019189, 1e-9);
        assert_close(adj.moments[1].variance, 0.7993067276366267, 1e-9);
        assert_close(adj.variance_reduction, 0.7616322547725449, 1e-9);
        assert_eq!(adj.moments[0].unadjusted_mean, summaries[0].sum / 12.0);
        let cfg = absolute(Sided::TwoSided, 0.05);
        let r = compare_moments(&adj.moments[0], &adj.moments[1], &cfg).unwrap();
        assert_close(r.effect / r.standard_error, 3.2716301325705435, 1e-9);
        assert_close(r.p_value, 0.0032466889975331374, 1e-8);
        assert_close(r.ci_lower, 0.4076001228042676, 1e-9);
        assert_close(r.ci_upper, 1.8020552404716748, 1e-9);
        // Ratio metrics are left alone.
        let ratio = Summary::from_ratio_values(&[(1.0, 2.0), (2.0, 2.0), (4.0, 3.0)]);
        let plain = cuped_adjust(&[ratio, ratio], &covariates, SummaryKind::Ratio).unwrap();
        assert_eq!(plain.theta, 0.0);
        assert_eq!(plain.moments[0], ratio.moments(SummaryKind::Ratio, "").unwrap());
    }

    #[test]
    fn cuped_without_covariate_spread_is_a_no_op() {
        let summaries = [Summary::from_values(&[1.0, 2.0, 3.0]), Summary::from_values(&[2.0, 3.0, 5.0])];
        let flat = |x: &[f64]| Covariate { sum: 3.0, sum_squares: 3.0, cross_sum: x.iter().sum() };
        let adj =
            cuped_adjust(&summaries, &[flat(&[1.0, 2.0, 3.0]), flat(&[2.0, 3.0, 5.0])], SummaryKind::Mean).unwrap();
        assert_eq!(adj.theta, 0.0);
        assert_eq!(adj.variance_reduction, 0.0);
        assert_eq!(adj.moments[1], summaries[1].moments(SummaryKind::Mean, "").unwrap());
    }

    #[test]
    fn srm_matches_scipy_chisquare() {
        // scipy.stats.chisquare(observed, expected).pvalue
        assert_close(srm_p_value(&[5000, 2400, 2600], &[0.5, 0.25, 0.25]).unwrap(), 0.018315638888734182, 1e-9);
        assert_close(srm_p_value(&[50, 60, 40, 50], &[0.25; 4]).unwrap(), 0.26146412994911117, 1e-9);
        assert_close(srm_p_value(&[8100, 1900], &[0.8, 0.2]).unwrap(), 0.01241933065155227, 1e-9);
        assert_close(srm_p_value(&[1000, 1100], &[0.5, 0.5]).unwrap(), 0.029096331741252267, 1e-9);
        assert_eq!(srm_p_value(&[0, 0], &[0.5, 0.5]).unwrap(), 1.0);
        assert_eq!(srm_p_value(&[10, 10], &[0.5, 0.5]).unwrap(), 1.0);
    }

    #[test]
    fn corrections_match_statsmodels() {
        let p = [0.021, 0.001, 0.3, 0.047, 0.047, 0.9, 0.0004, 0.012];
        // statsmodels.stats.multitest.multipletests(p, method="holm")[1]
        let holm = [0.105, 0.007, 0.6, 0.188, 0.188, 0.9, 0.0032, 0.072];
        // statsmodels.stats.multitest.multipletests(p, method="fdr_bh")[1]
        let bh = [0.042, 0.004, 0.34285714285714286, 0.06266666666666666, 0.06266666666666666, 0.9, 0.0032, 0.032];
        for (a, e) in adjust_p_values(&p, Correction::Holm).iter().zip(holm) {
            assert_close(*a, e, 1e-12);
        }
        for (a, e) in adjust_p_values(&p, Correction::BenjaminiHochberg).iter().zip(bh) {
            assert_close(*a, e, 1e-12);
        }
        assert_eq!(adjust_p_values(&p, Correction::None), p.to_vec());
        assert!(adjust_p_values(&[], Correction::Holm).is_empty());
        // NaN counts as 1; out-of-range values are clamped (check_p_values rejects them).
        assert_eq!(adjust_p_values(&[f64::NAN, 0.01], Correction::Holm), vec![1.0, 0.02]);
        assert_eq!(adjust_p_values(&[-0.5, 2.0], Correction::None), vec![0.0, 1.0]);
        assert!(check_p_values(&[0.0, 0.5, 1.0]).is_ok());
        let err = check_p_values(&[0.5, 1.5]).unwrap_err();
        assert_eq!(err.field(), Some("p_values[1]"));
        assert_eq!(err.to_string(), "p_values[1] must be in [0, 1], got 1.5");
    }

    #[test]
    fn sample_size_matches_statsmodels() {
        // Mean 10, variance 4, +5% relative → Δ = 0.5, effect size d = Δ/σ = 0.25.
        // statsmodels NormalIndPower().solve_power(effect_size=0.25, alpha=0.05, power=0.8,
        // ratio=1, alternative=...) (it also counts the far tail of a two-sided test).
        let n = sample_size_per_variant(10.0, 4.0, 0.05, true, 0.05, 0.8, Sided::TwoSided).unwrap();
        assert_close(n, 251.16353630180953, 1e-5);
        let n = sample_size_per_variant(10.0, 4.0, 0.5, false, 0.05, 0.8, Sided::Greater).unwrap();
        // statsmodels' root finder gives 197.84183122339462; the closed form
        // 2 (norm.isf(0.05) + norm.isf(0.2))² / 0.25² (scipy) is exact:
        assert_close(n, 197.84183122339462, 1e-8);
        assert_close(n, 197.84183142463266, 1e-13);
        // NormalIndPower().solve_power(effect_size=0.1, alpha=0.01, power=0.9)
        let n = sample_size_per_variant(0.0, 1.0, 0.1, false, 0.01, 0.9, Sided::TwoSided).unwrap();
        assert_close(n, 2975.8774332994276, 1e-6);
        // TTestIndPower gives 252.13 for the first case: the t-test needs about one user more.
        // Proportions, 10% → 11%: statsmodels.stats.power.normal_sample_size_one_tail(0.01, 0.8,
        // 0.05 / 2, std_null=sqrt(0.1·0.9 + 0.11·0.89))
        let n = sample_size_per_variant_proportion(0.1, 0.1, true, 0.05, 0.8, Sided::TwoSided).unwrap();
        assert_close(n, 14748.045020841955, 1e-9);
        let n = sample_size_per_variant_proportion(0.1, 0.01, false, 0.05, 0.8, Sided::Less).unwrap();
        assert_close(n, 11617.025038965163, 1e-9);
        // Bonferroni split for more than two variants.
        assert_eq!(bonferroni_alpha(0.05, 2), 0.05);
        assert_close(bonferroni_alpha(0.06, 4), 0.02, 1e-15);
    }

    #[test]
    fn power_and_mde_match_statsmodels() {
        // NormalIndPower().power(effect_size=0.2, nobs1=300, alpha=0.05, ratio=1, alternative=...)
        let p = power(0.2, 300.0, 1.0, 0.0, false, 0.05, Sided::TwoSided).unwrap();
        assert_close(p, 0.687770420076401, 1e-9);
        let p = power(0.2, 300.0, 1.0, 0.0, false, 0.05, Sided::Greater).unwrap();
        assert_close(p, 0.789485152686922, 1e-9);
        let p = power(0.02, 100.0, 1.0, 0.0, false, 0.05, Sided::TwoSided).unwrap();
        assert_close(p, 0.05229419561671021, 1e-9);
        // Relative: 2% of a mean of 10 with σ = 1 is d = 0.2.
        let p = power(0.02, 300.0, 1.0, 10.0, true, 0.05, Sided::TwoSided).unwrap();
        assert_close(p, 0.687770420076401, 1e-9);
        // NormalIndPower().solve_power(nobs1=1000, alpha=0.05, power=0.8) = 0.1252903 counts the
        // far tail of the two-sided test (3e-6 smaller); the closed form
        // (norm.isf(0.025) + norm.isf(0.2)) sqrt(2/1000) = 0.12529069984918348 (scipy) does not.
        // σ = 3 → Δ = 3d.
        let mde = minimum_detectable_effect(1000.0, 9.0, 0.0, false, 0.05, 0.8, Sided::TwoSided).unwrap();
        assert_close(mde, 3.0 * 0.1252903452971738, 1e-5);
        assert_close(mde, 3.0 * 0.12529069984918348, 1e-13);
        let rel = minimum_detectable_effect(1000.0, 9.0, 30.0, true, 0.05, 0.8, Sided::TwoSided).unwrap();
        assert_close(rel, 0.12529069984918348 / 10.0, 1e-13);
        // MDE and sample size are inverses.
        let n = sample_size_per_variant(30.0, 9.0, rel, true, 0.05, 0.8, Sided::TwoSided).unwrap();
        assert_close(n, 1000.0, 1e-12);
        let d =
            minimum_detectable_effect_proportion(14748.045020841955, 0.1, false, 0.05, 0.8, Sided::TwoSided).unwrap();
        assert_close(d, 0.01, 1e-9);
        let r =
            minimum_detectable_effect_proportion(14748.045020841955, 0.1, true, 0.05, 0.8, Sided::TwoSided).unwrap();
        assert_close(r, 0.1, 1e-9);
        // Power at the MDE is the requested power (one-sided: exactly).
        let se = 0.37;
        let mde = mde_from_standard_error(se, 0.05, 0.8, Sided::Greater).unwrap();
        // (statrs' erfc is good to about 1e-10 relative, hence the tolerance.)
        assert_close(power_from_standard_error(mde, se, 0.05, Sided::Greater).unwrap(), 0.8, 1e-9);
        assert_close(power_from_standard_error(-mde, se, 0.05, Sided::Less).unwrap(), 0.8, 1e-9);
    }

    #[test]
    fn planning_errors() {
        let err = sample_size_per_variant(0.0, 4.0, 0.05, true, 0.05, 0.8, Sided::TwoSided).unwrap_err();
        assert_eq!(err, StatsError::ZeroControlMean { field: "baseline_mean".into() });
        let err = sample_size_per_variant(10.0, 0.0, 0.05, true, 0.05, 0.8, Sided::TwoSided).unwrap_err();
        assert_eq!(err.field(), Some("baseline_variance"));
        let err = sample_size_per_variant(10.0, 4.0, 0.0, true, 0.05, 0.8, Sided::TwoSided).unwrap_err();
        assert_eq!(err.field(), Some("mde"));
        let err = sample_size_per_variant(10.0, 4.0, 0.05, true, 0.05, 1.0, Sided::TwoSided).unwrap_err();
        assert_eq!(err.to_string(), "power must be in (0, 1), got 1");
        let err = sample_size_per_variant_proportion(0.6, 1.0, true, 0.05, 0.8, Sided::TwoSided).unwrap_err();
        assert_eq!(err.field(), Some("mde"));
        let err = sample_size_per_variant_proportion(0.0, 0.1, true, 0.05, 0.8, Sided::TwoSided).unwrap_err();
        assert_eq!(err.field(), Some("baseline_proportion"));
        let err = minimum_detectable_effect_proportion(3.0, 0.9, false, 0.05, 0.8, Sided::TwoSided).unwrap_err();
        assert_eq!(err.field(), Some("users_per_variant"));
        let err = power(0.1, 0.0, 1.0, 1.0, false, 0.05, Sided::TwoSided).unwrap_err();
        assert_eq!(err.field(), Some("users_per_variant"));
        let err = power_from_standard_error(f64::NAN, 1.0, 0.05, Sided::TwoSided).unwrap_err();
        assert_eq!(err.field(), Some("effect"));
    }

    #[test]
    fn winsorize_matches_numpy() {
        let values = [
            3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0, 5.0, 8.0, 9.0, 7.0, 9.0, 3.0, 2.0, 3.0, 8.0, 4.0, 6.0,
            2.0, 6.0, 4.0, 3.0, 3.0, 8.0, 3.0, 2.0, 7.0, 9.0, 5.0, 100.0,
        ];
        // numpy.percentile(values, q) (linear interpolation)
        for (q, expected) in [(99.0, 70.87999999999997), (90.0, 9.0), (50.0, 5.0), (95.5, 9.0)] {
            let mut v = values;
            let cap = winsorize_cap(&mut v, q);
            assert_close(cap, expected, 1e-12);
            assert!(v.iter().all(|&x| x <= cap));
            // Only values above the cap change, and they become the cap.
            for (before, after) in values.iter().zip(v) {
                assert_eq!(after, before.min(cap));
            }
        }
        let mut v = [1.0, f64::NAN, 3.0, f64::INFINITY];
        assert_eq!(winsorize_cap(&mut v, 100.0), 3.0);
        assert!(v[1].is_nan());
        assert_eq!(v[3], 3.0);
        assert_eq!(winsorize_cap(&mut [], 99.0), f64::INFINITY);
        assert_eq!(winsorize_cap(&mut [2.0, 1.0], f64::NAN), f64::INFINITY);
        assert_eq!(winsorize_cap(&mut [2.0, 1.0], 0.0), 1.0);
        assert_eq!(winsorize_cap(&mut [7.0], 50.0), 7.0);
    }

    #[test]
    fn t_distribution_matches_scipy() {
        // scipy.stats.t.ppf(0.975, df), t.ppf(0.95, df), t.isf(1e-8, df), t.sf(2.5, df),
        // t.sf(6, df)
        let cases = [
            (1.0, 12.706204736174694, 6.313751514675037, 31830988.61837906, 0.12111894159084341, 0.05256845671125344),
            (2.5, 3.5746548420036817, 2.5582186141359355, 1389.227583027538, 0.0522849815390777, 0.0076408649427614495),
            (
                7.3,
                2.345066736547703,
                1.8829300179564308,
                25.679425650359136,
                0.019825117332800214,
                0.00023087223893739333,
            ),
            (
                5841.742032093565,
                1.9603701569544807,
                1.6451145101402425,
                5.619814774099072,
                0.00622326713962463,
                1.0457871319849853e-09,
            ),
            (2e5, 1.959975845966768, 1.6448612458327154, 5.612229201538643, 0.00621006245618106, 9.882749439674027e-10),
            (
                3e6,
                1.9599647752974443,
                1.6448541348746792,
                5.612016440835273,
                0.006209691800834884,
                9.867000543858257e-10,
            ),
            (
                1e9,
                1.959963986912325,
                1.6448536284752415,
                5.612001289764664,
                0.006209665405201246,
                9.865879822492407e-10,
            ),
        ];
        for (dof, q975, q95, q_tiny, sf25, sf6) in cases {
            assert_close(t_upper_quantile(0.025, dof), q975, 1e-11);
            assert_close(t_upper_quantile(0.05, dof), q95, 1e-11);
            assert_close(t_upper_quantile(1e-8, dof), q_tiny, 1e-9);
            assert_close(t_sf(2.5, dof), sf25, 1e-9);
            assert_close(t_sf(6.0, dof), sf6, 1e-7);
            assert_close(t_sf(-2.5, dof), 1.0 - sf25, 1e-9);
        }
        // scipy.stats.norm.isf(0.025), norm.isf(1e-10), norm.isf(0.2)
        assert_close(normal_upper_quantile(0.025), 1.9599639845400545, 1e-14);
        assert_close(normal_upper_quantile(1e-10), 6.361340902404056, 1e-13);
        assert_close(normal_upper_quantile(0.2), 0.8416212335729142, 1e-14);
    }

    #[test]
    fn bayesian_absolute_with_prior_matches_numerical_integration() {
        // Means 10 and 10.4, variances 4 and 5, n 200 and 220; prior N(0, 9) on the absolute
        // effect. post = scipy.stats.norm(mu, sd); post.sf(0); post.expect(lambda g: max(g, 0));
        // post.expect(lambda g: max(-g, 0)); post.ppf(0.025), post.ppf(0.975)
        let a = Moments { users: 200.0, mean: 10.0, variance: 4.0, unadjusted_mean: 10.0 };
        let b = Moments { users: 220.0, mean: 10.4, variance: 5.0, unadjusted_mean: 10.4 };
        let cfg = StatsConfig {
            engine: StatsMethod::Bayesian,
            difference: Difference::Absolute,
            prior: Some(GaussianPrior { mean: 0.0, variance: 9.0 }),
            ..config()
        };
        let r = compare_moments(&a, &b, &cfg).unwrap();
        assert_close(r.effect, 0.3981099829094203, 1e-10);
        assert_close(r.standard_error, 0.20621683863848672, 1e-10);
        assert_close(r.chance_to_win, 0.9732300561909814, 1e-10);
        assert_close(r.risk_control, 0.40021490928837444, 1e-8);
        assert_close(r.risk_treatment, 0.002104926378954377, 1e-7);
        assert_close(r.ci_lower, -0.006067593827721596, 1e-8);
        assert_close(r.ci_upper, 0.8022875596465622, 1e-10);
        assert!(r.significant); // chance to win > 1 − α
        // The prior shrinks towards 0; without it the posterior mean is the observed 0.4.
        let flat = compare_moments(&a, &b, &StatsConfig { prior: None, ..cfg }).unwrap();
        assert_close(flat.effect, 0.4, 1e-12);
        // The relative scale gets the prior converted by |u_A| = 10: N(0, 0.09).
        let rel = r.relative.unwrap();
        let rel_cfg = StatsConfig { difference: Difference::Relative, prior: Some(GaussianPrior::default()), ..cfg };
        let direct = compare_moments(&a, &b, &rel_cfg).unwrap();
        assert_close(rel.effect, direct.effect, 1e-12);
        assert_close(rel.ci_upper, direct.ci_upper, 1e-12);
    }

    #[test]
    fn sequential_one_sided_and_default_tuning() {
        // gbstats' one-sided confidence sequence (ρ with 2α), computed in Python.
        let a = Summary { users: 3000.0, ..A };
        let cfg = StatsConfig { sequential: true, sequential_tuning: 1000.0, sided: Sided::Greater, ..config() };
        let r = compare(&a, &B, SummaryKind::Mean, &cfg).unwrap();
        assert_close(r.ci_lower, -0.4730082114196813, 1e-9);
        assert_eq!(r.ci_upper, f64::INFINITY);
        let cfg = StatsConfig { sequential: true, ..config() };
        let r = compare(&a, &B, SummaryKind::Mean, &cfg).unwrap();
        assert_close(r.ci_lower, -0.5097177608556422, 1e-9);
        assert_close(r.ci_upper, 1.516439932568114, 1e-9);
        // Wider than the fixed-horizon interval; the p-value stays the fixed-horizon one.
        let fixed = compare(&a, &B, SummaryKind::Mean, &config()).unwrap();
        assert!(r.ci_lower < fixed.ci_lower && r.ci_upper > fixed.ci_upper);
        assert_eq!(r.p_value, fixed.p_value);
    }

    #[test]
    fn direction_decrease_flips_chance_to_win_and_risks() {
        let up = compare(&A, &B, SummaryKind::Mean, &config()).unwrap();
        let down =
            compare(&A, &B, SummaryKind::Mean, &StatsConfig { direction: Direction::Decrease, ..config() }).unwrap();
        assert_close(down.chance_to_win, 1.0 - up.chance_to_win, 1e-12);
        assert_close(down.risk_control, up.risk_treatment, 1e-12);
        assert_close(down.risk_treatment, up.risk_control, 1e-12);
        // Significant increase of a metric where lower is better: a regression.
        let cfg = StatsConfig { difference: Difference::Absolute, direction: Direction::Decrease, ..config() };
        let r = compare(&A, &B, SummaryKind::Mean, &cfg).unwrap();
        assert!(r.significant && r.regressed);
        let r =
            compare(&A, &B, SummaryKind::Mean, &StatsConfig { difference: Difference::Absolute, ..config() }).unwrap();
        assert!(r.significant && !r.regressed);
    }

    #[test]
    fn adjusted_p_value_drives_frequentist_significance() {
        let cfg = StatsConfig { difference: Difference::Absolute, ..config() };
        let mut r = compare(&A, &B, SummaryKind::Mean, &cfg).unwrap();
        assert!(r.significant);
        r.apply_adjusted_p_value(0.06, &cfg);
        assert_eq!(r.adjusted_p_value, 0.06);
        assert!(!r.significant && !r.regressed);
        // Sequential significance ignores p-values.
        let seq = StatsConfig { sequential: true, ..cfg };
        let mut r = compare(&A, &B, SummaryKind::Mean, &seq).unwrap();
        let before = r.significant;
        r.apply_adjusted_p_value(1.0, &seq);
        assert_eq!(r.significant, before);
    }

    #[test]
    fn moments_per_kind() {
        let m = Summary::new(4.0, 10.0, 30.0).moments(SummaryKind::Mean, "").unwrap();
        assert_eq!((m.mean, m.variance), (2.5, 5.0 / 3.0));
        let p = Summary::proportion(10.0, 3.0).moments(SummaryKind::Proportion, "").unwrap();
        assert_close(p.variance, 0.21, 1e-12);
        let (lo, hi) = p.confidence_interval(0.05).unwrap();
        assert_close(hi - p.mean, 1.959963984540054 * (0.021f64).sqrt(), 1e-12);
        assert_close(p.mean - lo, hi - p.mean, 1e-12);
        // Constant values: zero variance, fine for one arm.
        let c = Summary::from_values(&[2.0; 5]).moments(SummaryKind::Mean, "").unwrap();
        assert_eq!(c.variance, 0.0);
    }

    // ---- Errors and degenerate input --------------------------------------------------------

    #[test]
    fn too_few_users() {
        let err = compare(&Summary::new(1.0, 1.0, 1.0), &B, SummaryKind::Mean, &config()).unwrap_err();
        assert_eq!(err, StatsError::TooFewUsers { field: "control.users".into(), value: 1.0 });
        assert_eq!(err.to_string(), "control.users must be at least 2 (a variance needs two users), got 1");
        let err = compare(&A, &Summary::proportion(0.0, 0.0), SummaryKind::Proportion, &config()).unwrap_err();
        assert_eq!(err.field(), Some("treatment.users"));
    }

    #[test]
    fn zero_control_mean() {
        let zero = Summary::from_values(&[-1.0, 1.0, 0.0]);
        let err = compare(&zero, &B, SummaryKind::Mean, &config()).unwrap_err();
        assert_eq!(err, StatsError::ZeroControlMean { field: "control.sum".into() });
        // The absolute difference still works; there is just no relative scale.
        let cfg = StatsConfig { difference: Difference::Absolute, ..config() };
        let r = compare(&zero, &B, SummaryKind::Mean, &cfg).unwrap();
        assert!(r.relative.is_none());
        assert_close(r.effect, B.sum / B.users, 1e-12);
    }

    #[test]
    fn zero_variance() {
        let a = Summary::from_values(&[3.0; 4]);
        let b = Summary::from_values(&[4.0; 6]);
        let err = compare(&a, &b, SummaryKind::Mean, &config()).unwrap_err();
        assert_eq!(err, StatsError::ZeroVariance);
        assert_eq!(err.field(), None);
        let err = compare(
            &Summary::proportion(50.0, 0.0),
            &Summary::proportion(60.0, 60.0),
            SummaryKind::Proportion,
            &StatsConfig { difference: Difference::Absolute, ..config() },
        )
        .unwrap_err();
        assert_eq!(err, StatsError::ZeroVariance);
        // A treatment constant at 0 has no relative variance: an error on the relative scale,
        // `relative: None` on the absolute one.
        let (c, t) = (Summary::proportion(100.0, 5.0), Summary::proportion(100.0, 0.0));
        assert_eq!(compare(&c, &t, SummaryKind::Proportion, &config()).unwrap_err(), StatsError::ZeroVariance);
        let cfg = StatsConfig { difference: Difference::Absolute, ..config() };
        let r = compare(&c, &t, SummaryKind::Proportion, &cfg).unwrap();
        assert!(r.relative.is_none());
        assert_close(r.degrees_of_freedom, 99.0, 1e-12);
    }

    #[test]
    fn invalid_summaries() {
        let cfg = config();
        let err = compare(&Summary::new(10.0, f64::NAN, 1.0), &B, SummaryKind::Mean, &cfg).unwrap_err();
        assert_eq!(err.field(), Some("control.sum"));
        assert!(err.to_string().starts_with("control.sum must be a finite number"));
        let err = compare(&A, &Summary::new(10.0, 10.0, 5.0), SummaryKind::Mean, &cfg).unwrap_err();
        assert_eq!(
            err,
            StatsError::Inconsistent {
                field: "treatment.sum_squares".into(),
                reason: "the sums imply a negative variance"
            }
        );
        let err = compare(&Summary::proportion(10.0, -1.0), &B, SummaryKind::Proportion, &cfg).unwrap_err();
        assert_eq!(err.field(), Some("control.sum"));
        let err = compare(&Summary::proportion(10.0, 11.0), &B, SummaryKind::Proportion, &cfg).unwrap_err();
        assert_eq!(err.to_string(), "control.sum must be between 0 and users (converted users), got 11");
        let ratio = Summary { users: 5.0, sum: 3.0, sum_squares: 3.0, ..Default::default() };
        let err = compare(&ratio, &ratio, SummaryKind::Ratio, &cfg).unwrap_err();
        assert_eq!(err, StatsError::ZeroDenominator { field: "control.denominator_sum".into() });
        let bad_cross = Summary::from_ratio_values(&[(1.0, 1.0), (2.0, 3.0), (3.0, 2.0)]);
        let bad_cross = Summary { cross_sum: bad_cross.cross_sum * 3.0, ..bad_cross };
        let err = bad_cross.moments(SummaryKind::Ratio, "variants[1]").unwrap_err();
        assert_eq!(err.field(), Some("variants[1].cross_sum"));
        let m = Moments { users: 10.0, mean: 1.0, variance: -1.0, unadjusted_mean: 1.0 };
        assert_eq!(compare_moments(&m, &m, &cfg).unwrap_err().field(), Some("control.variance"));
    }

    #[test]
    fn invalid_config() {
        for alpha in [0.0, 1.0, -0.1, f64::NAN] {
            let err = compare(&A, &B, SummaryKind::Mean, &StatsConfig { alpha, ..config() }).unwrap_err();
            assert_eq!(err.field(), Some("alpha"));
        }
        let err = compare(&A, &B, SummaryKind::Mean, &StatsConfig { alpha: 1.5, ..config() }).unwrap_err();
        assert_eq!(err.to_string(), "alpha must be in (0, 1), got 1.5");
        let cfg = StatsConfig { sequential: true, sided: Sided::Less, alpha: 0.6, ..config() };
        assert_eq!(cfg.validate().unwrap_err().field(), Some("alpha"));
        let cfg = StatsConfig { sequential_tuning: 0.0, ..config() };
        assert_eq!(cfg.validate().unwrap_err().field(), Some("sequential_tuning"));
        let cfg = StatsConfig { prior: Some(GaussianPrior { mean: 0.0, variance: 0.0 }), ..config() };
        assert_eq!(cfg.validate().unwrap_err().field(), Some("prior_variance"));
        let cfg = StatsConfig { winsorize_percentile: Some(0.0), ..config() };
        assert_eq!(cfg.validate().unwrap_err().field(), Some("winsorize_percentile"));
        assert!(StatsConfig { winsorize_percentile: Some(99.0), ..config() }.validate().is_ok());
    }

    #[test]
    fn srm_errors() {
        let err = srm_p_value(&[10, 20], &[0.5, 0.4]).unwrap_err();
        assert_eq!(err, StatsError::WeightsDoNotSumToOne { sum: 0.9 });
        assert_eq!(err.to_string(), "weights must sum to 1 (± 1e-6), got 0.9");
        assert!(srm_p_value(&[10, 20], &[0.5, 0.5 + 5e-7]).is_ok());
        let err = srm_p_value(&[10, 20, 30], &[0.5, 0.5]).unwrap_err();
        assert_eq!(err, StatsError::LengthMismatch { field: "weights".into(), expected: 3, got: 2 });
        let err = srm_p_value(&[10], &[1.0]).unwrap_err();
        assert_eq!(err.field(), Some("observed"));
        let err = srm_p_value(&[10, 20], &[1.0, 0.0]).unwrap_err();
        assert_eq!(err.to_string(), "weights[1] must be positive, got 0");
        let err = srm_p_value(&[10, 20], &[f64::NAN, 0.5]).unwrap_err();
        assert_eq!(err.field(), Some("weights[0]"));
    }

    #[test]
    fn cuped_errors() {
        let s = Summary::from_values(&[1.0, 2.0, 3.0]);
        let c = Covariate { sum: 6.0, sum_squares: 14.0, cross_sum: 14.0 };
        let err = cuped_adjust(&[s, s], &[c], SummaryKind::Mean).unwrap_err();
        assert_eq!(err.field(), Some("covariates"));
        let err = cuped_adjust(&[], &[], SummaryKind::Mean).unwrap_err();
        assert_eq!(err.field(), Some("variants"));
        let bad = Covariate { sum_squares: 1.0, ..c };
        let err = cuped_adjust(&[s, s], &[c, bad], SummaryKind::Mean).unwrap_err();
        assert_eq!(err.field(), Some("variants[1].pre_sum_squares"));
        let err = cuped_adjust(&[s, s], &[Covariate { sum: f64::INFINITY, ..c }, c], SummaryKind::Mean).unwrap_err();
        assert_eq!(err.field(), Some("variants[0].pre_sum"));
        let err = cuped_adjust(&[s, Summary::new(1.0, 1.0, 1.0)], &[c, c], SummaryKind::Mean).unwrap_err();
        assert_eq!(err.field(), Some("variants[1].users"));
    }

    #[test]
    fn error_converts_to_invalid_argument() {
        let err: crate::error::Error = StatsError::TooFewUsers { field: "control.users".into(), value: 1.0 }.into();
        match err {
            crate::error::Error::InvalidArgument { field, .. } => assert_eq!(field, "control.users"),
            other => panic!("unexpected {other:?}"),
        }
    }

    // ---- Properties ---------------------------------------------------------------------------

    fn arb_p() -> impl Strategy<Value = f64> {
        prop_oneof![0.0..=1.0f64, Just(0.0), Just(1.0), 1e-12..1e-3f64]
    }

    fn arb_config() -> impl Strategy<Value = StatsConfig> {
        (
            prop_oneof![Just(StatsMethod::Frequentist), Just(StatsMethod::Bayesian)],
            prop_oneof![Just(Sided::TwoSided), Just(Sided::Greater), Just(Sided::Less)],
            prop_oneof![Just(Difference::Relative), Just(Difference::Absolute)],
            any::<bool>(),
            prop_oneof![Just(0.05), 0.001..0.49f64],
            prop_oneof![
                Just(None),
                (-1.0..1.0f64, 0.001..10.0f64).prop_map(|(m, v)| Some(GaussianPrior { mean: m, variance: v }))
            ],
            prop_oneof![Just(Direction::Increase), Just(Direction::Decrease)],
        )
            .prop_map(|(engine, sided, difference, sequential, alpha, prior, direction)| StatsConfig {
                engine,
                sided,
                difference,
                sequential,
                alpha,
                prior,
                direction,
                ..StatsConfig::default()
            })
    }

    /// Per-user values of one variant: 2 to 40 users, some heavy-tailed or constant.
    fn arb_values() -> impl Strategy<Value = Vec<f64>> {
        prop_oneof![
            prop::collection::vec(-100.0..100.0f64, 2..40),
            prop::collection::vec(0.0..1e6f64, 2..40),
            prop::collection::vec(prop_oneof![Just(0.0), Just(1.0)], 2..40),
            (2usize..10, 0.5..5.0f64).prop_map(|(n, v)| vec![v; n]),
        ]
    }

    proptest! {
        #[test]
        fn adjusted_p_values_are_bounded_and_ordered(p in prop::collection::vec(arb_p(), 0..25)) {
            let holm = adjust_p_values(&p, Correction::Holm);
            let bh = adjust_p_values(&p, Correction::BenjaminiHochberg);
            prop_assert_eq!(holm.len(), p.len());
            for i in 0..p.len() {
                prop_assert!(holm[i] >= p[i] && holm[i] <= 1.0);
                prop_assert!(bh[i] >= p[i] && bh[i] <= 1.0);
                prop_assert!(holm[i] >= bh[i], "holm {} < bh {}", holm[i], bh[i]);
            }
            // Monotone in the raw p-values.
            for i in 0..p.len() {
                for j in 0..p.len() {
                    if p[i] <= p[j] {
                        prop_assert!(holm[i] <= holm[j] && bh[i] <= bh[j]);
                    }
                }
            }
        }

        #[test]
        fn comparisons_are_well_formed(
            a in arb_values(),
            b in arb_values(),
            cfg in arb_config(),
            proportion in any::<bool>(),
        ) {
            let kind = if proportion { SummaryKind::Proportion } else { SummaryKind::Mean };
            let to_summary = |v: &[f64]| if proportion {
                Summary::proportion(v.len() as f64, v.iter().filter(|&&x| x > 0.5).count() as f64)
            } else {
                Summary::from_values(v)
            };
            match compare(&to_summary(&a), &to_summary(&b), kind, &cfg) {
                Ok(r) => {
                    for est in std::iter::once(r.absolute).chain(r.relative) {
                        prop_assert!((0.0..=1.0).contains(&est.p_value), "p {}", est.p_value);
                        prop_assert!((0.0..=1.0).contains(&est.chance_to_win));
                        prop_assert!(est.ci_lower <= est.effect && est.effect <= est.ci_upper,
                            "{} not in ({}, {})", est.effect, est.ci_lower, est.ci_upper);
                        prop_assert!(est.standard_error > 0.0 && est.standard_error.is_finite());
                        prop_assert!(est.risk_control >= 0.0 && est.risk_treatment >= 0.0);
                        prop_assert!(est.effect.is_finite() && !est.ci_lower.is_nan() && !est.ci_upper.is_nan());
                    }
                    prop_assert_eq!(r.effect, match (cfg.difference, r.relative) {
                        (Difference::Relative, Some(rel)) => rel.effect,
                        _ => r.absolute.effect,
                    });
                    prop_assert!(r.degrees_of_freedom >= 1.0);
                }
                Err(e) => prop_assert!(
                    matches!(e, StatsError::ZeroVariance | StatsError::ZeroControlMean { .. }),
                    "unexpected error {e}"
                ),
            }
        }

        #[test]
        fn moments_comparisons_never_give_nan(
            n_a in prop_oneof![2.0..50.0f64, 2.0..1e9f64],
            n_b in prop_oneof![2.0..50.0f64, 2.0..1e9f64],
            mean_a in prop_oneof![-1e3..1e3f64, Just(0.0), 1e-6..1e-3f64],
            mean_b in -1e3..1e3f64,
            var_a in prop_oneof![Just(0.0), 0.0..1e4f64, 1e-12..1e-6f64],
            var_b in prop_oneof![Just(0.0), 0.0..1e4f64],
            cfg in arb_config(),
        ) {
            let a = Moments { users: n_a, mean: mean_a, variance: var_a, unadjusted_mean: mean_a };
            let b = Moments { users: n_b, mean: mean_b, variance: var_b, unadjusted_mean: mean_b };
            match compare_moments(&a, &b, &cfg) {
                Ok(r) => {
                    prop_assert!((0.0..=1.0).contains(&r.p_value));
                    prop_assert!((0.0..=1.0).contains(&r.chance_to_win));
                    prop_assert!(r.ci_lower <= r.effect && r.effect <= r.ci_upper);
                    prop_assert!(r.effect.is_finite() && r.standard_error > 0.0 && r.degrees_of_freedom >= 1.0);
                    prop_assert!(r.risk_control.is_finite() && r.risk_treatment.is_finite());
                }
                Err(e) => prop_assert!(
                    matches!(e, StatsError::ZeroVariance | StatsError::ZeroControlMean { .. }),
                    "unexpected error {e}"
                ),
            }
        }

        #[test]
        fn t_quantile_inverts_the_tail(dof in prop_oneof![1.0..30.0f64, 30.0..1e5f64, 1e5..1e12f64], q in 1e-12..0.5f64) {
            let x = t_upper_quantile(q, dof);
            prop_assert!(x.is_finite() && x >= 0.0);
            let back = t_sf(x, dof);
            prop_assert!((back - q).abs() <= 1e-7 * q, "dof {dof} q {q} x {x} back {back}");
        }

        #[test]
        fn srm_p_value_is_a_probability(
            observed in prop::collection::vec(0u64..1_000_000, 2..6),
        ) {
            let k = observed.len();
            let weights = vec![1.0 / k as f64; k];
            let p = srm_p_value(&observed, &weights).unwrap();
            prop_assert!((0.0..=1.0).contains(&p));
        }

        #[test]
        fn winsorize_caps_at_a_value_of_the_range(
            mut values in prop::collection::vec(-1e6..1e6f64, 1..50),
            q in 0.0..=100.0f64,
        ) {
            let (min, max) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            let cap = winsorize_cap(&mut values, q);
            prop_assert!(cap >= min && cap <= max);
            prop_assert!(values.iter().all(|&v| v <= cap));
        }
    }
}
