//! ExperimentService's stateless calls (AnalyzeSummaries, AdjustPValues, PlanExperiment) over
//! real gRPC, reproducing the SPEC §8 reference numbers (from GrowthBook's gbstats) to 4
//! significant digits, plus the bad-input cases.

mod common;

use common::*;
use sextant::pb;
use sextant::pb::experiment_service_client::ExperimentServiceClient;
use tonic::Code;
use tonic::transport::Channel;

fn client(server: &TestServer) -> ExperimentServiceClient<Channel> {
    ExperimentServiceClient::new(server.channel.clone())
}

/// `actual` equals `expected` to 4 significant digits (relative error below half a unit of the
/// 4th digit).
#[track_caller]
fn assert_sig4(actual: f64, expected: f64) {
    let tolerance = 5e-4 * expected.abs();
    assert!((actual - expected).abs() <= tolerance, "actual {actual}, expected {expected} to 4 significant digits");
}

fn mean_summary(key: &str, users: u64, sum: f64, sum_squares: f64) -> pb::VariantSummary {
    pb::VariantSummary { key: key.into(), users, sum, sum_squares, ..Default::default() }
}

fn proportion_summary(key: &str, users: u64, converted: f64) -> pb::VariantSummary {
    pb::VariantSummary { key: key.into(), users, sum: converted, sum_squares: converted, ..Default::default() }
}

/// SPEC §8's means example: A `{n 3407, Σx 1396.87, Σx² 52377.9767}`, B `{n 3461, Σx 2422.7,
/// Σx² 134698.29}`.
fn reference_means() -> Vec<pb::VariantSummary> {
    vec![mean_summary("a", 3407, 1396.87, 52377.9767), mean_summary("b", 3461, 2422.7, 134698.29)]
}

fn analyze(
    summary_type: pb::SummaryType,
    variants: Vec<pb::VariantSummary>,
    config: pb::StatsConfig,
) -> pb::AnalyzeSummariesRequest {
    pb::AnalyzeSummariesRequest {
        summary_type: summary_type as i32,
        variants,
        config: Some(config),
        ..Default::default()
    }
}

async fn analyze_ok(server: &TestServer, request: pb::AnalyzeSummariesRequest) -> pb::AnalyzeSummariesResponse {
    client(server).analyze_summaries(request).await.expect("analyze_summaries").into_inner()
}

#[tokio::test]
async fn means_two_sided_relative_and_absolute() {
    let server = TestServer::start().await;
    let relative = analyze_ok(&server, analyze(pb::SummaryType::Mean, reference_means(), Default::default())).await;
    assert_eq!(relative.comparisons.len(), 1);
    let c = &relative.comparisons[0];
    assert_eq!(c.variant, "b");
    assert_sig4(c.effect, 0.70732);
    assert_sig4(c.ci_lower, -0.03526);
    assert_sig4(c.ci_upper, 1.44989);
    assert_sig4(c.p_value, 0.06191);
    assert_eq!(c.adjusted_p_value, c.p_value);
    assert!(!c.significant);
    // Both scales are reported whatever the configured difference.
    assert_sig4(c.relative_effect, 0.70732);
    assert_sig4(c.absolute_effect, 0.29);
    assert_sig4(c.absolute_ci_lower, 0.04538);
    assert_sig4(c.absolute_ci_upper, 0.53462);
    // Variant means in request order.
    let means: Vec<_> = relative.variants.iter().map(|v| (v.variant.as_str(), v.users)).collect();
    assert_eq!(means, vec![("a", 3407), ("b", 3461)]);
    assert_sig4(relative.variants[0].mean, 1396.87 / 3407.0);
    assert!(relative.variants[0].ci_lower < relative.variants[0].mean);

    let config = pb::StatsConfig { difference: pb::Difference::Absolute as i32, ..Default::default() };
    let absolute = analyze_ok(&server, analyze(pb::SummaryType::Mean, reference_means(), config)).await;
    let c = &absolute.comparisons[0];
    assert_sig4(c.effect, 0.29);
    assert_sig4(c.ci_lower, 0.04538);
    assert_sig4(c.ci_upper, 0.53462);
    assert_sig4(c.p_value, 0.02016);
    assert!(c.significant);
}

#[tokio::test]
async fn means_greater_relative() {
    let server = TestServer::start().await;
    let config = pb::StatsConfig { sided: pb::Sided::Greater as i32, ..Default::default() };
    let response = analyze_ok(&server, analyze(pb::SummaryType::Mean, reference_means(), config)).await;
    let c = &response.comparisons[0];
    assert_sig4(c.ci_lower, 0.084157);
    assert_eq!(c.ci_upper, f64::INFINITY);
    assert_sig4(c.p_value, 0.030956);
    assert!(c.significant);
}

