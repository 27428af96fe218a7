//! API keys, roles and tenant isolation over every RPC; TLS; limits.

mod common;

use std::time::Duration;

use common::{BOOTSTRAP, TestServer, TlsServer, bearer, event};
use prost::Message;
use sextant::core::auth::Role;
use sextant::grpc::auth::{ACCESS, Access};
use sextant::pb;
use tonic::Code;
use tonic::transport::Channel;

/// One RPC of the protos, called generically: the request is just `project = 1`.
struct Rpc {
    path: String,
    client_streaming: bool,
    server_streaming: bool,
    access: Access,
}

fn every_rpc() -> Vec<Rpc> {
    let set = prost_types::FileDescriptorSet::decode(sextant::pb::FILE_DESCRIPTOR_SET).unwrap();
    let mut rpcs = Vec::new();
    for file in set.file.iter().filter(|f| f.package() == "sextant.v1") {
        for service in &file.service {
            for method in &service.method {
                let access = ACCESS
                    .iter()
                    .find(|(s, _)| *s == service.name())
                    .and_then(|(_, methods)| methods.iter().find(|(m, _)| *m == method.name()))
                    .map(|(_, access)| *access)
                    .unwrap_or_else(|| panic!("{}/{} has no access rule", service.name(), method.name()));
                rpcs.push(Rpc {
                    path: format!("/sextant.v1.{}/{}", service.name(), method.name()),
                    client_streaming: method.client_streaming(),
                    server_streaming: method.server_streaming(),
                    access,
                });
            }
        }
    }
    assert!(rpcs.len() >= 60, "found {} rpcs", rpcs.len());
    rpcs
}

/// Calls `rpc` with a message holding only `project` (field 1, as every request has it), and
/// returns the status of the call or of its first streamed reply.
async fn call(channel: &Channel, rpc: &Rpc, project: &str, key: Option<&str>) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.map_err(|e| tonic::Status::unknown(e.to_string()))?;
    let path = http::uri::PathAndQuery::try_from(rpc.path.clone()).unwrap();
    let codec = tonic_prost::ProstCodec::<pb::GetProjectRequest, pb::RevokeApiKeyResponse>::default();
    let message = pb::GetProjectRequest { project: project.into() };
    fn request<T>(message: T, key: Option<&str>) -> tonic::Request<T> {
        match key {
            Some(key) => bearer(message, key),
            None => tonic::Request::new(message),
        }
    }
    match (rpc.client_streaming, rpc.server_streaming) {
        (false, false) => grpc.unary(request(message, key), path, codec).await.map(|_| ()),
        (false, true) => {
            let mut stream = grpc.server_streaming(request(message, key), path, codec).await?.into_inner();
            stream.message().await.map(|_| ())
        }
        (true, _) => {
            let outbound = tokio_stream::iter(vec![message]);
            let mut stream = grpc.streaming(request(outbound, key), path, codec).await?.into_inner();
            stream.message().await.map(|_| ())
        }
    }
}

fn code_of(result: &Result<(), tonic::Status>) -> Code {
    result.as_ref().err().map_or(Code::Ok, |s| s.code())
}

struct Keys {
    ingest: String,
    read: String,
    admin: String,
}

async fn create_key(server: &TestServer, project: &str, role: pb::Role) -> (pb::ApiKey, String) {
    let request =
        pb::CreateApiKeyRequest { project: project.into(), role: role as i32, name: "k".into(), expire_time: None };
    let reply = server.projects().create_api_key(bearer(request, BOOTSTRAP)).await.expect("key").into_inner();
    (reply.key.unwrap(), reply.secret)
}

async fn secure_projects(server: &TestServer) -> Keys {
    for id in ["a", "b"] {
        server.create_project(id).await;
    }
    Keys {
        ingest: create_key(server, "a", pb::Role::Ingest).await.1,
        read: create_key(server, "a", pb::Role::Read).await.1,
        admin: create_key(server, "a", pb::Role::Admin).await.1,
    }
}

/// A denial must come from the access checks: a handler that forgot `authorize` is caught by
/// the guard's fail-closed net, which says so, and that counts as a failure here.
fn assert_denied(result: &Result<(), tonic::Status>, what: &str) {
    match result {
        Err(status) if status.code() == Code::PermissionDenied => {
            assert!(!status.message().contains("did not check"), "{what}: handler forgot authorize: {status:?}")
        }
        // Not built yet (generated stubs): no data is touched.
        Err(status) if status.code() == Code::Unimplemented => {}
        other => panic!("{what}: expected PERMISSION_DENIED, got {other:?}"),
    }
}

