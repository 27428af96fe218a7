//! QueryAttribution end to end (SPEC §15): one hand-made journey set, every model's answer
//! worked out in comments, spend economics, and bad input. Times are days after
//! 2026-01-01T00:00:00Z.

mod common;

use common::*;
use sextant::pb;
use sextant::pb::analysis_service_client::AnalysisServiceClient;
use sextant::pb::cohort_service_client::CohortServiceClient;
use sextant::pb::metric_service_client::MetricServiceClient;
use tonic::Code;
use tonic::transport::Channel;

const DAY: i64 = 86_400;

fn analysis(server: &TestServer) -> AnalysisServiceClient<Channel> {
    AnalysisServiceClient::new(server.channel.clone())
}

fn metrics(server: &TestServer) -> MetricServiceClient<Channel> {
    MetricServiceClient::new(server.channel.clone())
}

fn selector(event: &str) -> Option<pb::EventSelector> {
    Some(pb::EventSelector { event: event.into(), filters: vec![] })
}

fn duration(seconds: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos: 0 })
}

fn visit(id: &str, user: &str, anonymous: &str, day: i64, source: Option<&str>) -> pb::Event {
    let mut e = event(id, "page_view", user, day * DAY);
    e.anonymous_id = anonymous.into();
    match source {
        Some(source) => with_props(e, &[("utm_source", text(source))]),
        None => e,
    }
}

fn purchase(id: &str, user: &str, day: i64, revenue: Option<f64>) -> pb::Event {
    let e = event(id, "purchase", user, day * DAY);
    match revenue {
        Some(r) => with_props(e, &[("revenue", num(r))]),
        None => e,
    }
}

/// The journeys (ids order ties, not arrival):
/// - u1, first anonymous as a1 (aliased to u1 after): social on day 0 (exactly T − 20 days),
///   search on day 10, a page view without utm_source on day 12 (not a touch), email on day 20
///   at the same instant as the purchase of 100 (a touch at T counts).
/// - u2: search (id t5b, sent first) and email (id t5a) both on day 5, so email comes first;
///   a purchase of 50 on day 6, another of 10 on day 35 with no touch in its window ($direct).
/// - u3: social on day −1, out of the window of its purchase (no revenue) on day 30: $direct.
/// - u5: a signup on day 3 carrying utm_source=partner (a conversion that is its own touch).
async fn journeys() -> TestServer {
    let server = TestServer::start().await;
    server.create_project("p").await;
    let events = vec![
        visit("t1", "", "a1", 0, Some("social")),
        visit("t2", "", "a1", 10, Some("search")),
        visit("t3", "u1", "", 12, None),
        visit("t4", "u1", "", 20, Some("email")),
        purchase("c1", "u1", 20, Some(100.0)),
        visit("t5b", "u2", "", 5, Some("search")),
        visit("t5a", "u2", "", 5, Some("email")),
        purchase("c2", "u2", 6, Some(50.0)),
        purchase("c2b", "u2", 35, Some(10.0)),
        visit("t6", "u3", "", -1, Some("social")),
        purchase("c3", "u3", 30, None),
        with_props(event("s5", "signup", "u5", 3 * DAY), &[("utm_source", text("partner"))]),
        event("s1", "signup", "u1", 20 * DAY),
    ];
    let reply = server.track("p", events).await;
    assert!(reply.rejected.is_empty(), "{:?}", reply.rejected);
    let alias = pb::AliasRequest { project: "p".into(), anonymous_id: "a1".into(), user_id: "u1".into() };
    server.ingest().alias(alias).await.expect("alias");
    server
}

fn request(model: pb::AttributionModel) -> pb::QueryAttributionRequest {
    pb::QueryAttributionRequest {
        project: "p".into(),
        conversion: selector("purchase"),
        touch: selector("page_view"),
        channel_property: "utm_source".into(),
        model: model as i32,
        lookback: duration(20 * DAY),
        half_life: duration(10 * DAY),
        range: Some(pb::TimeRange { from: Some(ts(0)), to: Some(ts(40 * DAY)) }),
        value_property: "revenue".into(),
        ..Default::default()
    }
}

async fn attribute(server: &TestServer, request: pb::QueryAttributionRequest) -> pb::QueryAttributionResponse {
    analysis(server).query_attribution(request).await.expect("attribution").into_inner()
}

