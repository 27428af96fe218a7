use futures::StreamExt;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use super::convert::{
    enum_error, item_error, micros_from_timestamp, required_range, timestamp, value_from_pb, value_to_pb,
};
use super::{Api, Reply};
use crate::core::analysis::breakdown::{breakdown_limit_or_default, breakdown_of};
use crate::core::analysis::revenue::BridgeComponent;
use crate::core::bounds;
use crate::core::engine::Engine;
use crate::core::engine::live::{self, LiveValue, WatchSpec};
use crate::core::filter::{EventSelector, Filter, FilterOp};
use crate::core::framework::{Framework, FrameworkMapping};
use crate::core::metric::anomaly::{AnomalyPoint, AnomalyQuery, Sensitivity};
use crate::core::metric::definition::MetricTarget;
use crate::core::metric::definition::{Direction, Metric, MetricInput, MetricKind, MetricRole, Period};
use crate::core::metric::evaluate::{Compare, TreeNode};
use crate::core::metric::forecast::ForecastQuery;
use crate::core::metric::scan::{MetricQuery, Point, Series, change};
use crate::core::model::ManualValue;
use crate::core::page::{PageRequest, paginate};
use crate::core::time::{CalendarOffset, CalendarPeriod, Granularity};
use crate::error::{Error, Result};
use crate::pb::{self, metric_service_server::MetricService};

pub fn filter_from_pb(field: &str, filter: pb::Filter) -> Result<Filter> {
    let op = match pb::FilterOp::try_from(filter.op).map_err(|_| enum_error(&format!("{field}.op"), filter.op))? {
        pb::FilterOp::Unspecified | pb::FilterOp::Eq => FilterOp::Eq,
        pb::FilterOp::Neq => FilterOp::Neq,
        pb::FilterOp::In => FilterOp::In,
        pb::FilterOp::NotIn => FilterOp::NotIn,
        pb::FilterOp::Gt => FilterOp::Gt,
        pb::FilterOp::Gte => FilterOp::Gte,
        pb::FilterOp::Lt => FilterOp::Lt,
        pb::FilterOp::Lte => FilterOp::Lte,
        pb::FilterOp::Contains => FilterOp::Contains,
        pb::FilterOp::IsSet => FilterOp::IsSet,
        pb::FilterOp::IsNotSet => FilterOp::IsNotSet,
    };
    let values = filter
        .values
        .into_iter()
        .enumerate()
        .map(|(i, v)| value_from_pb(&format!("{field}.values[{i}]"), v))
        .collect::<Result<Vec<_>>>()?;
    let filter = Filter { property: filter.property, op, values };
    crate::core::filter::validate_filter(field, &filter)?;
    Ok(filter)
}

pub fn filter_to_pb(filter: &Filter) -> pb::Filter {
    let op = match filter.op {
        FilterOp::Eq => pb::FilterOp::Eq,
        FilterOp::Neq => pb::FilterOp::Neq,
        FilterOp::In => pb::FilterOp::In,
        FilterOp::NotIn => pb::FilterOp::NotIn,
        FilterOp::Gt => pb::FilterOp::Gt,
        FilterOp::Gte => pb::FilterOp::Gte,
        FilterOp::Lt => pb::FilterOp::Lt,
        FilterOp::Lte => pb::FilterOp::Lte,
        FilterOp::Contains => pb::FilterOp::Contains,
        FilterOp::IsSet => pb::FilterOp::IsSet,
        FilterOp::IsNotSet => pb::FilterOp::IsNotSet,
    };
    pb::Filter {
        property: filter.property.clone(),
        op: op as i32,
        values: filter.values.iter().map(value_to_pb).collect(),
    }
}

pub fn filters_from_pb(field: &str, filters: Vec<pb::Filter>) -> Result<Vec<Filter>> {
    filters.into_iter().enumerate().map(|(i, f)| filter_from_pb(&format!("{field}[{i}]"), f)).collect()
}

pub fn selector_from_pb(field: &str, selector: Option<pb::EventSelector>) -> Result<Option<EventSelector>> {
    let Some(selector) = selector else { return Ok(None) };
    let filters = filters_from_pb(&format!("{field}.filters"), selector.filters)?;
    Ok(Some(EventSelector { event: selector.event, filters }))
}

