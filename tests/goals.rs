//! GoalService end to end: progress of additive goals (current / target) and of non-additive
//! ones ((current − baseline) / (target − baseline)), in both directions, with absolute and
//! relative targets, before, during and after the period. Every number is computed by hand.
//! Day d is 2026-01-01 (UTC) plus d days.

mod common;

use common::*;
use sextant::pb;
use sextant::pb::goal_service_client::GoalServiceClient;
use sextant::pb::metric_service_client::MetricServiceClient;
use tonic::transport::Channel;

const DAY: i64 = 86_400;

/// Signups, each by a new user: one a day on days 0–9 (the baseline period of a goal on
/// days 10–19), two a day on days 10–14, one a day on days 15–19.
async fn signups() -> TestServer {
    let server = TestServer::start().await;
    server.create_project("p").await;
    let mut events = Vec::new();
    for day in 0..20 {
        let per_day = if (10..15).contains(&day) { 2 } else { 1 };
        for n in 0..per_day {
            let id = format!("s{day}-{n}");
            events.push(event(&id, "signup", &id, day * DAY + 3_600 * (9 + n)));
        }
    }
    assert_eq!(server.track("p", events).await.accepted, 25);
    let mut metrics = MetricServiceClient::new(server.channel.clone());
    for (key, kind) in [("signups", pb::MetricKind::Count), ("signup_users", pb::MetricKind::UniqueUsers)] {
        let metric = pb::MetricDefinition {
            key: key.into(),
            kind: kind as i32,
            selector: Some(pb::EventSelector { event: "signup".into(), filters: vec![] }),
            ..Default::default()
        };
        metrics.create_metric(pb::CreateMetricRequest { project: "p".into(), metric: Some(metric) }).await.unwrap();
    }
    server
}

fn goals(server: &TestServer) -> GoalServiceClient<Channel> {
    GoalServiceClient::new(server.channel.clone())
}

async fn create(server: &TestServer, id: &str, metric: &str, target: pb::goal::Target, direction: pb::Direction) {
    let goal = pb::Goal {
        id: id.into(),
        metric_key: metric.into(),
        granularity: pb::Granularity::Day as i32,
        period: Some(pb::TimeRange { from: Some(ts(10 * DAY)), to: Some(ts(20 * DAY)) }),
        target: Some(target),
        direction: direction as i32,
        ..Default::default()
    };
    goals(server).create_goal(pb::CreateGoalRequest { project: "p".into(), goal: Some(goal) }).await.unwrap();
}

/// (status, current, target, progress, expected progress, projected) as of the start of `day`.
type Reading = (pb::GoalStatus, Option<f64>, Option<f64>, Option<f64>, f64, Option<f64>);

async fn read(server: &TestServer, id: &str, day: i64) -> Reading {
    let request = pb::GetGoalProgressRequest { project: "p".into(), id: id.into(), as_of: Some(ts(day * DAY)) };
    let r = goals(server).get_goal_progress(request).await.unwrap().into_inner();
    // Rounded to 12 places so that hand-computed fractions compare exactly.
    let round = |v: Option<f64>| v.map(|v| (v * 1e12).round() / 1e12);
    let status = pb::GoalStatus::try_from(r.status).unwrap();
    (status, r.current, round(r.target), round(r.progress), r.expected_progress, round(r.projected))
}

