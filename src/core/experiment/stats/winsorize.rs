//! Winsorizing: capping per-user values at a percentile of the pooled values.

#[allow(unused_imports)]
use super::*;

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