fn selector_to_pb(selector: &Option<EventSelector>) -> Option<pb::EventSelector> {
    selector
        .as_ref()
        .map(|s| pb::EventSelector { event: s.event.clone(), filters: s.filters.iter().map(filter_to_pb).collect() })
}

/// A duration in microseconds, any sign (the core says which signs a field allows).
pub fn duration_micros(field: &str, duration: Option<prost_types::Duration>) -> Result<Option<i64>> {
    let Some(d) = duration else { return Ok(None) };
    let micros = d
        .seconds
        .checked_mul(1_000_000)
        .and_then(|s| s.checked_add(i64::from(d.nanos / 1000)))
        .ok_or_else(|| Error::invalid(field, "duration out of range"))?;
    Ok(Some(micros))
}

/// A duration that must be positive when given.
pub fn duration_from_pb(field: &str, duration: Option<prost_types::Duration>) -> Result<Option<i64>> {
    let micros = duration_micros(field, duration)?;
    if micros.is_some_and(|m| m <= 0) {
        return Err(Error::invalid(field, "must be positive"));
    }
    Ok(micros)
}

pub fn duration_to_pb(micros: Option<i64>) -> Option<prost_types::Duration> {
    micros.map(|m| prost_types::Duration { seconds: m / 1_000_000, nanos: (m % 1_000_000 * 1000) as i32 })
}

fn offset_from_pb(offset: Option<pb::CalendarOffset>) -> CalendarOffset {
    offset.map(|o| CalendarOffset { months: o.months, days: o.days }).unwrap_or_default()
}

fn offset_to_pb(offset: CalendarOffset) -> Option<pb::CalendarOffset> {
    (!offset.is_zero()).then_some(pb::CalendarOffset { months: offset.months, days: offset.days })
}

pub fn period_from_pb(field: &str, value: i32) -> Result<Period> {
    Ok(match pb::Period::try_from(value).map_err(|_| enum_error(field, value))? {
        pb::Period::Unspecified | pb::Period::Day => Period::Day,
        pb::Period::Week => Period::Week,
        pb::Period::Month => Period::Month,
    })
}

pub fn granularity_from_pb(field: &str, value: i32) -> Result<Granularity> {
    Ok(match pb::Granularity::try_from(value).map_err(|_| enum_error(field, value))? {
        pb::Granularity::Unspecified | pb::Granularity::Day => Granularity::Day,
        pb::Granularity::Hour => Granularity::Hour,
        pb::Granularity::Week => Granularity::Week,
        pb::Granularity::Month => Granularity::Month,
        pb::Granularity::Quarter => Granularity::Quarter,
        pb::Granularity::Total => Granularity::Total,
    })
}

fn role_from_pb(field: &str, value: i32) -> Result<MetricRole> {
    Ok(match pb::MetricRole::try_from(value).map_err(|_| enum_error(field, value))? {
        pb::MetricRole::Unspecified | pb::MetricRole::Kpi => MetricRole::Kpi,
        pb::MetricRole::NorthStar => MetricRole::NorthStar,
        pb::MetricRole::Input => MetricRole::Input,
        pb::MetricRole::Guardrail => MetricRole::Guardrail,
    })
}

fn role_to_pb(role: MetricRole) -> pb::MetricRole {
    match role {
        MetricRole::Kpi => pb::MetricRole::Kpi,
        MetricRole::NorthStar => pb::MetricRole::NorthStar,
        MetricRole::Input => pb::MetricRole::Input,
        MetricRole::Guardrail => pb::MetricRole::Guardrail,
    }
}

const KINDS: [(pb::MetricKind, MetricKind); 14] = [
    (pb::MetricKind::Count, MetricKind::Count),
    (pb::MetricKind::UniqueUsers, MetricKind::UniqueUsers),
    (pb::MetricKind::Sum, MetricKind::Sum),
    (pb::MetricKind::Avg, MetricKind::Avg),
    (pb::MetricKind::Min, MetricKind::Min),
    (pb::MetricKind::Max, MetricKind::Max),
    (pb::MetricKind::Percentile, MetricKind::Percentile),
    (pb::MetricKind::Ratio, MetricKind::Ratio),
    (pb::MetricKind::Formula, MetricKind::Formula),
    (pb::MetricKind::Conversion, MetricKind::Conversion),
    (pb::MetricKind::Retention, MetricKind::Retention),
    (pb::MetricKind::Manual, MetricKind::Manual),
    (pb::MetricKind::LatestSum, MetricKind::LatestSum),
    (pb::MetricKind::RevenueBridge, MetricKind::RevenueBridge),
];

