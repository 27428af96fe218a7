//! DeleteUser, data retention, and backup / restore.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::{BOOTSTRAP, TestServer, bearer, definition, event, text, ts};
use sextant::pb;
use tonic::Code;

/// (total views, unique viewers) over all of 2026-01.
async fn views(server: &TestServer, project: &str) -> (f64, f64) {
    let mut values = Vec::new();
    for key in ["views", "viewers"] {
        let request = pb::QueryMetricRequest {
            project: project.into(),
            metric: Some(pb::query_metric_request::Metric::MetricKey(key.into())),
            range: Some(pb::TimeRange { from: Some(ts(0)), to: Some(ts(31 * 86_400)) }),
            granularity: pb::Granularity::Total as i32,
            ..Default::default()
        };
        let reply = server.metrics().query_metric(request).await.unwrap().into_inner();
        values.push(reply.series[0].points[0].value);
    }
    (values[0], values[1])
}

async fn create_metrics(server: &TestServer, project: &str) {
    for metric in
        [definition("views", pb::MetricKind::Count, "view"), definition("viewers", pb::MetricKind::UniqueUsers, "view")]
    {
        let request = pb::CreateMetricRequest { project: project.into(), metric: Some(metric) };
        server.metrics().create_metric(request).await.unwrap();
    }
}

fn anonymous(id: &str, anonymous_id: &str, seconds: i64) -> pb::Event {
    pb::Event { anonymous_id: anonymous_id.into(), ..event(id, "view", "", seconds) }
}

/// A user's timeline (event ids), or None when ListUserEvents answers NOT_FOUND.
async fn list_user_events(server: &TestServer, user: &str) -> Option<Vec<String>> {
    let request = pb::ListUserEventsRequest { project: "p".into(), user_id: user.into(), ..Default::default() };
    match server.users().list_user_events(request).await {
        Ok(reply) => Some(reply.into_inner().events.into_iter().map(|e| e.event_id).collect()),
        Err(status) if status.code() == Code::NotFound => None,
        Err(status) => panic!("{status:?}"),
    }
}

