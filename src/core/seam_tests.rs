//! Every analysis over two sources of the same events gives the same answers: the embedded
//! engine (events in arrival order, aliases applied through its person order) and a
//! `PersonBatch` filled the way an external store streams events (grouped by the person they
//! count for, sorted by time then arrival, identity resolved by this test's own model of
//! aliases and deletions, people in another order). An analysis that read around the seam,
//! depended on person ids or on how a source splits its people, or asked a scan for too
//! narrow a time range would answer differently.

use std::collections::{BTreeMap, HashMap};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::core::analysis::attribution::{self, AttributionModel, AttributionQuery};
use crate::core::analysis::funnel::{self, Exclusion, FunnelMode, FunnelOrder, FunnelQuery};
use crate::core::analysis::retention::{
    self, CohortTableQuery, CohortValue, RetentionMode, RetentionQuery, TableShape,
};
use crate::core::analysis::revenue;
use crate::core::cohort::{self, Behavioural, Cohort, Cohorts, Condition, ConditionGroup, Definition, TimeFrame};
use crate::core::experiment::definition::{Experiment, Variant};
use crate::core::experiment::holdout::{Holdout, seen_in_list, seen_people};
use crate::core::experiment::measure::{self, MetricPlan, Windows};
use crate::core::filter::{EventSelector, Filter, FilterOp};
use crate::core::metric::definition::{Metric, MetricBook, MetricKind, Period};
use crate::core::metric::evaluate::evaluate;
use crate::core::metric::scan::MetricQuery;
use crate::core::model::{Event, MICROS_PER_DAY, ManualValue, Micros, UserUpdate, Value};
use crate::core::store::ProjectData;
use crate::core::store::person_batch::PersonBatch;
use crate::core::store::record::LogRecord;
use crate::core::store::remote::{CohortCountRequest, CohortCounts, Fetch, PersonCounts};
use crate::core::store::source::{EventSource, ManualValues};
use crate::core::time::Granularity;

const HOUR: Micros = 3_600_000_000;
pub(crate) const DAY: Micros = MICROS_PER_DAY;
/// 2026-03-16 00:00 UTC: the range crosses Berlin's change to summer time (March 29).
pub(crate) const START: Micros = 1_773_619_200_000_000;
const PROJECT: &str = "p";

/// What was sent, in order, and what this test expects the store to hold. The ClickHouse
/// backend's test sends the same.
pub(crate) struct Sent {
    pub events: Vec<Event>,
    /// Final alias per anonymous id (a later alias wins).
    pub aliases: HashMap<String, String>,
    pub traits: BTreeMap<String, BTreeMap<String, Value>>,
    pub deleted: Vec<String>,
    pub spend: Vec<ManualValue>,
}

impl Sent {
    /// One update per user with traits, setting them all.
    pub(crate) fn trait_updates(&self) -> Vec<UserUpdate> {
        self.traits
            .iter()
            .map(|(user, traits)| UserUpdate {
                user_id: user.clone(),
                set: traits.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                ..Default::default()
            })
            .collect()
    }
}

pub(crate) fn sent(seed: u64) -> Sent {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let users: Vec<String> = (0..30).map(|i| format!("u{i:02}")).collect();
    let anons: Vec<String> = (0..25).map(|i| format!("a{i:02}")).collect();
    let pick = |rng: &mut ChaCha8Rng, list: &[&str]| list[rng.random_range(0..list.len())].to_owned();
    let mut events = Vec::new();
    for i in 0..700 {
        let (user_id, anonymous_id) = match rng.random_range(0..20) {
            0..12 => (users[rng.random_range(0..users.len())].clone(), String::new()),
            12..17 => (String::new(), anons[rng.random_range(0..anons.len())].clone()),
            _ => (users[rng.random_range(0..users.len())].clone(), anons[rng.random_range(0..anons.len())].clone()),
        };
        let name = pick(&mut rng, &["visit", "visit", "visit", "signup", "purchase", "purchase", "sub", "$exposure"]);
        // Half-hour steps: many ties in time, broken by arrival.
        let timestamp = START + rng.random_range(0..30 * 48) * HOUR / 2;
        let mut properties = Vec::new();
        if rng.random_range(0..4) > 0 {
            properties.push(("plan".to_owned(), Value::String(pick(&mut rng, &["free", "pro", "team"]))));
        }
        match name.as_str() {
            "visit" => properties.push(("channel".into(), Value::String(pick(&mut rng, &["ads", "seo", "mail", ""])))),
            "purchase" => properties.push(("amount".into(), Value::Number(f64::from(rng.random_range(1..200)) / 2.0))),
            "sub" => properties.push(("mrr".into(), Value::Number(pick_number(&mut rng, &[0.0, 10.0, 20.0, 35.5])))),
            "$exposure" => {
                properties.push(("experiment".into(), Value::String("exp".into())));
                let variant = pick(&mut rng, &["control", "treatment", "control", "treatment", "retired"]);
                properties.push(("variant".into(), Value::String(variant)));
            }
            _ => {}
        }
        events.push(Event { event_id: format!("e{i}"), name, user_id, anonymous_id, timestamp, properties });
    }
    let mut aliases = HashMap::new();
    for _ in 0..14 {
        aliases
            .insert(anons[rng.random_range(0..anons.len())].clone(), users[rng.random_range(0..users.len())].clone());
    }
    let mut traits: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
    // Users 25..30 have traits but may have no events of their own.
    let with_traits: Vec<&String> = users.iter().filter(|_| rng.random_range(0..3) > 0).chain(&users[25..]).collect();
    for user in with_traits {
        let entry = traits.entry(user.clone()).or_default();
        entry.insert("country".into(), Value::String(pick(&mut rng, &["de", "fr", "us"])));
        if rng.random_range(0..2) == 0 {
            entry.insert("age".into(), Value::Number(f64::from(rng.random_range(18..70))));
        }
    }
    // A user with traits and no events at all (a "did not" cohort holds them).
    traits.entry("quiet".into()).or_default().insert("country".into(), Value::String("de".into()));
    let deleted = vec![users[rng.random_range(0..10)].clone(), users[rng.random_range(10..20)].clone()];
    let spend = ["ads", "seo", "mail"]
        .iter()
        .enumerate()
        .map(|(i, channel)| ManualValue {
            timestamp: START + i as Micros * DAY,
            value: 100.0 * (i + 1) as f64,
            dimensions: vec![("channel".into(), Value::String((*channel).into()))],
        })
        .collect();
    Sent { events, aliases, traits, deleted, spend }
}