const COMPONENTS: [(pb::RevenueComponent, BridgeComponent); 14] = [
    (pb::RevenueComponent::StartingMrr, BridgeComponent::StartingMrr),
    (pb::RevenueComponent::NewMrr, BridgeComponent::NewMrr),
    (pb::RevenueComponent::ReactivationMrr, BridgeComponent::ReactivationMrr),
    (pb::RevenueComponent::ExpansionMrr, BridgeComponent::ExpansionMrr),
    (pb::RevenueComponent::ContractionMrr, BridgeComponent::ContractionMrr),
    (pb::RevenueComponent::ChurnedMrr, BridgeComponent::ChurnedMrr),
    (pb::RevenueComponent::EndingMrr, BridgeComponent::EndingMrr),
    (pb::RevenueComponent::StartingCustomers, BridgeComponent::StartingCustomers),
    (pb::RevenueComponent::NewCustomers, BridgeComponent::NewCustomers),
    (pb::RevenueComponent::ChurnedCustomers, BridgeComponent::ChurnedCustomers),
    (pb::RevenueComponent::EndingCustomers, BridgeComponent::EndingCustomers),
    (pb::RevenueComponent::NetRevenueRetention, BridgeComponent::NetRevenueRetention),
    (pb::RevenueComponent::GrossRevenueRetention, BridgeComponent::GrossRevenueRetention),
    (pb::RevenueComponent::CustomerChurnRate, BridgeComponent::CustomerChurnRate),
];

fn mapping_from_pb(m: pb::FrameworkMapping) -> Result<FrameworkMapping> {
    Ok(FrameworkMapping {
        activation_window: duration_from_pb("mapping.activation_window", m.activation_window)?,
        signup_event: m.signup_event,
        activation_event: m.activation_event,
        core_event: m.core_event,
        purchase_event: m.purchase_event,
        revenue_property: m.revenue_property,
        subscription_event: m.subscription_event,
        mrr_property: m.mrr_property,
        referral_event: m.referral_event,
        touch_event: m.touch_event,
        channel_property: m.channel_property,
        spend_metric_key: m.spend_metric_key,
    })
}

/// The bridge column: required for REVENUE_BRIDGE metrics, unset for every other kind.
fn component_from_pb(kind: MetricKind, value: i32) -> Result<BridgeComponent> {
    let field = "metric.revenue_component";
    let component = pb::RevenueComponent::try_from(value).map_err(|_| enum_error(field, value))?;
    let found = COMPONENTS.iter().find(|(p, _)| *p == component).map(|(_, c)| *c);
    match (kind, found) {
        (MetricKind::RevenueBridge, Some(c)) => Ok(c),
        (MetricKind::RevenueBridge, None) => Err(Error::invalid(field, "required for REVENUE_BRIDGE metrics")),
        (_, None) => Ok(BridgeComponent::default()),
        (_, Some(_)) => Err(Error::invalid(field, "applies to REVENUE_BRIDGE metrics only")),
    }
}

