//! Anomaly detection (SPEC §9): each point of a metric's series is compared with the same
//! point of past seasons, using statistics that a single outlier in the history cannot move.
//!
//! For the point at bucket index `i`, with season length `s` (in buckets) and `h` seasons of
//! history:
//!
//! - **baseline** `B = { x[i − k·s] : k = 1..=h }`, keeping only buckets that have a value and
//!   that end after the project's first data (an empty past before the project existed is not
//!   "normal"). With fewer than 3 baseline points there is no expectation and the point is
//!   never flagged.
//! - **expected** `m = median(B)` (the mean of the two middle values for an even count).
//! - **scale** `σ̂ = 1.4826 · MAD`, with `MAD = median(|b − m| : b ∈ B)`. The factor makes
//!   `σ̂` estimate the standard deviation for normally distributed data (1 / Φ⁻¹(3/4)).
//! - **MAD = 0** (more than half of the baseline equals the median, common for small counts
//!   or flat metrics): `σ̂ = 1.2533 · MeanAD` with `MeanAD = mean(|b − m|)`, again a normal-
//!   consistent estimate (√(π/2)), so a baseline like `5, 5, 5, 5, 9` still has a spread. When
//!   that is 0 too (the baseline is constant), a value equal to `m` scores 0 and any other value
//!   scores ±∞: a metric that never moved and now moves is flagged at any sensitivity.
//! - **score** `z = (x − m) / σ̂`, the robust z-score.
//! - **band** `[m − t·σ̂, m + t·σ̂]` for the threshold `t` (sensitivity LOW 4, MEDIUM 3,
//!   HIGH 2, or an explicit threshold); the point is an **anomaly** when `|z| > t`, it has a
//!   value and its bucket is complete (a bucket in progress is never flagged).
//! - **bad** when an anomaly deviates in the direction that is bad for the metric (below the
//!   band for INCREASE metrics, above it for DECREASE ones).
//!
//! Defaults: `s` = 168 for HOUR (same hour of the week), 7 for DAY (same weekday), 1 for
//! WEEK, MONTH and QUARTER (the preceding buckets); `h` = 8.
//!
//! The statistics are pure functions; `Engine::detect_anomalies` evaluates the metric with the
//! ordinary metric evaluation over the range extended back by `s·h` buckets and scores it.

use crate::core::filter::Filter;
use crate::core::metric::definition::Direction;
use crate::core::model::Micros;
use crate::core::time::{self, Granularity};
use crate::error::{Error, Result};

/// Normal-consistency factor of the median absolute deviation: 1 / Φ⁻¹(3/4).
pub const MAD_SCALE: f64 = 1.4826;
/// Normal-consistency factor of the mean absolute deviation: √(π/2).
pub const MEAN_AD_SCALE: f64 = 1.2533;
/// Fewest baseline points that give an expectation.
pub const MIN_BASELINE: usize = 3;
pub const DEFAULT_HISTORY: u32 = 8;
/// Largest season, in buckets (a year of hours is 8,760: beyond the bucket limit anyway).
pub const MAX_SEASON: u32 = 1_000;
/// Most seasons of history.
pub const MAX_HISTORY: u32 = 100;

/// How far from the expectation a point must be to be flagged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sensitivity {
    Low,
    #[default]
    Medium,
    High,
}

impl Sensitivity {
    /// The |score| a point must exceed: `score_threshold` when above 0, else the sensitivity's.
    pub fn resolve(self, score_threshold: f64) -> Result<f64> {
        if !score_threshold.is_finite() || score_threshold < 0.0 {
            return Err(Error::invalid("score_threshold", "must be a positive number (0: use sensitivity)"));
        }
        Ok(if score_threshold > 0.0 { score_threshold } else { self.threshold() })
    }

    /// The |score| a point must exceed.
    pub fn threshold(self) -> f64 {
        match self {
            Sensitivity::Low => 4.0,
            Sensitivity::Medium => 3.0,
            Sensitivity::High => 2.0,
        }
    }
}

/// The season length used when none is given: a week of hours or days, else one bucket.
pub fn default_season(granularity: Granularity) -> u32 {
    match granularity {
        Granularity::Hour => 168,
        Granularity::Day => 7,
        _ => 1,
    }
}

