//! Goals: stored definitions and their progress, measured by querying the goal's metric.

use serde::{Deserialize, Serialize};

use crate::core::catalog::validate_slug;
use crate::core::filter::Filter;
use crate::core::goal::progress::{self, Bucket, GoalInput, GoalProgress, Target};
use crate::core::metric::definition::{Direction, Metric, MetricBook, MetricKind};
use crate::core::metric::evaluate::evaluate;
use crate::core::metric::forecast;
use crate::core::metric::scan::{MetricQuery, Point};
use crate::core::model::Micros;
use crate::core::store::source::EventSource;
use crate::core::time::{self, Granularity};
use crate::error::{Error, Result, echo};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Goal {
    pub id: String,
    pub name: String,
    pub description: String,
    pub metric_key: String,
    pub granularity: Granularity,
    pub period: (Micros, Micros),
    pub target: Target,
    /// Default: the period of equal length (or the same number of calendar months) before.
    pub baseline_period: Option<(Micros, Micros)>,
    /// Default: the metric's direction.
    pub direction: Option<Direction>,
    /// Empty: the project's zone.
    pub timezone: String,
    pub filters: Vec<Filter>,
    /// Only members of this cohort (evaluated when progress is measured); empty: everyone.
    #[serde(default)]
    pub cohort_id: String,
    pub created: Micros,
    pub updated: Micros,
}

/// Progress with the buckets it was measured on.
#[derive(Debug, Clone, PartialEq)]
pub struct GoalReport {
    pub goal: Goal,
    pub progress: GoalProgress,
    pub as_of: Micros,
    pub points: Vec<Point>,
    pub metric_version: u32,
}

impl Goal {
    pub fn validate(&self) -> Result<()> {
        validate_slug("goal.id", &self.id)?;
        crate::core::bounds::check_name("goal.name", &self.name)?;
        crate::core::bounds::check_text("goal.description", &self.description)?;
        validate_slug("goal.metric_key", &self.metric_key)?;
        if self.period.0 >= self.period.1 {
            return Err(Error::invalid("goal.period", "to must be after from"));
        }
        if let Some((from, to)) = self.baseline_period
            && from >= to
        {
            return Err(Error::invalid("goal.baseline_period", "to must be after from"));
        }
        match self.target {
            Target::Absolute(v) | Target::Relative(v) if !v.is_finite() => {
                return Err(Error::invalid("goal.target_value", "must be finite"));
            }
            Target::Relative(r) if r <= -1.0 => {
                return Err(Error::invalid("goal.relative_target", "must be above -1 (-100%)"));
            }
            _ => {}
        }
        time::parse_zone("goal.timezone", &self.timezone)?;
        for (i, filter) in self.filters.iter().enumerate() {
            crate::core::filter::validate_filter(&format!("goal.filters[{i}]"), filter)?;
        }
        Ok(())
    }
}

/// COUNT, SUM and plain MANUAL metrics add up over time; goals on them track the total so far.
fn additive(metric: &Metric) -> bool {
    let plain = metric.rolling_window.is_none() && metric.to_date.is_none();
    plain
        && (matches!(metric.kind, MetricKind::Count | MetricKind::Sum)
            || (metric.kind == MetricKind::Manual && !metric.semi_additive_last))
}

/// The goal's metric over `[from, to)` in `granularity` buckets, as `base` filters it.
fn query_points(
    source: &impl EventSource,
    metrics: &MetricBook,
    metric: &Metric,
    base: &MetricQuery,
    (from, to, granularity): (Micros, Micros, Granularity),
) -> Result<Vec<Point>> {
    let query = MetricQuery { from, to, granularity, ..base.clone() };
    Ok(evaluate(source, metrics, metric, &query, 0)?.into_iter().next().map(|s| s.points).unwrap_or_default())
}

/// What every query of a goal shares: its filters and its cohort (`cohort_id`, resolved into
/// `members` or `member_ids` by the caller, see `Engine::metric_events`), in zone `tz`.
pub fn base_query(goal: &Goal, tz: chrono_tz::Tz) -> MetricQuery {
    MetricQuery {
        filters: goal.filters.clone(),
        cohort_id: goal.cohort_id.clone(),
        ..MetricQuery::new(goal.period.0, goal.period.1, Granularity::Total, tz)
    }
}

