//! The dashboard's view model (SPEC §17): which range, funnel and retention table a project's
//! page shows, and each tile's data from the same engine calls the gRPC API makes.
//!
//! Every tile is computed on its own and fails on its own: a tile holds `Result`, so one
//! failing query shows its error in its tile and the others still render.

use chrono::{Days, NaiveDate};

use crate::core::analysis::funnel::{FunnelQuery, FunnelResult};
use crate::core::analysis::retention::{RetentionQuery, RetentionTable, TableShape};
use crate::core::engine::Engine;
use crate::core::experiment::definition::ExperimentStatus;
use crate::core::experiment::readout::Decision;
use crate::core::filter::EventSelector;
use crate::core::goal::definition::GoalReport;
use crate::core::metric::anomaly::{AnomalyQuery, AnomalyReport, Sensitivity};
use crate::core::metric::definition::MetricTarget;
use crate::core::metric::definition::{Direction, Metric, MetricKind, MetricRole};
use crate::core::metric::evaluate::Compare;
use crate::core::metric::scan::{MetricQuery, Point};
use crate::core::model::Micros;
use crate::core::time::{self, Granularity};
use crate::error::{Error, Result};

/// Days the default range spans, ending with the day of the latest event.
pub const DEFAULT_RANGE_DAYS: u64 = 30;
/// Longest range a page may ask for (the anomaly tile's history must fit the bucket limit).
pub const MAX_RANGE_DAYS: i64 = 3 * 366;
/// Experiments shown, newest first.
pub const MAX_EXPERIMENTS: usize = 10;

/// What a page asks for. Empty fields take the project's defaults (see `Engine::dashboard`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DashboardRequest {
    pub from: Option<NaiveDate>,
    /// Exclusive.
    pub to: Option<NaiveDate>,
    /// Funnel steps (event names, in order); empty: the first CONVERSION metric's A → B.
    pub funnel: Vec<String>,
    /// (cohort event, return event); None: the first RETENTION metric's, else the North Star's
    /// event for both (first time).
    pub retention: Option<(String, String)>,
}

/// The page's range: whole local days `[from, to)` in the project's zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayRange {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub start: Micros,
    pub end: Micros,
}

impl DayRange {
    pub fn days(&self) -> i64 {
        (self.to - self.from).num_days()
    }
}

/// A metric's headline: its value over the range (GRANULARITY_TOTAL), the previous period's
/// value and the daily series for the sparkline.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricTile {
    pub key: String,
    pub name: String,
    pub unit: String,
    pub direction: Direction,
    pub value: Option<f64>,
    pub previous: Option<f64>,
    pub series: Vec<Point>,
}

impl MetricTile {
    /// (value − previous) / |previous|; None without both or when previous is 0.
    pub fn change(&self) -> Option<f64> {
        match (self.value, self.previous) {
            (Some(value), Some(previous)) if previous != 0.0 => Some((value - previous) / previous.abs()),
            _ => None,
        }
    }
}

/// A funnel and the steps it was asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct FunnelTile {
    pub steps: Vec<String>,
    pub window: Micros,
    pub result: FunnelResult,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetentionTile {
    pub cohort_event: String,
    pub return_event: String,
    pub period: crate::core::metric::definition::Period,
    pub table: RetentionTable,
}