fn pick_number(rng: &mut ChaCha8Rng, list: &[f64]) -> f64 {
    list[rng.random_range(0..list.len())]
}

/// The embedded engine, fed the way the writer feeds it.
pub(crate) fn embedded(sent: &Sent) -> ProjectData {
    let mut data = ProjectData::default();
    let project = || PROJECT.to_owned();
    let (first, rest) = sent.events.split_at(sent.events.len() / 2);
    data.apply(&LogRecord::Events { project: project(), events: first.to_vec() }, &[]);
    // Aliases in between batches: rows already stored move to the user.
    for (anonymous_id, user_id) in &sent.aliases {
        let record =
            LogRecord::Alias { project: project(), anonymous_id: anonymous_id.clone(), user_id: user_id.clone() };
        data.apply(&record, &[]);
    }
    data.apply(&LogRecord::Events { project: project(), events: rest.to_vec() }, &[]);
    data.apply(&LogRecord::Users { project: project(), at: START, updates: sent.trait_updates() }, &[]);
    for user_id in &sent.deleted {
        data.apply(&LogRecord::UserDeleted { project: project(), user_id: user_id.clone() }, &[]);
    }
    data.settle_removals();
    data.apply(
        &LogRecord::ManualValues { project: project(), metric_key: "spend".into(), values: sent.spend.clone() },
        &[],
    );
    data
}

/// The same events as an external store would stream them, from this test's own model.
fn batch(sent: &Sent, parts: usize) -> PersonBatch {
    fetched(sent, parts, &Fetch::everything())
}

/// What a remote engine returns for `fetch`: the events of its names in its range, people
/// with none of them left out (but users with traits).
fn fetched(sent: &Sent, parts: usize, fetch: &Fetch) -> PersonBatch {
    let owner = |e: &Event| owner(sent, e);
    let mut people: BTreeMap<(String, bool), Vec<(Micros, usize)>> = BTreeMap::new();
    let wanted = |e: &Event| {
        (fetch.from..fetch.to).contains(&e.timestamp)
            && fetch.names.as_ref().is_none_or(|names| names.contains(&e.name))
    };
    for (arrival, event) in sent.events.iter().enumerate().filter(|(_, e)| wanted(e)) {
        let (id, is_user) = owner(event);
        if is_user && sent.deleted.contains(&id) {
            continue;
        }
        people.entry((id, is_user)).or_default().push((event.timestamp, arrival));
    }
    let with_traits = |user: &&String| fetch.traits && !sent.deleted.contains(*user);
    for user in sent.traits.keys().filter(with_traits) {
        people.entry((user.clone(), true)).or_default();
    }
    let mut batch = PersonBatch::default();
    batch.split_parts(parts);
    // People in another order than the embedded engine numbers them.
    for ((id, is_user), mut rows) in people.into_iter().rev() {
        let traits = match sent.traits.get(&id).filter(|_| is_user && fetch.traits) {
            Some(traits) => traits.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            None => Vec::new(),
        };
        batch.add_person(&id, is_user, traits).unwrap();
        rows.sort_unstable();
        for (_, arrival) in rows {
            batch.add_event(sent.events[arrival].clone()).unwrap();
        }
    }
    let spend: ManualValues =
        sent.spend.iter().map(|v| ((v.timestamp, format!("{:?}", v.dimensions)), v.clone())).collect();
    batch.add_manual("spend", spend);
    batch
}

/// Who an event counts for: its user, else the user its anonymous id is aliased to.
fn owner(sent: &Sent, e: &Event) -> (String, bool) {
    if !e.user_id.is_empty() {
        return (e.user_id.clone(), true);
    }
    match sent.aliases.get(&e.anonymous_id) {
        Some(user) => (user.clone(), true),
        None => (e.anonymous_id.clone(), false),
    }
}

/// The members of cohort `id` as a remote engine would count them now (`None` for no cohort).
fn counted_cohort(sent: &Sent, cohorts: &Cohorts, id: &str) -> Option<std::sync::Arc<cohort::MemberIds>> {
    let cohort = cohorts.get(id)?;
    let request = cohort::count_request(cohort, crate::core::model::now_micros(), Micros::MIN)?;
    Some(std::sync::Arc::new(cohort::members_from_counts(cohort, counted(sent, &request)).unwrap()))
}

