//! `serve --storage clickhouse` (issue 15): several nodes on one ClickHouse database serve the
//! same projects, and a generated project answers as on the embedded engine. Needs the cluster
//! of `scripts/clickhouse-cluster.sh` (`SEXTANT_CLICKHOUSE_URL`); without it the tests say so
//! and pass, unless `SEXTANT_REQUIRE_CLICKHOUSE=1` (set by `scripts/test.sh`).

mod common;

use common::*;
use sextant::cli::r#gen::{GenOptions, generate};
use sextant::cli::load::{ClientArgs, LoadArgs};
use sextant::config::StorageKind;
use sextant::core::analysis::funnel::FunnelQuery;
use sextant::core::analysis::retention::{RetentionQuery, TableShape};
use sextant::core::cohort::{Behavioural, Cohort, Condition, ConditionGroup, Definition, TimeFrame};
use sextant::core::engine::dashboard::DashboardRequest;
use sextant::core::filter::{EventSelector, Filter, FilterOp};
use sextant::core::goal::definition::Goal;
use sextant::core::goal::progress::Target;
use sextant::core::metric::definition::{MetricTarget, Period};
use sextant::core::metric::evaluate::{Compare, TreeNode};
use sextant::core::metric::scan::MetricQuery;
use sextant::core::model::Value;
use sextant::core::page::PageRequest;
use sextant::core::time::Granularity;
use sextant::pb;
use tonic::Code;

fn cluster() -> Option<String> {
    match std::env::var("SEXTANT_CLICKHOUSE_URL") {
        Ok(urls) if !urls.is_empty() => Some(urls),
        _ => {
            let required = std::env::var("SEXTANT_REQUIRE_CLICKHOUSE").is_ok_and(|v| v == "1");
            assert!(!required, "SEXTANT_REQUIRE_CLICKHOUSE=1 but SEXTANT_CLICKHOUSE_URL is not set");
            eprintln!("skipped: no SEXTANT_CLICKHOUSE_URL (scripts/clickhouse-cluster.sh up DIR prints one)");
            None
        }
    }
}

/// Two nodes on one fresh database.
async fn two_nodes(urls: &str) -> (TestServer, TestServer, tempfile::TempDir) {
    let shared = tempfile::tempdir().unwrap();
    let database = database_for(shared.path());
    let a = TestServer::start_secure(|c| on_clickhouse(c, urls, &database)).await;
    let b = TestServer::start_secure(|c| on_clickhouse(c, urls, &database)).await;
    (a, b, shared)
}

