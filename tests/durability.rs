//! An acked event survives `kill -9`: a real server process is killed right after acks,
//! restarted on the same data dir, and every acked event must be there exactly once.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{event, num, text, with_props};
use sextant::pb;
use sextant::pb::ingest_service_client::IngestServiceClient;
use sextant::pb::project_service_client::ProjectServiceClient;
use sextant::pb::user_service_client::UserServiceClient;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

struct Process {
    child: Child,
    channel: Channel,
}

/// A test that fails half way must not leave its server running (killed and reaped here;
/// nothing to do for one already stopped).
impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn spawn_server(dir: &Path) -> Process {
    spawn_server_with(dir, &[]).await
}

async fn spawn_server_with(dir: &Path, extra: &[&str]) -> Process {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sextant"))
        .args(["serve", "--addr", "127.0.0.1:0", "--metrics-addr", "off", "--data-dir"])
        .arg(dir)
        .args(common::clickhouse_flags_if_asked(dir))
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sextant");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("first line");
    let addr = line.trim().strip_prefix("sextant listening on ").unwrap_or_else(|| panic!("unexpected: {line}"));
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.expect("connect");
    Process { child, channel }
}

async fn create_project(channel: &Channel, id: &str) {
    let project = pb::Project { id: id.into(), ..Default::default() };
    ProjectServiceClient::new(channel.clone())
        .create_project(pb::CreateProjectRequest { project: Some(project) })
        .await
        .expect("project created");
}