fn fraction(n: f64, d: f64) -> Option<f64> {
    Some((n / d * 1e12).round() / 1e12)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn additive_goals_report_the_share_of_the_target_reached() {
    use pb::GoalStatus::*;
    use pb::goal::Target::{RelativeTarget, TargetValue};
    let server = signups().await;
    // The baseline period (days 0–9) holds 10 signups.
    create(&server, "plus-20", "signups", RelativeTarget(0.2), pb::Direction::Increase).await;
    create(&server, "reach-30", "signups", TargetValue(30.0), pb::Direction::Increase).await;
    create(&server, "cap-40", "signups", TargetValue(40.0), pb::Direction::Decrease).await;
    create(&server, "minus-10", "signups", RelativeTarget(-0.1), pb::Direction::Decrease).await;

    // Before the period nothing is measured.
    for id in ["plus-20", "reach-30", "cap-40", "minus-10"] {
        let (status, current, _, progress, expected, projected) = read(&server, id, 5).await;
        assert_eq!((status, current, progress, expected, projected), (NotStarted, None, None, 0.0, None), "{id}");
    }

    // +20% over the baseline's 10: target 12. On day 15 (half the period) 10 signups: 10/12 of
    // the target against an expected half, projected 10 × 10 / 5 = 20. (The old formula,
    // (10 − 10) / (12 − 10) = 0, read as no progress at all.)
    assert_eq!(
        read(&server, "plus-20", 15).await,
        (OnTrack, Some(10.0), Some(12.0), fraction(10.0, 12.0), 0.5, Some(20.0))
    );
    // Day 12: 4 signups, 4/12, projected 4 × 10 / 2 = 20.
    assert_eq!(
        read(&server, "plus-20", 12).await,
        (OnTrack, Some(4.0), Some(12.0), fraction(4.0, 12.0), 0.2, Some(20.0))
    );
    // After the period: 15 signups, 15/12 of the target.
    assert_eq!(read(&server, "plus-20", 21).await, (Achieved, Some(15.0), Some(12.0), Some(1.25), 1.0, Some(15.0)));

    // Absolute 30: 10/30 on day 15; projected 20 is half of the way from 10 to 30: off track.
    assert_eq!(
        read(&server, "reach-30", 15).await,
        (OffTrack, Some(10.0), Some(30.0), fraction(10.0, 30.0), 0.5, Some(20.0))
    );
    assert_eq!(read(&server, "reach-30", 21).await, (Missed, Some(15.0), Some(30.0), Some(0.5), 1.0, Some(15.0)));

    // DECREASE: the target is a cap and progress the share of it used. A cap of 40: a quarter
    // used on day 15, projected 20 stays under it; 15 used of 40 at the end.
    assert_eq!(read(&server, "cap-40", 15).await, (OnTrack, Some(10.0), Some(40.0), Some(0.25), 0.5, Some(20.0)));
    assert_eq!(read(&server, "cap-40", 21).await, (Achieved, Some(15.0), Some(40.0), Some(0.375), 1.0, Some(15.0)));
    // −10% of the baseline: a cap of 9. Day 12: 4 of 9 used, but projected 20 is over it.
    assert_eq!(
        read(&server, "minus-10", 12).await,
        (OffTrack, Some(4.0), Some(9.0), fraction(4.0, 9.0), 0.2, Some(20.0))
    );
    assert_eq!(
        read(&server, "minus-10", 21).await,
        (Missed, Some(15.0), Some(9.0), fraction(15.0, 9.0), 1.0, Some(15.0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_additive_goals_keep_progress_from_the_baseline() {
    use pb::GoalStatus::*;
    use pb::goal::Target::{RelativeTarget, TargetValue};
    let server = signups().await;
    // Daily signing-up users: the baseline is the baseline period's last day (day 9): 1.
    create(&server, "dau-3", "signup_users", TargetValue(3.0), pb::Direction::Increase).await;
    create(&server, "dau-double", "signup_users", RelativeTarget(1.0), pb::Direction::Increase).await;
    // Day 15: the latest complete day (14) has 2: (2 − 1) / (3 − 1) = 0.5; the line through
    // days 10–14 (all 2) projects 2, half of the way: off track.
    assert_eq!(read(&server, "dau-3", 15).await, (OffTrack, Some(2.0), Some(3.0), Some(0.5), 0.5, Some(2.0)));
    // Doubling 1 is a target of 2: met on day 15.
    assert_eq!(read(&server, "dau-double", 15).await, (Achieved, Some(2.0), Some(2.0), Some(1.0), 0.5, Some(2.0)));
    // After the period the last day (19) has 1: (1 − 1) / (3 − 1) = 0.
    assert_eq!(read(&server, "dau-3", 21).await, (Missed, Some(1.0), Some(3.0), Some(0.0), 1.0, Some(1.0)));
    assert_eq!(read(&server, "dau-3", 5).await, (NotStarted, None, Some(3.0), None, 0.0, None));
}