/// The median of `values` (sorted in place); `None` when empty.
pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 })
}

/// Median absolute deviation from `center`.
pub fn mad(values: &[f64], center: f64) -> Option<f64> {
    let mut deviations: Vec<f64> = values.iter().map(|v| (v - center).abs()).collect();
    median(&mut deviations)
}

/// Mean absolute deviation from `center`.
pub fn mean_absolute_deviation(values: &[f64], center: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    Some(values.iter().map(|v| (v - center).abs()).sum::<f64>() / values.len() as f64)
}

/// What a point is expected to be, from its baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Expectation {
    /// The baseline's median.
    pub expected: f64,
    /// The robust standard deviation estimate σ̂ (0 for a constant baseline).
    pub scale: f64,
}

impl Expectation {
    /// The expectation from a baseline (module doc); `None` with fewer than `MIN_BASELINE` points.
    pub fn from_baseline(baseline: &[f64]) -> Option<Expectation> {
        if baseline.len() < MIN_BASELINE {
            return None;
        }
        let expected = median(&mut baseline.to_vec())?;
        let mad = mad(baseline, expected)?;
        let scale =
            if mad > 0.0 { MAD_SCALE * mad } else { MEAN_AD_SCALE * mean_absolute_deviation(baseline, expected)? };
        Some(Expectation { expected, scale })
    }

    /// The robust z-score of `value`: 0 at the expectation, ±∞ off a constant baseline.
    pub fn score(&self, value: f64) -> f64 {
        let deviation = value - self.expected;
        if self.scale > 0.0 {
            deviation / self.scale
        } else if deviation == 0.0 {
            0.0
        } else {
            f64::INFINITY.copysign(deviation)
        }
    }

    /// The band `expected ± threshold · scale`.
    pub fn band(&self, threshold: f64) -> (f64, f64) {
        (self.expected - threshold * self.scale, self.expected + threshold * self.scale)
    }
}

/// One bucket of the series being checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    pub value: Option<f64>,
    /// The bucket is over (only complete buckets are flagged).
    pub complete: bool,
}

/// How points are compared with their past.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detector {
    /// Season length in buckets (≥ 1).
    pub season: usize,
    /// Seasons of history forming the baseline (≥ 1).
    pub history: usize,
    /// The |score| a point must exceed to be an anomaly.
    pub threshold: f64,
    pub direction: Direction,
}

/// The verdict on one point.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Verdict {
    pub expected: Option<f64>,
    pub lower: Option<f64>,
    pub upper: Option<f64>,
    /// Set when the point has a value and an expectation.
    pub score: Option<f64>,
    pub is_anomaly: bool,
    pub is_bad: bool,
}

impl Detector {
    /// Verdicts for `series[first..]`. Points before `first` serve only as history, and points
    /// before `history_start` (before the project had data) not even as that.
    pub fn detect(&self, series: &[Observation], first: usize, history_start: usize) -> Vec<Verdict> {
        let season = self.season.max(1);
        (first..series.len())
            .map(|i| {
                let baseline: Vec<f64> = (1..=self.history)
                    .filter_map(|k| i.checked_sub(k * season))
                    .filter(|&j| j >= history_start)
                    .filter_map(|j| series[j].value)
                    .collect();
                self.verdict(series[i], Expectation::from_baseline(&baseline))
            })
            .collect()
    }

    fn verdict(&self, point: Observation, expectation: Option<Expectation>) -> Verdict {
        let Some(expectation) = expectation else {
            return Verdict::default();
        };
        let (lower, upper) = expectation.band(self.threshold);
        let score = point.value.map(|v| expectation.score(v));
        let is_anomaly = point.complete && score.is_some_and(|z| z.abs() > self.threshold);
        let is_bad = is_anomaly
            && score.is_some_and(|z| match self.direction {
                Direction::Increase => z < 0.0,
                Direction::Decrease => z > 0.0,
            });
        Verdict {
            expected: Some(expectation.expected),
            lower: Some(lower),
            upper: Some(upper),
            score,
            is_anomaly,
            is_bad,
        }
    }
}