/// (channel, credit, value_credit, influenced) per row, in reply order.
type Row = (&'static str, f64, f64, u64);

fn assert_rows(reply: &pb::QueryAttributionResponse, want: &[Row]) {
    let got: Vec<(&str, f64, f64, u64)> =
        reply.rows.iter().map(|r| (r.channel.as_str(), r.credit, r.value_credit, r.influenced)).collect();
    assert_eq!(got.len(), want.len(), "{got:?}");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.0, w.0, "{got:?}");
        assert!((g.1 - w.1).abs() < 1e-9 && (g.2 - w.2).abs() < 1e-9 && g.3 == w.3, "{g:?} != {w:?} in {got:?}");
    }
}

#[tokio::test]
async fn every_model_on_the_journeys() {
    use pb::AttributionModel as M;
    let server = journeys().await;
    // Conversions: c1 (100), c2 (50), c2b (10), c3 (0): 4 worth 160. Touches: c1 social, search,
    // email; c2 email, search; c2b and c3 none ($direct, influenced 2, value 10).
    // Influenced: email 2 (c1, c2), search 2, social 1, $direct 2.
    let last = attribute(&server, request(M::LastTouch)).await;
    assert_eq!((last.conversions, last.value), (4, 160.0));
    // c1 → email, c2 → search.
    assert_rows(
        &last,
        &[("$direct", 2.0, 10.0, 2), ("email", 1.0, 100.0, 2), ("search", 1.0, 50.0, 2), ("social", 0.0, 0.0, 1)],
    );
    // The default model is LAST_TOUCH.
    assert_eq!(attribute(&server, request(M::Unspecified)).await, last);
    // c1 → social, c2 → email (t5a sorts before t5b at the same instant).
    assert_rows(
        &attribute(&server, request(M::FirstTouch)).await,
        &[("$direct", 2.0, 10.0, 2), ("email", 1.0, 50.0, 2), ("social", 1.0, 100.0, 1), ("search", 0.0, 0.0, 2)],
    );
    // c1: ⅓ each; c2: ½ each. email = search = ⅓ + ½ (ties by name), social ⅓.
    let third = 1.0 / 3.0;
    assert_rows(
        &attribute(&server, request(M::Linear)).await,
        &[
            ("$direct", 2.0, 10.0, 2),
            ("email", third + 0.5, 100.0 * third + 25.0, 2),
            ("search", third + 0.5, 100.0 * third + 25.0, 2),
            ("social", third, 100.0 * third, 1),
        ],
    );
    // c1 (3 touches): social 0.4, search 0.2, email 0.4; c2 (2 touches): ½ each.
    assert_rows(
        &attribute(&server, request(M::PositionBased)).await,
        &[("$direct", 2.0, 10.0, 2), ("email", 0.9, 65.0, 2), ("search", 0.7, 45.0, 2), ("social", 0.4, 40.0, 1)],
    );
    // Half-life 10 days, c1 on day 20: weights 2^-2 (social), 2^-1 (search), 1 (email) → 1/7,
    // 2/7, 4/7; c2: both touches on day 5 → ½ each. email 15/14, search 11/14.
    assert_rows(
        &attribute(&server, request(M::TimeDecay)).await,
        &[
            ("$direct", 2.0, 10.0, 2),
            ("email", 15.0 / 14.0, 400.0 / 7.0 + 25.0, 2),
            ("search", 11.0 / 14.0, 200.0 / 7.0 + 25.0, 2),
            ("social", 1.0 / 7.0, 100.0 / 7.0, 1),
        ],
    );
    // 1 to every distinct channel: credits sum to 7 for 4 conversions.
    assert_rows(
        &attribute(&server, request(M::Participation)).await,
        &[("$direct", 2.0, 10.0, 2), ("email", 2.0, 150.0, 2), ("search", 2.0, 150.0, 2), ("social", 1.0, 100.0, 1)],
    );
    // The half-life is read with TIME_DECAY only: 7 days by default, other models ignore it.
    let mut default_half_life = request(M::TimeDecay);
    default_half_life.half_life = None;
    let decay = attribute(&server, default_half_life).await;
    let w = [(-20.0f64 / 7.0).exp2(), (-10.0f64 / 7.0).exp2(), 1.0];
    let social = w[0] / w.iter().sum::<f64>();
    let row = decay.rows.iter().find(|r| r.channel == "social").unwrap();
    assert!((row.credit - social).abs() < 1e-9, "{} != {social}", row.credit);
}

