//! The tracking plan and its four enforcement modes, end to end.

mod common;

use common::*;
use sextant::pb;
use tonic::Code;

fn purchase_type() -> pb::EventType {
    pb::EventType {
        name: "purchase".into(),
        description: "a completed order".into(),
        question: "how much revenue do we make?".into(),
        properties: vec![
            pb::PropertySchema {
                name: "revenue".into(),
                r#type: pb::PropertyType::Number as i32,
                required: true,
                min: Some(0.0),
                ..Default::default()
            },
            pb::PropertySchema {
                name: "currency".into(),
                r#type: pb::PropertyType::String as i32,
                allowed_values: vec!["USD".into(), "EUR".into()],
                ..Default::default()
            },
        ],
        closed: false,
        update_time: None,
    }
}

async fn set_enforcement(server: &TestServer, mode: pb::Enforcement) {
    server
        .projects()
        .update_project(pb::UpdateProjectRequest {
            project: "p".into(),
            update: Some(pb::Project { enforcement: mode as i32, ..Default::default() }),
            update_mask: vec!["enforcement".into()],
        })
        .await
        .unwrap();
}

async fn plan_server() -> TestServer {
    let server = TestServer::start().await;
    server.create_project("p").await;
    server
        .catalog()
        .upsert_event_type(pb::UpsertEventTypeRequest { project: "p".into(), event_type: Some(purchase_type()) })
        .await
        .unwrap();
    server
}

fn valid(id: &str) -> pb::Event {
    with_props(event(id, "purchase", "u1", 10), &[("revenue", num(9.5)), ("currency", text("USD"))])
}

fn violating(id: &str) -> pb::Event {
    with_props(event(id, "purchase", "u1", 11), &[("revenue", num(-1.0))])
}

