//! AdminService.Compact: what DeleteUser removed leaves every file under the data directory,
//! while every answer (and dedupe) stays as it was, also after a restart.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{BOOTSTRAP, TestServer, bearer, event, text, with_props};
use sextant::core::store::record::decode_record;
use sextant::pb;
use sextant::storage::{SledStorage, Storage};
use tonic::Code;

// Made-up strings that occur nowhere else.
const VICTIM: &str = "Vq7xW2Lk";
const VICTIM_ANON: &str = "Zp9RtY4c";
const VICTIM_TRAIT: &str = "Hn6cJ5mB";
const VICTIM_PROP: &str = "Kd3sQ8wE";
const VICTIM_EVENT: &str = "Xb1gF0uT";
const KEEPER_PROP: &str = "Mr4tL7yA";
const KEEPER_TRAIT: &str = "Pw8xN2qG";

/// Which of `needles` are stored under `dir` (of a stopped server): in the bytes of some
/// file, or inside a log record once decompressed (lz4 may split a string a file holds).
fn found_on_disk(dir: &Path, needles: &[&str]) -> Vec<String> {
    fn walk(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() { walk(&path, files) } else { files.push(path) }
        }
    }
    let mut haystacks = Vec::new();
    let mut files = Vec::new();
    walk(dir, &mut files);
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        // Checkpointed project states and traits are lz4-compressed: search them decompressed too.
        if file.extension().is_some_and(|e| e == "state" || e == "traits") {
            let mut state = Vec::new();
            std::io::Read::read_to_end(&mut lz4_flex::frame::FrameDecoder::new(&bytes[..]), &mut state).unwrap();
            haystacks.push(state);
        }
        haystacks.push(bytes);
    }
    // The stopped server's last tasks may still be letting go of the database.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let storage = loop {
        match SledStorage::open(dir) {
            Ok(storage) => break storage,
            Err(error) => assert!(std::time::Instant::now() < deadline, "{error}"),
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    storage
        .replay(None, &mut |value| {
            haystacks.push(format!("{:?}", decode_record(value)?).into_bytes());
            Ok(())
        })
        .unwrap();
    let mut found: Vec<String> = needles
        .iter()
        .filter(|needle| haystacks.iter().any(|h| h.windows(needle.len()).any(|w| w == needle.as_bytes())))
        .map(|needle| needle.to_string())
        .collect();
    found.sort();
    found
}

fn sorted(strings: &[&str]) -> Vec<String> {
    let mut strings: Vec<String> = strings.iter().map(|s| s.to_string()).collect();
    strings.sort();
    strings
}

/// Stops the server and closes its client channel.
async fn stop(mut server: TestServer) {
    let running = server.running.take().unwrap();
    drop(server);
    running.stop().await.unwrap();
}

async fn export(server: &TestServer, project: &str) -> Vec<pb::Event> {
    let request = pb::ExportEventsRequest { project: project.into(), ..Default::default() };
    let mut stream = server.users().export_events(request).await.unwrap().into_inner();
    let mut events = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        events.extend(chunk.events);
    }
    events
}

async fn traits(server: &TestServer, user: &str) -> Option<BTreeMap<String, pb::Value>> {
    match server.get_user("p", user).await {
        Ok(u) => Some(u.traits),
        Err(status) if status.code() == Code::NotFound => None,
        Err(status) => panic!("{status:?}"),
    }
}