pub fn metric_from_pb(metric: pb::MetricDefinition) -> Result<Metric> {
    let kind = pb::MetricKind::try_from(metric.kind).map_err(|_| enum_error("metric.kind", metric.kind))?;
    let kind = KINDS
        .iter()
        .find(|(p, _)| *p == kind)
        .map(|(_, k)| *k)
        .ok_or_else(|| Error::invalid("metric.kind", "required"))?;
    let to_date =
        match pb::ToDate::try_from(metric.to_date).map_err(|_| enum_error("metric.to_date", metric.to_date))? {
            pb::ToDate::Unspecified => None,
            pb::ToDate::Week => Some(CalendarPeriod::Week),
            pb::ToDate::Month => Some(CalendarPeriod::Month),
            pb::ToDate::Quarter => Some(CalendarPeriod::Quarter),
            pb::ToDate::Year => Some(CalendarPeriod::Year),
        };
    let retention_period = period_from_pb("metric.retention_period", metric.retention_period)?;
    let direction = match pb::Direction::try_from(metric.direction)
        .map_err(|_| enum_error("metric.direction", metric.direction))?
    {
        pb::Direction::Unspecified | pb::Direction::Increase => Direction::Increase,
        pb::Direction::Decrease => Direction::Decrease,
    };
    let revenue_component = component_from_pb(kind, metric.revenue_component)?;
    let semi_additive_last = pb::SemiAdditive::try_from(metric.semi_additive)
        .map_err(|_| enum_error("metric.semi_additive", metric.semi_additive))?
        == pb::SemiAdditive::Last;
    Ok(Metric {
        selector: selector_from_pb("metric.selector", metric.selector)?,
        conversion_selector: selector_from_pb("metric.conversion_selector", metric.conversion_selector)?,
        window: duration_from_pb("metric.window", metric.window)?,
        rolling_window: duration_from_pb("metric.rolling_window", metric.rolling_window)?,
        role: role_from_pb("metric.role", metric.role)?,
        numerator_offset: offset_from_pb(metric.numerator_offset),
        denominator_offset: offset_from_pb(metric.denominator_offset),
        inputs: metric
            .inputs
            .into_iter()
            .map(|i| MetricInput { alias: i.alias, metric_key: i.metric_key, offset: offset_from_pb(i.offset) })
            .collect(),
        key: metric.key,
        name: metric.name,
        description: metric.description,
        kind,
        property: metric.property,
        percentile: metric.percentile,
        numerator_key: metric.numerator_key,
        denominator_key: metric.denominator_key,
        formula: metric.formula,
        retention_period,
        retention_offset: metric.retention_offset,
        retention_rolling: pb::RetentionMode::try_from(metric.retention_mode)
            .map_err(|_| enum_error("metric.retention_mode", metric.retention_mode))?
            == pb::RetentionMode::Rolling,
        retention_unbounded: metric.retention_unbounded,
        to_date,
        semi_additive_last,
        fill_nulls_with: metric.fill_nulls_with,
        constant_properties: metric.constant_properties,
        revenue_component,
        parent_keys: metric.parent_keys,
        direction,
        unit: metric.unit,
        version: 0,
        created: 0,
        updated: 0,
    })
}

pub fn metric_to_pb(metric: Metric) -> pb::MetricDefinition {
    let kind = KINDS.iter().find(|(_, k)| *k == metric.kind).map_or(pb::MetricKind::Unspecified, |(p, _)| *p);
    pb::MetricDefinition {
        selector: selector_to_pb(&metric.selector),
        conversion_selector: selector_to_pb(&metric.conversion_selector),
        window: duration_to_pb(metric.window),
        rolling_window: duration_to_pb(metric.rolling_window),
        role: role_to_pb(metric.role) as i32,
        numerator_offset: offset_to_pb(metric.numerator_offset),
        denominator_offset: offset_to_pb(metric.denominator_offset),
        inputs: metric
            .inputs
            .into_iter()
            .map(|i| pb::MetricInput { alias: i.alias, metric_key: i.metric_key, offset: offset_to_pb(i.offset) })
            .collect(),
        kind: kind as i32,
        to_date: match metric.to_date {
            None => pb::ToDate::Unspecified,
            Some(CalendarPeriod::Week) => pb::ToDate::Week,
            Some(CalendarPeriod::Month) => pb::ToDate::Month,
            Some(CalendarPeriod::Quarter) => pb::ToDate::Quarter,
            Some(CalendarPeriod::Year) => pb::ToDate::Year,
        } as i32,
        retention_period: match metric.retention_period {
            Period::Day => pb::Period::Day,
            Period::Week => pb::Period::Week,
            Period::Month => pb::Period::Month,
        } as i32,
        direction: match metric.direction {
            Direction::Increase => pb::Direction::Increase,
            Direction::Decrease => pb::Direction::Decrease,
        } as i32,
        semi_additive: if metric.semi_additive_last { pb::SemiAdditive::Last } else { pb::SemiAdditive::Unspecified }
            as i32,
        key: metric.key,
        name: metric.name,
        description: metric.description,
        property: metric.property,
        percentile: metric.percentile,
        numerator_key: metric.numerator_key,
        denominator_key: metric.denominator_key,
        formula: metric.formula,
        retention_offset: metric.retention_offset,
        fill_nulls_with: metric.fill_nulls_with,
        constant_properties: metric.constant_properties,
        parent_keys: metric.parent_keys,
        unit: metric.unit,
        version: metric.version,
        created_time: Some(timestamp(metric.created)),
        updated_time: Some(timestamp(metric.updated)),
        retention_mode: if metric.retention_rolling {
            pb::RetentionMode::Rolling
        } else {
            pb::RetentionMode::Unspecified
        } as i32,
        retention_unbounded: metric.retention_unbounded,
        revenue_component: match metric.kind {
            MetricKind::RevenueBridge => COMPONENTS
                .iter()
                .find(|(_, c)| *c == metric.revenue_component)
                .map_or(pb::RevenueComponent::Unspecified, |(p, _)| *p),
            _ => pb::RevenueComponent::Unspecified,
        } as i32,
    }
}

