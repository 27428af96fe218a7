//! Multiple-testing corrections: Holm (family-wise) and Benjamini–Hochberg (FDR).

#[allow(unused_imports)]
use super::*;

/// NaN → 1 (no evidence), others clamped to [0, 1].
pub(crate) fn sanitize_p(p: f64) -> f64 {
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