/// The random kill times' seed: SEXTANT_CRASH_SEED, or the clock's; printed to replay a failure.
fn crash_seed() -> (u64, rand_chacha::ChaCha8Rng) {
    use rand::SeedableRng;
    let seed: u64 = std::env::var("SEXTANT_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    println!("SEXTANT_CRASH_SEED={seed}");
    (seed, rand_chacha::ChaCha8Rng::seed_from_u64(seed))
}

/// SIGTERM, then the server must exit 0 (a graceful stop, storage flushed).
fn stop_gracefully(mut process: Process) {
    let status = Command::new("kill").args(["-TERM", &process.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    assert_eq!(process.child.wait().unwrap().code(), Some(0), "graceful exit");
}

/// `sextant check` of a stopped server's data directory.
fn check_data_dir(dir: &Path) -> anyhow::Result<sextant::cli::maintenance::CheckReport> {
    sextant::cli::maintenance::check(&sextant::cli::maintenance::CheckArgs { data_dir: dir.to_path_buf() })
}

fn kill_9(mut process: Process) {
    // SIGKILL: no destructor, no flush, no graceful anything.
    process.child.kill().expect("kill");
    process.child.wait().expect("reap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_events_survive_kill_9_exactly_once() {
    let temp = tempfile::tempdir().unwrap();
    let mut acked: Vec<String> = Vec::new();
    let mut server = spawn_server(temp.path()).await;
    create_project(&server.channel, "p").await;

    // Three rounds, each killed after a different number of acks while more batches are in flight.
    for (round, kill_after) in [(0u64, 1usize), (1, 7), (2, 30)] {
        let batches: Vec<pb::TrackRequest> = (0..60u64)
            .map(|b| pb::TrackRequest {
                project: "p".into(),
                sequence: b,
                events: (0..200)
                    .map(|i| event(&format!("r{round}-b{b}-{i}"), "view", &format!("u{i}"), (b * 200 + i) as i64))
                    .collect(),
            })
            .collect();
        let sent: HashMap<u64, Vec<String>> =
            batches.iter().map(|b| (b.sequence, b.events.iter().map(|e| e.event_id.clone()).collect())).collect();
        let mut client = IngestServiceClient::new(server.channel.clone());
        let mut acks = client.track_stream(tokio_stream::iter(batches)).await.unwrap().into_inner();
        for _ in 0..kill_after {
            let ack = acks.next().await.unwrap().unwrap();
            assert_eq!(ack.accepted, 200);
            acked.extend(sent[&ack.sequence].iter().cloned());
        }
        kill_9(server);
        server = spawn_server(temp.path()).await;
    }

    let stored = stored_event_counts(&server.channel).await;
    assert_eq!(acked.len(), 38 * 200);
    for id in &acked {
        assert_eq!(stored.get(id), Some(&1), "acked event {id} must be stored exactly once");
    }
    assert!(stored.values().all(|&n| n == 1), "no event is stored twice");

    // Replaying everything acked is fully deduplicated after the crashes.
    let replay: Vec<pb::Event> = acked.iter().take(500).map(|id| event(id, "view", "u0", 0)).collect();
    let reply = IngestServiceClient::new(server.channel.clone())
        .track(pb::TrackRequest { project: "p".into(), events: replay, sequence: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((reply.accepted, reply.duplicates), (0, 500));
    kill_9(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_and_exits_zero() {
    let temp = tempfile::tempdir().unwrap();
    let server = spawn_server(temp.path()).await;
    create_project(&server.channel, "p").await;
    IngestServiceClient::new(server.channel.clone())
        .track(pb::TrackRequest { project: "p".into(), events: vec![event("a", "x", "u", 0)], sequence: 0 })
        .await
        .unwrap();
    stop_gracefully(server);

    let server = spawn_server(temp.path()).await;
    let stats = ProjectServiceClient::new(server.channel.clone())
        .get_project_stats(pb::GetProjectStatsRequest { project: "p".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.events, 1);
    kill_9(server);
}

/// SIGTERM during a TrackStream that keeps sending: the server stops reading, acks every
/// batch it received, ends the stream with UNAVAILABLE and stops well within the grace
/// period; every acked event is there after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_acks_or_fails_every_received_batch_of_an_open_stream() {
    let mut server = common::TestServer::start_with(|c| c.grace_secs = 20).await;
    server.create_project("p").await;
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::TrackRequest>(4);
    let sender = tokio::spawn(async move {
        // Sends until the server stops reading (the channel then fills and closes).
        for b in 0u64.. {
            let events = (0..100).map(|i| event(&format!("g{b}-{i}"), "view", &format!("u{i}"), i)).collect();
            if tx.send(pb::TrackRequest { project: "p".into(), events, sequence: b }).await.is_err() {
                return b;
            }
        }
        unreachable!()
    });
    let mut acks =
        server.ingest().track_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    let mut acked = Vec::new();
    while acked.len() < 5 {
        acked.push(acks.next().await.unwrap().unwrap().sequence);
    }
    let running = server.running.take().unwrap();
    let started = std::time::Instant::now();
    let stopping = tokio::spawn(running.stop());
    let end = loop {
        match acks.next().await {
            Some(Ok(ack)) => acked.push(ack.sequence),
            Some(Err(status)) => break status,
            None => panic!("the stream must end with a status, not silently"),
        }
    };
    assert_eq!(end.code(), tonic::Code::Unavailable, "{end:?}");
    assert_eq!(acked, (0..acked.len() as u64).collect::<Vec<_>>(), "acks in order, none skipped");
    stopping.await.unwrap().expect("clean stop");
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "did not wait for the grace period");
    sender.abort();

    let server = server.restart().await;
    let stored = server.export("p").await;
    let ids: std::collections::HashSet<String> = stored.iter().map(|e| e.event_id.clone()).collect();
    assert_eq!(ids.len(), stored.len(), "no duplicates");
    for b in &acked {
        for i in 0..100 {
            assert!(ids.contains(&format!("g{b}-{i}")), "acked batch {b} is stored");
        }
    }
}

/// Several clients stream concurrently; the server is killed with SIGKILL at a random moment,
/// restarted, and killed again, several times. Every event acked to any client must be
/// stored exactly once at the end. The seed is printed (and can be fixed with
/// SEXTANT_CRASH_SEED) to replay a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sigkills_during_concurrent_streams_lose_and_duplicate_nothing_acked() {
    use rand::Rng;
    let (seed, mut rng) = crash_seed();
    let temp = tempfile::tempdir().unwrap();
    let mut server = spawn_server(temp.path()).await;
    create_project(&server.channel, "p").await;
    let acked = std::sync::Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    for round in 0..5u64 {
        let mut clients = Vec::new();
        for client in 0..3u64 {
            // Overlapping ids across rounds and clients: retries of the same events must dedupe.
            let batches: Vec<pb::TrackRequest> = (0..40u64)
                .map(|b| pb::TrackRequest {
                    project: "p".into(),
                    sequence: b,
                    events: (0..150)
                        .map(|i| {
                            let id = format!("c{client}-b{}-{i}", (b + round * 7) % 60);
                            event(&id, "view", &format!("u{i}"), (b * 150 + i) as i64)
                        })
                        .collect(),
                })
                .collect();
            let ids: HashMap<u64, Vec<String>> =
                batches.iter().map(|b| (b.sequence, b.events.iter().map(|e| e.event_id.clone()).collect())).collect();
            let channel = server.channel.clone();
            let acked = acked.clone();
            clients.push(tokio::spawn(async move {
                let mut client = IngestServiceClient::new(channel);
                let Ok(response) = client.track_stream(tokio_stream::iter(batches)).await else {
                    return;
                };
                let mut acks = response.into_inner();
                while let Some(Ok(ack)) = acks.next().await {
                    acked.lock().extend(ids[&ack.sequence].iter().cloned());
                }
            }));
        }
        let kill_after = std::time::Duration::from_millis(rng.random_range(0..400));
        tokio::time::sleep(kill_after).await;
        kill_9(server);
        for client in clients {
            client.await.unwrap();
        }
        server = spawn_server(temp.path()).await;
    }

    let stored = stored_event_counts(&server.channel).await;
    let acked = acked.lock().clone();
    println!("{} acks, {} distinct events stored", acked.len(), stored.len());
    for id in &acked {
        assert_eq!(stored.get(id), Some(&1), "acked event {id} must be stored exactly once (seed {seed})");
    }
    assert!(stored.values().all(|&n| n == 1), "no event is stored twice (seed {seed})");
    kill_9(server);
}

/// The event ids of `user`'s timeline in project "p", page by page.
async fn timeline_ids(channel: &tonic::transport::Channel, user: &str) -> Vec<String> {
    let mut users = UserServiceClient::new(channel.clone());
    let (mut ids, mut page_token) = (Vec::new(), String::new());
    loop {
        let request = pb::ListUserEventsRequest {
            project: "p".into(),
            user_id: user.into(),
            page_size: 1000,
            page_token,
            ..Default::default()
        };
        let page = users.list_user_events(request).await.unwrap().into_inner();
        ids.extend(page.events.into_iter().map(|e| e.event_id));
        if page.next_page_token.is_empty() {
            return ids;
        }
        page_token = page.next_page_token;
    }
}

/// The events of project "p" in export order (time, then arrival).
async fn exported_events(channel: &tonic::transport::Channel) -> Vec<pb::Event> {
    let request = pb::ExportEventsRequest { project: "p".into(), ..Default::default() };
    let mut stream = UserServiceClient::new(channel.clone()).export_events(request).await.unwrap().into_inner();
    let mut events = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        events.extend(chunk.events);
    }
    events
}

/// The event ids of project "p" in export order.
async fn exported_ids(channel: &tonic::transport::Channel) -> Vec<String> {
    exported_events(channel).await.into_iter().map(|e| e.event_id).collect()
}

/// How many times each event id of project "p" is stored.
async fn stored_event_counts(channel: &tonic::transport::Channel) -> HashMap<String, usize> {
    let mut stored: HashMap<String, usize> = HashMap::new();
    for id in exported_ids(channel).await {
        *stored.entry(id).or_default() += 1;
    }
    stored
}

/// Compaction is killed with SIGKILL at random moments (while it rebuilds, while it catches up
/// with the writes that arrived meanwhile, around the switch, while it removes the old
/// database) with writes and a DeleteUser arriving meanwhile: after each restart every acked
/// event is there exactly once, and every deleted user stays gone (one whose deletion was cut
/// off by the kill is all there or all gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkills_during_compaction_lose_nothing_and_bring_nothing_back() {
    use rand::Rng;
    use sextant::pb::admin_service_client::AdminServiceClient;
    let (seed, mut rng) = crash_seed();
    let temp = tempfile::tempdir().unwrap();
    let mut server = spawn_server(temp.path()).await;
    create_project(&server.channel, "p").await;
    let mut acked: Vec<String> = Vec::new();
    let mut ingest = IngestServiceClient::new(server.channel.clone());
    for b in 0..20 {
        let events: Vec<pb::Event> = (0..1000)
            .map(|i| event(&format!("base-{b}-{i}"), "view", &format!("u{}", i % 50), (b * 1000 + i) as i64))
            .collect();
        let request = pb::TrackRequest { project: "p".into(), events: events.clone(), sequence: 0 };
        ingest.track(request).await.unwrap();
        acked.extend(events.into_iter().map(|e| e.event_id));
    }
    let request = pb::DeleteUserRequest { project: "p".into(), user_id: "u7".into() };
    UserServiceClient::new(server.channel.clone()).delete_user(request).await.unwrap();
    // A base event's user number.
    let user_of =
        |id: &str| id.strip_prefix("base-").map(|rest| rest.rsplit('-').next().unwrap().parse::<usize>().unwrap() % 50);
    acked.retain(|id| user_of(id) != Some(7));
    let mut deleted = vec![7];

    for round in 0..6u64 {
        let mut admin = AdminServiceClient::new(server.channel.clone());
        let compaction = tokio::spawn(async move { admin.compact(pb::CompactRequest::default()).await });
        let victim = 10 + round as usize;
        let mut users = UserServiceClient::new(server.channel.clone());
        let deletion = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let request = pb::DeleteUserRequest { project: "p".into(), user_id: format!("u{victim}") };
            users.delete_user(request).await.is_ok()
        });
        let mut writer = IngestServiceClient::new(server.channel.clone());
        let writes = tokio::spawn(async move {
            let mut acked = Vec::new();
            for b in 0..20 {
                let events: Vec<pb::Event> =
                    (0..50).map(|i| event(&format!("r{round}-{b}-{i}"), "view", "w", i as i64)).collect();
                let request = pb::TrackRequest { project: "p".into(), events: events.clone(), sequence: 0 };
                match writer.track(request).await {
                    Ok(_) => acked.extend(events.into_iter().map(|e| e.event_id)),
                    Err(_) => break,
                }
            }
            acked
        });
        tokio::time::sleep(std::time::Duration::from_millis(rng.random_range(0..150))).await;
        kill_9(server);
        let finished = compaction.await.unwrap().is_ok();
        println!("round {round}: compaction {}", if finished { "finished before the kill" } else { "killed" });
        acked.extend(writes.await.unwrap());
        let deletion_acked = deletion.await.unwrap();
        server = spawn_server(temp.path()).await;
        let stored = stored_event_counts(&server.channel).await;
        let victims_stored = stored.keys().filter(|id| user_of(id) == Some(victim)).count();
        let victims_acked = acked.iter().filter(|id| user_of(id) == Some(victim)).count();
        assert!(
            victims_stored == 0 || (!deletion_acked && victims_stored == victims_acked),
            "u{victim}: {victims_stored} of {victims_acked} events stored, deletion acked: {deletion_acked} (round {round}, seed {seed})"
        );
        if victims_stored == 0 {
            acked.retain(|id| user_of(id) != Some(victim));
            deleted.push(victim);
        }
        for id in &acked {
            assert_eq!(stored.get(id), Some(&1), "acked event {id} (round {round}, seed {seed})");
        }
        assert!(stored.values().all(|&n| n == 1), "no event is stored twice (round {round}, seed {seed})");
        // Beyond the acked events, only writes cut off by the kill may have been stored.
        let acked_set: std::collections::HashSet<&String> = acked.iter().collect();
        let extra: Vec<&String> = stored.keys().filter(|id| !acked_set.contains(id)).collect();
        assert!(extra.iter().all(|id| id.starts_with('r')), "unexpected {extra:?} (seed {seed})");
        for user in &deleted {
            let request = pb::GetUserRequest { project: "p".into(), user_id: format!("u{user}") };
            let status = UserServiceClient::new(server.channel.clone()).get_user(request).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::NotFound, "u{user} (round {round}, seed {seed})");
        }
    }
    kill_9(server);
}

/// Tracks `batches` batches of `size` views into project "p" (ids `<prefix><batch>-<i>`, by
/// users u0..u59) on a task of its own, until one fails (the server was killed): the ids acked.
fn write_views_until_refused(
    channel: &Channel,
    prefix: String,
    batches: u64,
    size: u64,
) -> tokio::task::JoinHandle<Vec<String>> {
    let mut writer = IngestServiceClient::new(channel.clone());
    tokio::spawn(async move {
        let mut acked = Vec::new();
        for b in 0..batches {
            let events: Vec<pb::Event> = (0..size)
                .map(|i| event(&format!("{prefix}{b}-{i}"), "view", &format!("u{}", i % 60), (b * size + i) as i64))
                .collect();
            let request = pb::TrackRequest { project: "p".into(), events: events.clone(), sequence: b };
            match writer.track(request).await {
                Ok(_) => acked.extend(events.into_iter().map(|e| e.event_id)),
                Err(_) => break,
            }
        }
        acked
    })
}

/// Checkpoints run every second while a client writes, and the server is killed with SIGKILL
/// at random moments, some inside a checkpoint (its files, the manifest switch, the log
/// truncation): after each restart, which maps the checkpoint and replays the log after it,
/// every acked event is there exactly once. A clean stop then leaves an empty log, every
/// checkpoint file matching its checksum, and a restart that answers the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkills_during_checkpoints_lose_and_duplicate_nothing_acked() {
    use rand::Rng;
    let (seed, mut rng) = crash_seed();
    let temp = tempfile::tempdir().unwrap();
    let args = ["--checkpoint-interval-secs", "1"];
    let mut server = spawn_server_with(temp.path(), &args).await;
    create_project(&server.channel, "p").await;
    let mut acked: Vec<String> = Vec::new();
    for round in 0..4u64 {
        let writes = write_views_until_refused(&server.channel, format!("c{round}-"), 5000, 200);
        tokio::time::sleep(std::time::Duration::from_millis(rng.random_range(900..2600))).await;
        kill_9(server);
        acked.extend(writes.await.unwrap());
        server = spawn_server_with(temp.path(), &args).await;
        let stored = stored_event_counts(&server.channel).await;
        for id in &acked {
            assert_eq!(stored.get(id), Some(&1), "acked event {id} (round {round}, seed {seed})");
        }
        assert!(stored.values().all(|&n| n == 1), "no event is stored twice (round {round}, seed {seed})");
    }
    let before = stored_event_counts(&server.channel).await;
    stop_gracefully(server);
    let report = check_data_dir(temp.path()).unwrap();
    assert_eq!(report.log, 0, "a clean stop checkpoints everything: {report:?}");
    assert!(report.checkpoint_files >= 19, "17 columns and a state file per project, two for the ids: {report:?}");
    let server = spawn_server_with(temp.path(), &args).await;
    assert_eq!(stored_event_counts(&server.channel).await, before);
    // Every acked id is a duplicate for ever: resent after all those checkpoints (each wrote a
    // run of dedupe keys, merged in the background), a sample of them adds nothing, and new
    // ids in the same batches are stored.
    let mut writer = IngestServiceClient::new(server.channel.clone());
    let sample: Vec<&String> = acked.iter().step_by(acked.len().div_ceil(20_000).max(1)).collect();
    let (mut accepted, mut duplicates) = (0u64, 0u64);
    for (b, chunk) in sample.chunks(500).enumerate() {
        let mut events: Vec<pb::Event> = chunk.iter().map(|id| event(id, "view", "u1", 1)).collect();
        events.push(event(&format!("new-{b}"), "view", "u1", 1));
        let reply =
            writer.track(pb::TrackRequest { project: "p".into(), events, sequence: 0 }).await.unwrap().into_inner();
        accepted += reply.accepted;
        duplicates += reply.duplicates;
    }
    assert_eq!((accepted, duplicates), (sample.len().div_ceil(500) as u64, sample.len() as u64), "seed {seed}");
    kill_9(server);
}

