use tonic::{Request, Response};

use super::convert::{enum_error, micros_from_timestamp, time_range, timestamp};
use super::metric::{filters_from_pb, granularity_from_pb, point_to_pb};
use super::{Api, Reply};
use crate::core::goal::definition::{Goal, GoalReport};
use crate::core::goal::progress::{GoalStatus, Target};
use crate::core::metric::definition::Direction;
use crate::core::page::{PageRequest, paginate};
use crate::core::time::Granularity;
use crate::error::{Error, Result};
use crate::pb::{self, goal_service_server::GoalService};

fn period(field: &str, range: Option<&pb::TimeRange>) -> Result<Option<(i64, i64)>> {
    let range = time_range(field, range)?;
    match (range.from, range.to) {
        (None, None) => Ok(None),
        (Some(from), Some(to)) => Ok(Some((from, to))),
        _ => Err(Error::invalid(field, "from and to are both required")),
    }
}

fn goal_from_pb(goal: pb::Goal) -> Result<Goal> {
    let target = match goal.target {
        Some(pb::goal::Target::TargetValue(v)) => Target::Absolute(v),
        Some(pb::goal::Target::RelativeTarget(r)) => Target::Relative(r),
        None => return Err(Error::invalid("goal.target_value", "a target_value or a relative_target is required")),
    };
    let direction = match pb::Direction::try_from(goal.direction) {
        Ok(pb::Direction::Unspecified) => None,
        Ok(pb::Direction::Increase) => Some(Direction::Increase),
        Ok(pb::Direction::Decrease) => Some(Direction::Decrease),
        Err(_) => return Err(enum_error("goal.direction", goal.direction)),
    };
    Ok(Goal {
        period: period("goal.period", goal.period.as_ref())?
            .ok_or_else(|| Error::invalid("goal.period", "required"))?,
        baseline_period: period("goal.baseline_period", goal.baseline_period.as_ref())?,
        granularity: granularity_from_pb("goal.granularity", goal.granularity)?,
        filters: filters_from_pb("goal.filters", goal.filters)?,
        id: goal.id,
        name: goal.name,
        description: goal.description,
        metric_key: goal.metric_key,
        target,
        direction,
        timezone: goal.timezone,
        cohort_id: goal.cohort_id,
        created: 0,
        updated: 0,
    })
}

fn range_to_pb((from, to): (i64, i64)) -> pb::TimeRange {
    pb::TimeRange { from: Some(timestamp(from)), to: Some(timestamp(to)) }
}

fn goal_to_pb(goal: Goal) -> pb::Goal {
    pb::Goal {
        id: goal.id,
        name: goal.name,
        description: goal.description,
        metric_key: goal.metric_key,
        granularity: match goal.granularity {
            Granularity::Hour => pb::Granularity::Hour,
            Granularity::Day => pb::Granularity::Day,
            Granularity::Week => pb::Granularity::Week,
            Granularity::Month => pb::Granularity::Month,
            Granularity::Quarter => pb::Granularity::Quarter,
            Granularity::Total => pb::Granularity::Total,
        } as i32,
        period: Some(range_to_pb(goal.period)),
        target: Some(match goal.target {
            Target::Absolute(v) => pb::goal::Target::TargetValue(v),
            Target::Relative(r) => pb::goal::Target::RelativeTarget(r),
        }),
        baseline_period: goal.baseline_period.map(range_to_pb),
        direction: match goal.direction {
            None => pb::Direction::Unspecified,
            Some(Direction::Increase) => pb::Direction::Increase,
            Some(Direction::Decrease) => pb::Direction::Decrease,
        } as i32,
        timezone: goal.timezone,
        filters: goal.filters.iter().map(super::metric::filter_to_pb).collect(),
        cohort_id: goal.cohort_id,
        created_time: Some(timestamp(goal.created)),
        updated_time: Some(timestamp(goal.updated)),
    }
}

fn report_to_pb(report: GoalReport) -> pb::GetGoalProgressResponse {
    let p = report.progress;
    let status = match p.status {
        GoalStatus::NotStarted => pb::GoalStatus::NotStarted,
        GoalStatus::Achieved => pb::GoalStatus::Achieved,
        GoalStatus::Missed => pb::GoalStatus::Missed,
        GoalStatus::OnTrack => pb::GoalStatus::OnTrack,
        GoalStatus::AtRisk => pb::GoalStatus::AtRisk,
        GoalStatus::OffTrack => pb::GoalStatus::OffTrack,
    };
    pb::GetGoalProgressResponse {
        goal: Some(goal_to_pb(report.goal)),
        baseline: p.baseline,
        current: p.current,
        target: Some(p.target),
        progress: p.progress,
        expected_progress: p.expected_progress,
        projected: p.projected,
        projection: p.projection,
        status: status as i32,
        as_of: Some(timestamp(report.as_of)),
        points: report.points.iter().map(|point| point_to_pb(point, None, report.as_of)).collect(),
        metric_version: report.metric_version,
    }
}

#[tonic::async_trait]
impl GoalService for Api {
    async fn create_goal(&self, request: Request<pb::CreateGoalRequest>) -> Reply<pb::CreateGoalResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        let goal = goal_from_pb(request.goal.ok_or_else(|| Error::invalid("goal", "required"))?)?;
        let goal = self.blocking(move |engine| engine.create_goal(&request.project, goal)).await?;
        Ok(Response::new(pb::CreateGoalResponse { goal: Some(goal_to_pb(goal)) }))
    }

    async fn update_goal(&self, request: Request<pb::UpdateGoalRequest>) -> Reply<pb::UpdateGoalResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        let goal = goal_from_pb(request.goal.ok_or_else(|| Error::invalid("goal", "required"))?)?;
        let goal = self.blocking(move |engine| engine.update_goal(&request.project, goal)).await?;
        Ok(Response::new(pb::UpdateGoalResponse { goal: Some(goal_to_pb(goal)) }))
    }

    async fn get_goal(&self, request: Request<pb::GetGoalRequest>) -> Reply<pb::GetGoalResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        let goal = self.blocking(move |engine| engine.get_goal(&request.project, &request.id)).await?;
        Ok(Response::new(pb::GetGoalResponse { goal: Some(goal_to_pb(goal)) }))
    }

    async fn list_goals(&self, request: Request<pb::ListGoalsRequest>) -> Reply<pb::ListGoalsResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        let page = PageRequest { size: request.page_size, token: request.page_token };
        let (project, metric_key) = (request.project, request.metric_key);
        let (goals, next_page_token) = self
            .blocking(move |engine| paginate(engine.list_goals(&project, &metric_key)?, |g| g.id.clone(), &page))
            .await?;
        Ok(Response::new(pb::ListGoalsResponse { goals: goals.into_iter().map(goal_to_pb).collect(), next_page_token }))
    }

    async fn delete_goal(&self, request: Request<pb::DeleteGoalRequest>) -> Reply<pb::DeleteGoalResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        self.blocking(move |engine| engine.delete_goal(&request.project, &request.id)).await?;
        Ok(Response::new(pb::DeleteGoalResponse {}))
    }

    async fn get_goal_progress(
        &self,
        request: Request<pb::GetGoalProgressRequest>,
    ) -> Reply<pb::GetGoalProgressResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        let as_of = request.as_of.as_ref().map(|t| micros_from_timestamp("as_of", t)).transpose()?;
        let report = self.query(move |engine| engine.goal_progress(&request.project, &request.id, as_of)).await?;
        Ok(Response::new(report_to_pb(report)))
    }
}
