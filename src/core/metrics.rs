//! The metric service of the engine: versioned definitions and queries that combine inputs
//! (RATIO, FORMULA), offsets and comparison periods.

use std::collections::BTreeMap;

use super::engine::{Engine, ProjectState};
use super::filter;
use super::metric::{Metric, MetricKind, MetricRole, validate_references};
use super::model::{ManualValue, Micros, now_micros};
use super::query::{self, MetricQuery, Point, Series};
use super::time::{self, CalendarOffset, Granularity};
use crate::error::{Error, Result};
use crate::storage::LogRecord;

/// How deep RATIO/FORMULA inputs may nest (cycles are refused at definition time).
const MAX_DEPTH: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compare {
    #[default]
    None,
    PreviousPeriod,
    PreviousYear,
}

/// A query answer: the series, and the comparison series when asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricAnswer {
    pub series: Vec<Series>,
    pub comparison: Vec<Series>,
    pub version: u32,
    /// The IANA zone the buckets follow.
    pub timezone: String,
}

pub fn metric_key(project: &str, key: &str, version: u32) -> String {
    format!("metric/{project}/{key}/{version:010}")
}

impl ProjectState {
    /// The latest version of every metric.
    pub fn latest_metrics(&self) -> BTreeMap<String, Metric> {
        self.metrics.iter().filter_map(|(k, versions)| versions.last().map(|m| (k.clone(), m.clone()))).collect()
    }

    /// A version of a metric (0: the latest).
    pub(crate) fn metric_version(&self, key: &str, version: u32) -> Result<&Metric> {
        let versions = self.metrics.get(key).ok_or_else(|| Error::NotFound(format!("metric {key:?} not found")))?;
        let found = if version == 0 { versions.last() } else { versions.iter().find(|m| m.version == version) };
        found.ok_or_else(|| Error::NotFound(format!("metric {key:?} has no version {version}")))
    }

    pub(crate) fn latest_metric(&self, key: &str) -> Result<&Metric> {
        self.metrics.get(key).and_then(|v| v.last()).ok_or_else(|| Error::NotFound(format!("metric {key:?} not found")))
    }

    /// The definition a query runs: a stored version, or a checked inline definition.
    pub(crate) fn resolve_target(&self, target: MetricTarget) -> Result<Metric> {
        match target {
            MetricTarget::Key(key, version) => Ok(self.metric_version(&key, version)?.clone()),
            MetricTarget::Inline(metric) => {
                metric.validate()?;
                validate_references(&metric, &self.latest_metrics())?;
                Ok(*metric)
            }
        }
    }
}

/// The range before `[from, to)` to compare with: the previous year, or the period of equal
/// length just before (whole calendar months shift by months, so March compares with February).
pub fn comparison_range(from: Micros, to: Micros, compare: Compare, tz: chrono_tz::Tz) -> Option<(Micros, Micros)> {
    match compare {
        Compare::None => None,
        Compare::PreviousYear => {
            let year = CalendarOffset { months: 12, days: 0 };
            Some((time::shift_back(from, year, tz), time::shift_back(to, year, tz)))
        }
        Compare::PreviousPeriod => {
            let month_aligned = |t: Micros| time::floor(t, Granularity::Month, tz) == t;
            if month_aligned(from) && month_aligned(to) {
                let months = months_between(from, to, tz);
                let offset = CalendarOffset { months, days: 0 };
                return Some((time::shift_back(from, offset, tz), from));
            }
            Some((from - (to - from), from))
        }
    }
}

fn months_between(from: Micros, to: Micros, tz: chrono_tz::Tz) -> i32 {
    let mut months = 0;
    let mut t = from;
    while t < to && months < 12 * 1000 {
        t = time::next(t, Granularity::Month, tz);
        months += 1;
    }
    months
}

