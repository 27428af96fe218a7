//! Metric queries: one pass over a project's events, grouped by person, into
//! (breakdown group × bucket) cells.
//!
//! Every bucket aggregates over a window of event time: the bucket itself (clipped to the
//! query range), a trailing window ending at the bucket's end (`rolling_window`), or the
//! enclosing period up to the bucket's end (`to_date`). Windows are monotone in both ends, so
//! the buckets an event counts for are one contiguous run found by binary search. Distinct
//! users are counted with a per-cell marker of the last person seen, which is exact because
//! all rows of a person are visited together.

use std::sync::Arc;

use chrono_tz::Tz;

use crate::core::analysis::breakdown::{Groups, breakdown_limit_or_default, fold_tail, top_groups};
use crate::core::cohort::{MemberIds, Members};
use crate::core::filter::{CompiledFilters, EventSelector, Filter, is_trait, row_number};
use crate::core::metric::definition::{Metric, MetricKind};
use crate::core::model::Micros;
use crate::core::store::person_batch::PersonBatch;
use crate::core::store::remote::{AggregateRequest, Aggregated, CellValues, PartialCell};
use crate::core::store::source::EventSource;
use crate::core::store::source::{PersonEvents, Scan};
use crate::core::store::table::{Cell, NONE};
use crate::core::time::{self, Granularity};
use crate::error::{Error, Result};

/// Most buckets one query may return.
pub const MAX_BUCKETS: usize = 10_000;

#[derive(Debug, Clone)]
pub struct MetricQuery {
    pub from: Micros,
    pub to: Micros,
    pub granularity: Granularity,
    pub tz: Tz,
    pub filters: Vec<Filter>,
    /// An event property or `user.<trait>`.
    pub breakdown: Option<String>,
    pub breakdown_limit: usize,
    /// Only members of this cohort; resolved into `members` by the engine before evaluation.
    pub cohort_id: String,
    pub members: Option<Members>,
    /// The cohort's members as a remote engine counted them (`cohort::members_from_counts`):
    /// then an aggregate computed there keeps only their cells.
    pub member_ids: Option<Arc<MemberIds>>,
}

