//! The metric service of the engine: versioned definitions and queries that combine inputs
//! (RATIO, FORMULA), offsets and comparison periods.

use std::collections::BTreeMap;

use crate::core::analysis::breakdown::top_groups;
use crate::core::filter::{self, EventSelector};
use crate::core::metric::definition::{Metric, MetricBook, MetricKind, MetricRole, validate_references};
use crate::core::metric::scan::{self, MetricQuery, Point, Series};
use crate::core::model::{ManualValue, Micros};
use crate::core::store::remote::Fetch;
use crate::core::store::source::EventSource;
use crate::core::time::{self, CalendarOffset, Granularity};
use crate::error::{Error, Result, echo};

/// How deep RATIO/FORMULA inputs may nest (cycles are refused at definition time).
pub(crate) const MAX_DEPTH: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compare {
    #[default]
    None,
    PreviousPeriod,
    PreviousYear,
}

impl Compare {
    /// What a metric tree compares with when the request leaves it open: a tree is read for
    /// what changed, so the previous period. A single metric query compares with nothing
    /// (`Compare::default()`).
    pub const TREE_DEFAULT: Compare = Compare::PreviousPeriod;
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

/// The range before `[from, to)` to compare with: the previous year (52 weeks for ISO weeks,
/// so weekdays line up), or the period of equal length just before (whole calendar months
/// shift by months, so March compares with February).
pub fn comparison_range(
    from: Micros,
    to: Micros,
    compare: Compare,
    granularity: Granularity,
    tz: chrono_tz::Tz,
) -> Option<(Micros, Micros)> {
    match compare {
        Compare::None => None,
        Compare::PreviousYear if granularity == Granularity::Week => {
            let weeks = CalendarOffset { months: 0, days: 52 * 7 };
            Some((time::shift_back(from, weeks, tz), time::shift_back(to, weeks, tz)))
        }
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
            // Whole local days shift by days, so a week compares with the week before even when
            // a DST change makes one of them 167 or 169 hours long.
            if let Some(days) = time::whole_days_between(from, to, tz) {
                return Some((time::shift_back(from, CalendarOffset { months: 0, days }, tz), from));
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

/// Whether evaluating `metric` over `query` reads events beyond what a source's pushdown
/// answers (`scan::pushable` event aggregates) and MANUAL values. In doubt (an unknown input,
/// a bad formula), true: the caller then reads the events, and the evaluation reports the
/// error as it would anyway.
pub fn reads_events(metrics: &MetricBook, metric: &Metric, query: &MetricQuery, depth: usize) -> bool {
    if depth > MAX_DEPTH || (!query.cohort_id.is_empty() && query.member_ids.is_none()) {
        return true;
    }
    let inputs_read = |keys: &[&str]| {
        keys.iter().any(|key| metrics.latest_metric(key).map_or(true, |m| reads_events(metrics, m, query, depth + 1)))
    };
    match metric.kind {
        kind if kind.is_event_aggregate() => !scan::pushable(metric, query),
        MetricKind::Manual => false,
        MetricKind::Ratio => inputs_read(&[&metric.numerator_key, &metric.denominator_key]),
        MetricKind::Formula if metric.inputs.is_empty() => match crate::core::metric::formula::parse(&metric.formula) {
            Ok(expr) => inputs_read(&expr.references().iter().map(String::as_str).collect::<Vec<_>>()),
            Err(_) => true,
        },
        MetricKind::Formula => inputs_read(&metric.inputs.iter().map(|i| i.metric_key.as_str()).collect::<Vec<_>>()),
        _ => true,
    }
}

/// What evaluating `metrics` over `query` reads of the events, for a store that fetches them
/// first (a remote engine): the events their selectors name (their inputs' too) at any time
/// (rolling and to-date windows look back), with traits only when a filter or the breakdown is
/// on one. Everything when a selector names no event, an input does not exist or nests too
/// deep, or `cohort_read`: the query's cohort is evaluated over the events read.
pub fn fetch<'m>(
    book: &MetricBook,
    metrics: impl IntoIterator<Item = &'m Metric>,
    query: &MetricQuery,
    cohort_read: bool,
) -> Fetch {
    let mut selectors = Vec::new();
    let known = metrics.into_iter().all(|metric| collect_selectors(book, metric, 0, &mut selectors));
    if !known || cohort_read || selectors.iter().any(|s| s.event.is_empty()) {
        return Fetch::everything();
    }
    let mut names: Vec<String> = selectors.iter().map(|s| s.event.clone()).collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        // Nothing reads events (MANUAL values only): no name list to send.
        return Fetch::everything();
    }
    let filters = selectors.iter().flat_map(|s| &s.filters).chain(&query.filters);
    let traits = filter::on_traits(filters, query.breakdown.as_deref());
    Fetch { names: Some(names), traits, ..Fetch::everything() }
}

/// Adds the selectors `metric` reads events through (its inputs' too) to `out`; false when it
/// may read events no selector names.
fn collect_selectors<'a>(
    book: &'a MetricBook,
    metric: &'a Metric,
    depth: usize,
    out: &mut Vec<&'a EventSelector>,
) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    match metric.kind {
        MetricKind::Manual => true,
        MetricKind::Ratio | MetricKind::Formula => metric
            .input_keys()
            .iter()
            .all(|key| book.latest_metric(key).is_ok_and(|input| collect_selectors(book, input, depth + 1, out))),
        _ => {
            out.extend(metric.selector.iter().chain(&metric.conversion_selector));
            metric.selector.is_some()
        }
    }
}

