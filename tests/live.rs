//! WatchMetric and DetectAnomalies end to end: live values as events arrive, streams that end
//! cleanly, and anomalies flagged exactly where they were injected into hand-built data.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use sextant::pb;
use sextant::pb::metric_service_client::MetricServiceClient;
use tonic::Code;
use tonic::codec::Streaming;
use tonic::transport::Channel;

/// Generous bound for something that should happen within about a second.
const PATIENCE: Duration = Duration::from_secs(30);

fn metrics(server: &TestServer) -> MetricServiceClient<Channel> {
    server.metrics()
}

fn now() -> prost_types::Timestamp {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    prost_types::Timestamp { seconds: since.as_secs() as i64, nanos: 0 }
}

/// `n` events named `name` stamped now, with ids `{prefix}-{i}`.
fn events_now(prefix: &str, name: &str, n: usize, props: &[(&str, pb::Value)]) -> Vec<pb::Event> {
    (0..n)
        .map(|i| {
            let mut e = event(&format!("{prefix}-{i}"), name, &format!("user{i}"), 0);
            e.timestamp = Some(now());
            with_props(e, props)
        })
        .collect()
}

async fn create_metric(server: &TestServer, project: &str, metric: pb::MetricDefinition) {
    let request = pb::CreateMetricRequest { project: project.into(), metric: Some(metric) };
    metrics(server).create_metric(request).await.expect("metric created");
}

fn count_of(key: &str, event: &str) -> pb::MetricDefinition {
    pb::MetricDefinition {
        key: key.into(),
        kind: pb::MetricKind::Count as i32,
        selector: Some(pb::EventSelector { event: event.into(), filters: vec![] }),
        ..Default::default()
    }
}

/// A project `live` with a COUNT metric `signups`.
async fn live_server() -> TestServer {
    let server = TestServer::start().await;
    server.create_project("live").await;
    create_metric(&server, "live", count_of("signups", "signup")).await;
    server
}

/// Watches monthly buckets: the current bucket does not roll over during a test.
fn watch_request(metric: &str) -> pb::WatchMetricRequest {
    pb::WatchMetricRequest {
        project: "live".into(),
        metric_key: metric.into(),
        granularity: pb::Granularity::Month as i32,
        ..Default::default()
    }
}

async fn next(
    stream: &mut Streaming<pb::WatchMetricResponse>,
) -> Result<Option<pb::WatchMetricResponse>, tonic::Status> {
    tokio::time::timeout(PATIENCE, stream.message()).await.expect("a message within the patience bound")
}

fn value(message: &pb::WatchMetricResponse) -> f64 {
    let point = message.point.as_ref().expect("point");
    assert!(point.has_value);
    point.value
}

/// Reads until a message shows `target`; returns how many messages that took.
async fn until_value(stream: &mut Streaming<pb::WatchMetricResponse>, target: f64) -> usize {
    let mut messages = 0;
    loop {
        let message = next(stream).await.expect("no error").expect("stream open");
        messages += 1;
        let v = value(&message);
        assert!(v <= target, "{v} overshoots {target}");
        if v == target {
            return messages;
        }
    }
}

