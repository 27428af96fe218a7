//! PlanExperiment (SPEC §8): the sample size per variant for a baseline and an effect, or
//! the minimum detectable effect for a sample size, with defaults and range checks.

use crate::core::experiment::stats::{self, Sided, StatsError};
use crate::error::{Error, Result};

/// Power when the request leaves it 0.
pub const DEFAULT_POWER: f64 = 0.8;

/// A planning question; zeros mean the defaults (alpha 0.05, power 0.8, 2 variants).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PlanRequest {
    pub baseline_mean: f64,
    pub baseline_variance: f64,
    /// Non-zero: plan for a proportion instead of a mean.
    pub baseline_proportion: f64,
    /// The effect to detect; 0 with `users_per_variant`: compute the MDE instead.
    pub mde: f64,
    pub relative: bool,
    pub alpha: f64,
    pub power: f64,
    pub variants: u32,
    pub sided: Sided,
    pub users_per_variant: u64,
    /// Eligible users per day, to estimate the duration (0: no estimate).
    pub daily_users: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    pub users_per_variant: u64,
    pub total_users: u64,
    /// The MDE, as asked or computed, in the request's scale.
    pub mde: f64,
    /// total_users / daily_users rounded up; 0 without daily_users.
    pub days: u32,
}

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

/// Sample size per variant for an effect, or the effect detectable with a sample size; the
/// test runs at a Bonferroni-split alpha when more than one treatment is compared.
pub fn plan(r: &PlanRequest) -> Result<Plan> {
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
    let sided = r.sided;
    let design = stats::Design { alpha: stats::bonferroni_alpha(alpha, variants), power, sided };
    let proportion = r.baseline_proportion != 0.0;

    let (users_per_variant, mde) = if r.mde > 0.0 {
        let n = if proportion {
            stats::sample_size_per_variant_proportion(r.baseline_proportion, r.mde, r.relative, design)
        } else {
            stats::sample_size_per_variant(r.baseline_mean, r.baseline_variance, r.mde, r.relative, design)
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
            stats::minimum_detectable_effect_proportion(n, r.baseline_proportion, r.relative, design)
        } else {
            stats::minimum_detectable_effect(n, r.baseline_variance, r.baseline_mean, r.relative, design)
        }
        .map_err(plan_error)?;
        (r.users_per_variant, mde)
    };
    let total_users = users_per_variant.saturating_mul(u64::from(variants));
    let days =
        if r.daily_users > 0.0 { (total_users as f64 / r.daily_users).ceil().min(u32::MAX as f64) as u32 } else { 0 };
    Ok(Plan { users_per_variant, total_users, mde, days })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_rounding() {
        // Two-sided, alpha 0.05, power 0.8, absolute effect 0.5 on variance 4:
        // n = 2 (z_0.975 + z_0.8)^2 σ² / δ² = 2 × 7.8489 × 4 / 0.25 = 251.16 → 252.
        let plan =
            plan(&PlanRequest { baseline_mean: 10.0, baseline_variance: 4.0, mde: 0.5, ..Default::default() }).unwrap();
        assert_eq!(plan.users_per_variant, 252);
        assert_eq!(plan.total_users, 504);
        assert_eq!(plan.days, 0);
        let with_days = plan_days(&PlanRequest {
            baseline_mean: 10.0,
            baseline_variance: 4.0,
            mde: 0.5,
            daily_users: 100.0,
            ..Default::default()
        });
        assert_eq!(with_days, 6);
    }

    fn plan_days(r: &PlanRequest) -> u32 {
        plan(r).unwrap().days
    }

    #[test]
    fn more_variants_split_alpha() {
        let two =
            plan(&PlanRequest { baseline_proportion: 0.1, mde: 0.1, relative: true, ..Default::default() }).unwrap();
        let three = plan(&PlanRequest {
            baseline_proportion: 0.1,
            mde: 0.1,
            relative: true,
            variants: 3,
            ..Default::default()
        })
        .unwrap();
        assert!(three.users_per_variant > two.users_per_variant);
        assert_eq!(three.total_users, three.users_per_variant * 3);
    }

    #[test]
    fn bad_input_names_the_field() {
        let field = |r: PlanRequest| match plan(&r) {
            Err(Error::InvalidArgument { field, .. }) => field,
            other => panic!("expected invalid argument, got {other:?}"),
        };
        let base = PlanRequest { baseline_mean: 1.0, baseline_variance: 1.0, mde: 0.1, ..Default::default() };
        assert_eq!(field(PlanRequest { variants: 1, ..base }), "variants");
        assert_eq!(field(PlanRequest { alpha: 1.5, ..base }), "alpha");
        assert_eq!(field(PlanRequest { power: -0.1, ..base }), "power");
        assert_eq!(field(PlanRequest { mde: f64::NAN, ..base }), "mde");
        assert_eq!(field(PlanRequest { mde: 0.0, ..base }), "mde");
        assert_eq!(field(PlanRequest { daily_users: -1.0, ..base }), "daily_users");
        assert_eq!(field(PlanRequest { baseline_variance: 0.0, ..base }), "baseline_variance");
    }
}
