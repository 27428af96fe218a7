//! Frameworks, SaaS revenue and forecasts end to end (SPEC §16): the revenue bridge on
//! hand-made subscription histories with the answers worked out in comments, ApplyFramework,
//! ForecastMetric and their bad input. Times are seconds after 2026-01-01T00:00:00Z (a Thursday).

mod common;

use common::*;
use sextant::pb;
use sextant::pb::analysis_service_client::AnalysisServiceClient;
use sextant::pb::metric_service_client::MetricServiceClient;
use tonic::Code;
use tonic::transport::Channel;

const HOUR: i64 = 3600;
const DAY: i64 = 86_400;

fn analysis(server: &TestServer) -> AnalysisServiceClient<Channel> {
    AnalysisServiceClient::new(server.channel.clone())
}

fn metrics(server: &TestServer) -> MetricServiceClient<Channel> {
    MetricServiceClient::new(server.channel.clone())
}

fn range(from: i64, to: i64) -> Option<pb::TimeRange> {
    Some(pb::TimeRange { from: Some(ts(from)), to: Some(ts(to)) })
}

fn selector(event: &str) -> Option<pb::EventSelector> {
    Some(pb::EventSelector { event: event.into(), filters: vec![] })
}

/// A `subscription_changed` event setting `user`'s MRR at `seconds`.
fn change(id: &str, user: &str, seconds: i64, mrr: f64) -> pb::Event {
    with_props(event(id, "subscription_changed", user, seconds), &[("mrr", num(mrr)), ("plan", text("pro"))])
}

fn bridge_request(from: i64, to: i64, granularity: pb::Granularity) -> pb::QueryRevenueBridgeRequest {
    pb::QueryRevenueBridgeRequest {
        project: "p".into(),
        subscription: selector("subscription_changed"),
        mrr_property: "mrr".into(),
        range: range(from, to),
        granularity: granularity as i32,
        timezone: String::new(),
    }
}

async fn bridge(server: &TestServer, from: i64, to: i64) -> Vec<pb::RevenuePeriod> {
    let request = bridge_request(from, to, pb::Granularity::Day);
    analysis(server).query_revenue_bridge(request).await.expect("bridge").into_inner().periods
}

/// (starting, new, reactivation, expansion, contraction, churned, ending) of a period.
fn movements(p: &pb::RevenuePeriod) -> [f64; 7] {
    [p.starting_mrr, p.new_mrr, p.reactivation_mrr, p.expansion_mrr, p.contraction_mrr, p.churned_mrr, p.ending_mrr]
}

/// (starting, new, churned, ending) customers of a period.
fn customers(p: &pb::RevenuePeriod) -> [u64; 4] {
    [p.starting_customers, p.new_customers, p.churned_customers, p.ending_customers]
}

async fn with_events(events: Vec<pb::Event>) -> TestServer {
    let server = TestServer::start().await;
    server.create_project("p").await;
    let reply = server.track("p", events).await;
    assert!(reply.rejected.is_empty(), "{:?}", reply.rejected);
    server
}