/// The zone a goal is measured in: its own, or else the project's (`default_zone`).
pub fn zone(goal: &Goal, default_zone: &str) -> Result<chrono_tz::Tz> {
    let zone = if goal.timezone.is_empty() { default_zone } else { goal.timezone.as_str() };
    time::parse_zone("goal.timezone", zone)
}

/// Measures a goal as of `now`, each query starting from `base` (`base_query`, its cohort
/// resolved).
pub fn measure(
    source: &impl EventSource,
    metrics: &MetricBook,
    base: &MetricQuery,
    goal: &Goal,
    now: Micros,
) -> Result<GoalReport> {
    let metric = metrics
        .get(&goal.metric_key)
        .and_then(|v| v.last())
        .ok_or_else(|| Error::NotFound(format!("metric {} not found", echo(&goal.metric_key))))?;
    let tz = base.tz;
    let (start, end) = goal.period;
    let additive = additive(metric);
    let measured_to = now.min(end);
    let points = if measured_to > start {
        query_points(source, metrics, metric, base, (start, measured_to, goal.granularity))?
    } else {
        Vec::new()
    };
    // Buckets are clipped to the period; a bucket ending after `now` is incomplete.
    let buckets: Vec<Bucket> =
        points.iter().map(|p| Bucket { start: p.start.max(start), end: p.end.min(end), value: p.value }).collect();
    let (base_from, base_to) =
        goal.baseline_period.unwrap_or_else(|| progress::default_baseline_period(start, end, tz));
    let baseline = if additive {
        query_points(source, metrics, metric, base, (base_from, base_to, Granularity::Total))?
            .first()
            .and_then(|p| p.value)
    } else {
        // Measured like `current`: the last bucket of the goal's granularity in the baseline.
        query_points(source, metrics, metric, base, (base_from, base_to, goal.granularity))?
            .iter()
            .rev()
            .find_map(|p| p.value)
    };
    let forecast = if additive { None } else { forecast_end_value(&buckets, goal.granularity, tz, now, end) };
    let input = GoalInput {
        forecast,
        additive,
        direction: goal.direction.unwrap_or(metric.direction),
        target: goal.target,
        period_start: start,
        period_end: end,
        now,
        baseline,
        buckets,
    };
    let progress =
        progress::progress(&input).map_err(|e| Error::FailedPrecondition(format!("goal {}: {e}", echo(&goal.id))))?;
    Ok(GoalReport { goal: goal.clone(), progress, as_of: now, points, metric_version: metric.version })
}

/// Complete buckets needed before a goal's projection uses the forecast instead of a line.
const MIN_FORECAST_BUCKETS: usize = 10;

/// The forecast (ForecastMetric's model) of the period's last bucket from the period's complete
/// buckets, when there are at least `MIN_FORECAST_BUCKETS` of them and the period is running.
fn forecast_end_value(
    buckets: &[Bucket],
    granularity: Granularity,
    tz: chrono_tz::Tz,
    now: Micros,
    end: Micros,
) -> Option<(f64, String)> {
    let complete: Vec<&Bucket> = buckets.iter().filter(|b| b.end <= now).collect();
    let last_end = complete.last()?.end;
    if complete.len() < MIN_FORECAST_BUCKETS || last_end >= end {
        return None;
    }
    let values = forecast::fill_gaps(&complete.iter().map(|b| b.value).collect::<Vec<_>>());
    let fit = forecast::fit(&values, forecast::default_season(granularity) as usize).ok()?;
    // Steps from the last complete bucket to the bucket holding the period's last instant.
    let steps =
        time::bucket_bounds(last_end, end, granularity, tz, crate::core::metric::scan::MAX_BUCKETS).ok()?.len() - 1;
    let value = fit.forecast(steps).last()?.value;
    Some((value, fit.method))
}