/// Waits (without asserting on speed) until the server has no watch stream or feed open.
async fn until_no_watchers(server: &TestServer) {
    let engine = &server.running.as_ref().unwrap().engine;
    let started = Instant::now();
    while engine.live_streams() > 0 || engine.live_feeds() > 0 {
        assert!(
            started.elapsed() < PATIENCE,
            "watchers left: {} streams, {} feeds",
            engine.live_streams(),
            engine.live_feeds()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_gets_the_value_at_once_then_updates_and_ends_when_dropped() {
    let server = live_server().await;
    server.track("live", events_now("a", "signup", 2, &[])).await;
    let mut stream = metrics(&server).watch_metric(watch_request("signups")).await.unwrap().into_inner();
    let first = next(&mut stream).await.unwrap().unwrap();
    assert_eq!(value(&first), 2.0, "the first message includes every acked write");
    let point = first.point.as_ref().unwrap();
    assert!(!point.complete);
    assert!(
        point.start.as_ref().unwrap().seconds <= now().seconds && now().seconds < point.end.as_ref().unwrap().seconds
    );
    assert_eq!((first.metric_version, first.timezone.as_str()), (1, "UTC"));
    let engine = server.running.as_ref().unwrap().engine.clone();
    assert_eq!((engine.live_streams(), engine.live_feeds()), (1, 1));

    // Events of another name change nothing; signups do.
    server.track("live", events_now("b", "pageview", 4, &[])).await;
    server.track("live", events_now("c", "signup", 3, &[])).await;
    assert_eq!(until_value(&mut stream, 5.0).await, 1, "no message for an unchanged value");

    // A second identical watch shares the feed and starts from the current value.
    let mut second = metrics(&server).watch_metric(watch_request("signups")).await.unwrap().into_inner();
    assert_eq!(value(&next(&mut second).await.unwrap().unwrap()), 5.0);
    assert_eq!((engine.live_streams(), engine.live_feeds()), (2, 1));

    // The client goes away: the server drops the streams and then the feed.
    drop(stream);
    drop(second);
    until_no_watchers(&server).await;

    // The server keeps serving, and a later watch works.
    server.track("live", events_now("d", "signup", 1, &[])).await;
    let mut again = metrics(&server).watch_metric(watch_request("signups")).await.unwrap().into_inner();
    assert_eq!(value(&next(&mut again).await.unwrap().unwrap()), 6.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_batches_are_coalesced_into_few_messages() {
    let server = live_server().await;
    let mut stream = metrics(&server).watch_metric(watch_request("signups")).await.unwrap().into_inner();
    let opened = Instant::now();
    assert_eq!(value(&next(&mut stream).await.unwrap().unwrap()), 0.0);
    let batches = 40;
    for b in 0..batches {
        server.track("live", events_now(&format!("batch{b}"), "signup", 1, &[])).await;
    }
    let updates = until_value(&mut stream, batches as f64).await;
    // Messages of a stream are at least a second apart on the server, so however slow the
    // machine, the updates cannot outnumber the seconds elapsed (plus slack for delivery).
    let elapsed = opened.elapsed().as_secs_f64();
    assert!((updates as f64) <= elapsed + 2.0, "{updates} updates in {elapsed:.1} s");
    assert!(updates < batches, "{batches} batches gave {updates} messages: nothing coalesced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_can_break_the_current_bucket_down() {
    let server = live_server().await;
    server.track("live", events_now("g", "signup", 3, &[("channel", text("google"))])).await;
    server.track("live", events_now("e", "signup", 1, &[("channel", text("email"))])).await;
    let request = pb::WatchMetricRequest { breakdown: "channel".into(), ..watch_request("signups") };
    let mut stream = metrics(&server).watch_metric(request).await.unwrap().into_inner();
    let first = next(&mut stream).await.unwrap().unwrap();
    assert_eq!(value(&first), 4.0);
    let shown: Vec<(String, f64)> =
        first.breakdown.iter().map(|s| (s.breakdown_value.clone(), s.points[0].value)).collect();
    assert_eq!(shown, vec![("google".to_string(), 3.0), ("email".to_string(), 1.0)]);
    assert!(first.breakdown.iter().all(|s| s.points.len() == 1));

    server.track("live", events_now("e2", "signup", 3, &[("channel", text("email"))])).await;
    let update = loop {
        let message = next(&mut stream).await.unwrap().unwrap();
        if value(&message) == 7.0 {
            break message;
        }
    };
    let shown: Vec<(String, f64)> =
        update.breakdown.iter().map(|s| (s.breakdown_value.clone(), s.points[0].value)).collect();
    assert_eq!(shown, vec![("email".to_string(), 4.0), ("google".to_string(), 3.0)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_metric_or_stopping_the_server_ends_the_stream() {
    let mut server = live_server().await;
    let mut stream = metrics(&server).watch_metric(watch_request("signups")).await.unwrap().into_inner();
    next(&mut stream).await.unwrap().unwrap();
    let request = pb::DeleteMetricRequest { project: "live".into(), key: "signups".into() };
    metrics(&server).delete_metric(request).await.unwrap();
    let status = next(&mut stream).await.expect_err("the metric is gone");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    until_no_watchers(&server).await;

    create_metric(&server, "live", count_of("signups", "signup")).await;
    let mut stream = metrics(&server).watch_metric(watch_request("signups")).await.unwrap().into_inner();
    next(&mut stream).await.unwrap().unwrap();
    let running = server.running.take().unwrap();
    let stopping = tokio::spawn(running.stop());
    let status = next(&mut stream).await.expect_err("the server is stopping");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    stopping.await.unwrap().expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_watch_requests_fail_the_call() {
    let server = live_server().await;
    let cases: Vec<(pb::WatchMetricRequest, Code, &str)> = vec![
        (watch_request("nope"), Code::NotFound, ""),
        (pb::WatchMetricRequest { project: "nope".into(), ..watch_request("signups") }, Code::NotFound, ""),
        (watch_request(""), Code::InvalidArgument, "metric_key"),
        (
            pb::WatchMetricRequest { granularity: pb::Granularity::Total as i32, ..watch_request("signups") },
            Code::InvalidArgument,
            "granularity",
        ),
        (pb::WatchMetricRequest { granularity: 42, ..watch_request("signups") }, Code::InvalidArgument, "granularity"),
        (
            pb::WatchMetricRequest { timezone: "Mars/Olympus".into(), ..watch_request("signups") },
            Code::InvalidArgument,
            "timezone",
        ),
        (pb::WatchMetricRequest { cohort_id: "c".into(), ..watch_request("signups") }, Code::NotFound, ""),
        (
            pb::WatchMetricRequest { cohort_id: "Bad Id".into(), ..watch_request("signups") },
            Code::InvalidArgument,
            "cohort_id",
        ),
        (
            pb::WatchMetricRequest {
                filters: vec![pb::Filter { property: "x".into(), op: 99, values: vec![] }],
                ..watch_request("signups")
            },
            Code::InvalidArgument,
            "filters[0].op",
        ),
        (
            pb::WatchMetricRequest { breakdown: "user.".into(), ..watch_request("signups") },
            Code::InvalidArgument,
            "breakdown",
        ),
    ];
    for (request, code, field) in cases {
        let label = format!("{request:?}");
        let status = metrics(&server).watch_metric(request).await.expect_err(&label);
        assert_eq!(status.code(), code, "{label}: {status:?}");
        if !field.is_empty() {
            assert_eq!(violated_fields(&status), vec![field.to_string()], "{label}");
        }
    }
    let engine = &server.running.as_ref().unwrap().engine;
    assert_eq!((engine.live_streams(), engine.live_feeds()), (0, 0), "failed calls leave nothing running");
}

// ---- DetectAnomalies ----

/// Day 0 of the anomaly data: Monday 2026-01-05, as seconds after 2026-01-01 (see `ts`).
const MONDAY: i64 = 4 * 86_400;
const WEEKS: i64 = 10;
/// Signups per weekday, Monday first: busy weekdays, quiet weekends.
const WEEKLY_SHAPE: [i64; 7] = [20, 22, 21, 23, 18, 8, 6];
const SPIKE_DAY: i64 = 9 * 7 + 2; // the 10th Wednesday
const DROPPED_DAY: i64 = 9 * 7 + 5; // the 10th Saturday

/// Day `d`'s count of the normal pattern: the weekly shape plus noise in [-2, 2] that cycles
/// through every value over five weeks.
fn normal_count(day: i64) -> i64 {
    let (week, weekday) = (day / 7, day % 7);
    WEEKLY_SHAPE[weekday as usize] + (week * 3 + weekday * 5) % 5 - 2
}

fn injected_count(day: i64) -> i64 {
    match day {
        SPIKE_DAY => 60,
        DROPPED_DAY => 0,
        _ => normal_count(day),
    }
}

async fn anomaly_server() -> TestServer {
    let server = TestServer::start().await;
    server.create_project("live").await;
    let mut events = Vec::new();
    for day in 0..WEEKS * 7 {
        for i in 0..injected_count(day) {
            let seconds = MONDAY + day * 86_400 + 10 * 3_600 + i * 60;
            events.push(event(&format!("s{day}-{i}"), "signup", &format!("u{day}-{i}"), seconds));
        }
    }
    assert!(events.len() < 5_000);
    server.track("live", events).await;
    create_metric(&server, "live", count_of("signups", "signup")).await;
    server
}

fn day_range(from_day: i64, to_day: i64) -> Option<pb::TimeRange> {
    Some(pb::TimeRange { from: Some(ts(MONDAY + from_day * 86_400)), to: Some(ts(MONDAY + to_day * 86_400)) })
}

fn anomalies_request(from_day: i64, to_day: i64) -> pb::DetectAnomaliesRequest {
    pb::DetectAnomaliesRequest {
        project: "live".into(),
        metric: Some(pb::detect_anomalies_request::Metric::MetricKey("signups".into())),
        range: day_range(from_day, to_day),
        ..Default::default()
    }
}

async fn detect(server: &TestServer, request: pb::DetectAnomaliesRequest) -> pb::DetectAnomaliesResponse {
    metrics(server).detect_anomalies(request).await.expect("detect").into_inner()
}

/// Days (relative to MONDAY) of the flagged points.
fn flagged_days(reply: &pb::DetectAnomaliesResponse) -> Vec<i64> {
    reply
        .points
        .iter()
        .filter(|p| p.is_anomaly)
        .map(|p| (p.start.as_ref().unwrap().seconds - ts(MONDAY).seconds) / 86_400)
        .collect()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spike_and_a_dropped_day_are_flagged_and_the_weekly_pattern_is_not() {
    let server = anomaly_server().await;
    // The last two weeks: their history is the 8 weeks before, same weekday.
    let reply = detect(&server, anomalies_request(56, 70)).await;
    assert_eq!(reply.points.len(), 14);
    assert_eq!((reply.season, reply.history, reply.score_threshold), (7, 8, 3.0));
    assert_eq!(flagged_days(&reply), vec![SPIKE_DAY, DROPPED_DAY]);

    let spike = &reply.points[(SPIKE_DAY - 56) as usize];
    assert_eq!(spike.value, 60.0);
    // Expected: the median of the 8 previous Wednesdays; the spike is above the band.
    let wednesdays: Vec<f64> = (1..=8).map(|k| normal_count(SPIKE_DAY - 7 * k) as f64).collect();
    assert_eq!(spike.expected, Some(median(wednesdays)));
    assert!(spike.upper.unwrap() < 60.0 && spike.score.unwrap() > 3.0);
    assert!(!spike.is_bad, "more signups is good news");

    let dropped = &reply.points[(DROPPED_DAY - 56) as usize];
    assert!(dropped.has_value && dropped.value == 0.0);
    assert!(dropped.score.unwrap() < -3.0 && dropped.lower.unwrap() > 0.0);
    assert!(dropped.is_bad, "losing a day of signups is bad for an INCREASE metric");

    for point in &reply.points {
        assert!(point.complete && point.expected.is_some());
        let (lower, upper) = (point.lower.unwrap(), point.upper.unwrap());
        assert_eq!(point.is_anomaly, point.value < lower || point.value > upper, "{point:?}");
    }

    // Week 9 alone, a normal week with the same shape: nothing is flagged.
    let normal = detect(&server, anomalies_request(56, 63)).await;
    assert_eq!(normal.points.len(), 7);
    assert_eq!(flagged_days(&normal), Vec::<i64>::new());
    // Compared with the preceding five days instead of past weekdays, the weekend looks like
    // an outage: the season is what makes the weekly pattern normal.
    let naive =
        detect(&server, pb::DetectAnomaliesRequest { season: 1, history: 5, ..anomalies_request(56, 63) }).await;
    assert_eq!(flagged_days(&naive), vec![61, 62]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anomalies_work_for_other_kinds_granularities_and_sensitivities() {
    let server = anomaly_server().await;
    // The spike still stands out at LOW sensitivity (|score| > 4); an explicit threshold wins.
    let low = pb::DetectAnomaliesRequest {
        sensitivity: pb::AnomalySensitivity::Low as i32,
        ..anomalies_request(SPIKE_DAY, SPIKE_DAY + 1)
    };
    let reply = detect(&server, low).await;
    assert_eq!((reply.score_threshold, flagged_days(&reply)), (4.0, vec![SPIKE_DAY]));
    let huge = pb::DetectAnomaliesRequest { score_threshold: 1e9, ..anomalies_request(56, 70) };
    assert!(flagged_days(&detect(&server, huge).await).is_empty());

    // An inline UNIQUE_USERS metric (one event per user here, so equal to the count).
    let inline = pb::MetricDefinition { kind: pb::MetricKind::UniqueUsers as i32, ..count_of("", "signup") };
    let request = pb::DetectAnomaliesRequest {
        metric: Some(pb::detect_anomalies_request::Metric::Definition(inline)),
        ..anomalies_request(56, 70)
    };
    let reply = detect(&server, request).await;
    assert_eq!((flagged_days(&reply), reply.metric_version), (vec![SPIKE_DAY, DROPPED_DAY], 0));

    // Weekly buckets compare with the preceding weeks; history before the data does not count.
    let weekly = pb::DetectAnomaliesRequest {
        granularity: pb::Granularity::Week as i32,
        history: 4,
        ..anomalies_request(0, 70)
    };
    let reply = detect(&server, weekly).await;
    assert_eq!((reply.points.len(), reply.season), (10, 1));
    let expectations: Vec<bool> = reply.points.iter().map(|p| p.expected.is_some()).collect();
    assert_eq!(expectations, [[false; 3].as_slice(), [true; 7].as_slice()].concat());

    // Hourly buckets work too (same hour of the week by default).
    let hourly = pb::DetectAnomaliesRequest {
        granularity: pb::Granularity::Hour as i32,
        ..anomalies_request(SPIKE_DAY, SPIKE_DAY + 1)
    };
    let reply = detect(&server, hourly).await;
    assert_eq!((reply.points.len(), reply.season), (24, 168));
    let ten = &reply.points[10];
    assert!(ten.is_anomaly && ten.value == 60.0, "{ten:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_anomaly_requests_name_the_field() {
    let server = anomaly_server().await;
    let base = || anomalies_request(56, 70);
    let cases: Vec<(pb::DetectAnomaliesRequest, Code, &str)> = vec![
        (
            pb::DetectAnomaliesRequest {
                metric: Some(pb::detect_anomalies_request::Metric::MetricKey("nope".into())),
                ..base()
            },
            Code::NotFound,
            "",
        ),
        (pb::DetectAnomaliesRequest { project: "nope".into(), ..base() }, Code::NotFound, ""),
        (pb::DetectAnomaliesRequest { metric: None, ..base() }, Code::InvalidArgument, "metric_key"),
        (pb::DetectAnomaliesRequest { range: None, ..base() }, Code::InvalidArgument, "range"),
        (pb::DetectAnomaliesRequest { range: day_range(5, 5), ..base() }, Code::InvalidArgument, "range"),
        (
            pb::DetectAnomaliesRequest { granularity: pb::Granularity::Total as i32, ..base() },
            Code::InvalidArgument,
            "granularity",
        ),
        (pb::DetectAnomaliesRequest { granularity: 42, ..base() }, Code::InvalidArgument, "granularity"),
        (pb::DetectAnomaliesRequest { sensitivity: 9, ..base() }, Code::InvalidArgument, "sensitivity"),
        (pb::DetectAnomaliesRequest { score_threshold: -1.0, ..base() }, Code::InvalidArgument, "score_threshold"),
        (pb::DetectAnomaliesRequest { score_threshold: f64::NAN, ..base() }, Code::InvalidArgument, "score_threshold"),
        (pb::DetectAnomaliesRequest { season: 5_000, ..base() }, Code::InvalidArgument, "season"),
        (pb::DetectAnomaliesRequest { history: 500, ..base() }, Code::InvalidArgument, "history"),
        (pb::DetectAnomaliesRequest { season: 1_000, history: 100, ..base() }, Code::InvalidArgument, "history"),
        (pb::DetectAnomaliesRequest { timezone: "Mars/Olympus".into(), ..base() }, Code::InvalidArgument, "timezone"),
        (pb::DetectAnomaliesRequest { cohort_id: "c".into(), ..base() }, Code::NotFound, ""),
        (pb::DetectAnomaliesRequest { cohort_id: "Bad Id".into(), ..base() }, Code::InvalidArgument, "cohort_id"),
        (
            pb::DetectAnomaliesRequest {
                metric: Some(pb::detect_anomalies_request::Metric::Definition(pb::MetricDefinition::default())),
                ..base()
            },
            Code::InvalidArgument,
            "metric.kind",
        ),
    ];
    for (request, code, field) in cases {
        let label = format!("{request:?}");
        let status = metrics(&server).detect_anomalies(request).await.expect_err(&label);
        assert_eq!(status.code(), code, "{label}: {status:?}");
        if !field.is_empty() {
            assert_eq!(violated_fields(&status), vec![field.to_string()], "{label}");
        }
    }
    // Nothing was changed by the failed calls.
    assert_eq!(flagged_days(&detect(&server, base()).await), vec![SPIKE_DAY, DROPPED_DAY]);
}