#[tokio::test]
async fn revenue_bridge_follows_each_customer() {
    let server = with_events(vec![
        // ann: 100 on day 0; on day 1 upgraded to 150 then downgraded to 120 (net +20).
        change("a1", "ann", 2 * HOUR, 100.0),
        change("a2", "ann", DAY + 2 * HOUR, 150.0),
        change("a3", "ann", DAY + 5 * HOUR, 120.0),
        // bob: 50 on day 0, cancelled on day 1, back at 80 on day 2.
        change("b1", "bob", 3 * HOUR, 50.0),
        change("b2", "bob", DAY + 3 * HOUR, 0.0),
        change("b3", "bob", 2 * DAY + 3 * HOUR, 80.0),
        // cat: seats change 30 -> 45 on day 2 (MRR changes, the customer count does not).
        change("c1", "cat", 4 * HOUR, 30.0),
        change("c2", "cat", 2 * DAY + HOUR, 45.0),
        // dan: first subscribes at exactly the start of day 4 (counts in day 4, not day 3).
        change("d1", "dan", 4 * DAY, 10.0),
        // Other events do not move MRR.
        event("x1", "session_start", "ann", DAY),
    ])
    .await;
    let periods = bridge(&server, 0, 5 * DAY).await;
    assert_eq!(periods.len(), 5);
    let starts: Vec<i64> = periods.iter().map(|p| p.start.unwrap().seconds - ts(0).seconds).collect();
    assert_eq!(starts, [0, DAY, 2 * DAY, 3 * DAY, 4 * DAY]);
    assert_eq!(periods[0].end, Some(ts(DAY)));

    // Day 0: starting MRR 0, so NRR and GRR have no value; three new customers (100+50+30).
    assert_eq!(movements(&periods[0]), [0.0, 180.0, 0.0, 0.0, 0.0, 0.0, 180.0]);
    assert_eq!(customers(&periods[0]), [0, 3, 0, 3]);
    assert_eq!((periods[0].net_revenue_retention, periods[0].gross_revenue_retention), (None, None));

    // Day 1: ann +20 (upgrade and downgrade in one bucket), bob churns 50.
    // NRR = (180 + 20 − 0 − 50) / 180; GRR = (180 − 0 − 50) / 180.
    assert_eq!(movements(&periods[1]), [180.0, 0.0, 0.0, 20.0, 0.0, 50.0, 150.0]);
    assert_eq!(customers(&periods[1]), [3, 0, 1, 2]);
    assert_eq!(periods[1].net_revenue_retention, Some(150.0 / 180.0));
    assert_eq!(periods[1].gross_revenue_retention, Some(130.0 / 180.0));

    // Day 2: bob reactivates at 80 (a new customer again), cat expands by 15.
    assert_eq!(movements(&periods[2]), [150.0, 0.0, 80.0, 15.0, 0.0, 0.0, 245.0]);
    assert_eq!(customers(&periods[2]), [2, 1, 0, 3]);
    assert_eq!(periods[2].net_revenue_retention, Some(165.0 / 150.0));
    assert_eq!(periods[2].gross_revenue_retention, Some(1.0));

    // Day 3: no event at all; MRR carries over.
    assert_eq!(movements(&periods[3]), [245.0, 0.0, 0.0, 0.0, 0.0, 0.0, 245.0]);
    assert_eq!(customers(&periods[3]), [3, 0, 0, 3]);
    assert_eq!(periods[3].net_revenue_retention, Some(1.0));

    // Day 4: dan's event at exactly 4 × DAY moves this bucket.
    assert_eq!(movements(&periods[4]), [245.0, 10.0, 0.0, 0.0, 0.0, 0.0, 255.0]);

    // One TOTAL period over the same range: 0 -> 255, bob counted as new (he had no MRR
    // before the range), no churn since he is back by the end.
    let request = bridge_request(0, 5 * DAY, pb::Granularity::Total);
    let total = analysis(&server).query_revenue_bridge(request).await.unwrap().into_inner().periods;
    assert_eq!(total.len(), 1);
    assert_eq!(movements(&total[0]), [0.0, 255.0, 0.0, 0.0, 0.0, 0.0, 255.0]);
    assert_eq!(customers(&total[0]), [0, 4, 0, 4]);
}

#[tokio::test]
async fn revenue_bridge_in_a_time_zone_by_week() {
    // In Tokyo (UTC+9) the week of Monday 2026-01-05 starts at 2026-01-04T15:00Z.
    let server = with_events(vec![
        change("a1", "ann", 0, 40.0),
        // 2026-01-04T16:00Z is Monday 01:00 in Tokyo: the second week.
        change("a2", "ann", 3 * DAY + 16 * HOUR, 10.0),
    ])
    .await;
    let mut request = bridge_request(0, 14 * DAY, pb::Granularity::Week);
    request.timezone = "Asia/Tokyo".into();
    let reply = analysis(&server).query_revenue_bridge(request).await.unwrap().into_inner();
    assert_eq!(reply.timezone, "Asia/Tokyo");
    // Weeks starting Mon 2025-12-29, 2026-01-05 and 2026-01-12 (Tokyo): 2025-12-28T15:00Z, …
    let starts: Vec<i64> = reply.periods.iter().map(|p| p.start.unwrap().seconds - ts(0).seconds).collect();
    assert_eq!(starts, [-3 * DAY - 9 * HOUR, 4 * DAY - 9 * HOUR, 11 * DAY - 9 * HOUR]);
    assert_eq!(movements(&reply.periods[0]), [0.0, 40.0, 0.0, 0.0, 0.0, 0.0, 40.0]);
    assert_eq!(movements(&reply.periods[1]), [40.0, 0.0, 0.0, 0.0, 30.0, 0.0, 10.0]);
    assert_eq!(reply.periods[1].net_revenue_retention, Some(0.25));
}

