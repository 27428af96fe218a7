//! The configuration of a readout: method, alpha, sidedness, difference, sequential tuning, priors.

#[allow(unused_imports)]
use super::*;

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
    pub(crate) fn tails(self) -> f64 {
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
