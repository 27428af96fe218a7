//! AnalysisService end to end: one hand-made sequence per rule of SPEC §7, with the expected
//! answers worked out in comments. Times are seconds after 2026-01-01T00:00:00Z (a Thursday).

mod common;

use common::*;
use sextant::pb;
use sextant::pb::analysis_service_client::AnalysisServiceClient;
use tonic::Code;
use tonic::transport::Channel;

const MIN: i64 = 60;
const HOUR: i64 = 3600;
const DAY: i64 = 86_400;

fn analysis(server: &TestServer) -> AnalysisServiceClient<Channel> {
    server.analysis()
}

fn step(event: &str) -> pb::EventSelector {
    pb::EventSelector { event: event.into(), filters: vec![] }
}

fn range(from: i64, to: i64) -> Option<pb::TimeRange> {
    Some(pb::TimeRange { from: Some(ts(from)), to: Some(ts(to)) })
}

fn duration(seconds: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos: 0 })
}

/// A funnel over the given steps for 2026-01-01..2026-01-08 with a one-hour window.
fn funnel(steps: &[&str]) -> pb::QueryFunnelRequest {
    pb::QueryFunnelRequest {
        project: "p".into(),
        steps: steps.iter().map(|s| step(s)).collect(),
        range: range(0, 7 * DAY),
        window: duration(HOUR),
        ..Default::default()
    }
}

/// Starts a server with project "p" holding `events`: (user, event name, seconds), event ids
/// in order.
async fn with_events(events: &[(&str, &str, i64)]) -> TestServer {
    let server = TestServer::start().await;
    server.create_project("p").await;
    let events =
        events.iter().enumerate().map(|(i, (user, name, t))| event(&format!("e{i}"), name, user, *t)).collect();
    let reply = server.track("p", events).await;
    assert!(reply.rejected.is_empty(), "{:?}", reply.rejected);
    server
}

async fn run_funnel(server: &TestServer, request: pb::QueryFunnelRequest) -> pb::QueryFunnelResponse {
    analysis(server).query_funnel(request).await.expect("funnel").into_inner()
}

fn users(steps: &[pb::FunnelStep]) -> Vec<u64> {
    steps.iter().map(|s| s.users).collect()
}

#[tokio::test]
async fn an_event_fills_at_most_one_step() {
    // Steps view → view: a's single view cannot be both steps; b's two views are.
    let server = with_events(&[("a", "view", 0), ("b", "view", 0), ("b", "view", MIN)]).await;
    let reply = run_funnel(&server, funnel(&["view", "view"])).await;
    assert_eq!(users(&reply.steps), vec![2, 1]);
    assert_eq!(reply.steps[1].conversion_from_previous, 0.5);
    assert_eq!(reply.steps[1].median_seconds_from_previous, 60.0);
}

#[tokio::test]
async fn each_user_counts_with_the_furthest_attempt_and_the_earliest_on_ties() {
    let server = with_events(&[
        // u1: the attempt at 0 reaches B only; the one at 2 h reaches C: counted with 600 s, 600 s.
        ("u1", "A", 0),
        ("u1", "B", 10 * MIN),
        ("u1", "A", 2 * HOUR),
        ("u1", "B", 2 * HOUR + 10 * MIN),
        ("u1", "C", 2 * HOUR + 20 * MIN),
        // u2: both attempts reach B; the earliest (B after 300 s) counts, not the later 1200 s.
        ("u2", "A", 0),
        ("u2", "B", 5 * MIN),
        ("u2", "A", 3 * HOUR),
        ("u2", "B", 3 * HOUR + 20 * MIN),
    ])
    .await;
    let reply = run_funnel(&server, funnel(&["A", "B", "C"])).await;
    assert_eq!(users(&reply.steps), vec![2, 2, 1]);
    // Step 2 durations {600, 300}: median 450, mean 450. Step 3: {600}.
    assert_eq!(reply.steps[1].median_seconds_from_previous, 450.0);
    assert_eq!(reply.steps[1].mean_seconds_from_previous, 450.0);
    assert_eq!(reply.steps[2].median_seconds_from_previous, 600.0);
    assert_eq!(reply.steps[2].conversion_from_previous, 0.5);
    assert_eq!(reply.steps[2].conversion_from_start, 0.5);
    assert_eq!(reply.steps[0].conversion_from_previous, 1.0);
    assert_eq!(reply.steps[0].median_seconds_from_previous, 0.0);
    assert_eq!(reply.steps[0].event, "A");
}