/// Checkpoints are written beside the writer, which applies deletions meanwhile: each one
/// replaces the project's columns with new files. Users are deleted while checkpoints run
/// every second under writes, then the server is killed: the last manifest's files are all
/// there (a restart maps them and `sextant check` passes), every acked event of a user not
/// deleted is stored once, and no deleted user has any.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletions_during_background_checkpoints_leave_every_listed_file() {
    let temp = tempfile::tempdir().unwrap();
    let args = ["--checkpoint-interval-secs", "1"];
    let server = spawn_server_with(temp.path(), &args).await;
    create_project(&server.channel, "p").await;
    // Users d0..d29, to be deleted one by one, with events of their own.
    let mut ingest = IngestServiceClient::new(server.channel.clone());
    let victims: Vec<pb::Event> =
        (0..3000).map(|i| event(&format!("v{i}"), "view", &format!("d{}", i % 30), i)).collect();
    ingest.track(pb::TrackRequest { project: "p".into(), events: victims, sequence: 0 }).await.unwrap();
    let writes = write_views_until_refused(&server.channel, "w".into(), 100_000, 500);
    let mut users = UserServiceClient::new(server.channel.clone());
    for d in 0..30 {
        let request = pb::DeleteUserRequest { project: "p".into(), user_id: format!("d{d}") };
        users.delete_user(request).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    }
    kill_9(server);
    let acked = writes.await.unwrap();
    check_data_dir(temp.path()).expect("every file the manifest lists is whole");
    let server = spawn_server_with(temp.path(), &args).await;
    let stored = stored_event_counts(&server.channel).await;
    for id in &acked {
        assert_eq!(stored.get(id), Some(&1), "acked event {id}");
    }
    assert!(stored.keys().all(|id| id.starts_with('w')), "a deleted user's event is back");
    stop_gracefully(server);
}

