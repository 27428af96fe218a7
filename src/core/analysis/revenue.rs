//! The SaaS revenue bridge (SPEC §16): each person's MRR is the value of their latest
//! subscription event; per bucket, MRR at start and end and the movements between them.
//!
//! Also the per-bucket "sum of each person's latest value" behind LATEST_SUM metrics (MRR as
//! a metric) and the bridge's columns as REVENUE_BRIDGE metrics.

use chrono_tz::Tz;

use crate::core::cohort::Members;
use crate::core::filter::{EventSelector, Filter, row_number, validate_selector};
use crate::core::metric::definition::{Metric, MetricKind};
use crate::core::metric::scan::{self as query, Matcher, MetricQuery, Point, Series};
use crate::core::model::Micros;
use crate::core::store::source::EventSource;
use crate::core::store::source::Scan;
use crate::core::store::table::NONE;
use crate::core::time::{self, Granularity};
use crate::error::{Error, Result};

/// Amounts are summed in millionths, as integers, so the bridge identity holds exactly.
const UNITS: f64 = 1e6;

fn units(x: f64) -> i128 {
    (x * UNITS).round() as i128
}

fn amount(units: i128) -> f64 {
    units as f64 / UNITS
}

#[derive(Debug, Clone, Default)]
pub struct BridgeQuery {
    pub subscription: EventSelector,
    pub mrr_property: String,
    pub from: Micros,
    pub to: Micros,
    pub granularity: Granularity,
    /// Empty: the project's zone.
    pub timezone: String,
}

impl BridgeQuery {
    pub fn validate(&self) -> Result<()> {
        validate_selector("subscription", &self.subscription)?;
        if self.mrr_property.is_empty() {
            return Err(Error::invalid("mrr_property", "required"));
        }
        if self.granularity == Granularity::Hour {
            return Err(Error::invalid("granularity", "HOUR is not supported; use DAY, WEEK, MONTH, QUARTER or TOTAL"));
        }
        if self.to <= self.from {
            return Err(Error::invalid("range", "to must be after from"));
        }
        Ok(())
    }
}

/// One bucket [start, end) of the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RevenuePeriod {
    pub start: Micros,
    pub end: Micros,
    pub starting_mrr: f64,
    pub new_mrr: f64,
    pub reactivation_mrr: f64,
    pub expansion_mrr: f64,
    pub contraction_mrr: f64,
    pub churned_mrr: f64,
    pub ending_mrr: f64,
    pub starting_customers: u64,
    pub new_customers: u64,
    pub churned_customers: u64,
    pub ending_customers: u64,
}

/// A column of the bridge, as a REVENUE_BRIDGE metric reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum BridgeComponent {
    #[default]
    StartingMrr,
    NewMrr,
    ReactivationMrr,
    ExpansionMrr,
    ContractionMrr,
    ChurnedMrr,
    EndingMrr,
    StartingCustomers,
    NewCustomers,
    ChurnedCustomers,
    EndingCustomers,
    NetRevenueRetention,
    GrossRevenueRetention,
    CustomerChurnRate,
}

impl RevenuePeriod {
    /// (starting + expansion − contraction − churned) / starting; none when starting is 0.
    pub fn net_revenue_retention(&self) -> Option<f64> {
        (self.starting_mrr > 0.0).then(|| {
            (self.starting_mrr + self.expansion_mrr - self.contraction_mrr - self.churned_mrr) / self.starting_mrr
        })
    }

    /// (starting − contraction − churned) / starting; none when starting is 0.
    pub fn gross_revenue_retention(&self) -> Option<f64> {
        (self.starting_mrr > 0.0)
            .then(|| (self.starting_mrr - self.contraction_mrr - self.churned_mrr) / self.starting_mrr)
    }

    /// churned customers / starting customers; none without starting customers.
    pub fn customer_churn_rate(&self) -> Option<f64> {
        (self.starting_customers > 0).then(|| self.churned_customers as f64 / self.starting_customers as f64)
    }