#[tokio::test]
async fn means_sequential() {
    let server = TestServer::start().await;
    let variants = vec![mean_summary("a", 3000, 1396.87, 52377.9767), mean_summary("b", 3461, 2422.7, 134698.29)];
    let config = pb::StatsConfig { sequential: true, sequential_tuning: 1000.0, ..Default::default() };
    let response = analyze_ok(&server, analyze(pb::SummaryType::Mean, variants, config)).await;
    let c = &response.comparisons[0];
    assert_sig4(c.effect, 0.50336);
    assert_sig4(c.ci_lower, -0.55844);
    assert_sig4(c.ci_upper, 1.56516);
    assert!(!c.significant);
}

#[tokio::test]
async fn proportions_two_sided() {
    let server = TestServer::start().await;
    let variants = vec![proportion_summary("a", 28, 14.0), proportion_summary("b", 30, 16.0)];
    let response = analyze_ok(&server, analyze(pb::SummaryType::Proportion, variants, Default::default())).await;
    let c = &response.comparisons[0];
    assert_sig4(c.effect, 0.06667);
    assert_sig4(c.ci_lower, -0.47767);
    assert_sig4(c.ci_upper, 0.61101);
    assert_sig4(c.p_value, 0.80707);
}

#[tokio::test]
async fn bayesian_proportions() {
    let server = TestServer::start().await;
    let variants = vec![proportion_summary("a", 100, 49.0), proportion_summary("b", 100, 51.0)];
    let config = pb::StatsConfig { engine: pb::Engine::Bayesian as i32, ..Default::default() };
    let response = analyze_ok(&server, analyze(pb::SummaryType::Proportion, variants, config)).await;
    let c = &response.comparisons[0];
    assert_sig4(c.effect, 0.04082);
    assert_sig4(c.ci_lower, -0.24779);
    assert_sig4(c.ci_upper, 0.32943);
    assert_sig4(c.chance_to_win, 0.60918);
    assert_sig4(c.risk_control, 0.0814);
    assert_sig4(c.risk_treatment, 0.04058);
    assert!(!c.significant);
}

#[tokio::test]
async fn srm_through_analyze_summaries() {
    let server = TestServer::start().await;
    let variants = || vec![proportion_summary("a", 1000, 100.0), proportion_summary("b", 1100, 120.0)];
    // All weights 0: equal shares.
    let response = analyze_ok(&server, analyze(pb::SummaryType::Proportion, variants(), Default::default())).await;
    assert_sig4(response.srm_p_value, 0.0290963);

    // Explicit equal weights give the same; weights matching the counts give no mismatch.
    let weighted = |weights: [f64; 2]| {
        let mut v = variants();
        v[0].weight = weights[0];
        v[1].weight = weights[1];
        analyze(pb::SummaryType::Proportion, v, Default::default())
    };
    let response = analyze_ok(&server, weighted([0.5, 0.5])).await;
    assert_sig4(response.srm_p_value, 0.0290963);
    let response = analyze_ok(&server, weighted([1000.0 / 2100.0, 1100.0 / 2100.0])).await;
    assert_sig4(response.srm_p_value, 1.0);

    let status = client(&server).analyze_summaries(weighted([0.5, 0.6])).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), vec!["variants"]);
}

#[tokio::test]
async fn control_variant_and_correction_across_comparisons() {
    let server = TestServer::start().await;
    let variants = vec![
        proportion_summary("t1", 1000, 120.0),
        proportion_summary("ctl", 1000, 100.0),
        proportion_summary("t2", 1000, 135.0),
    ];
    let plain = pb::AnalyzeSummariesRequest {
        control_variant: "ctl".into(),
        ..analyze(pb::SummaryType::Proportion, variants.clone(), Default::default())
    };
    let raw = analyze_ok(&server, plain.clone()).await;
    let names: Vec<_> = raw.comparisons.iter().map(|c| c.variant.as_str()).collect();
    assert_eq!(names, vec!["t1", "t2"]);
    let p: Vec<f64> = raw.comparisons.iter().map(|c| c.p_value).collect();
    assert!(p[1] < p[0]);

    let holm = pb::AnalyzeSummariesRequest {
        config: Some(pb::StatsConfig { correction: pb::Correction::Holm as i32, ..Default::default() }),
        ..plain.clone()
    };
    let corrected = analyze_ok(&server, holm).await;
    // Holm over 2: the smaller p-value doubles, the larger is max(p, that).
    let expected = [(2.0 * p[1]).max(p[0]).min(1.0), (2.0 * p[1]).min(1.0)];
    for (c, (raw_p, adjusted)) in corrected.comparisons.iter().zip(p.iter().zip(expected)) {
        assert_eq!(c.p_value, *raw_p);
        assert_sig4(c.adjusted_p_value, adjusted);
    }

    // Without control_variant the first variant is the control.
    let first = analyze_ok(&server, analyze(pb::SummaryType::Proportion, variants, Default::default())).await;
    let names: Vec<_> = first.comparisons.iter().map(|c| c.variant.as_str()).collect();
    assert_eq!(names, vec!["ctl", "t2"]);
}