#[tokio::test]
async fn lookback_edges_first_conversions_cohorts_and_own_touches() {
    use pb::AttributionModel as M;
    let server = journeys().await;
    // One second less lookback: social (exactly T − 20 days) drops out of c1's window.
    let mut shorter = request(M::FirstTouch);
    shorter.lookback = duration(20 * DAY - 1);
    assert_rows(
        &attribute(&server, shorter).await,
        &[("$direct", 2.0, 10.0, 2), ("email", 1.0, 50.0, 2), ("search", 1.0, 100.0, 2)],
    );
    // Lookback 0: only touches at T itself; c1's email is at the purchase instant.
    let mut zero = request(M::LastTouch);
    zero.lookback = duration(0);
    assert_rows(&attribute(&server, zero).await, &[("$direct", 3.0, 60.0, 3), ("email", 1.0, 100.0, 1)]);
    // Default lookback (30 days): c3's social touch on day −1 is 31 days before: still out.
    // c2b on day 35 sees u2's touches on day 5: exactly 30 days, in.
    let mut default_lookback = request(M::LastTouch);
    default_lookback.lookback = None;
    assert_rows(
        &attribute(&server, default_lookback).await,
        &[("search", 2.0, 60.0, 3), ("$direct", 1.0, 0.0, 1), ("email", 1.0, 100.0, 3), ("social", 0.0, 0.0, 1)],
    );
    // First conversion only: c2b goes.
    let mut first = request(M::LastTouch);
    first.first_conversion_only = true;
    let reply = attribute(&server, first).await;
    assert_eq!((reply.conversions, reply.value), (3, 150.0));
    assert_rows(
        &reply,
        &[("$direct", 1.0, 0.0, 1), ("email", 1.0, 100.0, 2), ("search", 1.0, 50.0, 2), ("social", 0.0, 0.0, 1)],
    );
    // A cohort of u1 only: c1 alone; its anonymous touches still count.
    let cohort = pb::Cohort {
        id: "just-u1".into(),
        definition: Some(pb::cohort::Definition::StaticMembers(pb::StaticCohortMembers {
            user_ids: vec!["u1".into()],
        })),
        ..Default::default()
    };
    CohortServiceClient::new(server.channel.clone())
        .create_cohort(pb::CreateCohortRequest { project: "p".into(), cohort: Some(cohort) })
        .await
        .expect("cohort");
    let mut in_cohort = request(M::Linear);
    in_cohort.cohort_id = "just-u1".into();
    let reply = attribute(&server, in_cohort).await;
    assert_eq!(reply.conversions, 1);
    let third = 1.0 / 3.0;
    assert_rows(
        &reply,
        &[("email", third, 100.0 * third, 1), ("search", third, 100.0 * third, 1), ("social", third, 100.0 * third, 1)],
    );
    // Signups as both conversion and touch: u5's signup touches itself; u1's has no utm_source.
    let mut own = request(M::PositionBased);
    own.conversion = selector("signup");
    own.touch = selector("signup");
    own.value_property = String::new();
    assert_rows(&attribute(&server, own).await, &[("$direct", 1.0, 0.0, 1), ("partner", 1.0, 0.0, 1)]);
}

async fn record_spend(server: &TestServer, key: &str, values: &[(&str, i64, f64)]) {
    let metric = pb::MetricDefinition { key: key.into(), kind: pb::MetricKind::Manual as i32, ..Default::default() };
    metrics(server)
        .create_metric(pb::CreateMetricRequest { project: "p".into(), metric: Some(metric) })
        .await
        .expect("metric");
    if values.is_empty() {
        return;
    }
    let values = values
        .iter()
        .map(|(source, day, amount)| pb::ManualValue {
            timestamp: Some(ts(day * DAY)),
            value: *amount,
            dimensions: [("utm_source".to_owned(), text(source))].into_iter().collect(),
        })
        .collect();
    let reply = metrics(server)
        .record_values(pb::RecordValuesRequest { project: "p".into(), metric_key: key.into(), values })
        .await
        .expect("values")
        .into_inner();
    assert!(reply.rejected.is_empty());
}