/// A point with its change against the comparison value; `complete` once its end is past `now`.
pub fn point_to_pb(p: &Point, before: Option<f64>, now: i64) -> pb::Point {
    let (absolute_change, relative_change) = change(p.value, before);
    pb::Point {
        start: Some(timestamp(p.start)),
        end: Some(timestamp(p.end)),
        value: p.value.unwrap_or(0.0),
        has_value: p.value.is_some(),
        complete: p.is_complete(now),
        absolute_change,
        relative_change,
    }
}

fn series_to_pb(series: Vec<Series>, comparison: Option<&[Series]>) -> Vec<pb::Series> {
    let now = crate::core::model::now_micros();
    series
        .into_iter()
        .map(|s| {
            let matched = comparison.and_then(|c| c.iter().find(|c| c.breakdown_value == s.breakdown_value));
            let points = s
                .points
                .iter()
                .enumerate()
                .map(|(i, p)| point_to_pb(p, matched.and_then(|c| c.points.get(i)).and_then(|p| p.value), now))
                .collect();
            pb::Series {
                breakdown_value: s.breakdown_value,
                points,
                total: s.total.unwrap_or(0.0),
                has_total: s.total.is_some(),
            }
        })
        .collect()
}

/// A stored metric by key or an inline definition (given a placeholder key when it has none).
fn metric_target(key: Option<String>, definition: Option<pb::MetricDefinition>, version: u32) -> Result<MetricTarget> {
    match (key, definition) {
        (Some(key), _) => {
            crate::core::catalog::validate_slug("metric_key", &key)?;
            Ok(MetricTarget::Key(key, version))
        }
        (None, Some(definition)) => {
            let mut metric = metric_from_pb(definition)?;
            if metric.key.is_empty() {
                metric.key = "inline".into();
            }
            Ok(MetricTarget::Inline(Box::new(metric)))
        }
        (None, None) => Err(Error::invalid("metric_key", "a metric key or an inline definition is required")),
    }
}

fn sensitivity_from_pb(sensitivity: i32) -> Result<Sensitivity> {
    Ok(match pb::AnomalySensitivity::try_from(sensitivity).map_err(|_| enum_error("sensitivity", sensitivity))? {
        pb::AnomalySensitivity::Low => Sensitivity::Low,
        pb::AnomalySensitivity::Unspecified | pb::AnomalySensitivity::Medium => Sensitivity::Medium,
        pb::AnomalySensitivity::High => Sensitivity::High,
    })
}

fn live_to_pb(value: &LiveValue) -> pb::WatchMetricResponse {
    pb::WatchMetricResponse {
        point: Some(point_to_pb(&value.point, None, value.computed)),
        computed_time: Some(timestamp(value.computed)),
        metric_version: value.version,
        breakdown: series_to_pb(value.breakdown.clone(), None),
        timezone: value.timezone.clone(),
    }
}

fn anomaly_point_to_pb(p: &AnomalyPoint) -> pb::AnomalyPoint {
    let v = &p.verdict;
    pb::AnomalyPoint {
        start: Some(timestamp(p.start)),
        end: Some(timestamp(p.end)),
        value: p.value.unwrap_or(0.0),
        has_value: p.value.is_some(),
        expected: v.expected,
        lower: v.lower,
        upper: v.upper,
        score: v.score,
        is_anomaly: v.is_anomaly,
        is_bad: v.is_bad,
        complete: p.complete,
    }
}

