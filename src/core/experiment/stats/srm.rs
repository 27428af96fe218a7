//! The sample-ratio-mismatch check: chi-square goodness of fit against the weights.

#[allow(unused_imports)]
use super::*;

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