/// Evaluates any metric kind over a project's state.
pub fn evaluate(
    source: &impl EventSource,
    metrics: &MetricBook,
    metric: &Metric,
    query: &MetricQuery,
    depth: usize,
) -> Result<Vec<Series>> {
    if depth > MAX_DEPTH {
        return Err(Error::invalid("metric", "inputs nest too deeply"));
    }
    // Definitions stored before offsets were bounded are refused here, not evaluated.
    metric.validate_offsets()?;
    match metric.kind {
        kind if kind.is_event_aggregate() => scan::event_aggregate(source, metric, query),
        MetricKind::Ratio => {
            let inputs = [
                (metric.numerator_key.as_str(), metric.numerator_offset),
                (metric.denominator_key.as_str(), metric.denominator_offset),
            ];
            let values = input_series(source, metrics, &inputs, query, depth)?;
            Ok(combine(&values, query, None, |v| match (v[0], v[1]) {
                (Some(n), Some(d)) if d != 0.0 => Some(n / d),
                _ => None,
            }))
        }
        MetricKind::Formula => {
            let expr = crate::core::metric::formula::parse(&metric.formula)
                .map_err(|e| Error::invalid("metric.formula", e.to_string()))?;
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
            let values = input_series(source, metrics, &inputs, query, depth)?;
            Ok(combine(&values, query, metric.fill_nulls_with, |v| {
                expr.eval(&|name: &str| names.iter().position(|n| n == name).and_then(|i| v[i]))
            }))
        }
        MetricKind::Manual => Ok(manual_series(source, metric, query)),
        MetricKind::LatestSum => crate::core::analysis::revenue::latest_sum_series(source, metric, query),
        MetricKind::RevenueBridge => crate::core::analysis::revenue::bridge_series(source, metric, query),
        MetricKind::Conversion | MetricKind::Retention => scan::share(source, metric, query),
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
fn manual_series(source: &impl EventSource, metric: &Metric, query: &MetricQuery) -> Vec<Series> {
    let bounds =
        time::bucket_bounds(query.from, query.to, query.granularity, query.tz, scan::MAX_BUCKETS).unwrap_or_default();
    let buckets = bounds.len().saturating_sub(1);
    let empty = || ManualGroup { buckets: vec![ManualCell::EMPTY; buckets], total: ManualCell::EMPTY };
    let dimension =
        |value: &ManualValue, name: &str| value.dimensions.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let mut groups: BTreeMap<String, ManualGroup> = BTreeMap::new();
    let values = source.manual(&metric.key).into_iter().flat_map(|m| m.values());
    for value in values.filter(|v| v.timestamp >= query.from && v.timestamp < query.to) {
        if !query.filters.iter().all(|f| filter::value_matches(f, dimension(value, &f.property).as_ref())) {
            continue;
        }
        let label = match &query.breakdown {
            Some(name) => crate::core::analysis::breakdown::label_of_value(dimension(value, name).as_ref()),
            None => String::new(),
        };
        let bucket = bounds.partition_point(|&b| b <= value.timestamp).saturating_sub(1).min(buckets.saturating_sub(1));
        let group = groups.entry(label).or_insert_with(empty);
        group.buckets[bucket].add(value.timestamp, value.value);
        group.total.add(value.timestamp, value.value);
    }
    let last = metric.semi_additive_last;
    let (mut ranked, rest) = top_groups(
        groups.into_iter().collect::<Vec<(String, ManualGroup)>>(),
        query.breakdown_limit,
        |g| g.0.clone(),
        |a, b| b.1.total.value(last).total_cmp(&a.1.total.value(last)),
    );
    if !rest.is_empty() {
        let mut other = empty();
        for (_, group) in rest {
            for (into, from) in other.buckets.iter_mut().zip(&group.buckets) {
                into.merge(from);
            }
            other.total.merge(&group.total);
        }
        ranked.push((crate::core::analysis::breakdown::OTHER.into(), other));
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
    source: &impl EventSource,
    metrics: &MetricBook,
    inputs: &[(&str, CalendarOffset)],
    query: &MetricQuery,
    depth: usize,
) -> Result<Vec<Vec<Series>>> {
    inputs
        .iter()
        .map(|(key, offset)| {
            let metric = metrics.latest_metric(key)?;
            let shifted = MetricQuery {
                from: time::shift_back(query.from, *offset, query.tz),
                to: time::shift_back(query.to, *offset, query.tz),
                ..query.clone()
            };
            evaluate(source, metrics, metric, &shifted, depth + 1)
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
        time::bucket_bounds(query.from, query.to, query.granularity, query.tz, scan::MAX_BUCKETS).unwrap_or_default();
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

/// One North Star per project, and references that exist and do not cycle.
pub(crate) fn check_graph(book: &MetricBook, metric: &Metric) -> Result<()> {
    if metric.role == MetricRole::NorthStar
        && let Some(other) =
            book.latest_metrics().values().find(|m| m.role == MetricRole::NorthStar && m.key != metric.key)
    {
        return Err(Error::FailedPrecondition(format!(
            "metric {} is already the project's north star",
            echo(&other.key)
        )));
    }
    validate_references(metric, &book.latest_metrics())
}

/// A metric with its value now and in the comparison period, and the metrics that feed it.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeNode {
    pub metric: Metric,
    pub current: Option<f64>,
    pub previous: Option<f64>,
    pub children: Vec<TreeNode>,
}

fn total(source: &impl EventSource, book: &MetricBook, metric: &Metric, query: &MetricQuery) -> Result<Option<f64>> {
    Ok(evaluate(source, book, metric, query, 0)?.first().and_then(|s| s.points.first()).and_then(|p| p.value))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn tree_node(
    source: &impl EventSource,
    book: &MetricBook,
    metrics: &BTreeMap<String, Metric>,
    metric: &Metric,
    query: &MetricQuery,
    previous_range: Option<(Micros, Micros)>,
    depth: usize,
    path: &mut Vec<String>,
) -> Result<TreeNode> {
    let pushed = source.pushdown().is_some() && scan::pushable(metric, query);
    let (current, previous) = match previous_range {
        // Event aggregates: both ranges from one pass over the events (unless computed where
        // the events are).
        Some(range) if crate::core::metric::two_ranges::applies(metric, query) && !pushed => {
            crate::core::metric::two_ranges::totals(source, metric, query, range)?
        }
        Some((from, to)) => (
            total(source, book, metric, query)?,
            total(source, book, metric, &MetricQuery { from, to, ..query.clone() })?,
        ),
        None => (total(source, book, metric, query)?, None),
    };
    path.push(metric.key.clone());
    let mut children = Vec::new();
    if depth > 1 {
        let feeding: Vec<&Metric> =
            metrics.values().filter(|m| m.parent_keys.contains(&metric.key) && !path.contains(&m.key)).collect();
        // Each child (and its subtree) on its own thread: they only read.
        let path_ref = &*path;
        let token = crate::core::cancel::current();
        let nodes: Vec<Result<TreeNode>> = std::thread::scope(|scope| {
            let handles: Vec<_> = feeding
                .iter()
                .map(|&child| {
                    let token = token.as_ref();
                    scope.spawn(move || {
                        crate::core::cancel::within(token, || {
                            let mut path = path_ref.to_vec();
                            tree_node(source, book, metrics, child, query, previous_range, depth - 1, &mut path)
                        })
                    })
                })
                .collect();
            // A panic in a child is a bug; re-raise it on the calling thread.
            handles.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
        });
        for node in nodes {
            children.push(node?);
        }
    }
    path.pop();
    Ok(TreeNode { metric: metric.clone(), current, previous, children })
}