/// An experiment's primary metric against control, or why there is none.
#[derive(Debug, Clone)]
pub struct ExperimentTile {
    pub key: String,
    pub name: String,
    pub status: ExperimentStatus,
    pub readout: Result<ExperimentReadout>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExperimentReadout {
    pub metric_key: String,
    pub variant: String,
    pub users: u64,
    /// Relative lift (or absolute effect when the experiment asks for it), with its interval.
    pub effect: f64,
    pub relative: bool,
    pub ci: (f64, f64),
    pub p_value: f64,
    pub decision: Decision,
}

/// One channel's attribution: conversions credited, spend and what it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct AttributionRow {
    pub channel: String,
    /// Conversions credited to the channel; None while the credit is not computed.
    pub credit: Option<f64>,
    pub spend: f64,
    /// spend / credit (CAC).
    pub cost_per_conversion: Option<f64>,
    /// value credited / spend.
    pub roas: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AttributionTile {
    pub spend_metric: String,
    pub rows: Vec<AttributionRow>,
}

/// The whole page. `None` inside a tile's `Ok` is its empty state.
#[derive(Debug)]
pub struct Dashboard {
    pub project: String,
    pub range: DayRange,
    pub timezone: String,
    pub latest_event: Option<Micros>,
    pub north_star: Result<Option<MetricTile>>,
    pub inputs: Result<Vec<MetricTile>>,
    pub goals: Result<Vec<(String, Result<GoalReport>)>>,
    pub funnel: Result<Option<FunnelTile>>,
    pub retention: Result<Option<RetentionTile>>,
    pub experiments: Result<Vec<ExperimentTile>>,
    pub anomalies: Result<Option<(String, AnomalyReport)>>,
    pub attribution: Result<Option<AttributionTile>>,
}

/// The range a page shows: the asked one, or `DEFAULT_RANGE_DAYS` ending with the day of the
/// latest event (today when there is none). `from` alone spans the default length from it;
/// `to` alone ends there.
pub fn day_range(
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
    latest: Option<Micros>,
    now: Micros,
    tz: chrono_tz::Tz,
) -> Result<DayRange> {
    let day_of = |t: Micros| {
        chrono::DateTime::<chrono::Utc>::from_timestamp_micros(t).unwrap_or_default().with_timezone(&tz).date_naive()
    };
    let span = Days::new(DEFAULT_RANGE_DAYS);
    let (from, to) = match (from, to) {
        (Some(from), Some(to)) => (from, to),
        (Some(from), None) => (from, from.checked_add_days(span).unwrap_or(from)),
        (None, Some(to)) => (to.checked_sub_days(span).unwrap_or(to), to),
        (None, None) => {
            let last_day = day_of(latest.unwrap_or(now));
            let to = last_day.succ_opt().unwrap_or(last_day);
            (to.checked_sub_days(span).unwrap_or(to), to)
        }
    };
    if from >= to {
        return Err(Error::invalid("to", format!("must be after from ({from}), got {to}")));
    }
    if (to - from).num_days() > MAX_RANGE_DAYS {
        return Err(Error::invalid("to", format!("the range spans more than {MAX_RANGE_DAYS} days")));
    }
    let midnight = |d: NaiveDate| time::instant(d.and_time(chrono::NaiveTime::MIN), tz);
    Ok(DayRange { from, to, start: midnight(from), end: midnight(to) })
}

/// Which funnel the page shows: the asked steps, else the first CONVERSION metric's A → B
/// (with its window). None: nothing to show.
pub fn funnel_steps(asked: &[String], metrics: &[Metric]) -> Option<(Vec<EventSelector>, Option<Micros>)> {
    if !asked.is_empty() {
        let steps = asked.iter().map(|e| EventSelector { event: e.clone(), filters: vec![] }).collect();
        return Some((steps, None));
    }
    let metric = metrics.iter().find(|m| m.kind == MetricKind::Conversion)?;
    let steps = vec![metric.selector.clone()?, metric.conversion_selector.clone()?];
    Some((steps, metric.window))
}

/// Which retention table the page shows: the asked events, else the first RETENTION metric's,
/// else the North Star's event (first time, coming back to it). The second element says
/// whether only each person's first cohort event counts.
pub fn retention_events(
    asked: Option<&(String, String)>,
    metrics: &[Metric],
) -> Option<(EventSelector, EventSelector, bool)> {
    if let Some((cohort, back)) = asked {
        let selector = |e: &String| EventSelector { event: e.clone(), filters: vec![] };
        return Some((selector(cohort), selector(back), true));
    }
    if let Some(metric) = metrics.iter().find(|m| m.kind == MetricKind::Retention) {
        let back = metric.conversion_selector.clone().or_else(|| metric.selector.clone())?;
        return Some((metric.selector.clone()?, back, true));
    }
    let north_star = metrics.iter().find(|m| m.role == MetricRole::NorthStar)?;
    let selector = north_star.selector.clone().filter(|s| !s.event.is_empty())?;
    Some((selector.clone(), selector, true))
}

/// Retention columns for a range: days for up to two weeks, else weeks; 8 periods.
pub fn retention_period(range: &DayRange) -> crate::core::metric::definition::Period {
    if range.days() <= 14 {
        crate::core::metric::definition::Period::Day
    } else {
        crate::core::metric::definition::Period::Week
    }
}

/// The readout a tile shows: the first primary metric, first treatment against control.
fn experiment_readout(
    results: &crate::core::engine::experiments::ExperimentResults,
    variants: &[String],
) -> Result<ExperimentReadout> {
    let metric = results
        .metrics
        .iter()
        .find(|m| m.role == crate::core::experiment::definition::MetricRole::Primary)
        .ok_or_else(|| Error::FailedPrecondition("the experiment has no primary metric".into()))?;
    let comparison = metric
        .readout
        .comparisons
        .first()
        .ok_or_else(|| Error::FailedPrecondition("the experiment has no treatment variant".into()))?;
    let outcome = comparison.outcome.as_ref().map_err(|e| Error::FailedPrecondition(format!("{}: {e}", metric.key)))?;
    let result = &outcome.result;
    Ok(ExperimentReadout {
        metric_key: metric.key.clone(),
        variant: variants.get(comparison.variant).cloned().unwrap_or_default(),
        users: results.variant_users.iter().sum(),
        effect: result.effect,
        relative: result.difference == crate::core::experiment::stats::Difference::Relative,
        ci: (result.ci_lower, result.ci_upper),
        p_value: result.adjusted_p_value,
        decision: results.decision,
    })
}

/// The attribution tile: purchases credited last-touch to the `utm_source` of `page_view`
/// touches (SPEC §11's data), with the spend metric's values per channel, so each row has its
/// credit, spend, cost per purchase and ROAS on `revenue`.
pub fn attribution_rows(
    engine: &Engine,
    project: &str,
    spend_metric: &str,
    range: &DayRange,
) -> Result<Vec<AttributionRow>> {
    let selector = |event: &str| EventSelector { event: event.into(), filters: vec![] };
    let query = crate::core::analysis::attribution::AttributionQuery {
        conversion: selector("purchase"),
        touch: selector("page_view"),
        channel_property: "utm_source".into(),
        from: range.start,
        to: range.end,
        value_property: "revenue".into(),
        spend_metric_key: spend_metric.to_owned(),
        ..Default::default()
    };
    let attribution = engine.query_attribution(project, query)?;
    Ok(attribution.rows.iter().map(|r| with_costs(&r.channel, r.credit, r.value_credit, r.spend)).collect())
}

/// Fills in cost per conversion and ROAS from credit, value and spend (SPEC §15: only when
/// spend > 0; credit 0 gives cost 0).
pub fn with_costs(channel: &str, credit: f64, value_credit: f64, spend: f64) -> AttributionRow {
    let (cost_per_conversion, roas) = if spend > 0.0 {
        (Some(if credit > 0.0 { spend / credit } else { 0.0 }), Some(value_credit / spend))
    } else {
        (None, None)
    };
    AttributionRow { channel: channel.to_owned(), credit: Some(credit), spend, cost_per_conversion, roas }
}

fn total_query(range: &DayRange) -> MetricQuery {
    MetricQuery::new(range.start, range.end, Granularity::Total, chrono_tz::Tz::UTC)
}

impl Engine {
    /// The project's metrics (latest versions), its zone and the time of its latest event.
    fn dashboard_basics(&self, project: &str) -> Result<(Vec<Metric>, chrono_tz::Tz, Option<Micros>)> {
        let entry = self.project(project)?;
        let state = entry.read();
        let tz = time::parse_zone("timezone", &state.project.timezone)?;
        let latest = self.time_span(&state)?.map(|(_, last)| last);
        Ok((state.defs.metrics.latest_metrics().into_values().collect(), tz, latest))
    }