/// Evaluates any metric kind over a project's state.
pub fn evaluate(state: &ProjectState, metric: &Metric, query: &MetricQuery, depth: usize) -> Result<Vec<Series>> {
    if depth > MAX_DEPTH {
        return Err(Error::invalid("metric", "inputs nest too deeply"));
    }
    match metric.kind {
        kind if kind.is_event_aggregate() => query::event_aggregate(state, metric, query),
        MetricKind::Ratio => {
            let inputs = [
                (metric.numerator_key.as_str(), metric.numerator_offset),
                (metric.denominator_key.as_str(), metric.denominator_offset),
            ];
            let values = input_series(state, &inputs, query, depth)?;
            Ok(combine(&values, query, None, |v| match (v[0], v[1]) {
                (Some(n), Some(d)) if d != 0.0 => Some(n / d),
                _ => None,
            }))
        }
        MetricKind::Formula => {
            let expr =
                super::formula::parse(&metric.formula).map_err(|e| Error::invalid("metric.formula", e.to_string()))?;
            let names: Vec<String> = if metric.inputs.is_empty() {
                expr.references()
            } else {
                metric
                    .inputs
                    .iter()
                    .map(|i| if i.alias.is_empty() { i.metric_key.clone() } else { i.alias.clone() })
                    .collect()
            };
            let inputs: Vec<(&str, CalendarOffset)> = if metric.inputs.is_empty() {
                names.iter().map(|n| (n.as_str(), CalendarOffset::default())).collect()
            } else {
                metric.inputs.iter().map(|i| (i.metric_key.as_str(), i.offset)).collect()
            };
            let values = input_series(state, &inputs, query, depth)?;
            Ok(combine(&values, query, metric.fill_nulls_with, |v| {
                expr.eval(&|name: &str| names.iter().position(|n| n == name).and_then(|i| v[i]))
            }))
        }
        MetricKind::Manual => Ok(manual_series(state, metric, query)),
        MetricKind::Conversion => query::conversion(state, metric, query),
        MetricKind::Retention => query::retention(state, metric, query),
        MetricKind::LatestSum => super::analysis::revenue::latest_sum_series(state, metric, query),
        MetricKind::RevenueBridge => super::analysis::revenue::bridge_series(state, metric, query),
        kind => unreachable!("{kind:?} is an event aggregate, handled above"),
    }
}

/// A bucket of MANUAL values: their sum and the latest one.
#[derive(Debug, Clone, Copy)]
struct ManualCell {
    sum: f64,
    latest_at: Micros,
    latest: f64,
}

impl ManualCell {
    const EMPTY: ManualCell = ManualCell { sum: 0.0, latest_at: Micros::MIN, latest: 0.0 };

    fn add(&mut self, at: Micros, value: f64) {
        self.sum += value;
        if at >= self.latest_at {
            (self.latest_at, self.latest) = (at, value);
        }
    }

    fn merge(&mut self, other: &ManualCell) {
        self.sum += other.sum;
        if other.latest_at >= self.latest_at {
            (self.latest_at, self.latest) = (other.latest_at, other.latest);
        }
    }

    fn value(&self, last: bool) -> f64 {
        if last { self.latest } else { self.sum }
    }
}

/// One breakdown group of MANUAL values: per bucket, and over the whole range.
#[derive(Debug, Clone)]
struct ManualGroup {
    buckets: Vec<ManualCell>,
    total: ManualCell,
}

/// MANUAL values per bucket: summed, or the latest by timestamp (`semi_additive_last`).
/// Filters and the breakdown apply to the values' dimensions; empty buckets are 0.
fn manual_series(state: &ProjectState, metric: &Metric, query: &MetricQuery) -> Vec<Series> {
    let bounds =
        time::bucket_bounds(query.from, query.to, query.granularity, query.tz, query::MAX_BUCKETS).unwrap_or_default();
    let buckets = bounds.len().saturating_sub(1);
    let empty = || ManualGroup { buckets: vec![ManualCell::EMPTY; buckets], total: ManualCell::EMPTY };
    let dimension =
        |value: &ManualValue, name: &str| value.dimensions.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let mut groups: BTreeMap<String, ManualGroup> = BTreeMap::new();
    let values = state.manual.get(&metric.key).into_iter().flat_map(|m| m.values());
    for value in values.filter(|v| v.timestamp >= query.from && v.timestamp < query.to) {
        if !query.filters.iter().all(|f| filter::value_matches(f, dimension(value, &f.property).as_ref())) {
            continue;
        }
        let label = match &query.breakdown {
            Some(name) => query::label_of_value(dimension(value, name).as_ref()),
            None => String::new(),
        };
        let bucket = bounds.partition_point(|&b| b <= value.timestamp).saturating_sub(1).min(buckets.saturating_sub(1));
        let group = groups.entry(label).or_insert_with(empty);
        group.buckets[bucket].add(value.timestamp, value.value);
        group.total.add(value.timestamp, value.value);
    }
    let last = metric.semi_additive_last;
    let mut ranked: Vec<(String, ManualGroup)> = groups.into_iter().collect();
    ranked.sort_by(|a, b| b.1.total.value(last).total_cmp(&a.1.total.value(last)).then(a.0.cmp(&b.0)));
    let limit = query.breakdown_limit.max(1);
    if query.breakdown.is_some() && ranked.len() > limit {
        let mut other = empty();
        for (_, group) in ranked.split_off(limit) {
            for (into, from) in other.buckets.iter_mut().zip(&group.buckets) {
                into.merge(from);
            }
            other.total.merge(&group.total);
        }
        ranked.push((query::OTHER.into(), other));
    }
    if ranked.is_empty() && query.breakdown.is_none() {
        ranked.push((String::new(), empty()));
    }
    ranked
        .into_iter()
        .map(|(label, group)| Series {
            breakdown_value: label,
            points: (0..buckets)
                .map(|b| Point { start: bounds[b], end: bounds[b + 1], value: Some(group.buckets[b].value(last)) })
                .collect(),
            total: Some(group.total.value(last)),
        })
        .collect()
}