/// A data directory at `dir` whose project "p" holds `events`, checkpointed by a clean stop.
async fn checkpoint_of(dir: &Path, events: Vec<pb::Event>) {
    let server = spawn_server(dir).await;
    create_project(&server.channel, "p").await;
    IngestServiceClient::new(server.channel.clone())
        .track(pb::TrackRequest { project: "p".into(), events, sequence: 0 })
        .await
        .unwrap();
    stop_gracefully(server);
}

/// The manifest version a checkpoint is written in.
const CURRENT_VERSION: u32 = 6;

/// The checkpoint manifest in `segments`, as JSON.
fn read_manifest(segments: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(segments.join("MANIFEST")).unwrap()).unwrap()
}

/// A clean stop's checkpoint of 300 views by one user in project "p": the temporary data
/// directory and its `segments`.
async fn checkpoint_of_views() -> (tempfile::TempDir, std::path::PathBuf) {
    let temp = tempfile::tempdir().unwrap();
    let events: Vec<pb::Event> = (0..300).map(|i| event(&format!("e{i}"), "view", "u1", i)).collect();
    checkpoint_of(temp.path(), events).await;
    let segments = temp.path().join("segments");
    (temp, segments)
}

/// Runs `sextant serve` on `dir`, which must stop by itself, with a failure (on `what`),
/// within a minute (a server still running then is killed and the test fails): its stdout and
/// stderr.
fn refused(dir: &Path, what: &str) -> (String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sextant"))
        .args(["serve", "--addr", "127.0.0.1:0", "--metrics-addr", "off", "--data-dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..600 {
        if child.try_wait().unwrap().is_some() {
            let output = child.wait_with_output().unwrap();
            assert!(!output.status.success(), "the server must not run on {what}");
            let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
            return (text(&output.stdout), text(&output.stderr));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.kill().unwrap();
    let output = child.wait_with_output().unwrap();
    panic!("the server kept running on {what}; its log:\n{}", String::from_utf8_lossy(&output.stderr));
}

/// A checkpoint file (a column, the traits) changed on disk is found by its checksum: the
/// server stops, naming the file, and `sextant check` names it too. Nothing is answered from a bad file (answers wait
/// for the check, `engine::Verification`). A file cut short is refused before the port opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_checkpoint_file_stops_the_start_naming_it() {
    let (temp, segments) = checkpoint_of_views().await;
    let manifest = read_manifest(&segments);
    let times = manifest["projects"]["p"]["columns"]["time"]["file"].as_str().unwrap().to_owned();
    let path = segments.join(&times);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8 * 150] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();

    let (_, stderr) = refused(temp.path(), "a corrupt file");
    assert!(stderr.contains(&times) && stderr.contains("corrupt"), "{stderr}");
    let error = check_data_dir(temp.path()).unwrap_err();
    assert!(format!("{error:#}").contains(&times), "{error:#}");

    bytes[8 * 150] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    assert!(check_data_dir(temp.path()).is_ok(), "the file is whole again");
    // The traits are read after the port opens (`Deferred`): a bad traits file stops the
    // server all the same.
    let traits = manifest["projects"]["p"]["traits"].as_str().unwrap().to_owned();
    let traits_path = segments.join(&traits);
    let (whole, _) = flip_a_middle_bit(&traits_path, 0x01);
    let (_, stderr) = refused(temp.path(), "a corrupt traits file");
    assert!(stderr.contains(&traits) && stderr.contains("corrupt"), "{stderr}");
    std::fs::write(&traits_path, &whole).unwrap();
    let names = manifest["projects"]["p"]["columns"]["name"]["file"].as_str().unwrap().to_owned();
    let file = std::fs::OpenOptions::new().write(true).open(segments.join(&names)).unwrap();
    file.set_len(file.metadata().unwrap().len() / 2).unwrap();
    let (stdout, stderr) = refused(temp.path(), "a file cut short");
    assert!(!stdout.contains("listening"), "the port opened");
    assert!(stderr.contains(&names), "{stderr}");
}

/// Flips the `bit` of the middle byte of the file at `path`, as a failing disk would: the
/// file as it was, and as it is now.
fn flip_a_middle_bit(path: &Path, bit: u8) -> (Vec<u8>, Vec<u8>) {
    let whole = std::fs::read(path).unwrap();
    let mut flipped = whole.clone();
    flipped[whole.len() / 2] ^= bit;
    std::fs::write(path, &flipped).unwrap();
    (whole, flipped)
}

/// Changes project p's column `name` in the checkpoint under `dir` with `edit`, and lists the
/// new bytes' checksums in the manifest: a file written wrong, not damaged by the disk.
fn rewrite_column(dir: &Path, name: &str, edit: impl FnOnce(&mut Vec<u8>)) {
    use sextant::core::store::column::block_checksums;
    let segments = dir.join("segments");
    let mut manifest = read_manifest(&segments);
    let column = &mut manifest["projects"]["p"]["columns"][name];
    let path = segments.join(column["file"].as_str().unwrap());
    let mut bytes = std::fs::read(&path).unwrap();
    edit(&mut bytes);
    std::fs::write(&path, &bytes).unwrap();
    let listed = column["bytes"].as_u64().unwrap() as usize;
    column["checksums"] = serde_json::json!(block_checksums(&bytes[..listed]));
    std::fs::write(segments.join("MANIFEST"), serde_json::to_vec(&manifest).unwrap()).unwrap();
    check_data_dir(dir).expect("the checksums match");
}

/// Checksums catch a changed file; a file written wrong with matching checksums (a bug, not
/// the disk) is caught by the rows' check that follows them: a row naming no person ends the
/// process, naming the project, before any query answers from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_whose_rows_name_no_person_stops_the_server() {
    let (temp, _) = checkpoint_of_views().await;
    rewrite_column(temp.path(), "person", |bytes| bytes[4 * 150..4 * 151].copy_from_slice(&7u32.to_le_bytes()));

    let (_, stderr) = refused(temp.path(), "rows naming no person");
    assert!(stderr.contains("project p is inconsistent") && stderr.contains("a person"), "{stderr}");
}

