//! An acked event survives `kill -9`: a real server process is killed right after acks,
//! restarted on the same data dir, and every acked event must be there exactly once.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::event;
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

async fn spawn_server(dir: &Path) -> Process {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sextant"))
        .args(["serve", "--addr", "127.0.0.1:0", "--metrics-addr", "off", "--data-dir"])
        .arg(dir)
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

    let mut users = UserServiceClient::new(server.channel.clone());
    let mut stream = users
        .export_events(pb::ExportEventsRequest { project: "p".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let mut stored: HashMap<String, usize> = HashMap::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        for e in chunk.events {
            *stored.entry(e.event_id).or_default() += 1;
        }
    }
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
    let mut child = server.child;
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert_eq!(exit.code(), Some(0), "graceful exit");

    let server = spawn_server(temp.path()).await;
    let stats = ProjectServiceClient::new(server.channel.clone())
        .get_project_stats(pb::GetProjectStatsRequest { project: "p".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.events, 1);
    kill_9(server);
}