async fn export_ids(server: &TestServer, user: &str) -> Vec<String> {
    let request = pb::ExportEventsRequest { project: "p".into(), user_id: user.into(), ..Default::default() };
    let mut stream = server.users().export_events(request).await.unwrap().into_inner();
    let mut ids = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        ids.extend(chunk.events.into_iter().map(|e| e.event_id));
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_user_erases_it_from_every_query_also_after_restart() {
    let server = TestServer::start().await;
    server.create_project("p").await;
    create_metrics(&server, "p").await;
    let deleted_events = vec![
        event("u1-a", "view", "u1", 10),
        event("u1-b", "view", "u1", 20),
        pb::Event { anonymous_id: "anon-1".into(), ..event("u1-c", "view", "u1", 30) },
        anonymous("anon-1-a", "anon-1", 5),
        anonymous("anon-1-b", "anon-1", 40),
    ];
    let kept_events =
        vec![event("u2-a", "view", "u2", 15), event("u2-b", "view", "u2", 25), anonymous("anon-2-a", "anon-2", 1)];
    server.track("p", deleted_events.clone()).await;
    server.track("p", kept_events.clone()).await;
    let mut traits = BTreeMap::new();
    traits.insert("plan".to_string(), text("pro"));
    let users = vec![pb::UserUpdate { user_id: "u1".into(), set: traits.clone(), ..Default::default() }];
    server.ingest().identify(pb::IdentifyRequest { project: "p".into(), users }).await.unwrap();
    let users = vec![pb::UserUpdate { user_id: "u2".into(), set: traits, ..Default::default() }];
    server.ingest().identify(pb::IdentifyRequest { project: "p".into(), users }).await.unwrap();
    server
        .ingest()
        .alias(pb::AliasRequest { project: "p".into(), anonymous_id: "anon-1".into(), user_id: "u1".into() })
        .await
        .unwrap();
    assert_eq!(server.get_user("p", "u1").await.unwrap().events, 5);
    assert_eq!(views(&server, "p").await, (8.0, 3.0));
    // Identified users with events or traits: u1 and u2 (anonymous ids are not users).
    assert_eq!(server.stats("p").await.users, 2);

    let reply = server
        .users()
        .delete_user(pb::DeleteUserRequest { project: "p".into(), user_id: "u1".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.events_deleted, 5);

    let kept_ids: Vec<String> = {
        let mut ids: Vec<(i64, String)> =
            kept_events.iter().map(|e| (e.timestamp.unwrap().seconds, e.event_id.clone())).collect();
        ids.sort();
        ids.into_iter().map(|(_, id)| id).collect()
    };
    let mut server = server;
    for round in ["before restart", "after restart"] {
        let missing = server.get_user("p", "u1").await.unwrap_err();
        assert_eq!(missing.code(), Code::NotFound, "{round}");
        assert_eq!(list_user_events(&server, "u1").await, None, "{round}: a deleted user is not found");
        assert!(export_ids(&server, "u1").await.is_empty(), "{round}");
        assert_eq!(export_ids(&server, "").await, kept_ids, "{round}");
        assert_eq!(views(&server, "p").await, (3.0, 2.0), "{round}: u2 and anon-2 remain");
        assert_eq!(server.stats("p").await.events, 3, "{round}");
        assert_eq!(server.stats("p").await.users, 1, "{round}: only u2 is left");
        let u2 = server.get_user("p", "u2").await.unwrap();
        assert_eq!((u2.events, u2.traits.len()), (2, 1), "{round}: others untouched");
        // The anonymous id is no longer linked to anyone.
        assert_eq!(list_user_events(&server, "anon-1").await, None, "{round}: an anonymous id is no user");
        // Replaying the erased events is still deduplicated.
        let replay = server.track("p", deleted_events.clone()).await;
        assert_eq!((replay.accepted, replay.duplicates), (0, 5), "{round}");
        if round == "before restart" {
            server = server.restart().await;
        }
    }
    // The user may come back with new events; deleting twice is harmless.
    assert_eq!(server.track("p", vec![event("u1-new", "view", "u1", 50)]).await.accepted, 1);
    assert_eq!(server.get_user("p", "u1").await.unwrap().events, 1);
    assert!(server.get_user("p", "u1").await.unwrap().traits.is_empty());
    assert_eq!(server.stats("p").await.users, 2, "u1 is back");
    for _ in 0..2 {
        server.users().delete_user(pb::DeleteUserRequest { project: "p".into(), user_id: "u1".into() }).await.unwrap();
    }
    let server = server.restart().await;
    assert_eq!(server.get_user("p", "u1").await.unwrap_err().code(), Code::NotFound);
    assert_eq!(server.stats("p").await.events, 3);
    assert_eq!(server.stats("p").await.users, 1);
    let invalid =
        server.users().delete_user(pb::DeleteUserRequest { project: "p".into(), user_id: String::new() }).await;
    assert_eq!(common::violated_fields(&invalid.unwrap_err()), vec!["user_id"]);
}

/// ListUserEvents finds a user exactly when GetUser does, on either engine: with events of
/// their own or of an aliased anonymous id, or with traits; not when the only trace is an
/// alias from an anonymous id without events, nor once deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_user_events_finds_a_user_exactly_when_get_user_does() {
    let server = TestServer::start().await;
    server.create_project("p").await;
    server.track("p", vec![event("own-1", "view", "own", 10), anonymous("via-1", "anon-with-events", 20)]).await;
    let alias = |anonymous_id: &str, user_id: &str| pb::AliasRequest {
        project: "p".into(),
        anonymous_id: anonymous_id.into(),
        user_id: user_id.into(),
    };
    server.ingest().alias(alias("anon-with-events", "via-alias")).await.unwrap();
    server.ingest().alias(alias("anon-without-events", "alias-only")).await.unwrap();
    let mut traits = BTreeMap::new();
    traits.insert("plan".to_string(), text("pro"));
    let users = vec![pb::UserUpdate { user_id: "traits-only".into(), set: traits, ..Default::default() }];
    server.ingest().identify(pb::IdentifyRequest { project: "p".into(), users }).await.unwrap();
    server.track("p", vec![event("gone-1", "view", "gone", 30)]).await;
    server.users().delete_user(pb::DeleteUserRequest { project: "p".into(), user_id: "gone".into() }).await.unwrap();

    let expected: [(&str, Option<Vec<&str>>); 6] = [
        ("own", Some(vec!["own-1"])),
        ("via-alias", Some(vec!["via-1"])),
        ("traits-only", Some(vec![])),
        ("alias-only", None),
        ("gone", None),
        ("never-seen", None),
    ];
    let mut server = server;
    for round in ["before restart", "after restart"] {
        for (user, events) in &expected {
            let events = events.as_ref().map(|ids| ids.iter().map(|id| id.to_string()).collect::<Vec<_>>());
            assert_eq!(list_user_events(&server, user).await, events, "{round}: {user}");
            let found = server.get_user("p", user).await.map(|_| ()).map_err(|status| status.code());
            assert_eq!(found.is_ok(), events.is_some(), "{round}: GetUser of {user} agrees ({found:?})");
        }
        // A user found, with no events in the range asked, gets an empty page.
        let request = pb::ListUserEventsRequest {
            project: "p".into(),
            user_id: "own".into(),
            range: Some(pb::TimeRange { from: Some(ts(100)), to: Some(ts(200)) }),
            ..Default::default()
        };
        assert!(server.users().list_user_events(request).await.unwrap().into_inner().events.is_empty(), "{round}");
        if round == "before restart" {
            server = server.restart().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_old_events_and_nothing_newer() {
    let server = TestServer::start_with(|c| c.retention_interval_secs = 1).await;
    server.create_project("p").await;
    server.create_project("keep").await;
    let now = sextant::core::model::now_micros() / 1_000_000;
    let day = 86_400;
    let at = |id: &str, seconds_ago: i64| pb::Event {
        timestamp: Some(prost_types::Timestamp { seconds: now - seconds_ago, nanos: 0 }),
        ..event(id, "view", "u1", 0)
    };
    let events = vec![
        at("old-1", 30 * day),
        at("old-2", 10 * day),
        at("edge-old", 5 * day + 60),
        at("edge-new", 5 * day - 60),
        at("new", 60),
    ];
    server.track("p", events.clone()).await;
    server.track("keep", events.clone()).await;
    let update = pb::Project { retention_days: 5, ..Default::default() };
    let request = pb::UpdateProjectRequest {
        project: "p".into(),
        update: Some(update),
        update_mask: vec!["retention_days".into()],
    };
    server.projects().update_project(request).await.unwrap();

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.stats("p").await.events != 2 {
        assert!(std::time::Instant::now() < deadline, "retention job did not run");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let server = server.restart().await;
    for _ in 0..2 {
        assert_eq!(export_ids(&server, "").await, vec!["edge-new".to_string(), "new".to_string()]);
        let keep = pb::ExportEventsRequest { project: "keep".into(), ..Default::default() };
        let mut stream = server.users().export_events(keep).await.unwrap().into_inner();
        let mut kept = 0;
        while let Some(chunk) = stream.message().await.unwrap() {
            kept += chunk.events.len();
        }
        assert_eq!(kept, 5, "a project without retention keeps everything");
        // A late replay stores nothing: the kept events are duplicates, the expired ones are
        // refused as past the retention (so no expired id needs keeping).
        let replay = server.track("p", events.clone()).await;
        assert_eq!((replay.accepted, replay.duplicates), (0, 2));
        let refused: Vec<&str> = replay.rejected.iter().map(|r| r.event_id.as_str()).collect();
        assert_eq!(refused, vec!["old-1", "old-2", "edge-old"]);
        assert!(replay.rejected.iter().all(|r| r.message.contains("retention")), "{:?}", replay.rejected);
    }
}

/// Every event id of a project, with how often it is stored.
async fn stored(server: &TestServer, project: &str, key: &str) -> HashMap<String, usize> {
    let request = bearer(pb::ExportEventsRequest { project: project.into(), ..Default::default() }, key);
    let mut stream = server.users().export_events(request).await.unwrap().into_inner();
    let mut ids = HashMap::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        for e in chunk.events {
            *ids.entry(e.event_id).or_default() += 1;
        }
    }
    ids
}

async fn backup(server: &TestServer, out: &std::path::Path, key: &str) -> sextant::cli::backup::BackupReport {
    let args = sextant::cli::backup::BackupArgs {
        client: sextant::cli::load::ClientArgs {
            addr: server.running.as_ref().unwrap().addr.to_string(),
            api_key: Some(key.into()),
            ca_cert: None,
        },
        out: out.to_path_buf(),
    };
    sextant::cli::backup::run(&args).await.expect("backup")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_while_ingesting_restores_into_a_server_that_answers_the_same() {
    let server = TestServer::start_secure(|_| {}).await;
    server.create_project("p").await;
    let key = server
        .projects()
        .create_api_key(bearer(
            pb::CreateApiKeyRequest { project: "p".into(), role: pb::Role::Admin as i32, ..Default::default() },
            BOOTSTRAP,
        ))
        .await
        .unwrap()
        .into_inner()
        .secret;
    for metric in
        [definition("views", pb::MetricKind::Count, "view"), definition("viewers", pb::MetricKind::UniqueUsers, "view")]
    {
        let request = bearer(pb::CreateMetricRequest { project: "p".into(), metric: Some(metric) }, &key);
        server.metrics().create_metric(request).await.unwrap();
    }
    let batch = |b: u64| pb::TrackRequest {
        project: "p".into(),
        sequence: b,
        events: (0..100)
            .map(|i| event(&format!("b{b}-{i}"), "view", &format!("u{}", i % 37), (b * 100 + i) as i64))
            .collect(),
    };
    let track = |b: u64| {
        let mut client = server.ingest();
        let request = bearer(batch(b), &key);
        async move { client.track(request).await.unwrap() }
    };
    for b in 0..20 {
        track(b).await;
    }

    // Back up while another client keeps ingesting.
    let temp = tempfile::tempdir().unwrap();
    let writer = {
        let mut client = server.ingest();
        let key = key.clone();
        tokio::spawn(async move {
            for b in 20..80 {
                client.track(bearer(batch(b), &key)).await.unwrap();
            }
        })
    };
    let report = backup(&server, &temp.path().join("live"), BOOTSTRAP).await;
    // The log part is the projects' data as records of up to 10,000 events (what is restored is
    // checked below, event by event).
    assert!(report.log >= 1 && report.meta >= 4, "{report:?}");
    writer.await.unwrap();
    let restored = TestServer::start_in(&temp.path().join("live"), |c| c.bootstrap_key = Some(BOOTSTRAP.into())).await;
    let ids = stored(&restored, "p", &key).await;
    assert!(ids.values().all(|&n| n == 1));
    for b in 0..80u64 {
        let present = (0..100).filter(|i| ids.contains_key(&format!("b{b}-{i}"))).count();
        assert!(present == 0 || present == 100, "batch {b} is whole or absent, found {present}");
        if b < 20 {
            assert_eq!(present, 100, "batch {b} was acked before the backup");
        }
    }
    restored.running.unwrap().stop().await.unwrap();

    // A backup at rest answers exactly like the original, keys included.
    let report = backup(&server, &temp.path().join("rest"), BOOTSTRAP).await;
    assert!(report.bytes > 0);
    let restored = TestServer::start_in(&temp.path().join("rest"), |c| c.bootstrap_key = Some(BOOTSTRAP.into())).await;
    assert_eq!(stored(&restored, "p", &key).await, stored(&server, "p", &key).await);
    assert_eq!(stored(&restored, "p", &key).await.len(), 8000);
    let stats = |s: &TestServer| {
        let mut client = s.projects();
        let request = bearer(pb::GetProjectStatsRequest { project: "p".into() }, &key);
        async move {
            let mut stats = client.get_project_stats(request).await.unwrap().into_inner();
            stats.bytes_on_disk = 0;
            stats
        }
    };
    assert_eq!(stats(&restored).await, stats(&server).await);
    for metric in ["views", "viewers"] {
        let query = |s: &TestServer| {
            let mut client = s.metrics();
            let request = bearer(
                pb::QueryMetricRequest {
                    project: "p".into(),
                    metric: Some(pb::query_metric_request::Metric::MetricKey(metric.into())),
                    range: Some(pb::TimeRange { from: Some(ts(0)), to: Some(ts(86_400)) }),
                    granularity: pb::Granularity::Hour as i32,
                    ..Default::default()
                },
                &key,
            );
            async move { client.query_metric(request).await.unwrap().into_inner() }
        };
        assert_eq!(query(&restored).await, query(&server).await, "{metric}");
    }
    // Only the server admin may back up; the target must be empty.
    let args = sextant::cli::backup::BackupArgs {
        client: sextant::cli::load::ClientArgs {
            addr: server.running.as_ref().unwrap().addr.to_string(),
            api_key: Some(key.clone()),
            ca_cert: None,
        },
        out: temp.path().join("denied"),
    };
    let denied = sextant::cli::backup::run(&args).await.unwrap_err();
    assert!(format!("{denied:#}").contains("server admin"), "{denied:#}");
    restored.running.unwrap().stop().await.unwrap();
    let args = sextant::cli::backup::BackupArgs { out: temp.path().join("rest"), ..args };
    assert!(sextant::cli::backup::run(&args).await.is_err(), "not into a used directory");
}