impl MetricQuery {
    /// `[from, to)` in `granularity` buckets of zone `tz`: no filter, breakdown or cohort.
    pub fn new(from: Micros, to: Micros, granularity: Granularity, tz: Tz) -> MetricQuery {
        MetricQuery {
            from,
            to,
            granularity,
            tz,
            filters: Vec::new(),
            breakdown: None,
            breakdown_limit: crate::core::analysis::breakdown::DEFAULT_BREAKDOWN_LIMIT,
            cohort_id: String::new(),
            members: None,
            member_ids: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub start: Micros,
    pub end: Micros,
    pub value: Option<f64>,
}

impl Point {
    /// Whether the bucket is over at `now`: later events can no longer land in it.
    pub fn is_complete(&self, now: Micros) -> bool {
        self.end <= now
    }
}

/// A value's change against an earlier one: absolute, and relative when the earlier value
/// is not 0. Either is absent when a value is.
pub fn change(current: Option<f64>, previous: Option<f64>) -> (Option<f64>, Option<f64>) {
    match (current, previous) {
        (Some(now), Some(then)) => (Some(now - then), (then != 0.0).then(|| (now - then) / then)),
        _ => (None, None),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub breakdown_value: String,
    pub points: Vec<Point>,
    /// The metric over the whole range (not a sum of buckets for distinct counts).
    pub total: Option<f64>,
}

/// The time window each bucket aggregates over.
pub(crate) fn bucket_windows(metric: &Metric, query: &MetricQuery, bounds: &[Micros]) -> Vec<(Micros, Micros)> {
    bounds
        .windows(2)
        .map(|b| {
            let end = b[1].min(query.to);
            let start = match (metric.rolling_window, metric.to_date) {
                (Some(window), _) => time::days_before(end, window, query.tz),
                // The to-date period containing the bucket's last instant (a week that ends in
                // April starts its month-to-date value on April 1st).
                (None, Some(period)) => time::period_floor(end - 1, period, query.tz),
                (None, None) => b[0].max(query.from),
            };
            (start, end)
        })
        .collect()
}

/// Hashable form of a cell, for grouping by an event property.
/// Accumulators for `cells` cells of one aggregate kind.
pub(crate) struct Cells {
    kind: MetricKind,
    count: Vec<u64>,
    sum: Vec<f64>,
    min: Vec<f64>,
    max: Vec<f64>,
    values: Vec<Vec<f64>>,
    last_person: Vec<u32>,
}

impl Cells {
    pub(crate) fn new(kind: MetricKind, cells: usize) -> Cells {
        let sized = |on: bool, fill: f64| if on { vec![fill; cells] } else { Vec::new() };
        Cells {
            kind,
            count: vec![0; cells],
            sum: sized(matches!(kind, MetricKind::Sum | MetricKind::Avg), 0.0),
            min: sized(kind == MetricKind::Min, f64::INFINITY),
            max: sized(kind == MetricKind::Max, f64::NEG_INFINITY),
            values: if kind == MetricKind::Percentile { vec![Vec::new(); cells] } else { Vec::new() },
            last_person: if kind == MetricKind::UniqueUsers { vec![NONE; cells] } else { Vec::new() },
        }
    }

    #[inline]
    pub(crate) fn add(&mut self, cell: usize, person: u32, value: f64) {
        match self.kind {
            MetricKind::UniqueUsers => {
                if self.last_person[cell] != person {
                    self.last_person[cell] = person;
                    self.count[cell] += 1;
                }
            }
            MetricKind::Sum | MetricKind::Avg => {
                self.sum[cell] += value;
                self.count[cell] += 1;
            }
            MetricKind::Min => {
                self.min[cell] = self.min[cell].min(value);
                self.count[cell] += 1;
            }
            MetricKind::Max => {
                self.max[cell] = self.max[cell].max(value);
                self.count[cell] += 1;
            }
            MetricKind::Percentile => {
                self.values[cell].push(value);
                self.count[cell] += 1;
            }
            _ => self.count[cell] += 1,
        }
    }

    /// Adds an event's value, or a partial cell of a person's events (never for PERCENTILE,
    /// which `pushable` keeps to events).
    #[inline]
    pub(crate) fn add_share(&mut self, cell: usize, person: u32, share: Share<'_>) {
        let partial = match share {
            Share::Event(value) => return self.add(cell, person, value),
            Share::Partial(partial) => partial,
        };
        match self.kind {
            MetricKind::UniqueUsers => self.add(cell, person, 0.0),
            MetricKind::Sum | MetricKind::Avg => self.sum[cell] += partial.sum,
            MetricKind::Min => self.min[cell] = self.min[cell].min(partial.min),
            MetricKind::Max => self.max[cell] = self.max[cell].max(partial.max),
            _ => {}
        }
        if self.kind != MetricKind::UniqueUsers {
            self.count[cell] += partial.count;
        }
    }

    pub(crate) fn value(&mut self, cell: usize, percentile: f64) -> Option<f64> {
        let n = self.count[cell];
        match self.kind {
            MetricKind::Count | MetricKind::UniqueUsers => Some(n as f64),
            MetricKind::Sum => Some(self.sum[cell]),
            _ if n == 0 => None,
            MetricKind::Avg => Some(self.sum[cell] / n as f64),
            MetricKind::Min => Some(self.min[cell]),
            MetricKind::Max => Some(self.max[cell]),
            MetricKind::Percentile => Some(percentile_of(&mut self.values[cell], percentile)),
            _ => None,
        }
    }
}

/// The `p`-th percentile (0 < p < 100) with linear interpolation between closest ranks
/// (numpy's default, DuckDB's `quantile_cont`). `values` must not be empty.
pub fn percentile_of(values: &mut [f64], p: f64) -> f64 {
    values.sort_unstable_by(f64::total_cmp);
    let rank = p / 100.0 * (values.len() - 1) as f64;
    let lower = rank.floor() as usize;
    let upper = (lower + 1).min(values.len() - 1);
    values[lower] + (rank - lower as f64) * (values[upper] - values[lower])
}

/// Most bytes of filter values an aggregate sends to a remote engine: they travel as SQL text,
/// which ClickHouse caps (256 KiB by default). A longer list (say, an IN of 100,000 ids) is
/// answered from the events instead.
const MAX_PUSHED_FILTER_BYTES: usize = 64 * 1024;

/// Whether filter values fit a statement sent to a remote engine (`MAX_PUSHED_FILTER_BYTES`).
pub(crate) fn fits_statement<'a>(filters: impl IntoIterator<Item = &'a Filter>) -> bool {
    let value_bytes: usize = filters
        .into_iter()
        .flat_map(|f| &f.values)
        .map(|v| match v {
            crate::core::model::Value::String(s) => s.len() + 16,
            _ => 32,
        })
        .sum();
    value_bytes <= MAX_PUSHED_FILTER_BYTES
}

/// Whether a remote engine computes `metric` over `query` where the events are
/// (`AggregatePushdown`): a kind that partial cells add up to exactly, each event in one
/// bucket (no rolling or to-date window), no cohort unless the remote engine counted its
/// members (`member_ids`) and filter values that fit a statement. Trait filters, breakdowns
/// and the cohort are applied here, to the people the cells come with.
pub fn pushable(metric: &Metric, query: &MetricQuery) -> bool {
    let selector_filters = metric.selector.iter().flat_map(|s| &s.filters);
    fits_statement(selector_filters.chain(&query.filters))
        && metric.kind.is_event_aggregate()
        && metric.kind != MetricKind::Percentile
        && metric.rolling_window.is_none()
        && metric.to_date.is_none()
        && metric.selector.is_some()
        && (query.cohort_id.is_empty() || query.member_ids.is_some())
        && query.members.is_none()
}

/// Event aggregates computed where the events are, for the metrics `pushable` accepts.
pub trait AggregatePushdown: Send + Sync {
    fn event_aggregate(&self, metric: &Metric, query: &MetricQuery) -> Result<Vec<Series>>;
}

/// What a remote engine is asked for an event aggregate (`pushable` holds): the events of the
/// selector's name in the query's range, through the selector's and the query's event-property
/// filters, in `bounds`' buckets. `not_before` is where the project's retention starts.
pub fn aggregate_request(metric: &Metric, query: &MetricQuery, not_before: Micros) -> Result<AggregateRequest> {
    let selector = metric.selector.as_ref().ok_or_else(|| Error::invalid("metric.selector", "required"))?;
    let bounds = time::bucket_bounds(query.from, query.to, query.granularity, query.tz, MAX_BUCKETS)?;
    let all_filters = || selector.filters.iter().chain(&query.filters);
    let needs_value = !matches!(metric.kind, MetricKind::Count | MetricKind::UniqueUsers);
    Ok(AggregateRequest {
        name: selector.event.clone(),
        from: query.from.max(not_before),
        to: query.to,
        filters: all_filters().filter(|f| !is_trait(&f.property)).cloned().collect(),
        value_property: needs_value.then(|| metric.property.clone()),
        breakdown_property: query.breakdown.clone().filter(|b| !is_trait(b)),
        bounds,
        with_traits: crate::core::filter::on_traits(all_filters(), query.breakdown.as_deref()),
        values: CellValues {
            count: metric.kind != MetricKind::UniqueUsers,
            sum: matches!(metric.kind, MetricKind::Sum | MetricKind::Avg),
            min: metric.kind == MetricKind::Min,
            max: metric.kind == MetricKind::Max,
        },
    })
}

/// An event aggregate from a remote engine's partial cells (the answer to `request`, made by
/// `aggregate_request`): the same groups, ranking, `$other` and totals as a scan of the events
/// gives.
pub fn aggregate_partials(
    metric: &Metric,
    query: &MetricQuery,
    request: &AggregateRequest,
    aggregated: Aggregated,
) -> Result<Vec<Series>> {
    let bounds = &request.bounds;
    let selector = metric.selector.as_ref().ok_or_else(|| Error::invalid("metric.selector", "required"))?;
    // The people, with their traits: trait filters and breakdowns read them.
    let mut people = PersonBatch::default();
    for (user, traits) in aggregated.traits {
        people.add_person(&user, true, traits)?;
    }
    let mut cells = Vec::with_capacity(aggregated.people.len());
    for person in aggregated.people {
        cells.push((people.person(&person.id, person.is_user)?, person.cells));
    }
    let trait_filters: Vec<&Filter> =
        selector.filters.iter().chain(&query.filters).filter(|f| is_trait(&f.property)).collect();
    let members = query.member_ids.as_ref().map(|ids| ids.on(&people));
    let people_pass = CompiledFilters::compile(&people, &trait_filters, members.as_ref().map(|m| m.as_slice()));
    let buckets = bounds.len() - 1;
    let feed = PartialFeed { cells: &cells, people_pass: &people_pass, buckets };
    fill(&people, metric, query, bounds, feed)
}

/// Evaluates an event aggregate (COUNT, UNIQUE_USERS, SUM, AVG, MIN, MAX, PERCENTILE).
pub fn event_aggregate(source: &impl EventSource, metric: &Metric, query: &MetricQuery) -> Result<Vec<Series>> {
    if let Some(pushdown) = source.pushdown()
        && pushable(metric, query)
    {
        return pushdown.event_aggregate(metric, query);
    }
    let bounds = time::bucket_bounds(query.from, query.to, query.granularity, query.tz, MAX_BUCKETS)?;
    let windows = bucket_windows(metric, query, &bounds);
    let window_starts: Vec<Micros> = windows.iter().map(|w| w.0).collect();
    let window_ends: Vec<Micros> = windows.iter().map(|w| w.1).collect();
    let scan_from = window_starts.iter().copied().min().unwrap_or(query.from).min(query.from);
    // Plain buckets of one width (days in a zone without a DST change in the range, and any
    // single bucket) tile [from, to): an event's bucket is arithmetic, not a binary search.
    let width = bounds[1] - bounds[0];
    let uniform = metric.rolling_window.is_none()
        && metric.to_date.is_none()
        && width > 0
        && bounds.windows(2).all(|b| b[1] - b[0] == width);
    let buckets_of = |t: Micros| -> (usize, usize) {
        if uniform {
            let bucket = ((t - bounds[0]) / width) as usize;
            debug_assert_eq!(
                (bucket, bucket + 1),
                (window_ends.partition_point(|&end| end <= t), window_starts.partition_point(|&start| start <= t))
            );
            (bucket, bucket + 1)
        } else {
            (window_ends.partition_point(|&end| end <= t), window_starts.partition_point(|&start| start <= t))
        }
    };

    let matching = Matching::of_metric(source, metric, query, scan_from, query.to)?;
    let feed = EventFeed { source, matching, from: query.from, buckets_of };
    fill(source, metric, query, &bounds, feed)
}

/// One event's or one partial cell's part of a cell.
#[derive(Clone, Copy)]
pub(crate) enum Share<'a> {
    Event(f64),
    Partial(&'a PartialCell),
}

/// Where an event aggregate's cells are filled from: `visit(person, group, buckets, in the
/// totals, share)` for each share, all of a person's together.
trait Feed {
    fn run(&self, groups: &mut Groups, visit: impl FnMut(u32, u32, std::ops::Range<usize>, bool, Share<'_>));
}

/// The matching events of a source.
struct EventFeed<'a, S, B> {
    source: &'a S,
    matching: Matching,
    /// Events before it count for rolling buckets only, not the totals.
    from: Micros,
    buckets_of: B,
}

impl<S: EventSource, B: Fn(Micros) -> (usize, usize)> Feed for EventFeed<'_, S, B> {
    fn run(&self, groups: &mut Groups, mut visit: impl FnMut(u32, u32, std::ops::Range<usize>, bool, Share<'_>)) {
        self.matching.for_each(self.source, |person, row, t, value| {
            let group = groups.group(self.source, person, row);
            let (first, last) = (self.buckets_of)(t);
            visit(person, group, first..last, t >= self.from, Share::Event(value));
        });
    }
}

/// A remote engine's partial cells, per person of a `PersonBatch` of the people.
struct PartialFeed<'a> {
    cells: &'a [(u32, Vec<PartialCell>)],
    people_pass: &'a CompiledFilters,
    buckets: usize,
}

impl Feed for PartialFeed<'_> {
    fn run(&self, groups: &mut Groups, mut visit: impl FnMut(u32, u32, std::ops::Range<usize>, bool, Share<'_>)) {
        for (person, cells) in self.cells {
            if !self.people_pass.person_passes(*person) {
                continue;
            }
            for cell in cells {
                let bucket = (cell.bucket as usize).min(self.buckets.saturating_sub(1));
                let group = groups.value_group(*person, &cell.group);
                visit(*person, group, bucket..bucket + 1, true, Share::Partial(cell));
            }
        }
    }
}

/// Fills an event aggregate's (group × bucket) cells from `feed` and makes the series: groups
/// ranked by their total, the tail past the breakdown limit folded into `$other`.
fn fill(
    source: &impl EventSource,
    metric: &Metric,
    query: &MetricQuery,
    bounds: &[Micros],
    feed: impl Feed,
) -> Result<Vec<Series>> {
    let buckets = bounds.len() - 1;
    let mut groups = Groups::new(source, query.breakdown.as_deref());
    // A breakdown first needs a pass for per-group totals over the range, to rank groups
    // and fold the tail into `$other`; the main pass fills the cells and the series totals.
    let scan =
        |groups: &mut Groups, remap: Option<&[u32]>, n_groups: usize, cells: &mut Option<Cells>, totals: &mut Cells| {
            feed.run(groups, |person, raw_group, in_buckets, in_totals, share| {
                let group = remap.map_or(raw_group as usize, |r| r[raw_group as usize] as usize);
                if in_totals {
                    if totals.count.len() <= group {
                        totals.grow(group + 1);
                    }
                    totals.add_share(group, person, share);
                }
                let Some(cells) = cells.as_mut() else { return };
                debug_assert!(group < n_groups);
                for bucket in in_buckets {
                    cells.add_share(group * buckets + bucket, person, share);
                }
            });
        };

    let limit = breakdown_limit_or_default(query.breakdown_limit);
    // Orders active groups (with a matching event in the range) by their total, best first.
    let rank = |totals: &mut Cells, labels: &[String]| -> Vec<usize> {
        totals.grow(labels.len());
        let active: Vec<usize> = (0..labels.len()).filter(|&g| totals.count[g] > 0).collect();
        let active: Vec<(usize, Option<f64>)> =
            active.into_iter().map(|g| (g, totals.value(g, metric.percentile))).collect();
        let score = |v: &Option<f64>| v.unwrap_or(f64::NEG_INFINITY);
        let (kept, rest) =
            top_groups(active, usize::MAX, |(g, _)| labels[*g].as_str(), |a, b| score(&b.1).total_cmp(&score(&a.1)));
        kept.into_iter().chain(rest).map(|(g, _)| g).collect()
    };
    let mut totals = Cells::new(metric.kind, 0);
    // With no breakdown, or a trait breakdown with at most `limit` values, one pass fills
    // every group; otherwise a first pass ranks the groups and the tail folds into `$other`.
    let known_labels = match &groups {
        Groups::One => Some(vec![String::new()]),
        Groups::Person(groups) if groups.labels.len() <= limit => Some(groups.labels.clone()),
        _ => None,
    };
    let (order, labels, remap, n_groups) = match known_labels {
        Some(labels) => {
            let n = labels.len();
            (None, labels, None, n)
        }
        None => {
            scan(&mut groups, None, 0, &mut None, &mut totals);
            let labels = groups.labels();
            let ranked = rank(&mut totals, &labels);
            let (kept, remap) = fold_tail(&ranked, &labels, limit);
            totals = Cells::new(metric.kind, 0);
            let n = kept.len();
            (Some((0..n).collect::<Vec<_>>()), kept, Some(remap), n)
        }
    };
    let mut cells = Some(Cells::new(metric.kind, n_groups * buckets));
    scan(&mut groups, remap.as_deref(), n_groups, &mut cells, &mut totals);
    let mut cells = cells.expect("cells were created above");
    totals.grow(n_groups);
    let order = match order {
        Some(order) => order,
        None if query.breakdown.is_none() => vec![0],
        None => rank(&mut totals, &labels),
    };
    let series = order
        .into_iter()
        .map(|group| {
            let points = (0..buckets)
                .map(|b| Point {
                    start: bounds[b],
                    end: bounds[b + 1],
                    value: cells.value(group * buckets + b, metric.percentile),
                })
                .collect();
            Series { breakdown_value: labels[group].clone(), points, total: totals.value(group, metric.percentile) }
        })
        .collect();
    Ok(series)
}

impl Cells {
    fn grow(&mut self, cells: usize) {
        self.count.resize(cells, 0);
        match self.kind {
            MetricKind::Sum | MetricKind::Avg => self.sum.resize(cells, 0.0),
            MetricKind::Min => self.min.resize(cells, f64::INFINITY),
            MetricKind::Max => self.max.resize(cells, f64::NEG_INFINITY),
            MetricKind::Percentile => self.values.resize(cells, Vec::new()),
            MetricKind::UniqueUsers => self.last_person.resize(cells, NONE),
            _ => {}
        }
    }
}

/// The events a metric pass reads: one event name in `[from, to)`, passing the filters, with a
/// numeric property when `needs_value` (events without it are skipped).
pub(crate) struct Matching {
    pub name: u32,
    pub filters: CompiledFilters,
    pub needs_value: bool,
    pub property: u32,
    pub from: Micros,
    pub to: Micros,
}

impl Matching {
    /// The events an event aggregate reads in `[from, to)`: its selector's name through its
    /// and the query's filters (and the query's cohort), with its property when it sums one.
    pub(crate) fn of_metric(
        source: &impl EventSource,
        metric: &Metric,
        query: &MetricQuery,
        from: Micros,
        to: Micros,
    ) -> Result<Matching> {
        let selector = metric.selector.as_ref().ok_or_else(|| Error::invalid("metric.selector", "required"))?;
        let filters: Vec<&Filter> = selector.filters.iter().chain(&query.filters).collect();
        let needs_value = !matches!(metric.kind, MetricKind::Count | MetricKind::UniqueUsers);
        Ok(Matching {
            name: source.names().get(&selector.event).unwrap_or(NONE),
            filters: CompiledFilters::compile(source, &filters, query.members.as_ref().map(|m| m.as_slice())),
            needs_value,
            property: if needs_value { source.keys().get(&metric.property).unwrap_or(NONE) } else { NONE },
            from,
            to,
        })
    }

    /// Visits the matching events person by person (all of a person's rows together):
    /// `visit(person, row, time, value)`, value 0 when not needed.
    pub(crate) fn for_each(&self, source: &impl EventSource, mut visit: impl FnMut(u32, usize, Micros, f64)) {
        if self.name == NONE {
            return;
        }
        let numbers =
            (self.needs_value && self.property != NONE).then(|| source.numbers(self.name, self.property)).flatten();
        source.for_each(Scan::named(&[self.name]).within(self.from, self.to), |person, events| {
            if !self.filters.person_passes(person) {
                return;
            }
            // Events come in time order: skip to `from`, stop at `to`.
            let first = events.times.partition_point(|&t| t < self.from);
            for i in first..events.len() {
                let t = events.times[i];
                if t >= self.to {
                    break;
                }
                if events.names[i] != self.name {
                    continue;
                }
                let row = events.rows[i] as usize;
                if !self.filters.row_passes(source, row) {
                    continue;
                }
                let value = if self.needs_value {
                    let number = match (&numbers, events.indexed_at) {
                        (Some(numbers), Some(at)) => numbers[at + i],
                        _ => row_number(source.row_props(row), self.property),
                    };
                    match number {
                        Some(v) => v,
                        None => continue,
                    }
                } else {
                    0.0
                };
                visit(person, row, t, value);
            }
        });
    }
}

/// Rows matching an event selector plus the query's filters.
pub(crate) struct Matcher {
    name: u32,
    filters: CompiledFilters,
}

impl Matcher {
    pub(crate) fn new(
        source: &impl EventSource,
        selector: &EventSelector,
        extra: &[Filter],
        members: Option<&Members>,
    ) -> Matcher {
        let filters: Vec<&Filter> = selector.filters.iter().chain(extra).collect();
        Matcher {
            name: source.names().get(&selector.event).unwrap_or(NONE),
            filters: CompiledFilters::compile(source, &filters, members.map(|m| m.as_slice())),
        }
    }

    /// The event name id it matches (`NONE`: none).
    pub(crate) fn name(&self) -> u32 {
        self.name
    }

    /// `matches` for a row whose event name (`name`) the caller already has.
    pub(crate) fn matches_event(&self, name: u32, source: &impl EventSource, person: u32, row: usize) -> bool {
        self.name != NONE
            && name == self.name
            && self.filters.person_passes(person)
            && self.filters.row_passes(source, row)
    }

    pub(crate) fn matches(&self, source: &impl EventSource, person: u32, row: usize) -> bool {
        self.name != NONE
            && source.row_name(row) == self.name
            && self.filters.person_passes(person)
            && self.filters.row_passes(source, row)
    }
}

/// Per (group × bucket) cells of "entered" and "succeeded" distinct people, for metrics that
/// are a share of users (CONVERSION, RETENTION).
struct ShareCells {
    entered: Vec<u64>,
    succeeded: Vec<u64>,
    entered_by: Vec<u32>,
    succeeded_by: Vec<u32>,
}

impl ShareCells {
    fn new(cells: usize) -> ShareCells {
        ShareCells {
            entered: vec![0; cells],
            succeeded: vec![0; cells],
            entered_by: vec![NONE; cells],
            succeeded_by: vec![NONE; cells],
        }
    }

    fn grow(&mut self, cells: usize) {
        if self.entered.len() < cells {
            self.entered.resize(cells, 0);
            self.succeeded.resize(cells, 0);
            self.entered_by.resize(cells, NONE);
            self.succeeded_by.resize(cells, NONE);
        }
    }

    fn add(&mut self, cell: usize, person: u32, succeeded: bool) {
        self.grow(cell + 1);
        if self.entered_by[cell] != person {
            self.entered_by[cell] = person;
            self.entered[cell] += 1;
        }
        if succeeded && self.succeeded_by[cell] != person {
            self.succeeded_by[cell] = person;
            self.succeeded[cell] += 1;
        }
    }

    fn share(&self, cell: usize) -> Option<f64> {
        let entered = *self.entered.get(cell)?;
        (entered > 0).then(|| self.succeeded[cell] as f64 / entered as f64)
    }
}

/// One entry of a person into a share metric: when, in which breakdown group, and whether it
/// succeeded.
struct Entry {
    time: Micros,
    group: u32,
    succeeded: bool,
}

/// Runs a share metric: `entries` lists a person's entries (time in the query range). Groups
/// beyond the breakdown limit (ranked by people entered) fold into `$other`.
fn share_metric(
    source: &impl EventSource,
    query: &MetricQuery,
    names: &[u32],
    mut entries: impl FnMut(&mut Groups, u32, PersonEvents<'_>, &mut Vec<Entry>),
) -> Result<Vec<Series>> {
    let bounds = time::bucket_bounds(query.from, query.to, query.granularity, query.tz, MAX_BUCKETS)?;
    let buckets = bounds.len() - 1;
    let mut groups = Groups::new(source, query.breakdown.as_deref());
    let mut scratch = Vec::new();
    let mut run = |groups: &mut Groups, remap: Option<&[u32]>, cells: &mut ShareCells, totals: &mut ShareCells| {
        // Every time: a retention entry is a person's first A ever, its return may come later.
        source.for_each(Scan::named(names), |person, events| {
            scratch.clear();
            entries(groups, person, events, &mut scratch);
            for entry in &scratch {
                if entry.time < query.from || entry.time >= query.to {
                    continue;
                }
                let group = remap.map_or(entry.group, |r| r[entry.group as usize]) as usize;
                let bucket = bounds.partition_point(|&b| b <= entry.time) - 1;
                totals.add(group, person, entry.succeeded);
                if remap.is_some() || query.breakdown.is_none() {
                    cells.add(group * buckets + bucket, person, entry.succeeded);
                }
            }
        });
    };
    let mut cells = ShareCells::new(0);
    let mut totals = ShareCells::new(0);
    let labels = if query.breakdown.is_none() {
        run(&mut groups, None, &mut cells, &mut totals);
        vec![String::new()]
    } else {
        run(&mut groups, None, &mut cells, &mut totals);
        let labels = groups.labels();
        totals.grow(labels.len());
        let entered: Vec<usize> = (0..labels.len()).filter(|&g| totals.entered[g] > 0).collect();
        let (kept, rest) = top_groups(
            entered,
            usize::MAX,
            |&g| labels[g].as_str(),
            |&a, &b| totals.entered[b].cmp(&totals.entered[a]),
        );
        let ranked: Vec<usize> = kept.into_iter().chain(rest).collect();
        let (kept, remap) = fold_tail(&ranked, &labels, breakdown_limit_or_default(query.breakdown_limit));
        cells = ShareCells::new(kept.len() * buckets);
        totals = ShareCells::new(kept.len());
        run(&mut groups, Some(&remap), &mut cells, &mut totals);
        kept
    };
    cells.grow(labels.len() * buckets);
    Ok(labels
        .into_iter()
        .enumerate()
        .map(|(group, label)| Series {
            points: (0..buckets)
                .map(|b| Point { start: bounds[b], end: bounds[b + 1], value: cells.share(group * buckets + b) })
                .collect(),
            total: totals.share(group),
            breakdown_value: label,
        })
        .collect())
}

fn cell_of(source: &impl EventSource, row: usize, key: u32) -> Option<Cell> {
    if key == NONE {
        return None;
    }
    source.row_props(row).value_of(key).filter(|c| !matches!(c, Cell::Null))
}

/// Lists a person's entries into a share metric from their events of the metric's names.
type EntriesOf<'a> = Box<dyn FnMut(&mut Groups, u32, PersonEvents<'_>, &mut Vec<Entry>) + 'a>;

/// A share metric's names (A, B) and its `EntriesOf`.
type ShareEntries<'a> = Result<([u32; 2], EntriesOf<'a>)>;

/// The matchers of a share metric's A (with the query's filters and cohort) and B.
fn share_matchers(source: &impl EventSource, metric: &Metric, query: &MetricQuery) -> Result<(Matcher, Matcher)> {
    let (Some(a), Some(b)) = (&metric.selector, &metric.conversion_selector) else {
        return Err(Error::invalid("metric.conversion_selector", "required"));
    };
    Ok((Matcher::new(source, a, &query.filters, query.members.as_ref()), Matcher::new(source, b, &[], None)))
}

/// A share metric's series:
/// - CONVERSION: of people doing A in a bucket, the share doing B at or after an A of that
///   bucket within the window (A and B sharing every constant property's value);
/// - RETENTION: of people whose first A ever falls in a bucket, the share doing B in period
///   `retention_offset` after it (calendar periods in the query's zone, or rolling periods
///   from the first A; or that period or any later one when unbounded).
pub fn share(source: &impl EventSource, metric: &Metric, query: &MetricQuery) -> Result<Vec<Series>> {
    let (names, entries) = share_entries(source, metric, query)?;
    share_metric(source, query, &names, entries)
}

/// A share metric's names (A, B) and entries.
fn share_entries<'a, S: EventSource>(source: &'a S, metric: &'a Metric, query: &MetricQuery) -> ShareEntries<'a> {
    match metric.kind {
        MetricKind::Conversion => conversion_entries(source, metric, query),
        MetricKind::Retention => retention_entries(source, metric, query),
        kind => Err(Error::Internal(format!("{kind:?} is not a share metric"))),
    }
}

/// A conversion's names (A, B) and entries: one per A row, succeeded when a B follows within
/// the window. Only A and B rows can enter or succeed: people without them add no entry.
fn conversion_entries<'a, S: EventSource>(source: &'a S, metric: &'a Metric, query: &MetricQuery) -> ShareEntries<'a> {
    let (first, then) = share_matchers(source, metric, query)?;
    let window = metric.window.unwrap_or(crate::core::metric::definition::DEFAULT_CONVERSION_WINDOW);
    let constants: Vec<u32> = metric.constant_properties.iter().map(|p| source.keys().get(p).unwrap_or(NONE)).collect();
    let mut successes: Vec<(Micros, usize)> = Vec::new();
    let names = [first.name, then.name];
    let entries = move |groups: &mut Groups, person: u32, events: PersonEvents<'_>, out: &mut Vec<Entry>| {
        let matched = |matcher: &Matcher, i: usize| {
            matcher.matches_event(events.names[i], source, person, events.rows[i] as usize)
        };
        successes.clear();
        // In (time, row) order already: events come so.
        successes.extend(
            (0..events.len()).filter(|&i| matched(&then, i)).map(|i| (events.times[i], events.rows[i] as usize)),
        );
        for i in 0..events.len() {
            if !matched(&first, i) {
                continue;
            }
            let (row, t) = (events.rows[i] as usize, events.times[i]);
            let start = successes.partition_point(|&(tb, _)| tb < t);
            let succeeded = successes[start..].iter().take_while(|&&(tb, _)| tb - t <= window).any(|&(_, rb)| {
                constants
                    .iter()
                    .all(|&k| cell_of(source, row, k).is_some() && cell_of(source, row, k) == cell_of(source, rb, k))
            });
            out.push(Entry { time: t, group: groups.group(source, person, row), succeeded });
        }
    };
    Ok((names, Box::new(entries)))
}

