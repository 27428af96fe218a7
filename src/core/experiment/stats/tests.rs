//! Tests of the statistics: SPEC §8 reference numbers, cross-checks against scipy and
//! statsmodels, errors and degenerate input, properties.

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
    let r =
        compare(&Summary::proportion(28.0, 14.0), &Summary::proportion(30.0, 16.0), SummaryKind::Proportion, &config())
            .unwrap();
    assert_sig(r.effect, 0.06667, 4);
    assert_sig(r.ci_lower, -0.47767, 5);
    assert_sig(r.ci_upper, 0.61101, 5);
    assert_sig(r.p_value, 0.80707, 5);
}

#[test]
fn spec_bayesian_proportions() {
    let cfg = StatsConfig { engine: StatsMethod::Bayesian, ..config() };
    let r =
        compare(&Summary::proportion(100.0, 49.0), &Summary::proportion(100.0, 51.0), SummaryKind::Proportion, &cfg)
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
    let b =
        [(4.0, 2.0), (8.0, 3.0), (2.0, 2.0), (9.0, 4.0), (3.0, 1.0), (5.0, 2.0), (7.0, 5.0), (6.0, 3.0), (2.0, 1.0)];
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
    let adj = cuped_adjust(&summaries, &[flat(&[1.0, 2.0, 3.0]), flat(&[2.0, 3.0, 5.0])], SummaryKind::Mean).unwrap();
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
    let n = sample_size_per_variant(10.0, 4.0, 0.05, true, Design { alpha: 0.05, power: 0.8, sided: Sided::TwoSided })
        .unwrap();
    assert_close(n, 251.16353630180953, 1e-5);
    let n = sample_size_per_variant(10.0, 4.0, 0.5, false, Design { alpha: 0.05, power: 0.8, sided: Sided::Greater })
        .unwrap();
    // statsmodels' root finder gives 197.84183122339462; the closed form
    // 2 (norm.isf(0.05) + norm.isf(0.2))² / 0.25² (scipy) is exact:
    assert_close(n, 197.84183122339462, 1e-8);
    assert_close(n, 197.84183142463266, 1e-13);
    // NormalIndPower().solve_power(effect_size=0.1, alpha=0.01, power=0.9)
    let n = sample_size_per_variant(0.0, 1.0, 0.1, false, Design { alpha: 0.01, power: 0.9, sided: Sided::TwoSided })
        .unwrap();
    assert_close(n, 2975.8774332994276, 1e-6);
    // TTestIndPower gives 252.13 for the first case: the t-test needs about one user more.
    // Proportions, 10% → 11%: statsmodels.stats.power.normal_sample_size_one_tail(0.01, 0.8,
    // 0.05 / 2, std_null=sqrt(0.1·0.9 + 0.11·0.89))
    let n =
        sample_size_per_variant_proportion(0.1, 0.1, true, Design { alpha: 0.05, power: 0.8, sided: Sided::TwoSided })
            .unwrap();
    assert_close(n, 14748.045020841955, 1e-9);
    let n =
        sample_size_per_variant_proportion(0.1, 0.01, false, Design { alpha: 0.05, power: 0.8, sided: Sided::Less })
            .unwrap();
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
    let mde =
        minimum_detectable_effect(1000.0, 9.0, 0.0, false, Design { alpha: 0.05, power: 0.8, sided: Sided::TwoSided })
            .unwrap();
    assert_close(mde, 3.0 * 0.1252903452971738, 1e-5);
    assert_close(mde, 3.0 * 0.12529069984918348, 1e-13);
    let rel =
        minimum_detectable_effect(1000.0, 9.0, 30.0, true, Design { alpha: 0.05, power: 0.8, sided: Sided::TwoSided })
            .unwrap();
    assert_close(rel, 0.12529069984918348 / 10.0, 1e-13);
    // MDE and sample size are inverses.
    let n = sample_size_per_variant(30.0, 9.0, rel, true, Design { alpha: 0.05, power: 0.8, sided: Sided::TwoSided })
        .unwrap();
    assert_close(n, 1000.0, 1e-12);
    let d = minimum_detectable_effect_proportion(
        14748.045020841955,
        0.1,
        false,
        Design { alpha: 0.05, power: 0.8, sided: Sided::TwoSided },
    )
    .unwrap();
    assert_close(d, 0.01, 1e-9);
    let r = minimum_detectable_effect_proportion(
        14748.045020841955,
        0.1,
        true,
        Design { alpha: 0.05, power: 0.8, sided: Sided::TwoSided },
    )
    .unwrap();
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
    let err = sample_size_per_variant(0.0, 4.0, 0.05, true, Design { alpha: 0.05, power: 0.8, sided: Sided::TwoSided })
        .unwrap_err();
    assert_eq!(err, StatsError::ZeroControlMean { field: "baseline_mean".into() });
    let err =
        sample_size_per_variant(10.0, 0.0, 0.05, true, Design { alpha: 0.05, power: 0.8, sided: Sided::TwoSided })
            .unwrap_err();
    assert_eq!(err.field(), Some("baseline_variance"));
    let err = sample_size_per_variant(10.0, 4.0, 0.0, true, Design { alpha: 0.05, power: 0.8, sided: Sided::TwoSided })
        .unwrap_err();
    assert_eq!(err.field(), Some("mde"));
    let err =
        sample_size_per_variant(10.0, 4.0, 0.05, true, Design { alpha: 0.05, power: 1.0, sided: Sided::TwoSided })
            .unwrap_err();
    assert_eq!(err.to_string(), "power must be in (0, 1), got 1");
    let err =
        sample_size_per_variant_proportion(0.6, 1.0, true, Design { alpha: 0.05, power: 0.8, sided: Sided::TwoSided })
            .unwrap_err();
    assert_eq!(err.field(), Some("mde"));
    let err =
        sample_size_per_variant_proportion(0.0, 0.1, true, Design { alpha: 0.05, power: 0.8, sided: Sided::TwoSided })
            .unwrap_err();
    assert_eq!(err.field(), Some("baseline_proportion"));
    let err = minimum_detectable_effect_proportion(
        3.0,
        0.9,
        false,
        Design { alpha: 0.05, power: 0.8, sided: Sided::TwoSided },
    )
    .unwrap_err();
    assert_eq!(err.field(), Some("users_per_variant"));
    let err = power(0.1, 0.0, 1.0, 1.0, false, 0.05, Sided::TwoSided).unwrap_err();
    assert_eq!(err.field(), Some("users_per_variant"));
    let err = power_from_standard_error(f64::NAN, 1.0, 0.05, Sided::TwoSided).unwrap_err();
    assert_eq!(err.field(), Some("effect"));
}

