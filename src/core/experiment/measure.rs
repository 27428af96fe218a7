//! Measuring an experiment from stored events: who was exposed to which variant (derived at
//! query time from every `$exposure` event, whenever it arrived), and each exposed user's
//! value of each metric over their attribution window, aggregated into the per-variant
//! sufficient statistics the readout compares.
//!
//! Exposures come from one scan of the name column. Metric values come from one pass over the
//! people who did the metrics' events (the person order's name index), each visited once with
//! those of their rows (their own and their aliases', in time order); per exposed user and
//! metric the rows are checked against compiled selectors, integers only, and each value lands
//! in the user's place of a per-metric column. An exposed user without such rows keeps 0, the
//! value of no rows. Nothing is allocated per event.

use std::collections::BTreeMap;

use super::definition::{EXPERIMENT_PROPERTY, EXPOSURE_EVENT, Experiment, VARIANT_PROPERTY};
use super::readout::VariantData;
use super::stats::{self, Covariate, Summary, SummaryKind};
use crate::core::filter::{EventSelector, row_number};
use crate::core::metric::definition::{DEFAULT_CONVERSION_WINDOW, Metric, MetricKind};
use crate::core::metric::scan::Matcher;
use crate::core::model::Micros;
use crate::core::store::remote::Fetch;
use crate::core::store::source::EventSource;
use crate::core::store::source::Scan;
use crate::core::store::table::{Cell, NONE};
use crate::error::{Error, Result, echo};

/// A user exposed to exactly one variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exposure {
    /// Canonical person id (an anonymous id aliased to a user counts for the user).
    pub person: u32,
    pub first: Micros,
    pub variant: u16,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Exposures {
    /// Single-variant users, by person id.
    pub users: Vec<Exposure>,
    /// Users per variant, in variant order.
    pub per_variant: Vec<u64>,
    /// Users exposed to more than one variant.
    pub excluded: u64,
}

/// Exposures to `experiment` with a time in `[from, to)`, of cohort `members` only when given.
/// An exposure naming a variant the experiment does not have is ignored. Reads the
/// `$exposure` rows only, person by person (the person order's name index).
pub fn exposures(
    data: &impl EventSource,
    experiment: &Experiment,
    from: Micros,
    to: Micros,
    members: Option<&[bool]>,
) -> Exposures {
    let mut out = Exposures { per_variant: vec![0; experiment.variants.len()], ..Default::default() };
    let (Some(name), Some(experiment_key), Some(variant_key), Some(experiment_value)) = (
        data.names().get(EXPOSURE_EVENT),
        data.keys().get(EXPERIMENT_PROPERTY),
        data.keys().get(VARIANT_PROPERTY),
        data.strings().get(&experiment.key),
    ) else {
        return out;
    };
    let variant_ids: Vec<u32> =
        experiment.variants.iter().map(|v| data.strings().get(&v.key).unwrap_or(NONE)).collect();
    // (person, first exposure, variant, mixed), per part of the people (see `fold_parts`).
    type Seen = Vec<(u32, Micros, u16, bool)>;
    let parts = data.fold_parts(Scan::named(&[name]).within(from, to), Seen::new, |seen, person, events| {
        if members.is_some_and(|m| !m[person as usize]) {
            return;
        }
        let mut first: Option<(Micros, u16, bool)> = None;
        for (i, &row) in events.rows.iter().enumerate() {
            let t = events.times[i];
            if events.names[i] != name || t < from || t >= to {
                continue;
            }
            let (mut ours, mut variant) = (false, None);
            for prop in data.row_props(row as usize) {
                if prop.key() == experiment_key {
                    ours = prop.value() == Cell::Str(experiment_value);
                } else if prop.key() == variant_key
                    && let Cell::Str(id) = prop.value()
                {
                    variant = variant_ids.iter().position(|&v| v == id);
                }
            }
            let (true, Some(variant)) = (ours, variant) else { continue };
            first = Some(match first {
                None => (t, variant as u16, false),
                Some((at, v, mixed)) => (at.min(t), v, mixed || v != variant as u16),
            });
        }
        if let Some((at, variant, mixed)) = first {
            seen.push((person, at, variant, mixed));
        }
    });
    let mut seen = parts.concat();
    seen.sort_unstable_by_key(|e| e.0);
    for (person, first, variant, mixed) in seen {
        if mixed {
            out.excluded += 1;
        } else {
            out.per_variant[variant as usize] += 1;
            out.users.push(Exposure { person, first, variant });
        }
    }
    out
}

