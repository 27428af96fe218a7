//! Retention tables and cohort tables (SPEC §6, §7): people enter a row at a time t0 (their
//! cohort event), and each column k says what they did in period k after it.
//!
//! Both run one pass over people with their rows in time order. Calendar periods are
//! indexed by binary search in a precomputed list of period starts in the query's zone;
//! rolling periods are `(t − t0) / P`. A period is complete when it has ended for every
//! member of the row.

use hashbrown::HashMap;

use crate::core::analysis::breakdown::{Groups, OTHER, breakdown_limit_or_default, top_groups};
use crate::core::cohort::{self, Cohorts};
use crate::core::filter::{self, CompiledFilters, EventSelector, TRAIT_PREFIX, row_number};
use crate::core::metric::definition::Period;
use crate::core::model::{Micros, now_micros};
use crate::core::store::remote::Fetch;
use crate::core::store::source::EventSource;
use crate::core::store::source::{PersonEvents, Scan};
use crate::core::store::table::NONE;
use crate::core::time;
use crate::error::{Error, Result};

pub const DEFAULT_PERIODS: usize = 8;
pub const MAX_PERIODS: usize = 1000;
/// Most calendar periods one query may span (rows plus columns).
const MAX_SPAN: usize = 20_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetentionMode {
    #[default]
    Calendar,
    Rolling,
}

/// What retention and cohort tables share: who enters when, the columns, the zone, the row
/// breakdown and the cohort.
#[derive(Debug, Clone, Default)]
pub struct TableShape {
    /// People enter with a t0 in `[from, to)`.
    pub from: Micros,
    pub to: Micros,
    pub period: Period,
    /// Columns, period 0 included; 0 means the default.
    pub periods: usize,
    pub mode: RetentionMode,
    /// Empty: the project's zone.
    pub timezone: String,
    /// A trait (`user.x`) or a property of the t0 event.
    pub breakdown: Option<String>,
    pub breakdown_limit: usize,
    pub cohort_id: String,
}