#[tokio::test]
async fn revenue_bridge_bad_input_is_invalid_argument_naming_the_field() {
    let server = with_events(vec![change("a1", "ann", 0, 40.0)]).await;
    let cases: Vec<(pb::QueryRevenueBridgeRequest, &str)> = vec![
        (bridge_request(0, DAY, pb::Granularity::Hour), "granularity"),
        (
            pb::QueryRevenueBridgeRequest {
                mrr_property: String::new(),
                ..bridge_request(0, DAY, pb::Granularity::Day)
            },
            "mrr_property",
        ),
        (
            pb::QueryRevenueBridgeRequest { subscription: None, ..bridge_request(0, DAY, pb::Granularity::Day) },
            "subscription",
        ),
        (pb::QueryRevenueBridgeRequest { range: None, ..bridge_request(0, DAY, pb::Granularity::Day) }, "range"),
        (bridge_request(DAY, 0, pb::Granularity::Day), "range"),
        (
            pb::QueryRevenueBridgeRequest {
                timezone: "Mars/Olympus".into(),
                ..bridge_request(0, DAY, pb::Granularity::Day)
            },
            "timezone",
        ),
        (
            pb::QueryRevenueBridgeRequest { granularity: 99, ..bridge_request(0, DAY, pb::Granularity::Day) },
            "granularity",
        ),
    ];
    for (request, field) in cases {
        let status = analysis(&server).query_revenue_bridge(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().starts_with(field), "{field}: {}", status.message());
    }
    let mut unknown = bridge_request(0, DAY, pb::Granularity::Day);
    unknown.project = "nope".into();
    assert_eq!(analysis(&server).query_revenue_bridge(unknown).await.unwrap_err().code(), Code::NotFound);
    // Nothing stored changed.
    assert_eq!(bridge(&server, 0, DAY).await[0].ending_mrr, 40.0);
}

fn definition(key: &str, kind: pb::MetricKind) -> pb::MetricDefinition {
    pb::MetricDefinition {
        key: key.into(),
        kind: kind as i32,
        selector: selector("subscription_changed"),
        property: "mrr".into(),
        ..Default::default()
    }
}

async fn query_values(server: &TestServer, key: &str, to: i64, granularity: pb::Granularity) -> Vec<Option<f64>> {
    let request = pb::QueryMetricRequest {
        project: "p".into(),
        metric: Some(pb::query_metric_request::Metric::MetricKey(key.into())),
        range: range(0, to),
        granularity: granularity as i32,
        ..Default::default()
    };
    let reply = metrics(server).query_metric(request).await.expect("query").into_inner();
    reply.series[0].points.iter().map(|p| p.has_value.then_some(p.value)).collect()
}

