//! DetectAnomalies: evaluates the metric with its seasonal history and scores each bucket.

use crate::core::engine::Engine;
use crate::core::metric::anomaly::*;
use crate::core::metric::definition::MetricTarget;
use crate::core::metric::evaluate::evaluate;
use crate::core::metric::scan::{self, MetricQuery};

use crate::core::time::{self};
use crate::error::{Error, Result};

impl Engine {
    /// Scores every bucket overlapping the range against its seasonal history (module doc).
    /// Buckets are evaluated whole: the first one from its start even when `from` cuts it,
    /// the last one up to `to`; a bucket cut by `to` or not over yet is never flagged.
    pub fn detect_anomalies(
        &self,
        project: &str,
        target: MetricTarget,
        query: AnomalyQuery,
        zone: &str,
    ) -> Result<AnomalyReport> {
        query.granularity.series("granularity")?;
        if query.to <= query.from {
            return Err(Error::invalid("range", "to must be after from"));
        }
        if !(query.threshold.is_finite() && query.threshold > 0.0) {
            return Err(Error::invalid("score_threshold", "must be a positive number"));
        }
        let season = if query.season == 0 { default_season(query.granularity) } else { query.season };
        if season > MAX_SEASON {
            return Err(Error::invalid("season", format!("{season} buckets, at most {MAX_SEASON}")));
        }
        let history = if query.history == 0 { DEFAULT_HISTORY } else { query.history };
        if history > MAX_HISTORY {
            return Err(Error::invalid("history", format!("{history} seasons, at most {MAX_HISTORY}")));
        }
        let entry = self.project(project)?;
        let state = entry.read();
        let zone = if zone.is_empty() { state.project.timezone.as_str() } else { zone };
        let tz = time::parse_zone("timezone", zone)?;
        let metric = state.defs.metrics.resolve_target(target)?;

        let first_start = time::floor(query.from, query.granularity, tz);
        let checked = time::bucket_bounds(first_start, query.to, query.granularity, tz, scan::MAX_BUCKETS)?.len() - 1;
        let back = season as usize * history as usize;
        if checked + back > scan::MAX_BUCKETS {
            return Err(Error::invalid(
                "history",
                format!(
                    "{checked} buckets in the range plus {back} of history (season × history) exceed {}; \
                     lower history or narrow the range",
                    scan::MAX_BUCKETS
                ),
            ));
        }
        let mut history_from = first_start;
        for _ in 0..back {
            history_from = previous(history_from, query.granularity, tz);
        }
        let mut metric_query = MetricQuery {
            filters: query.filters,
            cohort_id: query.cohort_id.clone(),
            ..MetricQuery::new(history_from, query.to, query.granularity, tz)
        };
        let source = self.metric_events(&state, [&metric], &mut metric_query)?;
        metric_query.cohort_id = String::new();
        let series = evaluate(&source, &state.defs.metrics, &metric, &metric_query, 0)?;
        let points = series.into_iter().next().map(|s| s.points).unwrap_or_default();
        // The project's first data: events, or values recorded for MANUAL metrics.
        let first_manual = state.data.manual.values().filter_map(|values| values.keys().next().map(|k| k.0)).min();
        let data_start = [self.time_span(&state)?.map(|(first, _)| first), first_manual].into_iter().flatten().min();
        drop(state);

        let now = self.clock.now();
        let observations: Vec<Observation> = points
            .iter()
            .map(|p| Observation { value: p.value, complete: p.end <= now && p.end <= query.to })
            .collect();
        let history_start = match data_start {
            Some(start) => points.partition_point(|p| p.end <= start),
            None => points.len(),
        };
        let first = points.len().saturating_sub(checked);
        let detector = Detector {
            season: season as usize,
            history: history as usize,
            threshold: query.threshold,
            direction: metric.direction,
        };
        let verdicts = detector.detect(&observations, first, history_start);
        Ok(AnomalyReport {
            points: points[first..]
                .iter()
                .zip(verdicts)
                .zip(&observations[first..])
                .map(|((p, verdict), seen)| AnomalyPoint {
                    start: p.start,
                    end: p.end,
                    value: p.value,
                    verdict,
                    complete: seen.complete,
                })
                .collect(),
            threshold: query.threshold,
            season,
            history,
            version: metric.version,
            timezone: tz.name().to_owned(),
        })
    }
}