#[test]
fn winsorize_matches_numpy() {
    let values = [
        3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0, 5.0, 8.0, 9.0, 7.0, 9.0, 3.0, 2.0, 3.0, 8.0, 4.0, 6.0, 2.0,
        6.0, 4.0, 3.0, 3.0, 8.0, 3.0, 2.0, 7.0, 9.0, 5.0, 100.0,
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
        (7.3, 2.345066736547703, 1.8829300179564308, 25.679425650359136, 0.019825117332800214, 0.00023087223893739333),
        (
            5841.742032093565,
            1.9603701569544807,
            1.6451145101402425,
            5.619814774099072,
            0.00622326713962463,
            1.0457871319849853e-09,
        ),
        (2e5, 1.959975845966768, 1.6448612458327154, 5.612229201538643, 0.00621006245618106, 9.882749439674027e-10),
        (3e6, 1.9599647752974443, 1.6448541348746792, 5.612016440835273, 0.006209691800834884, 9.867000543858257e-10),
        (1e9, 1.959963986912325, 1.6448536284752415, 5.612001289764664, 0.006209665405201246, 9.865879822492407e-10),
    ];
    for (dof, q975, q95, q_tiny, sf25, sf6) in cases {
        assert_close(t_upper_quantile(0.025, dof), q975, 1e-11);
        assert_close(t_upper_quantile(0.05, dof), q95, 1e-11);
        assert_close(t_upper_quantile(1e-8, dof), q_tiny, 1e-9);
        assert_close(t_sf(2.5, dof), sf25, 1e-9);
        assert_close(t_sf(6.0, dof), sf6, 1e-7);
        assert_close(t_sf(-2.5, dof), 1.0 - sf25, 1e-9);
    }
    // Near the centre, where 1 − x²/ν rounds away most of x²/ν; and either side of the
    // normal's quartile, where the two ways of computing the tail meet.
    // scipy.stats.t.sf(x, dof)
    for (x, dof, sf) in [
        (1.3486991523486097e-05, 74094.60571287724, 0.49999461948700025),
        (1e-06, 500000.0, 0.4999996010579191),
        (-2e-05, 30000.0, 0.5000079787791174),
        (0.3, 7.0, 0.3864450252010671),
        (0.6744, 1.0, 0.3111348531247835),
        (0.6746, 1.0, 0.3110910976924083),
        (0.6744, 2e5, 0.250028911120332),
        (0.6746, 2e5, 0.24996535638052328),
        (3.0, 50000.0, 0.0013505628959770207),
    ] {
        // statrs' tail here was off by up to 8e-7 (relative) in the first three; at ν = 2·10⁵
        // its incomplete beta keeps ~10 digits either way.
        assert_close(t_sf(x, dof), sf, 1e-9);
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
    let down = compare(&A, &B, SummaryKind::Mean, &StatsConfig { direction: Direction::Decrease, ..config() }).unwrap();
    assert_close(down.chance_to_win, 1.0 - up.chance_to_win, 1e-12);
    assert_close(down.risk_control, up.risk_treatment, 1e-12);
    assert_close(down.risk_treatment, up.risk_control, 1e-12);
    // Significant increase of a metric where lower is better: a regression.
    let cfg = StatsConfig { difference: Difference::Absolute, direction: Direction::Decrease, ..config() };
    let r = compare(&A, &B, SummaryKind::Mean, &cfg).unwrap();
    assert!(r.significant && r.regressed);
    let r = compare(&A, &B, SummaryKind::Mean, &StatsConfig { difference: Difference::Absolute, ..config() }).unwrap();
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