/// What a remote engine counts for `request` (`RemoteEvents::cohort_counts`), from this test's
/// own model: per person with events a condition counts (with `everyone`, per person with any
/// event), each condition's events; every user's traits when asked. Filters: EQ and NEQ.
fn counted(sent: &Sent, request: &CohortCountRequest) -> CohortCounts {
    let passes = |f: &Filter, e: &Event| {
        let value = e.properties.iter().find(|(key, _)| *key == f.property).map(|(_, v)| v);
        let listed = value.is_some_and(|v| !matches!(v, Value::Null) && f.values.contains(v));
        match f.op {
            FilterOp::Eq => listed,
            FilterOp::Neq => !listed,
            op => panic!("the test's model has no {op:?}"),
        }
    };
    let mut people: BTreeMap<(String, bool), Vec<u64>> = BTreeMap::new();
    for event in sent.events.iter().filter(|e| e.timestamp >= request.not_before) {
        let (id, is_user) = owner(sent, event);
        if is_user && sent.deleted.contains(&id) {
            continue;
        }
        let counts: Vec<u64> = request
            .conditions
            .iter()
            .map(|c| {
                let counts = c.name == event.name
                    && (c.from..c.to).contains(&event.timestamp)
                    && c.filters.iter().all(|f| passes(f, event));
                u64::from(counts)
            })
            .collect();
        if request.everyone || counts.contains(&1) {
            let total = people.entry((id, is_user)).or_insert_with(|| vec![0; counts.len()]);
            total.iter_mut().zip(counts).for_each(|(t, c)| *t += c);
        }
    }
    let traits = sent
        .traits
        .iter()
        .filter(|(user, _)| request.with_traits && !sent.deleted.contains(*user))
        .map(|(user, traits)| (user.clone(), traits.iter().map(|(k, v)| (k.clone(), v.clone())).collect()))
        .collect();
    let people = people.into_iter().map(|((id, is_user), counts)| PersonCounts { id, is_user, counts }).collect();
    CohortCounts { people, traits }
}

/// `a` and `b` print the same but for floating-point rounding (sums taken in another order).
pub(crate) fn assert_same(what: &str, a: &impl std::fmt::Debug, b: &impl std::fmt::Debug) {
    let (a, b) = (format!("{a:?}"), format!("{b:?}"));
    let (ta, tb) = (tokens(&a), tokens(&b));
    let same = ta.len() == tb.len()
        && ta.iter().zip(&tb).all(|(x, y)| match (x.parse::<f64>(), y.parse::<f64>()) {
            (Ok(x), Ok(y)) => x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs()),
            _ => x == y,
        });
    assert!(same, "{what} differs:\n embedded: {a}\n batch:    {b}");
}

/// Numbers and the text between them.
fn tokens(s: &str) -> Vec<&str> {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut start) = (0, 0);
    while i < bytes.len() {
        let starts_number = bytes[i].is_ascii_digit()
            || (bytes[i] == b'-' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit))
                && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric());
        if starts_number && (i == 0 || !bytes[i - 1].is_ascii_alphabetic()) {
            out.push(&s[start..i]);
            let begin = i;
            i += 1;
            while i < bytes.len()
                && (bytes[i].is_ascii_digit()
                    || bytes[i] == b'.'
                    || bytes[i] == b'e'
                    || (bytes[i] == b'-' && bytes[i - 1] == b'e'))
            {
                i += 1;
            }
            out.push(&s[begin..i]);
            start = i;
        } else {
            i += 1;
        }
    }
    out.push(&s[start..]);
    out
}

fn selector(event: &str) -> EventSelector {
    EventSelector { event: event.into(), filters: Vec::new() }
}

fn filter(property: &str, op: FilterOp, values: &[&str]) -> Filter {
    Filter { property: property.into(), op, values: values.iter().map(|v| Value::String((*v).into())).collect() }
}

fn cohorts() -> Cohorts {
    let behaviour = |event: &str, min_count, did_not, frame| {
        Condition::Behavioural(Behavioural { selector: selector(event), min_count, did_not, frame })
    };
    let defs = [
        (
            "buyers",
            Definition::Conditions(ConditionGroup {
                any: false,
                conditions: vec![
                    behaviour("purchase", 2, false, TimeFrame::Range(START + 3 * DAY, START + 20 * DAY)),
                    Condition::Group(ConditionGroup {
                        any: true,
                        conditions: vec![
                            Condition::Trait(filter("user.country", FilterOp::Eq, &["de"])),
                            behaviour("signup", 1, true, TimeFrame::All),
                        ],
                    }),
                ],
            }),
        ),
        ("listed", Definition::Static(["u01", "u05", "u07", "a03", "a11", "nobody"].map(String::from).to_vec())),
    ];
    defs.into_iter()
        .map(|(id, definition)| {
            (
                id.to_owned(),
                Cohort { id: id.into(), name: id.into(), description: String::new(), definition, created: 0 },
            )
        })
        .collect()
}

fn metric(key: &str, kind: MetricKind, event: &str, property: &str) -> Metric {
    Metric { key: key.into(), kind, selector: Some(selector(event)), property: property.into(), ..Default::default() }
}