#[tokio::test]
async fn mrr_and_bridge_columns_are_metrics() {
    let server = with_events(vec![
        change("a1", "ann", 2 * HOUR, 100.0),
        change("a2", "ann", DAY + 2 * HOUR, 60.0),
        change("b1", "bob", 3 * HOUR, 50.0),
        change("b2", "bob", 2 * DAY, 0.0),
    ])
    .await;
    let mut client = metrics(&server);
    let mut churned = definition("churned_mrr", pb::MetricKind::RevenueBridge);
    churned.revenue_component = pb::RevenueComponent::ChurnedMrr as i32;
    let mut nrr = definition("nrr", pb::MetricKind::RevenueBridge);
    nrr.revenue_component = pb::RevenueComponent::NetRevenueRetention as i32;
    for metric in [definition("mrr", pb::MetricKind::LatestSum), churned, nrr] {
        client.create_metric(pb::CreateMetricRequest { project: "p".into(), metric: Some(metric) }).await.unwrap();
    }
    // MRR at each day's end: 150, 110 (ann down to 60), 60 (bob cancelled at exactly day 2).
    assert_eq!(
        query_values(&server, "mrr", 3 * DAY, pb::Granularity::Day).await,
        [Some(150.0), Some(110.0), Some(60.0)]
    );
    assert_eq!(query_values(&server, "mrr", 3 * DAY, pb::Granularity::Total).await, [Some(60.0)]);
    assert_eq!(
        query_values(&server, "churned_mrr", 3 * DAY, pb::Granularity::Day).await,
        [Some(0.0), Some(0.0), Some(50.0)]
    );
    // NRR: none on day 0 (starting 0), (150 − 40) / 150, (110 − 50) / 110.
    assert_eq!(
        query_values(&server, "nrr", 3 * DAY, pb::Granularity::Day).await,
        [None, Some(110.0 / 150.0), Some(60.0 / 110.0)]
    );
    // A bridge metric needs its column; other kinds must leave it unset.
    let bad = definition("bad", pb::MetricKind::RevenueBridge);
    let status =
        client.create_metric(pb::CreateMetricRequest { project: "p".into(), metric: Some(bad) }).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("metric.revenue_component"), "{}", status.message());
    let mut bad = definition("bad", pb::MetricKind::Sum);
    bad.revenue_component = pb::RevenueComponent::NewMrr as i32;
    let status =
        client.create_metric(pb::CreateMetricRequest { project: "p".into(), metric: Some(bad) }).await.unwrap_err();
    assert!(status.message().starts_with("metric.revenue_component"), "{}", status.message());
    // A LATEST_SUM metric needs its property.
    let mut bad = definition("bad", pb::MetricKind::LatestSum);
    bad.property = String::new();
    let status =
        client.create_metric(pb::CreateMetricRequest { project: "p".into(), metric: Some(bad) }).await.unwrap_err();
    assert!(status.message().starts_with("metric.property"), "{}", status.message());
}

/// A product: three signups on day 0, activation, sessions, purchases and subscriptions.
async fn product() -> TestServer {
    let mut events = vec![
        // u1 signs up, activates within the hour, comes back on day 7, buys for 30.
        event("s1", "signup", "u1", 0),
        event("o1", "onboarding_complete", "u1", HOUR),
        event("v1", "session_start", "u1", 10),
        event("v2", "session_start", "u1", 7 * DAY + HOUR),
        with_props(event("p1", "purchase", "u1", 2 * HOUR), &[("revenue", num(30.0))]),
        // u2 signs up, never activates, comes back on day 3, buys for 10.
        event("s2", "signup", "u2", 2 * HOUR),
        event("v3", "session_start", "u2", 2 * HOUR + 10),
        event("v4", "session_start", "u2", 3 * DAY),
        with_props(event("p2", "purchase", "u2", 3 * HOUR), &[("revenue", num(10.0))]),
        // u3 signs up and activates on day 9: outside the 7-day activation window.
        event("s3", "signup", "u3", 3 * HOUR),
        event("v5", "session_start", "u3", 3 * HOUR + 10),
        event("o3", "onboarding_complete", "u3", 9 * DAY),
    ];
    // Subscriptions: u1 at 50 and u2 at 20 on day 1; u2 cancels on day 2.
    events.push(change("m1", "u1", DAY + HOUR, 50.0));
    events.push(change("m2", "u2", DAY + HOUR, 20.0));
    events.push(change("m3", "u2", 2 * DAY + HOUR, 0.0));
    with_events(events).await
}

fn aarrr(dry_run: bool) -> pb::ApplyFrameworkRequest {
    pb::ApplyFrameworkRequest {
        project: "p".into(),
        framework: pb::Framework::NorthStarAarrr as i32,
        mapping: Some(pb::FrameworkMapping {
            signup_event: "signup".into(),
            activation_event: "onboarding_complete".into(),
            core_event: "session_start".into(),
            purchase_event: "purchase".into(),
            revenue_property: "revenue".into(),
            ..Default::default()
        }),
        dry_run,
    }
}