/// Each input's series over the query range shifted back by its offset.
fn input_series(
    state: &ProjectState,
    inputs: &[(&str, CalendarOffset)],
    query: &MetricQuery,
    depth: usize,
) -> Result<Vec<Vec<Series>>> {
    inputs
        .iter()
        .map(|(key, offset)| {
            let metric = state.latest_metric(key)?;
            let shifted = MetricQuery {
                from: time::shift_back(query.from, *offset, query.tz),
                to: time::shift_back(query.to, *offset, query.tz),
                ..query.clone()
            };
            evaluate(state, metric, &shifted, depth + 1)
        })
        .collect()
}

/// Joins input series by breakdown value and bucket index and applies `f` to each point and
/// to the totals. A value an input lacks is `fill` (or no value).
fn combine(
    inputs: &[Vec<Series>],
    query: &MetricQuery,
    fill: Option<f64>,
    f: impl Fn(&[Option<f64>]) -> Option<f64>,
) -> Vec<Series> {
    let bounds =
        time::bucket_bounds(query.from, query.to, query.granularity, query.tz, query::MAX_BUCKETS).unwrap_or_default();
    let mut labels: Vec<String> = Vec::new();
    for series in inputs.iter().flatten() {
        if !labels.contains(&series.breakdown_value) {
            labels.push(series.breakdown_value.clone());
        }
    }
    labels
        .into_iter()
        .map(|label| {
            let find = |input: &Vec<Series>| input.iter().find(|s| s.breakdown_value == label).cloned();
            let matched: Vec<Option<Series>> = inputs.iter().map(find).collect();
            let points = bounds
                .windows(2)
                .enumerate()
                .map(|(b, w)| {
                    let values: Vec<Option<f64>> = matched
                        .iter()
                        .map(|s| s.as_ref().and_then(|s| s.points.get(b)).and_then(|p| p.value).or(fill))
                        .collect();
                    Point { start: w[0], end: w[1], value: f(&values) }
                })
                .collect();
            let totals: Vec<Option<f64>> = matched.iter().map(|s| s.as_ref().and_then(|s| s.total).or(fill)).collect();
            Series { breakdown_value: label, points, total: f(&totals) }
        })
        .collect()
}

impl Engine {
    pub fn create_metric(&self, project: &str, mut metric: Metric) -> Result<Metric> {
        metric.validate()?;
        let entry = self.project(project)?;
        let mut state = entry.write();
        if state.metrics.contains_key(&metric.key) {
            return Err(Error::AlreadyExists(format!("metric {:?} already exists", metric.key)));
        }
        check_graph(&state, &metric)?;
        let now = now_micros();
        (metric.version, metric.created, metric.updated) = (1, now, now);
        self.put_meta_json(&metric_key(project, &metric.key, 1), &metric)?;
        state.metrics.insert(metric.key.clone(), vec![metric.clone()]);
        Ok(metric)
    }

    /// Stores a new version; earlier versions stay readable.
    pub fn update_metric(&self, project: &str, mut metric: Metric) -> Result<Metric> {
        metric.validate()?;
        let entry = self.project(project)?;
        let mut state = entry.write();
        let previous = state.latest_metric(&metric.key)?.clone();
        check_graph(&state, &metric)?;
        metric.version = previous.version + 1;
        metric.created = previous.created;
        metric.updated = now_micros();
        self.put_meta_json(&metric_key(project, &metric.key, metric.version), &metric)?;
        state.metrics.entry(metric.key.clone()).or_default().push(metric.clone());
        state.changes.send_modify(|n| *n += 1);
        Ok(metric)
    }