#[tokio::test]
async fn the_window_runs_from_step_one_inclusive() {
    let server = with_events(&[
        // u1: C exactly one hour after A: inside the inclusive window.
        ("u1", "A", 0),
        ("u1", "B", 30 * MIN),
        ("u1", "C", HOUR),
        // u2: C one second later: outside, although it is only 30 min after B.
        ("u2", "A", 0),
        ("u2", "B", 30 * MIN),
        ("u2", "C", HOUR + 1),
    ])
    .await;
    let reply = run_funnel(&server, funnel(&["A", "B", "C"])).await;
    assert_eq!(users(&reply.steps), vec![2, 2, 1]);
}

#[tokio::test]
async fn entry_is_in_the_range_but_later_steps_may_fall_after_it() {
    let server = with_events(&[
        // u1 enters at 23:00 on day 0 (inside [day 0, day 1)) and converts at 00:30 on day 1.
        ("u1", "A", 23 * HOUR),
        ("u1", "B", DAY + 30 * MIN),
        // u2's step 1 is after the range: not in the funnel.
        ("u2", "A", DAY + HOUR),
        ("u2", "B", DAY + 2 * HOUR),
    ])
    .await;
    let mut request = funnel(&["A", "B"]);
    request.range = range(0, DAY);
    request.window = duration(2 * HOUR);
    let reply = run_funnel(&server, request).await;
    assert_eq!(users(&reply.steps), vec![1, 1]);
    assert_eq!(reply.steps[1].mean_seconds_from_previous, 5400.0);
}

#[tokio::test]
async fn strict_order_is_broken_by_any_other_event_in_between() {
    let server = with_events(&[
        ("u1", "A", 0),
        ("u1", "X", MIN),
        ("u1", "B", 2 * MIN),
        ("u2", "A", 0),
        ("u2", "B", MIN),
        ("u2", "X", 2 * MIN),
    ])
    .await;
    let mut request = funnel(&["A", "B"]);
    assert_eq!(users(&run_funnel(&server, request.clone()).await.steps), vec![2, 2], "ORDERED allows X between");
    request.order = pb::FunnelOrder::Strict as i32;
    assert_eq!(users(&run_funnel(&server, request).await.steps), vec![2, 1], "STRICT: only u2");
}

#[tokio::test]
async fn equal_timestamps_satisfy_the_order_whatever_the_arrival() {
    // B arrived before A with the same timestamp: t(B) ≥ t(A) holds.
    let server = with_events(&[("u1", "B", 5 * MIN), ("u1", "A", 5 * MIN)]).await;
    let reply = run_funnel(&server, funnel(&["A", "B"])).await;
    assert_eq!(users(&reply.steps), vec![1, 1]);
    assert_eq!(reply.steps[1].median_seconds_from_previous, 0.0);
    // STRICT too: nothing lies strictly between equal times.
    let mut request = funnel(&["A", "B"]);
    request.order = pb::FunnelOrder::Strict as i32;
    assert_eq!(users(&run_funnel(&server, request).await.steps), vec![1, 1]);
}

#[tokio::test]
async fn excluded_events_invalidate_an_attempt_but_not_the_user() {
    let server = with_events(&[
        // u1: X between steps 1 and 2 spoils the first attempt; the second one is clean.
        ("u1", "A", 0),
        ("u1", "X", MIN),
        ("u1", "B", 2 * MIN),
        ("u1", "C", 3 * MIN),
        ("u1", "A", 10 * MIN),
        ("u1", "B", 11 * MIN),
        ("u1", "C", 12 * MIN),
        // u2: the only attempt is spoilt: u2 is not in the funnel at all.
        ("u2", "A", 0),
        ("u2", "X", MIN),
        ("u2", "B", 2 * MIN),
        // u3: X falls between steps 2 and 3, outside the excluded span.
        ("u3", "A", 0),
        ("u3", "B", MIN),
        ("u3", "X", 2 * MIN),
        ("u3", "C", 3 * MIN),
        // u4 never reached step 2: the span [step 1, last reached step] is empty.
        ("u4", "A", 0),
        ("u4", "X", MIN),
    ])
    .await;
    let mut request = funnel(&["A", "B", "C"]);
    request.exclusions = vec![pb::FunnelExclusion { event: Some(step("X")), from_step: 1, to_step: 2 }];
    let reply = run_funnel(&server, request.clone()).await;
    assert_eq!(users(&reply.steps), vec![3, 2, 2]);
    // u1 counts with its clean attempt: B one minute after A.
    assert_eq!(reply.steps[1].median_seconds_from_previous, 60.0);
    // Over the whole funnel (0: first to last step) u3's X counts too.
    request.exclusions[0].to_step = 0;
    assert_eq!(users(&run_funnel(&server, request).await.steps), vec![2, 1, 1]);
}