#[tokio::test]
async fn adjust_p_values_holm_and_bh() {
    let server = TestServer::start().await;
    let adjust = |p_values: Vec<f64>, correction: pb::Correction| pb::AdjustPValuesRequest {
        p_values,
        correction: correction as i32,
        ..Default::default()
    };
    let holm = client(&server)
        .adjust_p_values(adjust(vec![0.01, 0.04, 0.03, 0.005, 0.55, 0.6], pb::Correction::Holm))
        .await
        .unwrap()
        .into_inner()
        .adjusted_p_values;
    let expected = [0.05, 0.12, 0.12, 0.03, 1.0, 1.0];
    assert_eq!(holm.len(), expected.len());
    for (a, e) in holm.iter().zip(expected) {
        assert_sig4(*a, e);
    }

    let bh = client(&server)
        .adjust_p_values(adjust(
            vec![0.898, 0.138, 0.007, 0.964, 0.538, 0.006, 0.138],
            pb::Correction::BenjaminiHochberg,
        ))
        .await
        .unwrap()
        .into_inner()
        .adjusted_p_values;
    let expected = [0.964, 0.2415, 0.0245, 0.964, 0.7532, 0.0245, 0.2415];
    assert_eq!(bh.len(), expected.len());
    for (a, e) in bh.iter().zip(expected) {
        assert_sig4(*a, e);
    }

    // UNSPECIFIED is NONE: the raw values.
    let none = client(&server)
        .adjust_p_values(adjust(vec![0.2, 0.01], pb::Correction::Unspecified))
        .await
        .unwrap()
        .into_inner()
        .adjusted_p_values;
    assert_eq!(none, vec![0.2, 0.01]);
}

// Expected sample sizes, by hand from the documented formula
// n = (z_{1−α/s} + z_{power})² (σ²_A + σ²_B)/Δ², rounded up (Python's statistics.NormalDist):
// z_{0.975} + z_{0.8} = 1.959964 + 0.841621 = 2.801585, squared 7.848880.
// - proportion 0.10 → 0.11 (mde 0.1 relative): 7.848880 × (0.09 + 0.0979)/0.01² = 14748.05 → 14749.
// - mean, variance 4, Δ 0.5: 7.848880 × 8/0.25 = 251.164 → 252; 3 variants (α 0.025:
//   z_{0.9875} + z_{0.8} = 3.082757): 304.16 → 305; GREATER (z_{0.95} + z_{0.8} = 2.486475): 197.84 → 198.
// - the MDE for 1000 users per variant, variance 4: 2.801585 × sqrt(8/1000) = 0.250581 (0.0250581
//   relative to a mean of 10); for a proportion 0.1 with 10000 users: Δ = 0.0121993 (solving
//   Δ² n = k²(p(1 − p) + (p + Δ)(1 − p − Δ)); plugging it back gives n = 10000.0).
#[tokio::test]
async fn plan_experiment_proportion_and_mean() {
    let server = TestServer::start().await;
    let plan = |request: pb::PlanExperimentRequest| {
        let mut client = client(&server);
        async move { client.plan_experiment(request).await.expect("plan_experiment").into_inner() }
    };

    let proportion = plan(pb::PlanExperimentRequest {
        baseline_proportion: 0.1,
        mde: 0.1,
        relative: true,
        daily_users: 1000.0,
        ..Default::default()
    })
    .await;
    assert_eq!(proportion.users_per_variant, 14749);
    assert_eq!(proportion.total_users, 2 * 14749);
    assert_eq!(proportion.mde, 0.1);
    assert_eq!(proportion.days, 30); // 29498 / 1000 rounded up

    let mean =
        pb::PlanExperimentRequest { baseline_mean: 10.0, baseline_variance: 4.0, mde: 0.5, ..Default::default() };
    let response = plan(mean.clone()).await;
    assert_eq!((response.users_per_variant, response.total_users, response.days), (252, 504, 0));
    // The same effect relative to the mean (5% of 10).
    let response = plan(pb::PlanExperimentRequest { mde: 0.05, relative: true, ..mean.clone() }).await;
    assert_eq!(response.users_per_variant, 252);
    let response = plan(pb::PlanExperimentRequest { variants: 3, ..mean.clone() }).await;
    assert_eq!((response.users_per_variant, response.total_users), (305, 915));
    let response = plan(pb::PlanExperimentRequest { sided: pb::Sided::Greater as i32, ..mean.clone() }).await;
    assert_eq!(response.users_per_variant, 198);

    // The MDE for a given sample size.
    let response = plan(pb::PlanExperimentRequest { mde: 0.0, users_per_variant: 1000, ..mean.clone() }).await;
    assert_eq!((response.users_per_variant, response.total_users), (1000, 2000));
    assert_sig4(response.mde, 0.250581);
    let response =
        plan(pb::PlanExperimentRequest { mde: 0.0, users_per_variant: 1000, relative: true, ..mean.clone() }).await;
    assert_sig4(response.mde, 0.0250581);
    let response =
        plan(pb::PlanExperimentRequest { baseline_proportion: 0.1, users_per_variant: 10000, ..Default::default() })
            .await;
    assert_sig4(response.mde, 0.0121993);
}

