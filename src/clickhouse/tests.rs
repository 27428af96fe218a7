//! Against a real cluster (`scripts/clickhouse-cluster.sh up DIR` prints the URL line that
//! `scripts/test.sh` exports): events, aliases and traits written to ClickHouse and read back
//! as a person-ordered batch give every analysis the embedded engine's answers on the same
//! events. Without `SEXTANT_CLICKHOUSE_URL` the tests say so and pass, unless
//! `SEXTANT_REQUIRE_CLICKHOUSE=1` (set by `scripts/test.sh`) makes that a failure.

use super::*;
use crate::core::analysis::funnel::{self, FunnelQuery};
use crate::core::cohort::Cohorts;
use crate::core::filter::EventSelector;
use crate::core::seam_tests::{DAY, START, assert_same, compare_all, embedded, sent};
use crate::core::store::source::EventSource;

fn cluster_urls() -> Option<Vec<String>> {
    match std::env::var("SEXTANT_CLICKHOUSE_URL") {
        Ok(urls) if !urls.is_empty() => Some(urls.split(',').map(str::to_owned).collect()),
        _ => {
            let required = std::env::var("SEXTANT_REQUIRE_CLICKHOUSE").is_ok_and(|v| v == "1");
            assert!(!required, "SEXTANT_REQUIRE_CLICKHOUSE=1 but SEXTANT_CLICKHOUSE_URL is not set");
            eprintln!("skipped: no SEXTANT_CLICKHOUSE_URL (scripts/clickhouse-cluster.sh up DIR prints one)");
            None
        }
    }
}

fn config(urls: Vec<String>, database: &str) -> ClickHouseConfig {
    ClickHouseConfig {
        urls,
        database: database.into(),
        cluster: "sextant".into(),
        user: None,
        password: None,
        timeout: std::time::Duration::from_secs(60),
    }
}

/// A database of its own, dropped on every server at the end.
struct TestDatabase {
    urls: Vec<String>,
    name: String,
}

impl TestDatabase {
    fn new(urls: &[String], test: &str) -> TestDatabase {
        TestDatabase { urls: urls.to_vec(), name: format!("sextant_test_{test}_{}", std::process::id()) }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (urls, name) = (self.urls.clone(), self.name.clone());
        // Drop runs inside the test's runtime: do the async work on a thread of its own.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread().enable_all().build().map(|runtime| {
                runtime.block_on(async {
                    for url in &urls {
                        let client = Client::default().with_url(url.as_str());
                        let _ = sql::drop_database(&client, &name).execute().await;
                    }
                })
            })
        });
        let _ = dropped.join();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn analyses_over_clickhouse_answer_as_over_the_embedded_engine() {
    let Some(urls) = cluster_urls() else { return };
    let database = TestDatabase::new(&urls, "seam");
    let store = ClickHouse::connect(&config(urls.clone(), &database.name)).await.unwrap();
    // Connecting again finds the schema in place and changes nothing.
    ClickHouse::connect(&config(urls.clone(), &database.name)).await.unwrap();

    for seed in 0..3 {
        let project = format!("p{seed}");
        let mut sent = sent(seed);
        // Not stored in ClickHouse yet: MANUAL values.
        sent.spend.clear();
        let (first, rest) = sent.events.split_at(sent.events.len() / 2);
        let new = store.store_events(&project, first, 0).await.unwrap();
        assert!(new.iter().all(|&n| n), "seed {seed}: the generated ids are distinct");
        let pairs: Vec<(String, String)> = sent.aliases.iter().map(|(a, u)| (a.clone(), u.clone())).collect();
        store.insert_aliases(&project, &pairs, 0).await.unwrap();
        store.store_events(&project, rest, first.len() as u64).await.unwrap();
        let updates = sent.trait_updates();
        store.insert_user_updates(&project, &updates, 0).await.unwrap();
        // Deletions come after everything else, as in the embedded engine's log.
        let after_all = sent.events.len() as u64 + updates.len() as u64;
        for (k, user) in sent.deleted.iter().enumerate() {
            store.delete_user(&project, user, after_all + k as u64).await.unwrap();
        }

        let data = embedded(&sent);
        let batch = store.person_batch(&project, &Fetch::everything()).await.unwrap();
        let stored = data.source().row_count();
        assert!(stored < sent.events.len(), "seed {seed}: the deleted users had events");
        assert_eq!(batch.row_count(), stored, "seed {seed}: every event left is read back once");
        compare_all(&data.source(), &batch, seed);
        let span = crate::core::store::source::AnySource::Embedded(data.source()).time_span();
        assert!(span.is_some());
        assert_eq!(store.time_span(&project, &Fetch::everything()).await.unwrap(), span, "seed {seed}");
        // GetProjectStats' numbers, counted in ClickHouse, are the embedded engine's.
        let source = crate::core::store::source::AnySource::Embedded(data.source());
        let mut by_name: Vec<(String, u64)> = (source.name_counts().iter().enumerate())
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| (source.names().resolve(i as u32).to_owned(), *n))
            .collect();
        by_name.sort();
        let expected = EventStats { by_name, span, users: source.user_count() };
        assert!(expected.users > 0 && expected.by_name.len() > 2);
        assert_eq!(store.event_stats(&project, &Fetch::everything()).await.unwrap(), expected, "seed {seed}");
        // Who was seen when in a range (a holdout's exposures), counted in ClickHouse.
        let (from, to) = (START + 2 * DAY, START + 22 * DAY);
        let holdout = crate::core::experiment::holdout::Holdout { key: "h".into(), percent: 0.3, ..Default::default() };
        let exposed = crate::core::experiment::holdout::seen_people(&source, &holdout, from, to).users;
        let mut seen: Vec<(String, bool, Micros)> = exposed
            .iter()
            .map(|u| (source.person_name(u.person).to_owned(), source.is_user(u.person), u.first))
            .collect();
        seen.sort();
        let mut counted = store.first_seen(&project, &Fetch { from, to, ..Fetch::everything() }).await.unwrap();
        counted.sort();
        assert!(seen.len() > 10 && seen.iter().any(|p| !p.1), "seed {seed}: {seen:?}");
        assert_eq!(counted, seen, "seed {seed}");
        // A read of no names reads nothing (a holdout without metrics).
        let nothing = Fetch { names: Some(Vec::new()), ..Fetch::everything() };
        assert_eq!(store.person_batch(&project, &nothing).await.unwrap().row_count(), 0);

        // A read pruned to a funnel's names and range (its window past the end) answers it.
        let query = FunnelQuery {
            steps: ["visit", "signup", "purchase"].map(|e| EventSelector { event: e.into(), filters: vec![] }).to_vec(),
            from: START + 2 * DAY,
            to: START + 20 * DAY,
            window: 2 * DAY,
            timezone: "UTC".into(),
            ..Default::default()
        };
        let names = Some(query.steps.iter().map(|s| s.event.clone()).collect());
        let pruned = Fetch { names, from: query.from, to: query.to + query.window, ..Fetch::everything() };
        let batch = store.person_batch(&project, &pruned).await.unwrap();
        assert!(batch.row_count() < sent.events.len(), "seed {seed}: the read is pruned");
        let cohorts = Cohorts::new();
        assert_eq!(
            funnel::run(&batch, &cohorts, &query).unwrap(),
            funnel::run(&data.source(), &cohorts, &query).unwrap(),
            "seed {seed}"
        );

        // A user with traits and no events counts; one whose traits were all unset does not.
        let trait_of = |user: &str| UserUpdate {
            user_id: user.into(),
            set: vec![("plan".into(), Value::String("pro".into()))],
            ..Default::default()
        };
        let unset = UserUpdate { user_id: "emptied".into(), unset: vec!["plan".into()], ..Default::default() };
        let updates = [trait_of("hushed"), trait_of("emptied"), unset];
        store.insert_user_updates(&project, &updates, after_all + 100).await.unwrap();
        let stats = store.event_stats(&project, &Fetch::everything()).await.unwrap();
        assert_eq!(stats.users, expected.users + 1, "seed {seed}");
    }
    // Another project's rows are not read.
    let empty = store.person_batch("nobody", &Fetch::everything()).await.unwrap();
    assert_eq!(empty.row_count(), 0);
    assert_eq!(store.time_span("nobody", &Fetch::everything()).await.unwrap(), None);
}

