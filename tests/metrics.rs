//! MetricService end to end over a small hand-made data set with hand-computed answers.
//! Day d is 2026-01-01 (a Thursday) plus d days, UTC unless a test says otherwise.

mod common;

use common::*;
use sextant::pb;
use sextant::pb::metric_service_client::MetricServiceClient;
use tonic::Code;
use tonic::transport::Channel;

fn at(day: i64, hour: i64) -> i64 {
    day * 86_400 + hour * 3_600
}

async fn shop() -> TestServer {
    let server = TestServer::start().await;
    server.create_project("shop").await;
    let identify = |user: &str, channel: Option<&str>| pb::UserUpdate {
        user_id: user.into(),
        set: channel.map(|c| ("channel".to_string(), text(c))).into_iter().collect(),
        ..Default::default()
    };
    server
        .ingest()
        .identify(pb::IdentifyRequest {
            project: "shop".into(),
            users: vec![
                identify("u1", Some("email")),
                identify("u2", Some("email")),
                identify("u3", Some("social")),
                identify("u4", None),
            ],
        })
        .await
        .unwrap();
    let session = |id: &str, user: &str, day: i64, hour: i64| event(id, "session_start", user, at(day, hour));
    let purchase = |id: &str, user: &str, day: i64, revenue: Option<f64>| {
        let e = event(id, "purchase", user, at(day, 15));
        match revenue {
            Some(r) => with_props(e, &[("revenue", num(r))]),
            None => e,
        }
    };
    server
        .track(
            "shop",
            vec![
                session("s1", "u1", 0, 10),
                session("s2", "u1", 0, 11),
                session("s3", "u2", 0, 12),
                session("s4", "u1", 1, 9),
                session("s5", "u3", 1, 9),
                session("s6", "u3", 2, 9),
                session("s7", "u4", 3, 9),
                session("s8", "u1", 6, 9),
                session("s9", "u2", 8, 9),
                purchase("p1", "u1", 0, Some(10.0)),
                purchase("p2", "u2", 1, Some(30.0)),
                purchase("p3", "u3", 1, Some(20.0)),
                purchase("p4", "u1", 2, Some(5.0)),
                purchase("p5", "u4", 2, None),
            ],
        )
        .await;
    server
}

fn metrics(server: &TestServer) -> MetricServiceClient<Channel> {
    server.metrics()
}

fn revenue(kind: pb::MetricKind) -> pb::MetricDefinition {
    pb::MetricDefinition { property: "revenue".into(), ..definition("revenue", kind, "purchase") }
}

async fn create(server: &TestServer, metric: pb::MetricDefinition) -> Result<pb::MetricDefinition, tonic::Status> {
    let request = pb::CreateMetricRequest { project: "shop".into(), metric: Some(metric) };
    Ok(metrics(server).create_metric(request).await?.into_inner().metric.unwrap())
}

fn query(
    metric: pb::MetricDefinition,
    from_day: i64,
    to_day: i64,
    granularity: pb::Granularity,
) -> pb::QueryMetricRequest {
    pb::QueryMetricRequest {
        project: "shop".into(),
        metric: Some(pb::query_metric_request::Metric::Definition(metric)),
        range: Some(pb::TimeRange { from: Some(ts(at(from_day, 0))), to: Some(ts(at(to_day, 0))) }),
        granularity: granularity as i32,
        ..Default::default()
    }
}

async fn run(server: &TestServer, request: pb::QueryMetricRequest) -> pb::QueryMetricResponse {
    metrics(server).query_metric(request).await.unwrap().into_inner()
}

/// The values of a series, `None` where a bucket has no value.
fn values(series: &pb::Series) -> Vec<Option<f64>> {
    series.points.iter().map(|p| p.has_value.then_some(p.value)).collect()
}