/// What to check: the buckets of `granularity` overlapping `[from, to)`.
#[derive(Debug, Clone)]
pub struct AnomalyQuery {
    pub from: Micros,
    pub to: Micros,
    pub granularity: Granularity,
    pub filters: Vec<Filter>,
    /// In buckets; 0: `default_season`.
    pub season: u32,
    /// In seasons; 0: `DEFAULT_HISTORY`.
    pub history: u32,
    /// The |score| threshold (> 0).
    pub threshold: f64,
    /// Only members of this cohort (evaluated now); empty: everyone.
    pub cohort_id: String,
}

/// A checked bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnomalyPoint {
    pub start: Micros,
    pub end: Micros,
    pub value: Option<f64>,
    pub verdict: Verdict,
    /// The bucket was over (and inside the range) when scored.
    pub complete: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AnomalyReport {
    pub points: Vec<AnomalyPoint>,
    pub threshold: f64,
    pub season: u32,
    pub history: u32,
    pub version: u32,
    pub timezone: String,
}

/// The start of the bucket before the one starting at `start`.
pub(crate) fn previous(start: Micros, granularity: Granularity, tz: chrono_tz::Tz) -> Micros {
    time::floor(start - 1, granularity, tz)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [7.0]), Some(7.0));
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&mut [5.0, -1.0, 100.0, 2.0, 2.0]), Some(2.0));
    }

    #[test]
    fn mad_and_mean_absolute_deviation() {
        // 1, 2, 3, 4, 100: median 3; deviations 2, 1, 0, 1, 97 → MAD = median = 1.
        let values = [1.0, 2.0, 3.0, 4.0, 100.0];
        assert_eq!(mad(&values, 3.0), Some(1.0));
        // mean of 2, 1, 0, 1, 97 = 101 / 5.
        assert!(close(mean_absolute_deviation(&values, 3.0).unwrap(), 20.2));
        assert_eq!(mad(&[], 0.0), None);
    }

    #[test]
    fn expectation_uses_the_median_and_the_scaled_mad() {
        // Baseline 10, 12, 11, 13, 9, 30: sorted 9 10 11 12 13 30 → median 11.5.
        // Deviations 1.5, 0.5, 0.5, 1.5, 2.5, 18.5 → sorted 0.5 0.5 1.5 1.5 2.5 18.5 → MAD 1.5.
        let e = Expectation::from_baseline(&[10.0, 12.0, 11.0, 13.0, 9.0, 30.0]).unwrap();
        assert_eq!(e.expected, 11.5);
        assert!(close(e.scale, 1.4826 * 1.5));
        // score of 20: 8.5 / 2.2239 = 3.82211...
        assert!(close(e.score(20.0), 8.5 / 2.2239));
        let (lower, upper) = e.band(3.0);
        assert!(close(lower, 11.5 - 3.0 * 2.2239) && close(upper, 11.5 + 3.0 * 2.2239));
        // The outlier 30 in the baseline barely moves anything: that is the point of it.
        assert!(e.score(11.5).abs() < 1e-12);
    }

    #[test]
    fn zero_mad_falls_back_to_the_mean_absolute_deviation() {
        // 5 5 5 5 9: median 5, MAD 0; MeanAD = 4 / 5 = 0.8 → scale 1.2533 × 0.8 = 1.00264.
        let e = Expectation::from_baseline(&[5.0, 5.0, 9.0, 5.0, 5.0]).unwrap();
        assert_eq!(e.expected, 5.0);
        assert!(close(e.scale, 1.2533 * 0.8));
        assert!(close(e.score(8.0), 3.0 / 1.00264));
        // A constant baseline: equal scores 0, anything else ±∞; the band collapses.
        let flat = Expectation::from_baseline(&[4.0, 4.0, 4.0]).unwrap();
        assert_eq!(flat.scale, 0.0);
        assert_eq!(flat.score(4.0), 0.0);
        assert_eq!(flat.score(5.0), f64::INFINITY);
        assert_eq!(flat.score(0.0), f64::NEG_INFINITY);
        assert_eq!(flat.band(3.0), (4.0, 4.0));
    }

    #[test]
    fn fewer_than_three_baseline_points_give_no_expectation() {
        assert_eq!(Expectation::from_baseline(&[1.0, 2.0]), None);
        assert!(Expectation::from_baseline(&[1.0, 2.0, 3.0]).is_some());
    }

    fn observed(values: &[Option<f64>]) -> Vec<Observation> {
        values.iter().map(|&value| Observation { value, complete: true }).collect()
    }

    #[test]
    fn seasonal_baseline_takes_the_same_phase_of_past_seasons() {
        // Season 2: even points ~10, odd points ~100. The last point (odd) is compared with
        // 100, 102, 98 (points 5, 3, 1) only, so 100 is normal although the even ones are 10.
        let series = observed(&[
            Some(10.0),
            Some(98.0),
            Some(11.0),
            Some(102.0),
            Some(9.0),
            Some(100.0),
            Some(10.0),
            Some(101.0),
        ]);
        let detector = Detector { season: 2, history: 3, threshold: 3.0, direction: Direction::Increase };
        let verdicts = detector.detect(&series, 6, 0);
        assert_eq!(verdicts.len(), 2);
        // Point 6 (even): baseline 9, 11, 10 → median 10, MAD 1 → scale 1.4826; score 0.
        assert_eq!(verdicts[0].expected, Some(10.0));
        assert_eq!(verdicts[0].score, Some(0.0));
        // Point 7 (odd): baseline 100, 102, 98 → median 100, MAD 2; score 1 / 2.9652.
        assert_eq!(verdicts[1].expected, Some(100.0));
        assert!(close(verdicts[1].score.unwrap(), 1.0 / 2.9652));
        assert!(!verdicts[1].is_anomaly);
    }

    #[test]
    fn flags_only_complete_points_beyond_the_threshold_and_knows_the_bad_side() {
        let mut series = observed(&[Some(10.0), Some(11.0), Some(9.0), Some(10.0), Some(30.0), Some(0.0), None]);
        series[5].complete = true;
        let increase = Detector { season: 1, history: 4, threshold: 3.0, direction: Direction::Increase };
        let verdicts = increase.detect(&series, 4, 0);
        // Point 4: baseline 10 11 9 10 → median 10, MAD 0.5 → scale 0.7413; score 27.0.
        assert!(verdicts[0].is_anomaly && !verdicts[0].is_bad);
        assert!(close(verdicts[0].score.unwrap(), 20.0 / 0.7413));
        // Point 5: baseline 11 9 10 30 → median 10.5, deviations .5 1.5 .5 19.5 → MAD 1.
        assert_eq!(verdicts[1].expected, Some(10.5));
        assert!(verdicts[1].is_anomaly && verdicts[1].is_bad, "a drop is bad for an INCREASE metric");
        // Point 6 has no value: an expectation and a band, no score, never flagged.
        assert!(verdicts[2].expected.is_some() && verdicts[2].score.is_none() && !verdicts[2].is_anomaly);

        let decrease = Detector { direction: Direction::Decrease, ..increase };
        let verdicts = decrease.detect(&series, 4, 0);
        assert!(verdicts[0].is_bad && !verdicts[1].is_bad);

        series[4].complete = false;
        assert!(!increase.detect(&series, 4, 0)[0].is_anomaly, "a bucket in progress is never flagged");
    }

    #[test]
    fn history_before_the_data_is_ignored() {
        // Zeros before the project existed would make a constant baseline and flag everything.
        let series = observed(&[Some(0.0), Some(0.0), Some(0.0), Some(5.0), Some(6.0), Some(5.0), Some(6.0)]);
        let detector = Detector { season: 1, history: 3, threshold: 3.0, direction: Direction::Increase };
        let with_zeros = detector.detect(&series, 3, 0);
        assert!(with_zeros[0].is_anomaly);
        let verdicts = detector.detect(&series, 3, 3);
        // Point 3 and 4 lack 3 baseline points; point 5 has 5, 6 → still 2; point 6 has 5 6 5.
        assert_eq!(verdicts.iter().map(|v| v.expected).collect::<Vec<_>>(), vec![None, None, None, Some(5.0)]);
        assert!(verdicts.iter().all(|v| !v.is_anomaly));
    }

    #[test]
    fn sensitivities_and_default_seasons() {
        assert_eq!(
            [Sensitivity::Low, Sensitivity::Medium, Sensitivity::High].map(Sensitivity::threshold),
            [4.0, 3.0, 2.0]
        );
        assert_eq!(default_season(Granularity::Hour), 168);
        assert_eq!(default_season(Granularity::Day), 7);
        assert_eq!(default_season(Granularity::Month), 1);
    }
}
