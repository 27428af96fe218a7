//! Ingestion end to end over gRPC: round trips, dedupe, validation, limits, streams.

mod common;

use common::*;
use sextant::pb;
use tokio_stream::StreamExt;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_round_trip_keeps_every_field() {
    let server = TestServer::start().await;
    server.create_project("shop").await;
    let purchase = with_props(
        event("e1", "purchase", "u1", 3600),
        &[
            ("revenue", num(42.5)),
            ("currency", text("EUR")),
            ("gift", pb::Value { kind: Some(pb::value::Kind::BoolValue(true)) }),
            ("shipped_at", pb::Value { kind: Some(pb::value::Kind::TimestampValue(ts(7200))) }),
            ("coupon", pb::Value { kind: Some(pb::value::Kind::NullValue(0)) }),
        ],
    );
    let anonymous = pb::Event { user_id: String::new(), anonymous_id: "anon-1".into(), ..event("e2", "view", "", 10) };
    let reply = server.track("shop", vec![purchase.clone(), anonymous.clone()]).await;
    assert_eq!((reply.accepted, reply.duplicates, reply.quarantined), (2, 0, 0));
    assert!(reply.rejected.is_empty() && reply.warnings.is_empty());

    // Read your writes: the reply means visible. Export orders by time.
    assert_eq!(server.export("shop").await, vec![anonymous, purchase.clone()]);
    let timeline = server
        .users()
        .list_user_events(pb::ListUserEventsRequest {
            project: "shop".into(),
            user_id: "u1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(timeline.events, vec![purchase]);

    let stats = server.stats("shop").await;
    assert_eq!(stats.events, 2);
    assert_eq!(stats.users, 1, "anonymous ids are not users");
    assert_eq!(
        stats.events_by_name,
        vec![
            pb::EventNameCount { name: "purchase".into(), events: 1 },
            pb::EventNameCount { name: "view".into(), events: 1 }
        ]
    );
    assert_eq!(stats.first_event_time, Some(ts(10)));
    assert_eq!(stats.last_event_time, Some(ts(3600)));
    assert!(stats.bytes_on_disk > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_event_id_and_timestamp_are_filled_by_the_server() {
    let server = TestServer::start().await;
    server.create_project("p").await;
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let bare = pb::Event { name: "ping".into(), user_id: "u".into(), ..Default::default() };
    let reply = server.track("p", vec![bare.clone(), bare]).await;
    assert_eq!(reply.accepted, 2, "two events without ids are two events");
    let events = server.export("p").await;
    assert_eq!(events.len(), 2);
    for e in &events {
        let id = uuid::Uuid::parse_str(&e.event_id).expect("a uuid");
        assert_eq!(id.get_version_num(), 7);
        let seconds = e.timestamp.unwrap().seconds;
        assert!(seconds >= before && seconds <= before + 60, "receive time, got {seconds}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_acknowledged_but_stored_once_for_ever() {
    let server = TestServer::start().await;
    server.create_project("p").await;
    // Inside one batch: the first wins even though the payload differs.
    let first = with_props(event("dup", "signup", "u1", 0), &[("plan", text("pro"))]);
    let second = with_props(event("dup", "signup", "u1", 5), &[("plan", text("free"))]);
    let reply = server.track("p", vec![first.clone(), second.clone(), event("other", "signup", "u2", 1)]).await;
    assert_eq!((reply.accepted, reply.duplicates), (2, 1));
    // Across batches.
    let reply = server.track("p", vec![second.clone()]).await;
    assert_eq!((reply.accepted, reply.duplicates), (0, 1));
    // Across concurrent batches: 8 batches of the same 50 ids race; exactly 50 are stored.
    let batch: Vec<pb::Event> = (0..50).map(|i| event(&format!("c{i}"), "view", "u3", i)).collect();
    let mut handles = Vec::new();
    for _ in 0..8 {
        let mut client = server.ingest();
        let events = batch.clone();
        handles.push(tokio::spawn(async move {
            client.track(pb::TrackRequest { project: "p".into(), events, sequence: 0 }).await.unwrap().into_inner()
        }));
    }
    let (mut accepted, mut duplicates) = (0, 0);
    for h in handles {
        let r = h.await.unwrap();
        accepted += r.accepted;
        duplicates += r.duplicates;
    }
    assert_eq!((accepted, duplicates), (50, 350));
    // The same event id in another project is another event.
    server.create_project("q").await;
    assert_eq!(server.track("q", vec![second.clone()]).await.accepted, 1);

    let stored = server.export("p").await;
    assert_eq!(stored.len(), 52);
    assert_eq!(stored.iter().find(|e| e.event_id == "dup").unwrap(), &first);

    // And after a restart the id set is rebuilt from storage.
    let server = server.restart().await;
    let reply = server.track("p", vec![second, event("c7", "view", "u3", 7), event("new", "view", "u3", 9)]).await;
    assert_eq!((reply.accepted, reply.duplicates), (1, 2));
    assert_eq!(server.stats("p").await.events, 53);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_event_fails_alone_with_its_field_named() {
    let server = TestServer::start().await;
    server.create_project("p").await;
    let future = prost_types::Timestamp { seconds: chrono_now() + 2 * 3600, nanos: 0 };
    let big = "x".repeat(40 * 1024);
    let too_many: Vec<(String, pb::Value)> = (0..300).map(|i| (format!("p{i}"), num(i as f64))).collect();
    let events = vec![
        event("ok1", "view", "u1", 1),
        event("bad-name", "", "u1", 1),
        pb::Event { user_id: String::new(), ..event("bad-user", "view", "", 1) },
        pb::Event { timestamp: Some(future), ..event("bad-time", "view", "u1", 1) },
        with_props(event("bad-size", "view", "u1", 1), &[("blob", text(&big))]),
        pb::Event { properties: too_many.into_iter().collect(), ..event("bad-props", "view", "u1", 1) },
        with_props(event("bad-nan", "view", "u1", 1), &[("price", num(f64::NAN))]),
        event("ok2", "view", "u2", 2),
    ];
    let reply = server.track("p", events).await;
    assert_eq!(reply.accepted, 2);
    let rejected: Vec<(u32, &str, &str)> =
        reply.rejected.iter().map(|e| (e.index, e.event_id.as_str(), e.code.as_str())).collect();
    assert_eq!(
        rejected,
        vec![
            (1, "bad-name", "INVALID_ARGUMENT"),
            (2, "bad-user", "INVALID_ARGUMENT"),
            (3, "bad-time", "INVALID_ARGUMENT"),
            (4, "bad-size", "INVALID_ARGUMENT"),
            (5, "bad-props", "INVALID_ARGUMENT"),
            (6, "", "INVALID_ARGUMENT"),
        ]
    );
    let messages: Vec<&str> = reply.rejected.iter().map(|e| e.message.as_str()).collect();
    assert!(messages[0].starts_with("events[1].name: must not be empty"), "{}", messages[0]);
    assert!(messages[1].starts_with("events[2].user_id: user_id or anonymous_id is required"), "{}", messages[1]);
    assert!(messages[2].starts_with("events[3].timestamp: more than 3600 s in the future"), "{}", messages[2]);
    assert!(messages[3].starts_with("events[4].event: "), "{}", messages[3]);
    assert!(messages[4].starts_with("events[5].properties: 300 properties, at most 256"), "{}", messages[4]);
    assert!(messages[5].starts_with("events[6].properties.price: number must be finite"), "{}", messages[5]);
    let ids: Vec<String> = server.export("p").await.into_iter().map(|e| e.event_id).collect();
    assert_eq!(ids, vec!["ok1", "ok2"]);
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_limits_fail_the_whole_request_with_resource_exhausted() {
    let server = TestServer::start_with(|c| {
        c.max_batch_events = 10;
        c.max_message_bytes = 64 * 1024;
    })
    .await;
    server.create_project("p").await;
    let eleven: Vec<pb::Event> = (0..11).map(|i| event(&format!("e{i}"), "view", "u", i)).collect();
    let status =
        server.ingest().track(pb::TrackRequest { project: "p".into(), events: eleven, sequence: 0 }).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("at most 10"), "{}", status.message());
    assert_eq!(violated_fields(&status), Vec::<String>::new());
    {
        use tonic_types::StatusExt;
        assert!(status.get_details_retry_info().is_some(), "retry hint attached");
    }

    // A message over the decode limit: the transport refuses it before it is decoded.
    let fat = vec![with_props(event("fat", "view", "u", 1), &[("blob", text(&"y".repeat(100 * 1024)))])];
    let status =
        server.ingest().track(pb::TrackRequest { project: "p".into(), events: fat, sequence: 0 }).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(server.stats("p").await.events, 0, "nothing stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_project_and_bad_ids_are_clear_errors() {
    let server = TestServer::start().await;
    let status = server
        .ingest()
        .track(pb::TrackRequest { project: "nope".into(), events: vec![event("e", "x", "u", 0)], sequence: 0 })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("nope"));
    let status = server
        .ingest()
        .track(pb::TrackRequest { project: "Bad Id".into(), events: vec![], sequence: 0 })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), vec!["project"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_stream_acks_every_sequence_in_order() {
    let server = TestServer::start_with(|c| c.stream_inflight = 3).await;
    server.create_project("p").await;
    let batches: Vec<pb::TrackRequest> = (1..=40u64)
        .map(|seq| pb::TrackRequest {
            project: "p".into(),
            sequence: seq * 10,
            // Batch 7 repeats batch 6's ids: acked as duplicates.
            events: (0..25)
                .map(|i| {
                    let b = if seq == 7 { 6 } else { seq };
                    event(&format!("b{b}-{i}"), "view", &format!("u{i}"), (seq * 100 + i) as i64)
                })
                .collect(),
        })
        .collect();
    let mut acks = server.ingest().track_stream(tokio_stream::iter(batches)).await.unwrap().into_inner();
    let mut seen = Vec::new();
    while let Some(ack) = acks.next().await {
        let ack = ack.unwrap();
        seen.push((ack.sequence, ack.accepted, ack.duplicates));
    }
    let expected: Vec<(u64, u64, u64)> =
        (1..=40u64).map(|seq| if seq == 7 { (70, 0, 25) } else { (seq * 10, 25, 0) }).collect();
    assert_eq!(seen, expected);
    assert_eq!(server.stats("p").await.events, 39 * 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_stream_fails_on_an_unknown_project_after_acking_earlier_batches() {
    let server = TestServer::start().await;
    server.create_project("p").await;
    let batches = vec![
        pb::TrackRequest { project: "p".into(), sequence: 1, events: vec![event("a", "x", "u", 0)] },
        pb::TrackRequest { project: "missing".into(), sequence: 2, events: vec![event("b", "x", "u", 0)] },
        pb::TrackRequest { project: "p".into(), sequence: 3, events: vec![event("c", "x", "u", 0)] },
    ];
    let mut acks = server.ingest().track_stream(tokio_stream::iter(batches)).await.unwrap().into_inner();
    assert_eq!(acks.next().await.unwrap().unwrap().sequence, 1);
    let status = acks.next().await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(acks.next().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_alias_and_get_user() {
    let server = TestServer::start().await;
    server.create_project("p").await;
    let update = |user: &str, set: &[(&str, pb::Value)], once: &[(&str, pb::Value)], unset: &[&str]| pb::UserUpdate {
        user_id: user.into(),
        set: set.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        set_once: once.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        unset: unset.iter().map(|s| s.to_string()).collect(),
    };
    let reply = server
        .ingest()
        .identify(pb::IdentifyRequest {
            project: "p".into(),
            users: vec![
                update("u1", &[("plan", text("free")), ("country", text("DE"))], &[("channel", text("email"))], &[]),
                update("", &[("plan", text("pro"))], &[], &[]),
                update("u1", &[("plan", text("pro"))], &[("channel", text("social"))], &["country"]),
                update("u2", &[("score", num(f64::INFINITY))], &[], &[]),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.updated, 2);
    let rejected: Vec<(u32, String)> = reply.rejected.iter().map(|e| (e.index, e.message.clone())).collect();
    assert_eq!(
        rejected,
        vec![
            (1, "users[1].user_id: must not be empty".to_string()),
            (3, "users[3].set.score: number must be finite".to_string())
        ]
    );

    server.track("p", vec![pb::Event { anonymous_id: "anon".into(), ..event("a1", "view", "", 5) }]).await;
    server.track("p", vec![event("a2", "signup", "u1", 50)]).await;
    server
        .ingest()
        .alias(pb::AliasRequest { project: "p".into(), anonymous_id: "anon".into(), user_id: "u1".into() })
        .await
        .unwrap();
    let user = server.get_user("p", "u1").await.unwrap();
    assert_eq!(user.traits.len(), 2);
    assert_eq!(user.traits["plan"], text("pro"));
    assert_eq!(user.traits["channel"], text("email"), "set_once keeps the first value");
    assert_eq!(user.anonymous_ids, vec!["anon"]);
    assert_eq!(user.events, 2, "the aliased anonymous event counts for the user");
    assert_eq!((user.first_seen, user.last_seen), (Some(ts(5)), Some(ts(50))));

    let status = server.get_user("p", "ghost").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = server
        .ingest()
        .alias(pb::AliasRequest { project: "p".into(), anonymous_id: "".into(), user_id: "u1".into() })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), vec!["anonymous_id"]);

    // Traits and aliases survive a restart.
    let server = server.restart().await;
    let again = server.get_user("p", "u1").await.unwrap();
    assert_eq!(again, user);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_pages_and_export_filters() {
    let server = TestServer::start().await;
    server.create_project("p").await;
    let mut events: Vec<pb::Event> = (0..25).map(|i| event(&format!("u1-{i}"), "view", "u1", 100 - i)).collect();
    events.push(event("u2-0", "buy", "u2", 50));
    events.push(event("u1-buy", "buy", "u1", 60));
    server.track("p", events).await;

    let mut users = server.users();
    let mut token = String::new();
    let mut times = Vec::new();
    loop {
        let page = users
            .list_user_events(pb::ListUserEventsRequest {
                project: "p".into(),
                user_id: "u1".into(),
                page_size: 10,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.events.len() <= 10);
        times.extend(page.events.iter().map(|e| e.timestamp.unwrap().seconds - ts(0).seconds));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut expected: Vec<i64> = (76..=100).collect();
    expected.push(60);
    expected.sort();
    assert_eq!(times, expected);

    let request = pb::ExportEventsRequest {
        project: "p".into(),
        range: Some(pb::TimeRange { from: Some(ts(50)), to: Some(ts(80)) }),
        names: vec!["buy".into()],
        user_id: String::new(),
    };
    let mut stream = users.export_events(request).await.unwrap().into_inner();
    let mut ids = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        ids.extend(chunk.events.into_iter().map(|e| e.event_id));
    }
    assert_eq!(ids, vec!["u2-0", "u1-buy"]);

    let status = users
        .list_user_events(pb::ListUserEventsRequest {
            project: "p".into(),
            user_id: "u1".into(),
            page_token: "not-a-token".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), vec!["page_token"]);
}

/// Stands in for a long query on `project`: holds its read lock until the sender is used.
fn hold_project(server: &TestServer, project: &str) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let engine = server.running.as_ref().unwrap().engine.clone();
    let project = project.to_owned();
    let (locked, lock_taken) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let entry = engine.project(&project).unwrap();
        let _guard = entry.read();
        locked.send(()).unwrap();
        released.recv().unwrap();
    });
    lock_taken.recv().unwrap();
    (release, holder)
}

/// Tracks one event (`id`, "view" by u1) into `project` on a task of its own.
fn spawn_track(
    server: &TestServer,
    project: &str,
    id: &str,
) -> tokio::task::JoinHandle<Result<tonic::Response<pb::TrackResponse>, tonic::Status>> {
    let mut ingest = server.ingest();
    let request =
        pb::TrackRequest { project: project.into(), events: vec![event(id, "view", "u1", 10)], ..Default::default() };
    tokio::spawn(async move { ingest.track(request).await })
}

/// `ack`, failing the test if it does not come: an ack that waits for a query never comes
/// while the test holds the query's lock.
async fn acked<T>(ack: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(30), ack).await.expect("an ack waited for a query")
}

/// `call`'s answer, failing the test if it waits for the query the test holds.
async fn answered<T>(call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(30), call).await.expect("a definitions read waited for a query")
}

/// A query holding a project's lock holds up no ack, its own project's included: the writer
/// queues the busy project's batches on it and acks them; a read that starts after an ack
/// applies the queue first, so it sees the event (it waits for the query to end to do so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_holds_up_no_ack_and_a_read_after_an_ack_sees_the_event() {
    let server = TestServer::start().await;
    server.create_project("busy").await;
    server.create_project("free").await;
    let (release, holder) = hold_project(&server, "busy");

    let busy = acked(spawn_track(&server, "busy", "b1")).await.unwrap().unwrap().into_inner();
    assert_eq!(busy.accepted, 1);
    // Once a batch is queued the applier waits for the lock; later batches still get in.
    assert_eq!(acked(server.track("busy", vec![event("b2", "view", "u1", 20)])).await.accepted, 1);
    let resent = acked(server.track("busy", vec![event("b1", "view", "u1", 10)])).await;
    assert_eq!((resent.accepted, resent.duplicates), (0, 1));
    assert_eq!(acked(server.track("free", vec![event("f1", "view", "u1", 10)])).await.accepted, 1);

    // A read started now sees both acked events, once the query lets go.
    let reader = {
        let mut users = server.users();
        tokio::spawn(async move {
            let request = pb::ExportEventsRequest { project: "busy".into(), ..Default::default() };
            let mut stream = users.export_events(request).await.unwrap().into_inner();
            let mut ids = Vec::new();
            while let Some(chunk) = stream.message().await.unwrap() {
                ids.extend(chunk.events.into_iter().map(|e| e.event_id));
            }
            ids
        })
    };
    // Let the read reach the lock first (no assertion rests on this).
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    release.send(()).unwrap();
    holder.join().unwrap();
    let ids = reader.await.unwrap();
    assert_eq!(ids, ["b1", "b2"]);
    assert_eq!(server.export("free").await.len(), 1);
}

/// Reads of a project's settings and definitions do not wait for a query on it, even with
/// acked writes queued behind that query: the queue never changes them, so they need not apply
/// it. The events themselves still wait (see above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_and_definitions_are_read_past_a_query_with_writes_queued() {
    let server = TestServer::start().await;
    server.create_project("busy").await;
    let metric = pb::MetricDefinition {
        key: "views".into(),
        kind: pb::MetricKind::Count as i32,
        selector: Some(pb::EventSelector { event: "view".into(), ..Default::default() }),
        ..Default::default()
    };
    let request = pb::CreateMetricRequest { project: "busy".into(), metric: Some(metric) };
    server.metrics().create_metric(request).await.unwrap();
    let view = pb::EventType { name: "view".into(), ..Default::default() };
    let request = pb::UpsertEventTypeRequest { project: "busy".into(), event_type: Some(view) };
    server.catalog().upsert_event_type(request).await.unwrap();
    let variant = |key: &str| pb::Variant { key: key.into(), weight: 0.5, ..Default::default() };
    let experiment = pb::Experiment {
        key: "checkout".into(),
        variants: vec![variant("control"), variant("treatment")],
        primary_metric_keys: vec!["views".into()],
        ..Default::default()
    };
    let request = pb::CreateExperimentRequest { project: "busy".into(), experiment: Some(experiment) };
    server.experiments().create_experiment(request).await.unwrap();
    let (release, holder) = hold_project(&server, "busy");
    assert_eq!(acked(spawn_track(&server, "busy", "b1")).await.unwrap().unwrap().into_inner().accepted, 1);
    assert_eq!(acked(spawn_track(&server, "busy", "b2")).await.unwrap().unwrap().into_inner().accepted, 1);

    // Each would wait for the query if it applied the queued write first.
    let project = || "busy".to_owned();
    let got = answered(server.projects().get_project(pb::GetProjectRequest { project: project() })).await;
    assert_eq!(got.unwrap().into_inner().project.unwrap().id, "busy");
    let listed = answered(server.projects().list_projects(pb::ListProjectsRequest::default())).await;
    assert_eq!(listed.unwrap().into_inner().projects.len(), 1);
    let request = pb::GetMetricRequest { project: project(), key: "views".into(), version: 0 };
    let got = answered(server.metrics().get_metric(request)).await.unwrap().into_inner();
    assert_eq!(got.metric.unwrap().key, "views");
    let request = pb::ListMetricsRequest { project: project(), ..Default::default() };
    assert_eq!(answered(server.metrics().list_metrics(request)).await.unwrap().into_inner().metrics.len(), 1);
    let request = pb::ListEventTypesRequest { project: project(), ..Default::default() };
    let types = answered(server.catalog().list_event_types(request)).await.unwrap().into_inner().event_types;
    assert_eq!(types.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["view"]);
    let request = pb::ListCohortsRequest { project: project(), ..Default::default() };
    assert!(answered(server.cohorts().list_cohorts(request)).await.unwrap().into_inner().cohorts.is_empty());
    let request = pb::ListGoalsRequest { project: project(), ..Default::default() };
    assert!(answered(server.goals().list_goals(request)).await.unwrap().into_inner().goals.is_empty());
    let request = pb::ListExperimentsRequest { project: project(), ..Default::default() };
    assert_eq!(
        answered(server.experiments().list_experiments(request)).await.unwrap().into_inner().experiments.len(),
        1
    );
    // Assignment, which product code calls on its own request path, reads only definitions.
    let request = pb::AssignRequest {
        project: project(),
        experiment_key: "checkout".into(),
        user_id: "u1".into(),
        ..Default::default()
    };
    let assigned = answered(server.experiments().assign(request.clone())).await.unwrap().into_inner();
    assert!(["control", "treatment"].contains(&assigned.variant.as_str()), "{assigned:?}");
    // With its exposure logged too: the exposure is queued and acked like any write.
    let logged = pb::AssignRequest { log_exposure: true, ..request };
    assert_eq!(answered(server.experiments().assign(logged)).await.unwrap().into_inner(), assigned);
    let request = pb::GetExperimentRequest { project: project(), experiment_key: "checkout".into() };
    let got = answered(server.experiments().get_experiment(request)).await.unwrap().into_inner();
    assert_eq!(got.experiment.unwrap().variants.len(), 2);
    let request = pb::GetEventTypeRequest { project: project(), name: "view".into() };
    let got = answered(server.catalog().get_event_type(request)).await.unwrap().into_inner();
    assert_eq!(got.event_type.unwrap().name, "view");
    let request = pb::ListHoldoutsRequest { project: project(), ..Default::default() };
    assert!(answered(server.experiments().list_holdouts(request)).await.unwrap().into_inner().holdouts.is_empty());

    // Definitions change without waiting for the query either, and reads see each change at
    // once: a new metric version, a started experiment, a renamed project.
    let users_who_viewed = pb::MetricDefinition {
        key: "views".into(),
        kind: pb::MetricKind::UniqueUsers as i32,
        selector: Some(pb::EventSelector { event: "view".into(), ..Default::default() }),
        ..Default::default()
    };
    let request = pb::UpdateMetricRequest { project: project(), metric: Some(users_who_viewed) };
    let updated = answered(server.metrics().update_metric(request)).await.unwrap().into_inner();
    assert_eq!(updated.metric.unwrap().version, 2);
    let request = pb::GetMetricRequest { project: project(), key: "views".into(), version: 0 };
    let got = answered(server.metrics().get_metric(request)).await.unwrap().into_inner();
    assert_eq!(got.metric.unwrap().kind, pb::MetricKind::UniqueUsers as i32);
    let request = pb::StartExperimentRequest { project: project(), experiment_key: "checkout".into() };
    answered(server.experiments().start_experiment(request)).await.unwrap();
    let request = pb::GetExperimentRequest { project: project(), experiment_key: "checkout".into() };
    let got = answered(server.experiments().get_experiment(request)).await.unwrap().into_inner();
    assert_eq!(got.experiment.unwrap().status, pb::ExperimentStatus::Running as i32);
    let request = pb::UpdateProjectRequest {
        project: project(),
        update: Some(pb::Project { name: "Busy shop".into(), ..Default::default() }),
        update_mask: vec!["name".into()],
    };
    answered(server.projects().update_project(request)).await.unwrap();
    let got = answered(server.projects().get_project(pb::GetProjectRequest { project: project() })).await;
    assert_eq!(got.unwrap().into_inner().project.unwrap().name, "Busy shop");

    release.send(()).unwrap();
    holder.join().unwrap();
    let names: Vec<String> = server.export("busy").await.into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["view", "view", "$exposure"]);
    // A query after the changes reads them: the stored metric now counts users (u1 once, where
    // its first version counted both views).
    let query = pb::QueryMetricRequest {
        project: project(),
        metric: Some(pb::query_metric_request::Metric::MetricKey("views".into())),
        range: Some(pb::TimeRange { from: Some(ts(0)), to: Some(ts(86_400)) }),
        granularity: pb::Granularity::Total as i32,
        ..Default::default()
    };
    let reply = server.metrics().query_metric(query).await.unwrap().into_inner();
    assert_eq!((reply.metric_version, reply.series[0].total), (2, 1.0));
}

/// A busy project's queue keeps 16 full batches in memory; past them, batches are spilled to
/// a scratch file and still acked at once. A read after the query sees every acked event once,
/// in the order acked, a retry of a spilled one included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_memory_bound_a_busy_projects_writes_spill_and_are_still_acked() {
    let server = TestServer::start_with(|config| config.max_batch_events = 2).await;
    server.create_project("busy").await;
    let (release, holder) = hold_project(&server, "busy");
    let batch = |n: i64| vec![event(&format!("b{n}a"), "view", "u1", n), event(&format!("b{n}b"), "view", "u1", n)];
    // 16 batches of 2 fill the 32 events kept in memory; the next 24 are spilled.
    for n in 0..40 {
        assert_eq!(acked(server.track("busy", batch(n))).await.accepted, 2, "batch {n}");
    }
    let retry = acked(server.track("busy", batch(30))).await;
    assert_eq!((retry.accepted, retry.duplicates), (0, 2), "a spilled batch is a duplicate");
    release.send(()).unwrap();
    holder.join().unwrap();
    let ids: Vec<String> = server.export("busy").await.into_iter().map(|e| e.event_id).collect();
    let sent: Vec<String> = (0..40).flat_map(|n| [format!("b{n}a"), format!("b{n}b")]).collect();
    assert_eq!(ids, sent);
}

/// A batch queued on its project while the applier waits behind another busy project is
/// acked, and so is a retry of it, as a duplicate: any read that starts after those acks sees
/// the first copy, since the read applies the queue itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_answered_as_a_duplicate_finds_the_first_copy_visible() {
    let server = TestServer::start().await;
    for project in ["a", "b"] {
        server.create_project(project).await;
    }
    // Stand-ins for long queries on "a" and "b".
    let (release_a, holder_a) = hold_project(&server, "a");
    let (release_b, holder_b) = hold_project(&server, "b");
    assert_eq!(acked(spawn_track(&server, "a", "a1")).await.unwrap().unwrap().into_inner().accepted, 1);
    assert_eq!(acked(spawn_track(&server, "b", "b1")).await.unwrap().unwrap().into_inner().accepted, 1);
    // "b" is free again, but the applier still waits for "a": only a read can apply b1 now.
    release_b.send(()).unwrap();
    holder_b.join().unwrap();
    let retried = acked(spawn_track(&server, "b", "b1")).await.unwrap().unwrap().into_inner();
    assert_eq!((retried.accepted, retried.duplicates), (0, 1));
    let ids: Vec<String> = server.export("b").await.into_iter().map(|e| e.event_id).collect();
    assert_eq!(ids, ["b1"]);
    release_a.send(()).unwrap();
    holder_a.join().unwrap();
    assert_eq!(server.export("a").await.len(), 1);
}

/// A checkpoint asked for while a query holds a project with a batch waiting is put off: other
/// projects' acks go on meanwhile, and the checkpoint is written once the query ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_waits_for_a_busy_project_without_holding_up_acks() {
    let server = TestServer::start().await;
    server.create_project("busy").await;
    server.create_project("free").await;
    let (release, holder) = hold_project(&server, "busy");
    let busy_track = spawn_track(&server, "busy", "b1");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let engine = server.running.as_ref().unwrap().engine.clone();
    let checkpoint = tokio::spawn(async move { engine.checkpoint().await });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let patience = std::time::Duration::from_secs(30);
    for i in 0..3 {
        let free =
            tokio::time::timeout(patience, server.track("free", vec![event(&format!("f{i}"), "view", "u1", 10)]))
                .await
                .expect("an ack waited for a checkpoint that waited for another project's query");
        assert_eq!(free.accepted, 1);
    }
    assert!(!checkpoint.is_finished(), "the checkpoint was written while a batch waited for its project");
    release.send(()).unwrap();
    holder.join().unwrap();
    assert_eq!(busy_track.await.unwrap().unwrap().into_inner().accepted, 1);
    // The next group (or ask) writes it.
    assert_eq!(server.track("free", vec![event("f9", "view", "u1", 10)]).await.accepted, 1);
    tokio::time::timeout(patience, checkpoint).await.expect("the checkpoint was written").unwrap().unwrap();
    assert_eq!(server.export("busy").await.len(), 1);
    assert_eq!(server.export("free").await.len(), 4);
}

/// The embedded engine keeps at most `--max-property-keys` distinct event property keys (and
/// trait names) per project: an event or user update that would add one more is rejected on
/// its own with RESOURCE_EXHAUSTED naming the key, while the rest of its batch, and every later
/// event of known keys, is stored. The count survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_property_keys_past_the_projects_limit_are_rejected_per_item() {
    let server = TestServer::start_with(|c| c.max_property_keys = 3).await;
    server.create_project("p").await;
    let keyed = |id: &str, keys: &[&str]| {
        let props: Vec<(&str, pb::Value)> = keys.iter().map(|k| (*k, num(1.0))).collect();
        with_props(event(id, "view", "u1", 1), &props)
    };
    let reply = server
        .track(
            "p",
            vec![
                keyed("e1", &["a", "b"]),
                keyed("e2", &["c", "d"]),
                keyed("e3", &["a", "c"]),
                keyed("e4", &["c", "b", "a"]),
            ],
        )
        .await;
    assert_eq!(reply.accepted, 3);
    assert_eq!(
        coded(&reply.rejected),
        vec![(
            1,
            "RESOURCE_EXHAUSTED",
            "events[1].properties.c: a new key, and the project holds 2 distinct property keys, at most 3 \
             (--max-property-keys)"
        )]
    );

    let server = server.restart_with(|c| c.max_property_keys = 3).await;
    let reply = server.track("p", vec![keyed("e5", &["z"]), keyed("e6", &["b"])]).await;
    assert_eq!(reply.accepted, 1);
    assert_eq!(reply.rejected.len(), 1);
    assert!(reply.rejected[0].message.starts_with("events[0].properties.z: a new key, and the project holds 3"));
    let exported = server.export("p").await;
    let stored: Vec<(String, Vec<String>)> =
        exported.into_iter().map(|e| (e.event_id, e.properties.into_keys().collect())).collect();
    let keys = |k: &[&str]| k.iter().map(|k| k.to_string()).collect::<Vec<_>>();
    assert_eq!(
        stored,
        vec![
            ("e1".into(), keys(&["a", "b"])),
            ("e3".into(), keys(&["a", "c"])),
            ("e4".into(), keys(&["a", "b", "c"])),
            ("e6".into(), keys(&["b"]))
        ]
    );

    // Trait names have a limit of their own.
    let update = |user: &str, set: &[&str], once: &[&str]| pb::UserUpdate {
        user_id: user.into(),
        set: set.iter().map(|k| (k.to_string(), text("x"))).collect(),
        set_once: once.iter().map(|k| (k.to_string(), text("y"))).collect(),
        unset: vec![],
    };
    let reply = server
        .ingest()
        .identify(pb::IdentifyRequest {
            project: "p".into(),
            users: vec![
                update("u1", &["plan", "country"], &[]),
                update("u2", &["plan"], &["tier", "extra"]),
                update("u3", &["tier"], &["plan"]),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.updated, 2);
    assert_eq!(
        coded(&reply.rejected),
        vec![(
            1,
            "RESOURCE_EXHAUSTED",
            "users[1].set_once.extra: a new key, and the project holds 2 distinct trait names, at most 3 \
             (--max-property-keys)"
        )]
    );
    assert!(server.get_user("p", "u2").await.ok().is_none_or(|user| user.traits.is_empty()), "u2 was not updated");
    let u3 = server.get_user("p", "u3").await.unwrap();
    assert_eq!(u3.traits.into_keys().collect::<Vec<_>>(), vec!["plan", "tier"], "the third name fits");
}

/// Rejected items as (index, code, message).
fn coded(rejected: &[pb::EventError]) -> Vec<(u32, &str, &str)> {
    rejected.iter().map(|e| (e.index, e.code.as_str(), e.message.as_str())).collect()
}