pub(crate) fn compare_all(embedded: &impl EventSource, batch: &impl EventSource, seed: u64) {
    let cohorts = cohorts();
    let mut book = MetricBook::default();
    book.insert("spend".into(), vec![Metric { key: "spend".into(), kind: MetricKind::Manual, ..Default::default() }]);
    let end = START + 30 * DAY;

    for (id, cohort) in &cohorts {
        let a = cohort::member_ids(embedded, &cohort::evaluate(embedded, cohort, end));
        let b = cohort::member_ids(batch, &cohort::evaluate(batch, cohort, end));
        assert_same(&format!("seed {seed} cohort {id}"), &a, &b);
    }

    for (what, query) in funnel_queries() {
        let what = format!("seed {seed} {what}");
        assert_same(&what, &funnel::run(embedded, &cohorts, &query), &funnel::run(batch, &cohorts, &query));
    }

    for (first_time, unbounded, mode, breakdown) in [
        (true, false, RetentionMode::Calendar, None),
        (false, false, RetentionMode::Calendar, Some("plan")),
        (true, true, RetentionMode::Rolling, Some("user.country")),
    ] {
        let shape = TableShape {
            from: START + DAY,
            to: START + 20 * DAY,
            period: Period::Week,
            periods: 4,
            mode,
            timezone: "Europe/Berlin".into(),
            breakdown: breakdown.map(String::from),
            ..Default::default()
        };
        let query = RetentionQuery {
            cohort_event: selector("visit"),
            return_event: Some(selector("purchase")),
            first_time,
            unbounded,
            shape: shape.clone(),
        };
        let what = format!("seed {seed} retention {first_time} {unbounded} {mode:?}");
        assert_same(
            &what,
            &retention::retention(embedded, &cohorts, &query),
            &retention::retention(batch, &cohorts, &query),
        );
        let table = CohortTableQuery {
            first_event: Some(selector("signup")),
            value: CohortValue::CumulativeRevenuePerUser,
            revenue: Some(selector("purchase")),
            revenue_property: "amount".into(),
            shape,
            ..Default::default()
        };
        let what = format!("seed {seed} cohort table {mode:?}");
        assert_same(
            &what,
            &retention::cohort_table(embedded, &cohorts, &table),
            &retention::cohort_table(batch, &cohorts, &table),
        );
    }

    let tz: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
    for m in &seam_metrics() {
        for (granularity, breakdown, filters, cohort_id) in [
            (Granularity::Day, None, vec![], ""),
            (Granularity::Week, Some("plan"), vec![filter("user.country", FilterOp::In, &["de", "us"])], ""),
            (Granularity::Total, Some("user.country"), vec![], "listed"),
        ] {
            if breakdown.is_some() && matches!(m.kind, MetricKind::LatestSum | MetricKind::RevenueBridge) {
                continue;
            }
            let query = MetricQuery {
                filters: filters.clone(),
                breakdown: breakdown.map(String::from),
                breakdown_limit: 2,
                cohort_id: cohort_id.into(),
                ..MetricQuery::new(START + DAY, START + 29 * DAY, granularity, tz)
            };
            let a = metric_answer(embedded, &book, &cohorts, m, &query);
            let b = metric_answer(batch, &book, &cohorts, m, &query);
            assert_same(&format!("seed {seed} metric {} {granularity:?} {breakdown:?}", m.key), &a, &b);
        }
    }

    for model in AttributionModel::ALL {
        let query = attribution_query(model);
        let what = format!("seed {seed} attribution {model:?}");
        assert_same(
            &what,
            &attribution::run(embedded, &book, &cohorts, &query),
            &attribution::run(batch, &book, &cohorts, &query),
        );
    }

    let bounds: Vec<Micros> = (0..=4).map(|w| START + w * 7 * DAY).collect();
    assert_same(
        &format!("seed {seed} revenue bridge"),
        &revenue::bridge(embedded, &selector("sub"), "mrr", &[], None, &bounds),
        &revenue::bridge(batch, &selector("sub"), "mrr", &[], None, &bounds),
    );

    let (experiment, all) = experiment_case();
    let a = experiment_readout(embedded, &experiment, &all);
    let b = experiment_readout(batch, &experiment, &all);
    assert_same(&format!("seed {seed} experiment"), &a, &b);
    let (from, to) = EXPERIMENT_RANGE;

    let holdout = Holdout { key: "h".into(), percent: 30.0, seed: "s".into(), ..Default::default() };
    let a = by_name(embedded, seen_people(embedded, &holdout, from, to).users);
    let b = by_name(batch, seen_people(batch, &holdout, from, to).users);
    assert_same(&format!("seed {seed} holdout"), &a, &b);
}