    /// A version of a metric (0: the latest) and the latest version number.
    pub fn get_metric(&self, project: &str, key: &str, version: u32) -> Result<(Metric, u32)> {
        super::catalog::validate_slug("key", key)?;
        let entry = self.project(project)?;
        let state = entry.read();
        let metric = state.metric_version(key, version)?.clone();
        let latest = state.latest_metric(key)?.version;
        Ok((metric, latest))
    }

    pub fn list_metrics(&self, project: &str, roles: &[MetricRole]) -> Result<Vec<Metric>> {
        let entry = self.project(project)?;
        let state = entry.read();
        Ok(state.latest_metrics().into_values().filter(|m| roles.is_empty() || roles.contains(&m.role)).collect())
    }

    /// Deletes every version. Returns true for a MANUAL metric, whose stored values the
    /// caller then clears with `clear_manual_values`.
    pub fn delete_metric(&self, project: &str, key: &str) -> Result<bool> {
        super::catalog::validate_slug("key", key)?;
        let entry = self.project(project)?;
        let mut state = entry.write();
        let versions =
            state.metrics.get(key).ok_or_else(|| Error::NotFound(format!("metric {key:?} not found")))?.clone();
        let referrers: Vec<String> = state
            .latest_metrics()
            .values()
            .filter(|m| {
                m.key != key && (m.input_keys().iter().any(|k| k == key) || m.parent_keys.iter().any(|k| k == key))
            })
            .map(|m| m.key.clone())
            .collect();
        let goals = state.goals.values().filter(|g| g.metric_key == key).map(|g| format!("goal {}", g.id));
        let experiments = state
            .experiments
            .values()
            .filter(|e| e.metrics().any(|(_, k)| k == key))
            .map(|e| format!("experiment {}", e.key));
        let referrers: Vec<String> = referrers.into_iter().chain(goals).chain(experiments).collect();
        if !referrers.is_empty() {
            return Err(Error::FailedPrecondition(format!("metric {key:?} is referenced by {}", referrers.join(", "))));
        }
        for metric in &versions {
            self.delete_meta(&metric_key(project, key, metric.version))?;
        }
        state.metrics.remove(key);
        state.changes.send_modify(|n| *n += 1);
        Ok(versions.iter().any(|m| m.kind == MetricKind::Manual))
    }

    pub async fn clear_manual_values(&self, project: &str, key: &str) -> Result<()> {
        let entry = self.project(project)?;
        let record = LogRecord::ManualCleared { project: project.to_owned(), metric_key: key.to_owned() };
        self.write(entry, vec![record], vec![]).await?;
        Ok(())
    }

    /// Stores values of a MANUAL metric; invalid items are returned with their index.
    pub async fn record_values(
        &self,
        project: &str,
        key: &str,
        values: Vec<Result<ManualValue>>,
    ) -> Result<(u64, Vec<super::ingest::ItemError>)> {
        super::catalog::validate_slug("metric_key", key)?;
        if values.len() > self.limits.max_batch_events {
            return Err(Error::exhausted(
                "values",
                format!("{} values, at most {}", values.len(), self.limits.max_batch_events),
            ));
        }
        let entry = self.project(project)?;
        {
            let state = entry.read();
            let metric = state.latest_metric(key)?;
            if metric.kind != MetricKind::Manual {
                return Err(Error::FailedPrecondition(format!("metric {key:?} is {:?}, not MANUAL", metric.kind)));
            }
        }
        let mut valid = Vec::with_capacity(values.len());
        let mut rejected = Vec::new();
        for (index, value) in values.into_iter().enumerate() {
            let checked = value.and_then(|v| {
                if !v.value.is_finite() {
                    return Err(Error::invalid("value", "must be finite"));
                }
                super::ingest::validate_properties("dimensions", &v.dimensions, &self.limits)?;
                Ok(v)
            });
            match checked {
                Ok(v) => valid.push(v),
                Err(error) => rejected.push(super::ingest::ItemError {
                    index: index as u32,
                    event_id: String::new(),
                    error: error.under(&format!("values[{index}]")),
                }),
            }
        }
        let recorded = valid.len() as u64;
        if !valid.is_empty() {
            let record =
                LogRecord::ManualValues { project: project.to_owned(), metric_key: key.to_owned(), values: valid };
            self.write(entry, vec![record], vec![]).await?;
        }
        Ok((recorded, rejected))
    }