/// What one selector contributes per user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Aggregate {
    /// Matching events.
    Count,
    /// 1 when there is a matching event.
    Any,
    /// Sum of a numeric property (events without it add nothing).
    Sum(u32),
    /// Matching events with a numeric value of the property (AVG's denominator).
    Valued(u32),
}

struct Source {
    matcher: Matcher,
    aggregate: Aggregate,
}

impl Source {
    /// The user's value over rows with a time in `[from, to)`.
    fn value(&self, data: &impl EventSource, person: u32, rows: &[u32], from: Micros, to: Micros) -> f64 {
        let mut total = 0.0;
        for &row in rows {
            let row = row as usize;
            let t = data.row_time(row);
            if t < from || t >= to || !self.matcher.matches(data, person, row) {
                continue;
            }
            match self.aggregate {
                Aggregate::Count => total += 1.0,
                Aggregate::Any => return 1.0,
                Aggregate::Sum(key) => total += row_number(data.row_props(row), key).unwrap_or(0.0),
                Aggregate::Valued(key) => total += f64::from(u8::from(row_number(data.row_props(row), key).is_some())),
            }
        }
        total
    }
}

/// How a metric turns a user's events into a per-user value.
enum UserMetric {
    /// MEAN or PROPORTION of one selector's per-user value.
    Single(Source),
    /// PROPORTION: an A event, then a B event at or after it within `window`, both inside
    /// the user's window and sharing every constant property's value.
    Conversion { first: Matcher, then: Matcher, window: Micros, constants: Vec<u32> },
    /// RATIO: numerator and denominator per user.
    Ratio(Source, Source),
}

/// The summary type of a metric in experiments, or why it cannot be analysed: UNIQUE_USERS
/// and CONVERSION are proportions, COUNT and SUM means, RATIO (over COUNT, SUM or
/// UNIQUE_USERS inputs) and AVG ratios.
pub fn summary_kind(metric: &Metric, metrics: &BTreeMap<String, Metric>) -> std::result::Result<SummaryKind, String> {
    match metric.kind {
        MetricKind::UniqueUsers | MetricKind::Conversion => Ok(SummaryKind::Proportion),
        MetricKind::Count | MetricKind::Sum => Ok(SummaryKind::Mean),
        MetricKind::Avg => Ok(SummaryKind::Ratio),
        MetricKind::Ratio => {
            for input in [&metric.numerator_key, &metric.denominator_key] {
                let Some(m) = metrics.get(input) else {
                    return Err(format!("metric {:?}: input {input:?} does not exist", metric.key));
                };
                if !matches!(m.kind, MetricKind::Count | MetricKind::Sum | MetricKind::UniqueUsers) {
                    return Err(format!(
                        "metric {:?}: input {input:?} is {:?}; ratio metrics in experiments need COUNT, SUM or \
                         UNIQUE_USERS inputs",
                        metric.key, m.kind
                    ));
                }
            }
            Ok(SummaryKind::Ratio)
        }
        kind => Err(format!(
            "metric {:?} is {kind:?}; experiments analyse COUNT, SUM, UNIQUE_USERS, CONVERSION, RATIO and AVG metrics",
            metric.key
        )),
    }
}

