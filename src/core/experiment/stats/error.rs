//! Errors of the statistics: each names the input that was invalid or degenerate.

#[allow(unused_imports)]
use super::*;

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
pub(crate) fn path(label: &str, name: &str) -> String {
    if label.is_empty() { name.to_string() } else { format!("{label}.{name}") }
}

pub(crate) fn finite(field: impl FnOnce() -> String, value: f64) -> Result<f64, StatsError> {
    if value.is_finite() { Ok(value) } else { Err(StatsError::NotFinite { field: field(), value }) }
}

/// Checks `value` is finite and in the open unit interval (alpha, power, proportions).
pub(crate) fn unit_open(field: &str, value: f64) -> Result<f64, StatsError> {
    finite(|| field.to_string(), value)?;
    if value > 0.0 && value < 1.0 {
        Ok(value)
    } else {
        Err(StatsError::OutOfRange { field: field.to_string(), expected: "in (0, 1)", value })
    }
}

pub(crate) fn positive(field: &str, value: f64) -> Result<f64, StatsError> {
    finite(|| field.to_string(), value)?;
    if value > 0.0 {
        Ok(value)
    } else {
        Err(StatsError::OutOfRange { field: field.to_string(), expected: "positive", value })
    }
}