    pub fn component(&self, component: BridgeComponent) -> Option<f64> {
        use BridgeComponent as C;
        Some(match component {
            C::StartingMrr => self.starting_mrr,
            C::NewMrr => self.new_mrr,
            C::ReactivationMrr => self.reactivation_mrr,
            C::ExpansionMrr => self.expansion_mrr,
            C::ContractionMrr => self.contraction_mrr,
            C::ChurnedMrr => self.churned_mrr,
            C::EndingMrr => self.ending_mrr,
            C::StartingCustomers => self.starting_customers as f64,
            C::NewCustomers => self.new_customers as f64,
            C::ChurnedCustomers => self.churned_customers as f64,
            C::EndingCustomers => self.ending_customers as f64,
            C::NetRevenueRetention => return self.net_revenue_retention(),
            C::GrossRevenueRetention => return self.gross_revenue_retention(),
            C::CustomerChurnRate => return self.customer_churn_rate(),
        })
    }
}

/// Per bucket sums, in millionths: starting, new, reactivation, expansion, contraction,
/// churned, ending; and customers: starting, new, churned, ending.
#[derive(Debug, Clone)]
struct BridgeCells {
    mrr: Vec<[i128; 7]>,
    customers: Vec<[u64; 4]>,
}

impl BridgeCells {
    fn new(buckets: usize) -> BridgeCells {
        BridgeCells { mrr: vec![[0; 7]; buckets], customers: vec![[0; 4]; buckets] }
    }

    /// Adds one person whose MRR goes from `a` to `b` over bucket `k`; `paid_before` says
    /// whether they had MRR > 0 at some time before the bucket's start.
    fn add(&mut self, k: usize, a: i128, b: i128, paid_before: bool) {
        let (mrr, customers) = (&mut self.mrr[k], &mut self.customers[k]);
        mrr[0] += a;
        mrr[6] += b;
        customers[0] += u64::from(a > 0);
        customers[3] += u64::from(b > 0);
        match (a > 0, b > 0) {
            (false, true) if paid_before => {
                mrr[2] += b;
                customers[1] += 1;
            }
            (false, true) => {
                mrr[1] += b;
                customers[1] += 1;
            }
            (true, true) if b > a => mrr[3] += b - a,
            (true, true) => mrr[4] += a - b,
            (true, false) => {
                mrr[5] += a;
                customers[2] += 1;
            }
            (false, false) => {}
        }
    }

    fn merge(&mut self, other: &BridgeCells) {
        for (into, from) in self.mrr.iter_mut().zip(&other.mrr) {
            for (a, b) in into.iter_mut().zip(from) {
                *a += b;
            }
        }
        for (into, from) in self.customers.iter_mut().zip(&other.customers) {
            for (a, b) in into.iter_mut().zip(from) {
                *a += b;
            }
        }
    }
}

/// A person's value change: (time, event id, value in millionths).
type Change<'a> = (Micros, std::borrow::Cow<'a, str>, i128);

/// Visits every person with at least one matching event before `until`, with their changes
/// ordered by (time, event id), folding into one state per part of people (merged by the
/// caller).
fn fold_changes<S: Send>(
    source: &impl EventSource,
    matcher: &Matcher,
    property: &str,
    until: Micros,
    init: impl Fn() -> S + Sync,
    visit: impl Fn(&mut S, &[Change<'_>]) + Sync,
) -> Vec<S> {
    let key = source.keys().get(property).unwrap_or(NONE);
    if key == NONE {
        return vec![init()];
    }
    source
        .fold_parts(
            Scan::named(&[matcher.name()]).within(Micros::MIN, until),
            || (init(), Vec::new()),
            |(acc, changes): &mut (S, Vec<Change<'_>>), person, events| {
                changes.clear();
                for i in 0..events.len() {
                    if events.times[i] >= until {
                        break;
                    }
                    let row = events.rows[i] as usize;
                    if !matcher.matches(source, person, row) {
                        continue;
                    }
                    let Some(value) = row_number(source.row_props(row), key) else { continue };
                    changes.push((events.times[i], source.row_event_id(row), units(value)));
                }
                if changes.is_empty() {
                    return;
                }
                // Events arrive ordered by (time, arrival); ties go by event id.
                changes.sort_by(|x, y| x.0.cmp(&y.0).then(x.1.cmp(&y.1)));
                visit(acc, changes);
            },
        )
        .into_iter()
        .map(|(acc, _)| acc)
        .collect()
}

/// The value in force at each bound (the latest change strictly before it, 0 before any) and
/// whether a positive value was in force at some time before it, for changes sorted by time.
fn values_at<'c>(
    changes: &'c [Change<'c>],
    bounds: &'c [Micros],
    clamp: bool,
) -> impl Iterator<Item = (i128, bool)> + 'c {
    let mut next = 0;
    let (mut value, mut paid) = (0i128, false);
    bounds.iter().map(move |&bound| {
        while next < changes.len() && changes[next].0 < bound {
            value = if clamp { changes[next].2.max(0) } else { changes[next].2 };
            paid |= value > 0;
            next += 1;
        }
        (value, paid)
    })
}