#[tokio::test]
async fn stateful_calls_stay_unimplemented() {
    let server = TestServer::start().await;
    let status = client(&server)
        .get_experiment(pb::GetExperimentRequest { project: "p".into(), experiment_key: "e".into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
}

#[tokio::test]
async fn bad_input_names_the_field() {
    let server = TestServer::start().await;
    let mut client = client(&server);
    let means = || analyze(pb::SummaryType::Mean, reference_means(), Default::default());
    let proportions = || {
        analyze(
            pb::SummaryType::Proportion,
            vec![proportion_summary("a", 28, 14.0), proportion_summary("b", 30, 16.0)],
            Default::default(),
        )
    };
    let with_alpha = |alpha: f64| pb::AnalyzeSummariesRequest {
        config: Some(pb::StatsConfig { alpha, ..Default::default() }),
        ..means()
    };

    let mut analyze_cases: Vec<(pb::AnalyzeSummariesRequest, &str)> = Vec::new();
    let mut one = means();
    one.variants.truncate(1);
    analyze_cases.push((one, "variants"));
    analyze_cases.push((pb::AnalyzeSummariesRequest { control_variant: "nope".into(), ..means() }, "control_variant"));
    // `users` is a uint64 on the wire, so it cannot be negative; too few users is the analogue.
    let mut few = means();
    few.variants[1].users = 1;
    analyze_cases.push((few, "variants[1].users"));
    let mut negative = proportions();
    negative.variants[1].sum = -3.0;
    analyze_cases.push((negative, "variants[1].sum"));
    let mut above = proportions();
    above.variants[0].sum = 29.0;
    analyze_cases.push((above, "variants[0].sum"));
    let mut inconsistent = means();
    inconsistent.variants[1].sum_squares = 1.0;
    analyze_cases.push((inconsistent, "variants[1].sum_squares"));
    analyze_cases.push((with_alpha(1.5), "config.alpha"));
    analyze_cases.push((with_alpha(-0.1), "config.alpha"));
    analyze_cases.push((with_alpha(1.0), "config.alpha"));
    for (request, field) in analyze_cases {
        let status = client.analyze_summaries(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert_eq!(violated_fields(&status), vec![field], "{status:?}");
    }

    let adjust_cases = [(vec![], "p_values"), (vec![0.1, 1.5], "p_values[1]"), (vec![-0.1], "p_values[0]")];
    for (p_values, field) in adjust_cases {
        let request =
            pb::AdjustPValuesRequest { p_values, correction: pb::Correction::Holm as i32, ..Default::default() };
        let status = client.adjust_p_values(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert_eq!(violated_fields(&status), vec![field], "{status:?}");
    }

    let mean =
        pb::PlanExperimentRequest { baseline_mean: 10.0, baseline_variance: 4.0, mde: 0.5, ..Default::default() };
    let plan_cases = [
        (pb::PlanExperimentRequest { mde: 0.0, ..mean.clone() }, "mde"),
        (pb::PlanExperimentRequest { mde: -0.5, ..mean.clone() }, "mde"),
        (pb::PlanExperimentRequest { alpha: 1.5, ..mean.clone() }, "alpha"),
        (pb::PlanExperimentRequest { power: 1.0, ..mean.clone() }, "power"),
        (pb::PlanExperimentRequest { variants: 1, ..mean.clone() }, "variants"),
        (pb::PlanExperimentRequest { baseline_variance: 0.0, ..mean.clone() }, "baseline_variance"),
        (pb::PlanExperimentRequest { baseline_proportion: 1.5, ..mean.clone() }, "baseline_proportion"),
        (pb::PlanExperimentRequest { baseline_proportion: 0.95, mde: 0.1, ..Default::default() }, "mde"),
    ];
    for (request, field) in plan_cases {
        let status = client.plan_experiment(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert_eq!(violated_fields(&status), vec![field], "{status:?}");
    }
}