#[tokio::test]
async fn unordered_steps_count_in_completion_order_within_the_window() {
    let server = with_events(&[
        // u1: C then B after A: all three, step times in completion order: 600 s, 600 s.
        ("u1", "A", 0),
        ("u1", "C", 10 * MIN),
        ("u1", "B", 20 * MIN),
        // u2: B outside the window.
        ("u2", "A", 0),
        ("u2", "B", 2 * HOUR),
        // u3: C before step 1 does not count.
        ("u3", "C", 0),
        ("u3", "A", 10 * MIN),
        ("u3", "B", 20 * MIN),
    ])
    .await;
    let mut request = funnel(&["A", "B", "C"]);
    request.order = pb::FunnelOrder::Unordered as i32;
    let reply = run_funnel(&server, request).await;
    assert_eq!(users(&reply.steps), vec![3, 2, 1]);
    assert_eq!(reply.steps[1].mean_seconds_from_previous, 600.0);
    assert_eq!(reply.steps[2].mean_seconds_from_previous, 600.0);
    // ORDERED: u1 reaches B but not C after it.
    let reply = run_funnel(&server, funnel(&["A", "B", "C"])).await;
    assert_eq!(users(&reply.steps), vec![3, 2, 0]);
    assert_eq!(reply.steps[2].conversion_from_previous, 0.0);
}

#[tokio::test]
async fn total_conversions_count_every_attempt() {
    let server = with_events(&[("u1", "A", 0), ("u1", "B", MIN), ("u1", "A", 10 * MIN), ("u2", "A", 0)]).await;
    let mut request = funnel(&["A", "B"]);
    request.mode = pb::FunnelMode::TotalConversions as i32;
    // Attempts: u1 at 0 (reaches B), u1 at 10 min (B was before it), u2 at 0.
    assert_eq!(users(&run_funnel(&server, request).await.steps), vec![3, 1]);
}

#[tokio::test]
async fn breakdown_by_a_step_one_property_uses_the_counted_attempt() {
    let server = TestServer::start().await;
    server.create_project("p").await;
    server
        .track(
            "p",
            vec![
                // u1's first attempt (source ad) never reaches B within 15 min; the second
                // (source mail) does, so u1 counts under "mail".
                with_props(event("e1", "A", "u1", 0), &[("source", text("ad"))]),
                with_props(event("e2", "A", "u1", 10 * MIN), &[("source", text("mail"))]),
                event("e3", "B", "u1", 20 * MIN),
                event("e4", "A", "u2", 0),
                with_props(event("e5", "A", "u3", 0), &[("source", text("mail"))]),
            ],
        )
        .await;
    let mut request = funnel(&["A", "B"]);
    request.window = duration(15 * MIN);
    request.breakdown = "source".into();
    let reply = run_funnel(&server, request.clone()).await;
    assert_eq!(users(&reply.steps), vec![3, 1]);
    let breakdowns: Vec<(String, Vec<u64>)> =
        reply.breakdowns.iter().map(|b| (b.value.clone(), users(&b.steps))).collect();
    // By step-1 users descending: mail (u1, u3), then $none (u2).
    assert_eq!(breakdowns, vec![("mail".into(), vec![2, 1]), ("$none".into(), vec![1, 0])]);
    // A limit of one folds the rest into $other, last.
    request.breakdown_limit = 1;
    let reply = run_funnel(&server, request).await;
    let values: Vec<&str> = reply.breakdowns.iter().map(|b| b.value.as_str()).collect();
    assert_eq!(values, vec!["mail", "$other"]);
}