/// The bridge over the buckets `bounds[k]..bounds[k + 1]`.
pub fn bridge(
    source: &impl EventSource,
    selector: &EventSelector,
    property: &str,
    filters: &[Filter],
    members: Option<&Members>,
    bounds: &[Micros],
) -> Vec<RevenuePeriod> {
    let buckets = bounds.len().saturating_sub(1);
    let matcher = Matcher::new(source, selector, filters, members);
    let until = bounds.last().copied().unwrap_or(Micros::MIN);
    let parts = fold_changes(
        source,
        &matcher,
        property,
        until,
        || BridgeCells::new(buckets),
        |cells, changes| {
            // "Paid before the bucket's start" must be strictly before it: take it from the
            // start bound, where only earlier changes count.
            let mut previous: Option<(i128, bool)> = None;
            for (k, (value, paid)) in values_at(changes, bounds, true).enumerate() {
                if let Some((a, paid_before)) = previous {
                    cells.add(k - 1, a, value, paid_before);
                }
                previous = Some((value, paid));
            }
        },
    );
    let mut total = BridgeCells::new(buckets);
    for part in &parts {
        total.merge(part);
    }
    (0..buckets)
        .map(|k| {
            let (m, c) = (total.mrr[k], total.customers[k]);
            RevenuePeriod {
                start: bounds[k],
                end: bounds[k + 1],
                starting_mrr: amount(m[0]),
                new_mrr: amount(m[1]),
                reactivation_mrr: amount(m[2]),
                expansion_mrr: amount(m[3]),
                contraction_mrr: amount(m[4]),
                churned_mrr: amount(m[5]),
                ending_mrr: amount(m[6]),
                starting_customers: c[0],
                new_customers: c[1],
                churned_customers: c[2],
                ending_customers: c[3],
            }
        })
        .collect()
}

/// Per bound, the sum over people of their latest value strictly before it (not clamped).
fn latest_sums(source: &impl EventSource, metric: &Metric, query: &MetricQuery, bounds: &[Micros]) -> Vec<f64> {
    let Some(selector) = metric.selector.as_ref() else { return vec![0.0; bounds.len()] };
    let matcher = Matcher::new(source, selector, &query.filters, query.members.as_ref());
    let until = bounds.last().copied().unwrap_or(Micros::MIN);
    let parts = fold_changes(
        source,
        &matcher,
        &metric.property,
        until,
        || vec![0i128; bounds.len()],
        |sums, changes| {
            for (sum, (value, _)) in sums.iter_mut().zip(values_at(changes, bounds, false)) {
                *sum += value;
            }
        },
    );
    (0..bounds.len()).map(|k| amount(parts.iter().map(|p| p[k]).sum())).collect()
}

fn no_breakdown(query: &MetricQuery, kind: MetricKind) -> Result<()> {
    if query.breakdown.is_some() {
        return Err(Error::invalid("breakdown", format!("not supported for {kind:?} metrics")));
    }
    Ok(())
}

/// A LATEST_SUM metric: per bucket, the sum at the bucket's end; the total is the sum at the
/// range's end.
pub fn latest_sum_series(source: &impl EventSource, metric: &Metric, query: &MetricQuery) -> Result<Vec<Series>> {
    no_breakdown(query, metric.kind)?;
    let bounds = time::bucket_bounds(query.from, query.to, query.granularity, query.tz, query::MAX_BUCKETS)?;
    // The sums at every bucket end (a bucket cut by `to` ends there), and at `to` for the total.
    let mut ends: Vec<Micros> = bounds[1..].iter().map(|&e| e.min(query.to)).collect();
    ends.push(query.to);
    let sums = latest_sums(source, metric, query, &ends);
    let points =
        bounds.windows(2).zip(&sums).map(|(b, &sum)| Point { start: b[0], end: b[1], value: Some(sum) }).collect();
    Ok(vec![Series { breakdown_value: String::new(), points, total: sums.last().copied() }])
}

