//! Goals: stored definitions and their progress, measured by querying the goal's metric.

use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::catalog::validate_slug;
use super::engine::{Engine, ProjectState};
use super::filter::Filter;
use super::goal::{self, Bucket, GoalInput, GoalProgress, Target};
use super::metric::{Direction, Metric, MetricKind, forecast};
use super::metrics::evaluate;
use super::model::{Micros, now_micros};
use super::query::{self, DEFAULT_BREAKDOWN_LIMIT, MetricQuery, Point};
use super::time::{self, Granularity};
use crate::error::{Error, Result};

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

pub fn goal_key(project: &str, id: &str) -> String {
    format!("goal/{project}/{id}")
}

impl Goal {
    pub fn validate(&self) -> Result<()> {
        validate_slug("goal.id", &self.id)?;
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
            super::filter::validate_filter(&format!("goal.filters[{i}]"), filter)?;
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

fn query_points(
    state: &ProjectState,
    metric: &Metric,
    goal: &Goal,
    tz: chrono_tz::Tz,
    from: Micros,
    to: Micros,
    granularity: Granularity,
) -> Result<Vec<Point>> {
    let query = MetricQuery {
        from,
        to,
        granularity,
        tz,
        filters: goal.filters.clone(),
        breakdown: None,
        breakdown_limit: DEFAULT_BREAKDOWN_LIMIT,
        cohort_id: String::new(),
        members: super::cohort::resolve(state, "goal.cohort_id", &goal.cohort_id)?,
    };
    Ok(evaluate(state, metric, &query, 0)?.into_iter().next().map(|s| s.points).unwrap_or_default())
}

/// Measures a goal as of `now`.
pub fn measure(state: &ProjectState, goal: &Goal, now: Micros) -> Result<GoalReport> {
    let metric = state
        .metrics
        .get(&goal.metric_key)
        .and_then(|v| v.last())
        .ok_or_else(|| Error::NotFound(format!("metric {:?} not found", goal.metric_key)))?;
    let zone = if goal.timezone.is_empty() { state.project.timezone.as_str() } else { goal.timezone.as_str() };
    let tz = time::parse_zone("goal.timezone", zone)?;
    let (start, end) = goal.period;
    let additive = additive(metric);
    let measured_to = now.min(end);
    let points = if measured_to > start {
        query_points(state, metric, goal, tz, start, measured_to, goal.granularity)?
    } else {
        Vec::new()
    };
    // Buckets are clipped to the period; a bucket ending after `now` is incomplete.
    let buckets: Vec<Bucket> =
        points.iter().map(|p| Bucket { start: p.start.max(start), end: p.end.min(end), value: p.value }).collect();
    let (base_from, base_to) = goal.baseline_period.unwrap_or_else(|| goal::default_baseline_period(start, end, tz));
    let baseline = if additive {
        query_points(state, metric, goal, tz, base_from, base_to, Granularity::Total)?.first().and_then(|p| p.value)
    } else {
        // Measured like `current`: the last bucket of the goal's granularity in the baseline.
        query_points(state, metric, goal, tz, base_from, base_to, goal.granularity)?.iter().rev().find_map(|p| p.value)
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
    let progress = goal::progress(&input).map_err(|e| Error::FailedPrecondition(format!("goal {:?}: {e}", goal.id)))?;
    Ok(GoalReport { goal: goal.clone(), progress, as_of: now, points, metric_version: metric.version })
}

/// Complete buckets needed before a goal's projection uses the forecast instead of a line.
const MIN_FORECAST_BUCKETS: usize = 10;

/// The forecast (ForecastMetric's model) of the period's last bucket from the period's complete
/// buckets, when there are at least `MIN_FORECAST_BUCKETS` of them and the period is running.
fn forecast_end_value(
    buckets: &[Bucket],
    granularity: Granularity,
    tz: Tz,
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
    let steps = time::bucket_bounds(last_end, end, granularity, tz, query::MAX_BUCKETS).ok()?.len() - 1;
    let value = fit.forecast(steps).last()?.value;
    Some((value, fit.method))
}

impl Engine {
    pub fn create_goal(&self, project: &str, mut goal: Goal) -> Result<Goal> {
        goal.validate()?;
        let entry = self.project(project)?;
        let mut state = entry.write();
        if state.goals.contains_key(&goal.id) {
            return Err(Error::AlreadyExists(format!("goal {:?} already exists", goal.id)));
        }
        if !state.metrics.contains_key(&goal.metric_key) {
            return Err(Error::invalid("goal.metric_key", format!("unknown metric {:?}", goal.metric_key)));
        }
        if !goal.cohort_id.is_empty() && !state.cohorts.contains_key(&goal.cohort_id) {
            return Err(Error::invalid("goal.cohort_id", format!("unknown cohort {:?}", goal.cohort_id)));
        }
        (goal.created, goal.updated) = (now_micros(), now_micros());
        self.put_meta_json(&goal_key(project, &goal.id), &goal)?;
        state.goals.insert(goal.id.clone(), goal.clone());
        Ok(goal)
    }

    pub fn update_goal(&self, project: &str, mut goal: Goal) -> Result<Goal> {
        goal.validate()?;
        let entry = self.project(project)?;
        let mut state = entry.write();
        let previous =
            state.goals.get(&goal.id).ok_or_else(|| Error::NotFound(format!("goal {:?} not found", goal.id)))?;
        if !state.metrics.contains_key(&goal.metric_key) {
            return Err(Error::invalid("goal.metric_key", format!("unknown metric {:?}", goal.metric_key)));
        }
        if !goal.cohort_id.is_empty() && !state.cohorts.contains_key(&goal.cohort_id) {
            return Err(Error::invalid("goal.cohort_id", format!("unknown cohort {:?}", goal.cohort_id)));
        }
        (goal.created, goal.updated) = (previous.created, now_micros());
        self.put_meta_json(&goal_key(project, &goal.id), &goal)?;
        state.goals.insert(goal.id.clone(), goal.clone());
        Ok(goal)
    }

    pub fn get_goal(&self, project: &str, id: &str) -> Result<Goal> {
        validate_slug("id", id)?;
        let entry = self.project(project)?;
        let state = entry.read();
        state.goals.get(id).cloned().ok_or_else(|| Error::NotFound(format!("goal {id:?} not found")))
    }

    pub fn list_goals(&self, project: &str, metric_key: &str) -> Result<Vec<Goal>> {
        let entry = self.project(project)?;
        let state = entry.read();
        Ok(state.goals.values().filter(|g| metric_key.is_empty() || g.metric_key == metric_key).cloned().collect())
    }

    pub fn delete_goal(&self, project: &str, id: &str) -> Result<()> {
        validate_slug("id", id)?;
        let entry = self.project(project)?;
        let mut state = entry.write();
        if !state.goals.contains_key(id) {
            return Err(Error::NotFound(format!("goal {id:?} not found")));
        }
        self.delete_meta(&goal_key(project, id))?;
        state.goals.remove(id);
        Ok(())
    }

    pub fn goal_progress(&self, project: &str, id: &str, as_of: Option<Micros>) -> Result<GoalReport> {
        validate_slug("id", id)?;
        let entry = self.project(project)?;
        let state = entry.read();
        let goal = state.goals.get(id).ok_or_else(|| Error::NotFound(format!("goal {id:?} not found")))?;
        measure(&state, goal, as_of.unwrap_or_else(now_micros))
    }
}
