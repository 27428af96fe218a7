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
