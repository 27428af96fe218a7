//! Windows in a query's time zone: rolling windows, to-date periods and previous-period
//! comparisons across both DST changes of Europe/Berlin and in Asia/Tokyo (no DST), each
//! value recounted from the local dates of the events sent.

mod common;

use chrono::{Datelike, NaiveDate};
use common::*;
use sextant::pb;
use sextant::pb::metric_service_client::MetricServiceClient;

const ZONES: [&str; 2] = ["Europe/Berlin", "Asia/Tokyo"];

fn date(month: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, month, day).unwrap()
}

/// Hours the zone is ahead of UTC at a local wall-clock time (never a skipped or repeated
/// one here): Berlin is +2 from 2026-03-29 02:00 to 2026-10-25 03:00 local (in 2025 from
/// 03-30 to 10-26), +1 otherwise.
fn offset_hours(zone: &str, day: NaiveDate, hour: i64) -> i64 {
    let summer = |(from, to): ((u32, u32), (u32, u32))| {
        let on = |(m, d): (u32, u32)| NaiveDate::from_ymd_opt(day.year(), m, d).unwrap();
        (day, hour) >= (on(from), 2) && (day, hour) < (on(to), 3)
    };
    match (zone, day.year()) {
        ("Asia/Tokyo", _) => 9,
        ("Europe/Berlin", 2026) if summer(((3, 29), (10, 25))) => 2,
        ("Europe/Berlin", 2025) if summer(((3, 30), (10, 26))) => 2,
        ("Europe/Berlin", 2025 | 2026) => 1,
        other => panic!("no offsets for {other:?}"),
    }
}

/// Seconds since the epoch of a local time.
fn local(zone: &str, day: NaiveDate, hour: i64, minute: i64) -> i64 {
    let days = (day - NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()).num_days();
    days * 86_400 + hour * 3_600 + minute * 60 - offset_hours(zone, day, hour) * 3_600
}

fn at(seconds: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds, nanos: 0 }
}

/// Two events a day around each DST change, at 00:30 and 23:30 local, each by its own
/// user: a window that is off by the hour a DST day gains or loses gains or loses one.
/// Returns the events and the local date of each.
fn events(zone: &str) -> (Vec<pb::Event>, Vec<NaiveDate>) {
    let days = (date(3, 16).iter_days().take_while(|d| *d <= date(4, 8)))
        .chain(date(10, 12).iter_days().take_while(|d| *d <= date(11, 3)));
    let mut sent = Vec::new();
    let mut dates = Vec::new();
    for day in days {
        for (hour, minute) in [(0, 30), (23, 30)] {
            let id = format!("{day}-{hour}");
            sent.push(pb::Event {
                event_id: id.clone(),
                name: "visit".into(),
                user_id: id,
                timestamp: Some(at(local(zone, day, hour, minute))),
                ..Default::default()
            });
            dates.push(day);
        }
    }
    (sent, dates)
}

fn definition(kind: pb::MetricKind) -> pb::MetricDefinition {
    pb::MetricDefinition {
        key: "visits".into(),
        kind: kind as i32,
        selector: Some(pb::EventSelector { event: "visit".into(), filters: vec![] }),
        ..Default::default()
    }
}

fn request(
    zone: &str,
    metric: pb::MetricDefinition,
    from: NaiveDate,
    to: NaiveDate,
    granularity: pb::Granularity,
) -> pb::QueryMetricRequest {
    pb::QueryMetricRequest {
        project: "p".into(),
        metric: Some(pb::query_metric_request::Metric::Definition(metric)),
        range: Some(pb::TimeRange { from: Some(at(local(zone, from, 0, 0))), to: Some(at(local(zone, to, 0, 0))) }),
        granularity: granularity as i32,
        timezone: zone.into(),
        ..Default::default()
    }
}

async fn query(server: &TestServer, request: pb::QueryMetricRequest) -> pb::QueryMetricResponse {
    MetricServiceClient::new(server.channel.clone()).query_metric(request).await.unwrap().into_inner()
}

fn values(series: &pb::Series) -> Vec<f64> {
    series.points.iter().map(|p| p.value).collect()
}

/// Events with a local date in `[from, to)`.
fn recount(dates: &[NaiveDate], from: NaiveDate, to: NaiveDate) -> f64 {
    dates.iter().filter(|d| **d >= from && **d < to).count() as f64
}

async fn server_with_events() -> (TestServer, Vec<Vec<NaiveDate>>) {
    let server = TestServer::start().await;
    server.create_project("p").await;
    let mut dates = Vec::new();
    for (i, zone) in ZONES.iter().enumerate() {
        // Both zones' events in one project, told apart by name and id.
        let (mut sent, local_dates) = events(zone);
        for event in &mut sent {
            event.name = format!("visit{i}");
            event.event_id = format!("{i}-{}", event.event_id);
            event.user_id = format!("{i}-{}", event.user_id);
        }
        assert_eq!(server.track("p", sent).await.accepted, local_dates.len() as u64);
        dates.push(local_dates);
    }
    (server, dates)
}