async fn metric_total(server: &TestServer, key: &str, metric: &str) -> f64 {
    let request = pb::QueryMetricRequest {
        project: "p".into(),
        metric: Some(pb::query_metric_request::Metric::MetricKey(metric.into())),
        range: Some(pb::TimeRange { from: Some(ts(0)), to: Some(ts(86_400)) }),
        granularity: pb::Granularity::Total as i32,
        ..Default::default()
    };
    let reply = server.metrics().query_metric(bearer(request, key)).await.unwrap().into_inner();
    reply.series[0].points[0].value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_projects_definitions_keys_events_and_deletions() {
    let Some(urls) = cluster() else { return };
    let (a, b, _shared) = two_nodes(&urls).await;
    // A project and a key made on one node work on the other at once.
    let project = pb::Project { id: "p".into(), ..Default::default() };
    a.projects().create_project(bearer(pb::CreateProjectRequest { project: Some(project) }, BOOTSTRAP)).await.unwrap();
    let request = pb::CreateApiKeyRequest { project: "p".into(), role: pb::Role::Admin as i32, ..Default::default() };
    let reply = a.projects().create_api_key(bearer(request, BOOTSTRAP)).await.unwrap().into_inner();
    let (key_id, key) = (reply.key.unwrap().id, reply.secret);
    let track = |server: &TestServer, events: Vec<pb::Event>| {
        let mut client = server.ingest();
        let key = key.clone();
        async move {
            let request = pb::TrackRequest { project: "p".into(), events, sequence: 0 };
            client.track(bearer(request, &key)).await.map(|r| r.into_inner())
        }
    };
    let signups: Vec<pb::Event> =
        (0..3).map(|i| event(&format!("s{i}"), "signup", &format!("u{i}"), 60 * i64::from(i))).collect();
    let reply = track(&b, signups.clone()).await.unwrap();
    assert_eq!((reply.accepted, reply.duplicates), (3, 0));
    // The same ids through the other node are duplicates: exactly once across nodes.
    let reply = track(&a, signups).await.unwrap();
    assert_eq!((reply.accepted, reply.duplicates), (0, 3));

    // A metric made on one node answers on the other; a new version shows on the first.
    let create = pb::CreateMetricRequest {
        project: "p".into(),
        metric: Some(definition("signups", pb::MetricKind::Count, "signup")),
    };
    a.metrics().create_metric(bearer(create, &key)).await.unwrap();
    assert_eq!(metric_total(&b, &key, "signups").await, 3.0);
    let mut updated = definition("signups", pb::MetricKind::UniqueUsers, "signup");
    updated.name = "Signed-up users".into();
    let update = pb::UpdateMetricRequest { project: "p".into(), metric: Some(updated) };
    b.metrics().update_metric(bearer(update, &key)).await.unwrap();
    let get = pb::GetMetricRequest { project: "p".into(), key: "signups".into(), version: 0 };
    let got = a.metrics().get_metric(bearer(get, &key)).await.unwrap().into_inner();
    assert_eq!(got.metric.unwrap().version, 2);

    // Traits and an alias through one node, the profile through the other.
    let update =
        pb::UserUpdate { user_id: "u0".into(), set: [("plan".to_string(), text("pro"))].into(), ..Default::default() };
    let identify = pb::IdentifyRequest { project: "p".into(), users: vec![update] };
    a.ingest().identify(bearer(identify, &key)).await.unwrap();
    let anonymous = pb::Event { anonymous_id: "anon".into(), user_id: String::new(), ..event("v0", "view", "", 30) };
    track(&a, vec![anonymous]).await.unwrap();
    let alias = pb::AliasRequest { project: "p".into(), anonymous_id: "anon".into(), user_id: "u0".into() };
    b.ingest().alias(bearer(alias, &key)).await.unwrap();
    let get_user = |server: &TestServer| {
        let mut client = server.users();
        let key = key.clone();
        async move {
            let request = pb::GetUserRequest { project: "p".into(), user_id: "u0".into() };
            client.get_user(bearer(request, &key)).await.map(|r| r.into_inner().user.unwrap())
        }
    };
    let user = get_user(&a).await.unwrap();
    assert_eq!((user.events, user.anonymous_ids.clone()), (2, vec!["anon".to_string()]));
    assert_eq!(user.traits.get("plan"), Some(&text("pro")));

    // A deletion on one node holds on the other, and counts the erased events.
    let delete = pb::DeleteUserRequest { project: "p".into(), user_id: "u0".into() };
    let erased = b.users().delete_user(bearer(delete, &key)).await.unwrap().into_inner();
    assert_eq!(erased.events_deleted, 2);
    assert_eq!(get_user(&a).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(metric_total(&a, &key, "signups").await, 2.0, "u1 and u2 are left");

    // A key revoked on one node is refused by the other.
    let revoke = pb::RevokeApiKeyRequest { project: "p".into(), key_id };
    a.projects().revoke_api_key(bearer(revoke, BOOTSTRAP)).await.unwrap();
    let refused = track(&b, vec![event("late", "signup", "u9", 0)]).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    // Both nodes stop; a new one finds everything.
    for node in [a, b] {
        node.running.unwrap().stop().await.unwrap();
    }
    let database = database_for(_shared.path());
    let c = TestServer::start_secure(|config| on_clickhouse(config, &urls, &database)).await;
    let request = bearer(pb::GetProjectStatsRequest { project: "p".into() }, BOOTSTRAP);
    let stats = c.projects().get_project_stats(request).await.unwrap().into_inner();
    assert_eq!((stats.events, stats.users), (2, 2));
}

/// The same generated data through `sextant load` into the embedded engine and into the
/// cluster: the dashboard (North Star, inputs, goals, funnel, retention, experiments,
/// anomalies, attribution), project stats, exports and profiles are equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_project_answers_as_on_the_embedded_engine() {
    let Some(urls) = cluster() else { return };
    let data = tempfile::tempdir().unwrap();
    let options = GenOptions { users: 300, days: 30, seed: 7, out: data.path().to_path_buf(), ..GenOptions::default() };
    generate(&options).unwrap();
    // The embedded engine even in test.sh's pass that puts every other server on the cluster.
    let embedded = TestServer::start_with(|c| c.storage = StorageKind::Sled).await;
    let database = database_for(data.path());
    let clustered = TestServer::start_with(|c| on_clickhouse(c, &urls, &database)).await;
    for server in [&embedded, &clustered] {
        server.create_project("demo").await;
        let running = server.running.as_ref().unwrap();
        let args = LoadArgs {
            client: ClientArgs { addr: running.addr.to_string(), api_key: None, ca_cert: None },
            project: "demo".into(),
            users: Some(data.path().join("users.jsonl")),
            events: Some(data.path().join("events.jsonl")),
            touches: Some(data.path().join("touches.jsonl")),
            aliases: Some(data.path().join("aliases.jsonl")),
            spend: Some(data.path().join("spend.jsonl")),
            spend_metric: Some("ad_spend".into()),
            batch: 500,
            inflight: 4,
        };
        sextant::cli::load::run(&args).await.unwrap();
        sextant::web::demo::seed(running.engine.clone(), "demo").await.unwrap();
    }
    let engine = |server: &TestServer| server.running.as_ref().unwrap().engine.clone();
    let (local, remote) = (engine(&embedded), engine(&clustered));

    let mut stats = [local.project_stats("demo").unwrap(), remote.project_stats("demo").unwrap()];
    for s in &mut stats {
        s.bytes_on_disk = 0;
    }
    assert!(stats[0].events > 3000, "{:?}", stats[0]);
    assert_eq!(stats[0], stats[1]);

    let request = DashboardRequest::default();
    let dashboards = [local.dashboard("demo", &request).unwrap(), remote.dashboard("demo", &request).unwrap()];
    let [a, b] = dashboards.map(|d| format!("{d:#?}"));
    assert!(a.contains("FunnelTile") && a.contains("RetentionTile") && a.contains("ExperimentTile"), "{a}");
    // Equal line by line, numbers to the last bits of a sum (the engines add rows in
    // different person orders).
    assert_close("dashboards", &a, &b);

    // Metric queries and the tree, as computed in ClickHouse where they can be (plain event
    // aggregates, their ratios and formulas: `metric::scan::pushable`) and from the events
    // otherwise (rolling windows, conversions, a cohort), over days across a DST change.
    let (from, to) = (stats[0].first_event.unwrap(), stats[0].last_event.unwrap() + 1);
    let trait_filter =
        Filter { property: "user.country".into(), op: FilterOp::Neq, values: vec![Value::String("DE".into())] };
    let event_filter = Filter { property: "revenue".into(), op: FilterOp::Gt, values: vec![Value::Number(20.0)] };
    let queries = [
        (Granularity::Day, vec![], None, Compare::PreviousPeriod),
        (Granularity::Week, vec![trait_filter.clone()], Some("user.plan"), Compare::None),
        (Granularity::Month, vec![event_filter], Some("user.channel"), Compare::None),
        (Granularity::Total, vec![trait_filter], None, Compare::PreviousYear),
    ];
    let metrics = local.list_metrics("demo", &[]).unwrap();
    assert!(metrics.len() >= 8, "{metrics:?}");
    let before = remote.pushed_down_aggregates();
    for metric in &metrics {
        for (granularity, filters, breakdown, compare) in &queries {
            let query = MetricQuery {
                filters: filters.clone(),
                breakdown: breakdown.map(String::from),
                breakdown_limit: 3,
                ..MetricQuery::new(from, to, *granularity, chrono_tz::UTC)
            };
            let answers = [&local, &remote].map(|engine| {
                let target = MetricTarget::Key(metric.key.clone(), 0);
                engine.query_metric("demo", target, query.clone(), "Europe/Berlin", Some(*compare)).unwrap()
            });
            let what = format!("metric {} {granularity:?} {filters:?} {breakdown:?}", metric.key);
            assert_close(&what, &format!("{:#?}", answers[0]), &format!("{:#?}", answers[1]));
        }
    }
    let pushed = remote.pushed_down_aggregates() - before;
    assert!(pushed >= 20, "plain aggregates are computed in ClickHouse: {pushed}");
    assert_eq!(local.pushed_down_aggregates(), 0);
    let query = MetricQuery::new(from, to, Granularity::Total, chrono_tz::UTC);
    // Each node's metric and values (the definitions' creation times differ between the two).
    fn values(node: &TreeNode, out: &mut Vec<(String, Option<f64>, Option<f64>)>) {
        out.push((node.metric.key.clone(), node.current, node.previous));
        node.children.iter().for_each(|child| values(child, out));
    }
    let trees = [&local, &remote].map(|engine| {
        let (root, _) = engine.metric_tree("demo", "", query.clone(), "", None, 0).unwrap();
        let mut nodes = Vec::new();
        values(&root, &mut nodes);
        format!("{nodes:#?}")
    });
    assert!(trees[0].lines().count() > 20, "{}", trees[0]);
    assert_close("trees", &trees[0], &trees[1]);

    // Cohorts of conditions, counted in ClickHouse (`cohort::count_request`): their members,
    // and metrics, a funnel and retention within them, with reads that stay narrow.
    let did = |event: &str, filters: Vec<Filter>, min_count, did_not, frame| {
        let selector = EventSelector { event: event.into(), filters };
        Condition::Behavioural(Behavioural { selector, min_count, did_not, frame })
    };
    let cohort = |id: &str, any, conditions| Cohort {
        id: id.into(),
        name: id.into(),
        description: String::new(),
        definition: Definition::Conditions(ConditionGroup { any, conditions }),
        created: 0,
    };
    let german = Filter { property: "user.country".into(), op: FilterOp::Eq, values: vec![Value::String("DE".into())] };
    let big = Filter { property: "revenue".into(), op: FilterOp::Gte, values: vec![Value::Number(30.0)] };
    let cohorts = [
        cohort("big_spenders", false, vec![did("purchase", vec![big], 1, false, TimeFrame::All)]),
        cohort("never_bought", false, vec![did("purchase", vec![], 1, true, TimeFrame::All)]),
        cohort(
            "german_or_carted",
            true,
            vec![Condition::Trait(german), did("add_to_cart", vec![], 3, false, TimeFrame::Range(from, to))],
        ),
    ];
    let counted_before = remote.counted_cohorts();
    let pushed_before = remote.pushed_down_aggregates();
    let page = PageRequest { size: 1000, token: String::new() };
    for c in &cohorts {
        local.create_cohort("demo", c.clone()).unwrap();
        remote.create_cohort("demo", c.clone()).unwrap();
        let sizes = [&local, &remote].map(|engine| engine.cohort_size("demo", &c.id).unwrap().0);
        assert!(sizes[0] > 5 && sizes[0] < 300, "{}: {sizes:?}", c.id);
        assert_eq!(sizes[0], sizes[1], "{}", c.id);
        let members = [&local, &remote].map(|engine| engine.cohort_members("demo", &c.id, &page).unwrap());
        assert_eq!(members[0], members[1], "{}", c.id);

        let query = MetricQuery { cohort_id: c.id.clone(), ..query.clone() };
        let answers = [&local, &remote].map(|engine| {
            let metric = MetricTarget::Key("arpu".into(), 0);
            engine.query_metric("demo", metric, query.clone(), "UTC", None).unwrap()
        });
        assert_close(&format!("arpu in {}", c.id), &format!("{:#?}", answers[0]), &format!("{:#?}", answers[1]));

        let steps = ["session_start", "add_to_cart", "purchase"];
        let funnel = FunnelQuery {
            steps: steps.map(|e| EventSelector { event: e.into(), filters: vec![] }).to_vec(),
            from,
            to,
            window: 7 * 86_400_000_000,
            timezone: "Europe/Berlin".into(),
            cohort_id: c.id.clone(),
            ..Default::default()
        };
        let funnels = [&local, &remote].map(|engine| engine.query_funnel("demo", funnel.clone()).unwrap());
        assert_eq!(funnels[0], funnels[1], "funnel in {}", c.id);
        let retention = RetentionQuery {
            cohort_event: EventSelector { event: "signup".into(), filters: vec![] },
            return_event: Some(EventSelector { event: "session_start".into(), filters: vec![] }),
            first_time: false,
            unbounded: false,
            shape: TableShape {
                from,
                to,
                period: Period::Week,
                periods: 4,
                timezone: "Europe/Berlin".into(),
                cohort_id: c.id.clone(),
                ..Default::default()
            },
        };
        let tables = [&local, &remote].map(|engine| engine.query_retention("demo", retention.clone()).unwrap());
        assert_eq!(tables[0], tables[1], "retention in {}", c.id);
    }
    // Size, members, the metric, the funnel and the retention of each cohort.
    assert_eq!(remote.counted_cohorts() - counted_before, 5 * cohorts.len() as u64);
    assert_eq!(local.counted_cohorts(), 0);
    assert!(remote.pushed_down_aggregates() > pushed_before, "a metric in a counted cohort is computed in ClickHouse");

    // Goals on a plain count are measured in ClickHouse, also within a counted cohort.
    let plain = Goal {
        id: "late-signups".into(),
        name: "signups in the second half".into(),
        metric_key: "signups".into(),
        granularity: Granularity::Week,
        // The second half of January (the first events are touches weeks before).
        period: (1_768_521_600_000_000, 1_769_904_000_000_000),
        target: Target::Relative(0.1),
        ..local.get_goal("demo", "march-signups").unwrap()
    };
    let in_cohort = Goal { id: "late-signups-never-bought".into(), cohort_id: "never_bought".into(), ..plain.clone() };
    for engine in [&local, &remote] {
        engine.create_goal("demo", plain.clone()).unwrap();
        engine.create_goal("demo", in_cohort.clone()).unwrap();
    }
    for goal in ["late-signups", "late-signups-never-bought"] {
        let pushed_before = remote.pushed_down_aggregates();
        let as_of = Some(to - 86_400_000_000);
        let [a, b] = [&local, &remote].map(|engine| engine.goal_progress("demo", goal, as_of).unwrap());
        assert!(remote.pushed_down_aggregates() > pushed_before, "{goal} is measured in ClickHouse");
        assert!(a.points.iter().any(|p| p.value.is_some_and(|v| v > 0.0)), "{goal}: {a:?}");
        assert!(a.progress.baseline.is_some_and(|v| v > 0.0), "{goal}: {a:?}");
        let shown = |r: &sextant::core::goal::definition::GoalReport| format!("{:#?}\n{:#?}", r.progress, r.points);
        assert_close(goal, &shown(&a), &shown(&b));
    }

    let mut exports = [embedded.export("demo").await, clustered.export("demo").await];
    for export in &mut exports {
        export.sort_by(|x, y| x.event_id.cmp(&y.event_id));
    }
    assert_eq!(exports[0].len() as u64, stats[0].events);
    assert_eq!(exports[0], exports[1]);

    for user in ["u1_0", "u42_0", "u200_0"] {
        assert_eq!(embedded.get_user("demo", user).await.ok(), clustered.get_user("demo", user).await.ok(), "{user}");
    }
}

/// Two pretty-printed answers equal line by line, numbers to the last bits of a sum (the
/// engines add rows in different orders).
fn assert_close(what: &str, a: &str, b: &str) {
    assert_eq!(a.lines().count(), b.lines().count(), "{what}:\n{a}\n{b}");
    for (x, y) in a.lines().zip(b.lines()).filter(|(x, y)| x != y) {
        let number = |line: &str| {
            let value = line.trim().trim_end_matches(',');
            let value = value.strip_prefix("Some(").and_then(|v| v.strip_suffix(')')).unwrap_or(value);
            value.rsplit(": ").next().unwrap_or(value).parse::<f64>().ok()
        };
        let close = number(x).zip(number(y)).is_some_and(|(x, y)| (x - y).abs() <= 1e-9 * x.abs().max(1.0));
        assert!(close, "{what} differ (embedded, clickhouse): {x:?} vs {y:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misconfiguration_is_a_clear_startup_error() {
    let Some(urls) = cluster() else { return };
    let temp = tempfile::tempdir().unwrap();
    let start = |configure: Box<dyn FnOnce(&mut sextant::config::ServeConfig)>| {
        let mut config = sextant::config::ServeConfig::for_data_dir(temp.path().to_path_buf());
        on_clickhouse(&mut config, &urls, "misconfigured");
        configure(&mut config);
        async move { format!("{:#}", sextant::server::start(&config).await.err().expect("refused")) }
    };
    let unreachable = start(Box::new(|c| c.clickhouse_url = vec!["http://127.0.0.1:1".into()])).await;
    assert!(unreachable.contains("127.0.0.1:1"), "{unreachable}");
    let no_cluster = start(Box::new(|c| c.clickhouse_cluster = "no_such_cluster".into())).await;
    assert!(no_cluster.contains("no_such_cluster") && no_cluster.contains("remote_servers"), "{no_cluster}");
    let no_url = start(Box::new(|c| c.clickhouse_url = Vec::new())).await;
    assert!(no_url.contains("clickhouse_url"), "{no_url}");
}

/// DeleteUser on one node, as the embedded engine does it: the user's quarantined events leave
/// the quarantine everywhere, and a user known only by an alias is unlinked (later events of
/// the anonymous id are its own). Retention on one node hides old events on the other at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_and_retention_reach_every_node() {
    let Some(urls) = cluster() else { return };
    let shared = tempfile::tempdir().unwrap();
    let database = database_for(shared.path());
    let a = TestServer::start_with(|c| on_clickhouse(c, &urls, &database)).await;
    let b = TestServer::start_with(|c| on_clickhouse(c, &urls, &database)).await;
    a.create_project("p").await;
    let quarantine = pb::Project { enforcement: pb::Enforcement::Quarantine as i32, ..Default::default() };
    let update = pb::UpdateProjectRequest {
        project: "p".into(),
        update: Some(quarantine),
        update_mask: vec!["enforcement".into()],
    };
    a.projects().update_project(update).await.unwrap();
    let event_type = pb::EventType { name: "signup".into(), ..Default::default() };
    let upsert = pb::UpsertEventTypeRequest { project: "p".into(), event_type: Some(event_type) };
    a.catalog().upsert_event_type(upsert).await.unwrap();
    // Planned events are stored; an unplanned one of u1 and one of u2 are quarantined.
    let reply = b
        .track(
            "p",
            vec![event("s1", "signup", "u1", 10), event("x1", "mystery", "u1", 20), event("x2", "mystery", "u2", 30)],
        )
        .await;
    assert_eq!((reply.accepted, reply.quarantined), (1, 2));
    let quarantined = |server: &TestServer| {
        let mut catalog = server.catalog();
        async move {
            let request = pb::ListQuarantinedRequest { project: "p".into(), ..Default::default() };
            let listed = catalog.list_quarantined(request).await.unwrap().into_inner();
            listed.events.into_iter().map(|q| q.event.unwrap().event_id).collect::<Vec<_>>()
        }
    };
    assert_eq!(quarantined(&a).await, vec!["x1", "x2"]);
    let delete = pb::DeleteUserRequest { project: "p".into(), user_id: "u1".into() };
    assert_eq!(a.users().delete_user(delete).await.unwrap().into_inner().events_deleted, 1);
    assert_eq!(quarantined(&b).await, vec!["x2"], "u1's quarantined event went with u1");
    // Its bytes too: once Compact has waited for ClickHouse's mutations, no stored record
    // holds it, and u2's is still stored.
    a.admin().compact(pb::CompactRequest { project: "p".into() }).await.unwrap();
    let config = sextant::clickhouse::ClickHouseConfig {
        urls: urls.split(',').map(str::to_owned).collect(),
        database: database.clone(),
        cluster: "sextant".into(),
        user: None,
        password: None,
        timeout: std::time::Duration::from_secs(60),
    };
    let store = sextant::clickhouse::ClickHouse::connect(&config).await.unwrap();
    let stored_records = || async {
        let records = store.local_records().await.unwrap();
        let decoded = records.iter().map(|(_, r)| sextant::core::store::record::decode_record(&r.value).unwrap());
        decoded.map(|record| format!("{record:?}")).collect::<Vec<_>>().join("\n")
    };
    let stored = stored_records().await;
    assert!(stored.contains("\"x2\"") && !stored.contains("\"x1\""), "{stored}");
    assert_eq!(quarantined(&b).await, vec!["x2"]);

    // A user known only by an alias: deleting them unlinks the anonymous id.
    let alias = pb::AliasRequest { project: "p".into(), anonymous_id: "anon".into(), user_id: "ghost".into() };
    a.ingest().alias(alias).await.unwrap();
    let delete = pb::DeleteUserRequest { project: "p".into(), user_id: "ghost".into() };
    assert_eq!(b.users().delete_user(delete).await.unwrap().into_inner().events_deleted, 0);
    let anonymous = pb::Event { anonymous_id: "anon".into(), ..event("s2", "signup", "", 40) };
    assert_eq!(a.track("p", vec![anonymous]).await.accepted, 1);
    assert_eq!(b.get_user("p", "ghost").await.unwrap_err().code(), Code::NotFound);
    assert_eq!(b.stats("p").await.events, 1, "s2, the anonymous id's own");

    // Retention through one node: the other stops seeing the old event at once.
    assert_eq!(b.stats("p").await.events, 1);
    let days = pb::Project { retention_days: 1, ..Default::default() };
    let update = pb::UpdateProjectRequest {
        project: "p".into(),
        update: Some(days),
        update_mask: vec!["retention_days".into()],
    };
    a.projects().update_project(update).await.unwrap();
    let engine = a.running.as_ref().unwrap().engine.clone();
    assert_eq!(engine.enforce_retention(engine.clock.now()).await.unwrap(), 1);
    assert_eq!(b.stats("p").await.events, 0);
    assert_eq!(b.export("p").await.len(), 0);
    // The old quarantined event leaves the quarantine, and its bytes the stored records.
    assert!(quarantined(&b).await.is_empty());
    a.admin().compact(pb::CompactRequest { project: "p".into() }).await.unwrap();
    let stored = stored_records().await;
    assert!(!stored.contains("\"x2\"") && !stored.contains("u2"), "{stored}");
}
