//! ForecastMetric: the metric's history through QueryMetric's path, then the model's forecast.

use crate::core::engine::Engine;
use crate::core::metric::definition::MetricTarget;
use crate::core::metric::forecast::*;
use crate::core::metric::scan::MetricQuery;
use crate::core::time;
use crate::error::Result;

impl Engine {
    pub fn forecast_metric(&self, project: &str, query: ForecastQuery) -> Result<Forecast> {
        query.validate()?;
        let metric_query = MetricQuery::new(query.from, query.to, query.granularity, chrono_tz::Tz::UTC);
        let target = MetricTarget::Key(query.metric_key.clone(), 0);
        let answer = self.query_metric(project, target, metric_query, &query.timezone, Default::default())?;
        let tz = time::parse_zone("timezone", &answer.timezone)?;
        let history = answer.series.into_iter().next().map(|s| s.points).unwrap_or_default();
        let values: Vec<Option<f64>> = history.iter().map(|p| p.value).collect();
        let season = if query.season == 0 { default_season(query.granularity) } else { query.season };
        let fitted = fit(&fill_gaps(&values), season as usize)?;
        let mut start = history.last().map_or(query.to, |p| p.end);
        let points = fitted
            .forecast(query.horizon as usize)
            .into_iter()
            .map(|value| {
                let end = time::next(start, query.granularity, tz).max(start + 1);
                let point = (start, end, value);
                start = end;
                point
            })
            .collect();
        tracing::debug!(project, metric = %query.metric_key, method = %fitted.method, "forecast");
        Ok(Forecast { history, points, method: fitted.method })
    }
}
