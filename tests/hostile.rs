//! Hostile inputs: each gets its expected status (or per-item rejection) and leaves stored data
//! unchanged. The server must answer every one of them and stay up.

mod common;

use std::collections::BTreeMap;

use bytes::{Buf, BufMut};
use common::{BOOTSTRAP, TestServer, bearer, event, num, text, ts};
use sextant::pb;
use tonic::Code;
use tonic::codec::{DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Sends and receives raw protobuf bytes, to send what no generated client would.
#[derive(Default, Clone)]
struct RawCodec;
struct Raw;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

async fn raw_unary(server: &TestServer, path: &'static str, body: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(server.channel.clone()).max_encoding_message_size(64 << 20);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(path);
    grpc.unary(tonic::Request::new(body), path, RawCodec).await.map(|r| r.into_inner())
}

/// What stored data looks like: stats (minus the file size) and every event.
async fn snapshot(server: &TestServer) -> (pb::GetProjectStatsResponse, Vec<pb::Event>, Option<pb::User>) {
    let mut stats = server.stats("p").await;
    stats.bytes_on_disk = 0;
    (stats, server.export("p").await, server.get_user("p", "u1").await.ok())
}

/// One hostile request and what it must get.
enum Expect {
    /// The call fails with this code.
    Status(Code),
    /// The call succeeds, and every item is rejected with this code.
    Rejected(&'static str),
}

fn long(n: usize) -> String {
    "x".repeat(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_get_their_status_and_change_nothing() {
    let server = TestServer::start().await;
    server.create_project("p").await;
    server.track("p", vec![event("e1", "view", "u1", 0), event("e2", "buy", "u2", 60)]).await;
    let metric = pb::MetricDefinition {
        key: "views".into(),
        kind: pb::MetricKind::Count as i32,
        selector: Some(pb::EventSelector { event: "view".into(), filters: vec![] }),
        ..Default::default()
    };
    server
        .metrics()
        .create_metric(pb::CreateMetricRequest { project: "p".into(), metric: Some(metric) })
        .await
        .unwrap();
    let manual =
        pb::MetricDefinition { key: "spend".into(), kind: pb::MetricKind::Manual as i32, ..Default::default() };
    server
        .metrics()
        .create_metric(pb::CreateMetricRequest { project: "p".into(), metric: Some(manual) })
        .await
        .unwrap();
    let before = snapshot(&server).await;

    let track = |events: Vec<pb::Event>| pb::TrackRequest { project: "p".into(), events, sequence: 0 };
    let props = |n: usize| (0..n).map(|i| (format!("p{i}"), num(i as f64))).collect::<BTreeMap<_, _>>();
    let stamp = |seconds: i64, nanos: i32| pb::Event {
        timestamp: Some(prost_types::Timestamp { seconds, nanos }),
        ..event("t", "view", "u1", 0)
    };
    let cases: Vec<(&str, pb::TrackRequest, Expect)> = vec![
        ("1 MiB event name", track(vec![event("h1", &long(1 << 20), "u1", 0)]), Expect::Rejected("INVALID_ARGUMENT")),
        (
            "9 MiB string property",
            track(vec![common::with_props(event("h2", "view", "u1", 0), &[("big", text(&long(9 << 20)))])]),
            Expect::Status(Code::ResourceExhausted),
        ),
        (
            "NaN property",
            track(vec![common::with_props(event("h3", "view", "u1", 0), &[("x", num(f64::NAN))])]),
            Expect::Rejected("INVALID_ARGUMENT"),
        ),
        (
            "+inf property",
            track(vec![common::with_props(event("h4", "view", "u1", 0), &[("x", num(f64::INFINITY))])]),
            Expect::Rejected("INVALID_ARGUMENT"),
        ),
        (
            "-inf property",
            track(vec![common::with_props(event("h5", "view", "u1", 0), &[("x", num(f64::NEG_INFINITY))])]),
            Expect::Rejected("INVALID_ARGUMENT"),
        ),
        (
            "10^5 properties",
            track(vec![pb::Event { properties: props(100_000), ..event("h6", "view", "u1", 0) }]),
            Expect::Rejected("INVALID_ARGUMENT"),
        ),
        (
            "10^5 events",
            track((0..100_000).map(|i| event(&format!("n{i}"), "view", "u1", 0)).collect()),
            Expect::Status(Code::ResourceExhausted),
        ),
        ("timestamp i64::MAX", track(vec![stamp(i64::MAX, 0)]), Expect::Rejected("INVALID_ARGUMENT")),
        ("timestamp i64::MIN", track(vec![stamp(i64::MIN, 0)]), Expect::Rejected("INVALID_ARGUMENT")),
        ("timestamp before year 1", track(vec![stamp(-62_135_596_801, 0)]), Expect::Rejected("INVALID_ARGUMENT")),
        ("negative nanos", track(vec![stamp(0, -1)]), Expect::Rejected("INVALID_ARGUMENT")),
        ("year 9999", track(vec![stamp(253_402_300_799, 0)]), Expect::Rejected("INVALID_ARGUMENT")),
        (
            "event id of 10^5 bytes",
            track(vec![event(&long(100_000), "view", "u1", 0)]),
            Expect::Rejected("INVALID_ARGUMENT"),
        ),
        ("NUL in user id", track(vec![event("h7", "view", "u\0x", 0)]), Expect::Rejected("INVALID_ARGUMENT")),
        ("no user at all", track(vec![event("h8", "view", "", 0)]), Expect::Rejected("INVALID_ARGUMENT")),
        (
            "property key of 10^5 chars",
            track(vec![common::with_props(event("h9", "view", "u1", 0), &[(&long(100_000), num(1.0))])]),
            Expect::Rejected("INVALID_ARGUMENT"),
        ),
        (
            "unknown project",
            pb::TrackRequest { project: "nope".into(), ..track(vec![event("h10", "view", "u1", 0)]) },
            Expect::Status(Code::NotFound),
        ),
        (
            "project id of 10^6 chars",
            pb::TrackRequest { project: long(1_000_000), ..track(vec![event("h11", "view", "u1", 0)]) },
            Expect::Status(Code::InvalidArgument),
        ),
    ];
    for (what, request, expect) in cases {
        let reply = server.ingest().track(request).await;
        match (expect, reply) {
            (Expect::Status(code), Err(status)) => assert_eq!(status.code(), code, "{what}: {status:?}"),
            (Expect::Rejected(code), Ok(reply)) => {
                let reply = reply.into_inner();
                assert_eq!(reply.accepted, 0, "{what}");
                assert!(
                    !reply.rejected.is_empty() && reply.rejected.iter().all(|r| r.code == code),
                    "{what}: {reply:?}"
                );
            }
            (_, other) => panic!("{what}: unexpected {:?}", other.map(|r| r.into_inner().rejected)),
        }
        assert_eq!(snapshot(&server).await, before, "{what} changed stored data");
    }

    // Users and manual values.
    let traits = |n: usize| props(n);
    let identify = |users| pb::IdentifyRequest { project: "p".into(), users };
    let reply = server
        .ingest()
        .identify(identify(vec![
            pb::UserUpdate { user_id: "u1".into(), set: traits(100_000), ..Default::default() },
            pb::UserUpdate {
                user_id: "u1".into(),
                set: [("x".to_string(), num(f64::NAN))].into(),
                ..Default::default()
            },
            pb::UserUpdate { user_id: long(100_000), ..Default::default() },
            pb::UserUpdate { user_id: "u1".into(), unset: vec![long(100_000)], ..Default::default() },
        ]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((reply.updated, reply.rejected.len()), (0, 4), "{reply:?}");
    let values = vec![
        pb::ManualValue { timestamp: Some(ts(0)), value: f64::NAN, ..Default::default() },
        pb::ManualValue { timestamp: Some(ts(0)), value: f64::INFINITY, ..Default::default() },
        pb::ManualValue {
            timestamp: Some(prost_types::Timestamp { seconds: i64::MAX, nanos: 0 }),
            value: 1.0,
            ..Default::default()
        },
        pb::ManualValue { timestamp: None, value: 1.0, ..Default::default() },
    ];
    let request = pb::RecordValuesRequest { project: "p".into(), metric_key: "spend".into(), values };
    let reply = server.metrics().record_values(request).await.unwrap().into_inner();
    assert_eq!((reply.recorded, reply.rejected.len()), (0, 4), "{reply:?}");
    assert_eq!(snapshot(&server).await, before, "users and manual values");

    // Queries and definitions.
    let mut metrics = server.metrics();
    let query = |range: pb::TimeRange, granularity: pb::Granularity| pb::QueryMetricRequest {
        project: "p".into(),
        metric: Some(pb::query_metric_request::Metric::MetricKey("views".into())),
        range: Some(range),
        granularity: granularity as i32,
        ..Default::default()
    };
    let year1 = prost_types::Timestamp { seconds: -62_135_596_800, nanos: 0 };
    let year9999 = prost_types::Timestamp { seconds: 253_402_300_799, nanos: 0 };
    let huge = pb::TimeRange { from: Some(year1), to: Some(year9999) };
    let status = metrics.query_metric(query(huge, pb::Granularity::Hour)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "10^4 years by the hour: {status:?}");
    let reply = metrics.query_metric(query(huge, pb::Granularity::Total)).await.unwrap().into_inner();
    assert_eq!(reply.series[0].points[0].value, 1.0, "one bucket over all time");
    let beyond = pb::TimeRange { from: Some(prost_types::Timestamp { seconds: i64::MIN, nanos: 0 }), to: None };
    assert_eq!(
        metrics.query_metric(query(beyond, pb::Granularity::Day)).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let nested = format!("{}views{}", "(".repeat(100_000), ")".repeat(100_000));
    for formula in [nested, long(1 << 20), "views / / views".into(), "\u{0}".into()] {
        let metric = pb::MetricDefinition {
            key: "f".into(),
            kind: pb::MetricKind::Formula as i32,
            formula,
            ..Default::default()
        };
        let status = metrics.create_metric(pb::CreateMetricRequest { project: "p".into(), metric: Some(metric) }).await;
        assert_eq!(status.unwrap_err().code(), Code::InvalidArgument);
    }
    let filter = pb::Filter {
        property: "x".into(),
        op: pb::FilterOp::In as i32,
        values: (0..100_000).map(|i| num(i as f64)).collect(),
    };
    let mut request = query(pb::TimeRange { from: Some(ts(0)), to: Some(ts(86_400)) }, pb::Granularity::Day);
    request.filters = vec![filter];
    metrics.query_metric(request).await.expect("a long IN list is fine");
    let nan_filter = pb::Filter { property: "x".into(), op: pb::FilterOp::Gt as i32, values: vec![num(f64::NAN)] };
    let mut request = query(pb::TimeRange { from: Some(ts(0)), to: Some(ts(86_400)) }, pb::Granularity::Day);
    request.filters = vec![nan_filter];
    assert_eq!(metrics.query_metric(request).await.unwrap_err().code(), Code::InvalidArgument);
    let summaries = pb::AnalyzeSummariesRequest {
        summary_type: pb::SummaryType::Mean as i32,
        variants: vec![
            pb::VariantSummary { key: "a".into(), users: 10, sum: f64::NAN, sum_squares: 1.0, ..Default::default() },
            pb::VariantSummary {
                key: "b".into(),
                users: 10,
                sum: f64::INFINITY,
                sum_squares: 1.0,
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let status = server.experiments().analyze_summaries(summaries).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let page = pb::ListUserEventsRequest {
        project: "p".into(),
        user_id: "u1".into(),
        page_size: u32::MAX,
        page_token: long(100_000),
        ..Default::default()
    };
    assert_eq!(server.users().list_user_events(page).await.unwrap_err().code(), Code::InvalidArgument);

    // Bytes no generated client sends: undecodable protobuf is INTERNAL (gRPC's code for a
    // parse failure), never a crash.
    let mut groups = vec![0x0B_u8; 100_000]; // field 1, start group, nested 10^5 deep
    groups.extend(std::iter::repeat_n(0x0C_u8, 100_000));
    let invalid_utf8 = vec![0x0A, 0x02, 0xFF, 0xFE]; // project = <invalid UTF-8>
    let truncated = vec![0x0A, 0x10, b'p'];
    let huge_varint = vec![0x18; 1].into_iter().chain(std::iter::repeat_n(0xFF, 20)).collect::<Vec<u8>>();
    for (what, body) in [
        ("deep groups", groups),
        ("invalid UTF-8", invalid_utf8),
        ("truncated", truncated),
        ("overlong varint", huge_varint),
    ] {
        for path in [
            "/sextant.v1.IngestService/Track",
            "/sextant.v1.MetricService/QueryMetric",
            "/sextant.v1.ProjectService/CreateProject",
        ] {
            let status = raw_unary(&server, path, body.clone()).await.unwrap_err();
            assert_eq!(status.code(), Code::Internal, "{what} to {path}: {status:?}");
        }
    }
    assert_eq!(snapshot(&server).await, before, "queries, definitions and raw bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_metadata_is_unauthenticated() {
    use tower::ServiceBuilder;
    let server = TestServer::start_secure(|_| {}).await;
    server.create_project("p").await;
    let huge = format!("Bearer {}", "k".repeat(8 * 1024));
    let values: Vec<http::HeaderValue> = vec![
        http::HeaderValue::from_bytes(b"Bearer \xff\xfe\xfd").unwrap(),
        http::HeaderValue::from_bytes(b"\xc3\x28").unwrap(),
        http::HeaderValue::from_static("Basic dXNlcjpwYXNz"),
        http::HeaderValue::from_static("Bearer"),
        http::HeaderValue::from_static("Bearer sxk_"),
        http::HeaderValue::from_static("Bearer sxk__"),
        http::HeaderValue::from_static("Bearer sxk_zz_zz"),
        http::HeaderValue::from_str(&huge).unwrap(),
    ];
    for value in values {
        let channel = ServiceBuilder::new()
            .map_request(move |mut request: http::Request<tonic::body::Body>| {
                request.headers_mut().insert(http::header::AUTHORIZATION, value.clone());
                request
            })
            .service(server.channel.clone());
        let mut client = pb::project_service_client::ProjectServiceClient::new(channel);
        let status = client.get_project_stats(pb::GetProjectStatsRequest { project: "p".into() }).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    let stats = server
        .projects()
        .get_project_stats(bearer(pb::GetProjectStatsRequest { project: "p".into() }, BOOTSTRAP))
        .await;
    assert_eq!(stats.unwrap().into_inner().events, 0);
}
