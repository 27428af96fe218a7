//! The demo project's definitions, so the dashboard is full on first start: the README's
//! metrics (North Star `dau` with inputs), a goal, spend, and the `checkout_v2` experiment of
//! the generated data. Each object is created only when missing, so restarts change nothing.

use std::sync::Arc;

use crate::core::engine::Engine;
use crate::core::experiment::definition::{Experiment, Variant};
use crate::core::filter::EventSelector;
use crate::core::goal::definition::Goal;
use crate::core::goal::progress::Target;
use crate::core::metric::definition::{Metric, MetricKind, MetricRole};
use crate::core::model::{ManualValue, Micros, Value};
use crate::core::time::Granularity;
use crate::error::{Error, Result};

const DAY: Micros = crate::core::model::MICROS_PER_DAY;

fn at(date: &str) -> Micros {
    let date: chrono::NaiveDate = date.parse().expect("a literal date");
    date.and_time(chrono::NaiveTime::MIN).and_utc().timestamp_micros()
}

fn on(event: &str) -> Option<EventSelector> {
    Some(EventSelector { event: event.into(), filters: vec![] })
}

fn metrics() -> Vec<Metric> {
    let input = |key: &str, name: &str, kind, event: &str| Metric {
        key: key.into(),
        name: name.into(),
        kind,
        selector: on(event),
        parent_keys: vec!["dau".into()],
        ..Default::default()
    };
    vec![
        Metric {
            key: "dau".into(),
            name: "Daily active users".into(),
            kind: MetricKind::UniqueUsers,
            role: MetricRole::NorthStar,
            selector: on("session_start"),
            ..Default::default()
        },
        Metric { property: "revenue".into(), ..input("revenue", "Revenue", MetricKind::Sum, "purchase") },
        input("signups", "Signups", MetricKind::Count, "signup"),
        input("purchasers", "Purchasers", MetricKind::UniqueUsers, "purchase"),
        Metric {
            conversion_selector: on("purchase"),
            window: Some(7 * DAY),
            unit: "%".into(),
            ..input("signup_to_purchase", "Signup to purchase in 7 days", MetricKind::Conversion, "signup")
        },
        Metric {
            key: "arpu".into(),
            name: "Revenue per active user".into(),
            kind: MetricKind::Ratio,
            numerator_key: "revenue".into(),
            denominator_key: "dau".into(),
            ..Default::default()
        },
        Metric {
            key: "wau".into(),
            name: "Weekly active users".into(),
            kind: MetricKind::UniqueUsers,
            selector: on("session_start"),
            rolling_window: Some(7 * DAY),
            ..Default::default()
        },
        Metric { key: "ad_spend".into(), name: "Ad spend".into(), kind: MetricKind::Manual, ..Default::default() },
        Metric {
            key: "cac".into(),
            name: "Customer acquisition cost".into(),
            kind: MetricKind::Formula,
            formula: "ad_spend / signups".into(),
            ..Default::default()
        },
    ]
}

/// Ad spend per channel, as finance would push it (RecordValues).
fn spend() -> Vec<ManualValue> {
    let value = |date: &str, value: f64, channel: &str| ManualValue {
        timestamp: at(date),
        value,
        dimensions: vec![("utm_source".into(), Value::String(channel.into()))],
    };
    vec![
        value("2026-03-02", 1200.0, "paid_search"),
        value("2026-03-09", 900.0, "social"),
        value("2026-03-16", 1100.0, "paid_search"),
        value("2026-03-23", 650.0, "social"),
    ]
}

fn goal() -> Goal {
    Goal {
        id: "march-signups".into(),
        name: "+20% signups in March".into(),
        description: String::new(),
        metric_key: "signups".into(),
        granularity: Granularity::Day,
        period: (at("2026-03-01"), at("2026-04-01")),
        target: Target::Relative(0.2),
        baseline_period: None,
        direction: None,
        timezone: String::new(),
        filters: vec![],
        cohort_id: String::new(),
        created: 0,
        updated: 0,
    }
}

/// The generator's A/B test, backfilled over the days its exposures cover.
fn experiment() -> Experiment {
    let variant = |key: &str| Variant { key: key.into(), weight: 0.5, ..Default::default() };
    Experiment {
        key: "checkout_v2".into(),
        name: "New checkout".into(),
        hypothesis: "A shorter checkout makes more visitors buy".into(),
        variants: vec![variant("control"), variant("treatment")],
        coverage: 1.0,
        primary_metric_keys: vec!["purchasers".into()],
        secondary_metric_keys: vec!["revenue".into()],
        start_time: Some(at("2026-01-31")),
        end_time: Some(at("2026-04-01")),
        ..Default::default()
    }
}

fn created<T>(result: Result<T>) -> Result<bool> {
    match result {
        Ok(_) => Ok(true),
        Err(Error::AlreadyExists(_)) => Ok(false),
        Err(error) => Err(error),
    }
}

/// Creates what is missing in `project` (off the async threads: these are storage writes);
/// returns how many objects it created.
pub async fn seed(engine: Arc<Engine>, project: &str) -> Result<usize> {
    let (blocking_engine, name) = (engine.clone(), project.to_owned());
    let (count, spend_metric_created) = tokio::task::spawn_blocking(move || create_missing(&blocking_engine, &name))
        .await
        .map_err(|e| Error::Internal(format!("task failed: {e}")))??;
    if spend_metric_created {
        engine.record_values(project, "ad_spend", spend().into_iter().map(Ok).collect()).await?;
    }
    tracing::info!(project = %project, created = count, "demo definitions seeded");
    Ok(count)
}

fn create_missing(engine: &Engine, project: &str) -> Result<(usize, bool)> {
    let mut count = 0;
    let mut spend_metric_created = false;
    for metric in metrics() {
        if engine.get_metric(project, &metric.key, 0).is_ok() {
            continue;
        }
        spend_metric_created |= metric.key == "ad_spend";
        engine.create_metric(project, metric)?;
        count += 1;
    }
    if created(engine.create_goal(project, goal()))? {
        count += 1;
    }
    if created(engine.create_experiment(project, experiment()))? {
        engine.start_experiment(project, "checkout_v2")?;
        engine.stop_experiment(project, "checkout_v2")?;
        count += 1;
    }
    Ok((count, spend_metric_created))
}