/// A retention metric's names (A, B) and entries: one per person, at their first A. Only A
/// and B rows matter: people without an A add no entry.
fn retention_entries<'a, S: EventSource>(source: &'a S, metric: &'a Metric, query: &MetricQuery) -> ShareEntries<'a> {
    let (first, then) = share_matchers(source, metric, query)?;
    let granularity = match metric.retention_period {
        crate::core::metric::definition::Period::Day => Granularity::Day,
        crate::core::metric::definition::Period::Week => Granularity::Week,
        crate::core::metric::definition::Period::Month => Granularity::Month,
    };
    let period_days: i64 = match metric.retention_period {
        crate::core::metric::definition::Period::Day => 1,
        crate::core::metric::definition::Period::Week => 7,
        crate::core::metric::definition::Period::Month => 30,
    };
    let offset = i64::from(metric.retention_offset);
    let tz = query.tz;
    let names = [first.name, then.name];
    let entries = move |groups: &mut Groups, person: u32, events: PersonEvents<'_>, out: &mut Vec<Entry>| {
        let matched = |matcher: &Matcher, i: usize| {
            matcher.matches_event(events.names[i], source, person, events.rows[i] as usize)
        };
        // Events come in (time, row) order: the first match is the earliest.
        let Some(first_i) = (0..events.len()).find(|&i| matched(&first, i)) else {
            return;
        };
        let (first_row, t0) = (events.rows[first_i] as usize, events.times[first_i]);
        let (start, end) = if metric.retention_rolling {
            let period = period_days * crate::core::model::MICROS_PER_DAY;
            (t0.saturating_add(offset.saturating_mul(period)), t0.saturating_add((offset + 1).saturating_mul(period)))
        } else {
            let start = time::advance(time::floor(t0, granularity, tz), granularity, metric.retention_offset, tz);
            (start, time::next(start, granularity, tz))
        };
        let succeeded = (0..events.len()).any(|i| {
            let t = events.times[i];
            matched(&then, i) && t >= start && (metric.retention_unbounded || t < end)
        });
        out.push(Entry { time: t0, group: groups.group(source, person, first_row), succeeded });
    };
    Ok((names, Box::new(entries)))
}