/// The `breakdown_limit` field: bounded, 0 meaning the default.
fn breakdown_limit_from_pb(limit: u32) -> Result<usize> {
    Ok(breakdown_limit_or_default(bounds::breakdown_limit("breakdown_limit", limit)?))
}

/// The comparison asked for; UNSPECIFIED leaves the choice to the call (see `Compare`).
fn compare_from_pb(value: i32) -> Result<Option<Compare>> {
    Ok(match pb::Compare::try_from(value).map_err(|_| enum_error("compare", value))? {
        pb::Compare::Unspecified => None,
        pb::Compare::None => Some(Compare::None),
        pb::Compare::PreviousPeriod => Some(Compare::PreviousPeriod),
        pb::Compare::PreviousYear => Some(Compare::PreviousYear),
    })
}

impl Api {
    /// CreateMetric and UpdateMetric: convert the definition, store it through `save`.
    async fn save_metric(
        &self,
        project: String,
        metric: Option<pb::MetricDefinition>,
        save: fn(&Engine, &str, Metric) -> Result<Metric>,
    ) -> Result<pb::MetricDefinition, Status> {
        let metric = metric_from_pb(metric.ok_or_else(|| Error::invalid("metric", "required"))?)?;
        Ok(metric_to_pb(self.blocking(move |engine| save(engine, &project, metric)).await?))
    }
}

#[tonic::async_trait]
impl MetricService for Api {
    /// Validation errors fail the call; the stream itself lives in `core::engine::live`.
    async fn watch_metric(
        &self,
        request: Request<pb::WatchMetricRequest>,
    ) -> Reply<BoxStream<pb::WatchMetricResponse>> {
        let grant = self.grant(&request)?;
        grant.check(&request.get_ref().project)?;
        let request = request.into_inner();
        crate::core::catalog::validate_slug("metric_key", &request.metric_key)?;
        let spec = WatchSpec {
            project: request.project,
            metric_key: request.metric_key,
            granularity: granularity_from_pb("granularity", request.granularity)?,
            timezone: request.timezone,
            filters: filters_from_pb("filters", request.filters)?,
            breakdown: breakdown_of("breakdown", request.breakdown)?,
            breakdown_limit: breakdown_limit_from_pb(request.breakdown_limit)?,
            cohort_id: request.cohort_id,
        };
        let readings = live::watch(self.engine.clone(), spec).await?;
        let engine = self.engine.clone();
        // The key is re-checked before every message: a revoked or expired key ends the stream.
        let stream = readings.scan(false, move |ended, reading| {
            if *ended {
                return futures::future::ready(None);
            }
            let message = grant.recheck(&engine).and_then(|()| reading.map(|v| live_to_pb(&v)).map_err(Status::from));
            *ended = message.is_err();
            futures::future::ready(Some(message))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn detect_anomalies(
        &self,
        request: Request<pb::DetectAnomaliesRequest>,
    ) -> Reply<pb::DetectAnomaliesResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        let target = match request.metric {
            Some(pb::detect_anomalies_request::Metric::MetricKey(key)) => metric_target(Some(key), None, 0)?,
            Some(pb::detect_anomalies_request::Metric::Definition(definition)) => {
                metric_target(None, Some(definition), 0)?
            }
            None => metric_target(None, None, 0)?,
        };
        let (from, to) = required_range(request.range.as_ref())?;
        let query = AnomalyQuery {
            from,
            to,
            granularity: granularity_from_pb("granularity", request.granularity)?,
            filters: filters_from_pb("filters", request.filters)?,
            season: request.season,
            history: request.history,
            threshold: sensitivity_from_pb(request.sensitivity)?.resolve(request.score_threshold)?,
            cohort_id: request.cohort_id,
        };
        let (project, zone) = (request.project, request.timezone);
        let report = self.query(move |engine| engine.detect_anomalies(&project, target, query, &zone)).await?;
        Ok(Response::new(pb::DetectAnomaliesResponse {
            points: report.points.iter().map(anomaly_point_to_pb).collect(),
            score_threshold: report.threshold,
            season: report.season,
            history: report.history,
            timezone: report.timezone,
            metric_version: report.version,
        }))
    }

    async fn forecast_metric(&self, request: Request<pb::ForecastMetricRequest>) -> Reply<pb::ForecastMetricResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        let (from, to) = required_range(request.range.as_ref())?;
        let query = ForecastQuery {
            metric_key: request.metric_key,
            from,
            to,
            granularity: granularity_from_pb("granularity", request.granularity)?,
            timezone: request.timezone,
            horizon: request.horizon,
            season: request.season,
        };
        let project = request.project;
        let forecast = self.blocking(move |engine| engine.forecast_metric(&project, query)).await?;
        let now = crate::core::model::now_micros();
        Ok(Response::new(pb::ForecastMetricResponse {
            history: forecast.history.iter().map(|p| point_to_pb(p, None, now)).collect(),
            points: forecast
                .points
                .iter()
                .map(|(start, end, f)| pb::ForecastPoint {
                    start: Some(timestamp(*start)),
                    end: Some(timestamp(*end)),
                    value: f.value,
                    lower_80: f.lower_80,
                    upper_80: f.upper_80,
                    lower_95: f.lower_95,
                    upper_95: f.upper_95,
                })
                .collect(),
            method: forecast.method,
        }))
    }

    async fn apply_framework(&self, request: Request<pb::ApplyFrameworkRequest>) -> Reply<pb::ApplyFrameworkResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        let framework =
            match pb::Framework::try_from(request.framework).map_err(|_| enum_error("framework", request.framework))? {
                pb::Framework::Unspecified => {
                    return Err(Error::invalid("framework", "required: NORTH_STAR_AARRR or SAAS_REVENUE").into());
                }
                pb::Framework::NorthStarAarrr => Framework::NorthStarAarrr,
                pb::Framework::SaasRevenue => Framework::SaasRevenue,
            };
        let mapping = mapping_from_pb(request.mapping.unwrap_or_default())?;
        let (project, dry_run) = (request.project, request.dry_run);
        let applied =
            self.blocking(move |engine| engine.apply_framework(&project, framework, &mapping, dry_run)).await?;
        Ok(Response::new(pb::ApplyFrameworkResponse {
            created: applied.created,
            updated: applied.updated,
            unchanged: applied.unchanged,
            skipped: applied.skipped.into_iter().map(|s| pb::SkippedMetric { key: s.key, reason: s.reason }).collect(),
            event_types_created: applied.event_types_created,
            event_types_updated: applied.event_types_updated,
            event_types_unchanged: applied.event_types_unchanged,
        }))
    }