    /// The page's range for a request (see `day_range`).
    pub fn dashboard_range(&self, project: &str, request: &DashboardRequest) -> Result<DayRange> {
        let (_, tz, latest) = self.dashboard_basics(project)?;
        day_range(request.from, request.to, latest, self.clock.now(), tz)
    }

    /// Every tile of the project's page, the tiles computed in parallel.
    pub fn dashboard(&self, project: &str, request: &DashboardRequest) -> Result<Dashboard> {
        let (metrics, tz, latest) = self.dashboard_basics(project)?;
        let range = day_range(request.from, request.to, latest, self.clock.now(), tz)?;
        let north_star = metrics.iter().find(|m| m.role == MetricRole::NorthStar).cloned();
        let ns = north_star.as_ref();
        let range_ref = &range;
        let metrics_ref = &metrics;
        // An event aggregate's sparkline is the anomaly tile's daily series over the range.
        let shared_series = ns.is_some_and(|m| m.kind.is_event_aggregate());
        // The inputs' sparklines (the tree's children: metrics naming the North Star as parent)
        // are computed beside the tree rather than after it, each on its own thread.
        let input_keys: Vec<&str> = match ns {
            Some(root) => metrics
                .iter()
                .filter(|m| m.key != root.key && m.parent_keys.contains(&root.key))
                .map(|m| m.key.as_str())
                .collect(),
            None => vec![],
        };
        let dashboard = std::thread::scope(|scope| {
            let series: Vec<_> = input_keys
                .iter()
                .map(|&key| (key, scope.spawn(move || self.daily_series(project, key, range_ref))))
                .collect();
            let tree = scope.spawn(move || self.metric_tiles(project, ns, range_ref, !shared_series, series));
            let goals = scope.spawn(move || self.goal_tiles(project, range_ref));
            let funnel = scope.spawn(move || self.funnel_tile(project, request, metrics_ref, range_ref));
            let retention = scope.spawn(move || self.retention_tile(project, request, metrics_ref, range_ref));
            let experiments = scope.spawn(move || self.experiment_tiles(project));
            let anomalies = scope.spawn(move || self.anomaly_tile(project, ns, range_ref));
            let attribution = scope.spawn(move || self.attribution_tile(project, metrics_ref, range_ref));
            let anomalies = joined(anomalies);
            let (north_star, inputs) = match joined(tree) {
                Ok((north_star, inputs)) => (Ok(north_star), Ok(inputs)),
                Err(error) => (Err(error.clone()), Err(error)),
            };
            let north_star = match north_star {
                Ok(Some(tile)) if shared_series => self.with_shared_series(project, tile, &anomalies, range_ref),
                other => other,
            };
            Dashboard {
                project: project.to_owned(),
                range,
                timezone: tz.name().to_owned(),
                latest_event: latest,
                north_star,
                inputs,
                goals: joined(goals),
                funnel: joined(funnel),
                retention: joined(retention),
                experiments: joined(experiments),
                anomalies,
                attribution: joined(attribution),
            }
        });
        Ok(dashboard)
    }