fn unknown(id: &str) -> pb::Event {
    event(id, "mystery", "u1", 12)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_accepts_everything() {
    let server = plan_server().await;
    let reply = server.track("p", vec![valid("v"), violating("x"), unknown("m")]).await;
    assert_eq!((reply.accepted, reply.quarantined), (3, 0));
    assert!(reply.warnings.is_empty() && reply.rejected.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warn_accepts_and_reports_violations() {
    let server = plan_server().await;
    set_enforcement(&server, pb::Enforcement::Warn).await;
    let reply = server.track("p", vec![valid("v"), violating("x"), unknown("m")]).await;
    assert_eq!(reply.accepted, 3);
    let warnings: Vec<(u32, &str, &str)> =
        reply.warnings.iter().map(|w| (w.index, w.event_id.as_str(), w.message.as_str())).collect();
    assert_eq!(
        warnings,
        vec![
            (1, "x", "events[1]: tracking plan: properties.revenue: -1 is below the minimum 0"),
            (2, "m", "events[2]: tracking plan: name: event \"mystery\" is not in the tracking plan"),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_rejects_violating_events_only() {
    let server = plan_server().await;
    set_enforcement(&server, pb::Enforcement::Block).await;
    let reply = server.track("p", vec![valid("v"), violating("x"), unknown("m")]).await;
    assert_eq!(reply.accepted, 1);
    let rejected: Vec<(u32, &str)> = reply.rejected.iter().map(|r| (r.index, r.code.as_str())).collect();
    assert_eq!(rejected, vec![(1, "FAILED_PRECONDITION"), (2, "FAILED_PRECONDITION")]);
    let ids: Vec<String> = server.export("p").await.into_iter().map(|e| e.event_id).collect();
    assert_eq!(ids, vec!["v"]);
}

/// A quarantined event adds its property keys when a replay stores it, within
/// `--max-property-keys` like a Track call's: one past the limit stays in quarantine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_events_count_against_the_property_key_limit() {
    let server = TestServer::start_with(|c| c.max_property_keys = 3).await;
    server.create_project("p").await;
    set_enforcement(&server, pb::Enforcement::Quarantine).await;
    let keyed = |id: &str, keys: &[&str]| {
        let props: Vec<(&str, pb::Value)> = keys.iter().map(|k| (*k, num(1.0))).collect();
        with_props(event(id, "mystery", "u1", 12), &props)
    };
    // Not in the plan: quarantined, and their keys do not count yet.
    let reply = server.track("p", vec![keyed("q1", &["a", "b"]), keyed("q2", &["c", "d"]), keyed("q3", &["b"])]).await;
    assert_eq!((reply.accepted, reply.quarantined), (0, 3));

    let mut catalog = server.catalog();
    let open = pb::EventType { name: "mystery".into(), ..Default::default() };
    catalog
        .upsert_event_type(pb::UpsertEventTypeRequest { project: "p".into(), event_type: Some(open) })
        .await
        .unwrap();
    let replay = pb::ReplayQuarantinedRequest { project: "p".into(), ids: vec![] };
    let outcome = catalog.replay_quarantined(replay.clone()).await.unwrap().into_inner();
    assert_eq!((outcome.accepted, outcome.remaining, outcome.rejected), (2, 0, 1));
    let ids: Vec<String> = server.export("p").await.into_iter().map(|e| e.event_id).collect();
    assert_eq!(ids, vec!["q1", "q3"]);
    assert_eq!(server.stats("p").await.quarantined, 1, "q2 stays in quarantine");

    // The project holds 2 keys: a Track call may add one more, and then q2 still does not fit.
    let reply = server.track("p", vec![keyed("t1", &["e"]), keyed("t2", &["f"])]).await;
    assert_eq!(reply.accepted, 1);
    assert!(reply.rejected[0].message.starts_with("events[1].properties.f: a new key, and the project holds 3"));
    let outcome = catalog.replay_quarantined(replay).await.unwrap().into_inner();
    assert_eq!((outcome.accepted, outcome.rejected), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_keeps_violations_apart_until_replayed() {
    let server = plan_server().await;
    set_enforcement(&server, pb::Enforcement::Quarantine).await;
    let reply = server.track("p", vec![valid("v"), violating("x"), unknown("m")]).await;
    assert_eq!((reply.accepted, reply.quarantined), (1, 2));
    assert_eq!(server.stats("p").await.quarantined, 2);

    let listed = server
        .catalog()
        .list_quarantined(pb::ListQuarantinedRequest { project: "p".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let entries: Vec<(String, Vec<String>)> =
        listed.events.iter().map(|q| (q.event.as_ref().unwrap().event_id.clone(), q.reasons.clone())).collect();
    assert_eq!(
        entries,
        vec![
            ("x".to_string(), vec!["properties.revenue: -1 is below the minimum 0".to_string()]),
            ("m".to_string(), vec!["name: event \"mystery\" is not in the tracking plan".to_string()]),
        ]
    );

    // Nothing changed in the plan yet: both stay.
    let mut catalog = server.catalog();
    let replay = catalog
        .replay_quarantined(pb::ReplayQuarantinedRequest { project: "p".into(), ids: vec![] })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((replay.accepted, replay.remaining), (0, 2));

    // Fix the plan for "mystery" and replay: it is stored and leaves the quarantine.
    catalog
        .upsert_event_type(pb::UpsertEventTypeRequest {
            project: "p".into(),
            event_type: Some(pb::EventType { name: "mystery".into(), ..Default::default() }),
        })
        .await
        .unwrap();
    let replay = catalog
        .replay_quarantined(pb::ReplayQuarantinedRequest { project: "p".into(), ids: vec![] })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((replay.accepted, replay.duplicates, replay.remaining), (1, 0, 1));
    let ids: Vec<String> = server.export("p").await.into_iter().map(|e| e.event_id).collect();
    assert_eq!(ids, vec!["v", "m"]);

    // Unknown quarantine ids are NOT_FOUND / INVALID_ARGUMENT.
    let status = catalog
        .replay_quarantined(pb::ReplayQuarantinedRequest { project: "p".into(), ids: vec!["999".into()] })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = catalog
        .replay_quarantined(pb::ReplayQuarantinedRequest { project: "p".into(), ids: vec!["abc".into()] })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), vec!["ids[0]"]);

    // The quarantine survives a restart.
    let server = server.restart().await;
    assert_eq!(server.stats("p").await.quarantined, 1);
    assert_eq!(server.stats("p").await.events, 2);
}

/// SPEC §1: a repeated event id is a duplicate before the plan judges its payload; the first
/// write wins, and an event kept in quarantine counts as received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_acknowledged_before_the_plan_judges_them() {
    let server = plan_server().await;
    set_enforcement(&server, pb::Enforcement::Block).await;
    let reply = server.track("p", vec![valid("v")]).await;
    assert_eq!((reply.accepted, reply.duplicates), (1, 0));
    // The stored id resent with a payload the plan rejects: a duplicate, not a rejection.
    let reply = server.track("p", vec![violating("v")]).await;
    assert_eq!((reply.accepted, reply.duplicates, reply.rejected.len()), (0, 1, 0));
    // Inside one batch: the first occurrence is judged, the repeat is a duplicate.
    let reply = server.track("p", vec![valid("w"), violating("w")]).await;
    assert_eq!((reply.accepted, reply.duplicates, reply.rejected.len()), (1, 1, 0));

    set_enforcement(&server, pb::Enforcement::Quarantine).await;
    let reply = server.track("p", vec![violating("v"), unknown("w")]).await;
    assert_eq!((reply.accepted, reply.duplicates, reply.quarantined), (0, 2, 0));
    let reply = server.track("p", vec![violating("q"), violating("q"), unknown("r")]).await;
    assert_eq!((reply.accepted, reply.duplicates, reply.quarantined), (0, 1, 2));
    // A quarantined id resent, valid or not, is a duplicate too.
    let reply = server.track("p", vec![valid("q"), unknown("r")]).await;
    assert_eq!((reply.accepted, reply.duplicates, reply.quarantined), (0, 2, 0));

    let server = server.restart().await;
    let reply = server.track("p", vec![violating("w"), valid("q")]).await;
    assert_eq!((reply.accepted, reply.duplicates, reply.quarantined), (0, 2, 0), "after a restart");
    // The first writes won: v and w stored with their valid payloads, q and r quarantined.
    let stored: Vec<(String, f64)> = server
        .export("p")
        .await
        .into_iter()
        .map(|e| {
            let revenue = match e.properties.get("revenue").and_then(|v| v.kind.clone()) {
                Some(pb::value::Kind::NumberValue(n)) => n,
                other => panic!("{other:?}"),
            };
            (e.event_id, revenue)
        })
        .collect();
    assert_eq!(stored, vec![("v".to_string(), 9.5), ("w".to_string(), 9.5)]);
    let stats = server.stats("p").await;
    assert_eq!((stats.events, stats.quarantined), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_type_crud_and_validation() {
    let server = plan_server().await;
    let mut catalog = server.catalog();
    let got = server.get_event_type("p", "purchase").await;
    assert_eq!(got.properties, purchase_type().properties);
    assert_eq!(got.question, "how much revenue do we make?");
    for name in ["a", "b", "c"] {
        catalog
            .upsert_event_type(pb::UpsertEventTypeRequest {
                project: "p".into(),
                event_type: Some(pb::EventType { name: name.into(), ..Default::default() }),
            })
            .await
            .unwrap();
    }
    let page = catalog
        .list_event_types(pb::ListEventTypesRequest { project: "p".into(), page_size: 3, page_token: String::new() })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = page.event_types.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, vec!["a", "b", "c"]);
    let rest = catalog
        .list_event_types(pb::ListEventTypesRequest {
            project: "p".into(),
            page_size: 3,
            page_token: page.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.event_types.len(), 1);
    assert!(rest.next_page_token.is_empty());

    catalog.delete_event_type(pb::DeleteEventTypeRequest { project: "p".into(), name: "a".into() }).await.unwrap();
    let status = catalog
        .delete_event_type(pb::DeleteEventTypeRequest { project: "p".into(), name: "a".into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    // Bad schemas name the field and change nothing.
    let bad = |props: Vec<pb::PropertySchema>| pb::UpsertEventTypeRequest {
        project: "p".into(),
        event_type: Some(pb::EventType { name: "purchase".into(), properties: props, ..Default::default() }),
    };
    let cases = vec![
        (vec![pb::PropertySchema { name: "".into(), ..Default::default() }], "event_type.properties[0].name"),
        (
            vec![
                pb::PropertySchema { name: "x".into(), ..Default::default() },
                pb::PropertySchema { name: "x".into(), ..Default::default() },
            ],
            "event_type.properties[1].name",
        ),
        (
            vec![pb::PropertySchema {
                name: "x".into(),
                r#type: pb::PropertyType::Number as i32,
                min: Some(5.0),
                max: Some(1.0),
                ..Default::default()
            }],
            "event_type.properties[0].min",
        ),
        (
            vec![pb::PropertySchema { name: "x".into(), r#type: 42, ..Default::default() }],
            "event_type.properties[0].type",
        ),
    ];
    for (props, field) in cases {
        let status = catalog.upsert_event_type(bad(props)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(violated_fields(&status), vec![field]);
    }
    let unchanged = server.get_event_type("p", "purchase").await;
    assert_eq!(unchanged.properties, purchase_type().properties);
}