fn named(mut metric: pb::MetricDefinition, zone: usize) -> pb::MetricDefinition {
    metric.selector = Some(pb::EventSelector { event: format!("visit{zone}"), filters: vec![] });
    metric
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_windows_cover_local_calendar_days_across_both_dst_changes() {
    let (server, dates) = server_with_events().await;
    let seven_days = Some(prost_types::Duration { seconds: 7 * 86_400, nanos: 0 });
    for (z, zone) in ZONES.iter().enumerate() {
        for kind in [pb::MetricKind::Count, pb::MetricKind::UniqueUsers] {
            let metric = named(pb::MetricDefinition { rolling_window: seven_days, ..definition(kind) }, z);
            // Daily buckets across the spring change (2026-03-29) and the autumn one (10-25).
            for (from, to) in [(date(3, 26), date(4, 5)), (date(10, 22), date(11, 1))] {
                let reply = query(&server, request(zone, metric.clone(), from, to, pb::Granularity::Day)).await;
                // Bucket D covers the local days D − 6 ..= D.
                let expected: Vec<f64> = from
                    .iter_days()
                    .take_while(|d| *d < to)
                    .map(|d| recount(&dates[z], d - chrono::Days::new(6), d.succ_opt().unwrap()))
                    .collect();
                assert!(expected.iter().all(|&n| n == 14.0), "two events on each of 7 days: {expected:?}");
                assert_eq!(values(&reply.series[0]), expected, "{zone} {kind:?} from {from}");
                let starts: Vec<i64> = reply.series[0].points.iter().map(|p| p.start.unwrap().seconds).collect();
                let local_midnights: Vec<i64> =
                    from.iter_days().take_while(|d| *d < to).map(|d| local(zone, d, 0, 0)).collect();
                assert_eq!(starts, local_midnights, "{zone}: buckets start at local midnight");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_date_starts_with_the_period_of_the_buckets_last_day() {
    let (server, dates) = server_with_events().await;
    for (z, zone) in ZONES.iter().enumerate() {
        let metric =
            named(pb::MetricDefinition { to_date: pb::ToDate::Month as i32, ..definition(pb::MetricKind::Count) }, z);
        // ISO weeks from Monday 2026-03-23: the second one (Mar 30 – Apr 5) ends in April, so
        // its month-to-date value covers April 1–5 only.
        let (from, to) = (date(3, 23), date(4, 6));
        let reply = query(&server, request(zone, metric, from, to, pb::Granularity::Week)).await;
        let expected: Vec<f64> = [date(3, 30), date(4, 6)]
            .iter()
            .map(|&end| {
                let last = end.pred_opt().unwrap();
                recount(&dates[z], date(last.month(), 1), end)
            })
            .collect();
        assert_eq!(expected, vec![28.0, 10.0]);
        assert_eq!(values(&reply.series[0]), expected, "{zone}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previous_period_is_the_same_number_of_local_days_before() {
    let (server, dates) = server_with_events().await;
    for (z, zone) in ZONES.iter().enumerate() {
        // A week right after each change, compared with the week before it (which holds the
        // change, so it is 167 or 169 hours long in Berlin).
        for (from, to) in [(date(3, 30), date(4, 6)), (date(10, 26), date(11, 2))] {
            let mut request =
                request(zone, named(definition(pb::MetricKind::Count), z), from, to, pb::Granularity::Day);
            request.compare = pb::Compare::PreviousPeriod as i32;
            let reply = query(&server, request).await;
            let previous: Vec<NaiveDate> = (1..=7).map(|i| from - chrono::Days::new(8 - i)).collect();
            let starts: Vec<i64> = reply.comparison[0].points.iter().map(|p| p.start.unwrap().seconds).collect();
            assert_eq!(starts, previous.iter().map(|&d| local(zone, d, 0, 0)).collect::<Vec<_>>(), "{zone} {from}");
            let expected: Vec<f64> = previous.iter().map(|&d| recount(&dates[z], d, d.succ_opt().unwrap())).collect();
            assert_eq!(values(&reply.comparison[0]), expected, "{zone} {from}");
            assert_eq!(expected, vec![2.0; 7]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previous_year_of_iso_weeks_is_52_weeks_back() {
    let (server, _) = server_with_events().await;
    for (z, zone) in ZONES.iter().enumerate() {
        let metric = named(definition(pb::MetricKind::Count), z);
        let mut request = request(zone, metric, date(3, 30), date(4, 13), pb::Granularity::Week);
        request.compare = pb::Compare::PreviousYear as i32;
        let reply = query(&server, request).await;
        // Mondays 364 days earlier: 2025-03-31 and 2025-04-07 (a calendar year back from
        // Monday 2026-03-30 is a Sunday).
        let mondays = [NaiveDate::from_ymd_opt(2025, 3, 31).unwrap(), NaiveDate::from_ymd_opt(2025, 4, 7).unwrap()];
        let starts: Vec<i64> = reply.comparison[0].points.iter().map(|p| p.start.unwrap().seconds).collect();
        assert_eq!(starts, mondays.iter().map(|&d| local(zone, d, 0, 0)).collect::<Vec<_>>(), "{zone}");
    }
}