fn saas() -> pb::ApplyFrameworkRequest {
    pb::ApplyFrameworkRequest {
        project: "p".into(),
        framework: pb::Framework::SaasRevenue as i32,
        mapping: Some(pb::FrameworkMapping {
            subscription_event: "subscription_changed".into(),
            mrr_property: "mrr".into(),
            ..Default::default()
        }),
        dry_run: false,
    }
}

async fn apply(server: &TestServer, request: pb::ApplyFrameworkRequest) -> pb::ApplyFrameworkResponse {
    metrics(server).apply_framework(request).await.expect("apply").into_inner()
}

async fn metric_keys(server: &TestServer) -> Vec<String> {
    let request = pb::ListMetricsRequest { project: "p".into(), ..Default::default() };
    let reply = metrics(server).list_metrics(request).await.unwrap().into_inner();
    reply.metrics.into_iter().map(|m| m.key).collect()
}

/// The metric tree under `root_key` (empty: the North Star) over [0, to).
async fn tree(server: &TestServer, root_key: &str, to: i64) -> pb::MetricTreeNode {
    let request = pb::GetMetricTreeRequest {
        project: "p".into(),
        root_key: root_key.into(),
        range: range(0, to),
        ..Default::default()
    };
    metrics(server).get_metric_tree(request).await.expect("tree").into_inner().root.expect("root")
}

fn sorted(mut keys: Vec<String>) -> Vec<String> {
    keys.sort();
    keys
}

const AARRR_CREATED: [&str; 8] = [
    "acquisition_signups",
    "activation_rate",
    "active_users",
    "arpu",
    "north_star",
    "paying_users",
    "retention_d7",
    "revenue",
];