/// The metrics both seam tests evaluate: every kind that reads events, and a MANUAL one.
fn seam_metrics() -> Vec<Metric> {
    let mut metrics = vec![
        metric("visits", MetricKind::Count, "visit", ""),
        metric("visitors", MetricKind::UniqueUsers, "visit", ""),
        metric("revenue", MetricKind::Sum, "purchase", "amount"),
        metric("basket", MetricKind::Avg, "purchase", "amount"),
        metric("smallest", MetricKind::Min, "purchase", "amount"),
        metric("largest", MetricKind::Max, "purchase", "amount"),
        Metric { percentile: 90.0, ..metric("p90", MetricKind::Percentile, "purchase", "amount") },
        Metric {
            conversion_selector: Some(selector("purchase")),
            window: Some(2 * DAY),
            constant_properties: vec!["plan".into()],
            ..metric("converts", MetricKind::Conversion, "visit", "")
        },
        Metric {
            conversion_selector: Some(selector("purchase")),
            retention_period: Period::Week,
            retention_offset: 1,
            ..metric("returns", MetricKind::Retention, "signup", "")
        },
        metric("mrr", MetricKind::LatestSum, "sub", "mrr"),
        metric("bridge", MetricKind::RevenueBridge, "sub", "mrr"),
        Metric { rolling_window: Some(7 * DAY), ..metric("weekly_visitors", MetricKind::UniqueUsers, "visit", "") },
    ];
    metrics.push(Metric { key: "spend".into(), kind: MetricKind::Manual, ..Default::default() });
    metrics
}

fn metric_answer(
    source: &impl EventSource,
    book: &MetricBook,
    cohorts: &Cohorts,
    metric: &Metric,
    query: &MetricQuery,
) -> String {
    let members = cohort::resolve(source, cohorts, "cohort_id", &query.cohort_id).unwrap();
    format!("{:?}", evaluate(source, book, metric, &MetricQuery { members, ..query.clone() }, 0))
}

/// The attribution the seam tests ask, in `model`: purchases credited to visits' channels.
fn attribution_query(model: AttributionModel) -> AttributionQuery {
    AttributionQuery {
        conversion: selector("purchase"),
        touch: selector("visit"),
        channel_property: "channel".into(),
        model,
        lookback: 5 * DAY,
        half_life: DAY,
        from: START + 4 * DAY,
        to: START + 26 * DAY,
        value_property: "amount".into(),
        spend_metric_key: "spend".into(),
        first_conversion_only: model == AttributionModel::FirstTouch,
        cohort_id: String::new(),
    }
}

/// Where the seam tests read the experiment out.
const EXPERIMENT_RANGE: (Micros, Micros) = (START + 2 * DAY, START + 22 * DAY);

/// The experiment the seam tests read out, with its metrics: a count, a sum, distinct users
/// and a conversion (CUPED and an attribution window on).
fn experiment_case() -> (Experiment, BTreeMap<String, Metric>) {
    let metrics = [
        metric("purchases", MetricKind::Count, "purchase", ""),
        metric("revenue", MetricKind::Sum, "purchase", "amount"),
        metric("buyers", MetricKind::UniqueUsers, "purchase", ""),
        Metric {
            conversion_selector: Some(selector("purchase")),
            window: Some(DAY),
            ..metric("converts", MetricKind::Conversion, "visit", "")
        },
    ];
    let experiment = Experiment {
        key: "exp".into(),
        variants: ["control", "treatment"]
            .map(|key| Variant { key: key.into(), weight: 0.5, name: key.into(), description: String::new() })
            .to_vec(),
        control_variant: "control".into(),
        primary_metric_keys: metrics.iter().map(|m| m.key.clone()).collect(),
        ..Default::default()
    };
    (experiment, metrics.into_iter().map(|m| (m.key.clone(), m)).collect())
}

/// Exposures by person name (ids are each source's own), then every metric's statistics.
fn experiment_readout(
    source: &impl EventSource,
    experiment: &Experiment,
    metrics: &BTreeMap<String, Metric>,
) -> String {
    let (from, to) = EXPERIMENT_RANGE;
    let exposures = measure::exposures(source, experiment, from, to, None);
    readout_of(source, experiment, metrics, exposures)
}

/// `experiment_readout` from exposures found otherwise (a holdout's).
fn readout_of(
    source: &impl EventSource,
    experiment: &Experiment,
    metrics: &BTreeMap<String, Metric>,
    exposures: measure::Exposures,
) -> String {
    let (_, to) = EXPERIMENT_RANGE;
    let plans: Vec<MetricPlan> =
        metrics.values().map(|m| MetricPlan { metric: m, kind: measure::summary_kind(m, metrics).unwrap() }).collect();
    let windows =
        Windows { attribution: Some(5 * DAY), end: to, cuped_pre_period: Some(3 * DAY), winsorize_percentile: None };
    let measured = measure::measure(source, metrics, experiment, &exposures, &plans, &windows);
    let (excluded, per_variant) = (exposures.excluded, exposures.per_variant.clone());
    format!("{:?} {excluded} {per_variant:?} {measured:?}", by_name(source, exposures.users))
}

/// What a remote engine's `first_seen` returns for `[from, to)`, from this test's own model:
/// per person the time of their first event there.
fn first_seen(sent: &Sent, from: Micros, to: Micros) -> Vec<(String, bool, Micros)> {
    let mut first: BTreeMap<(String, bool), Micros> = BTreeMap::new();
    for event in sent.events.iter().filter(|e| (from..to).contains(&e.timestamp)) {
        let (id, is_user) = owner(sent, event);
        if is_user && sent.deleted.contains(&id) {
            continue;
        }
        let at = first.entry((id, is_user)).or_insert(event.timestamp);
        *at = (*at).min(event.timestamp);
    }
    first.into_iter().map(|((id, is_user), t)| (id, is_user, t)).collect()
}

