//! Normal and Student's t tails and quantiles, accurate for the huge degrees of freedom Welch's test produces.

#[allow(unused_imports)]
use super::*;

//
// statrs' normal functions are accurate; its Student's t is accurate for moderate degrees of
// freedom but its inverse CDF drifts (and can hang) for very large ones, which Welch's test
// produces routinely (ν ≈ n). So: t tail probabilities come from statrs up to 10⁶ degrees of
// freedom and from a normal transformation above; t quantiles are solved by safeguarded Newton
// iterations on statrs' tail below 10⁵ degrees of freedom and by the Cornish–Fisher expansion
// above (error O(ν⁻⁵)).

pub(crate) const T_NORMAL_TAIL_DOF: f64 = 1e6;
pub(crate) const T_CORNISH_FISHER_DOF: f64 = 1e5;
/// `z` with `P(Z > z) = ¼`.
const NORMAL_QUARTILE: f64 = 0.674_489_750_196_081_7;

pub(crate) fn normal_pdf(x: f64) -> f64 {
    (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

pub(crate) fn normal_cdf(x: f64) -> f64 {
    0.5 * erf::erfc(-x / std::f64::consts::SQRT_2)
}

pub(crate) fn normal_sf(x: f64) -> f64 {
    0.5 * erf::erfc(x / std::f64::consts::SQRT_2)
}

/// `z` with `P(Z > z) = tail`, for `tail` in (0, 1) (0 → +∞, 1 → −∞).
pub(crate) fn normal_upper_quantile(tail: f64) -> f64 {
    if tail <= 0.0 {
        f64::INFINITY
    } else if tail >= 1.0 {
        f64::NEG_INFINITY
    } else {
        std::f64::consts::SQRT_2 * erf::erfc_inv(2.0 * tail)
    }
}

/// `P(T_ν > x)`.
pub(crate) fn t_sf(x: f64, dof: f64) -> f64 {
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
    // Near the centre statrs' tail rounds ν/(ν + x²) to 1 − x²/ν, which keeps few digits of
    // x²/ν when that is near machine epsilon (off in the 7th digit at ν ≈ 10⁵); the
    // probability of |T| < |x|, I(x²/(ν + x²); ½, ν/2), keeps them. Only inside the normal's
    // quartile (inside the t's for every ν): further out its complement, the tail, would lose
    // digits, and there x²/ν is far above epsilon.
    if x.abs() < NORMAL_QUARTILE && dof > 0.0 && dof.is_finite() {
        let x2 = x * x;
        let upper = 0.5 * (1.0 - beta::beta_reg(0.5, 0.5 * dof, x2 / (dof + x2)));
        return if x >= 0.0 { upper } else { 1.0 - upper };
    }
    match StudentsT::new(0.0, 1.0, dof) {
        Ok(t) => t.sf(x),
        Err(_) => normal_sf(x),
    }
}

/// `x ≥ 0` with `P(T_ν > x) = tail`, for `tail` in (0, 0.5].
pub(crate) fn t_upper_quantile(tail: f64, dof: f64) -> f64 {
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
    while t_sf(hi, dof) > tail {
        lo = hi;
        hi *= 2.0;
        doublings += 1;
        if !hi.is_finite() || doublings > 1100 {
            return f64::INFINITY;
        }
    }
    let mut x = if cornish_fisher > lo && cornish_fisher < hi { cornish_fisher } else { 0.5 * (lo + hi) };
    for _ in 0..200 {
        let f = t_sf(x, dof) - tail;
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