fn some(values: &[f64]) -> Vec<Option<f64>> {
    values.iter().map(|v| Some(*v)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_unique_users_and_numeric_aggregates() {
    let server = shop().await;
    let dau = definition("dau", pb::MetricKind::UniqueUsers, "session_start");
    let reply = run(&server, query(dau.clone(), 0, 4, pb::Granularity::Day)).await;
    assert_eq!(reply.series.len(), 1);
    assert_eq!(values(&reply.series[0]), some(&[2.0, 2.0, 1.0, 1.0]));
    assert_eq!((reply.series[0].total, reply.series[0].has_total), (4.0, true), "distinct over the range, not 6");
    assert_eq!(reply.series[0].points[0].start, Some(ts(0)));
    assert_eq!(reply.series[0].points[3].end, Some(ts(at(4, 0))));

    let sessions = definition("sessions", pb::MetricKind::Count, "session_start");
    let reply = run(&server, query(sessions, 0, 4, pb::Granularity::Day)).await;
    assert_eq!(values(&reply.series[0]), some(&[3.0, 2.0, 1.0, 1.0]));
    assert_eq!(reply.series[0].total, 7.0);

    // Weeks are ISO weeks: [Mon Dec 29 (clipped to Jan 1), Jan 5), [Jan 5, Jan 12), [Jan 12, Jan 15).
    let reply = run(&server, query(dau.clone(), 0, 14, pb::Granularity::Week)).await;
    assert_eq!(values(&reply.series[0]), some(&[4.0, 2.0, 0.0]));
    assert_eq!(reply.series[0].points[0].start, Some(ts(at(-3, 0))));
    assert_eq!(reply.series[0].points[1].start, Some(ts(at(4, 0))));

    let sum = run(&server, query(revenue(pb::MetricKind::Sum), 0, 4, pb::Granularity::Day)).await;
    assert_eq!(values(&sum.series[0]), some(&[10.0, 50.0, 5.0, 0.0]));
    let avg = run(&server, query(revenue(pb::MetricKind::Avg), 0, 4, pb::Granularity::Day)).await;
    assert_eq!(values(&avg.series[0]), vec![Some(10.0), Some(25.0), Some(5.0), None], "no value for an empty bucket");
    let min = run(&server, query(revenue(pb::MetricKind::Min), 0, 4, pb::Granularity::Day)).await;
    assert_eq!(values(&min.series[0]), vec![Some(10.0), Some(20.0), Some(5.0), None]);
    let max = run(&server, query(revenue(pb::MetricKind::Max), 0, 4, pb::Granularity::Day)).await;
    assert_eq!(values(&max.series[0]), vec![Some(10.0), Some(30.0), Some(5.0), None]);
    // p50 of [5, 10, 20, 30]: rank 0.5 × 3 = 1.5, so 10 + 0.5 × (20 − 10) = 15.
    let p50 = pb::MetricDefinition { percentile: 50.0, ..revenue(pb::MetricKind::Percentile) };
    let total = run(&server, query(p50, 0, 4, pb::Granularity::Total)).await;
    assert_eq!(values(&total.series[0]), vec![Some(15.0)]);
    // p90: rank 2.7, so 20 + 0.7 × 10 = 27.
    let p90 = pb::MetricDefinition { percentile: 90.0, ..revenue(pb::MetricKind::Percentile) };
    let total = run(&server, query(p90, 0, 4, pb::Granularity::Total)).await;
    assert!((total.series[0].points[0].value - 27.0).abs() < 1e-9);

    // Filters: event property and user trait.
    let mut big = revenue(pb::MetricKind::Sum);
    big.selector.as_mut().unwrap().filters =
        vec![pb::Filter { property: "revenue".into(), op: pb::FilterOp::Gte as i32, values: vec![num(20.0)] }];
    let reply = run(&server, query(big, 0, 4, pb::Granularity::Total)).await;
    assert_eq!(values(&reply.series[0]), some(&[50.0]));
    let mut request = query(dau, 0, 4, pb::Granularity::Total);
    request.filters =
        vec![pb::Filter { property: "user.channel".into(), op: pb::FilterOp::Eq as i32, values: vec![text("email")] }];
    assert_eq!(values(&run(&server, request).await.series[0]), some(&[2.0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_windows_recount_and_to_date_accumulates() {
    let server = shop().await;
    let wau = pb::MetricDefinition {
        rolling_window: Some(prost_types::Duration { seconds: 7 * 86_400, nanos: 0 }),
        ..definition("wau", pb::MetricKind::UniqueUsers, "session_start")
    };
    // Day 6 counts [day 0, day 7): u1..u4 = 4; day 7 counts [1, 8): u1, u3, u4 = 3;
    // day 8 counts [2, 9): u3, u4, u1, u2 = 4.
    let reply = run(&server, query(wau, 6, 9, pb::Granularity::Day)).await;
    assert_eq!(values(&reply.series[0]), some(&[4.0, 3.0, 4.0]));
    // The sum of the daily counts over the first window would be 2 + 2 + 1 + 1 + 0 + 0 + 1 = 7.

    let week_to_date = pb::MetricDefinition {
        to_date: pb::ToDate::Week as i32,
        ..definition("sessions_wtd", pb::MetricKind::Count, "session_start")
    };
    // Monday Jan 5 is day 4: sessions on days 4..7 are 0, 0, 1 (day 6), 0.
    let reply = run(&server, query(week_to_date, 4, 8, pb::Granularity::Day)).await;
    assert_eq!(values(&reply.series[0]), some(&[0.0, 0.0, 1.0, 1.0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breakdown_keeps_the_top_groups_and_folds_the_rest_into_other() {
    let server = shop().await;
    let mut request =
        query(definition("dau", pb::MetricKind::UniqueUsers, "session_start"), 0, 2, pb::Granularity::Day);
    request.breakdown = "user.channel".into();
    let reply = run(&server, request.clone()).await;
    let got: Vec<(String, Vec<Option<f64>>, f64)> =
        reply.series.iter().map(|s| (s.breakdown_value.clone(), values(s), s.total)).collect();
    assert_eq!(got, vec![("email".into(), some(&[2.0, 1.0]), 2.0), ("social".into(), some(&[0.0, 1.0]), 1.0)]);

    request.breakdown_limit = 1;
    let reply = run(&server, request).await;
    let labels: Vec<&str> = reply.series.iter().map(|s| s.breakdown_value.as_str()).collect();
    assert_eq!(labels, vec!["email", "$other"]);
    assert_eq!(values(&reply.series[1]), some(&[0.0, 1.0]));

    // By an event property: purchases by whether revenue is set.
    let mut request = query(definition("buys", pb::MetricKind::Count, "purchase"), 0, 4, pb::Granularity::Total);
    request.breakdown = "revenue".into();
    let reply = run(&server, request).await;
    let got: Vec<(&str, f64)> = reply.series.iter().map(|s| (s.breakdown_value.as_str(), s.total)).collect();
    assert_eq!(got, vec![("$none", 1.0), ("10", 1.0), ("20", 1.0), ("30", 1.0), ("5", 1.0)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratio_formula_and_comparison() {
    let server = shop().await;
    create(&server, definition("dau", pb::MetricKind::UniqueUsers, "session_start")).await.unwrap();
    create(&server, revenue(pb::MetricKind::Sum)).await.unwrap();
    create(&server, definition("nothing", pb::MetricKind::Count, "never_happens")).await.unwrap();
    let arpu = pb::MetricDefinition {
        key: "arpu".into(),
        kind: pb::MetricKind::Ratio as i32,
        numerator_key: "revenue".into(),
        denominator_key: "dau".into(),
        ..Default::default()
    };
    create(&server, arpu).await.unwrap();
    let mut request = query(pb::MetricDefinition::default(), 0, 4, pb::Granularity::Day);
    request.metric = Some(pb::query_metric_request::Metric::MetricKey("arpu".into()));
    // 10/2, 50/2, 5/1, 0/1.
    assert_eq!(values(&run(&server, request).await.series[0]), some(&[5.0, 25.0, 5.0, 0.0]));

    let formula = |f: &str| pb::MetricDefinition {
        key: "f".into(),
        kind: pb::MetricKind::Formula as i32,
        formula: f.into(),
        ..Default::default()
    };
    // (revenue - 10) / dau: 0/2, 40/2, -5/1, -10/1.
    let reply = run(&server, query(formula("(revenue - 10) / dau"), 0, 4, pb::Granularity::Day)).await;
    assert_eq!(values(&reply.series[0]), some(&[0.0, 20.0, -5.0, -10.0]));
    // Division by zero gives no value, not an error.
    let reply = run(&server, query(formula("revenue / nothing"), 0, 2, pb::Granularity::Day)).await;
    assert_eq!(values(&reply.series[0]), vec![None, None]);

    // Offsets: revenue vs the day before, as one formula.
    let growth = pb::MetricDefinition {
        key: "growth".into(),
        kind: pb::MetricKind::Formula as i32,
        formula: "today - yesterday".into(),
        inputs: vec![
            pb::MetricInput { alias: "today".into(), metric_key: "revenue".into(), offset: None },
            pb::MetricInput {
                alias: "yesterday".into(),
                metric_key: "revenue".into(),
                offset: Some(pb::CalendarOffset { months: 0, days: 1 }),
            },
        ],
        ..Default::default()
    };
    // Revenue by day: 10, 50, 5, 0; the day before day 0 has 0.
    let reply = run(&server, query(growth, 0, 4, pb::Granularity::Day)).await;
    assert_eq!(values(&reply.series[0]), some(&[10.0, 40.0, -45.0, -5.0]));

    // Day 1 compared with day 0: sessions 2 vs 3.
    let mut request = query(definition("sessions", pb::MetricKind::Count, "session_start"), 1, 2, pb::Granularity::Day);
    request.compare = pb::Compare::PreviousPeriod as i32;
    let reply = run(&server, request).await;
    assert_eq!(values(&reply.comparison[0]), some(&[3.0]));
    let point = &reply.series[0].points[0];
    assert_eq!(point.value, 2.0);
    assert_eq!(point.absolute_change, Some(-1.0));
    assert!((point.relative_change.unwrap() + 1.0 / 3.0).abs() < 1e-12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_follow_the_zone_across_dst() {
    let server = TestServer::start().await;
    server.create_project("eu").await;
    // Berlin switches to summer time on 2026-03-29. 2026-03-29T22:30Z is 00:30 on Mar 30
    // in Berlin (+2), and 2026-03-28T23:30Z is 00:30 on Mar 29 (+1).
    let utc = |s: &str| {
        let t = chrono::DateTime::parse_from_rfc3339(s).unwrap();
        prost_types::Timestamp { seconds: t.timestamp(), nanos: 0 }
    };
    let events = vec![
        pb::Event { timestamp: Some(utc("2026-03-28T23:30:00Z")), ..event("a", "x", "u", 0) },
        pb::Event { timestamp: Some(utc("2026-03-29T22:30:00Z")), ..event("b", "x", "u", 0) },
        pb::Event { timestamp: Some(utc("2026-03-29T12:00:00Z")), ..event("c", "x", "u", 0) },
    ];
    server.track("eu", events).await;
    let request = |zone: &str| pb::QueryMetricRequest {
        project: "eu".into(),
        metric: Some(pb::query_metric_request::Metric::Definition(definition("x", pb::MetricKind::Count, "x"))),
        range: Some(pb::TimeRange { from: Some(utc("2026-03-28T00:00:00Z")), to: Some(utc("2026-03-31T00:00:00Z")) }),
        granularity: pb::Granularity::Day as i32,
        timezone: zone.into(),
        ..Default::default()
    };
    let mut client = server.metrics();
    let berlin = client.query_metric(request("Europe/Berlin")).await.unwrap().into_inner();
    assert_eq!(berlin.timezone, "Europe/Berlin");
    let starts: Vec<i64> = berlin.series[0].points.iter().map(|p| p.start.unwrap().seconds).collect();
    // Local midnights: Mar 28 00:00+01 (clipped range starts at Mar 27 23:00Z), Mar 29 00:00+01,
    // Mar 30 00:00+02 (a 23-hour day before it), Mar 31 00:00+02.
    assert_eq!(
        starts,
        vec![
            utc("2026-03-27T23:00:00Z").seconds,
            utc("2026-03-28T23:00:00Z").seconds,
            utc("2026-03-29T22:00:00Z").seconds,
            utc("2026-03-30T22:00:00Z").seconds
        ]
    );
    assert_eq!(values(&berlin.series[0]), some(&[0.0, 2.0, 1.0, 0.0]));
    let in_utc = client.query_metric(request("")).await.unwrap().into_inner();
    assert_eq!(in_utc.timezone, "UTC");
    assert_eq!(values(&in_utc.series[0]), some(&[1.0, 2.0, 0.0]));
    let status = client.query_metric(request("Moon/Base")).await.unwrap_err();
    assert_eq!(violated_fields(&status), vec!["timezone"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_are_validated_versioned_and_protected() {
    let server = shop().await;
    create(&server, definition("dau", pb::MetricKind::UniqueUsers, "session_start")).await.unwrap();
    let status = create(&server, definition("dau", pb::MetricKind::Count, "x")).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);

    let bad = [
        (pb::MetricDefinition { key: "Bad!".into(), ..definition("x", pb::MetricKind::Count, "e") }, "metric.key"),
        (pb::MetricDefinition { selector: None, ..definition("x", pb::MetricKind::Count, "e") }, "metric.selector"),
        (definition("x", pb::MetricKind::Sum, "purchase"), "metric.property"),
        (
            pb::MetricDefinition {
                kind: pb::MetricKind::Formula as i32,
                formula: "dau +".into(),
                ..Default::default()
            },
            "metric.key",
        ),
        (
            pb::MetricDefinition {
                key: "f".into(),
                kind: pb::MetricKind::Formula as i32,
                formula: "dau * (2".into(),
                ..Default::default()
            },
            "metric.formula",
        ),
        (
            pb::MetricDefinition {
                key: "f".into(),
                kind: pb::MetricKind::Formula as i32,
                formula: "dau / ghost".into(),
                ..Default::default()
            },
            "metric",
        ),
        (pb::MetricDefinition { kind: 99, ..definition("x", pb::MetricKind::Count, "e") }, "metric.kind"),
    ];
    for (metric, field) in bad {
        let status = create(&server, metric).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert_eq!(violated_fields(&status), vec![field]);
    }

    // Versions: an update keeps version 1 readable.
    let mut client = metrics(&server);
    let v2 = pb::MetricDefinition {
        name: "Daily actives".into(),
        ..definition("dau", pb::MetricKind::UniqueUsers, "purchase")
    };
    let updated = client
        .update_metric(pb::UpdateMetricRequest { project: "shop".into(), metric: Some(v2) })
        .await
        .unwrap()
        .into_inner()
        .metric
        .unwrap();
    assert_eq!(updated.version, 2);
    let get = |version: u32| pb::GetMetricRequest { project: "shop".into(), key: "dau".into(), version };
    let first = client.get_metric(get(1)).await.unwrap().into_inner();
    assert_eq!(
        (first.metric.as_ref().unwrap().selector.as_ref().unwrap().event.as_str(), first.latest_version),
        ("session_start", 2)
    );
    let latest = client.get_metric(get(0)).await.unwrap().into_inner();
    assert_eq!(latest.metric.unwrap().name, "Daily actives");
    assert_eq!(client.get_metric(get(7)).await.unwrap_err().code(), Code::NotFound);

    // One north star; references protect metrics from deletion.
    let star = |key: &str| pb::MetricDefinition {
        role: pb::MetricRole::NorthStar as i32,
        ..definition(key, pb::MetricKind::Count, "purchase")
    };
    create(&server, star("orders")).await.unwrap();
    assert_eq!(create(&server, star("orders2")).await.unwrap_err().code(), Code::FailedPrecondition);
    let child = pb::MetricDefinition {
        parent_keys: vec!["orders".into()],
        ..definition("buyers", pb::MetricKind::UniqueUsers, "purchase")
    };
    create(&server, child).await.unwrap();
    let status = client
        .delete_metric(pb::DeleteMetricRequest { project: "shop".into(), key: "orders".into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("buyers"), "{}", status.message());
    // A parent cycle is refused.
    let cyclic = pb::MetricDefinition {
        role: pb::MetricRole::NorthStar as i32,
        parent_keys: vec!["buyers".into()],
        ..definition("orders", pb::MetricKind::Count, "purchase")
    };
    let status = client
        .update_metric(pb::UpdateMetricRequest { project: "shop".into(), metric: Some(cyclic) })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), vec!["metric.parent_keys"]);
    client.delete_metric(pb::DeleteMetricRequest { project: "shop".into(), key: "buyers".into() }).await.unwrap();
    client.delete_metric(pb::DeleteMetricRequest { project: "shop".into(), key: "orders".into() }).await.unwrap();

    // Definitions persist across a restart.
    let server = server.restart().await;
    let listed = metrics(&server)
        .list_metrics(pb::ListMetricsRequest { project: "shop".into(), ..Default::default() })
        .await
        .unwrap();
    let keys: Vec<String> =
        listed.into_inner().metrics.into_iter().map(|m| format!("{}@{}", m.key, m.version)).collect();
    assert_eq!(keys, vec!["dau@2"]);

    // Queries need a range and a metric.
    let mut request = query(definition("x", pb::MetricKind::Count, "e"), 0, 1, pb::Granularity::Day);
    request.range = None;
    assert_eq!(violated_fields(&metrics(&server).query_metric(request).await.unwrap_err()), vec!["range"]);
    let mut request = query(definition("x", pb::MetricKind::Count, "e"), 0, 1, pb::Granularity::Day);
    request.metric = Some(pb::query_metric_request::Metric::MetricKey("ghost".into()));
    assert_eq!(metrics(&server).query_metric(request).await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversion_and_retention_are_shares_of_users() {
    let server = shop().await;
    let conversion = |window: Option<i64>| pb::MetricDefinition {
        key: "session_to_purchase".into(),
        kind: pb::MetricKind::Conversion as i32,
        selector: selector("session_start"),
        conversion_selector: selector("purchase"),
        window: window.map(|s| prost_types::Duration { seconds: s, nanos: 0 }),
        ..Default::default()
    };
    // One-day window. Day 0: u1 buys 5 h after a session, u2 27 h after: 1/2. Day 1: u3 buys
    // 6 h later, u1's next purchase is 30 h later: 1/2. Day 2: u3 buys nothing later: 0.
    // Day 3: u4's purchase came before: 0. Over the range: u1 and u3 of four users.
    let reply = run(&server, query(conversion(Some(86_400)), 0, 4, pb::Granularity::Day)).await;
    assert_eq!(values(&reply.series[0]), some(&[0.5, 0.5, 0.0, 0.0]));
    assert_eq!(reply.series[0].total, 0.5);
    // The default 14-day window also converts u2 (day 0) and u1 (day 1).
    let reply = run(&server, query(conversion(None), 0, 4, pb::Granularity::Day)).await;
    assert_eq!(values(&reply.series[0]), some(&[1.0, 1.0, 0.0, 0.0]));
    // No one entered on day 4: no value rather than 0.
    let reply = run(&server, query(conversion(None), 4, 5, pb::Granularity::Day)).await;
    assert_eq!(values(&reply.series[0]), vec![None]);

    let retention = |unbounded: bool| pb::MetricDefinition {
        key: "d1".into(),
        kind: pb::MetricKind::Retention as i32,
        selector: selector("session_start"),
        conversion_selector: selector("session_start"),
        retention_period: pb::Period::Day as i32,
        retention_offset: 1,
        retention_unbounded: unbounded,
        ..Default::default()
    };
    // First sessions: u1 and u2 on day 0, u3 on day 1, u4 on day 3. Back the next day:
    // u1 (day 1) and u3 (day 2) only.
    let reply = run(&server, query(retention(false), 0, 4, pb::Granularity::Day)).await;
    assert_eq!(values(&reply.series[0]), vec![Some(0.5), Some(1.0), None, Some(0.0)]);
    // Unbounded: u2's return on day 8 counts too.
    let reply = run(&server, query(retention(true), 0, 4, pb::Granularity::Day)).await;
    assert_eq!(values(&reply.series[0]), vec![Some(1.0), Some(1.0), None, Some(0.0)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_values_sum_or_keep_the_last() {
    let server = shop().await;
    create(
        &server,
        pb::MetricDefinition { key: "ad_spend".into(), kind: pb::MetricKind::Manual as i32, ..Default::default() },
    )
    .await
    .unwrap();
    let value = |day: i64, hour: i64, v: f64, channel: &str| pb::ManualValue {
        timestamp: Some(ts(at(day, hour))),
        value: v,
        dimensions: [("channel".to_string(), text(channel))].into_iter().collect(),
    };
    let record = |key: &str, values: Vec<pb::ManualValue>| pb::RecordValuesRequest {
        project: "shop".into(),
        metric_key: key.into(),
        values,
    };
    let mut client = metrics(&server);
    let reply = client
        .record_values(record(
            "ad_spend",
            vec![
                value(0, 1, 100.0, "email"),
                value(0, 2, 50.0, "social"),
                value(1, 1, 70.0, "email"),
                pb::ManualValue { timestamp: Some(ts(0)), value: f64::NAN, dimensions: Default::default() },
            ],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.recorded, 3);
    assert_eq!(reply.rejected.len(), 1);
    assert!(reply.rejected[0].message.starts_with("values[3].value: must be finite"), "{}", reply.rejected[0].message);
    // Re-recording the same timestamp and dimensions replaces the value.
    client
        .record_values(record("ad_spend", vec![value(1, 1, 80.0, "email"), value(2, 1, 30.0, "social")]))
        .await
        .unwrap();

    let mut request = query(pb::MetricDefinition::default(), 0, 3, pb::Granularity::Day);
    request.metric = Some(pb::query_metric_request::Metric::MetricKey("ad_spend".into()));
    let reply = run(&server, request.clone()).await;
    assert_eq!(values(&reply.series[0]), some(&[150.0, 80.0, 30.0]));
    request.breakdown = "channel".into();
    let reply = run(&server, request.clone()).await;
    let got: Vec<(&str, Vec<Option<f64>>, f64)> =
        reply.series.iter().map(|s| (s.breakdown_value.as_str(), values(s), s.total)).collect();
    assert_eq!(got, vec![("email", some(&[100.0, 80.0, 0.0]), 180.0), ("social", some(&[50.0, 0.0, 30.0]), 80.0)]);

    // CAC as a formula over the MANUAL metric: spend per new purchaser.
    create(&server, definition("buyers", pb::MetricKind::UniqueUsers, "purchase")).await.unwrap();
    let cac = pb::MetricDefinition {
        key: "cac".into(),
        kind: pb::MetricKind::Formula as i32,
        formula: "ad_spend / buyers".into(),
        ..Default::default()
    };
    // Day 0: 150 / 1 (u1); day 1: 80 / 2 (u2, u3); day 2: 30 / 2 (u1, u4).
    let reply = run(&server, query(cac, 0, 3, pb::Granularity::Day)).await;
    assert_eq!(values(&reply.series[0]), some(&[150.0, 40.0, 15.0]));

    // Semi-additive: the last balance of each day.
    let balance = pb::MetricDefinition {
        key: "balance".into(),
        kind: pb::MetricKind::Manual as i32,
        semi_additive: pb::SemiAdditive::Last as i32,
        ..Default::default()
    };
    create(&server, balance).await.unwrap();
    let plain = |day: i64, hour: i64, v: f64| pb::ManualValue {
        timestamp: Some(ts(at(day, hour))),
        value: v,
        dimensions: Default::default(),
    };
    client
        .record_values(record("balance", vec![plain(0, 20, 520.0), plain(0, 10, 500.0), plain(1, 10, 510.0)]))
        .await
        .unwrap();
    let mut request = query(pb::MetricDefinition::default(), 0, 3, pb::Granularity::Day);
    request.metric = Some(pb::query_metric_request::Metric::MetricKey("balance".into()));
    assert_eq!(values(&run(&server, request).await.series[0]), some(&[520.0, 510.0, 0.0]));

    // Values survive a restart; a non-MANUAL or unknown metric refuses values.
    let server = server.restart().await;
    let mut request = query(pb::MetricDefinition::default(), 0, 3, pb::Granularity::Total);
    request.metric = Some(pb::query_metric_request::Metric::MetricKey("ad_spend".into()));
    assert_eq!(values(&run(&server, request).await.series[0]), some(&[260.0]));
    let mut client = metrics(&server);
    let status = client.record_values(record("buyers", vec![plain(0, 1, 1.0)])).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    let status = client.record_values(record("ghost", vec![plain(0, 1, 1.0)])).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_tree_shows_the_north_star_and_its_inputs() {
    let server = shop().await;
    let mut client = metrics(&server);
    let tree_request = |root: &str| pb::GetMetricTreeRequest {
        project: "shop".into(),
        root_key: root.into(),
        range: Some(pb::TimeRange { from: Some(ts(at(1, 0))), to: Some(ts(at(3, 0))) }),
        ..Default::default()
    };
    let status = client.get_metric_tree(tree_request("")).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "no north star yet");

    let star = pb::MetricDefinition { role: pb::MetricRole::NorthStar as i32, ..revenue(pb::MetricKind::Sum) };
    create(&server, star).await.unwrap();
    let buyers = pb::MetricDefinition {
        role: pb::MetricRole::Input as i32,
        parent_keys: vec!["revenue".into()],
        ..definition("buyers", pb::MetricKind::UniqueUsers, "purchase")
    };
    create(&server, buyers).await.unwrap();
    let sessions = pb::MetricDefinition {
        role: pb::MetricRole::Input as i32,
        parent_keys: vec!["buyers".into()],
        ..definition("sessions", pb::MetricKind::Count, "session_start")
    };
    create(&server, sessions).await.unwrap();

    let reply = client.get_metric_tree(tree_request("")).await.unwrap().into_inner();
    // Days 1-2 against the previous period, days -1..0.
    assert_eq!(reply.previous_range, Some(pb::TimeRange { from: Some(ts(at(-1, 0))), to: Some(ts(at(1, 0))) }));
    let root = reply.root.unwrap();
    // Revenue: 50 + 5 now, 10 before.
    assert_eq!(
        (root.metric_key.as_str(), root.current_value, root.previous_value),
        ("revenue", Some(55.0), Some(10.0))
    );
    assert_eq!((root.absolute_change, root.relative_change), (Some(45.0), Some(4.5)));
    assert_eq!(root.children.len(), 1);
    let buyers = &root.children[0];
    // Buyers: u2, u3 (day 1), u1, u4 (day 2) now; u1 before.
    assert_eq!(
        (buyers.metric_key.as_str(), buyers.current_value, buyers.previous_value),
        ("buyers", Some(4.0), Some(1.0))
    );
    let sessions = &buyers.children[0];
    // Sessions: 3 on days 1-2, 3 on day 0.
    assert_eq!(
        (sessions.current_value, sessions.previous_value, sessions.relative_change),
        (Some(3.0), Some(3.0), Some(0.0))
    );

    let mut shallow = tree_request("buyers");
    shallow.max_depth = 1;
    let reply = client.get_metric_tree(shallow).await.unwrap().into_inner();
    let root = reply.root.unwrap();
    assert_eq!((root.metric_key.as_str(), root.children.len()), ("buyers", 0));
}

mod goals {
    use super::*;
    use sextant::pb::goal_service_client::GoalServiceClient;

    fn goal(id: &str, from_day: i64, to_day: i64, target: pb::goal::Target) -> pb::Goal {
        pb::Goal {
            id: id.into(),
            metric_key: "sessions".into(),
            granularity: pb::Granularity::Day as i32,
            period: Some(pb::TimeRange { from: Some(ts(at(from_day, 0))), to: Some(ts(at(to_day, 0))) }),
            target: Some(target),
            ..Default::default()
        }
    }

    async fn progress(client: &mut GoalServiceClient<Channel>, id: &str, day: i64) -> pb::GetGoalProgressResponse {
        let request = pb::GetGoalProgressRequest { project: "shop".into(), id: id.into(), as_of: Some(ts(at(day, 0))) };
        client.get_goal_progress(request).await.unwrap().into_inner()
    }

    fn status(reply: &pb::GetGoalProgressResponse) -> pb::GoalStatus {
        pb::GoalStatus::try_from(reply.status).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn additive_goal_statuses() {
        let server = shop().await;
        create(&server, definition("sessions", pb::MetricKind::Count, "session_start")).await.unwrap();
        let mut client = server.goals();
        let writer = client.clone();
        let create_goal = |g: pb::Goal| {
            let mut client = writer.clone();
            async move { client.create_goal(pb::CreateGoalRequest { project: "shop".into(), goal: Some(g) }).await }
        };
        use pb::goal::Target::{RelativeTarget, TargetValue};
        for (id, target) in [("ten", 10.0), ("nine", 9.0), ("twenty", 20.0), ("hundred", 100.0), ("nineteen", 19.0)] {
            create_goal(goal(id, 0, 10, TargetValue(target))).await.unwrap();
        }
        assert_eq!(status(&progress(&mut client, "ten", 0).await), pb::GoalStatus::NotStarted);
        // By day 4: 3 + 2 + 1 + 1 = 7 sessions in 4 of 10 days, projected 7 × 10 / 4 = 17.5.
        let reply = progress(&mut client, "ten", 4).await;
        assert_eq!(status(&reply), pb::GoalStatus::OnTrack);
        assert_eq!((reply.current, reply.baseline, reply.projected), (Some(7.0), Some(0.0), Some(17.5)));
        assert_eq!((reply.progress, reply.expected_progress), (Some(0.7), 0.4));
        assert_eq!(reply.points.len(), 4);
        // 17.5 is at least 90% of the way to 19, not to 100.
        assert_eq!(status(&progress(&mut client, "nineteen", 4).await), pb::GoalStatus::AtRisk);
        assert_eq!(status(&progress(&mut client, "hundred", 4).await), pb::GoalStatus::OffTrack);
        // By day 9 the total is 9 (day 6 and day 8 add one each).
        assert_eq!(status(&progress(&mut client, "nine", 9).await), pb::GoalStatus::Achieved);
        assert_eq!(status(&progress(&mut client, "twenty", 11).await), pb::GoalStatus::Missed);

        // +20% over the 4 days before: baseline 7, target 8.4; days 4-5 have no sessions.
        create_goal(goal("growth", 4, 8, RelativeTarget(0.2))).await.unwrap();
        let reply = progress(&mut client, "growth", 6).await;
        assert_eq!(reply.baseline, Some(7.0));
        assert!((reply.target.unwrap() - 8.4).abs() < 1e-9);
        assert_eq!((reply.current, reply.projected), (Some(0.0), Some(0.0)));
        assert_eq!(status(&reply), pb::GoalStatus::OffTrack);

        // Bad goals name the field; a duplicate id is ALREADY_EXISTS.
        let status = create_goal(goal("ten", 0, 10, TargetValue(1.0))).await.unwrap_err();
        assert_eq!(status.code(), Code::AlreadyExists);
        let cases = [
            (pb::Goal { target: None, ..goal("g", 0, 10, TargetValue(1.0)) }, "goal.target_value"),
            (goal("g", 10, 0, TargetValue(1.0)), "goal.period"),
            (pb::Goal { timezone: "Nowhere".into(), ..goal("g", 0, 10, TargetValue(1.0)) }, "goal.timezone"),
            (goal("g", 0, 10, TargetValue(f64::NAN)), "goal.target_value"),
        ];
        for (bad, field) in cases {
            let status = create_goal(bad).await.unwrap_err();
            assert_eq!(violated_fields(&status), vec![field]);
        }
        // An unknown metric is NOT_FOUND (goal.proto), naming the field in the message.
        let status = create_goal(pb::Goal { metric_key: "ghost".into(), ..goal("g", 0, 10, TargetValue(1.0)) })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert!(status.message().starts_with("goal.metric_key"), "{status:?}");
        // A metric with goals cannot be deleted; the goal persists across a restart.
        let status = metrics(&server)
            .delete_metric(pb::DeleteMetricRequest { project: "shop".into(), key: "sessions".into() })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(status.message().contains("goal growth"), "{}", status.message());
        let server = server.restart().await;
        let mut client = server.goals();
        assert_eq!(progress(&mut client, "ten", 4).await.projected, Some(17.5));
        let listed =
            client.list_goals(pb::ListGoalsRequest { project: "shop".into(), ..Default::default() }).await.unwrap();
        assert_eq!(listed.into_inner().goals.len(), 6);
        client.delete_goal(pb::DeleteGoalRequest { project: "shop".into(), id: "ten".into() }).await.unwrap();
        let status =
            client.get_goal(pb::GetGoalRequest { project: "shop".into(), id: "ten".into() }).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hours_months_quarters_previous_year_and_constant_properties() {
    let server = shop().await;
    let sessions = definition("sessions", pb::MetricKind::Count, "session_start");
    let mut request = query(sessions.clone(), 0, 1, pb::Granularity::Hour);
    request.range = Some(pb::TimeRange { from: Some(ts(at(0, 9))), to: Some(ts(at(0, 13))) });
    // Sessions on day 0 at 10:00, 11:00 and 12:00.
    assert_eq!(values(&run(&server, request).await.series[0]), some(&[0.0, 1.0, 1.0, 1.0]));
    // January 2026 holds all nine sessions; February and March none. One quarter holds all.
    let reply = run(&server, query(sessions.clone(), 0, 90, pb::Granularity::Month)).await;
    assert_eq!(values(&reply.series[0]), some(&[9.0, 0.0, 0.0]));
    assert_eq!(reply.series[0].points[1].start, Some(ts(at(31, 0))));
    let reply = run(&server, query(sessions.clone(), 0, 90, pb::Granularity::Quarter)).await;
    assert_eq!(values(&reply.series[0]), some(&[9.0]));
    // A year earlier there was nothing: the change is the whole value, relative change undefined.
    let mut request = query(sessions, 0, 4, pb::Granularity::Total);
    request.compare = pb::Compare::PreviousYear as i32;
    let reply = run(&server, request).await;
    assert_eq!(values(&reply.comparison[0]), some(&[0.0]));
    assert_eq!(reply.comparison[0].points[0].start, Some(ts(at(-365, 0))));
    let point = &reply.series[0].points[0];
    assert_eq!((point.value, point.absolute_change, point.relative_change), (7.0, Some(7.0), None));

    // Constant properties: a cart counts only for the item that was viewed.
    let item = |id: &str, name: &str, user: &str, hour: i64, sku: &str| {
        with_props(event(id, name, user, at(5, hour)), &[("sku", text(sku))])
    };
    server
        .track(
            "shop",
            vec![
                item("v1", "view_item", "u1", 10, "a"),
                item("c1", "add_to_cart", "u1", 11, "b"),
                item("v2", "view_item", "u2", 10, "c"),
                item("c2", "add_to_cart", "u2", 12, "c"),
            ],
        )
        .await;
    let view_to_cart = |constant: Vec<String>| pb::MetricDefinition {
        key: "view_to_cart".into(),
        kind: pb::MetricKind::Conversion as i32,
        selector: selector("view_item"),
        conversion_selector: selector("add_to_cart"),
        constant_properties: constant,
        ..Default::default()
    };
    let reply = run(&server, query(view_to_cart(vec![]), 5, 6, pb::Granularity::Total)).await;
    assert_eq!(values(&reply.series[0]), some(&[1.0]));
    let reply = run(&server, query(view_to_cart(vec!["sku".into()]), 5, 6, pb::Granularity::Total)).await;
    assert_eq!(values(&reply.series[0]), some(&[0.5]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fill_nulls_and_ratio_offsets() {
    let server = shop().await;
    create(&server, revenue(pb::MetricKind::Sum)).await.unwrap();
    create(&server, pb::MetricDefinition { key: "avg_revenue".into(), ..revenue(pb::MetricKind::Avg) }).await.unwrap();
    create(&server, definition("dau", pb::MetricKind::UniqueUsers, "session_start")).await.unwrap();
    // Average revenue has no value on day 3 (no priced purchase); without a fill the sum has none.
    let formula = |fill: Option<f64>| pb::MetricDefinition {
        key: "f".into(),
        kind: pb::MetricKind::Formula as i32,
        formula: "revenue + avg_revenue".into(),
        fill_nulls_with: fill,
        ..Default::default()
    };
    // Days 0-3: revenue 10, 50, 5, 0; average 10, 25, 5, none.
    let reply = run(&server, query(formula(None), 0, 4, pb::Granularity::Day)).await;
    assert_eq!(values(&reply.series[0]), vec![Some(20.0), Some(75.0), Some(10.0), None]);
    let reply = run(&server, query(formula(Some(0.0)), 0, 4, pb::Granularity::Day)).await;
    assert_eq!(values(&reply.series[0]), some(&[20.0, 75.0, 10.0, 0.0]));

    // Yesterday's revenue per today's active user: numerator shifted back one day.
    let lagged = pb::MetricDefinition {
        key: "lagged_arpu".into(),
        kind: pb::MetricKind::Ratio as i32,
        numerator_key: "revenue".into(),
        denominator_key: "dau".into(),
        numerator_offset: Some(pb::CalendarOffset { months: 0, days: 1 }),
        ..Default::default()
    };
    // Day 1: 10 / 2; day 2: 50 / 1; day 3: 5 / 1.
    let reply = run(&server, query(lagged, 1, 4, pb::Granularity::Day)).await;
    assert_eq!(values(&reply.series[0]), some(&[5.0, 50.0, 5.0]));
}