fn source(data: &impl EventSource, metric: &Metric, aggregate: impl Fn(u32) -> Aggregate) -> Result<Source> {
    let selector = metric.selector.as_ref().ok_or_else(|| Error::invalid("metric.selector", "required"))?;
    let property = data.keys().get(&metric.property).unwrap_or(NONE);
    Ok(Source { matcher: Matcher::new(data, selector, &[], None), aggregate: aggregate(property) })
}

fn plain_source(data: &impl EventSource, metric: &Metric) -> Result<Source> {
    source(data, metric, |property| match metric.kind {
        MetricKind::Sum => Aggregate::Sum(property),
        MetricKind::UniqueUsers => Aggregate::Any,
        _ => Aggregate::Count,
    })
}

impl UserMetric {
    /// The event names whose rows it reads.
    fn names(&self) -> Vec<u32> {
        match self {
            UserMetric::Single(source) => vec![source.matcher.name()],
            UserMetric::Ratio(x, y) => vec![x.matcher.name(), y.matcher.name()],
            UserMetric::Conversion { first, then, .. } => vec![first.name(), then.name()],
        }
    }

    fn compile(data: &impl EventSource, metric: &Metric, metrics: &BTreeMap<String, Metric>) -> Result<UserMetric> {
        Ok(match metric.kind {
            MetricKind::Count | MetricKind::Sum | MetricKind::UniqueUsers => {
                UserMetric::Single(plain_source(data, metric)?)
            }
            MetricKind::Avg => {
                UserMetric::Ratio(source(data, metric, Aggregate::Sum)?, source(data, metric, Aggregate::Valued)?)
            }
            MetricKind::Ratio => {
                let input = |key: &str| {
                    metrics
                        .get(key)
                        .ok_or_else(|| Error::FailedPrecondition(format!("metric {key} not found", key = echo(key))))
                };
                UserMetric::Ratio(
                    plain_source(data, input(&metric.numerator_key)?)?,
                    plain_source(data, input(&metric.denominator_key)?)?,
                )
            }
            MetricKind::Conversion => {
                let (Some(a), Some(b)) = (&metric.selector, &metric.conversion_selector) else {
                    return Err(Error::invalid("metric.conversion_selector", "required"));
                };
                UserMetric::Conversion {
                    first: Matcher::new(data, a, &[], None),
                    then: Matcher::new(data, b, &[], None),
                    window: metric.window.unwrap_or(DEFAULT_CONVERSION_WINDOW),
                    constants: metric.constant_properties.iter().map(|p| data.keys().get(p).unwrap_or(NONE)).collect(),
                }
            }
            kind => return Err(Error::FailedPrecondition(format!("metric {} is {kind:?}", echo(&metric.key)))),
        })
    }

    /// `(x, y)` over rows in `[from, to)`; `y` is 0 except for ratios. `scratch` holds B rows
    /// of a conversion between calls, so no allocation happens per user.
    fn value(
        &self,
        data: &impl EventSource,
        person: u32,
        rows: &[u32],
        from: Micros,
        to: Micros,
        scratch: &mut Vec<(Micros, u32)>,
    ) -> (f64, f64) {
        match self {
            UserMetric::Single(source) => (source.value(data, person, rows, from, to), 0.0),
            UserMetric::Ratio(x, y) => (x.value(data, person, rows, from, to), y.value(data, person, rows, from, to)),
            UserMetric::Conversion { first, then, window, constants } => {
                scratch.clear();
                let inside = |row: usize| (from..to).contains(&data.row_time(row));
                scratch.extend(
                    rows.iter()
                        .filter(|&&r| inside(r as usize) && then.matches(data, person, r as usize))
                        .map(|&r| (data.row_time(r as usize), r)),
                );
                let converted = rows.iter().map(|&r| r as usize).any(|a| {
                    if !inside(a) || !first.matches(data, person, a) {
                        return false;
                    }
                    let ta = data.row_time(a);
                    scratch.iter().any(|&(tb, b)| {
                        tb >= ta
                            && tb - ta <= *window
                            && constants.iter().all(|&k| {
                                let value = cell(data, a, k);
                                value.is_some() && value == cell(data, b as usize, k)
                            })
                    })
                });
                (f64::from(u8::from(converted)), 0.0)
            }
        }
    }
}

