//! AnalysisService: funnels, retention tables, cohort tables, attribution and the revenue bridge.

use tonic::{Request, Response};

use super::convert::{enum_error, required_range, timestamp};
use super::metric::granularity_from_pb;
use super::metric::{duration_from_pb, duration_micros, filters_from_pb, period_from_pb, selector_from_pb};
use super::{Api, Reply};
use crate::core::analysis::attribution::{self, AttributionModel, AttributionQuery};
use crate::core::analysis::funnel::{self, Exclusion, FunnelMode, FunnelOrder, FunnelQuery, FunnelStep};
use crate::core::analysis::retention::{CohortTableQuery, CohortValue, RetentionMode, RetentionQuery, TableShape};
use crate::core::analysis::revenue::{BridgeQuery, RevenuePeriod};
use crate::core::bounds;
use crate::core::filter::EventSelector;
use crate::error::{Error, Result};
use crate::pb::{self, analysis_service_server::AnalysisService};

fn optional(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

/// An unset selector, or one with an empty `event`, means "any event".
fn any_event_selector(field: &str, selector: Option<pb::EventSelector>) -> Result<Option<EventSelector>> {
    match selector {
        Some(s) if !s.event.is_empty() => selector_from_pb(field, Some(s)),
        Some(s) if !s.filters.is_empty() => Err(Error::invalid(format!("{field}.event"), "filters need an event")),
        _ => Ok(None),
    }
}

fn required_selector(field: &str, selector: Option<pb::EventSelector>) -> Result<EventSelector> {
    selector_from_pb(field, selector)?.ok_or_else(|| Error::invalid(field, "required"))
}

fn mode_from_pb(value: i32) -> Result<RetentionMode> {
    Ok(match pb::RetentionMode::try_from(value).map_err(|_| enum_error("mode", value))? {
        pb::RetentionMode::Unspecified | pb::RetentionMode::Calendar => RetentionMode::Calendar,
        pb::RetentionMode::Rolling => RetentionMode::Rolling,
    })
}

fn funnel_from_pb(request: pb::QueryFunnelRequest) -> Result<FunnelQuery> {
    let (from, to) = required_range(request.range.as_ref())?;
    let steps = request
        .steps
        .into_iter()
        .enumerate()
        .map(|(i, s)| required_selector(&format!("steps[{i}]"), Some(s)))
        .collect::<Result<Vec<_>>>()?;
    let n = steps.len();
    let exclusions = request
        .exclusions
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let field = format!("exclusions[{i}]");
            // 1-based on the wire; 0 means the first / the last step.
            let from_step = if e.from_step == 0 { 0 } else { e.from_step as usize - 1 };
            let to_step = if e.to_step == 0 { n.saturating_sub(1) } else { e.to_step as usize - 1 };
            Ok(Exclusion { selector: required_selector(&format!("{field}.event"), e.event)?, from_step, to_step })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(FunnelQuery {
        steps,
        from,
        to,
        window: duration_from_pb("window", request.window)?.unwrap_or(funnel::DEFAULT_WINDOW),
        order: match pb::FunnelOrder::try_from(request.order).map_err(|_| enum_error("order", request.order))? {
            pb::FunnelOrder::Unspecified | pb::FunnelOrder::Ordered => FunnelOrder::Ordered,
            pb::FunnelOrder::Strict => FunnelOrder::Strict,
            pb::FunnelOrder::Unordered => FunnelOrder::Unordered,
        },
        mode: match pb::FunnelMode::try_from(request.mode).map_err(|_| enum_error("mode", request.mode))? {
            pb::FunnelMode::Unspecified | pb::FunnelMode::UniqueUsers => FunnelMode::UniqueUsers,
            pb::FunnelMode::TotalConversions => FunnelMode::TotalConversions,
        },
        breakdown: optional(request.breakdown),
        breakdown_limit: bounds::breakdown_limit("breakdown_limit", request.breakdown_limit)?,
        cohort_id: request.cohort_id,
        exclusions,
        timezone: request.timezone,
        filters: filters_from_pb("filters", request.filters)?,
    })
}

fn steps_to_pb(steps: Vec<FunnelStep>) -> Vec<pb::FunnelStep> {
    steps
        .into_iter()
        .map(|s| pb::FunnelStep {
            users: s.users,
            conversion_from_previous: s.conversion_from_previous,
            conversion_from_start: s.conversion_from_start,
            median_seconds_from_previous: s.median_seconds_from_previous,
            mean_seconds_from_previous: s.mean_seconds_from_previous,
            event: s.event,
        })
        .collect()
}

/// The shape fields retention and cohort-table requests share (same names, two messages).
macro_rules! table_shape {
    ($request:ident) => {{
        let (from, to) = required_range($request.range.as_ref())?;
        TableShape {
            from,
            to,
            period: period_from_pb("period", $request.period)?,
            periods: $request.periods as usize,
            mode: mode_from_pb($request.mode)?,
            timezone: $request.timezone,
            breakdown: optional($request.breakdown),
            breakdown_limit: bounds::breakdown_limit("breakdown_limit", $request.breakdown_limit)?,
            cohort_id: $request.cohort_id,
        }
    }};
}

fn retention_from_pb(request: pb::QueryRetentionRequest) -> Result<RetentionQuery> {
    Ok(RetentionQuery {
        cohort_event: required_selector("cohort_event", request.cohort_event)?,
        return_event: any_event_selector("return_event", request.return_event)?,
        first_time: request.first_time,
        unbounded: request.unbounded,
        shape: table_shape!(request),
    })
}

fn cohort_table_from_pb(request: pb::QueryCohortTableRequest) -> Result<CohortTableQuery> {
    let value = match pb::CohortTableValue::try_from(request.value).map_err(|_| enum_error("value", request.value))? {
        pb::CohortTableValue::Unspecified | pb::CohortTableValue::RetentionShare => CohortValue::RetentionShare,
        pb::CohortTableValue::RevenuePerUser => CohortValue::RevenuePerUser,
        pb::CohortTableValue::CumulativeRevenuePerUser => CohortValue::CumulativeRevenuePerUser,
    };
    Ok(CohortTableQuery {
        first_event: any_event_selector("first_event", request.first_event)?,
        value,
        return_event: any_event_selector("return_event", request.return_event)?,
        revenue: selector_from_pb("revenue", request.revenue)?,
        revenue_property: request.revenue_property,
        shape: table_shape!(request),
    })
}

fn attribution_from_pb(request: pb::QueryAttributionRequest) -> Result<AttributionQuery> {
    let (from, to) = required_range(request.range.as_ref())?;
    let model = match pb::AttributionModel::try_from(request.model).map_err(|_| enum_error("model", request.model))? {
        pb::AttributionModel::Unspecified | pb::AttributionModel::LastTouch => AttributionModel::LastTouch,
        pb::AttributionModel::FirstTouch => AttributionModel::FirstTouch,
        pb::AttributionModel::Linear => AttributionModel::Linear,
        pb::AttributionModel::PositionBased => AttributionModel::PositionBased,
        pb::AttributionModel::TimeDecay => AttributionModel::TimeDecay,
        pb::AttributionModel::Participation => AttributionModel::Participation,
    };
    Ok(AttributionQuery {
        conversion: required_selector("conversion", request.conversion)?,
        touch: required_selector("touch", request.touch)?,
        channel_property: request.channel_property,
        model,
        lookback: duration_micros("lookback", request.lookback)?.unwrap_or(attribution::DEFAULT_LOOKBACK),
        half_life: duration_from_pb("half_life", request.half_life)?.unwrap_or(attribution::DEFAULT_HALF_LIFE),
        from,
        to,
        value_property: request.value_property,
        spend_metric_key: request.spend_metric_key,
        first_conversion_only: request.first_conversion_only,
        cohort_id: request.cohort_id,
    })
}

fn bridge_from_pb(request: pb::QueryRevenueBridgeRequest) -> Result<BridgeQuery> {
    let (from, to) = required_range(request.range.as_ref())?;
    Ok(BridgeQuery {
        subscription: required_selector("subscription", request.subscription)?,
        mrr_property: request.mrr_property,
        from,
        to,
        granularity: granularity_from_pb("granularity", request.granularity)?,
        timezone: request.timezone,
    })
}

fn revenue_period_to_pb(p: &RevenuePeriod) -> pb::RevenuePeriod {
    pb::RevenuePeriod {
        start: Some(timestamp(p.start)),
        end: Some(timestamp(p.end)),
        starting_mrr: p.starting_mrr,
        new_mrr: p.new_mrr,
        expansion_mrr: p.expansion_mrr,
        contraction_mrr: p.contraction_mrr,
        churned_mrr: p.churned_mrr,
        reactivation_mrr: p.reactivation_mrr,
        ending_mrr: p.ending_mrr,
        starting_customers: p.starting_customers,
        new_customers: p.new_customers,
        churned_customers: p.churned_customers,
        ending_customers: p.ending_customers,
        net_revenue_retention: p.net_revenue_retention(),
        gross_revenue_retention: p.gross_revenue_retention(),
    }
}

#[tonic::async_trait]
impl AnalysisService for Api {
    async fn query_revenue_bridge(
        &self,
        request: Request<pb::QueryRevenueBridgeRequest>,
    ) -> Reply<pb::QueryRevenueBridgeResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        let project = request.project.clone();
        let query = bridge_from_pb(request)?;
        let bridge = self.blocking(move |engine| engine.query_revenue_bridge(&project, query)).await?;
        Ok(Response::new(pb::QueryRevenueBridgeResponse {
            periods: bridge.periods.iter().map(revenue_period_to_pb).collect(),
            timezone: bridge.timezone.name().to_owned(),
        }))
    }

    async fn query_funnel(&self, request: Request<pb::QueryFunnelRequest>) -> Reply<pb::QueryFunnelResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        let project = request.project.clone();
        let query = funnel_from_pb(request)?;
        let result = self.query(move |engine| engine.query_funnel(&project, query)).await?;
        Ok(Response::new(pb::QueryFunnelResponse {
            steps: steps_to_pb(result.steps),
            breakdowns: result
                .breakdowns
                .into_iter()
                .map(|(value, steps)| pb::FunnelBreakdown { value, steps: steps_to_pb(steps) })
                .collect(),
        }))
    }

    async fn query_retention(&self, request: Request<pb::QueryRetentionRequest>) -> Reply<pb::QueryRetentionResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        let project = request.project.clone();
        let query = retention_from_pb(request)?;
        let table = self.query(move |engine| engine.query_retention(&project, query)).await?;
        Ok(Response::new(pb::QueryRetentionResponse {
            cohorts: table
                .rows
                .into_iter()
                .map(|r| pb::RetentionCohort {
                    start: Some(timestamp(r.start)),
                    breakdown_value: r.breakdown_value,
                    size: r.size,
                    retained: r.retained,
                    shares: r.shares,
                    complete: r.complete,
                })
                .collect(),
            average_shares: table.average_shares,
            average_users: table.average_users,
        }))
    }

    async fn query_cohort_table(
        &self,
        request: Request<pb::QueryCohortTableRequest>,
    ) -> Reply<pb::QueryCohortTableResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        let project = request.project.clone();
        let query = cohort_table_from_pb(request)?;
        let table = self.query(move |engine| engine.query_cohort_table(&project, query)).await?;
        Ok(Response::new(pb::QueryCohortTableResponse {
            rows: table
                .rows
                .into_iter()
                .map(|r| pb::CohortTableRow {
                    start: Some(timestamp(r.start)),
                    breakdown_value: r.breakdown_value,
                    users: r.users,
                    values: r.values,
                    complete: r.complete,
                })
                .collect(),
            average_values: table.average_values,
            average_users: table.average_users,
        }))
    }

    async fn query_attribution(
        &self,
        request: Request<pb::QueryAttributionRequest>,
    ) -> Reply<pb::QueryAttributionResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        let project = request.project.clone();
        let query = attribution_from_pb(request)?;
        let result = self.blocking(move |engine| engine.query_attribution(&project, query)).await?;
        Ok(Response::new(pb::QueryAttributionResponse {
            conversions: result.conversions,
            value: result.value,
            rows: result
                .rows
                .into_iter()
                .map(|r| pb::AttributionRow {
                    channel: r.channel,
                    credit: r.credit,
                    value_credit: r.value_credit,
                    influenced: r.influenced,
                    spend: r.spend,
                    cost_per_conversion: r.cost_per_conversion,
                    roas: r.roas,
                    roi: r.roi,
                    has_spend: r.has_spend,
                })
                .collect(),
            total_spend: result.total_spend,
        }))
    }
}