/// The people's lookup is built after the port opens (`Deferred`), from the mapped names: a
/// checkpoint naming one user twice (written wrong, its checksums matching) stops the server,
/// naming the state, rather than let a lookup pick one of the two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_naming_a_user_twice_stops_the_server() {
    let temp = tempfile::tempdir().unwrap();
    let events = vec![event("e1", "view", "ann", 1), event("e2", "view", "bob", 2)];
    checkpoint_of(temp.path(), events).await;
    rewrite_column(temp.path(), "people.bytes", |bytes| {
        let at = bytes.windows(3).position(|w| w == b"bob").unwrap();
        bytes[at..at + 3].copy_from_slice(b"ann");
    });

    // Found by the check after the load, which may end the process before the port opens.
    let (_, stderr) = refused(temp.path(), "a user named twice");
    assert!(stderr.contains("interner is corrupt") && stderr.contains("stored twice"), "{stderr}");
}

/// A dedupe file that fails its checksum stops the server, naming it, whether it is found
/// after the port opened (a clean stop's checkpoint: only ingestion reads those files, and it
/// waits for their check) or before (the log holds acked events to replay, whose dedupe
/// reads them); and every event acked before the damage is still there once it is repaired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_dedupe_file_stops_the_server_naming_it() {
    let (temp, segments) = checkpoint_of_views().await;
    let manifest = read_manifest(&segments);
    let keys = manifest["seen_runs"][0]["keys"]["file"].as_str().unwrap().to_owned();
    let path = segments.join(&keys);
    let (whole, bytes) = flip_a_middle_bit(&path, 0x10);
    let (_, stderr) = refused(temp.path(), "a corrupt dedupe file");
    assert!(stderr.contains(&keys) && stderr.contains("corrupt"), "{stderr}");

    // Acked events in the log after the checkpoint: the replay needs the dedupe files.
    std::fs::write(&path, &whole).unwrap();
    let server = spawn_server(temp.path()).await;
    let events: Vec<pb::Event> = (300..400).map(|i| event(&format!("e{i}"), "view", "u1", i)).collect();
    let reply = IngestServiceClient::new(server.channel.clone())
        .track(pb::TrackRequest { project: "p".into(), events, sequence: 1 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.accepted, 100);
    kill_9(server);
    assert_eq!(read_manifest(&segments)["seen_runs"][0]["keys"]["file"], keys.as_str(), "no checkpoint since");
    std::fs::write(&path, &bytes).unwrap();
    let (stdout, stderr) = refused(temp.path(), "a corrupt dedupe file and a log to replay");
    assert!(!stdout.contains("listening"), "the port opened: {stdout}");
    assert!(stderr.contains(&keys) && stderr.contains("corrupt"), "{stderr}");

    std::fs::write(&path, &whole).unwrap();
    let server = spawn_server(temp.path()).await;
    let ids = exported_ids(&server.channel).await;
    assert_eq!(ids.len(), 400);
    let resent = IngestServiceClient::new(server.channel.clone())
        .track(pb::TrackRequest { project: "p".into(), events: vec![event("e350", "view", "u1", 350)], sequence: 2 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((resent.accepted, resent.duplicates), (0, 1));
    stop_gracefully(server);
}

/// A checkpoint written before manifest version 3 (event ids, anonymous people and previous
/// rows in plain columns, dedupe runs of whole 128-bit keys) loads: the same events and ids
/// come back, in a user's timeline too, an old id is still a duplicate, and the next clean
/// stop writes it again in the current version without the plain files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_2_checkpoint_loads_and_is_rewritten_in_the_current_version() {
    use sextant::core::store::column::block_checksums;
    let temp = tempfile::tempdir().unwrap();
    let ids: Vec<String> = (0..700).map(|i| format!("old-{i}")).collect();
    let events: Vec<pb::Event> = ids.iter().enumerate().map(|(i, id)| event(id, "view", "u1", i as i64)).collect();
    checkpoint_of(temp.path(), events).await;

    // Rewrite the checkpoint as version 2 listed it.
    let segments = temp.path().join("segments");
    let path = segments.join("MANIFEST");
    let mut manifest = read_manifest(&segments);
    assert_eq!(manifest["version"], CURRENT_VERSION);
    let mut next = 1_000_000;
    let mut write_column = |bytes: &[u8], len: usize| {
        next += 1;
        let file = format!("{next}.col");
        std::fs::write(segments.join(&file), bytes).unwrap();
        serde_json::json!({"file": file, "len": len, "bytes": bytes.len(), "checksums": block_checksums(bytes)})
    };
    let (mut plain, mut ends, mut anonymous, mut previous) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (row, id) in ids.iter().enumerate() {
        plain.extend_from_slice(id.as_bytes());
        ends.extend_from_slice(&(plain.len() as u64).to_le_bytes());
        // One user, sent without anonymous ids: each row's previous one is the row before.
        anonymous.extend_from_slice(&u32::MAX.to_le_bytes());
        previous.extend_from_slice(&(row as u32).checked_sub(1).unwrap_or(u32::MAX).to_le_bytes());
    }
    let project = &mut manifest["projects"]["p"];
    let columns = project["columns"].as_object_mut().unwrap();
    columns.retain(|name, _| !name.starts_with("cold."));
    columns.insert("id_bytes".into(), write_column(&plain, plain.len()));
    columns.insert("id_end".into(), write_column(&ends, ids.len()));
    columns.insert("anonymous".into(), write_column(&anonymous, ids.len()));
    columns.insert("previous_row".into(), write_column(&previous, ids.len()));
    project.as_object_mut().unwrap().retain(|name, _| !name.starts_with("cold_tail"));
    let mut keys: Vec<u128> = ids.iter().map(|id| sextant::core::store::record::event_key("p", id)).collect();
    keys.sort_unstable();
    let whole: Vec<u8> = keys.iter().flat_map(|k| k.to_le_bytes()).collect();
    let runs = manifest["seen_runs"].as_array_mut().unwrap();
    assert!(!runs.is_empty());
    runs.truncate(1);
    runs[0]["keys"] = write_column(&whole, keys.len());
    manifest["version"] = 2.into();
    std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    check_data_dir(temp.path()).expect("a valid version-2 checkpoint");

    let server = spawn_server(temp.path()).await;
    assert_eq!(exported_ids(&server.channel).await, ids);
    assert_eq!(timeline_ids(&server.channel, "u1").await, ids, "the chain of previous rows");
    let resent = IngestServiceClient::new(server.channel.clone())
        .track(pb::TrackRequest { project: "p".into(), events: vec![event(&ids[3], "view", "u1", 3)], sequence: 1 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((resent.accepted, resent.duplicates), (0, 1), "the whole keys' run still dedupes");
    stop_gracefully(server);

    let manifest = read_manifest(&segments);
    assert_eq!(manifest["version"], CURRENT_VERSION);
    let columns = manifest["projects"]["p"]["columns"].as_object().unwrap();
    assert!(columns.contains_key("cold.blocks") && !columns.contains_key("id_end"));
    assert!((1_000_001..=1_000_005).all(|n| !segments.join(format!("{n}.col")).exists()), "plain files removed");
    let server = spawn_server(temp.path()).await;
    assert_eq!(exported_ids(&server.channel).await, ids);
    stop_gracefully(server);
}

/// A checkpoint of manifest version 3 (16-byte properties: key, type, value; u32 property
/// ends; times as plain i64) loads: every event comes back with the same time and properties
/// of every type, a sum over a property is the same, and the next clean stop writes the
/// current version, encoded properties, u16 ends and packed times, without the old files.
/// (Under 64 rows, every version's blocks of property ends start at 0, so the state file is
/// the same.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_3_checkpoint_loads_with_its_properties_and_times_converted() {
    old_properties_convert(3).await;
}

/// A checkpoint of manifest version 4 (12-byte properties, u16 ends counted in properties)
/// loads the same way, and is written back with its properties encoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_4_checkpoint_loads_with_its_properties_encoded() {
    old_properties_convert(4).await;
}

async fn old_properties_convert(version: u32) {
    use sextant::core::store::column::block_checksums;
    use sextant::core::store::props::RowProps;
    let temp = tempfile::tempdir().unwrap();
    let events: Vec<pb::Event> = (0..60i64)
        .map(|i| {
            let mut props = vec![("price", num(i as f64 + 0.25)), ("tier", text(&format!("t{}", i % 3)))];
            if i % 4 == 0 {
                props.push(("flag", pb::Value { kind: Some(pb::value::Kind::BoolValue(i % 8 == 0)) }));
            }
            if i % 5 == 0 {
                let at = prost_types::Timestamp { seconds: 1_700_000_000 + i, nanos: 0 };
                props.push(("at", pb::Value { kind: Some(pb::value::Kind::TimestampValue(at)) }));
            }
            // Some events carry no property at all.
            let props = if i % 7 == 3 { vec![] } else { props };
            with_props(event(&format!("e{i}"), "buy", &format!("u{}", i % 4), i), &props)
        })
        .collect();
    checkpoint_of(temp.path(), events).await;
    let server = spawn_server(temp.path()).await;
    let (expected, expected_sum) = (exported_events(&server.channel).await, price_sum(&server.channel).await);
    stop_gracefully(server);
    assert_eq!(expected.len(), 60);
    assert!(expected.iter().any(|e| e.properties.len() == 4) && expected.iter().any(|e| e.properties.is_empty()));

    // Rewrite the property columns as the old version listed them: whole properties (16 bytes
    // in version 3, 12 in version 4), each row's end counted in properties (u32 in version 3,
    // u16 in version 4).
    let segments = temp.path().join("segments");
    let mut manifest = read_manifest(&segments);
    assert_eq!(manifest["version"], CURRENT_VERSION);
    let columns = manifest["projects"]["p"]["columns"].as_object_mut().unwrap();
    let file_of = |column: &serde_json::Value| segments.join(column["file"].as_str().unwrap());
    let encoded = std::fs::read(file_of(&columns["props"])).unwrap();
    let encoded = &encoded[..columns["props"]["bytes"].as_u64().unwrap() as usize];
    let ends = std::fs::read(file_of(&columns["prop_end"])).unwrap();
    let (mut props, mut old_ends, mut start, mut count) = (Vec::new(), Vec::new(), 0, 0u32);
    for end in ends[..120].chunks_exact(2).map(|e| usize::from(u16::from_le_bytes([e[0], e[1]]))) {
        for prop in RowProps::new(&encoded[start..end]) {
            match version {
                3 => props.extend_from_slice(bytemuck::bytes_of(&prop.wide())),
                _ => props.extend_from_slice(bytemuck::bytes_of(&prop)),
            }
            count += 1;
        }
        match version {
            3 => old_ends.extend_from_slice(&count.to_le_bytes()),
            _ => old_ends.extend_from_slice(&(count as u16).to_le_bytes()),
        }
        start = end;
    }
    let prop_size = if version == 3 { 16 } else { 12 };
    assert_eq!(props.len(), prop_size * expected.iter().map(|e| e.properties.len()).sum::<usize>());
    for (name, bytes, len, file) in
        [("props", &props, props.len() / prop_size, "1000001.col"), ("prop_end", &old_ends, 60, "1000002.col")]
    {
        std::fs::write(segments.join(file), bytes).unwrap();
        columns[name] =
            serde_json::json!({"file": file, "len": len, "bytes": bytes.len(), "checksums": block_checksums(bytes)});
    }
    if version == 3 {
        // And the times as one plain column (rows arrived in time order, as exported).
        let micros =
            |e: &pb::Event| e.timestamp.as_ref().map_or(0, |t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1000);
        let times: Vec<u8> = expected.iter().flat_map(|e| micros(e).to_le_bytes()).collect();
        columns.retain(|name, _| !name.starts_with("time."));
        std::fs::write(segments.join("1000003.col"), &times).unwrap();
        columns.insert(
            "time".into(),
            serde_json::json!({"file": "1000003.col", "len": 60, "bytes": 480, "checksums": block_checksums(&times)}),
        );
    }
    manifest["version"] = version.into();
    std::fs::write(segments.join("MANIFEST"), serde_json::to_vec(&manifest).unwrap()).unwrap();
    check_data_dir(temp.path()).expect("a valid checkpoint of the old version");

    let server = spawn_server(temp.path()).await;
    assert_eq!(exported_events(&server.channel).await, expected);
    assert_eq!(price_sum(&server.channel).await, expected_sum);
    stop_gracefully(server);
    let manifest = read_manifest(&segments);
    assert_eq!(manifest["version"], CURRENT_VERSION);
    let columns = &manifest["projects"]["p"]["columns"];
    assert_eq!(columns["props"]["bytes"].as_u64().unwrap(), encoded.len() as u64, "the same bytes, encoded again");
    assert_eq!(columns["prop_end"]["bytes"], 120);
    assert_eq!((columns["time"]["bytes"].as_u64(), columns["time.bases"]["len"].as_u64()), (Some(360), Some(1)));
    // (New files are numbered after them: only those the test wrote are old.)
    let old_files = if version == 3 { 1_000_001..=1_000_003 } else { 1_000_001..=1_000_002 };
    assert!(old_files.into_iter().all(|n| !segments.join(format!("{n}.col")).exists()), "old files removed");
    let server = spawn_server(temp.path()).await;
    assert_eq!(exported_events(&server.channel).await, expected);
    stop_gracefully(server);
}

/// The sum of `price` over project "p"'s `buy` events, over all time.
async fn price_sum(channel: &tonic::transport::Channel) -> f64 {
    let mut definition = common::definition("revenue", pb::MetricKind::Sum, "buy");
    definition.property = "price".into();
    let request = pb::QueryMetricRequest {
        project: "p".into(),
        metric: Some(pb::query_metric_request::Metric::Definition(definition)),
        range: Some(pb::TimeRange { from: Some(common::ts(0)), to: Some(common::ts(1_000_000)) }),
        granularity: pb::Granularity::Total as i32,
        ..Default::default()
    };
    let reply = sextant::pb::metric_service_client::MetricServiceClient::new(channel.clone())
        .query_metric(request)
        .await
        .unwrap()
        .into_inner();
    reply.series[0].points[0].value
}

/// The bytes of the log databases (`sled*`) under a data directory.
fn log_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with("sled"))
        .map(|e| common::bytes_under(&e.path()))
        .sum()
}