fn cell(data: &impl EventSource, row: usize, key: u32) -> Option<Cell> {
    if key == NONE {
        return None;
    }
    data.row_props(row).value_of(key).filter(|c| !matches!(c, Cell::Null))
}

/// What measuring `experiment` reads of the events, for a store that fetches them first (a
/// remote engine): its exposures and the events its metrics' selectors name (a ratio's, its
/// inputs'), at any time, with traits only when a selector filters on one. Everything when a
/// metric is missing (the readout says so), a selector names no event, or `cohort_read`: the
/// query's cohort is evaluated over the events read.
pub fn fetch(experiment: &Experiment, metrics: &BTreeMap<String, Metric>, cohort_read: bool) -> Fetch {
    let mut fetch = metric_fetch(experiment, metrics, cohort_read);
    if let Some(names) = &mut fetch.names {
        names.push(EXPOSURE_EVENT.to_owned());
        names.sort();
        names.dedup();
    }
    fetch
}

/// `fetch` without the exposures: the events the experiment's metrics read (a holdout's
/// readout, whose exposures are first events of any name, counted apart).
pub fn metric_fetch(experiment: &Experiment, metrics: &BTreeMap<String, Metric>, cohort_read: bool) -> Fetch {
    let mut selectors: Vec<&EventSelector> = Vec::new();
    for (_, key) in experiment.metrics() {
        let Some(metric) = metrics.get(key) else {
            return Fetch::everything();
        };
        let inputs = match metric.kind {
            MetricKind::Ratio => vec![metrics.get(&metric.numerator_key), metrics.get(&metric.denominator_key)],
            _ => vec![Some(metric)],
        };
        for input in inputs {
            let Some(input) = input else {
                return Fetch::everything();
            };
            selectors.extend(input.selector.iter().chain(&input.conversion_selector));
        }
    }
    if cohort_read || selectors.iter().any(|s| s.event.is_empty()) {
        return Fetch::everything();
    }
    let mut names: Vec<String> = selectors.iter().map(|s| s.event.clone()).collect();
    names.sort();
    names.dedup();
    let traits = crate::core::filter::on_traits(selectors.iter().flat_map(|s| &s.filters), None);
    Fetch { names: Some(names), traits, ..Fetch::everything() }
}

/// A metric to measure: its definition and summary type.
pub struct MetricPlan<'a> {
    pub metric: &'a Metric,
    pub kind: SummaryKind,
}

/// Where each exposed user's metric values are measured, and how they are capped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Windows {
    /// Per-user window from the first exposure; `None`: until `end`.
    pub attribution: Option<Micros>,
    /// End of the analysis (exclusive).
    pub end: Micros,
    /// CUPED covariate window before the first exposure; `None`: no covariate.
    pub cuped_pre_period: Option<Micros>,
    /// Cap per-user values at this percentile of the pooled values (not proportions).
    pub winsorize_percentile: Option<f64>,
}

/// Per-user values of one metric, one entry per exposed user.
struct Columns {
    x: Vec<f64>,
    y: Vec<f64>,
    pre: Vec<f64>,
}