/// Every pushed-down event aggregate (`metric::scan::pushable`) against a scan of the same
/// events by the embedded engine: each kind, granularity (days across Berlin's DST change,
/// months), breakdown (event property of strings, of numbers, a trait; under and over the
/// limit), filter operator and trait filter, with later copies of some ids that differ.
#[tokio::test(flavor = "multi_thread")]
async fn event_aggregates_computed_in_clickhouse_answer_as_scans_do() {
    use crate::core::filter::{Filter, FilterOp};
    use crate::core::metric::definition::{Metric, MetricKind};
    use crate::core::metric::scan::{self, MetricQuery};
    use crate::core::time::Granularity;

    let Some(urls) = cluster_urls() else { return };
    let database = TestDatabase::new(&urls, "pushdown");
    let store = ClickHouse::connect(&config(urls.clone(), &database.name)).await.unwrap();
    let project = "p";
    let mut sent = sent(7);
    // Booleans and timestamps too, on some purchases.
    for (i, event) in sent.events.iter_mut().filter(|e| e.name == "purchase").enumerate().filter(|(i, _)| i % 3 == 0) {
        event.properties.push(("gift".into(), Value::Bool(i % 2 == 0)));
        event.properties.push(("at".into(), Value::Timestamp(START + (i as i64 % 20) * DAY)));
    }
    let (first, rest) = sent.events.split_at(sent.events.len() / 2);
    store.store_events(project, first, 0).await.unwrap();
    let pairs: Vec<(String, String)> = sent.aliases.iter().map(|(a, u)| (a.clone(), u.clone())).collect();
    store.insert_aliases(project, &pairs, 0).await.unwrap();
    store.store_events(project, rest, first.len() as u64).await.unwrap();
    let updates = sent.trait_updates();
    store.insert_user_updates(project, &updates, 0).await.unwrap();
    let mut seq = sent.events.len() as u64 + updates.len() as u64;
    // Later copies of some ids, as a crash between a batch's two writes leaves them: changed,
    // so counting one would show.
    let copies: Vec<Event> = sent
        .events
        .iter()
        .step_by(9)
        .map(|e| {
            let mut copy = e.clone();
            copy.properties =
                vec![("amount".into(), Value::Number(1000.0)), ("plan".into(), Value::String("gold".into()))];
            copy
        })
        .collect();
    let rows: Vec<(u64, &Event)> = copies.iter().enumerate().map(|(i, e)| (seq + i as u64, e)).collect();
    store.insert_event_rows(project, &rows).await.unwrap();
    seq += copies.len() as u64;
    for (k, user) in sent.deleted.iter().enumerate() {
        store.delete_user(project, user, seq + k as u64).await.unwrap();
    }
    let data = embedded(&sent);
    let embedded = data.source();

    let metric = |kind: MetricKind, event: &str, property: &str, filters: Vec<Filter>| Metric {
        key: "m".into(),
        kind,
        selector: Some(EventSelector { event: event.into(), filters }),
        property: property.into(),
        ..Default::default()
    };
    let string = |s: &str| Value::String(s.into());
    let on = |property: &str, op: FilterOp, values: Vec<Value>| Filter { property: property.into(), op, values };
    let filter_sets = vec![
        vec![],
        vec![on("plan", FilterOp::Eq, vec![string("pro")])],
        vec![on("plan", FilterOp::Neq, vec![string("pro")])],
        vec![on("plan", FilterOp::In, vec![string("free"), string("team")])],
        vec![on("plan", FilterOp::NotIn, vec![string("free"), Value::Null])],
        vec![on("amount", FilterOp::Gt, vec![Value::Number(50.0)])],
        vec![
            on("amount", FilterOp::Gte, vec![Value::Number(50.0)]),
            on("amount", FilterOp::Lt, vec![Value::Number(80.0)]),
        ],
        vec![on("amount", FilterOp::Lte, vec![Value::Number(20.5)])],
        vec![on("amount", FilterOp::Eq, vec![Value::Number(25.0), string("25")])],
        vec![on("plan", FilterOp::Contains, vec![string("e")])],
        vec![on("plan", FilterOp::Contains, vec![string("")])],
        vec![on("plan", FilterOp::IsSet, vec![])],
        vec![on("plan", FilterOp::IsNotSet, vec![])],
        vec![on("plan", FilterOp::Eq, vec![Value::Null])],
        vec![on("gift", FilterOp::Eq, vec![Value::Bool(true)])],
        vec![on("gift", FilterOp::NotIn, vec![Value::Bool(false), Value::Number(1.0)])],
        vec![on("at", FilterOp::Lt, vec![Value::Timestamp(START + 9 * DAY)])],
        vec![on("at", FilterOp::In, vec![Value::Timestamp(START + 3 * DAY), Value::Number((START + 6 * DAY) as f64)])],
        vec![on("user.country", FilterOp::In, vec![string("de"), string("us")])],
        vec![on("user.age", FilterOp::Gte, vec![Value::Number(40.0)]), on("plan", FilterOp::IsSet, vec![])],
    ];
    let kinds = [
        (MetricKind::Count, ""),
        (MetricKind::UniqueUsers, ""),
        (MetricKind::Sum, "amount"),
        (MetricKind::Avg, "amount"),
        (MetricKind::Min, "amount"),
        (MetricKind::Max, "amount"),
    ];
    let berlin: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
    let mut asked = 0;
    for (k, (kind, property)) in kinds.iter().enumerate() {
        for (f, filters) in filter_sets.iter().enumerate() {
            for (granularity, breakdown, limit) in [
                (Granularity::Day, None, 0),
                (Granularity::Week, Some("plan"), 2),
                (Granularity::Month, Some("user.country"), 0),
                (Granularity::Total, Some("amount"), 3),
                (Granularity::Day, Some("channel"), 0),
                (Granularity::Hour, Some("user.country"), 1),
                (Granularity::Week, Some("gift"), 0),
                (Granularity::Day, Some("at"), 4),
            ] {
                // Every combination of kind and filters, and each breakdown with a few of them.
                if breakdown.is_some() && (f + k) % 3 != 0 {
                    continue;
                }
                let (event, filters) =
                    if breakdown == Some("channel") { ("visit", vec![]) } else { ("purchase", filters.clone()) };
                let (selector_filters, query_filters) = filters.split_at(filters.len() / 2);
                let m = metric(*kind, event, property, selector_filters.to_vec());
                let query = MetricQuery {
                    filters: query_filters.to_vec(),
                    breakdown: breakdown.map(String::from),
                    breakdown_limit: limit,
                    ..MetricQuery::new(
                        START + DAY + 5 * 3_600_000_000,
                        if granularity == Granularity::Hour { START + 3 * DAY } else { START + 29 * DAY },
                        granularity,
                        berlin,
                    )
                };
                assert!(scan::pushable(&m, &query));
                let request = scan::aggregate_request(&m, &query, Micros::MIN).unwrap();
                let pushed =
                    scan::aggregate_partials(&m, &query, &request, store.aggregate(project, &request).await.unwrap());
                let scanned = scan::event_aggregate(&embedded, &m, &query);
                let what = format!("{kind:?} filters {filters:?} {granularity:?} by {breakdown:?} limit {limit}");
                assert_same(&what, &scanned, &pushed);
                asked += 1;
            }
        }
    }
    assert!(asked > 150, "{asked}");

    // Cohorts counted in ClickHouse (`cohort::count_request`): each filter set on a
    // behavioural condition, alone, as a "did not" beside a trait, and nested.
    use crate::core::cohort::{self, Behavioural, Cohort, Condition, ConditionGroup, Definition, TimeFrame};
    let now = START + 40 * DAY;
    let cohort_of = |any, conditions| Cohort {
        id: "c".into(),
        name: "c".into(),
        description: String::new(),
        definition: Definition::Conditions(ConditionGroup { any, conditions }),
        created: 0,
    };
    let mut cohorts = Vec::new();
    for (f, filters) in filter_sets.iter().enumerate() {
        let did = |event: &str, filters: &[Filter], min_count, did_not, frame| {
            let selector = EventSelector { event: event.into(), filters: filters.to_vec() };
            Condition::Behavioural(Behavioural { selector, min_count, did_not, frame })
        };
        let germans = Condition::Trait(on("user.country", FilterOp::Eq, vec![string("de")]));
        let window = TimeFrame::Range(START + 3 * DAY, START + 20 * DAY);
        let visits = Condition::Group(ConditionGroup {
            any: true,
            conditions: vec![did("visit", &[], 3, false, TimeFrame::All), did("signup", &[], 1, true, window)],
        });
        cohorts.push(cohort_of(false, vec![did("purchase", filters, 1 + (f % 3) as u32, false, TimeFrame::All)]));
        cohorts.push(cohort_of(true, vec![did("purchase", filters, 1, true, TimeFrame::LastDays(25)), germans]));
        cohorts.push(cohort_of(false, vec![did("purchase", filters, 2, false, window), visits]));
    }
    // A static cohort of every id sent (deleted users, users with traits only, anonymous ids
    // aliased or not) and one never seen: its members are among the people known.
    let mut ids: Vec<String> = sent.events.iter().flat_map(|e| [e.user_id.clone(), e.anonymous_id.clone()]).collect();
    ids.extend(sent.traits.keys().cloned());
    ids.push("nobody".into());
    ids.retain(|id| !id.is_empty());
    let mut listed = Cohort { definition: Definition::Static(ids), ..cohort_of(false, vec![]) };
    listed.validate().unwrap();
    cohorts.push(listed);
    let mut with_members = 0;
    for cohort in &cohorts {
        let request = cohort::count_request(cohort, now, Micros::MIN).unwrap();
        let counted = store.cohort_counts(project, &request).await.unwrap();
        let members = cohort::members_from_counts(cohort, counted).unwrap().sorted();
        let expected = cohort::member_ids(&embedded, &cohort::evaluate(&embedded, cohort, now));
        assert_eq!(members, expected, "{:?}", cohort.definition);
        with_members += usize::from(!expected.is_empty());
    }
    assert!(with_members > cohorts.len() * 2 / 3, "{with_members} of {}", cohorts.len());
    // After a retention cutoff, as the events read from it say.
    let cutoff = START + 10 * DAY;
    let kept = store.person_batch(project, &Fetch { from: cutoff, ..Fetch::everything() }).await.unwrap();
    for cohort in cohorts[..6].iter().chain(cohorts.last()) {
        let request = cohort::count_request(cohort, now, cutoff).unwrap();
        let counted = store.cohort_counts(project, &request).await.unwrap();
        let members = cohort::members_from_counts(cohort, counted).unwrap().sorted();
        assert_eq!(members, cohort::member_ids(&kept, &cohort::evaluate(&kept, cohort, now)), "{cohort:?}");
    }

    // The retention cutoff leaves older events out, as the engine's reads do.
    let m = metric(MetricKind::Count, "visit", "", vec![]);
    let query = MetricQuery::new(START, START + 30 * DAY, Granularity::Total, berlin);
    let cutoff = START + 10 * DAY;
    let request = scan::aggregate_request(&m, &query, cutoff).unwrap();
    let pushed =
        scan::aggregate_partials(&m, &query, &request, store.aggregate(project, &request).await.unwrap()).unwrap();
    let later = MetricQuery { from: cutoff, ..query.clone() };
    let scanned = scan::event_aggregate(&embedded, &m, &later).unwrap();
    assert_eq!(pushed[0].total, scanned[0].total);
    assert!(pushed[0].total.unwrap() > 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_configuration_or_an_unreachable_server_is_named() {
    let Some(urls) = cluster_urls() else { return };
    let database = TestDatabase::new(&urls, "config");

    let error = ClickHouse::connect(&config(urls.clone(), "bad-name")).await.err().unwrap();
    assert!(matches!(&error, Error::InvalidArgument { field, .. } if field == "clickhouse_database"), "{error:?}");

    let missing = ClickHouseConfig { cluster: "no_such_cluster".into(), ..config(urls.clone(), &database.name) };
    let error = ClickHouse::connect(&missing).await.err().unwrap();
    assert!(
        matches!(&error, Error::FailedPrecondition(m) if m.contains("no_such_cluster") && m.contains(&urls[0])),
        "{error:?}"
    );

    // One URL for a cluster of two shards: events go straight to their shard's server.
    let error = ClickHouse::connect(&config(urls[..1].to_vec(), &database.name)).await.err().unwrap();
    assert!(
        matches!(&error, Error::FailedPrecondition(m) if m.contains("1 URLs") && m.contains("2 shards")),
        "{error:?}"
    );

    // A port nothing listens on: bind one, then free it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let down = config(vec![urls[0].clone(), format!("http://{closed}")], &database.name);
    let error = ClickHouse::connect(&down).await.err().unwrap();
    assert!(matches!(&error, Error::BackendUnavailable(m) if m.contains(&closed.to_string())), "{error:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_event_id_counts_once_across_resends_restarts_crashes_and_racing_nodes() {
    let Some(urls) = cluster_urls() else { return };
    let database = TestDatabase::new(&urls, "once");
    let node = ClickHouse::connect(&config(urls.clone(), &database.name)).await.unwrap();
    let event = |id: &str, user: &str, minute: i64| Event {
        event_id: id.into(),
        name: "buy".into(),
        user_id: user.into(),
        anonymous_id: String::new(),
        timestamp: START + minute * 60_000_000,
        properties: vec![("amount".into(), Value::Number(minute as f64))],
    };
    let project = "p";

    // A repeated id inside a batch: the first wins.
    let batch = [event("e1", "u1", 1), event("e2", "u2", 2), event("e1", "u1", 3)];
    assert_eq!(node.store_events(project, &batch, 0).await.unwrap(), vec![true, true, false]);
    // A resend, through another connection as after a restart: nothing new.
    let restarted = ClickHouse::connect(&config(urls.clone(), &database.name)).await.unwrap();
    let resend = [event("e2", "u2", 2), event("e1", "u1", 9), event("e3", "u1", 4)];
    assert_eq!(restarted.store_events(project, &resend, 10).await.unwrap(), vec![false, false, true]);

    // A crash after the events were written but before their ids were: the resend writes a
    // second copy, which reads drop (the earliest copy wins, whatever its time).
    node.insert_event_rows(project, &[(20, &event("e4", "u3", 50))]).await.unwrap();
    assert_eq!(node.store_events(project, &[event("e4", "u3", 5)], 30).await.unwrap(), vec![true]);

    // Two nodes storing the same new ids at once: both may write them; each counts once.
    let racing: Vec<Event> = (0..200).map(|i| event(&format!("r{i}"), &format!("u{}", i % 7), i)).collect();
    let (a, b) = tokio::join!(node.store_events(project, &racing, 100), restarted.store_events(project, &racing, 400));
    let stored_twice = a.unwrap().iter().zip(b.unwrap()).filter(|(a, b)| **a && *b).count();

    let read = node.person_batch(project, &Fetch::everything()).await.unwrap();
    let mut seen: Vec<(String, String, Micros)> = Vec::new();
    read.for_each(crate::core::store::source::Scan::all(), |person, events| {
        for (i, &row) in events.rows.iter().enumerate() {
            seen.push((
                read.person_name(person).to_owned(),
                read.row_event_id(row as usize).into_owned(),
                events.times[i],
            ));
        }
    });
    seen.sort();
    let mut expected: Vec<(String, String, Micros)> = vec![
        ("u1".into(), "e1".into(), START + 60_000_000),
        ("u2".into(), "e2".into(), START + 2 * 60_000_000),
        ("u1".into(), "e3".into(), START + 4 * 60_000_000),
        ("u3".into(), "e4".into(), START + 50 * 60_000_000),
    ];
    expected.extend(racing.iter().map(|e| (e.user_id.clone(), e.event_id.clone(), e.timestamp)));
    expected.sort();
    assert_eq!(seen, expected, "each id once ({stored_twice} of the racing ids were stored by both nodes)");
}

/// Each shard answers for its own rows and Sextant merges them: a user whose aliased anonymous
/// id sits on the other shard reads back as one person, their rows in (time, arrival) order
/// across both shards, and an id stored on both shards counts once, as its earliest copy.
#[tokio::test(flavor = "multi_thread")]
async fn a_person_whose_rows_sit_on_two_shards_reads_back_as_one_in_order() {
    let Some(urls) = cluster_urls() else { return };
    let database = TestDatabase::new(&urls, "merge");
    let store = ClickHouse::connect(&config(urls.clone(), &database.name)).await.unwrap();
    let project = "p";
    let user = "u1";
    let anonymous = (0..).map(|i| format!("a{i}")).find(|a| store.person_shard(a) != store.person_shard(user)).unwrap();
    let other = (0..).map(|i| format!("v{i}")).find(|v| store.person_shard(v) != store.person_shard(user)).unwrap();
    let event = |id: &str, user_id: &str, anonymous_id: &str, minute: i64| Event {
        event_id: id.into(),
        name: "visit".into(),
        user_id: user_id.into(),
        anonymous_id: anonymous_id.into(),
        timestamp: START + minute * 60_000_000,
        properties: vec![],
    };
    // "dup" goes to the anonymous id's shard first (seq 1), then, as after a crash before its id
    // was written, to the user's shard (seq 6): the earliest copy, at minute 9, is the one read.
    store.insert_event_rows(project, &[(1, &event("dup", "", &anonymous, 9))]).await.unwrap();
    let events = [
        event("u-1", user, "", 1),
        event("a-2", "", &anonymous, 2),
        event("u-3", user, "", 3),
        event("a-3", "", &anonymous, 3),
        event("v-1", &other, "", 1),
    ];
    store.store_events(project, &events, 2).await.unwrap();
    store.insert_event_rows(project, &[(7, &event("dup", user, "", 4))]).await.unwrap();
    store.insert_aliases(project, &[(anonymous.clone(), user.into())], 8).await.unwrap();

    let batch = store.person_batch(project, &Fetch::everything()).await.unwrap();
    let mut people: Vec<(String, Vec<(String, i64)>)> = Vec::new();
    batch.for_each(crate::core::store::source::Scan::all(), |person, events| {
        let rows =
            events.rows.iter().enumerate().map(|(i, &row)| {
                (batch.row_event_id(row as usize).into_owned(), (events.times[i] - START) / 60_000_000)
            });
        people.push((batch.person_name(person).to_owned(), rows.collect()));
    });
    let minutes = |rows: &[(&str, i64)]| rows.iter().map(|(id, m)| (id.to_string(), *m)).collect::<Vec<_>>();
    let mut expected = vec![
        (user.to_owned(), minutes(&[("u-1", 1), ("a-2", 2), ("u-3", 3), ("a-3", 3), ("dup", 9)])),
        (other.clone(), minutes(&[("v-1", 1)])),
    ];
    expected.sort();
    assert_eq!(people, expected);

    // As sent: the same rows, each with the id it came under.
    let sent = store.events_as_sent(project, &Fetch::everything()).await.unwrap();
    let sent: Vec<(u64, &str, &str, &str)> =
        sent.iter().map(|(seq, e)| (*seq, e.event_id.as_str(), e.user_id.as_str(), e.anonymous_id.as_str())).collect();
    let mut expected_sent = vec![
        (2, "u-1", user, ""),
        (3, "a-2", "", anonymous.as_str()),
        (4, "u-3", user, ""),
        (5, "a-3", "", anonymous.as_str()),
        (1, "dup", "", anonymous.as_str()),
        (6, "v-1", other.as_str(), ""),
    ];
    if other.as_str() < user {
        expected_sent.rotate_right(1);
    }
    assert_eq!(sent, expected_sent);
}

/// Ids travel as external data (`external.rs`), any bytes a client may send and any number of
/// them in one statement per shard: each stored id is found, on whichever shard owns it, and
/// no other (the same id in another project, a prefix, an id never stored).
#[tokio::test(flavor = "multi_thread")]
async fn stored_ids_are_found_whatever_their_bytes_and_however_many_are_asked() {
    let Some(urls) = cluster_urls() else { return };
    let database = TestDatabase::new(&urls, "ids");
    let store = ClickHouse::connect(&config(urls.clone(), &database.name)).await.unwrap();
    let awkward = ["it's", "tab\there", "new\nline", "back\\slash", "\"quoted\"", "é-ü-中", "--sextant-", " "];
    let long = "x".repeat(100_000);
    let mut stored: Vec<String> = awkward.iter().map(|s| s.to_string()).chain([long]).collect();
    stored.extend((0..30_000).map(|i| format!("event-{i:08}")));
    let event = |id: &str| Event {
        event_id: id.into(),
        name: "visit".into(),
        user_id: "u1".into(),
        anonymous_id: String::new(),
        timestamp: START,
        properties: vec![],
    };
    let events: Vec<Event> = stored.iter().map(|id| event(id)).collect();
    assert!(store.store_events("p", &events, 0).await.unwrap().iter().all(|new| *new));
    store.store_events("other", &[event("only-in-other")], 50_000).await.unwrap();

    let mut asked: Vec<&str> = stored.iter().map(String::as_str).collect();
    asked.extend(["only-in-other", "event-0000000", "never", "it"]);
    let found = store.stored_ids("p", &asked).await.unwrap();
    let expected: std::collections::HashSet<String> = stored.iter().cloned().collect();
    assert_eq!(found.len(), expected.len());
    assert_eq!(found, expected);
    assert!(store.stored_ids("p", &[]).await.unwrap().is_empty());
    // A resend of all of them stores none again.
    assert!(store.store_events("p", &events, 60_000).await.unwrap().iter().all(|new| !*new));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_user_counts_nowhere_at_once_and_leaves_the_tables_after_the_mutations() {
    let Some(urls) = cluster_urls() else { return };
    let database = TestDatabase::new(&urls, "delete");
    let store = ClickHouse::connect(&config(urls.clone(), &database.name)).await.unwrap();
    let event = |id: &str, user: &str, anon: &str, minute: i64, note: &str| Event {
        event_id: id.into(),
        name: "visit".into(),
        user_id: user.into(),
        anonymous_id: anon.into(),
        timestamp: START + minute * 60_000_000,
        properties: vec![("note".into(), Value::String(note.into()))],
    };
    let project = "p";
    let before = [
        event("e1", "gone", "", 1, "secret-of-gone"),
        event("e2", "", "anon-of-gone", 2, "secret-of-anon"),
        event("e3", "kept", "", 3, "kept-note"),
    ];
    store.store_events(project, &before, 0).await.unwrap();
    store.insert_aliases(project, &[("anon-of-gone".into(), "gone".into())], 3).await.unwrap();
    let traits = UserUpdate {
        user_id: "gone".into(),
        set: vec![("email".into(), Value::String("gone@example.com".into()))],
        ..Default::default()
    };
    store.insert_user_updates(project, &[traits], 4).await.unwrap();

    // Hold the shards' merges (which run mutations), so the read below sees the tombstone's
    // work, not the mutation's.
    let merges = |verb: &'static str| {
        let store = &store;
        async move {
            for server in &store.servers {
                for table in ["events_local", "user_updates_local", "aliases_local"] {
                    server.query(&format!("SYSTEM {verb} MERGES {table}")).execute().await.unwrap();
                }
            }
        }
    };
    merges("STOP").await;
    store.delete_user(project, "gone", 5).await.unwrap();
    let people = |batch: &PersonBatch| -> Vec<(String, Vec<String>)> {
        let mut people = Vec::new();
        batch.for_each(crate::core::store::source::Scan::all(), |person, events| {
            let ids = events.rows.iter().map(|&r| batch.row_event_id(r as usize).into_owned()).collect();
            people.push((batch.person_name(person).to_owned(), ids));
        });
        people
    };
    // At once: only the other user is left; the deleted user has no traits either.
    let read = store.person_batch(project, &Fetch::everything()).await.unwrap();
    assert_eq!(people(&read), vec![("kept".to_owned(), vec!["e3".to_owned()])]);
    assert!(read.trait_values("email").is_empty());

    // A resend is a duplicate; the same ids are not stored again. New events after the
    // deletion count, and the anonymous id is its own visitor again (no longer aliased).
    let resend = store.store_events(project, &before[..2], 6).await.unwrap();
    assert_eq!(resend, vec![false, false]);
    let after = [event("e4", "gone", "", 10, "new"), event("e5", "", "anon-of-gone", 11, "new")];
    store.store_events(project, &after, 8).await.unwrap();
    // An id first aliased to the user after the deletion brings its earlier events to them,
    // as in the embedded engine: the deletion did not cover them.
    store.store_events(project, &[event("e0", "", "late-anon", 0, "early")], 10).await.unwrap();
    store.insert_aliases(project, &[("late-anon".into(), "gone".into())], 11).await.unwrap();
    let read = store.person_batch(project, &Fetch::everything()).await.unwrap();
    assert_eq!(
        people(&read),
        vec![
            ("anon-of-gone".to_owned(), vec!["e5".to_owned()]),
            ("gone".to_owned(), vec!["e0".to_owned(), "e4".to_owned()]),
            ("kept".to_owned(), vec!["e3".to_owned()]),
        ]
    );

    // Once the shards' mutations ran, the rows are gone from the tables, not just hidden.
    merges("START").await;
    assert!(store.mutations_done(std::time::Duration::from_secs(60)).await.unwrap(), "mutations finish");
    let leftover: u64 = store
        .front()
        .query(
            "SELECT count() FROM events WHERE project = ? AND event_id IN ('e1', 'e2')
             OR has(prop_strings, 'secret-of-gone') OR has(prop_strings, 'secret-of-anon')",
        )
        .bind(project)
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(leftover, 0, "the deleted user's events are gone from every shard");
    let updates: u64 =
        store.front().query("SELECT count() FROM user_updates WHERE user_id = 'gone'").fetch_one().await.unwrap();
    assert_eq!(updates, 0);
}

/// One write of a deletion scenario, numbered by its position.
enum Op {
    Event(&'static str, &'static str, &'static str),
    Alias(&'static str, &'static str),
    Delete(&'static str),
}

/// Each person's event ids, by person name.
fn people_of(source: &impl EventSource) -> Vec<(String, Vec<String>)> {
    let mut people = Vec::new();
    source.for_each(crate::core::store::source::Scan::all(), |person, events| {
        let ids = events.rows.iter().map(|&r| source.row_event_id(r as usize).into_owned()).collect();
        people.push((source.person_name(person).to_owned(), ids));
    });
    people.sort();
    people
}

#[tokio::test(flavor = "multi_thread")]
async fn deletions_follow_the_alias_history_as_the_embedded_engine_does() {
    use crate::core::store::ProjectData;
    use crate::core::store::record::LogRecord;
    let Some(urls) = cluster_urls() else { return };
    let database = TestDatabase::new(&urls, "history");
    let store = ClickHouse::connect(&config(urls.clone(), &database.name)).await.unwrap();
    let scenarios: [(&str, Vec<Op>); 3] = [
        // An id aliased to V, then to U; U deleted: the id is its own again, not V's.
        (
            "older-alias",
            vec![
                Op::Alias("a", "v"),
                Op::Alias("a", "u"),
                Op::Event("e2", "", "a"),
                Op::Delete("u"),
                Op::Event("e4", "", "a"),
            ],
        ),
        // An id's event credited to U when U is deleted stays gone when the id is aliased again.
        (
            "realiased",
            vec![
                Op::Event("e0", "", "a"),
                Op::Alias("a", "u"),
                Op::Delete("u"),
                Op::Alias("a", "v"),
                Op::Event("e4", "", "a"),
            ],
        ),
        // U deleted twice: the id's own event between the two deletions stays.
        (
            "twice",
            vec![
                Op::Alias("a", "u"),
                Op::Event("e1", "u", ""),
                Op::Delete("u"),
                Op::Event("e3", "", "a"),
                Op::Event("e4", "u", ""),
                Op::Delete("u"),
            ],
        ),
    ];
    let event = |id: &str, user: &str, anon: &str, seq: usize| Event {
        event_id: id.into(),
        name: "visit".into(),
        user_id: user.into(),
        anonymous_id: anon.into(),
        timestamp: START + seq as i64,
        properties: vec![],
    };
    for (project, ops) in &scenarios {
        let mut data = ProjectData::default();
        let p = || project.to_string();
        for (seq, op) in ops.iter().enumerate() {
            let seq64 = seq as u64;
            match op {
                Op::Event(id, user, anon) => {
                    let e = event(id, user, anon, seq);
                    store.store_events(project, std::slice::from_ref(&e), seq64).await.unwrap();
                    data.apply(&LogRecord::Events { project: p(), events: vec![e] }, &[]);
                }
                Op::Alias(anon, user) => {
                    store.insert_aliases(project, &[(anon.to_string(), user.to_string())], seq64).await.unwrap();
                    let record =
                        LogRecord::Alias { project: p(), anonymous_id: anon.to_string(), user_id: user.to_string() };
                    data.apply(&record, &[]);
                }
                Op::Delete(user) => {
                    // Tombstones alone first: the shards' merges (and so mutations) wait.
                    for server in &store.servers {
                        server.query("SYSTEM STOP MERGES").execute().await.unwrap();
                    }
                    store.delete_user(project, user, seq64).await.unwrap();
                    data.apply(&LogRecord::UserDeleted { project: p(), user_id: user.to_string() }, &[]);
                    data.settle_removals();
                    let read = store.person_batch(project, &Fetch::everything()).await.unwrap();
                    assert_eq!(
                        people_of(&read),
                        people_of(&data.source()),
                        "{project}, tombstones only, after op {seq}"
                    );
                    for server in &store.servers {
                        server.query("SYSTEM START MERGES").execute().await.unwrap();
                    }
                    assert!(store.mutations_done(std::time::Duration::from_secs(60)).await.unwrap());
                }
            }
            let read = store.person_batch(project, &Fetch::everything()).await.unwrap();
            assert_eq!(people_of(&read), people_of(&data.source()), "{project}, after op {seq}");
        }
    }
}

#[test]
fn server_errors_are_told_apart_by_their_code() {
    let bad = |m: &str| backend_error("x", &clickhouse::error::Error::BadResponse(m.into()));
    let shard_down = "Code: 279, e.displayText() = DB::NetException: All connection tries failed";
    assert!(matches!(bad(shard_down), Error::BackendUnavailable(_)));
    let password = "Code: 193, e.displayText() = DB::Exception: Wrong password for user default";
    assert!(matches!(bad(password), Error::FailedPrecondition(m) if m.contains("credentials")));
    let syntax = "Code: 62, e.displayText() = DB::Exception: Syntax error";
    assert!(matches!(bad(syntax), Error::Storage(_)));
    assert!(matches!(bad("no code at all"), Error::BackendUnavailable(_)));
    assert_eq!(exception_code("Code: 210, e.displayText()"), Some(210));
    assert_eq!(exception_code("Code: 1"), Some(1));
    assert_eq!(exception_code("Code: x"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shard_down_fails_writes_and_reads_instead_of_answering_in_part() {
    let Some(urls) = cluster_urls() else { return };
    let database = TestDatabase::new(&urls, "shard_down");
    // scripts/clickhouse-cluster.sh defines this cluster: the first shard, and one on a port
    // nothing listens on (for reads); writes go to the shard servers, the second one down too.
    let down = ClickHouseConfig { cluster: "sextant_one_shard_down".into(), ..config(urls.clone(), &database.name) };
    let mut store = ClickHouse::connect(&down).await.expect("a cluster started by scripts/clickhouse-cluster.sh");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    store.servers[1] = Client::default().with_url(format!("http://{closed}")).with_database(database.name.as_str());
    store.external[1] =
        external::ExternalData::new(&format!("http://{closed}"), &database.name, None, None, down.timeout);
    let events: Vec<Event> = (0..50)
        .map(|i| Event {
            event_id: format!("e{i}"),
            name: "visit".into(),
            user_id: format!("u{i}"),
            anonymous_id: String::new(),
            timestamp: START + i,
            properties: vec![],
        })
        .collect();
    // Some of these people live on the missing shard: the insert fails, so nothing is acked.
    let error = store.store_events("p", &events, 0).await.unwrap_err();
    assert!(matches!(&error, Error::BackendUnavailable(_)), "{error:?}");
    // So does the lookup of the ids the missing shard owns.
    let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    let error = store.stored_ids("p", &ids).await.unwrap_err();
    assert!(matches!(&error, Error::BackendUnavailable(_)), "{error:?}");
    // A read needs every shard: an error, never the half that one shard has.
    let error = store.person_batch("p", &Fetch::everything()).await.err().unwrap();
    assert!(matches!(&error, Error::BackendUnavailable(_)), "{error:?}");
}

/// A shard server that accepts connections but never answers (hung, or cut off without a
/// reset) fails the call with UNAVAILABLE once the timeout passes: the id lookup (and so an
/// ack) and a read, instead of waiting for ever.
#[tokio::test(flavor = "multi_thread")]
async fn a_shard_that_stops_answering_fails_the_call_after_the_timeout() {
    let Some(urls) = cluster_urls() else { return };
    let database = TestDatabase::new(&urls, "hung");
    let quick = ClickHouseConfig { timeout: std::time::Duration::from_secs(1), ..config(urls.clone(), &database.name) };
    let mut store = ClickHouse::connect(&quick).await.unwrap();
    // The kernel accepts connections into its backlog; nothing ever reads or answers them.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", hung.local_addr().unwrap());
    store.servers[1] = Client::with_http_client(external::http_client(quick.timeout))
        .with_url(url.as_str())
        .with_database(database.name.as_str());
    store.external[1] = external::ExternalData::new(&url, &database.name, None, None, quick.timeout);
    let ids: Vec<String> = (0..50).map(|i| format!("e{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let patience = std::time::Duration::from_secs(60);
    let lookup = tokio::time::timeout(patience, store.stored_ids("p", &ids)).await.expect("the lookup hung");
    assert!(
        matches!(&lookup, Err(Error::BackendUnavailable(m)) if m.contains("no answer within the timeout")),
        "{lookup:?}"
    );
    let read =
        tokio::time::timeout(patience, store.person_batch("p", &Fetch::everything())).await.expect("the read hung");
    assert!(matches!(&read, Err(Error::BackendUnavailable(m)) if m.contains("timeout")), "{:?}", read.err());
    drop(hung);
}

/// The quarantine records lose the events that left the quarantine (here a deleted user's and
/// a replayed one) in place, on whichever shard holds each: no row is added or removed, a
/// replay rebuilds the same quarantine and MANUAL values, and no stored record still holds
/// the deleted user's event. A record changed since it was read keeps its value.
#[test]
fn quarantine_records_are_rewritten_in_place_without_the_events_that_left() {
    use crate::core::model::{ManualValue, QuarantinedEvent};
    use crate::core::store::ProjectData;
    use crate::core::store::record::{LogRecord, decode_record, encode_record};
    use crate::core::store::remote::RemoteEvents;
    use crate::storage::Storage;
    use storage::ClickHouseStorage;
    let Some(urls) = cluster_urls() else { return };
    let database = TestDatabase::new(&urls, "requarantine");
    let storage = ClickHouseStorage::open(&config(urls.clone(), &database.name)).unwrap();
    let entry = |id: u64, user: &str| QuarantinedEvent {
        id,
        event: Event {
            event_id: format!("q{id}"),
            name: "unplanned".into(),
            user_id: user.into(),
            timestamp: START,
            anonymous_id: String::new(),
            properties: vec![("email".into(), Value::String(format!("{user}@example.com")))],
        },
        reasons: vec!["unknown event".into()],
        received: START,
    };
    let quarantined = |entries: Vec<QuarantinedEvent>| LogRecord::Quarantined { project: "p".into(), entries };
    // Enough records that both shards hold some.
    let mut history: Vec<LogRecord> = (0..12).map(|i| quarantined(vec![entry(100 + i, "kept")])).collect();
    history.push(quarantined(vec![entry(1, "gone"), entry(2, "kept")]));
    history.push(quarantined(vec![entry(3, "gone")]));
    history.push(LogRecord::ManualValues {
        project: "p".into(),
        metric_key: "spend".into(),
        values: vec![ManualValue { timestamp: START, value: 9.5, dimensions: vec![] }],
    });
    // A record whose new value is larger than a statement may be by default (256 KiB).
    let mut large = entry(8, "kept");
    let mut state = 88_172_645_463_325_252u64;
    let noise: String = (0..600_000)
        .map(|_| {
            // xorshift64: digits lz4 cannot shrink much (and no word the test looks for).
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(b'0' + (state % 10) as u8)
        })
        .collect();
    large.event.properties.push(("note".into(), Value::String(noise)));
    history.push(quarantined(vec![entry(7, "gone"), large]));
    history.push(LogRecord::Unquarantined { project: "p".into(), ids: vec![1, 3, 7, 105] });
    let encoded: Vec<crate::storage::Encoded> = history.iter().map(|r| encode_record(r).unwrap()).collect();
    storage.append(&encoded).unwrap();
    let replayed = || {
        let mut records = Vec::new();
        storage
            .replay(None, &mut |value| {
                records.push(decode_record(value)?);
                Ok(())
            })
            .unwrap();
        records
    };
    let state = |records: &[LogRecord]| {
        let mut data = ProjectData::default();
        records.iter().for_each(|r| data.apply(r, &[]));
        (data.quarantine, data.manual)
    };
    let before = replayed();
    assert_eq!(before, history);
    let shards: Vec<usize> = storage
        .run(|store| Box::pin(async move { store.local_records().await }))
        .unwrap()
        .iter()
        .map(|(server, _)| *server)
        .collect();
    assert!(shards.contains(&0) && shards.contains(&1), "records on both shards: {shards:?}");

    let rewritten = storage.rewrite_records(&mut |records| crate::core::store::quarantine_rewrites(records)).unwrap();
    assert_eq!(rewritten, 4, "the records of entries 1, 3, 7 and 105");
    assert!(storage.settle(std::time::Duration::from_secs(60)).unwrap(), "mutations finish");
    let after = replayed();
    assert_eq!(after.len(), history.len(), "no record added or removed");
    assert_eq!(state(&after), state(&before));
    let text = format!("{after:?}");
    assert!(!text.contains("gone") && !text.contains("q105"), "{text}");
    assert!(text.contains("q2") && text.contains("q104") && text.contains("q8") && text.contains("spend"));
    assert_eq!(storage.rewrite_records(&mut |records| crate::core::store::quarantine_rewrites(records)).unwrap(), 0);

    // A rewrite naming a value that has changed since (another node's rewrite) changes nothing.
    let stored = storage.run(|store| Box::pin(async move { store.local_records().await })).unwrap();
    let (server, first) = &stored[0];
    let stale = vec![(*server, first.seq, first.hash ^ 1, b"other".to_vec())];
    storage.run(move |store| Box::pin(async move { store.rewrite_records(&stale).await })).unwrap();
    assert!(storage.settle(std::time::Duration::from_secs(60)).unwrap());
    assert_eq!(replayed(), after);
}