/// A clean stop checkpoints everything and leaves no dead bytes behind: sled keeps its files'
/// size after the log is truncated, so the stop moves the meta objects to a fresh database,
/// and column files give back the blocks reserved past their values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_leaves_no_dead_bytes_and_loses_nothing() {
    let temp = tempfile::tempdir().unwrap();
    let server = spawn_server(temp.path()).await;
    create_project(&server.channel, "p").await;
    let mut writer = IngestServiceClient::new(server.channel.clone());
    use rand::{Rng, SeedableRng};
    // Random text, so that nothing compresses it away.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    for b in 0..40u64 {
        let events: Vec<pb::Event> = (0..500)
            .map(|i| {
                let text: String =
                    (&mut rng).sample_iter(rand::distr::Alphanumeric).take(400).map(char::from).collect();
                let note = pb::Value { kind: Some(pb::value::Kind::StringValue(text)) };
                with_props(
                    event(&format!("e{b}-{i}"), "view", &format!("u{i}"), (b * 500 + i) as i64),
                    &[("note", note)],
                )
            })
            .collect();
        writer.track(pb::TrackRequest { project: "p".into(), events, sequence: b }).await.unwrap();
    }
    let running = log_bytes(temp.path());
    stop_gracefully(server);
    let stopped = log_bytes(temp.path());
    // 20,000 events of over 400 bytes went through the log: about 8 MB.
    assert!(running > 4 << 20, "the log held the events while running: {running} bytes");
    assert!(stopped < running / 4, "stopped: {stopped} bytes of log, running: {running}");
    // And each checkpointed column file holds its values and nothing reserved past them.
    let segments = temp.path().join("segments");
    let manifest = read_manifest(&segments);
    let mut columns: Vec<&serde_json::Value> = manifest["projects"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|p| p["columns"].as_object().unwrap().values())
        .collect();
    columns.extend(manifest["seen_runs"].as_array().unwrap().iter().flat_map(|run| [&run["keys"], &run["index"]]));
    // Every table column (7 for rows and cold blocks, 8 for string tables) and the run.
    assert!(columns.len() >= 17, "{manifest}");
    for column in columns {
        let size = std::fs::metadata(segments.join(column["file"].as_str().unwrap())).unwrap().len();
        assert_eq!(size, column["bytes"].as_u64().unwrap(), "{column}");
    }
    let server = spawn_server(temp.path()).await;
    let stored = stored_event_counts(&server.channel).await;
    assert_eq!((stored.len(), stored.values().all(|&n| n == 1)), (20_000, true));
    stop_gracefully(server);
}