/// Measures every metric over the exposed users and returns, per metric, the statistics of
/// each variant in variant order (weights filled from the experiment).
pub fn measure(
    data: &impl EventSource,
    metrics: &BTreeMap<String, Metric>,
    experiment: &Experiment,
    exposures: &Exposures,
    plans: &[MetricPlan],
    windows: &Windows,
) -> Result<Vec<Vec<VariantData>>> {
    let compiled = plans.iter().map(|p| UserMetric::compile(data, p.metric, metrics)).collect::<Result<Vec<_>>>()?;
    let users = &exposures.users;
    let is_ratio: Vec<bool> = plans.iter().map(|p| p.kind == SummaryKind::Ratio).collect();
    let cuped: Vec<bool> =
        plans.iter().map(|p| windows.cuped_pre_period.is_some() && p.kind != SummaryKind::Ratio).collect();
    // Every value of no rows is 0: users nobody visits below keep it.
    let mut columns: Vec<Columns> = plans
        .iter()
        .enumerate()
        .map(|(m, _)| Columns {
            x: vec![0.0; users.len()],
            y: vec![0.0; if is_ratio[m] { users.len() } else { 0 }],
            pre: vec![0.0; if cuped[m] { users.len() } else { 0 }],
        })
        .collect();
    // Per canonical person: its place in `users`.
    let mut slot = vec![NONE; data.canonical().len()];
    for (i, user) in users.iter().enumerate() {
        slot[user.person as usize] = i as u32;
    }
    let names: Vec<u32> = compiled.iter().flat_map(UserMetric::names).collect();
    // Parts of the people on their own threads, each listing (user, metric, x, y, pre); the
    // values land in the columns afterwards, so the columns keep the users' order.
    type Values = (Vec<(u32, u32, f64, f64, f64)>, Vec<(Micros, u32)>);
    // Each user's window starts at their first exposure (less the CUPED pre-period).
    let earliest = users.iter().map(|u| u.first).min().unwrap_or(windows.end);
    let earliest = windows.cuped_pre_period.map_or(earliest, |pre| earliest.saturating_sub(pre));
    let parts = data.fold_parts(
        Scan::named(&names).within(earliest, windows.end),
        Values::default,
        |(values, scratch), person, events| {
            let Some(&i) = slot.get(person as usize).filter(|&&i| i != NONE) else { return };
            let rows = events.rows;
            let user = users[i as usize];
            let from = user.first;
            let to = windows.attribution.map_or(windows.end, |w| (from.saturating_add(w)).min(windows.end));
            for (m, metric) in compiled.iter().enumerate() {
                let (x, y) = metric.value(data, person, rows, from, to, scratch);
                let pre = match (cuped[m], windows.cuped_pre_period) {
                    (true, Some(pre)) => metric.value(data, person, rows, from.saturating_sub(pre), from, scratch).0,
                    _ => 0.0,
                };
                values.push((i, m as u32, x, y, pre));
            }
        },
    );
    for (values, _) in parts {
        for (i, m, x, y, pre) in values {
            let (i, m) = (i as usize, m as usize);
            let column = &mut columns[m];
            column.x[i] = x;
            if is_ratio[m] {
                column.y[i] = y;
            }
            if cuped[m] && windows.cuped_pre_period.is_some() {
                column.pre[i] = pre;
            }
        }
    }

    Ok(plans
        .iter()
        .zip(columns)
        .map(|(plan, mut column)| {
            if let Some(p) = windows.winsorize_percentile
                && plan.kind != SummaryKind::Proportion
            {
                stats::winsorize_cap(&mut column.x, p);
                stats::winsorize_cap(&mut column.y, p);
                stats::winsorize_cap(&mut column.pre, p);
            }
            let mut variants: Vec<VariantData> = experiment
                .variants
                .iter()
                .map(|v| VariantData { key: v.key.clone(), weight: v.weight, ..Default::default() })
                .collect();
            for (i, user) in users.iter().enumerate() {
                let (s, c): (&mut Summary, &mut Covariate) = {
                    let d = &mut variants[user.variant as usize];
                    (&mut d.summary, &mut d.covariate)
                };
                let x = column.x[i];
                s.users += 1.0;
                s.sum += x;
                s.sum_squares += x * x;
                if let Some(&y) = column.y.get(i) {
                    s.denominator_sum += y;
                    s.denominator_sum_squares += y * y;
                    s.cross_sum += x * y;
                }
                if let Some(&p) = column.pre.get(i) {
                    c.sum += p;
                    c.sum_squares += p * p;
                    c.cross_sum += x * p;
                }
            }
            variants
        })
        .collect())
}
