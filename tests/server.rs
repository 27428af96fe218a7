//! Projects, operations endpoints and persistence across restarts.

mod common;

use common::*;
use sextant::pb;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn project_lifecycle_and_bad_input() {
    let server = TestServer::start().await;
    let mut projects = server.projects();
    let created = projects
        .create_project(pb::CreateProjectRequest {
            project: Some(pb::Project { id: "shop".into(), timezone: "Europe/Berlin".into(), ..Default::default() }),
        })
        .await
        .unwrap()
        .into_inner()
        .project
        .unwrap();
    assert_eq!((created.name.as_str(), created.timezone.as_str()), ("shop", "Europe/Berlin"));
    assert_eq!(created.enforcement, pb::Enforcement::Allow as i32);

    let status = projects
        .create_project(pb::CreateProjectRequest {
            project: Some(pb::Project { id: "shop".into(), ..Default::default() }),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    for (project, field) in [
        (pb::Project { id: "Shop!".into(), ..Default::default() }, "project.id"),
        (pb::Project { id: "x".into(), timezone: "Mars/Base".into(), ..Default::default() }, "project.timezone"),
        (pb::Project { id: "x".into(), enforcement: 9, ..Default::default() }, "project.enforcement"),
    ] {
        let status = projects.create_project(pb::CreateProjectRequest { project: Some(project) }).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(violated_fields(&status), vec![field]);
    }
    let status = projects.create_project(pb::CreateProjectRequest { project: None }).await.unwrap_err();
    assert_eq!(violated_fields(&status), vec!["project"]);

    let updated = projects
        .update_project(pb::UpdateProjectRequest {
            project: "shop".into(),
            update: Some(pb::Project { name: "The Shop".into(), retention_days: 30, ..Default::default() }),
            update_mask: vec![],
        })
        .await
        .unwrap()
        .into_inner()
        .project
        .unwrap();
    assert_eq!(
        (updated.name.as_str(), updated.timezone.as_str(), updated.retention_days),
        ("The Shop", "Europe/Berlin", 30)
    );
    let status = projects
        .update_project(pb::UpdateProjectRequest {
            project: "shop".into(),
            update: Some(pb::Project { timezone: "Nowhere/City".into(), ..Default::default() }),
            update_mask: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), vec!["update.timezone"]);
    let status = projects
        .update_project(pb::UpdateProjectRequest {
            project: "shop".into(),
            update: Some(pb::Project::default()),
            update_mask: vec!["colour".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), vec!["update_mask"]);

    server.create_project("alpha").await;
    let listed = projects.list_projects(pb::ListProjectsRequest { page_size: 1, ..Default::default() }).await.unwrap();
    let listed = listed.into_inner();
    assert_eq!(listed.projects.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), vec!["alpha"]);
    let rest = projects
        .list_projects(pb::ListProjectsRequest {
            page_size: 1,
            page_token: listed.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.projects.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), vec!["shop"]);

    let status = projects.get_project(pb::GetProjectRequest { project: "ghost".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    // Settings persist.
    let server = server.restart().await;
    let again = server.projects().get_project(pb::GetProjectRequest { project: "shop".into() }).await.unwrap();
    assert_eq!(again.into_inner().project.unwrap(), updated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_match_after_restart() {
    let server = TestServer::start().await;
    server.create_project("p").await;
    let events: Vec<pb::Event> = (0..1000)
        .map(|i| event(&format!("e{i}"), if i % 4 == 0 { "buy" } else { "view" }, &format!("u{}", i % 37), i))
        .collect();
    for chunk in events.chunks(300) {
        server.track("p", chunk.to_vec()).await;
    }
    let before = server.stats("p").await;
    assert_eq!(before.events, 1000);
    assert_eq!(before.users, 37);
    assert_eq!(
        before.events_by_name,
        vec![
            pb::EventNameCount { name: "buy".into(), events: 250 },
            pb::EventNameCount { name: "view".into(), events: 750 }
        ]
    );
    let exported = server.export("p").await;
    let server = server.restart().await;
    let after = server.stats("p").await;
    assert_eq!(
        pb::GetProjectStatsResponse { bytes_on_disk: 0, ..after },
        pb::GetProjectStatsResponse { bytes_on_disk: 0, ..before }
    );
    assert_eq!(server.export("p").await, exported);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflection_and_metrics() {
    let server = TestServer::start().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel.clone());
    let reply = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_eq!(reply.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(server.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection.server_reflection_info(tokio_stream::iter(vec![request])).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = replies.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in [
        "sextant.v1.IngestService",
        "sextant.v1.MetricService",
        "sextant.v1.ExperimentService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&service.to_string()), "{service} in {names:?}");
    }

    server.create_project("p").await;
    server.track("p", vec![event("a", "x", "u", 0), event("a", "x", "u", 0), event("", "", "u", 0)]).await;
    let mut cohorts = server.cohorts();
    let missing = pb::GetCohortRequest { project: "p".into(), id: "ghost".into() };
    assert_eq!(cohorts.get_cohort(missing).await.unwrap_err().code(), Code::NotFound);
    let addr = server.running.as_ref().unwrap().metrics_addr.unwrap();
    let body = http_get(addr, "/metrics").await;
    for line in [
        "sextant_events_accepted_total",
        "sextant_events_duplicate_total",
        "sextant_events_rejected_total",
        "sextant_ack_latency_seconds_bucket",
        "sextant_requests_total{method=\"Track\",code=\"0\"}",
        "sextant_requests_total{method=\"GetCohort\",code=\"5\"}",
    ] {
        assert!(body.contains(line), "{line} missing from:\n{body}");
    }
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes()).await.unwrap();
    let mut body = String::new();
    socket.read_to_string(&mut body).await.unwrap();
    body
}