    async fn create_metric(&self, request: Request<pb::CreateMetricRequest>) -> Reply<pb::CreateMetricResponse> {
        let r = self.scoped(request, |r| &r.project)?;
        let metric = Some(self.save_metric(r.project, r.metric, Engine::create_metric).await?);
        Ok(Response::new(pb::CreateMetricResponse { metric }))
    }

    async fn update_metric(&self, request: Request<pb::UpdateMetricRequest>) -> Reply<pb::UpdateMetricResponse> {
        let r = self.scoped(request, |r| &r.project)?;
        let metric = Some(self.save_metric(r.project, r.metric, Engine::update_metric).await?);
        Ok(Response::new(pb::UpdateMetricResponse { metric }))
    }

    async fn get_metric(&self, request: Request<pb::GetMetricRequest>) -> Reply<pb::GetMetricResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        let (metric, latest_version) =
            self.blocking(move |engine| engine.get_metric(&request.project, &request.key, request.version)).await?;
        Ok(Response::new(pb::GetMetricResponse { metric: Some(metric_to_pb(metric)), latest_version }))
    }

    async fn list_metrics(&self, request: Request<pb::ListMetricsRequest>) -> Reply<pb::ListMetricsResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        let roles = request
            .roles
            .iter()
            .enumerate()
            .map(|(i, r)| role_from_pb(&format!("roles[{i}]"), *r))
            .collect::<Result<Vec<_>>>()?;
        let page = PageRequest { size: request.page_size, token: request.page_token };
        let project = request.project;
        let (metrics, next_page_token) = self
            .blocking(move |engine| paginate(engine.list_metrics(&project, &roles)?, |m| m.key.clone(), &page))
            .await?;
        Ok(Response::new(pb::ListMetricsResponse {
            metrics: metrics.into_iter().map(metric_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn delete_metric(&self, request: Request<pb::DeleteMetricRequest>) -> Reply<pb::DeleteMetricResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        self.engine.delete_metric(&request.project, &request.key).await?;
        Ok(Response::new(pb::DeleteMetricResponse {}))
    }

    async fn get_metric_tree(&self, request: Request<pb::GetMetricTreeRequest>) -> Reply<pb::GetMetricTreeResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        let (from, to) = required_range(request.range.as_ref())?;
        let compare = compare_from_pb(request.compare)?;
        let query = MetricQuery {
            filters: filters_from_pb("filters", request.filters)?,
            cohort_id: request.cohort_id,
            ..MetricQuery::new(from, to, Granularity::Total, chrono_tz::Tz::UTC)
        };
        let (project, root, zone, depth) =
            (request.project, request.root_key, request.timezone, request.max_depth as usize);
        let (node, previous) =
            self.query(move |engine| engine.metric_tree(&project, &root, query, &zone, compare, depth)).await?;
        Ok(Response::new(pb::GetMetricTreeResponse {
            root: Some(tree_to_pb(node)),
            previous_range: previous
                .map(|(from, to)| pb::TimeRange { from: Some(timestamp(from)), to: Some(timestamp(to)) }),
        }))
    }

    async fn record_values(&self, request: Request<pb::RecordValuesRequest>) -> Reply<pb::RecordValuesResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        let values = request
            .values
            .into_iter()
            .map(|v| {
                let timestamp = match &v.timestamp {
                    Some(ts) => micros_from_timestamp("timestamp", ts)?,
                    None => return Err(Error::invalid("timestamp", "required")),
                };
                let mut dimensions = v
                    .dimensions
                    .into_iter()
                    .map(|(k, value)| {
                        let value = value_from_pb("", value).map_err(|e| e.under(&format!("dimensions.{k}")))?;
                        Ok((k, value))
                    })
                    .collect::<Result<Vec<_>>>()?;
                dimensions.sort_by(|a, b| a.0.cmp(&b.0));
                Ok(ManualValue { timestamp, value: v.value, dimensions })
            })
            .collect();
        let (recorded, rejected) = self.engine.record_values(&request.project, &request.metric_key, values).await?;
        Ok(Response::new(pb::RecordValuesResponse {
            recorded,
            rejected: rejected.into_iter().map(item_error).collect(),
        }))
    }

    async fn query_metric(&self, request: Request<pb::QueryMetricRequest>) -> Reply<pb::QueryMetricResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        let target = match request.metric {
            Some(pb::query_metric_request::Metric::MetricKey(key)) => metric_target(Some(key), None, request.version)?,
            Some(pb::query_metric_request::Metric::Definition(definition)) => {
                metric_target(None, Some(definition), request.version)?
            }
            None => metric_target(None, None, 0)?,
        };
        let (from, to) = required_range(request.range.as_ref())?;
        let compare = compare_from_pb(request.compare)?;
        let query = MetricQuery {
            filters: filters_from_pb("filters", request.filters)?,
            breakdown: breakdown_of("breakdown", request.breakdown)?,
            breakdown_limit: breakdown_limit_from_pb(request.breakdown_limit)?,
            cohort_id: request.cohort_id,
            ..MetricQuery::new(from, to, granularity_from_pb("granularity", request.granularity)?, chrono_tz::Tz::UTC)
        };
        let zone = request.timezone;
        let project = request.project;
        let answer = self.query(move |engine| engine.query_metric(&project, target, query, &zone, compare)).await?;
        let comparison = series_to_pb(answer.comparison.clone(), None);
        Ok(Response::new(pb::QueryMetricResponse {
            series: series_to_pb(answer.series, Some(&answer.comparison)),
            comparison,
            timezone: answer.timezone,
            metric_version: answer.version,
        }))
    }
}

fn tree_to_pb(node: TreeNode) -> pb::MetricTreeNode {
    let (absolute_change, relative_change) = change(node.current, node.previous);
    let definition = metric_to_pb(node.metric);
    pb::MetricTreeNode {
        metric_key: definition.key,
        name: definition.name,
        role: definition.role,
        direction: definition.direction,
        unit: definition.unit,
        current_value: node.current,
        previous_value: node.previous,
        absolute_change,
        relative_change,
        children: node.children.into_iter().map(tree_to_pb).collect(),
    }
}