async fn compact(server: &TestServer, project: &str) -> pb::CompactResponse {
    server.admin().compact(pb::CompactRequest { project: project.into() }).await.unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_delete_user_and_compact_no_file_holds_the_user_and_answers_stay() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let server = TestServer::start_in(dir, |_| {}).await;
    server.create_project("p").await;
    server.create_project("other").await;
    // Enough of the victim that removing it shows in the data directory's size.
    let victim_events: Vec<pb::Event> = (0..3000)
        .map(|i| {
            with_props(event(&format!("{VICTIM_EVENT}-{i}"), "view", VICTIM, 100 + i), &[("note", text(VICTIM_PROP))])
        })
        .collect();
    for chunk in victim_events.chunks(1000) {
        assert_eq!(server.track("p", chunk.to_vec()).await.accepted, 1000);
    }
    let anonymous = pb::Event {
        user_id: String::new(),
        anonymous_id: VICTIM_ANON.into(),
        ..with_props(event("anon-view-1", "view", "", 50), &[("note", text(VICTIM_PROP))])
    };
    let keeper: Vec<pb::Event> = (0..5)
        .map(|i| with_props(event(&format!("keep-{i}"), "buy", "keeper", 200 + i), &[("note", text(KEEPER_PROP))]))
        .collect();
    server.track("p", vec![anonymous]).await;
    server.track("p", keeper.clone()).await;
    server.track("other", keeper.clone()).await;
    let update = |user: &str, value: &str| pb::UserUpdate {
        user_id: user.into(),
        set: [("plan".to_string(), text(value))].into(),
        ..Default::default()
    };
    let users = vec![update(VICTIM, VICTIM_TRAIT), update("keeper", KEEPER_TRAIT)];
    server.ingest().identify(pb::IdentifyRequest { project: "p".into(), users }).await.unwrap();
    let alias = pb::AliasRequest { project: "p".into(), anonymous_id: VICTIM_ANON.into(), user_id: VICTIM.into() };
    server.ingest().alias(alias).await.unwrap();
    server.users().delete_user(pb::DeleteUserRequest { project: "p".into(), user_id: VICTIM.into() }).await.unwrap();

    let secrets = [VICTIM, VICTIM_ANON, VICTIM_TRAIT, VICTIM_PROP, VICTIM_EVENT];
    let kept = [KEEPER_PROP, KEEPER_TRAIT];
    let everything: Vec<&str> = secrets.iter().chain(&kept).copied().collect();
    // Deleted from every answer at once, but still on disk until compaction: the user's rows
    // are marked removed in the column files (event ids and property values included), and its
    // id, anonymous id and trait values stay in the string tables.
    assert_eq!(export(&server, "p").await, keeper);
    stop(server).await;
    assert_eq!(found_on_disk(dir, &everything), sorted(&everything));

    // A restart reads the removed rows back from the checkpoint: still in no answer.
    let server = TestServer::start_in(dir, |_| {}).await;
    assert_eq!(export(&server, "p").await, keeper);
    assert_eq!(server.stats("p").await.events, 5);
    assert_eq!(traits(&server, VICTIM).await, None);
    let compacted = compact(&server, "p").await;
    assert!(compacted.bytes_after < compacted.bytes_before, "3,000 events fewer on disk: {compacted:?}");
    // The figures are the data directory's size (checkpoint files once, not twice), give or
    // take what sled writes in the background.
    let walked = common::bytes_under(dir);
    assert!(compacted.bytes_after.abs_diff(walked) * 10 < walked, "{compacted:?} against {walked} on disk");
    let mut server = server;
    for round in 0..2 {
        assert_eq!(export(&server, "p").await, keeper, "round {round}");
        assert_eq!(export(&server, "other").await, keeper, "round {round}");
        assert_eq!(traits(&server, VICTIM).await, None);
        assert_eq!(traits(&server, "keeper").await.unwrap()["plan"], text(KEEPER_TRAIT));
        assert_eq!(server.stats("p").await.events, 5);
        // The deleted user's ids stay duplicates: re-sent, nothing comes back.
        let replay = server.track("p", victim_events[..10].to_vec()).await;
        assert_eq!((replay.accepted, replay.duplicates), (0, 10), "round {round}");
        stop(server).await;
        assert_eq!(found_on_disk(dir, &everything), sorted(&kept), "round {round}");
        server = TestServer::start_in(dir, |_| {}).await;
    }

    // Compacting again (every project) keeps everything; an idle background pass has nothing to do.
    let again = compact(&server, "").await;
    assert!(again.bytes_after > 0);
    assert_eq!(export(&server, "p").await, keeper);
    assert_eq!(export(&server, "other").await, keeper);
    let engine = server.running.as_ref().unwrap().engine.clone();
    assert_eq!(engine.compact_if_needed().await.unwrap(), None);

    // The offline check reads every record back once the server is stopped.
    drop(engine);
    stop(server).await;
    found_on_disk(dir, &[]);
    let report =
        sextant::cli::maintenance::check(&sextant::cli::maintenance::CheckArgs { data_dir: dir.to_path_buf() })
            .unwrap();
    // A clean stop checkpoints everything: the log is empty, the checkpoint's files all check.
    assert!(report.checkpoint_files > 0 && report.meta >= 2, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_needs_the_admin_key_and_a_known_project() {
    let server = TestServer::start_secure(|_| {}).await;
    server.create_project("p").await;
    let status = server.admin().compact(pb::CompactRequest { project: "p".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let request = bearer(pb::CompactRequest { project: "nope".into() }, BOOTSTRAP);
    let status = server.admin().compact(request).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("nope"), "{}", status.message());
    let request = bearer(pb::CompactRequest { project: "Bad Id!".into() }, BOOTSTRAP);
    assert_eq!(server.admin().compact(request).await.unwrap_err().code(), Code::InvalidArgument);
    let request = bearer(pb::CompactRequest { project: "p".into() }, BOOTSTRAP);
    let compacted = server.admin().compact(request).await.unwrap().into_inner();
    assert!(compacted.bytes_before > 0 && compacted.bytes_after > 0);
}

#[test]
fn check_names_a_record_that_does_not_read_back() {
    let dir = tempfile::tempdir().unwrap();
    {
        let storage = sextant::storage::SledStorage::open(dir.path()).unwrap();
        use sextant::storage::Storage;
        storage.append(&[sextant::storage::Encoded(vec![1, 2, 3])]).unwrap();
        storage.sync().unwrap();
    }
    // Opening waits for the lock sled's background threads may still hold a moment (`open_db`).
    let error = sextant::cli::maintenance::check(&sextant::cli::maintenance::CheckArgs { data_dir: dir.path().into() })
        .unwrap_err();
    assert!(format!("{error:#}").contains("log record 0"), "{error:#}");
    let missing = sextant::cli::maintenance::CheckArgs { data_dir: dir.path().join("missing") };
    assert!(sextant::cli::maintenance::check(&missing).is_err());
}

/// Compaction while events, traits and definitions are written: every call completes (no call
/// waits on a lock compaction holds while it waits on theirs), and all of it is there after a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_runs_beside_writes_of_events_and_definitions() {
    let server = TestServer::start().await;
    server.create_project("p").await;
    // Enough that compaction takes a while, so the calls below land while it runs.
    for b in 0..40 {
        let events = (0..2500).map(|i| event(&format!("e{b}-{i}"), "view", &format!("u{i}"), i)).collect();
        server.track("p", events).await;
    }
    let patience = std::time::Duration::from_secs(60);
    let mut compactions = Vec::new();
    for _ in 0..3 {
        let mut admin = server.admin();
        compactions.push(tokio::spawn(async move { admin.compact(pb::CompactRequest::default()).await }));
    }
    for i in 0..20 {
        let metric = common::definition(&format!("m{i}"), pb::MetricKind::Count, "view");
        let mut metrics = server.metrics();
        let create = metrics.create_metric(pb::CreateMetricRequest { project: "p".into(), metric: Some(metric) });
        tokio::time::timeout(patience, create).await.expect("create_metric waited on compaction").unwrap();
        let events = vec![event(&format!("late-{i}"), "view", "u1", 1000 + i)];
        let tracked = tokio::time::timeout(patience, server.track("p", events)).await.expect("track waited");
        assert_eq!(tracked.accepted, 1);
    }
    for compaction in compactions {
        tokio::time::timeout(patience, compaction).await.expect("compaction ended").unwrap().unwrap();
    }
    let server = server.restart().await;
    assert_eq!(server.stats("p").await.events, 100_020);
    let request = pb::ListMetricsRequest { project: "p".into(), ..Default::default() };
    assert_eq!(server.metrics().list_metrics(request).await.unwrap().into_inner().metrics.len(), 20);
}