/// A REVENUE_BRIDGE metric: one column of the bridge per bucket; the total is the column of
/// the single period [from, to).
pub fn bridge_series(source: &impl EventSource, metric: &Metric, query: &MetricQuery) -> Result<Vec<Series>> {
    no_breakdown(query, metric.kind)?;
    let selector = metric.selector.as_ref().ok_or_else(|| Error::invalid("metric.selector", "required"))?;
    let bounds = time::bucket_bounds(query.from, query.to, query.granularity, query.tz, query::MAX_BUCKETS)?;
    let members = query.members.as_ref();
    // Buckets cut by the range are bridged over their part inside it.
    let mut clipped = bounds.clone();
    if let Some(first) = clipped.first_mut() {
        *first = (*first).max(query.from);
    }
    if let Some(last) = clipped.last_mut() {
        *last = (*last).min(query.to);
    }
    let periods = bridge(source, selector, &metric.property, &query.filters, members, &clipped);
    let whole = bridge(source, selector, &metric.property, &query.filters, members, &[query.from, query.to]);
    let component = metric.revenue_component;
    let points = periods
        .iter()
        .zip(bounds.windows(2))
        .map(|(p, b)| Point { start: b[0], end: b[1], value: p.component(component) })
        .collect();
    Ok(vec![Series {
        breakdown_value: String::new(),
        points,
        total: whole.first().and_then(|p| p.component(component)),
    }])
}

/// The bridge answer: the periods and the zone they follow.
#[derive(Debug, Clone, PartialEq)]
pub struct Bridge {
    pub periods: Vec<RevenuePeriod>,
    pub timezone: Tz,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::{Event, Value};
    use crate::core::store::ProjectData;

    const DAY: Micros = 86_400_000_000;

    /// Events (user, event id, day offset in hours, mrr); days start at 0.
    fn state(changes: &[(&str, &str, i64, f64)]) -> ProjectData {
        let mut state = ProjectData::default();
        for &(user, id, hours, mrr) in changes {
            state.table.push(&Event {
                event_id: id.into(),
                name: "sub".into(),
                user_id: user.into(),
                anonymous_id: String::new(),
                timestamp: hours * DAY / 24,
                properties: vec![("mrr".into(), Value::Number(mrr))],
            });
        }
        state
    }

    fn run(state: &ProjectData, days: i64) -> Vec<RevenuePeriod> {
        let bounds: Vec<Micros> = (0..=days).map(|d| d * DAY).collect();
        bridge(&state.source(), &EventSelector { event: "sub".into(), filters: vec![] }, "mrr", &[], None, &bounds)
    }

    fn check_identity(periods: &[RevenuePeriod]) {
        for (k, p) in periods.iter().enumerate() {
            let moved =
                p.starting_mrr + p.new_mrr + p.reactivation_mrr + p.expansion_mrr - p.contraction_mrr - p.churned_mrr;
            assert_eq!(p.ending_mrr, moved, "period {k}: {p:?}");
            assert_eq!(p.ending_customers + p.churned_customers, p.starting_customers + p.new_customers);
            if let Some(next) = periods.get(k + 1) {
                assert_eq!(p.ending_mrr, next.starting_mrr);
                assert_eq!(p.ending_customers, next.starting_customers);
            }
        }
    }

    #[test]
    fn upgrade_and_downgrade_in_one_bucket_net_out() {
        // Day 0: a starts at 100. Day 1: a goes to 150 then 120 (one expansion of 20).
        let state = state(&[("a", "e1", 2, 100.0), ("a", "e2", 26, 150.0), ("a", "e3", 30, 120.0)]);
        let periods = run(&state, 2);
        check_identity(&periods);
        assert_eq!((periods[0].new_mrr, periods[0].ending_mrr, periods[0].new_customers), (100.0, 100.0, 1));
        assert_eq!(periods[0].net_revenue_retention(), None);
        let p = periods[1];
        assert_eq!((p.starting_mrr, p.expansion_mrr, p.contraction_mrr, p.ending_mrr), (100.0, 20.0, 0.0, 120.0));
        assert_eq!(p.net_revenue_retention(), Some(1.2));
        assert_eq!(p.gross_revenue_retention(), Some(1.0));
    }