/// A CONVERSION or RETENTION metric's value over each of `ranges` (GRANULARITY_TOTAL, no
/// breakdown) from one pass over the events: an entry counts in every range holding its time,
/// as it would in that range's own evaluation (whether an entry succeeds does not depend on
/// the range).
pub(crate) fn share_totals(
    source: &impl EventSource,
    metric: &Metric,
    query: &MetricQuery,
    ranges: &[(Micros, Micros)],
) -> Result<Vec<Option<f64>>> {
    let (names, mut entries) = share_entries(source, metric, query)?;
    let mut groups = Groups::new(source, None);
    let mut cells = ShareCells::new(ranges.len());
    let mut scratch = Vec::new();
    source.for_each(Scan::named(&names), |person, events| {
        scratch.clear();
        entries(&mut groups, person, events, &mut scratch);
        for entry in &scratch {
            for (k, &(from, to)) in ranges.iter().enumerate() {
                if from <= entry.time && entry.time < to {
                    cells.add(k, person, entry.succeeded);
                }
            }
        }
    });
    Ok((0..ranges.len()).map(|k| cells.share(k)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::filter::FilterOp;
    use crate::core::model::Value;

    #[test]
    fn pushable_aggregates_are_plain_kinds_without_windows_cohorts_or_huge_filters() {
        let metric = |kind| Metric {
            kind,
            selector: Some(EventSelector { event: "buy".into(), filters: Vec::new() }),
            ..Default::default()
        };
        let query = MetricQuery {
            breakdown: Some("user.plan".into()),
            ..MetricQuery::new(0, 86_400_000_000, Granularity::Day, chrono_tz::UTC)
        };
        for kind in [MetricKind::Count, MetricKind::UniqueUsers, MetricKind::Sum, MetricKind::Avg, MetricKind::Min] {
            assert!(pushable(&metric(kind), &query), "{kind:?}");
        }
        assert!(!pushable(&metric(MetricKind::Percentile), &query));
        assert!(!pushable(&metric(MetricKind::Conversion), &query));
        let rolling = Metric { rolling_window: Some(7 * 86_400_000_000), ..metric(MetricKind::UniqueUsers) };
        assert!(!pushable(&rolling, &query));
        let in_cohort = MetricQuery { cohort_id: "buyers".into(), ..query.clone() };
        assert!(!pushable(&metric(MetricKind::Count), &in_cohort));
        let ids = |n: usize| Filter {
            property: "x".into(),
            op: FilterOp::In,
            values: (0..n).map(|i| Value::Number(i as f64)).collect(),
        };
        let short = MetricQuery { filters: vec![ids(100)], ..query.clone() };
        assert!(pushable(&metric(MetricKind::Count), &short));
        let long = MetricQuery { filters: vec![ids(100_000)], ..query.clone() };
        assert!(!pushable(&metric(MetricKind::Count), &long), "a long IN list is answered from the events");
    }
}