/// (person name, first time, variant), sorted by name.
fn by_name(source: &impl EventSource, users: Vec<measure::Exposure>) -> Vec<(String, Micros, u16)> {
    let mut named: Vec<_> =
        users.into_iter().map(|u| (source.person_name(u.person).to_owned(), u.first, u.variant)).collect();
    named.sort();
    named
}

#[test]
fn every_analysis_answers_the_same_over_the_embedded_engine_and_a_person_ordered_batch() {
    for seed in 0..6 {
        let sent = sent(seed);
        let data = embedded(&sent);
        for parts in [1, 3] {
            compare_all(&data.source(), &batch(&sent, parts), seed);
        }
    }
}

/// The funnels both seam tests ask: every order and mode, with and without a breakdown and a
/// cohort, an exclusion and a filter, in a zone with a DST change.
fn funnel_queries() -> Vec<(String, FunnelQuery)> {
    let mut queries = Vec::new();
    for order in [FunnelOrder::Ordered, FunnelOrder::Strict, FunnelOrder::Unordered] {
        for mode in [FunnelMode::UniqueUsers, FunnelMode::TotalConversions] {
            let breakdowns = [
                (None, ""),
                (Some("plan"), ""),
                (Some("user.country"), ""),
                (Some("user.country"), "buyers"),
                (Some("plan"), "listed"),
            ];
            for (breakdown, cohort_id) in breakdowns {
                let query = FunnelQuery {
                    steps: vec![selector("visit"), selector("signup"), selector("purchase")],
                    from: START + 2 * DAY,
                    to: START + 25 * DAY,
                    window: 3 * DAY,
                    order,
                    mode,
                    breakdown: breakdown.map(String::from),
                    cohort_id: cohort_id.into(),
                    exclusions: vec![Exclusion { selector: selector("sub"), from_step: 0, to_step: 1 }],
                    timezone: "Europe/Berlin".into(),
                    filters: vec![filter("plan", FilterOp::Neq, &["team"])],
                    ..Default::default()
                };
                queries.push((format!("funnel {order:?} {mode:?} {breakdown:?} {cohort_id:?}"), query));
            }
        }
    }
    queries
}