    /// Runs a query for a stored metric (`version` 0: latest) or an inline definition.
    pub fn query_metric(
        &self,
        project: &str,
        target: MetricTarget,
        mut query: MetricQuery,
        zone: &str,
        compare: Compare,
    ) -> Result<MetricAnswer> {
        let entry = self.project(project)?;
        let state = entry.read();
        let zone = if zone.is_empty() { state.project.timezone.as_str() } else { zone };
        query.tz = time::parse_zone("timezone", zone)?;
        query.members = super::cohort::resolve(&state, "cohort_id", &query.cohort_id)?;
        let metric = state.resolve_target(target)?;
        let series = evaluate(&state, &metric, &query, 0)?;
        let comparison = match comparison_range(query.from, query.to, compare, query.tz) {
            Some((from, to)) => evaluate(&state, &metric, &MetricQuery { from, to, ..query.clone() }, 0)?,
            None => Vec::new(),
        };
        Ok(MetricAnswer { series, comparison, version: metric.version, timezone: query.tz.name().to_owned() })
    }
}

/// Which metric a query runs.
pub enum MetricTarget {
    Key(String, u32),
    Inline(Box<Metric>),
}

/// One North Star per project, and references that exist and do not cycle.
fn check_graph(state: &ProjectState, metric: &Metric) -> Result<()> {
    if metric.role == MetricRole::NorthStar
        && let Some(other) =
            state.latest_metrics().values().find(|m| m.role == MetricRole::NorthStar && m.key != metric.key)
    {
        return Err(Error::FailedPrecondition(format!("metric {:?} is already the project's north star", other.key)));
    }
    validate_references(metric, &state.latest_metrics())
}

/// A metric with its value now and in the comparison period, and the metrics that feed it.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeNode {
    pub metric: Metric,
    pub current: Option<f64>,
    pub previous: Option<f64>,
    pub children: Vec<TreeNode>,
}

impl Engine {
    /// The metric tree under `root_key` (default: the North Star): each metric's value over
    /// the range and the comparison range, children being the metrics that name it as parent.
    pub fn metric_tree(
        &self,
        project: &str,
        root_key: &str,
        mut query: MetricQuery,
        zone: &str,
        compare: Compare,
        max_depth: usize,
    ) -> Result<(TreeNode, Option<(Micros, Micros)>)> {
        let entry = self.project(project)?;
        let state = entry.read();
        let zone = if zone.is_empty() { state.project.timezone.as_str() } else { zone };
        query.tz = time::parse_zone("timezone", zone)?;
        query.granularity = Granularity::Total;
        query.members = super::cohort::resolve(&state, "cohort_id", &query.cohort_id)?;
        let metrics = state.latest_metrics();
        let root = if root_key.is_empty() {
            metrics.values().find(|m| m.role == MetricRole::NorthStar).ok_or_else(|| {
                Error::FailedPrecondition(
                    "the project has no NORTH_STAR metric; give one that role or set root_key".into(),
                )
            })?
        } else {
            super::catalog::validate_slug("root_key", root_key)?;
            metrics.get(root_key).ok_or_else(|| Error::NotFound(format!("metric {root_key:?} not found")))?
        };
        let previous = comparison_range(query.from, query.to, compare, query.tz);
        let depth = if max_depth == 0 { MAX_DEPTH } else { max_depth.min(MAX_DEPTH) };
        let node = tree_node(&state, &metrics, root, &query, previous, depth, &mut Vec::new())?;
        Ok((node, previous))
    }
}

fn total(state: &ProjectState, metric: &Metric, query: &MetricQuery) -> Result<Option<f64>> {
    Ok(evaluate(state, metric, query, 0)?.first().and_then(|s| s.points.first()).and_then(|p| p.value))
}

fn tree_node(
    state: &ProjectState,
    metrics: &BTreeMap<String, Metric>,
    metric: &Metric,
    query: &MetricQuery,
    previous_range: Option<(Micros, Micros)>,
    depth: usize,
    path: &mut Vec<String>,
) -> Result<TreeNode> {
    let current = total(state, metric, query)?;
    let previous = match previous_range {
        Some((from, to)) => total(state, metric, &MetricQuery { from, to, ..query.clone() })?,
        None => None,
    };
    path.push(metric.key.clone());
    let mut children = Vec::new();
    if depth > 1 {
        let feeding: Vec<&Metric> =
            metrics.values().filter(|m| m.parent_keys.contains(&metric.key) && !path.contains(&m.key)).collect();
        for child in feeding {
            children.push(tree_node(state, metrics, child, query, previous_range, depth - 1, path)?);
        }
    }
    path.pop();
    Ok(TreeNode { metric: metric.clone(), current, previous, children })
}