    /// The North Star tile alone, for the page's live refresh.
    pub fn dashboard_north_star(
        &self,
        project: &str,
        request: &DashboardRequest,
    ) -> Result<(DayRange, Option<MetricTile>)> {
        let (metrics, tz, latest) = self.dashboard_basics(project)?;
        let range = day_range(request.from, request.to, latest, self.clock.now(), tz)?;
        let Some(north_star) = metrics.into_iter().find(|m| m.role == MetricRole::NorthStar) else {
            return Ok((range, None));
        };
        let (value, previous) = self.total_with_previous(project, &north_star.key, &range)?;
        let tile = self.metric_tile(project, &north_star, value, previous, &range, true)?;
        Ok((range, Some(tile)))
    }

    fn total_with_previous(&self, project: &str, key: &str, range: &DayRange) -> Result<(Option<f64>, Option<f64>)> {
        let target = MetricTarget::Key(key.to_owned(), 0);
        let answer = self.query_metric(project, target, total_query(range), "", Some(Compare::PreviousPeriod))?;
        let first = |series: &[crate::core::metric::scan::Series]| {
            series.first().and_then(|s| s.points.first()).and_then(|p| p.value)
        };
        Ok((first(&answer.series), first(&answer.comparison)))
    }

    fn metric_tile(
        &self,
        project: &str,
        metric: &Metric,
        value: Option<f64>,
        previous: Option<f64>,
        range: &DayRange,
        with_series: bool,
    ) -> Result<MetricTile> {
        let series = if with_series { self.daily_series(project, &metric.key, range)? } else { vec![] };
        Ok(MetricTile {
            key: metric.key.clone(),
            name: metric.name.clone(),
            unit: metric.unit.clone(),
            direction: metric.direction,
            value,
            previous,
            series,
        })
    }

    /// A metric's value per day of the range (the sparkline).
    fn daily_series(&self, project: &str, key: &str, range: &DayRange) -> Result<Vec<Point>> {
        let query = MetricQuery { granularity: Granularity::Day, ..total_query(range) };
        let answer =
            self.query_metric(project, MetricTarget::Key(key.to_owned(), 0), query, "", Some(Compare::None))?;
        Ok(answer.series.into_iter().next().map(|s| s.points).unwrap_or_default())
    }