#[tokio::test]
async fn north_star_aarrr_in_one_call() {
    let server = product().await;

    // A dry run reports what would happen and writes nothing.
    let dry = apply(&server, aarrr(true)).await;
    assert_eq!(sorted(dry.created.clone()), AARRR_CREATED);
    assert!(metric_keys(&server).await.is_empty());
    assert_eq!(sorted(dry.event_types_created.clone()), ["onboarding_complete", "purchase", "session_start", "signup"]);
    let list = pb::ListEventTypesRequest { project: "p".into(), ..Default::default() };
    assert!(server.catalog().list_event_types(list).await.unwrap().into_inner().event_types.is_empty());

    let applied = apply(&server, aarrr(false)).await;
    assert_eq!(applied.created, dry.created);
    assert!(applied.updated.is_empty() && applied.unchanged.is_empty());
    // Unmapped slots are skipped with the slot named; so are the metrics reading them.
    let skipped: Vec<(String, String)> = applied.skipped.iter().map(|s| (s.key.clone(), s.reason.clone())).collect();
    assert_eq!(
        skipped,
        [
            ("referring_users".to_string(), "mapping.referral_event is empty".to_string()),
            (
                "referral_rate".to_string(),
                "needs \"referring_users\", skipped: mapping.referral_event is empty".to_string()
            ),
            ("cac".to_string(), "mapping.spend_metric_key is empty".to_string()),
        ]
    );
    assert_eq!(metric_keys(&server).await, AARRR_CREATED);

    // Idempotent: the second call changes nothing.
    let again = apply(&server, aarrr(false)).await;
    assert!(again.created.is_empty() && again.updated.is_empty(), "{again:?}");
    assert_eq!(sorted(again.unchanged), AARRR_CREATED);
    assert_eq!(sorted(again.event_types_unchanged), ["onboarding_complete", "purchase", "session_start", "signup"]);
    let north_star = metrics(&server)
        .get_metric(pb::GetMetricRequest { project: "p".into(), key: "north_star".into(), version: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(north_star.latest_version, 1);

    // The tree: the North Star with its inputs (helpers stay out of it).
    let tree = tree(&server, "", 7 * DAY).await;
    assert_eq!(tree.metric_key, "north_star");
    assert_eq!(tree.role, pb::MetricRole::NorthStar as i32);
    // Weekly active users at the end of the first week: u1, u2 and u3.
    assert_eq!(tree.current_value, Some(3.0));
    let children: Vec<&str> = tree.children.iter().map(|c| c.metric_key.as_str()).collect();
    assert_eq!(children, ["acquisition_signups", "activation_rate", "arpu", "paying_users", "retention_d7", "revenue"]);

    // Values on day 0: activation 1/3 (u3 activates after the window), D7 retention 1/3 (u1),
    // ARPU (30 + 10) / 3 active users.
    assert_eq!(query_values(&server, "activation_rate", DAY, pb::Granularity::Day).await, [Some(1.0 / 3.0)]);
    assert_eq!(query_values(&server, "retention_d7", DAY, pb::Granularity::Day).await, [Some(1.0 / 3.0)]);
    assert_eq!(query_values(&server, "arpu", DAY, pb::Granularity::Day).await, [Some(40.0 / 3.0)]);

    // The tracking plan: the mapped events with their questions; purchase requires revenue.
    let purchase = server.get_event_type("p", "purchase").await;
    assert!(purchase.question.contains("revenue"), "{purchase:?}");
    let revenue = purchase.properties.iter().find(|p| p.name == "revenue").expect("revenue property");
    assert!(revenue.required);
    assert_eq!(revenue.r#type, pb::PropertyType::Number as i32);
    assert!(!server.get_event_type("p", "signup").await.question.is_empty());
}

#[tokio::test]
async fn saas_revenue_in_one_call() {
    let server = product().await;
    let applied = apply(&server, saas()).await;
    let created = [
        "mrr",
        "new_mrr",
        "reactivation_mrr",
        "expansion_mrr",
        "contraction_mrr",
        "churned_mrr",
        "customers",
        "net_revenue_retention",
        "gross_revenue_retention",
        "customer_churn_rate",
        "arpa",
        "ltv",
    ];
    assert_eq!(applied.created, created);
    assert!(applied.skipped.is_empty(), "{:?}", applied.skipped);
    assert_eq!(applied.event_types_created, ["subscription_changed"]);
    let mrr = server.get_event_type("p", "subscription_changed").await;
    let property = mrr.properties.iter().find(|p| p.name == "mrr").expect("mrr property");
    assert!(property.required && property.min == Some(0.0));

    // MRR at each day's end: 0, 70, 50; day 2 loses one of two customers.
    assert_eq!(query_values(&server, "mrr", 3 * DAY, pb::Granularity::Day).await, [Some(0.0), Some(70.0), Some(50.0)]);
    assert_eq!(
        query_values(&server, "new_mrr", 3 * DAY, pb::Granularity::Day).await,
        [Some(0.0), Some(70.0), Some(0.0)]
    );
    assert_eq!(
        query_values(&server, "churned_mrr", 3 * DAY, pb::Granularity::Day).await,
        [Some(0.0), Some(0.0), Some(20.0)]
    );
    assert_eq!(
        query_values(&server, "customer_churn_rate", 3 * DAY, pb::Granularity::Day).await,
        [None, None, Some(0.5)]
    );
    assert_eq!(
        query_values(&server, "net_revenue_retention", 3 * DAY, pb::Granularity::Day).await,
        [None, None, Some(50.0 / 70.0)]
    );
    // ARPA = 50 / 1 customer; LTV = ARPA / churn rate = 50 / 0.5.
    assert_eq!(query_values(&server, "arpa", 3 * DAY, pb::Granularity::Day).await, [None, Some(35.0), Some(50.0)]);
    assert_eq!(query_values(&server, "ltv", 3 * DAY, pb::Granularity::Day).await, [None, None, Some(100.0)]);

    // The SaaS tree hangs under mrr.
    let tree = tree(&server, "mrr", 3 * DAY).await;
    assert_eq!(tree.current_value, Some(50.0));
    assert_eq!(tree.children.len(), created.len() - 1);
    let again = apply(&server, saas()).await;
    assert_eq!(again.unchanged, created);
}

#[tokio::test]
async fn frameworks_never_invent_events_and_refuse_bad_input() {
    let server = product().await;
    // An event the project has never received: a skipped reason, not an error.
    let mut request = aarrr(false);
    let mapping = request.mapping.as_mut().unwrap();
    mapping.referral_event = "invite_sent".into();
    mapping.core_event = "app_opened".into();
    let applied = apply(&server, request).await;
    let reason = |key: &str| applied.skipped.iter().find(|s| s.key == key).map(|s| s.reason.clone());
    assert_eq!(
        reason("referring_users").as_deref(),
        Some("mapping.referral_event: event \"invite_sent\" has never been received")
    );
    assert_eq!(
        reason("north_star").as_deref(),
        Some("mapping.core_event: event \"app_opened\" has never been received")
    );
    assert!(reason("arpu").unwrap().starts_with("needs \"active_users\""));
    assert!(applied.created.contains(&"acquisition_signups".to_string()));
    let types = applied.event_types_created.clone();
    assert!(!types.contains(&"invite_sent".to_string()) && !types.contains(&"app_opened".to_string()), "{types:?}");
    let before = metric_keys(&server).await;

    let mut cases: Vec<(pb::ApplyFrameworkRequest, &str)> = Vec::new();
    cases.push((pb::ApplyFrameworkRequest { framework: 0, ..aarrr(false) }, "framework"));
    cases.push((pb::ApplyFrameworkRequest { framework: 42, ..aarrr(false) }, "framework"));
    let mut bad = aarrr(false);
    bad.mapping.as_mut().unwrap().activation_window = Some(prost_types::Duration { seconds: -5, nanos: 0 });
    cases.push((bad, "mapping.activation_window"));
    let mut bad = aarrr(false);
    bad.mapping.as_mut().unwrap().signup_event = "x".repeat(300);
    cases.push((bad, "mapping.signup_event"));
    for (request, field) in cases {
        let status = metrics(&server).apply_framework(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().starts_with(field), "{field}: {}", status.message());
    }
    let mut unknown = aarrr(false);
    unknown.project = "nope".into();
    assert_eq!(metrics(&server).apply_framework(unknown).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(metric_keys(&server).await, before);
}

/// Day d of 21 has 10 + d `tick` events from distinct users, plus a weekly bump on Mondays.
async fn ticking() -> TestServer {
    let mut events = Vec::new();
    for day in 0..21i64 {
        // 2026-01-05 (day 4) is a Monday.
        let count = 10 + day + if day % 7 == 4 { 5 } else { 0 };
        for i in 0..count {
            events.push(event(&format!("t{day}_{i}"), "tick", &format!("u{i}"), day * DAY + 60 * i));
        }
    }
    let server = with_events(events).await;
    for (key, kind) in [("ticks", pb::MetricKind::Count), ("tickers", pb::MetricKind::UniqueUsers)] {
        let metric = pb::MetricDefinition {
            key: key.into(),
            kind: kind as i32,
            selector: selector("tick"),
            ..Default::default()
        };
        metrics(&server)
            .create_metric(pb::CreateMetricRequest { project: "p".into(), metric: Some(metric) })
            .await
            .unwrap();
    }
    server
}

fn forecast_request(horizon: u32) -> pb::ForecastMetricRequest {
    pb::ForecastMetricRequest {
        project: "p".into(),
        metric_key: "ticks".into(),
        range: range(0, 21 * DAY),
        granularity: pb::Granularity::Day as i32,
        horizon,
        ..Default::default()
    }
}

#[tokio::test]
async fn forecast_continues_trend_and_season_with_bands() {
    let server = ticking().await;
    let reply = metrics(&server).forecast_metric(forecast_request(7)).await.unwrap().into_inner();
    // Exactly linear growth: no damping, so the undamped trend has the lower AICc.
    assert_eq!(reply.method, "ETS(A,A,A) season 7, maximum likelihood (lower AICc than ETS(A,Ad,A) season 7)");
    assert_eq!(reply.history.len(), 21);
    assert_eq!(reply.history[20].value, 30.0);
    assert_eq!(reply.points.len(), 7);
    for (h, p) in reply.points.iter().enumerate() {
        let day = 21 + h as i64;
        assert_eq!(p.start, Some(ts(day * DAY)));
        assert_eq!(p.end, Some(ts((day + 1) * DAY)));
        // The series is exactly 10 + day (+5 on Mondays): the forecast follows it closely.
        let expected = (10 + day + if day % 7 == 4 { 5 } else { 0 }) as f64;
        assert!((p.value - expected).abs() < 1.5, "day {day}: {} vs {expected}", p.value);
        assert!(p.lower_95 <= p.lower_80 && p.lower_80 <= p.value && p.value <= p.upper_80 && p.upper_80 <= p.upper_95);
    }
    // Monday (day 25) stands out.
    assert!(reply.points[4].value > reply.points[3].value + 3.0);

    // A short history falls back to a simpler model and says so.
    let mut short = forecast_request(2);
    short.range = range(0, 12 * DAY);
    let reply = metrics(&server).forecast_metric(short).await.unwrap().into_inner();
    assert_eq!(
        reply.method,
        "ETS(A,A,N), maximum likelihood, variance proportional to the level (history shorter than two seasons of 7; \
         lower AICc than ETS(A,Ad,N))"
    );
    let mut shorter = forecast_request(2);
    shorter.range = range(0, 2 * DAY);
    let reply = metrics(&server).forecast_metric(shorter).await.unwrap().into_inner();
    assert_eq!(reply.method, "naive (fewer than 3 buckets)");
    assert_eq!(reply.points[1].value, 11.0);
}

#[tokio::test]
async fn forecast_bad_input_is_invalid_argument_naming_the_field() {
    let server = ticking().await;
    let mut total = forecast_request(3);
    total.granularity = pb::Granularity::Total as i32;
    let mut no_range = forecast_request(3);
    no_range.range = None;
    let mut zone = forecast_request(3);
    zone.timezone = "Nowhere/Else".into();
    let cases = [
        (forecast_request(0), "horizon"),
        (forecast_request(1001), "horizon"),
        (total, "granularity"),
        (no_range, "range"),
        (zone, "timezone"),
    ];
    for (request, field) in cases {
        let status = metrics(&server).forecast_metric(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().starts_with(field), "{field}: {}", status.message());
    }
    let mut unknown = forecast_request(3);
    unknown.metric_key = "nope".into();
    assert_eq!(metrics(&server).forecast_metric(unknown).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(metrics(&server).forecast_metric(forecast_request(1000)).await.unwrap().into_inner().points.len(), 1000);
}

#[tokio::test]
async fn goal_progress_says_which_projection_it_used() {
    use sextant::pb::goal_service_client::GoalServiceClient;
    let server = ticking().await;
    let mut goals = GoalServiceClient::new(server.channel.clone());
    for (id, metric) in [("more-tickers", "tickers"), ("more-ticks", "ticks")] {
        let goal = pb::Goal {
            id: id.into(),
            metric_key: metric.into(),
            granularity: pb::Granularity::Day as i32,
            period: range(0, 28 * DAY),
            target: Some(pb::goal::Target::TargetValue(40.0)),
            ..Default::default()
        };
        goals.create_goal(pb::CreateGoalRequest { project: "p".into(), goal: Some(goal) }).await.unwrap();
    }
    let progress =
        |id: &str, now: i64| pb::GetGoalProgressRequest { project: "p".into(), id: id.into(), as_of: Some(ts(now)) };
    // UNIQUE_USERS with 21 complete days: the forecast model; 37 tickers expected on day 27.
    let reply = goals.get_goal_progress(progress("more-tickers", 21 * DAY)).await.unwrap().into_inner();
    assert_eq!(reply.projection, "ETS(A,A,A) season 7, maximum likelihood (lower AICc than ETS(A,Ad,A) season 7)");
    let projected = reply.projected.unwrap();
    assert!((projected - 37.0).abs() < 2.0, "{projected}");
    // Five complete days: too few for a forecast, the least-squares line.
    let reply = goals.get_goal_progress(progress("more-tickers", 5 * DAY)).await.unwrap().into_inner();
    assert_eq!(reply.projection, "linear");
    // COUNT is additive: pace.
    let reply = goals.get_goal_progress(progress("more-ticks", 21 * DAY)).await.unwrap().into_inner();
    assert_eq!(reply.projection, "pace");
}