fn assert_allowed(result: &Result<(), tonic::Status>, what: &str) {
    let code = code_of(result);
    assert!(
        !matches!(code, Code::PermissionDenied | Code::Unauthenticated),
        "{what}: expected the access checks to pass, got {result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_checks_key_role_and_project() {
    let server = TestServer::start_secure(|_| {}).await;
    let keys = secure_projects(&server).await;
    let (_, other_admin) = create_key(&server, "b", pb::Role::Admin).await;
    let roles = [(Role::Ingest, &keys.ingest), (Role::Read, &keys.read), (Role::Admin, &keys.admin)];
    for rpc in every_rpc() {
        let path = &rpc.path;
        for key in [None, Some("sxk_0123456789abcdef_00"), Some("not-a-key"), Some("")] {
            let result = call(&server.channel, &rpc, "a", key).await;
            assert_eq!(code_of(&result), Code::Unauthenticated, "{path} with key {key:?}: {result:?}");
        }
        assert_allowed(&call(&server.channel, &rpc, "a", Some(BOOTSTRAP)).await, &format!("{path} as server admin"));
        for (role, key) in roles {
            let own = call(&server.channel, &rpc, "a", Some(key)).await;
            let other = call(&server.channel, &rpc, "b", Some(key)).await;
            let what = format!("{path} with a {} key of project a", role.name());
            match rpc.access {
                Access::Open => unreachable!("sextant.v1 has no open rpc"),
                Access::Server => {
                    assert_denied(&own, &what);
                    assert_denied(&other, &what);
                }
                Access::Project(needed) if role.allows(needed) => {
                    assert_allowed(&own, &format!("{what} on a"));
                    assert_denied(&other, &format!("{what} on b"));
                }
                Access::Project(_) => {
                    assert_denied(&own, &format!("{what} on a"));
                    assert_denied(&other, &format!("{what} on b"));
                }
                // Stateless calls need the role, not the project.
                Access::Stateless(needed) if role.allows(needed) => {
                    assert_allowed(&own, &what);
                    assert_allowed(&call(&server.channel, &rpc, "", Some(key)).await, &what);
                }
                Access::Stateless(_) => assert_denied(&own, &what),
            }
        }
        if let Access::Project(_) = rpc.access {
            assert_denied(
                &call(&server.channel, &rpc, "a", Some(&other_admin)).await,
                &format!("{path}: b's key on a"),
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_follow_the_spec() {
    let server = TestServer::start_secure(|_| {}).await;
    let keys = secure_projects(&server).await;
    let track = |key: &str| {
        let request = pb::TrackRequest { project: "a".into(), events: vec![event("e1", "view", "u1", 0)], sequence: 0 };
        let mut client = server.ingest();
        let request = bearer(request, key);
        async move { client.track(request).await.map(|r| r.into_inner()) }
    };
    let stats = |key: &str| {
        let mut client = server.projects();
        let request = bearer(pb::GetProjectStatsRequest { project: "a".into() }, key);
        async move { client.get_project_stats(request).await.map(|r| r.into_inner()) }
    };
    let delete = |key: &str| {
        let mut client = server.users();
        let request = bearer(pb::DeleteUserRequest { project: "a".into(), user_id: "u1".into() }, key);
        async move { client.delete_user(request).await.map(|r| r.into_inner()) }
    };
    // INGEST writes events and nothing else; READ reads; ADMIN does both and deletes.
    assert_eq!(track(&keys.ingest).await.unwrap().accepted, 1);
    assert_eq!(stats(&keys.ingest).await.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(track(&keys.read).await.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(stats(&keys.read).await.unwrap().events, 1);
    assert_eq!(delete(&keys.read).await.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(delete(&keys.ingest).await.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(track(&keys.admin).await.unwrap().duplicates, 1);
    assert_eq!(stats(&keys.admin).await.unwrap().events, 1);
    assert_eq!(delete(&keys.admin).await.unwrap().events_deleted, 1);
    // Only the server admin creates projects and keys, and lists projects.
    let project = pb::Project { id: "c".into(), ..Default::default() };
    let denied = server
        .projects()
        .create_project(bearer(pb::CreateProjectRequest { project: Some(project) }, &keys.admin))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let request = pb::CreateApiKeyRequest { project: "a".into(), role: pb::Role::Admin as i32, ..Default::default() };
    let denied = server.projects().create_api_key(bearer(request, &keys.admin)).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    // Health needs no key.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel.clone());
    health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.expect("health is open");
    // The stream checks every batch's project.
    let batches = vec![
        pb::TrackRequest { project: "a".into(), events: vec![event("s1", "view", "u1", 0)], sequence: 1 },
        pb::TrackRequest { project: "b".into(), events: vec![event("s2", "view", "u1", 0)], sequence: 2 },
    ];
    let mut acks =
        server.ingest().track_stream(bearer(tokio_stream::iter(batches), &keys.ingest)).await.unwrap().into_inner();
    assert_eq!(acks.message().await.unwrap().unwrap().sequence, 1);
    assert_eq!(acks.message().await.unwrap_err().code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_listed_revoked_at_once_expire_and_survive_restart() {
    let server = TestServer::start_secure(|_| {}).await;
    let keys = secure_projects(&server).await;
    let stats = |server: &TestServer, key: &str| {
        let mut client = server.projects();
        let request = bearer(pb::GetProjectStatsRequest { project: "a".into() }, key);
        async move { client.get_project_stats(request).await.map(|r| r.into_inner()) }
    };
    let listed = server
        .projects()
        .list_api_keys(bearer(pb::ListApiKeysRequest { project: "a".into(), ..Default::default() }, &keys.admin))
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|k| !k.revoked && k.created_time.is_some() && k.expire_time.is_none()));
    let read_id = keys.read.split('_').nth(1).unwrap().to_owned();
    assert!(listed.iter().any(|k| k.id == read_id && k.role == pb::Role::Read as i32));

    stats(&server, &keys.read).await.expect("read key works");
    server
        .projects()
        .revoke_api_key(bearer(pb::RevokeApiKeyRequest { project: "a".into(), key_id: read_id.clone() }, &keys.admin))
        .await
        .unwrap();
    let revoked = stats(&server, &keys.read).await.unwrap_err();
    assert_eq!(revoked.code(), Code::Unauthenticated);
    assert!(revoked.message().contains("revoked"), "{revoked:?}");
    // A key of another project cannot revoke a's keys; unknown ids are NOT_FOUND.
    let missing = server
        .projects()
        .revoke_api_key(bearer(pb::RevokeApiKeyRequest { project: "a".into(), key_id: "nope".into() }, &keys.admin))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    // A tampered secret with a valid id is unknown.
    let mut tampered = keys.admin.clone();
    tampered.pop();
    tampered.push(if keys.admin.ends_with('0') { '1' } else { '0' });
    assert_eq!(stats(&server, &tampered).await.unwrap_err().code(), Code::Unauthenticated);

    // Expiry.
    let soon = sextant::grpc::convert::timestamp(server.clock.now() + 1_500_000);
    let request = pb::CreateApiKeyRequest {
        project: "a".into(),
        role: pb::Role::Read as i32,
        name: "temp".into(),
        expire_time: Some(soon),
    };
    let expiring = server.projects().create_api_key(bearer(request, BOOTSTRAP)).await.unwrap().into_inner();
    stats(&server, &expiring.secret).await.expect("not expired yet");
    server.clock.advance(Duration::from_millis(1600));
    let expired = stats(&server, &expiring.secret).await.unwrap_err();
    assert_eq!(expired.code(), Code::Unauthenticated);
    assert!(expired.message().contains("expired"), "{expired:?}");
    let past = sextant::grpc::convert::timestamp(server.clock.now() - 1);
    let request = pb::CreateApiKeyRequest {
        project: "a".into(),
        role: pb::Role::Read as i32,
        name: String::new(),
        expire_time: Some(past),
    };
    let invalid = server.projects().create_api_key(bearer(request, BOOTSTRAP)).await.unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);
    assert_eq!(common::violated_fields(&invalid), vec!["expire_time"]);
    let request = pb::CreateApiKeyRequest { project: "a".into(), ..Default::default() };
    let invalid = server.projects().create_api_key(bearer(request, BOOTSTRAP)).await.unwrap_err();
    assert_eq!(common::violated_fields(&invalid), vec!["role"]);

    // Keys and revocations are durable.
    let server = server.restart_with(|c| c.bootstrap_key = Some(BOOTSTRAP.into())).await;
    stats(&server, &keys.admin).await.expect("admin key after restart");
    assert_eq!(stats(&server, &keys.read).await.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(stats(&server, "wrong-bootstrap-key-123").await.unwrap_err().code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_round_trip_with_a_self_signed_certificate() {
    // The certificate's directory lives as long as `tls`.
    let tls = TlsServer::start(|config| config.bootstrap_key = Some(BOOTSTRAP.into())).await;
    let (running, channel, port) = (tls.running, tls.channel, tls.port);
    let mut projects = pb::project_service_client::ProjectServiceClient::new(channel.clone());
    let project = pb::Project { id: "tls".into(), ..Default::default() };
    projects.create_project(bearer(pb::CreateProjectRequest { project: Some(project) }, BOOTSTRAP)).await.unwrap();
    let mut ingest = pb::ingest_service_client::IngestServiceClient::new(channel);
    let request = pb::TrackRequest { project: "tls".into(), events: vec![event("t1", "view", "u", 0)], sequence: 0 };
    assert_eq!(ingest.track(bearer(request, BOOTSTRAP)).await.unwrap().into_inner().accepted, 1);
    let stats =
        projects.get_project_stats(bearer(pb::GetProjectStatsRequest { project: "tls".into() }, BOOTSTRAP)).await;
    assert_eq!(stats.unwrap().into_inner().events, 1);

    // A plaintext client gets nowhere.
    let plain =
        Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect_timeout(Duration::from_secs(2));
    if let Ok(channel) = plain.connect().await {
        let mut client = pb::project_service_client::ProjectServiceClient::new(channel);
        let request = bearer(pb::GetProjectStatsRequest { project: "tls".into() }, BOOTSTRAP);
        assert!(client.get_project_stats(request).await.is_err(), "plaintext must not be served");
    }
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_resource_exhausted_with_retry_info() {
    use tonic_types::StatusExt;
    let server = TestServer::start_secure(|c| c.rate_limit = 5.0).await;
    let keys = secure_projects(&server).await;
    // 20 calls at once: a bucket of 5 that refills at 5/s is empty for most of them however
    // long each call takes (GetProjectStats on ClickHouse takes a while).
    let calls = (0..20).map(|_| {
        let request = bearer(pb::GetProjectStatsRequest { project: "a".into() }, &keys.read);
        let mut client = server.projects();
        async move { client.get_project_stats(request).await }
    });
    let answers = futures::future::join_all(calls).await;
    let status = answers.into_iter().find_map(Result::err).expect("the limit is hit within 20 calls");
    assert_eq!(status.code(), Code::ResourceExhausted);
    let retry = status.get_details_retry_info().expect("RetryInfo").retry_delay.expect("delay");
    assert!(retry > Duration::ZERO && retry <= Duration::from_millis(200), "{retry:?}");
    // Another key has its own bucket.
    let request = bearer(pb::GetProjectStatsRequest { project: "a".into() }, &keys.admin);
    server.projects().get_project_stats(request).await.expect("own bucket");
    tokio::time::sleep(retry).await;
    let request = bearer(pb::GetProjectStatsRequest { project: "a".into() }, &keys.read);
    server.projects().get_project_stats(request).await.expect("refilled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_limit_and_deadlines() {
    let server = TestServer::start_with(|c| c.max_streams = 1).await;
    server.create_project("p").await;
    // One stream open: a second one is RESOURCE_EXHAUSTED until the first ends.
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::TrackRequest>(1);
    let mut first =
        server.ingest().track_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    tx.send(pb::TrackRequest { project: "p".into(), events: vec![event("x1", "view", "u", 0)], sequence: 1 })
        .await
        .unwrap();
    assert_eq!(first.message().await.unwrap().unwrap().sequence, 1);
    let second = server.ingest().track_stream(tokio_stream::iter(Vec::<pb::TrackRequest>::new())).await;
    let status = match second {
        Err(status) => status,
        Ok(response) => response.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    drop(tx);
    assert!(first.message().await.unwrap().is_none());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third =
        server.ingest().track_stream(tokio_stream::iter(Vec::<pb::TrackRequest>::new())).await.unwrap().into_inner();
    assert!(third.message().await.unwrap().is_none(), "the permit came back");

    // The client's grpc-timeout bounds the call on the server too (a unit test in
    // grpc::auth checks the DEADLINE_EXCEEDED reply; tonic's client also times out locally).
    let mut request = tonic::Request::new(pb::GetProjectStatsRequest { project: "p".into() });
    request.set_timeout(Duration::from_secs(10));
    server.projects().get_project_stats(request).await.expect("a generous deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_time_budget_is_deadline_exceeded() {
    // A budget of 1 µs: a call that needs more (5,000 events to validate, encode and flush)
    // ends with DEADLINE_EXCEEDED. (grpc::auth tests the timing against a slow service.)
    let server = TestServer::start().await;
    server.create_project("p").await;
    let server = server.restart_with(|c| c.query_timeout_secs = 0.000_001).await;
    let events: Vec<pb::Event> = (0..5000).map(|i| event(&format!("d{i}"), "view", &format!("u{i}"), i)).collect();
    let request = pb::TrackRequest { project: "p".into(), events, sequence: 0 };
    let status = server.ingest().track(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("time budget"), "{status:?}");
    // Compact is not a query: it returns when done, past the budget (its fsyncs alone take
    // longer than 1 µs).
    let compacted = server.admin().compact(pb::CompactRequest { project: "p".into() }).await.unwrap().into_inner();
    assert!(compacted.bytes_before > 0 && compacted.bytes_after > 0, "{compacted:?}");
}

/// Keys made and revoked at once, and one project created by several calls at once: every
/// creation and revocation sticks, in the server's answers and after a restart, and exactly one
/// of the project's creations succeeds (each is stored before the shared map is locked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_key_and_project_changes_all_stick() {
    let server = TestServer::start_secure(|_| {}).await;
    let creations = (0..8).map(|_| {
        let mut projects = server.projects();
        let project = pb::Project { id: "same".into(), ..Default::default() };
        tokio::spawn(async move {
            projects.create_project(bearer(pb::CreateProjectRequest { project: Some(project) }, BOOTSTRAP)).await
        })
    });
    let mut codes: Vec<Code> = Vec::new();
    for creation in creations.collect::<Vec<_>>() {
        codes.push(creation.await.unwrap().map_or_else(|status| status.code(), |_| Code::Ok));
    }
    assert_eq!(codes.iter().filter(|&&c| c == Code::Ok).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|&&c| c == Code::AlreadyExists).count(), 7, "{codes:?}");

    let made = (0..8).map(|n| {
        let mut projects = server.projects();
        let request = pb::CreateApiKeyRequest {
            project: "same".into(),
            role: pb::Role::Read as i32,
            name: format!("k{n}"),
            expire_time: None,
        };
        tokio::spawn(async move { projects.create_api_key(bearer(request, BOOTSTRAP)).await.unwrap().into_inner() })
    });
    let mut keys = Vec::new();
    for key in made.collect::<Vec<_>>() {
        keys.push(key.await.unwrap());
    }
    let revoked: Vec<String> = keys.iter().step_by(2).map(|k| k.key.as_ref().unwrap().id.clone()).collect();
    let revocations = revoked.iter().map(|id| {
        let mut projects = server.projects();
        let request = pb::RevokeApiKeyRequest { project: "same".into(), key_id: id.clone() };
        tokio::spawn(async move { projects.revoke_api_key(bearer(request, BOOTSTRAP)).await.unwrap() })
    });
    for revocation in revocations.collect::<Vec<_>>() {
        revocation.await.unwrap();
    }

    let mut server = server;
    for round in 0..2 {
        if round == 1 {
            server = server.restart_with(|c| c.bootstrap_key = Some(BOOTSTRAP.into())).await;
        }
        let request = pb::ListApiKeysRequest { project: "same".into(), ..Default::default() };
        let listed = server.projects().list_api_keys(bearer(request, BOOTSTRAP)).await.unwrap().into_inner().keys;
        let mut flags: Vec<(String, bool)> = listed.into_iter().map(|k| (k.id, k.revoked)).collect();
        flags.sort();
        let mut want: Vec<(String, bool)> = keys
            .iter()
            .map(|k| k.key.as_ref().unwrap().id.clone())
            .map(|id| (id.clone(), revoked.contains(&id)))
            .collect();
        want.sort();
        assert_eq!(flags, want);
        for key in &keys {
            let request = bearer(pb::GetProjectRequest { project: "same".into() }, &key.secret);
            let answer = server.projects().get_project(request).await;
            let id = &key.key.as_ref().unwrap().id;
            assert_eq!(
                answer.map_or_else(|s| s.code(), |_| Code::Ok),
                if revoked.contains(id) { Code::Unauthenticated } else { Code::Ok },
                "{id}"
            );
        }
    }
}