    /// Fills the North Star tile's sparkline from the anomaly tile's points (the same daily
    /// evaluation over the range), or from its own query when that tile failed.
    fn with_shared_series(
        &self,
        project: &str,
        mut tile: MetricTile,
        anomalies: &Result<Option<(String, AnomalyReport)>>,
        range: &DayRange,
    ) -> Result<Option<MetricTile>> {
        tile.series = match anomalies {
            Ok(Some((key, report))) if *key == tile.key => {
                report.points.iter().map(|p| Point { start: p.start, end: p.end, value: p.value }).collect()
            }
            _ => self.daily_series(project, &tile.key, range)?,
        };
        Ok(Some(tile))
    }

    /// The North Star and its inputs (GetMetricTree over the range, previous period), each
    /// with its daily series.
    /// `series` holds the inputs' daily series being computed on other threads, by key; an
    /// input without one (the definitions changed meanwhile) gets its own query.
    fn metric_tiles(
        &self,
        project: &str,
        north_star: Option<&Metric>,
        range: &DayRange,
        root_series: bool,
        series: Vec<(&str, std::thread::ScopedJoinHandle<'_, Result<Vec<Point>>>)>,
    ) -> Result<(Option<MetricTile>, Vec<MetricTile>)> {
        if north_star.is_none() {
            return Ok((None, vec![]));
        }
        let (root, _) = self.metric_tree(project, "", total_query(range), "", Some(Compare::PreviousPeriod), 2)?;
        let root_tile = self.metric_tile(project, &root.metric, root.current, root.previous, range, root_series)?;
        let mut series: Vec<(&str, Result<Vec<Point>>)> =
            series.into_iter().map(|(key, handle)| (key, joined(handle))).collect();
        let inputs = root
            .children
            .iter()
            .map(|child| {
                let metric = &child.metric;
                match series.iter().position(|(key, _)| *key == metric.key) {
                    Some(at) => {
                        let points = series.swap_remove(at).1?;
                        let tile = self.metric_tile(project, metric, child.current, child.previous, range, false)?;
                        Ok(MetricTile { series: points, ..tile })
                    }
                    None => self.metric_tile(project, metric, child.current, child.previous, range, true),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((Some(root_tile), inputs))
    }

    /// Every goal's progress as of the end of the range (or now, when that is earlier).
    fn goal_tiles(&self, project: &str, range: &DayRange) -> Result<Vec<(String, Result<GoalReport>)>> {
        let as_of = range.end.min(self.clock.now());
        let goals = self.list_goals(project, "")?;
        Ok(goals.into_iter().map(|g| (g.id.clone(), self.goal_progress(project, &g.id, Some(as_of)))).collect())
    }

    fn funnel_tile(
        &self,
        project: &str,
        request: &DashboardRequest,
        metrics: &[Metric],
        range: &DayRange,
    ) -> Result<Option<FunnelTile>> {
        let Some((steps, window)) = funnel_steps(&request.funnel, metrics) else {
            return Ok(None);
        };
        let window = window.unwrap_or(crate::core::analysis::funnel::DEFAULT_WINDOW);
        let names = steps.iter().map(|s| s.event.clone()).collect();
        let query = FunnelQuery { steps, from: range.start, to: range.end, window, ..Default::default() };
        let result = self.query_funnel(project, query).map_err(|e| e.under("funnel"))?;
        Ok(Some(FunnelTile { steps: names, window, result }))
    }

    fn retention_tile(
        &self,
        project: &str,
        request: &DashboardRequest,
        metrics: &[Metric],
        range: &DayRange,
    ) -> Result<Option<RetentionTile>> {
        let Some((cohort_event, return_event, first_time)) = retention_events(request.retention.as_ref(), metrics)
        else {
            return Ok(None);
        };
        let period = retention_period(range);
        let names = (cohort_event.event.clone(), return_event.event.clone());
        let query = RetentionQuery {
            cohort_event,
            return_event: Some(return_event),
            first_time,
            unbounded: false,
            shape: TableShape { from: range.start, to: range.end, period, periods: 8, ..Default::default() },
        };
        let table = self.query_retention(project, query).map_err(|e| e.under("retention"))?;
        Ok(Some(RetentionTile { cohort_event: names.0, return_event: names.1, period, table }))
    }

    /// Running and stopped experiments, newest first, with their primary readout.
    fn experiment_tiles(&self, project: &str) -> Result<Vec<ExperimentTile>> {
        let mut experiments =
            self.list_experiments(project, &[Some(ExperimentStatus::Running), Some(ExperimentStatus::Stopped)])?;
        experiments.sort_by(|a, b| b.start_time.cmp(&a.start_time).then(a.key.cmp(&b.key)));
        experiments.truncate(MAX_EXPERIMENTS);
        let now = self.clock.now();
        Ok(experiments
            .into_iter()
            .map(|experiment| {
                let variants: Vec<String> = experiment.variants.iter().map(|v| v.key.clone()).collect();
                let readout = self
                    .experiment_results(project, &experiment.key, "", None, now)
                    .and_then(|results| experiment_readout(&results, &variants));
                ExperimentTile { key: experiment.key, name: experiment.name, status: experiment.status, readout }
            })
            .collect())
    }

    /// DetectAnomalies on the North Star's daily series over the range (medium sensitivity).
    fn anomaly_tile(
        &self,
        project: &str,
        north_star: Option<&Metric>,
        range: &DayRange,
    ) -> Result<Option<(String, AnomalyReport)>> {
        let Some(north_star) = north_star else {
            return Ok(None);
        };
        let query = AnomalyQuery {
            from: range.start,
            to: range.end,
            granularity: Granularity::Day,
            filters: vec![],
            season: 0,
            history: 0,
            threshold: Sensitivity::Medium.threshold(),
            cohort_id: String::new(),
        };
        let report = self.detect_anomalies(project, MetricTarget::Key(north_star.key.clone(), 0), query, "")?;
        Ok(Some((north_star.key.clone(), report)))
    }

    /// Attribution when spend is recorded: the first MANUAL metric with values in the range.
    fn attribution_tile(&self, project: &str, metrics: &[Metric], range: &DayRange) -> Result<Option<AttributionTile>> {
        for metric in metrics.iter().filter(|m| m.kind == MetricKind::Manual) {
            let (total, _) = self.total_with_previous(project, &metric.key, range)?;
            if total.is_some_and(|t| t != 0.0) {
                let rows = attribution_rows(self, project, &metric.key, range)?;
                return Ok(Some(AttributionTile { spend_metric: metric.key.clone(), rows }));
            }
        }
        Ok(None)
    }
}

/// A tile thread's answer; a panic becomes the tile's error.
fn joined<T>(handle: std::thread::ScopedJoinHandle<'_, Result<T>>) -> Result<T> {
    handle.join().unwrap_or_else(|_| Err(Error::Internal("the tile's query panicked".into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn micros(s: &str) -> Micros {
        chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp_micros()
    }

    #[test]
    fn default_range_is_thirty_days_ending_with_the_latest_events_day() {
        let range = day_range(None, None, Some(micros("2026-03-31T17:00:00Z")), 0, chrono_tz::Tz::UTC).unwrap();
        assert_eq!((range.from, range.to), (date("2026-03-02"), date("2026-04-01")));
        assert_eq!((range.start, range.end), (micros("2026-03-02T00:00:00Z"), micros("2026-04-01T00:00:00Z")));
        assert_eq!(range.days(), 30);
        // Local days: 23:30 UTC on the 31st is already April 1st in Berlin.
        let berlin: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
        let range = day_range(None, None, Some(micros("2026-03-31T23:30:00Z")), 0, berlin).unwrap();
        assert_eq!((range.from, range.to), (date("2026-03-03"), date("2026-04-02")));
        assert_eq!(range.end, micros("2026-04-01T22:00:00Z"));
        // No events: the 30 days ending today.
        let range = day_range(None, None, None, micros("2026-11-30T12:00:00Z"), chrono_tz::Tz::UTC).unwrap();
        assert_eq!((range.from, range.to), (date("2026-11-01"), date("2026-12-01")));
    }

    #[test]
    fn asked_ranges_and_bad_ones() {
        let utc = chrono_tz::Tz::UTC;
        let range = day_range(Some(date("2026-01-01")), Some(date("2026-01-08")), None, 0, utc).unwrap();
        assert_eq!(range.days(), 7);
        let range = day_range(Some(date("2026-01-01")), None, None, 0, utc).unwrap();
        assert_eq!(range.to, date("2026-01-31"));
        let range = day_range(None, Some(date("2026-01-31")), None, 0, utc).unwrap();
        assert_eq!(range.from, date("2026-01-01"));
        let error = day_range(Some(date("2026-01-08")), Some(date("2026-01-08")), None, 0, utc).unwrap_err();
        assert!(matches!(&error, Error::InvalidArgument { field, .. } if field == "to"), "{error}");
        let error = day_range(Some(date("2020-01-01")), Some(date("2026-01-08")), None, 0, utc).unwrap_err();
        assert!(error.to_string().contains("more than"), "{error}");
    }

    fn metric(key: &str, kind: MetricKind, event: &str) -> Metric {
        Metric {
            key: key.into(),
            kind,
            selector: Some(EventSelector { event: event.into(), filters: vec![] }),
            ..Default::default()
        }
    }

    #[test]
    fn funnel_from_the_url_or_the_first_conversion_metric() {
        assert_eq!(funnel_steps(&[], &[metric("dau", MetricKind::UniqueUsers, "session_start")]), None);
        let mut conversion = metric("checkout", MetricKind::Conversion, "signup");
        conversion.conversion_selector = Some(EventSelector { event: "purchase".into(), filters: vec![] });
        conversion.window = Some(7);
        let (steps, window) = funnel_steps(&[], std::slice::from_ref(&conversion)).unwrap();
        assert_eq!(steps.iter().map(|s| s.event.as_str()).collect::<Vec<_>>(), ["signup", "purchase"]);
        assert_eq!(window, Some(7));
        let asked = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let (steps, window) = funnel_steps(&asked, &[conversion]).unwrap();
        assert_eq!(steps.len(), 3);
        assert_eq!(window, None);
    }

    #[test]
    fn retention_from_the_url_a_retention_metric_or_the_north_star() {
        assert!(retention_events(None, &[metric("x", MetricKind::Count, "e")]).is_none());
        let mut north_star = metric("dau", MetricKind::UniqueUsers, "session_start");
        north_star.role = MetricRole::NorthStar;
        let (cohort, back, first) = retention_events(None, std::slice::from_ref(&north_star)).unwrap();
        assert_eq!((cohort.event.as_str(), back.event.as_str(), first), ("session_start", "session_start", true));
        let mut retention = metric("d7", MetricKind::Retention, "signup");
        retention.conversion_selector = Some(EventSelector { event: "purchase".into(), filters: vec![] });
        let (cohort, back, _) = retention_events(None, &[north_star.clone(), retention]).unwrap();
        assert_eq!((cohort.event.as_str(), back.event.as_str()), ("signup", "purchase"));
        let asked = ("a".to_owned(), "b".to_owned());
        let (cohort, back, _) = retention_events(Some(&asked), &[north_star]).unwrap();
        assert_eq!((cohort.event.as_str(), back.event.as_str()), ("a", "b"));
    }

    #[test]
    fn change_against_the_previous_period() {
        let tile = |value, previous| MetricTile {
            key: "k".into(),
            name: String::new(),
            unit: String::new(),
            direction: Direction::Increase,
            value,
            previous,
            series: vec![],
        };
        assert_eq!(tile(Some(120.0), Some(100.0)).change(), Some(0.2));
        assert_eq!(tile(Some(-50.0), Some(-100.0)).change(), Some(0.5));
        assert_eq!(tile(Some(1.0), Some(0.0)).change(), None);
        assert_eq!(tile(None, Some(3.0)).change(), None);
    }

    #[test]
    fn attribution_costs() {
        // 1,200 spent for 40 conversions worth 3,000: CAC 30, ROAS 2.5.
        let row = with_costs("paid_search", 40.0, 3000.0, 1200.0);
        assert_eq!((row.cost_per_conversion, row.roas), (Some(30.0), Some(2.5)));
        let row = with_costs("social", 0.0, 0.0, 900.0);
        assert_eq!((row.cost_per_conversion, row.roas), (Some(0.0), Some(0.0)));
        let row = with_costs("organic", 12.5, 700.0, 0.0);
        assert_eq!((row.cost_per_conversion, row.roas, row.credit), (None, None, Some(12.5)));
    }
}