    #[test]
    fn cancel_then_reactivate_is_churn_then_reactivation() {
        // b: 50 on day 0, cancelled on day 1, back at 80 on day 2. c: new on day 2.
        let state = state(&[("b", "e1", 1, 50.0), ("b", "e2", 25, 0.0), ("b", "e3", 49, 80.0), ("c", "e4", 50, 10.0)]);
        let periods = run(&state, 3);
        check_identity(&periods);
        assert_eq!((periods[1].churned_mrr, periods[1].churned_customers, periods[1].ending_mrr), (50.0, 1, 0.0));
        assert_eq!(periods[1].customer_churn_rate(), Some(1.0));
        assert_eq!(periods[1].gross_revenue_retention(), Some(0.0));
        let p = periods[2];
        assert_eq!((p.reactivation_mrr, p.new_mrr, p.new_customers, p.ending_customers), (80.0, 10.0, 2, 2));
        assert_eq!(p.net_revenue_retention(), None, "starting MRR 0");
        // Cancel and come back inside one bucket: no movement at all.
        let state = state_with_round_trip();
        let periods = run(&state, 2);
        check_identity(&periods);
        assert_eq!(
            periods[1],
            RevenuePeriod {
                start: DAY,
                end: 2 * DAY,
                starting_mrr: 30.0,
                ending_mrr: 30.0,
                starting_customers: 1,
                ending_customers: 1,
                ..Default::default()
            }
        );
    }

    fn state_with_round_trip() -> ProjectData {
        state(&[("d", "e1", 1, 30.0), ("d", "e2", 26, 0.0), ("d", "e3", 28, 30.0)])
    }

    #[test]
    fn an_event_at_a_bucket_start_moves_that_bucket_and_ties_go_by_event_id() {
        // At exactly day 1 two events of one person: "e2" (200) sorts before "e9" (40) by id,
        // so 40 is in force afterwards whatever the arrival order.
        let state = state(&[("a", "e1", 0, 100.0), ("a", "e9", 24, 40.0), ("a", "e2", 24, 200.0)]);
        let periods = run(&state, 2);
        check_identity(&periods);
        assert_eq!(periods[0].ending_mrr, 100.0, "the event at day 1 is not in force at day 1");
        assert_eq!(periods[1].contraction_mrr, 60.0);
        assert_eq!(periods[1].ending_mrr, 40.0);
    }

    #[test]
    fn empty_buckets_carry_mrr_and_negative_values_count_as_cancelled() {
        let state = state(&[("a", "e1", 0, 10.5), ("b", "e2", 1, -5.0), ("c", "e3", 3, 0.1)]);
        let periods = run(&state, 4);
        check_identity(&periods);
        assert_eq!(periods[0].ending_mrr, 10.6);
        assert_eq!(periods[0].ending_customers, 2, "b's negative value is no customer");
        for p in &periods[1..] {
            assert_eq!((p.starting_mrr, p.ending_mrr, p.new_mrr, p.churned_mrr), (10.6, 10.6, 0.0, 0.0));
            assert_eq!(p.net_revenue_retention(), Some(1.0));
        }
        let nothing = run(&ProjectData::default(), 2);
        assert!(nothing.iter().all(|p| *p == RevenuePeriod { start: p.start, end: p.end, ..Default::default() }));
    }

    #[test]
    fn hour_granularity_and_a_missing_property_are_refused() {
        let query = BridgeQuery {
            subscription: EventSelector { event: "sub".into(), filters: vec![] },
            mrr_property: "mrr".into(),
            from: 0,
            to: DAY,
            granularity: Granularity::Hour,
            timezone: String::new(),
        };
        let field = |q: BridgeQuery| match q.validate() {
            Err(Error::InvalidArgument { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(query.clone()), "granularity");
        assert_eq!(
            field(BridgeQuery { mrr_property: String::new(), granularity: Granularity::Day, ..query.clone() }),
            "mrr_property"
        );
        assert!(BridgeQuery { granularity: Granularity::Total, ..query }.validate().is_ok());
    }
}