/// A funnel or retention query over only what its `fetch` asks for (as a remote engine reads
/// it) answers as over everything.
#[test]
fn funnels_retention_and_cohorts_answer_the_same_over_only_what_they_fetch() {
    let cohorts = cohorts();
    let behaviour = |event: &str, min_count, did_not| {
        Condition::Behavioural(Behavioural { selector: selector(event), min_count, did_not, frame: TimeFrame::All })
    };
    let group = |any, conditions| Condition::Group(ConditionGroup { any, conditions });
    let country = |op, values: &[&str]| Condition::Trait(filter("user.country", op, values));
    // With a filter on an event property and one on a trait, in the last 30 days.
    let filtered = |event: &str, min_count, did_not| {
        let mut selector = selector(event);
        selector.filters =
            vec![filter("plan", FilterOp::Neq, &["team"]), filter("user.country", FilterOp::Neq, &["us"])];
        Condition::Behavioural(Behavioural { selector, min_count, did_not, frame: TimeFrame::LastDays(30) })
    };
    // (conditions, whether a narrowed read answers them)
    let definitions = [
        (group(false, vec![behaviour("purchase", 2, false)]), true),
        (group(true, vec![behaviour("sub", 1, false), country(FilterOp::In, &["de", "fr"])]), true),
        (group(false, vec![behaviour("signup", 1, true), country(FilterOp::Eq, &["us"])]), true),
        (group(false, vec![behaviour("visit", 3, false), group(true, vec![behaviour("signup", 1, true)])]), true),
        (group(false, vec![behaviour("purchase", 1, true)]), false),
        (group(true, vec![behaviour("sub", 1, false), country(FilterOp::Neq, &["de"])]), false),
        (group(false, vec![country(FilterOp::IsNotSet, &[])]), false),
        (group(false, vec![]), false),
        (group(false, vec![filtered("purchase", 1, false), behaviour("visit", 2, false)]), true),
        (group(true, vec![filtered("signup", 1, true), group(false, vec![behaviour("sub", 1, false)])]), false),
    ];
    let mut members = [0; 10];
    for seed in 0..4 {
        let sent = sent(seed);
        let data = embedded(&sent);
        let embedded = data.source();
        for (k, (condition, narrowed)) in definitions.iter().enumerate() {
            let Condition::Group(conditions) = condition.clone() else { unreachable!("groups above") };
            let cohort = Cohort {
                id: format!("c{k}"),
                definition: Definition::Conditions(conditions),
                ..cohorts["listed"].clone()
            };
            let fetch = cohort::fetch(&cohort);
            assert_eq!(fetch.names.is_some(), *narrowed, "cohort {k}");
            assert_eq!(
                fetch.traits,
                !narrowed || [1, 2, 8].contains(&k),
                "cohort {k} reads traits when it has trait conditions or filters"
            );
            let narrow = fetched(&sent, 1, &fetch);
            let now = START + 40 * DAY;
            let full = cohort::member_ids(&embedded, &cohort::evaluate(&embedded, &cohort, now));
            let read = cohort::member_ids(&narrow, &cohort::evaluate(&narrow, &cohort, now));
            assert_eq!(full, read, "seed {seed} cohort {k}");
            // Counted where the events are (a remote engine's counts, from the model).
            let request = cohort::count_request(&cohort, now, Micros::MIN).expect("a cohort of conditions");
            assert_eq!(request.everyone, !narrowed, "cohort {k}");
            let counted = cohort::members_from_counts(&cohort, counted(&sent, &request)).unwrap();
            assert_eq!(full, counted.sorted(), "seed {seed} cohort {k} counted");
            members[k] += full.len();
        }
        // A static cohort of every id sent (users deleted, with traits only, anonymous ids
        // aliased or not) and one never seen, counted from the people known.
        let mut ids: Vec<String> =
            sent.events.iter().flat_map(|e| [e.user_id.clone(), e.anonymous_id.clone()]).collect();
        ids.extend(sent.traits.keys().cloned());
        ids.extend(sent.deleted.iter().cloned());
        ids.push("nobody".into());
        ids.retain(|id| !id.is_empty());
        let mut listed =
            Cohort { id: "everyone-listed".into(), definition: Definition::Static(ids), ..cohorts["listed"].clone() };
        listed.validate().unwrap();
        let now = START + 40 * DAY;
        let full = cohort::member_ids(&embedded, &cohort::evaluate(&embedded, &listed, now));
        let request = cohort::count_request(&listed, now, Micros::MIN).expect("a static cohort is counted");
        assert!(request.conditions.is_empty() && request.everyone && request.with_traits);
        let counted = cohort::members_from_counts(&listed, counted(&sent, &request)).unwrap();
        assert_eq!(full, counted.sorted(), "seed {seed} static cohort counted");
        let users: std::collections::HashSet<&String> =
            sent.events.iter().map(|e| &e.user_id).chain(sent.traits.keys()).collect();
        let anonymous_members = full.iter().filter(|id| !users.contains(id)).count();
        assert!(anonymous_members > 0 && full.len() > anonymous_members + 20, "seed {seed}: {full:?}");
        assert!(!full.iter().any(|id| sent.deleted.contains(id) || sent.aliases.contains_key(id)), "{full:?}");
        // Attribution over its conversions and touches only, in a counted cohort too.
        let mut book = MetricBook::default();
        book.insert(
            "spend".into(),
            vec![Metric { key: "spend".into(), kind: MetricKind::Manual, ..Default::default() }],
        );
        for (model, cohort_id) in [(AttributionModel::Linear, ""), (AttributionModel::FirstTouch, "buyers")] {
            let query = AttributionQuery { cohort_id: cohort_id.into(), ..attribution_query(model) };
            let counted = counted_cohort(&sent, &cohorts, cohort_id);
            let fetch = attribution::fetch(&query, counted.is_some());
            assert_eq!((fetch.from, fetch.to), (query.from - query.lookback, query.to));
            let mut narrow = fetched(&sent, 1, &fetch);
            if let Some(members) = counted {
                narrow.set_counted_cohort(cohort_id, members);
            }
            let what = format!("seed {seed} attribution {model:?} in {cohort_id:?} over what it fetched");
            let expected = attribution::run(&embedded, &book, &cohorts, &query).expect("an attribution");
            assert!(expected.conversions > 0, "{what}: {expected:?}");
            assert_same(&what, &expected, &attribution::run(&narrow, &book, &cohorts, &query).expect("an attribution"));
        }

        // Each metric over only the events its selectors name, a ratio's through its inputs;
        // with a trait filter, a breakdown and a counted cohort.
        let tz: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
        let mut metrics = seam_metrics();
        metrics.push(Metric {
            numerator_key: "revenue".into(),
            denominator_key: "visitors".into(),
            ..metric("per_visitor", MetricKind::Ratio, "", "")
        });
        metrics.iter_mut().find(|m| m.key == "per_visitor").expect("ratio").selector = None;
        let mut book = MetricBook::default();
        for m in &metrics {
            book.insert(m.key.clone(), vec![m.clone()]);
        }
        for m in &metrics {
            let query = MetricQuery {
                filters: vec![filter("user.country", FilterOp::In, &["de", "us"])],
                breakdown: Some("plan".into()).filter(|_| m.kind != MetricKind::RevenueBridge),
                breakdown_limit: 2,
                cohort_id: "buyers".into(),
                ..MetricQuery::new(START + DAY, START + 29 * DAY, Granularity::Week, tz)
            };
            let fetch = crate::core::metric::evaluate::fetch(&book, [m], &query, false);
            assert_eq!(fetch.names.is_some(), m.kind != MetricKind::Manual, "{}", m.key);
            assert!(fetch.traits, "{}: the filter is on a trait", m.key);
            let mut narrow = fetched(&sent, 1, &fetch);
            let counted = counted_cohort(&sent, &cohorts, "buyers").expect("counted");
            let members = Some(counted.on(&narrow));
            narrow.set_counted_cohort("buyers", counted);
            let expected = metric_answer(&embedded, &book, &cohorts, m, &query);
            let read = format!("{:?}", evaluate(&narrow, &book, m, &MetricQuery { members, ..query.clone() }, 0));
            assert_same(&format!("seed {seed} metric {} over what it fetched", m.key), &expected, &read);
        }
        let unknown = Metric { numerator_key: "nowhere".into(), ..metrics.last().expect("ratio").clone() };
        assert!(
            crate::core::metric::evaluate::fetch(
                &book,
                [&unknown],
                &MetricQuery::new(0, 1, Granularity::Total, tz),
                false
            )
            .names
            .is_none()
        );

        // An experiment over its exposures and its metrics' events only.
        let (experiment, metrics) = experiment_case();
        let fetch = measure::fetch(&experiment, &metrics, false);
        assert_eq!(fetch.names, Some(["$exposure", "purchase", "visit"].map(String::from).to_vec()));
        assert!(!fetch.traits);
        assert!(measure::fetch(&experiment, &metrics, true).names.is_none(), "a cohort read needs everything");
        let narrow = fetched(&sent, 1, &fetch);
        assert!(narrow.row_count() < embedded.row_count());
        let (a, b) =
            (experiment_readout(&embedded, &experiment, &metrics), experiment_readout(&narrow, &experiment, &metrics));
        assert_same(&format!("seed {seed} experiment over what it fetched"), &a, &b);

        // A holdout over its metrics' events only (purchases), who was seen when counted
        // apart: people seen with other events only are exposed without events.
        let mut metrics = metrics;
        metrics.remove("converts");
        let holdout = Holdout {
            key: "h".into(),
            percent: 0.3,
            seed: "s".into(),
            metric_keys: metrics.keys().cloned().collect(),
            ..Default::default()
        };
        let as_experiment = holdout.as_experiment();
        let fetch = measure::metric_fetch(&as_experiment, &metrics, false);
        assert_eq!(fetch.names, Some(vec!["purchase".to_owned()]));
        let (from, to) = EXPERIMENT_RANGE;
        let expected = readout_of(&embedded, &as_experiment, &metrics, seen_people(&embedded, &holdout, from, to));
        let mut narrow = fetched(&sent, 1, &fetch);
        let people = narrow.canonical().len();
        let exposures = seen_in_list(&mut narrow, &holdout, first_seen(&sent, from, to)).unwrap();
        let added = narrow.canonical().len() - people;
        assert!(added > 0 && exposures.per_variant.iter().all(|&n| n > 5), "{added} {:?}", exposures.per_variant);
        assert_same(
            &format!("seed {seed} holdout over what it fetched"),
            &expected,
            &readout_of(&narrow, &as_experiment, &metrics, exposures),
        );

        let mut trait_filtered = funnel_queries().pop().expect("funnels").1;
        (trait_filtered.breakdown, trait_filtered.cohort_id) = (None, String::new());
        trait_filtered.filters.push(filter("user.country", FilterOp::Neq, &["de"]));
        let funnels = funnel_queries().into_iter().chain([("funnel on a trait".to_owned(), trait_filtered)]);
        for (what, query) in funnels {
            let fetch = funnel::fetch(&query, false);
            let on_traits = query.breakdown.as_deref() == Some("user.country") || query.filters.len() > 1;
            assert_eq!(fetch.traits, fetch.names.is_none() || on_traits, "{what} reads traits when it needs them");
            let narrow = fetched(&sent, 1, &fetch);
            let expected = funnel::run(&embedded, &cohorts, &query);
            assert_same(&format!("seed {seed} fetched {what}"), &expected, &funnel::run(&narrow, &cohorts, &query));
            if let Some(counted) = counted_cohort(&sent, &cohorts, &query.cohort_id) {
                let mut narrow = fetched(&sent, 1, &funnel::fetch(&query, true));
                narrow.set_counted_cohort(&query.cohort_id, counted);
                let what = format!("seed {seed} fetched {what}, its cohort counted");
                assert_same(&what, &expected, &funnel::run(&narrow, &cohorts, &query));
            }
        }
        let retentions = [(true, false, None), (false, true, Some("plan")), (true, true, Some("user.country"))];
        for (first_time, unbounded, breakdown) in retentions {
            let query = RetentionQuery {
                cohort_event: selector("visit"),
                return_event: Some(selector("purchase")),
                first_time,
                unbounded,
                shape: TableShape {
                    from: START + DAY,
                    to: START + 20 * DAY,
                    period: Period::Week,
                    periods: 4,
                    timezone: "Europe/Berlin".into(),
                    breakdown: breakdown.map(String::from),
                    ..Default::default()
                },
            };
            let fetch = retention::fetch(&query, false);
            assert_eq!(fetch.traits, breakdown == Some("user.country"), "retention by {breakdown:?}");
            let narrow = fetched(&sent, 1, &fetch);
            let what = format!("seed {seed} fetched retention {first_time} {unbounded}");
            let (a, b) =
                (retention::retention(&embedded, &cohorts, &query), retention::retention(&narrow, &cohorts, &query));
            assert_same(&what, &a, &b);
            // In the cohort, counted where the events are: the read stays narrow.
            let query = RetentionQuery { shape: TableShape { cohort_id: "buyers".into(), ..query.shape }, ..query };
            let counted = counted_cohort(&sent, &cohorts, "buyers").expect("counted");
            let fetch = retention::fetch(&query, true);
            assert!(fetch.names.is_some(), "a counted cohort keeps the read narrow");
            let mut narrow = fetched(&sent, 1, &fetch);
            narrow.set_counted_cohort("buyers", counted);
            let what = format!("{what} in a counted cohort");
            let (a, b) =
                (retention::retention(&embedded, &cohorts, &query), retention::retention(&narrow, &cohorts, &query));
            assert_same(&what, &a, &b);
        }
    }
    assert!(members.iter().all(|&n| n > 0), "every cohort has members: {members:?}");
}