#[tokio::test]
async fn filters_apply_to_every_step_and_cohorts_restrict_who_enters() {
    let server = TestServer::start().await;
    server.create_project("p").await;
    server
        .track(
            "p",
            vec![
                with_props(
                    event("e1", "A", "u1", 0),
                    &[("web", pb::Value { kind: Some(pb::value::Kind::BoolValue(true)) })],
                ),
                with_props(
                    event("e2", "B", "u1", MIN),
                    &[("web", pb::Value { kind: Some(pb::value::Kind::BoolValue(true)) })],
                ),
                with_props(
                    event("e3", "A", "u2", 0),
                    &[("web", pb::Value { kind: Some(pb::value::Kind::BoolValue(true)) })],
                ),
                event("e4", "B", "u2", MIN),
            ],
        )
        .await;
    let mut request = funnel(&["A", "B"]);
    request.filters = vec![pb::Filter {
        property: "web".into(),
        op: pb::FilterOp::Eq as i32,
        values: vec![pb::Value { kind: Some(pb::value::Kind::BoolValue(true)) }],
    }];
    // u2's B has no `web`: u2 stops at step 1.
    assert_eq!(users(&run_funnel(&server, request.clone()).await.steps), vec![2, 1]);
    server
        .cohorts()
        .create_cohort(pb::CreateCohortRequest {
            project: "p".into(),
            cohort: Some(pb::Cohort {
                id: "only-u2".into(),
                definition: Some(pb::cohort::Definition::StaticMembers(pb::StaticCohortMembers {
                    user_ids: vec!["u2".into()],
                })),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    request.filters.clear();
    request.cohort_id = "only-u2".into();
    assert_eq!(users(&run_funnel(&server, request).await.steps), vec![1, 1]);
}

#[tokio::test]
async fn bad_funnels_are_rejected_naming_the_field() {
    let server = with_events(&[("u1", "A", 0)]).await;
    let mut client = analysis(&server);
    let cases: Vec<(pb::QueryFunnelRequest, Code, &str)> = vec![
        (funnel(&["A"]), Code::InvalidArgument, "steps"),
        (funnel(&["A"; 65]), Code::InvalidArgument, "steps"),
        (funnel(&["A", ""]), Code::InvalidArgument, "steps[1].event"),
        (pb::QueryFunnelRequest { range: None, ..funnel(&["A", "B"]) }, Code::InvalidArgument, "range"),
        (pb::QueryFunnelRequest { range: range(DAY, 0), ..funnel(&["A", "B"]) }, Code::InvalidArgument, "range"),
        (pb::QueryFunnelRequest { window: duration(-1), ..funnel(&["A", "B"]) }, Code::InvalidArgument, "window"),
        (
            pb::QueryFunnelRequest { timezone: "Mars/Olympus".into(), ..funnel(&["A", "B"]) },
            Code::InvalidArgument,
            "timezone",
        ),
        (pb::QueryFunnelRequest { order: 9, ..funnel(&["A", "B"]) }, Code::InvalidArgument, "order"),
        (
            pb::QueryFunnelRequest {
                exclusions: vec![pb::FunnelExclusion { event: Some(step("X")), from_step: 1, to_step: 3 }],
                ..funnel(&["A", "B"])
            },
            Code::InvalidArgument,
            "exclusions[0].to_step",
        ),
        (
            pb::QueryFunnelRequest {
                exclusions: vec![pb::FunnelExclusion { event: Some(step("X")), from_step: 2, to_step: 2 }],
                ..funnel(&["A", "B"])
            },
            Code::InvalidArgument,
            "exclusions[0].from_step",
        ),
        (pb::QueryFunnelRequest { cohort_id: "nobody".into(), ..funnel(&["A", "B"]) }, Code::NotFound, ""),
        (pb::QueryFunnelRequest { project: "nope".into(), ..funnel(&["A", "B"]) }, Code::NotFound, ""),
    ];
    for (request, code, field) in cases {
        let status = client.query_funnel(request).await.expect_err("rejected");
        assert_eq!(status.code(), code, "{status:?}");
        if !field.is_empty() {
            assert_eq!(violated_fields(&status), vec![field.to_string()], "{status:?}");
        } else {
            assert!(status.message().contains("not found"), "{status:?}");
        }
    }
}

fn retention(cohort_event: &str, return_event: &str) -> pb::QueryRetentionRequest {
    pb::QueryRetentionRequest {
        project: "p".into(),
        cohort_event: Some(step(cohort_event)),
        return_event: Some(step(return_event)),
        first_time: true,
        period: pb::Period::Day as i32,
        periods: 3,
        range: range(0, 7 * DAY),
        ..Default::default()
    }
}

async fn run_retention(server: &TestServer, request: pb::QueryRetentionRequest) -> pb::QueryRetentionResponse {
    analysis(server).query_retention(request).await.expect("retention").into_inner()
}

#[tokio::test]
async fn retention_calendar_or_rolling_bounded_or_unbounded() {
    let server = with_events(&[
        // u1: signup at 23:00, back two hours later on the next calendar day.
        ("u1", "signup", 23 * HOUR),
        ("u1", "session", DAY + HOUR),
        // u2: signup at 10:00, back 47 hours later (calendar day 2, rolling day 1).
        ("u2", "signup", 10 * HOUR),
        ("u2", "session", 2 * DAY + 9 * HOUR),
        // u3: never back.
        ("u3", "signup", 12 * HOUR),
    ])
    .await;
    let retained = |reply: &pb::QueryRetentionResponse| {
        assert_eq!(reply.cohorts.len(), 1);
        reply.cohorts[0].retained.clone()
    };
    let calendar = run_retention(&server, retention("signup", "session")).await;
    assert_eq!(calendar.cohorts[0].size, 3);
    assert_eq!(calendar.cohorts[0].start, Some(ts(0)));
    assert_eq!(calendar.cohorts[0].breakdown_value, "");
    assert_eq!(retained(&calendar), vec![0, 1, 1]);
    assert_eq!(calendar.cohorts[0].shares, vec![0.0, 1.0 / 3.0, 1.0 / 3.0]);
    assert_eq!(calendar.cohorts[0].complete, vec![true, true, true]);
    assert_eq!(calendar.average_shares, vec![0.0, 1.0 / 3.0, 1.0 / 3.0]);
    assert_eq!(calendar.average_users, vec![3, 3, 3]);

    let unbounded =
        run_retention(&server, pb::QueryRetentionRequest { unbounded: true, ..retention("signup", "session") });
    assert_eq!(retained(&unbounded.await), vec![2, 2, 1]);
    let rolling =
        pb::QueryRetentionRequest { mode: pb::RetentionMode::Rolling as i32, ..retention("signup", "session") };
    assert_eq!(retained(&run_retention(&server, rolling.clone()).await), vec![1, 1, 0]);
    let rolling_unbounded = pb::QueryRetentionRequest { unbounded: true, ..rolling };
    assert_eq!(retained(&run_retention(&server, rolling_unbounded).await), vec![2, 1, 0]);
    // Any event returns, the cohort event itself included: everyone is back in period 0.
    let any = pb::QueryRetentionRequest { return_event: None, ..retention("signup", "session") };
    assert_eq!(retained(&run_retention(&server, any).await), vec![3, 1, 1]);
}

#[tokio::test]
async fn recurring_cohorts_enter_every_period_with_a_cohort_event() {
    let server = with_events(&[
        ("u1", "session", HOUR),
        ("u1", "session", 5 * HOUR),
        ("u1", "session", DAY + HOUR),
        ("u2", "session", DAY + 2 * HOUR),
    ])
    .await;
    let mut request = retention("session", "session");
    request.first_time = false;
    let reply = run_retention(&server, request.clone()).await;
    let rows: Vec<(Option<prost_types::Timestamp>, u64, Vec<u64>)> =
        reply.cohorts.iter().map(|c| (c.start, c.size, c.retained.clone())).collect();
    // Day 0: u1 (back on day 1). Day 1: u1 and u2, back in period 0 through their own event.
    assert_eq!(rows, vec![(Some(ts(0)), 1, vec![1, 1, 0]), (Some(ts(DAY)), 2, vec![2, 0, 0])]);
    // Weighted averages: period 0 (1 + 2) / 3, period 1 (1 + 0) / 3.
    assert_eq!(reply.average_shares, vec![1.0, 1.0 / 3.0, 0.0]);
    request.first_time = true;
    let reply = run_retention(&server, request).await;
    let sizes: Vec<u64> = reply.cohorts.iter().map(|c| c.size).collect();
    assert_eq!(sizes, vec![1, 1], "first time: u1 on day 0, u2 on day 1");
}

#[tokio::test]
async fn unfinished_periods_are_marked_and_left_out_of_the_averages() {
    let server = TestServer::start().await;
    server.create_project("p").await;
    let now = chrono::Utc::now().timestamp() - 1_767_225_600;
    server
        .track(
            "p",
            vec![
                event("old", "signup", "u1", 0),
                event("old-back", "session", "u1", DAY),
                event("new", "signup", "u2", now),
            ],
        )
        .await;
    let mut request = retention("signup", "session");
    request.range = range(0, now + 1);
    let reply = run_retention(&server, request).await;
    assert_eq!(reply.cohorts.len(), 2);
    assert_eq!(reply.cohorts[0].complete, vec![true, true, true]);
    // Today's row: period 0 (today) is not over, nor are the later ones.
    assert_eq!(reply.cohorts[1].complete, vec![false, false, false]);
    assert_eq!(reply.average_users, vec![1, 1, 1]);
    assert_eq!(reply.average_shares, vec![0.0, 1.0, 0.0]);
}

#[tokio::test]
async fn retention_breaks_down_by_a_trait_with_one_row_per_value() {
    let server =
        with_events(&[("u1", "signup", 0), ("u2", "signup", HOUR), ("u1", "session", DAY), ("u3", "signup", 0)]).await;
    server
        .ingest()
        .identify(pb::IdentifyRequest {
            project: "p".into(),
            users: ["u1", "u2"]
                .iter()
                .map(|u| pb::UserUpdate {
                    user_id: u.to_string(),
                    set: [("channel".to_string(), text("ads"))].into(),
                    ..Default::default()
                })
                .collect(),
        })
        .await
        .unwrap();
    let request = pb::QueryRetentionRequest { breakdown: "user.channel".into(), ..retention("signup", "session") };
    let reply = run_retention(&server, request).await;
    let rows: Vec<(&str, u64, Vec<u64>)> =
        reply.cohorts.iter().map(|c| (c.breakdown_value.as_str(), c.size, c.retained.clone())).collect();
    assert_eq!(rows, vec![("$none", 1, vec![0, 0, 0]), ("ads", 2, vec![0, 1, 0])]);
    assert_eq!(reply.average_users, vec![3, 3, 3]);
}

#[tokio::test]
async fn bad_retention_requests_are_rejected_naming_the_field() {
    let server = with_events(&[("u1", "signup", 0)]).await;
    let mut client = analysis(&server);
    let cases = vec![
        (pb::QueryRetentionRequest { cohort_event: None, ..retention("signup", "session") }, "cohort_event"),
        (pb::QueryRetentionRequest { periods: 1001, ..retention("signup", "session") }, "periods"),
        (pb::QueryRetentionRequest { timezone: "Nowhere/City".into(), ..retention("signup", "session") }, "timezone"),
        (pb::QueryRetentionRequest { period: 7, ..retention("signup", "session") }, "period"),
        (pb::QueryRetentionRequest { range: None, ..retention("signup", "session") }, "range"),
        (pb::QueryRetentionRequest { range: range(DAY, DAY), ..retention("signup", "session") }, "range"),
    ];
    for (request, field) in cases {
        let status = client.query_retention(request).await.expect_err("rejected");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(violated_fields(&status), vec![field.to_string()]);
    }
    let status = client
        .query_retention(pb::QueryRetentionRequest { cohort_id: "ghost".into(), ..retention("signup", "session") })
        .await
        .expect_err("unknown cohort");
    assert_eq!(status.code(), Code::NotFound);
    // periods 0 means the default of 8.
    let reply =
        run_retention(&server, pb::QueryRetentionRequest { periods: 0, ..retention("signup", "session") }).await;
    assert_eq!(reply.cohorts[0].retained.len(), 8);
}

#[tokio::test]
async fn cohort_tables_give_retention_revenue_and_the_ltv_curve() {
    let server = TestServer::start().await;
    server.create_project("p").await;
    let buy = |id: &str, user: &str, t: i64, revenue: f64| {
        with_props(event(id, "purchase", user, t), &[("revenue", num(revenue))])
    };
    server
        .track(
            "p",
            vec![
                // Week of 2025-12-29 (Monday): u1 and u2 first seen on 2026-01-01 and 01-02.
                event("a1", "visit", "u1", 0),
                buy("b1", "u1", HOUR, 10.0),
                buy("b2", "u1", 7 * DAY, 5.0),
                event("a2", "visit", "u2", DAY),
                buy("b3", "u2", 15 * DAY, 30.0),
                // Week of 2026-01-05: u3.
                event("a3", "visit", "u3", 5 * DAY),
            ],
        )
        .await;
    let request = pb::QueryCohortTableRequest {
        project: "p".into(),
        range: range(0, 7 * DAY),
        period: pb::Period::Week as i32,
        periods: 3,
        value: pb::CohortTableValue::RevenuePerUser as i32,
        revenue: Some(step("purchase")),
        revenue_property: "revenue".into(),
        ..Default::default()
    };
    let mut client = analysis(&server);
    let reply = client.query_cohort_table(request.clone()).await.unwrap().into_inner();
    let rows: Vec<(u64, Vec<f64>)> = reply.rows.iter().map(|r| (r.users, r.values.clone())).collect();
    // Row 1 (2 users): week 0 revenue 10, week 1 5, week 2 30 → per user 5, 2.5, 15. Row 2: none.
    assert_eq!(rows, vec![(2, vec![5.0, 2.5, 15.0]), (1, vec![0.0, 0.0, 0.0])]);
    assert_eq!(reply.rows[0].start, Some(ts(-3 * DAY)));
    // Averages over both rows (all periods complete): (10 + 0) / 3, 5 / 3, 30 / 3.
    assert_eq!(reply.average_values, vec![10.0 / 3.0, 5.0 / 3.0, 10.0]);
    assert_eq!(reply.average_users, vec![3, 3, 3]);

    let cumulative =
        pb::QueryCohortTableRequest { value: pb::CohortTableValue::CumulativeRevenuePerUser as i32, ..request.clone() };
    let reply = client.query_cohort_table(cumulative).await.unwrap().into_inner();
    assert_eq!(reply.rows[0].values, vec![5.0, 7.5, 22.5]);

    let share = pb::QueryCohortTableRequest {
        value: pb::CohortTableValue::RetentionShare as i32,
        return_event: Some(step("purchase")),
        ..request.clone()
    };
    let reply = client.query_cohort_table(share).await.unwrap().into_inner();
    // Row 1: buyers in week 0 {u1}, week 1 {u1}, week 2 {u2}.
    assert_eq!(reply.rows[0].values, vec![0.5, 0.5, 0.5]);

    let missing_revenue = pb::QueryCohortTableRequest { revenue: None, ..request };
    let status = client.query_cohort_table(missing_revenue).await.expect_err("revenue required");
    assert_eq!(violated_fields(&status), vec!["revenue".to_string()]);
}

#[tokio::test]
async fn deleted_users_leave_funnels_retention_and_cohorts() {
    let server =
        with_events(&[("u1", "A", 0), ("u1", "B", MIN), ("u2", "A", 0), ("u2", "B", 2 * MIN), ("u3", "A", 0)]).await;
    // The first queries build and cache the events by person; the deletion must reach them.
    assert_eq!(users(&run_funnel(&server, funnel(&["A", "B"])).await.steps), vec![3, 2]);
    let mut request = retention("A", "B");
    request.period = pb::Period::Day as i32;
    assert_eq!(run_retention(&server, request.clone()).await.cohorts[0].retained[0], 2);
    let deleted = server
        .users()
        .delete_user(pb::DeleteUserRequest { project: "p".into(), user_id: "u1".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.events_deleted, 2);
    let reply = run_funnel(&server, funnel(&["A", "B"])).await;
    assert_eq!(users(&reply.steps), vec![2, 1]);
    assert_eq!(reply.steps[1].median_seconds_from_previous, 120.0, "only u2's conversion is left");
    let table = run_retention(&server, request).await;
    assert_eq!((table.cohorts[0].size, table.cohorts[0].retained[0]), (2, 1));
}