#[tokio::test]
async fn spend_gives_cac_roas_and_roi() {
    use pb::AttributionModel as M;
    let server = journeys().await;
    // search 30 in range and 10 after it; social 40 (credit 0 under LAST_TOUCH); tiktok 25 with
    // no touch at all: no row, but in total_spend.
    record_spend(
        &server,
        "ad_spend",
        &[("search", 1, 30.0), ("search", 50, 10.0), ("social", 2, 40.0), ("tiktok", 3, 25.0)],
    )
    .await;
    record_spend(&server, "no_spend", &[]).await;
    let mut with_spend = request(M::LastTouch);
    with_spend.spend_metric_key = "ad_spend".into();
    let reply = attribute(&server, with_spend).await;
    assert_eq!(reply.total_spend, 95.0);
    let row = |channel: &str| reply.rows.iter().find(|r| r.channel == channel).unwrap().clone();
    let search = row("search");
    assert!(search.has_spend);
    assert_eq!(search.spend, 30.0);
    assert_eq!(search.cost_per_conversion, 30.0);
    assert!((search.roas - 50.0 / 30.0).abs() < 1e-12 && (search.roi - 20.0 / 30.0).abs() < 1e-12);
    let social = row("social");
    assert!(social.has_spend && social.credit == 0.0);
    assert_eq!((social.spend, social.cost_per_conversion, social.roas, social.roi), (40.0, 0.0, 0.0, -1.0));
    for channel in ["email", "$direct"] {
        let r = row(channel);
        assert!(!r.has_spend && r.spend == 0.0 && r.cost_per_conversion == 0.0 && r.roas == 0.0 && r.roi == 0.0);
    }
    assert!(reply.rows.iter().all(|r| r.channel != "tiktok"));
    // A spend metric without values: nothing has spend.
    let mut empty = request(M::LastTouch);
    empty.spend_metric_key = "no_spend".into();
    let reply = attribute(&server, empty).await;
    assert_eq!(reply.total_spend, 0.0);
    assert!(reply.rows.iter().all(|r| !r.has_spend && r.spend == 0.0));
}

/// An edit that makes a request bad.
type Change = Box<dyn Fn(&mut pb::QueryAttributionRequest)>;

#[tokio::test]
async fn bad_requests_name_the_field() {
    use pb::AttributionModel as M;
    let server = journeys().await;
    let count = pb::MetricDefinition {
        key: "purchases".into(),
        kind: pb::MetricKind::Count as i32,
        selector: selector("purchase"),
        ..Default::default()
    };
    metrics(&server).create_metric(pb::CreateMetricRequest { project: "p".into(), metric: Some(count) }).await.unwrap();
    let cases: Vec<(&str, Code, Change)> = vec![
        ("model", Code::InvalidArgument, Box::new(|r| r.model = 99)),
        ("lookback", Code::InvalidArgument, Box::new(|r| r.lookback = duration(-DAY))),
        ("half_life", Code::InvalidArgument, Box::new(|r| r.half_life = duration(0))),
        ("channel_property", Code::InvalidArgument, Box::new(|r| r.channel_property.clear())),
        ("spend_metric_key", Code::NotFound, Box::new(|r| r.spend_metric_key = "nope".into())),
        ("spend_metric_key", Code::InvalidArgument, Box::new(|r| r.spend_metric_key = "purchases".into())),
        ("range", Code::InvalidArgument, Box::new(|r| r.range = None)),
        ("conversion", Code::InvalidArgument, Box::new(|r| r.conversion = None)),
        ("touch.event", Code::InvalidArgument, Box::new(|r| r.touch = selector(""))),
        ("cohort_id", Code::NotFound, Box::new(|r| r.cohort_id = "missing".into())),
    ];
    let before = server.stats("p").await;
    for (field, code, change) in cases {
        let mut bad = request(M::Linear);
        change(&mut bad);
        let status = analysis(&server).query_attribution(bad).await.unwrap_err();
        assert_eq!(status.code(), code, "{field}: {status:?}");
        assert!(status.message().contains(field), "{field}: {}", status.message());
        if code == Code::InvalidArgument {
            assert_eq!(violated_fields(&status), vec![field.to_owned()], "{field}");
        }
    }
    assert_eq!(server.stats("p").await.events, before.events, "stored data unchanged");
    let unknown = pb::QueryAttributionRequest { project: "nope".into(), ..request(M::Linear) };
    assert_eq!(analysis(&server).query_attribution(unknown).await.unwrap_err().code(), Code::NotFound);
}
