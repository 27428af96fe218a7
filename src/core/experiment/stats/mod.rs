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

pub(crate) use serde::{Deserialize, Serialize};
pub(crate) use statrs::distribution::{ChiSquared, Continuous, ContinuousCDF, StudentsT};
pub(crate) use statrs::function::{beta, erf};

pub(crate) use crate::core::metric::definition::Direction;

/// Significance level used when none is configured.
pub const DEFAULT_ALPHA: f64 = 0.05;
/// Tuning parameter N* of the sequential confidence sequences when none is configured.
pub const DEFAULT_SEQUENTIAL_TUNING: f64 = 5000.0;
/// Variance of the Bayesian prior on the effect when a prior is requested without one
/// (σ = 0.3, GrowthBook's default).
pub const DEFAULT_PRIOR_VARIANCE: f64 = 0.09;
/// Tolerance on the sum of the SRM weights (SPEC §8).
pub const WEIGHT_TOLERANCE: f64 = 1e-6;

mod compare;
mod config;
mod correction;
mod cuped;
mod distribution;
mod error;
mod power;
mod srm;
mod summary;
#[cfg(test)]
mod tests;
mod winsorize;

pub use compare::*;
pub use config::*;
pub use correction::*;
pub use cuped::*;
pub(crate) use distribution::*;
pub use error::*;
pub use power::*;
pub use srm::*;
pub use summary::*;
pub use winsorize::*;
