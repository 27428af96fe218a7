//! The dashboard over plain HTTP/1.1 on the gRPC port: the routes, the headline values
//! against QueryMetric, the key guard, errors, the live tile and `--web off`.

mod common;

use bytes::Bytes;
use common::{BOOTSTRAP, TestServer, TlsServer, bearer, event, num, text, ts, with_props};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sextant::config::Toggle;
use sextant::pb;
use sextant::pb::metric_service_client::MetricServiceClient;

/// 2026-01-01T00:00:00Z, as an offset for `common::ts` and `common::event`.
const JAN_1: i64 = 0;
const DAY: i64 = 86_400;

async fn get(server: &TestServer, path: &str, key: Option<&str>) -> (u16, String) {
    let addr = server.running.as_ref().unwrap().addr;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut request = http::Request::get(format!("http://{addr}{path}"));
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let response = client.request(request.body(Empty::new()).unwrap()).await.expect("http response");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8(body.to_vec()).expect("utf-8"))
}

/// The `data-value` of the element with `data-metric-key="key"`; None when absent.
fn value_of(html: &str, key: &str) -> Option<String> {
    let marker = format!(r#"data-metric-key="{key}" data-value=""#);
    let start = html.find(&marker)? + marker.len();
    Some(html[start..].split('"').next()?.to_owned())
}

fn tiles(html: &str) -> Vec<&str> {
    html.split(r#"data-tile=""#).skip(1).filter_map(|rest| rest.split('"').next()).collect()
}

fn metric(key: &str, kind: pb::MetricKind, event: &str) -> pb::MetricDefinition {
    pb::MetricDefinition {
        key: key.into(),
        kind: kind as i32,
        selector: Some(pb::EventSelector { event: event.into(), filters: vec![] }),
        ..Default::default()
    }
}

/// Project `shop`: a, b and c start sessions in the first days of 2026, a and c sign up;
/// North Star `dau` with input `signups`.
async fn shop(server: &TestServer, key: &str) {
    server.create_project("shop").await;
    let events = vec![
        event("e1", "session_start", "a", JAN_1 + 3600),
        event("e2", "session_start", "b", JAN_1 + 7200),
        event("e3", "signup", "a", JAN_1 + 7300),
        event("e4", "session_start", "c", JAN_1 + DAY + 60),
        event("e5", "signup", "c", JAN_1 + DAY + 120),
        event("e6", "session_start", "a", JAN_1 + 2 * DAY + 60),
    ];
    let request = pb::TrackRequest { project: "shop".into(), events, sequence: 0 };
    let reply = server.ingest().track(bearer(request, key)).await.unwrap();
    assert_eq!(reply.into_inner().accepted, 6);
    let north_star = pb::MetricDefinition {
        role: pb::MetricRole::NorthStar as i32,
        ..metric("dau", pb::MetricKind::UniqueUsers, "session_start")
    };
    let signups =
        pb::MetricDefinition { parent_keys: vec!["dau".into()], ..metric("signups", pb::MetricKind::Count, "signup") };
    for definition in [north_star, signups] {
        let request = pb::CreateMetricRequest { project: "shop".into(), metric: Some(definition) };
        MetricServiceClient::new(server.channel.clone()).create_metric(bearer(request, key)).await.unwrap();
    }
}

/// QueryMetric GRANULARITY_TOTAL over [from, to) seconds, as the string `data-value` holds.
async fn total(server: &TestServer, key: &str, from: i64, to: i64) -> String {
    let request = pb::QueryMetricRequest {
        project: "shop".into(),
        metric: Some(pb::query_metric_request::Metric::MetricKey(key.into())),
        range: Some(pb::TimeRange { from: Some(ts(from)), to: Some(ts(to)) }),
        granularity: pb::Granularity::Total as i32,
        ..Default::default()
    };
    let reply =
        MetricServiceClient::new(server.channel.clone()).query_metric(bearer(request, BOOTSTRAP)).await.unwrap();
    let point = reply.into_inner().series[0].points[0];
    assert!(point.has_value);
    point.value.to_string()
}

#[tokio::test]
async fn headline_values_equal_query_metric_over_the_pages_range() {
    let server = TestServer::start().await;
    shop(&server, BOOTSTRAP).await;

    let (status, html) = get(&server, "/api/dashboard?project=shop&from=2026-01-01&to=2026-01-08", None).await;
    assert_eq!(status, 200, "{html}");
    assert_eq!(
        tiles(&html),
        ["north-star", "inputs", "goals", "funnel", "retention", "experiments", "anomalies", "attribution"]
    );
    // Hand-computed: 3 distinct users started a session, 2 signed up.
    assert_eq!(value_of(&html, "dau").as_deref(), Some("3"));
    assert_eq!(value_of(&html, "signups").as_deref(), Some("2"));
    assert_eq!(value_of(&html, "dau").unwrap(), total(&server, "dau", JAN_1, JAN_1 + 7 * DAY).await);
    assert_eq!(value_of(&html, "signups").unwrap(), total(&server, "signups", JAN_1, JAN_1 + 7 * DAY).await);
    assert_eq!(html.matches("data-metric-key").count(), 2, "only the headline values carry data-metric-key");
    assert!(!html.contains("data-error"), "{html}");
    // Empty states say what to do.
    assert!(html.contains("No funnel: add &amp;funnel="), "{html}");
    assert!(html.contains("No goals yet"), "{html}");
    assert!(html.contains("No spend recorded"), "{html}");
    // Retention defaults to the North Star's event, first time: a, b on Jan 1 (week 0 of 2026-W01 starts Dec 29).
    assert!(html.contains("First session_start, back with session_start"), "{html}");

    // A range of one day: only Jan 2 (c).
    let (_, html) = get(&server, "/api/dashboard?project=shop&from=2026-01-02&to=2026-01-03", None).await;
    assert_eq!(value_of(&html, "dau").as_deref(), Some("1"));
    assert_eq!(value_of(&html, "signups").as_deref(), Some("1"));

    // The default range: the 30 days ending with the day of the latest event (Jan 3).
    let (_, html) = get(&server, "/api/dashboard?project=shop", None).await;
    assert!(html.contains(r#"name="from" value="2025-12-05""#), "{html}");
    assert!(html.contains(r#"name="to" value="2026-01-04""#), "{html}");
    assert_eq!(value_of(&html, "dau").unwrap(), total(&server, "dau", JAN_1 - 27 * DAY, JAN_1 + 3 * DAY).await);

    // A funnel asked in the URL: a and c signed up, only a came back with a session after.
    let (_, html) =
        get(&server, "/api/dashboard?project=shop&from=2026-01-01&to=2026-01-08&funnel=signup,session_start", None)
            .await;
    assert!(html.contains("signup · 2 users"), "{html}");
    assert!(html.contains("session_start · 1 · 50.0% of previous"), "{html}");

    // The range picker's links keep the project and the funnel.
    assert!(
        html.contains("/?project=shop&amp;from=2026-01-01&amp;to=2026-01-08&amp;funnel=signup%2Csession%5Fstart"),
        "{html}"
    );
}

#[tokio::test]
async fn the_shell_assets_and_errors() {
    let server = TestServer::start().await;
    shop(&server, BOOTSTRAP).await;
    let (status, html) = get(&server, "/", None).await;
    assert_eq!(status, 200);
    assert!(html.contains(r#"<form id="key-prompt" hidden"#) && html.contains("/assets/app.js"), "{html}");
    assert!(tiles(&html).is_empty(), "the shell carries no data");
    let (status, js) = get(&server, "/assets/app.js", None).await;
    assert_eq!(status, 200);
    assert!(js.contains("sessionStorage") && js.contains("authorization"), "{js}");
    assert_eq!(get(&server, "/assets/style.css", None).await.0, 200);

    for (path, code, message) in [
        ("/api/dashboard?project=shop&from=2026-02-30", 400, "from: expected a date YYYY-MM-DD"),
        ("/api/dashboard?project=shop&from=2026-01-08&to=2026-01-01", 400, "to: must be after from"),
        ("/api/dashboard?project=Shop!", 400, "project:"),
        ("/api/dashboard?project=shop&funnel=signup", 400, "funnel: name at least 2 events"),
        ("/api/dashboard?project=nope", 404, "project \"nope\" not found"),
        ("/api/north-star", 400, "project: required"),
        ("/nothing-here", 404, "not found"),
    ] {
        let (status, body) = get(&server, path, None).await;
        assert_eq!((status, body.contains(message)), (code, true), "{path}: {body}");
    }
    // Without a project, an open server lists the projects.
    let (_, html) = get(&server, "/api/dashboard", None).await;
    assert!(html.contains(r#"href="/?project=shop""#), "{html}");
}

#[tokio::test]
async fn the_north_star_tile_refreshes_with_new_events() {
    let server = TestServer::start().await;
    shop(&server, BOOTSTRAP).await;
    let path = "/api/north-star?project=shop&from=2026-01-01&to=2026-01-08";
    let (status, html) = get(&server, path, None).await;
    assert_eq!(status, 200, "{html}");
    assert_eq!(tiles(&html), ["north-star"]);
    assert_eq!(value_of(&html, "dau").as_deref(), Some("3"));
    server.track("shop", vec![event("e7", "session_start", "d", JAN_1 + 4 * DAY)]).await;
    let (_, html) = get(&server, path, None).await;
    assert_eq!(value_of(&html, "dau").as_deref(), Some("4"));
}

async fn api_key(server: &TestServer, project: &str, role: pb::Role) -> String {
    let request = pb::CreateApiKeyRequest { project: project.into(), role: role as i32, ..Default::default() };
    server.projects().create_api_key(bearer(request, BOOTSTRAP)).await.unwrap().into_inner().secret
}

#[tokio::test]
async fn with_auth_a_read_key_of_the_project_is_needed() {
    let server = TestServer::start_secure(|_| {}).await;
    shop(&server, BOOTSTRAP).await;
    server.create_project("other").await;
    let read = api_key(&server, "shop", pb::Role::Read).await;
    let ingest = api_key(&server, "shop", pb::Role::Ingest).await;
    let other = api_key(&server, "other", pb::Role::Read).await;
    let path = "/api/dashboard?project=shop&from=2026-01-01&to=2026-01-08";

    for (key, code, message) in [
        (None, 401, "missing authorization"),
        (Some("sxk_0000000000000000_bad"), 401, ""),
        (Some(ingest.as_str()), 403, "has role INGEST; dashboard needs READ"),
        (Some(other.as_str()), 403, "belongs to project \"other\""),
    ] {
        let (status, body) = get(&server, path, key).await;
        assert_eq!((status, body.contains(message)), (code, true), "{key:?}: {body}");
        assert!(tiles(&body).is_empty(), "nothing renders without a valid key: {body}");
    }
    assert_eq!(get(&server, "/api/north-star?project=shop", None).await.0, 401);

    let (status, html) = get(&server, path, Some(&read)).await;
    assert_eq!(status, 200, "{html}");
    assert_eq!(value_of(&html, "dau").as_deref(), Some("3"));
    assert!(html.contains(r#"id="sign-out""#), "a way to forget the key: {html}");
    // A project key without a project in the URL opens its own project.
    let (_, html) = get(&server, "/api/dashboard?from=2026-01-01&to=2026-01-08", Some(&read)).await;
    assert_eq!(value_of(&html, "signups").as_deref(), Some("2"));
    // The server admin key reads every project.
    assert_eq!(get(&server, path, Some(BOOTSTRAP)).await.0, 200);
    // The shell itself is public: it holds only the prompt.
    assert_eq!(get(&server, "/", None).await.0, 200);
}

#[tokio::test]
async fn the_rate_limit_applies_per_key() {
    // One request, then a token every 100 s: the second request is refused (the first one
    // used its token before the engine said the project does not exist).
    let server = TestServer::start_secure(|config| config.rate_limit = 0.01).await;
    let path = "/api/dashboard?project=shop";
    assert_eq!(get(&server, path, Some(BOOTSTRAP)).await.0, 404);
    let (status, body) = get(&server, path, Some(BOOTSTRAP)).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("rate limit"), "{body}");
}

#[tokio::test]
async fn web_off_leaves_only_grpc() {
    let server = TestServer::start_with(|config| config.web = Toggle::Off).await;
    assert!(server.running.as_ref().unwrap().web_url.is_none());
    let addr = server.running.as_ref().unwrap().addr;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let request = http::Request::get(format!("http://{addr}/")).body(Empty::new()).unwrap();
    assert!(client.request(request).await.is_err(), "no HTTP/1.1 without the dashboard");
    // gRPC still answers.
    server.create_project("shop").await;
    assert_eq!(server.stats("shop").await.events, 0);
}

#[tokio::test]
async fn demo_definitions_fill_the_page_once() {
    let server = TestServer::start().await;
    server.create_project("demo").await;
    let engine = server.running.as_ref().unwrap().engine.clone();
    assert_eq!(sextant::web::demo::seed(engine.clone(), "demo").await.unwrap(), 11);
    assert_eq!(sextant::web::demo::seed(engine, "demo").await.unwrap(), 0, "seeding twice creates nothing");
    let (status, html) = get(&server, "/api/dashboard?project=demo&from=2026-03-01&to=2026-04-01", None).await;
    assert_eq!(status, 200, "{html}");
    for key in ["dau", "revenue", "signups", "purchasers", "signup_to_purchase"] {
        assert!(value_of(&html, key).is_some(), "{key} missing: {html}");
    }
    // Without events the goal has no baseline and the experiment no users: each says so in
    // its own row, and the other tiles render.
    assert!(html.contains(r#"<li data-error="goal &quot;march-signups&quot;: baseline: is zero"#), "{html}");
    assert!(html.contains(r#"<tr data-error="purchasers: variants[0].users must be at least 2"#), "{html}");
    // One purchase (revenue 460) after a paid_search visit: last touch gives paid_search the
    // conversion; its March spend is 1,200 + 1,100, so it cost 2,300 and returned 460 / 2,300.
    let day = 86_400;
    let visit = with_props(event("t1", "page_view", "u1", 60 * day), &[("utm_source", text("paid_search"))]);
    let purchase = with_props(event("p1", "purchase", "u1", 61 * day), &[("revenue", num(460.0))]);
    server.track("demo", vec![visit, purchase]).await;
    let (_, html) = get(&server, "/api/dashboard?project=demo&from=2026-03-01&to=2026-04-01", None).await;
    assert!(html.contains("<td>paid_search</td><td>1</td><td>2,300</td><td>2,300</td><td>0.20×</td>"), "{html}");
    assert!(html.contains("signup · 0 users"), "the CONVERSION metric gives the default funnel: {html}");
}

#[tokio::test]
async fn with_tls_the_page_is_served_over_https() {
    use tower::ServiceExt;
    // The certificate's directory lives as long as `tls`.
    let tls = TlsServer::start(|_| {}).await;
    let (running, channel, port) = (tls.running, tls.channel, tls.port);
    assert_eq!(running.web_url, Some(format!("https://{}/", running.addr)));
    let project = pb::Project { id: "tls".into(), ..Default::default() };
    let mut projects = pb::project_service_client::ProjectServiceClient::new(channel.clone());
    projects.create_project(pb::CreateProjectRequest { project: Some(project) }).await.unwrap();
    // A browser negotiates HTTP/2 over TLS; the page's routes answer it like HTTP/1.1.
    for (path, code, needle) in
        [("/", 200, "key-prompt"), ("/api/dashboard?project=tls", 200, r#"data-tile="north-star""#)]
    {
        let request =
            http::Request::get(format!("https://localhost:{port}{path}")).body(tonic::body::Body::empty()).unwrap();
        let response = channel.clone().oneshot(request).await.expect("https response");
        assert_eq!(response.status().as_u16(), code, "{path}");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(body.contains(needle), "{path}: {body}");
    }
    running.stop().await.unwrap();
}
