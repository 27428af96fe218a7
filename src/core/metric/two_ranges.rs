//! A metric's totals over two ranges (a range and its comparison period) in one pass over the
//! events, for the metric tree: the same cells `scan::event_aggregate` fills, one per range.

use crate::core::metric::definition::{Metric, MetricKind};
use crate::core::metric::scan::{Cells, MAX_BUCKETS, Matching, MetricQuery, bucket_windows};
use crate::core::model::Micros;
use crate::core::store::source::EventSource;
use crate::core::store::table::NONE;
use crate::core::time::{self, Granularity};
use crate::error::Result;

/// Whether `totals` answers for `metric` exactly as two GRANULARITY_TOTAL evaluations would:
/// an event aggregate, CONVERSION or RETENTION without a breakdown.
pub fn applies(metric: &Metric, query: &MetricQuery) -> bool {
    (metric.kind.is_event_aggregate() || matches!(metric.kind, MetricKind::Conversion | MetricKind::Retention))
        && query.breakdown.is_none()
}

/// The metric's value over `query`'s range and over `previous` (each one GRANULARITY_TOTAL
/// bucket, with the metric's rolling or to-date window), from a single scan. Only for metrics
/// where `applies` holds.
pub fn totals(
    source: &impl EventSource,
    metric: &Metric,
    query: &MetricQuery,
    previous: (Micros, Micros),
) -> Result<(Option<f64>, Option<f64>)> {
    metric.validate_offsets()?;
    if matches!(metric.kind, MetricKind::Conversion | MetricKind::Retention) {
        let values =
            crate::core::metric::scan::share_totals(source, metric, query, &[(query.from, query.to), previous])?;
        return Ok((values[0], values[1]));
    }
    let window = |from: Micros, to: Micros| -> Result<(Micros, Micros)> {
        let bounds = time::bucket_bounds(from, to, Granularity::Total, query.tz, MAX_BUCKETS)?;
        let ranged = MetricQuery { from, to, granularity: Granularity::Total, ..query.clone() };
        Ok(bucket_windows(metric, &ranged, &bounds)[0])
    };
    let windows = [window(query.from, query.to)?, window(previous.0, previous.1)?];
    let scan_from = windows.iter().map(|w| w.0).min().unwrap_or(query.from);
    let scan_to = windows.iter().map(|w| w.1).max().unwrap_or(query.to);
    let matching = Matching::of_metric(source, metric, query, scan_from, scan_to)?;

    let mut cells = Cells::new(metric.kind, windows.len());
    if matching.name != NONE {
        matching.for_each(source, |person, _, t, value| {
            for (cell, &(start, end)) in windows.iter().enumerate() {
                if start <= t && t < end {
                    cells.add(cell, person, value);
                }
            }
        });
    }
    Ok((cells.value(0, metric.percentile), cells.value(1, metric.percentile)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::filter::EventSelector;
    use crate::core::model::{Event, Value};
    use crate::core::store::ProjectData;

    const DAY: Micros = crate::core::model::MICROS_PER_DAY;

    /// Users 0..5 with `amount` = user + day, on days 0..10 (user u on days d where (u + d) % 3 != 0).
    fn state() -> ProjectData {
        let mut state = ProjectData::default();
        for user in 0..5i64 {
            for day in 0..10i64 {
                if (user + day) % 3 == 0 {
                    continue;
                }
                state.table.push(&Event {
                    event_id: format!("e{user}-{day}"),
                    name: "buy".into(),
                    user_id: format!("u{user}"),
                    anonymous_id: String::new(),
                    timestamp: day * DAY + user,
                    properties: vec![("amount".into(), Value::Number((user + day) as f64))],
                });
            }
        }
        state
    }

    fn query(from: Micros, to: Micros) -> MetricQuery {
        MetricQuery::new(from, to, Granularity::Total, chrono_tz::Tz::UTC)
    }

    /// The two GRANULARITY_TOTAL evaluations `totals` replaces.
    fn reference(
        state: &ProjectData,
        metric: &Metric,
        current: (Micros, Micros),
        previous: (Micros, Micros),
    ) -> (Option<f64>, Option<f64>) {
        let value = |(from, to)| {
            let series = match metric.kind {
                MetricKind::Conversion | MetricKind::Retention => {
                    crate::core::metric::scan::share(&state.source(), metric, &query(from, to))
                }
                _ => crate::core::metric::scan::event_aggregate(&state.source(), metric, &query(from, to)),
            };
            series.unwrap()[0].points[0].value
        };
        (value(current), value(previous))
    }

    #[test]
    fn one_pass_gives_both_ranges_like_two_evaluations() {
        let state = state();
        let kinds = [
            MetricKind::Count,
            MetricKind::UniqueUsers,
            MetricKind::Sum,
            MetricKind::Avg,
            MetricKind::Min,
            MetricKind::Max,
            MetricKind::Percentile,
        ];
        // Adjacent periods, overlapping ones, and an empty previous period.
        let ranges = [
            ((5 * DAY, 10 * DAY), (0, 5 * DAY)),
            ((3 * DAY, 8 * DAY), (DAY, 6 * DAY)),
            ((0, 2 * DAY), (-4 * DAY, -2 * DAY)),
        ];
        for kind in kinds {
            for rolling in [None, Some(2 * DAY)] {
                let metric = Metric {
                    key: "m".into(),
                    kind,
                    selector: Some(EventSelector { event: "buy".into(), filters: vec![] }),
                    property: "amount".into(),
                    percentile: 50.0,
                    rolling_window: rolling,
                    ..Default::default()
                };
                for (current, previous) in ranges {
                    let answer = totals(&state.source(), &metric, &query(current.0, current.1), previous).unwrap();
                    assert_eq!(
                        answer,
                        reference(&state, &metric, current, previous),
                        "{kind:?} {rolling:?} {current:?}"
                    );
                }
            }
        }
        // Share metrics: conversion (buy, then buy again within a day or two) and retention
        // (first buy, back the next day or any later one), with the per-user entries the ranges split.
        for window in [DAY, 2 * DAY] {
            let conversion = Metric {
                key: "c".into(),
                kind: MetricKind::Conversion,
                selector: Some(EventSelector { event: "buy".into(), filters: vec![] }),
                conversion_selector: Some(EventSelector { event: "buy".into(), filters: vec![] }),
                window: Some(window),
                ..Default::default()
            };
            for (current, previous) in ranges {
                let answer = totals(&state.source(), &conversion, &query(current.0, current.1), previous).unwrap();
                assert_eq!(answer, reference(&state, &conversion, current, previous), "conversion {current:?}");
            }
        }
        for unbounded in [false, true] {
            let retention = Metric {
                key: "r".into(),
                kind: MetricKind::Retention,
                selector: Some(EventSelector { event: "buy".into(), filters: vec![] }),
                conversion_selector: Some(EventSelector { event: "buy".into(), filters: vec![] }),
                retention_period: crate::core::metric::definition::Period::Day,
                retention_offset: 1,
                retention_unbounded: unbounded,
                ..Default::default()
            };
            for (current, previous) in ranges {
                let answer = totals(&state.source(), &retention, &query(current.0, current.1), previous).unwrap();
                assert_eq!(answer, reference(&state, &retention, current, previous), "retention {current:?}");
            }
        }
        // Hand-computed: 3 distinct users bought on day 0 (users 1, 2, 4), and 0 users before it.
        let unique = Metric {
            kind: MetricKind::UniqueUsers,
            selector: Some(EventSelector { event: "buy".into(), filters: vec![] }),
            ..Default::default()
        };
        assert_eq!(totals(&state.source(), &unique, &query(0, DAY), (-DAY, 0)).unwrap(), (Some(3.0), Some(0.0)));
        // An unknown event counts nothing in either range.
        let unknown = Metric { selector: Some(EventSelector { event: "nope".into(), filters: vec![] }), ..unique };
        assert_eq!(totals(&state.source(), &unknown, &query(0, DAY), (-DAY, 0)).unwrap(), (Some(0.0), Some(0.0)));
    }
}
