//! Sufficient statistics per variant (n, Σx, Σx², and for ratios Σy, Σy², Σxy) and their moments.

#[allow(unused_imports)]
use super::*;

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
pub(crate) fn sample_variance(
    n: f64,
    sum: f64,
    sum_squares: f64,
    field: impl Fn() -> String,
) -> Result<f64, StatsError> {
    let square_of_sum = sum * sum / n;
    let raw = (sum_squares - square_of_sum) / (n - 1.0);
    let scale = (sum_squares.abs() + square_of_sum) / (n - 1.0);
    clamp_variance(raw, scale, field)
}

/// A variance computed by cancellation: tiny negative values (rounding) become 0, clearly
/// negative ones mean inconsistent sums.
pub(crate) fn clamp_variance(raw: f64, scale: f64, field: impl Fn() -> String) -> Result<f64, StatsError> {
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