#[derive(Debug, Clone, Default)]
pub struct RetentionQuery {
    pub cohort_event: EventSelector,
    /// None: any event.
    pub return_event: Option<EventSelector>,
    pub first_time: bool,
    pub unbounded: bool,
    pub shape: TableShape,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetentionRow {
    pub start: Micros,
    pub breakdown_value: String,
    pub size: u64,
    pub retained: Vec<u64>,
    pub shares: Vec<f64>,
    pub complete: Vec<bool>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct RetentionTable {
    pub rows: Vec<RetentionRow>,
    pub average_shares: Vec<f64>,
    pub average_users: Vec<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CohortValue {
    #[default]
    RetentionShare,
    RevenuePerUser,
    CumulativeRevenuePerUser,
}

#[derive(Debug, Clone, Default)]
pub struct CohortTableQuery {
    /// None: the first event of any kind.
    pub first_event: Option<EventSelector>,
    pub value: CohortValue,
    /// RETENTION_SHARE; None: any event.
    pub return_event: Option<EventSelector>,
    pub revenue: Option<EventSelector>,
    pub revenue_property: String,
    pub shape: TableShape,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CohortTableRow {
    pub start: Micros,
    pub breakdown_value: String,
    pub users: u64,
    pub values: Vec<f64>,
    pub complete: Vec<bool>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct CohortTable {
    pub rows: Vec<CohortTableRow>,
    pub average_values: Vec<f64>,
    pub average_users: Vec<u64>,
}

impl TableShape {
    fn validate(&self) -> Result<()> {
        if self.from >= self.to {
            return Err(Error::invalid("range", "to must be after from"));
        }
        if self.periods > MAX_PERIODS {
            return Err(Error::invalid("periods", format!("at most {MAX_PERIODS}, got {}", self.periods)));
        }
        time::parse_zone("timezone", &self.timezone)?;
        if let Some(breakdown) = &self.breakdown {
            let name = breakdown.strip_prefix(TRAIT_PREFIX).unwrap_or(breakdown);
            crate::core::catalog::validate_name("breakdown", name)?;
        }
        Ok(())
    }
}

fn validate_optional_selector(field: &str, selector: Option<&EventSelector>) -> Result<()> {
    selector.map_or(Ok(()), |s| filter::validate_selector(field, s))
}

impl RetentionQuery {
    pub fn validate(&self) -> Result<()> {
        filter::validate_selector("cohort_event", &self.cohort_event)?;
        validate_optional_selector("return_event", self.return_event.as_ref())?;
        self.shape.validate()
    }
}

impl CohortTableQuery {
    pub fn validate(&self) -> Result<()> {
        validate_optional_selector("first_event", self.first_event.as_ref())?;
        validate_optional_selector("return_event", self.return_event.as_ref())?;
        self.shape.validate()?;
        if self.value != CohortValue::RetentionShare {
            let revenue =
                self.revenue.as_ref().ok_or_else(|| Error::invalid("revenue", "required for revenue values"))?;
            filter::validate_selector("revenue", revenue)?;
            crate::core::catalog::validate_name("revenue_property", &self.revenue_property)?;
        }
        Ok(())
    }
}

/// Rows matching a selector; `None` matches every row.
struct RowMatcher {
    /// NONE with `any` false: no row can match.
    name: u32,
    any: bool,
    filters: Option<CompiledFilters>,
}

impl RowMatcher {
    fn new(source: &impl EventSource, selector: Option<&EventSelector>, members: Option<&[bool]>) -> RowMatcher {
        match selector {
            None => RowMatcher {
                name: NONE,
                any: true,
                filters: members.map(|m| CompiledFilters::compile(source, &[], Some(m))),
            },
            Some(s) => {
                let filters: Vec<&filter::Filter> = s.filters.iter().collect();
                RowMatcher {
                    name: source.names().get(&s.event).unwrap_or(NONE),
                    any: false,
                    filters: Some(CompiledFilters::compile(source, &filters, members)),
                }
            }
        }
    }

    fn can_match(&self) -> bool {
        self.any || self.name != NONE
    }

    /// The event names it can match: None for every row.
    fn names(&self) -> Option<u32> {
        (!self.any).then_some(self.name)
    }

    fn person_passes(&self, person: u32) -> bool {
        self.filters.as_ref().is_none_or(|f| f.person_passes(person))
    }

    /// Whether row `row`, of event name `name`, matches.
    fn matches(&self, name: u32, source: &impl EventSource, person: u32, row: usize) -> bool {
        (self.any || name == self.name)
            && self.filters.as_ref().is_none_or(|f| f.person_passes(person) && f.row_passes(source, row))
    }
}

/// How columns are measured for an entry.
enum Measure {
    /// Whether the person did a return event in period k (or, unbounded, in k or later).
    Returned { matcher: RowMatcher, unbounded: bool },
    /// The sum of a numeric property over matching events in period k.
    Sum { matcher: RowMatcher, property: u32 },
}

/// The shape shared by retention and cohort tables.
struct Grid {
    period: Period,
    periods: usize,
    mode: RetentionMode,
    from: Micros,
    to: Micros,
    tz: chrono_tz::Tz,
    breakdown: Option<String>,
    breakdown_limit: usize,
}

/// One (row start, breakdown group) cell of the table being built.
#[derive(Clone)]
struct RowAccumulator {
    size: u64,
    last_t0: Micros,
    sums: Vec<f64>,
}

/// A finished row: start, label, size, per-period sums and completeness.
struct GridRow {
    start: Micros,
    label: String,
    size: u64,
    sums: Vec<f64>,
    complete: Vec<bool>,
}

const DAY: Micros = 86_400_000_000;

impl Period {
    pub fn granularity(self) -> time::Granularity {
        match self {
            Period::Day => time::Granularity::Day,
            Period::Week => time::Granularity::Week,
            Period::Month => time::Granularity::Month,
        }
    }

    /// The length of a rolling period: 1, 7 or 30 days.
    pub fn rolling_length(self) -> Micros {
        match self {
            Period::Day => DAY,
            Period::Week => 7 * DAY,
            Period::Month => 30 * DAY,
        }
    }
}

impl Grid {
    /// The grid of a validated shape, and the members of its cohort (evaluated now).
    fn new(
        source: &impl EventSource,
        cohorts: &Cohorts,
        shape: &TableShape,
    ) -> Result<(Grid, Option<cohort::Members>)> {
        let grid = Grid {
            period: shape.period,
            periods: if shape.periods == 0 { DEFAULT_PERIODS } else { shape.periods },
            mode: shape.mode,
            from: shape.from,
            to: shape.to,
            tz: time::parse_zone("timezone", &shape.timezone)?,
            breakdown: shape.breakdown.clone(),
            breakdown_limit: breakdown_limit_or_default(shape.breakdown_limit),
        };
        Ok((grid, cohort::resolve(source, cohorts, "cohort_id", &shape.cohort_id)?))
    }

    /// Runs the grid: `entries` lists a person's (t0, row) entries given their sorted rows,
    /// which hold only `entry`'s and the measure's events when both are named (an entry needs
    /// an `entry` event, a column the measure's).
    fn run(
        &self,
        source: &impl EventSource,
        members: Option<&[bool]>,
        measure: &Measure,
        entry: &RowMatcher,
        mut entries: impl FnMut(u32, PersonEvents<'_>, &mut Vec<(Micros, u32)>),
    ) -> Result<Vec<GridRow>> {
        let granularity = self.period.granularity();
        // Calendar period starts from the one holding `from` to `periods` past the one holding
        // the last possible t0, plus one end.
        let mut bounds = vec![time::floor(self.from, granularity, self.tz)];
        let mut rows_span = 0usize;
        loop {
            let last = *bounds.last().unwrap_or(&self.from);
            if last < self.to {
                rows_span = bounds.len();
            } else if bounds.len() > rows_span + self.periods {
                break;
            }
            if bounds.len() > MAX_SPAN {
                return Err(Error::invalid(
                    "range",
                    format!("spans more than {MAX_SPAN} periods; use a longer period"),
                ));
            }
            bounds.push(time::next(last, granularity, self.tz).max(last + 1));
        }
        let index_of = |t: Micros| bounds.partition_point(|&b| b <= t).saturating_sub(1);
        let rolling = self.rolling_length();

        let mut groups = Groups::new(source, self.breakdown.as_deref());
        let mut cells: HashMap<(u32, u32), RowAccumulator> = HashMap::new();
        let mut person_entries = Vec::new();
        let mut hits = vec![0.0f64; self.periods];
        let (matcher, property) = match measure {
            Measure::Returned { matcher, .. } => (matcher, NONE),
            Measure::Sum { matcher, property } => (matcher, *property),
        };
        let unbounded = matches!(measure, Measure::Returned { unbounded: true, .. });
        let names: Option<Vec<u32>> = [entry.names(), matcher.names()].into_iter().collect();
        // Every time: a first-time cohort needs the events before the range, returns run past it.
        let scan = names.as_deref().map_or(Scan::all(), Scan::named);
        source.for_each(scan, |person, events| {
            if members.is_some_and(|m| !m[person as usize]) {
                return;
            }
            person_entries.clear();
            entries(person, events, &mut person_entries);
            for &(t0, row0) in &person_entries {
                let start = index_of(t0);
                hits.iter_mut().for_each(|h| *h = 0.0);
                let mut furthest: Option<usize> = None;
                let first = events.times.partition_point(|&t| t < t0);
                if matcher.can_match() && matcher.person_passes(person) {
                    for i in first..events.len() {
                        let r = events.rows[i] as usize;
                        if !matcher.matches(events.names[i], source, person, r) {
                            continue;
                        }
                        let t = events.times[i];
                        let k = match self.mode {
                            RetentionMode::Calendar if t >= *bounds.last().unwrap_or(&t) => usize::MAX,
                            RetentionMode::Calendar => index_of(t) - start,
                            RetentionMode::Rolling => ((t - t0) / rolling) as usize,
                        };
                        if property != NONE {
                            if k < self.periods
                                && let Some(v) = row_number(source.row_props(r), property)
                            {
                                hits[k] += v;
                            }
                        } else if unbounded {
                            furthest = Some(furthest.map_or(k, |f| f.max(k)));
                        } else if k < self.periods {
                            hits[k] = 1.0;
                        }
                    }
                }
                if let Some(furthest) = furthest {
                    hits.iter_mut().take(furthest.saturating_add(1)).for_each(|h| *h = 1.0);
                }
                let group = groups.group(source, person, row0 as usize);
                let cell = cells.entry((start as u32, group)).or_insert_with(|| RowAccumulator {
                    size: 0,
                    last_t0: t0,
                    sums: vec![0.0; self.periods],
                });
                cell.size += 1;
                cell.last_t0 = cell.last_t0.max(t0);
                for (sum, hit) in cell.sums.iter_mut().zip(&hits) {
                    *sum += hit;
                }
            }
        });

        // Fold breakdown values past the limit (ranked by people) into `$other`.
        let labels = groups.labels();
        let mut remap: Vec<Option<usize>> = vec![None; labels.len()];
        if self.breakdown.is_some() {
            let mut size_by_group = vec![0u64; labels.len()];
            for ((_, group), cell) in &cells {
                size_by_group[*group as usize] += cell.size;
            }
            let entered: Vec<usize> = (0..labels.len()).filter(|&g| size_by_group[g] > 0).collect();
            let (kept, _) = top_groups(
                entered,
                self.breakdown_limit,
                |&g| labels[g].as_str(),
                |&a, &b| size_by_group[b].cmp(&size_by_group[a]),
            );
            for group in kept {
                remap[group] = Some(group);
            }
        }
        let mut merged: std::collections::BTreeMap<(u32, String), RowAccumulator> = Default::default();
        for ((start, group), cell) in cells {
            let label = match (&self.breakdown, remap[group as usize]) {
                (None, _) => String::new(),
                (Some(_), Some(g)) => labels[g].clone(),
                (Some(_), None) => OTHER.to_owned(),
            };
            match merged.get_mut(&(start, label.clone())) {
                Some(into) => {
                    into.size += cell.size;
                    into.last_t0 = into.last_t0.max(cell.last_t0);
                    for (a, b) in into.sums.iter_mut().zip(&cell.sums) {
                        *a += b;
                    }
                }
                None => {
                    merged.insert((start, label), cell);
                }
            }
        }
        let now = now_micros();
        Ok(merged
            .into_iter()
            .map(|((start, label), cell)| {
                let start = start as usize;
                let complete = (0..self.periods)
                    .map(|k| match self.mode {
                        RetentionMode::Calendar => bounds.get(start + k + 1).is_some_and(|&end| end <= now),
                        RetentionMode::Rolling => cell.last_t0.saturating_add((k as i64 + 1) * rolling) <= now,
                    })
                    .collect();
                GridRow { start: bounds[start], label, size: cell.size, sums: cell.sums, complete }
            })
            .collect())
    }

    fn rolling_length(&self) -> Micros {
        self.period.rolling_length()
    }
}

/// Per period: Σ sums / Σ size over the rows that completed the period, and that Σ size.
fn averages(rows: &[GridRow], periods: usize) -> (Vec<f64>, Vec<u64>) {
    (0..periods)
        .map(|k| {
            let (sum, users) = rows
                .iter()
                .filter(|r| r.complete[k])
                .fold((0.0, 0u64), |(sum, users), r| (sum + r.sums[k], users + r.size));
            (if users == 0 { 0.0 } else { sum / users as f64 }, users)
        })
        .unzip()
}

/// A person's first matching event, when it falls in [from, to).
fn first_in_range(
    events: PersonEvents<'_>,
    from: Micros,
    to: Micros,
    mut matches: impl FnMut(usize) -> bool,
) -> Option<(Micros, u32)> {
    let i = (0..events.len()).find(|&i| matches(i))?;
    let t = events.times[i];
    (t >= from && t < to).then_some((t, events.rows[i]))
}

/// What `retention` reads of the events, for a store that fetches them first (a remote
/// engine): the cohort and return events at any time (a first-time cohort looks before the
/// range, returns run past it), with traits only when a filter or the breakdown is on one; or
/// everything for a cohort filter (unless the remote engine counted its members:
/// `cohort_counted`) or any event as return.
pub fn fetch(query: &RetentionQuery, cohort_counted: bool) -> Fetch {
    let Some(return_event) = &query.return_event else {
        return Fetch::everything();
    };
    let names = vec![query.cohort_event.event.clone(), return_event.event.clone()];
    if (!query.shape.cohort_id.is_empty() && !cohort_counted) || names.iter().any(String::is_empty) {
        return Fetch::everything();
    }
    let filters = query.cohort_event.filters.iter().chain(&return_event.filters);
    let traits = crate::core::filter::on_traits(filters, query.shape.breakdown.as_deref());
    Fetch { names: Some(names), traits, ..Fetch::everything() }
}

pub fn retention(source: &impl EventSource, cohorts: &Cohorts, query: &RetentionQuery) -> Result<RetentionTable> {
    let (grid, members) = Grid::new(source, cohorts, &query.shape)?;
    let members = members.as_ref().map(|m| m.as_slice());
    let (from, to, tz, periods) = (grid.from, grid.to, grid.tz, grid.periods);
    let cohort_event = RowMatcher::new(source, Some(&query.cohort_event), None);
    let measure = Measure::Returned {
        matcher: RowMatcher::new(source, query.return_event.as_ref(), None),
        unbounded: query.unbounded,
    };
    let granularity = grid.period.granularity();
    let rows = grid.run(source, members, &measure, &cohort_event, |person, events, out| {
        if !cohort_event.can_match() || !cohort_event.person_passes(person) {
            return;
        }
        let matches = |i: usize| cohort_event.matches(events.names[i], source, person, events.rows[i] as usize);
        if query.first_time {
            out.extend(first_in_range(events, from, to, matches));
            return;
        }
        // Recurring: the first cohort event in range of each calendar period.
        let mut current_period = None;
        for i in 0..events.len() {
            let t = events.times[i];
            if t < from || t >= to || !matches(i) {
                continue;
            }
            let period = time::floor(t, granularity, tz);
            if current_period != Some(period) {
                current_period = Some(period);
                out.push((t, events.rows[i]));
            }
        }
    })?;
    let (average_shares, average_users) = averages(&rows, periods);
    Ok(RetentionTable {
        rows: rows
            .into_iter()
            .map(|r| RetentionRow {
                start: r.start,
                breakdown_value: r.label,
                size: r.size,
                retained: r.sums.iter().map(|&s| s as u64).collect(),
                shares: r.sums.iter().map(|&s| s / r.size as f64).collect(),
                complete: r.complete,
            })
            .collect(),
        average_shares,
        average_users,
    })
}

pub fn cohort_table(source: &impl EventSource, cohorts: &Cohorts, query: &CohortTableQuery) -> Result<CohortTable> {
    let (grid, members) = Grid::new(source, cohorts, &query.shape)?;
    let members = members.as_ref().map(|m| m.as_slice());
    let (from, to, periods) = (grid.from, grid.to, grid.periods);
    let first_event = RowMatcher::new(source, query.first_event.as_ref(), None);
    let measure = match query.value {
        CohortValue::RetentionShare => {
            Measure::Returned { matcher: RowMatcher::new(source, query.return_event.as_ref(), None), unbounded: false }
        }
        CohortValue::RevenuePerUser | CohortValue::CumulativeRevenuePerUser => Measure::Sum {
            matcher: RowMatcher::new(source, query.revenue.as_ref(), None),
            property: source.keys().get(&query.revenue_property).unwrap_or(NONE),
        },
    };
    let rows = grid.run(source, members, &measure, &first_event, |person, events, out| {
        if !first_event.can_match() || !first_event.person_passes(person) {
            return;
        }
        let matches = |i: usize| first_event.matches(events.names[i], source, person, events.rows[i] as usize);
        out.extend(first_in_range(events, from, to, matches));
    })?;
    let cumulative = query.value == CohortValue::CumulativeRevenuePerUser;
    let mut rows: Vec<GridRow> = rows;
    if cumulative {
        for row in &mut rows {
            for k in 1..row.sums.len() {
                row.sums[k] += row.sums[k - 1];
            }
        }
    }
    let (average_values, average_users) = averages(&rows, periods);
    Ok(CohortTable {
        rows: rows
            .into_iter()
            .map(|r| CohortTableRow {
                start: r.start,
                breakdown_value: r.label,
                users: r.size,
                values: r.sums.iter().map(|&s| s / r.size as f64).collect(),
                complete: r.complete,
            })
            .collect(),
        average_values,
        average_users,
    })
}
