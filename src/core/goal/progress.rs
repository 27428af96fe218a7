//! Goal progress (SPEC §5): a pure computation over values the caller has already measured.
//!
//! The caller queries the goal's metric (buckets of the goal's granularity over the period so far, and
//! the baseline period's value) and hands the numbers to [`progress`]; nothing here knows how a metric
//! is queried or stored. Times are microseconds since the Unix epoch throughout.

use chrono::{DateTime, Datelike, LocalResult, NaiveDate, Offset, TimeDelta, TimeZone};
use chrono_tz::Tz;

/// How far a goal has got. Mirrors `sextant.v1.GoalStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GoalStatus {
    /// Before the period, or nothing measured yet (non-additive: no complete bucket with a value).
    NotStarted,
    /// The current value meets the target.
    Achieved,
    /// The period is over and the target was not met.
    Missed,
    /// The projected end value meets the target.
    OnTrack,
    /// The projection gets at least 90% of the way from baseline to target.
    AtRisk,
    OffTrack,
}

/// Which way is good: `Increase` is met when value ≥ target, `Decrease` when value ≤ target.
pub use crate::core::metric::definition::Direction;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Target {
    /// In the metric's unit ("reach 10,000 weekly active users").
    Absolute(f64),
    /// Relative to the baseline: target = baseline × (1 + r); +0.20 is "+20% vs baseline", −0.10 "−10%".
    Relative(f64),
}

/// One bucket of the goal's granularity, `[start, end)`. `value` is `None` when the metric has no value
/// there (e.g. an average over no events).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub start: i64,
    pub end: i64,
    pub value: Option<f64>,
}

/// The measured metric, independent of how it is queried.
#[derive(Debug, Clone, PartialEq)]
pub struct GoalInput {
    /// COUNT, SUM, MANUAL without semi_additive: measured as the running total over the period.
    pub additive: bool,
    pub direction: Direction,
    pub target: Target,
    /// The period `[period_start, period_end)`.
    pub period_start: i64,
    pub period_end: i64,
    /// The instant evaluated (as_of or the wall clock).
    pub now: i64,
    /// Additive: the baseline period's total. Otherwise: the baseline period's value measured the same
    /// way as `current` (its last complete bucket). `None` when the metric has no value there.
    pub baseline: Option<f64>,
    /// The goal granularity's buckets covering `[period_start, min(now, period_end))`, sorted, without
    /// overlaps, each inside the period (the caller clips a bucket that straddles a period boundary) and
    /// starting before `now`; the last one may be incomplete (`end > now`).
    pub buckets: Vec<Bucket>,
    /// Non-additive metrics: a projected end value computed elsewhere (a forecast) and its
    /// method, used instead of the least-squares line while the period runs.
    pub forecast: Option<(f64, String)>,
}

/// The result of [`progress`]. Mirrors the numbers of `GetGoalProgressResponse`.
#[derive(Debug, Clone, PartialEq)]
pub struct GoalProgress {
    /// The baseline `progress` is measured from: the input's baseline when given; for an absolute
    /// target without one, 0 for additive metrics and the first complete bucket's value otherwise
    /// (see [`progress`]). Reported as used, so `progress` can be recomputed from this response.
    pub baseline: Option<f64>,
    /// Additive: the total so far. Otherwise: the latest complete bucket's value. `None` before the
    /// period, or when that bucket has no value.
    pub current: Option<f64>,
    /// The absolute target.
    pub target: f64,
    /// Additive: current / target, the share of the period's target reached so far (for a `Decrease`
    /// goal, whose target is a cap, the share of the cap used); `None` when the target is 0. Otherwise:
    /// (current − baseline) / (target − baseline); `None` when a value is missing or target = baseline.
    /// May be negative or above 1.
    pub progress: Option<f64>,
    /// elapsed / length of the period, clamped to [0, 1].
    pub expected_progress: f64,
    /// The projected value at the end of the period; once the period is over, the measured end value.
    pub projected: Option<f64>,
    /// How `projected` was computed: "pace", "linear", a forecast model's name, or "measured"
    /// once the period is over; empty before the period starts.
    pub projection: String,
    pub status: GoalStatus,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GoalError {
    #[error("period_end: must be after period_start")]
    EmptyPeriod,
    /// `field` is e.g. `baseline`, `target` or `buckets[3].value`.
    #[error("{field}: must be a finite number")]
    NotFinite { field: String },
    #[error("buckets[{index}]: {reason}")]
    InvalidBucket { index: usize, reason: &'static str },
    #[error("baseline: required for a relative target (the metric has no value in the baseline period)")]
    MissingBaseline,
    #[error("baseline: is zero, so a relative target is undefined")]
    ZeroBaseline,
}

/// Share of the way from baseline to target a projection must reach for `AtRisk`.
const AT_RISK_SHARE: f64 = 0.9;

/// Relative slack when comparing against the target, so that a relative target computed in floating
/// point (100 × 1.1 = 110.00000000000001) is met by the round value a user expects (110).
const TOLERANCE: f64 = 1e-9;

/// Computes a goal's progress (SPEC §5, `GetGoalProgressResponse`).
///
/// Measurement:
/// - Additive metrics: `current` = sum of all bucket values so far, the incomplete one included
///   (missing = 0); `projected` = current × length / elapsed.
/// - Other metrics: `current` = the value of the latest complete bucket (`end <= now`); `projected` =
///   the least-squares line through the period's complete buckets that have a value, with x = the
///   bucket's midpoint in time (not its index: buckets differ in length — months, DST days, clipped
///   edges — and the future buckets of the period are not known, only where the period ends), evaluated
///   at the midpoint of the period's last bucket (the one containing `period_end − 1µs`). When that
///   bucket is not among the input buckets it is taken as `[max(last input bucket's end, period_end −
///   longest input bucket), period_end)`, which is exact for fixed-length granularities and within half
///   a day for months. One point gives a flat line (projection = that value).
/// - Once the period is over, `projected` is the measured end value (`current`) for both kinds.
///
/// Baseline for `progress` and `AtRisk`: the input's baseline when given. For an absolute target
/// without one (the metric had no value in the baseline period), additive metrics start from 0 (an
/// empty additive bucket is 0) and other metrics from the period's first complete bucket with a value
/// (where the goal started). A relative target needs a non-zero baseline: otherwise an error.
///
/// Status, in order:
/// 1. `NotStarted` when `now <= period_start` (nothing can be measured yet).
/// 2. `Achieved` when `current` meets the target in the goal's direction. For an additive `Decrease`
///    goal the running total only grows toward its final value, so it is decided at the end of the
///    period only (before that, a total below the target says nothing and the projection is used).
/// 3. `Missed` when the period is over.
/// 4. `NotStarted` when nothing is measured yet (non-additive: no complete bucket with a value).
/// 5. `OnTrack` when `projected` meets the target; `AtRisk` when it gets ≥ 90% of the way from baseline
///    toward the target (only meaningful when the target lies on the good side of the baseline);
///    `OffTrack` otherwise.
///
/// "Meets" is ≥ for `Increase` and ≤ for `Decrease`, with a relative slack of 1e-9.
///
/// Progress (SPEC §5): for additive metrics `current / target`, the share of the period's target
/// reached so far, to compare with `expected_progress` (the running total starts at 0 each period,
/// so measuring from the baseline would be negative for most of a period that is on track); for a
/// `Decrease` goal the target is a cap and progress the share of it used. For all others
/// `(current − baseline) / (target − baseline)`, the same in both directions, so it is positive when
/// moving toward a lower target.
pub fn progress(input: &GoalInput) -> Result<GoalProgress, GoalError> {
    validate(input)?;
    let target = match input.target {
        Target::Absolute(value) => value,
        Target::Relative(r) => match input.baseline {
            None => return Err(GoalError::MissingBaseline),
            Some(0.0) => return Err(GoalError::ZeroBaseline),
            Some(b) => b * (1.0 + r),
        },
    };
    if !target.is_finite() {
        return Err(GoalError::NotFinite { field: "target".into() });
    }

    let length = span(input.period_start, input.period_end);
    let elapsed = span(input.period_start, input.now.clamp(input.period_start, input.period_end));
    let expected_progress = (elapsed / length).clamp(0.0, 1.0);
    let started = input.now > input.period_start;
    let over = input.now >= input.period_end;

    let measured = if !started {
        Measured { current: None, projected: None, any_value: false, first_value: None, projection: String::new() }
    } else if input.additive {
        measure_additive(input, length, elapsed, over)
    } else {
        measure_latest(input, over)
    };
    let measured = match &input.forecast {
        Some((value, method)) if started && !over && !input.additive && measured.any_value && value.is_finite() => {
            Measured { projected: Some(*value), projection: method.clone(), ..measured }
        }
        _ => measured,
    };

    let baseline = match input.target {
        Target::Relative(_) => input.baseline,
        Target::Absolute(_) if input.baseline.is_some() => input.baseline,
        Target::Absolute(_) if input.additive => Some(0.0),
        Target::Absolute(_) => measured.first_value,
    };
    let share = |value: f64| -> Option<f64> {
        let b = baseline?;
        let share = (value - b) / (target - b);
        (target != b && share.is_finite()).then_some(share)
    };
    let meets = |value: f64| match input.direction {
        Direction::Increase => value >= target - TOLERANCE * target.abs(),
        Direction::Decrease => value <= target + TOLERANCE * target.abs(),
    };

    let achieved =
        measured.current.is_some_and(meets) && (over || !input.additive || input.direction == Direction::Increase);
    let status = if !started {
        GoalStatus::NotStarted
    } else if achieved {
        GoalStatus::Achieved
    } else if over {
        GoalStatus::Missed
    } else if !measured.any_value {
        GoalStatus::NotStarted
    } else {
        match measured.projected {
            Some(p) if meets(p) => GoalStatus::OnTrack,
            Some(p)
                if target_ahead(input.direction, baseline, target)
                    && share(p).is_some_and(|s| s >= AT_RISK_SHARE - TOLERANCE) =>
            {
                GoalStatus::AtRisk
            }
            _ => GoalStatus::OffTrack,
        }
    };

    Ok(GoalProgress {
        baseline,
        current: measured.current,
        target,
        progress: measured
            .current
            .and_then(|current| if input.additive { share_of_target(current, target) } else { share(current) }),
        expected_progress,
        projected: measured.projected,
        projection: measured.projection,
        status,
    })
}

/// The period of equal length just before `start`, for a goal without an explicit baseline period.
///
/// When `[start, end)` is a whole number of calendar months in `zone` (both ends at local midnight on
/// the 1st, as for a month, quarter or year), the baseline is the same number of calendar months before
/// `start`, so March's baseline is all of February. When both ends are local midnights it is the same
/// number of local calendar days before `start` (two weeks across a DST change are 335 or 337 hours,
/// and so is the baseline when it holds the change). Otherwise it is `[start − (end − start), start)`.
/// Where a DST change skips local midnight, the month starts at the transition.
pub fn default_baseline_period(start: i64, end: i64, zone: Tz) -> (i64, i64) {
    if let (Some(first), Some(last)) = (month_boundary(start, zone), month_boundary(end, zone))
        && last > first
        && let Some(from) = month_start(first - (last - first), zone)
    {
        return (from, start);
    }
    if let Some(days) = crate::core::time::whole_days_between(start, end, zone) {
        let offset = crate::core::time::CalendarOffset { months: 0, days };
        return (crate::core::time::shift_back(start, offset, zone), start);
    }
    (start.saturating_sub(end.saturating_sub(start)), start)
}

struct Measured {
    current: Option<f64>,
    projected: Option<f64>,
    /// Whether anything has been measured (non-additive: a complete bucket with a value).
    any_value: bool,
    /// Non-additive: the first complete bucket's value, the fallback baseline for absolute targets.
    first_value: Option<f64>,
    projection: String,
}

fn measure_additive(input: &GoalInput, length: f64, elapsed: f64, over: bool) -> Measured {
    let total: f64 = input.buckets.iter().filter_map(|b| b.value).sum();
    let projected = if over { total } else { total * length / elapsed };
    Measured {
        current: Some(total),
        projected: projected.is_finite().then_some(projected),
        any_value: true,
        first_value: None,
        projection: if over { "measured" } else { "pace" }.into(),
    }
}

fn measure_latest(input: &GoalInput, over: bool) -> Measured {
    let complete: Vec<&Bucket> = input.buckets.iter().filter(|b| b.end <= input.now).collect();
    let current = complete.last().and_then(|b| b.value);
    let points: Vec<(f64, f64)> =
        complete.iter().filter_map(|b| b.value.map(|v| (midpoint(input.period_start, b.start, b.end), v))).collect();
    let projected = if over {
        current
    } else {
        let x = last_bucket_midpoint(input);
        least_squares_at(&points, x).filter(|p| p.is_finite())
    };
    Measured {
        current,
        projected,
        any_value: !points.is_empty(),
        first_value: points.first().map(|&(_, v)| v),
        projection: if over { "measured" } else { "linear" }.into(),
    }
}

/// Midpoint of the period's last bucket (the one containing `period_end − 1µs`), relative to
/// `period_start`. Estimated when that bucket lies in the future (see [`progress`]).
fn last_bucket_midpoint(input: &GoalInput) -> f64 {
    let end = input.period_end;
    let start = match input.buckets.last() {
        Some(last) if last.end == end => last.start,
        Some(last) => {
            let longest = input.buckets.iter().map(|b| b.end - b.start).max().unwrap_or(0);
            last.end.max(end.saturating_sub(longest))
        }
        None => input.period_start,
    };
    midpoint(input.period_start, start, end)
}

/// Value at `x` of the least-squares line through `points`; flat (the mean) when all x coincide.
fn least_squares_at(points: &[(f64, f64)], x: f64) -> Option<f64> {
    if points.is_empty() {
        return None;
    }
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    if sxx == 0.0 { Some(mean_y) } else { Some(mean_y + sxy / sxx * (x - mean_x)) }
}

/// An additive goal's progress: the share of the target reached (or, for a cap, used).
fn share_of_target(current: f64, target: f64) -> Option<f64> {
    let share = current / target;
    (target != 0.0 && share.is_finite()).then_some(share)
}

/// Whether the target lies on the good side of the baseline, so "90% of the way" means something.
fn target_ahead(direction: Direction, baseline: Option<f64>, target: f64) -> bool {
    baseline.is_some_and(|b| match direction {
        Direction::Increase => target > b,
        Direction::Decrease => target < b,
    })
}

/// `to − from` as f64, without i64 overflow.
fn span(from: i64, to: i64) -> f64 {
    (i128::from(to) - i128::from(from)) as f64
}

/// Midpoint of `[start, end)` relative to `origin`.
fn midpoint(origin: i64, start: i64, end: i64) -> f64 {
    span(origin, start) + span(start, end) / 2.0
}

fn validate(input: &GoalInput) -> Result<(), GoalError> {
    let not_finite = |field: String| GoalError::NotFinite { field };
    if input.period_end <= input.period_start {
        return Err(GoalError::EmptyPeriod);
    }
    if input.baseline.is_some_and(|b| !b.is_finite()) {
        return Err(not_finite("baseline".into()));
    }
    let (Target::Absolute(t) | Target::Relative(t)) = input.target;
    if !t.is_finite() {
        return Err(not_finite("target".into()));
    }
    let mut previous_end = input.period_start;
    for (index, b) in input.buckets.iter().enumerate() {
        let reason = if b.end <= b.start {
            Some("end must be after start")
        } else if b.start < input.period_start || b.end > input.period_end {
            Some("outside the period [period_start, period_end)")
        } else if b.start < previous_end {
            Some("overlaps or precedes the previous bucket")
        } else if b.start >= input.now {
            Some("starts at or after now")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(GoalError::InvalidBucket { index, reason });
        }
        if b.value.is_some_and(|v| !v.is_finite()) {
            return Err(not_finite(format!("buckets[{index}].value")));
        }
        previous_end = b.end;
    }
    Ok(())
}

/// The month number (year × 12 + month − 1) when `t` is the start of a local calendar month in `zone`.
fn month_boundary(t: i64, zone: Tz) -> Option<i32> {
    let local = DateTime::from_timestamp_micros(t)?.with_timezone(&zone);
    let month = local.year().checked_mul(12)?.checked_add(local.month0() as i32)?;
    (month_start(month, zone)? == t).then_some(month)
}

/// The instant local midnight on the 1st of month number `month` (year × 12 + month − 1) begins in
/// `zone`; the earlier one if repeated, the DST transition if skipped.
fn month_start(month: i32, zone: Tz) -> Option<i64> {
    let date = NaiveDate::from_ymd_opt(month.div_euclid(12), month.rem_euclid(12) as u32 + 1, 1)?;
    let midnight = date.and_hms_opt(0, 0, 0)?;
    match zone.from_local_datetime(&midnight) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Some(t.timestamp_micros()),
        LocalResult::None => {
            // Skipped: read the wall time with the offset in force before the gap, which lands on
            // the transition itself.
            let before = midnight.checked_sub_signed(TimeDelta::days(1))?;
            let offset = zone.offset_from_local_datetime(&before).earliest()?.fix().local_minus_utc();
            midnight.and_utc().timestamp_micros().checked_sub(i64::from(offset) * 1_000_000)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000_000;
    const DAY: i64 = 24 * HOUR;
    const WEEK: i64 = 7 * DAY;
    /// 2026-01-01T00:00:00Z.
    const T0: i64 = 1_767_225_600_000_000;

    fn assert_close(actual: Option<f64>, expected: f64) {
        let actual = actual.unwrap_or_else(|| panic!("expected {expected}, got None"));
        assert!((actual - expected).abs() <= 1e-9 * expected.abs().max(1.0), "expected {expected}, got {actual}");
    }

    /// Consecutive buckets of `width` from `start`.
    fn series(start: i64, width: i64, values: &[Option<f64>]) -> Vec<Bucket> {
        values
            .iter()
            .enumerate()
            .map(|(i, &value)| Bucket { start: start + i as i64 * width, end: start + (i as i64 + 1) * width, value })
            .collect()
    }

    fn some(values: &[f64]) -> Vec<Option<f64>> {
        values.iter().copied().map(Some).collect()
    }

    /// Additive (COUNT) goal over the 10 days [T0, T0 + 10d), DAY buckets; `now` = T0 + `days`.
    fn additive(target: Target, direction: Direction, baseline: Option<f64>, days: f64, values: &[f64]) -> GoalInput {
        GoalInput {
            additive: true,
            direction,
            target,
            period_start: T0,
            period_end: T0 + 10 * DAY,
            now: T0 + (days * DAY as f64) as i64,
            baseline,
            buckets: series(T0, DAY, &some(values)),
            forecast: None,
        }
    }

    /// Non-additive (UNIQUE_USERS, WAU) goal over the 4 weeks [T0, T0 + 28d), WEEK buckets; `now` =
    /// T0 + `days`. Bucket midpoints: 3.5d, 10.5d, 17.5d, 24.5d — equally spaced, so the fit in days
    /// is the fit in weeks with x = 0, 1, 2, 3 and the projection is evaluated at x = 3.
    fn weekly(target: Target, direction: Direction, baseline: Option<f64>, days: i64, values: &[f64]) -> GoalInput {
        GoalInput {
            additive: false,
            direction,
            target,
            period_start: T0,
            period_end: T0 + 4 * WEEK,
            now: T0 + days * DAY,
            baseline,
            buckets: series(T0, WEEK, &some(values)),
            forecast: None,
        }
    }

    fn run(input: &GoalInput) -> GoalProgress {
        progress(input).expect("valid input")
    }

    #[test]
    fn a_forecast_replaces_the_line_for_non_additive_metrics_only() {
        let mut input = weekly(Target::Absolute(200.0), Direction::Increase, Some(100.0), 15, &[110.0, 120.0]);
        assert_eq!(run(&input).projection, "linear");
        input.forecast = Some((205.0, "ETS(A,Ad,N)".into()));
        let p = run(&input);
        assert_eq!((p.projected, p.projection.as_str(), p.status), (Some(205.0), "ETS(A,Ad,N)", GoalStatus::OnTrack));
        let mut additive = additive(Target::Absolute(1000.0), Direction::Increase, None, 4.0, &[100.0; 4]);
        additive.forecast = Some((5.0, "ETS(A,Ad,N)".into()));
        assert_eq!(run(&additive).projection, "pace");
    }

    // ---- additive metrics: total so far, projection = current × length / elapsed ----

    #[test]
    fn additive_not_started_before_the_period() {
        let mut input = additive(Target::Absolute(1000.0), Direction::Increase, None, 0.0, &[]);
        input.now = T0 - HOUR;
        let p = run(&input);
        assert_eq!(p.status, GoalStatus::NotStarted);
        assert_eq!((p.current, p.projected, p.progress), (None, None, None));
        assert_eq!(p.expected_progress, 0.0);
        assert_eq!(p.target, 1000.0);
        // Exactly at the start nothing has elapsed either.
        input.now = T0;
        assert_eq!(run(&input).status, GoalStatus::NotStarted);
    }

    #[test]
    fn additive_on_track() {
        // 4 of 10 days: total 100 + 120 + 90 + 110 = 420; projected 420 × 10 / 4 = 1050 ≥ 1000.
        // Absolute target without baseline: baseline 0, progress 420 / 1000 = 0.42; expected 4 / 10.
        let p = run(&additive(Target::Absolute(1000.0), Direction::Increase, None, 4.0, &[100.0, 120.0, 90.0, 110.0]));
        assert_eq!(p.status, GoalStatus::OnTrack);
        assert_eq!(p.baseline, Some(0.0));
        assert_close(p.current, 420.0);
        assert_close(p.projected, 1050.0);
        assert_close(p.progress, 0.42);
        assert_close(Some(p.expected_progress), 0.4);
    }

    #[test]
    fn additive_at_risk() {
        // Total 380 after 4 days → projected 950; (950 − 0) / (1000 − 0) = 0.95 ≥ 0.9.
        let p = run(&additive(Target::Absolute(1000.0), Direction::Increase, None, 4.0, &[95.0; 4]));
        assert_eq!(p.status, GoalStatus::AtRisk);
        assert_close(p.projected, 950.0);
    }

    #[test]
    fn additive_off_track() {
        // Total 300 after 4 days → projected 750; 750 / 1000 = 0.75 < 0.9.
        let p = run(&additive(Target::Absolute(1000.0), Direction::Increase, None, 4.0, &[75.0; 4]));
        assert_eq!(p.status, GoalStatus::OffTrack);
        assert_close(p.projected, 750.0);
    }

    #[test]
    fn additive_counts_the_incomplete_bucket_and_missing_values_as_zero() {
        // now = T0 + 4.5d: days 1..4 = 100, 100, None (= 0), 200, day 5 so far 50 → total 450.
        // projected 450 × 10 / 4.5 = 1000 — meets exactly → ON_TRACK.
        let mut input = additive(Target::Absolute(1000.0), Direction::Increase, None, 4.5, &[]);
        input.buckets = series(T0, DAY, &[Some(100.0), Some(100.0), None, Some(200.0), Some(50.0)]);
        let p = run(&input);
        assert_close(p.current, 450.0);
        assert_close(p.projected, 1000.0);
        assert_close(Some(p.expected_progress), 0.45);
        assert_eq!(p.status, GoalStatus::OnTrack);
    }

    #[test]
    fn additive_achieved_during_the_period_once_the_total_meets_the_target() {
        // 600 + 450 = 1050 ≥ 1000 after only 2 days.
        let p = run(&additive(Target::Absolute(1000.0), Direction::Increase, None, 2.0, &[600.0, 450.0]));
        assert_eq!(p.status, GoalStatus::Achieved);
        assert_close(p.progress, 1.05);
    }

    #[test]
    fn additive_missed_and_achieved_after_the_period() {
        // 10 days of 90 = 900 < 1000, evaluated a day after the end: MISSED, projected = current = 900.
        let p = run(&additive(Target::Absolute(1000.0), Direction::Increase, None, 11.0, &[90.0; 10]));
        assert_eq!(p.status, GoalStatus::Missed);
        assert_close(p.projected, 900.0);
        assert_close(p.progress, 0.9);
        assert_eq!(p.expected_progress, 1.0);
        // 10 days of 100 = 1000: ACHIEVED.
        let p = run(&additive(Target::Absolute(1000.0), Direction::Increase, None, 11.0, &[100.0; 10]));
        assert_eq!(p.status, GoalStatus::Achieved);
    }

    #[test]
    fn additive_relative_target_plus_20_percent() {
        // "+20% signups vs the previous period": baseline total 1000 → target 1000 × 1.2 = 1200.
        // Day 5 of 10: total 5 × 130 = 650 → projected 650 × 10 / 5 = 1300 ≥ 1200 → ON_TRACK.
        // progress = 650 / 1200 (the share of the target reached, against an expected 0.5); measured
        // from the baseline it would be (650 − 1000) / (1200 − 1000) = −1.75 on a goal on track.
        let p = run(&additive(Target::Relative(0.20), Direction::Increase, Some(1000.0), 5.0, &[130.0; 5]));
        assert_close(Some(p.target), 1200.0);
        assert_eq!(p.baseline, Some(1000.0));
        assert_close(p.projected, 1300.0);
        assert_close(p.progress, 650.0 / 1200.0);
        assert_close(Some(p.expected_progress), 0.5);
        assert_eq!(p.status, GoalStatus::OnTrack);
        // Day 5 total 560 → projected 1120; (1120 − 1000) / 200 = 0.6 → OFF_TRACK.
        let p = run(&additive(Target::Relative(0.20), Direction::Increase, Some(1000.0), 5.0, &[112.0; 5]));
        assert_eq!(p.status, GoalStatus::OffTrack);
        // Day 5 total 595 → projected 1190; (1190 − 1000) / 200 = 0.95 → AT_RISK.
        let p = run(&additive(Target::Relative(0.20), Direction::Increase, Some(1000.0), 5.0, &[119.0; 5]));
        assert_eq!(p.status, GoalStatus::AtRisk);
    }

    #[test]
    fn relative_target_is_met_despite_floating_point() {
        // 100 × (1 + 0.1) = 110.00000000000001 in f64; a total of exactly 110 meets it.
        let p = run(&additive(Target::Relative(0.1), Direction::Increase, Some(100.0), 2.0, &[55.0, 55.0]));
        assert_eq!(p.status, GoalStatus::Achieved);
    }

    #[test]
    fn additive_decrease_goal() {
        // "−10% support tickets": baseline total 1000 → target 1000 × 0.9 = 900, met when total ≤ 900.
        let goal = |days: f64, values: &[f64]| {
            run(&additive(Target::Relative(-0.10), Direction::Decrease, Some(1000.0), days, values))
        };
        // Day 4: total 4 × 85 = 340 ≤ 900, but the period is young: not ACHIEVED. projected
        // 340 × 10 / 4 = 850 ≤ 900 → ON_TRACK. The target is a cap: progress = 340 / 900 of it used.
        let p = goal(4.0, &[85.0; 4]);
        assert_close(Some(p.target), 900.0);
        assert_close(p.projected, 850.0);
        assert_close(p.progress, 340.0 / 900.0);
        assert_eq!(p.status, GoalStatus::OnTrack);
        // Total 363 → projected 907.5; (907.5 − 1000) / (900 − 1000) = 0.925 ≥ 0.9 → AT_RISK.
        let p = goal(4.0, &[90.75; 4]);
        assert_close(p.projected, 907.5);
        assert_eq!(p.status, GoalStatus::AtRisk);
        // Total 370 → projected 925; (925 − 1000) / −100 = 0.75 → OFF_TRACK.
        assert_eq!(goal(4.0, &[92.5; 4]).status, GoalStatus::OffTrack);
        // After the period: 10 × 88 = 880 ≤ 900 → ACHIEVED; 10 × 95 = 950 → MISSED, 950 / 900 used.
        assert_eq!(goal(10.0, &[88.0; 10]).status, GoalStatus::Achieved);
        let p = goal(10.0, &[95.0; 10]);
        assert_eq!(p.status, GoalStatus::Missed);
        assert_close(p.progress, 950.0 / 900.0);
        // A target of 0 (an absolute cap of nothing) leaves progress undefined.
        let p = run(&additive(Target::Absolute(0.0), Direction::Decrease, None, 4.0, &[1.0; 4]));
        assert_eq!(p.progress, None);
    }

    // ---- non-additive metrics: latest complete bucket, least-squares projection ----

    #[test]
    fn non_additive_not_started_without_a_complete_bucket() {
        // Day 5 of week 1: the only bucket [0, 7d) is incomplete → nothing measured.
        // expected progress 5 / 28.
        let p = run(&weekly(Target::Absolute(10_000.0), Direction::Increase, Some(8000.0), 5, &[4000.0]));
        assert_eq!(p.status, GoalStatus::NotStarted);
        assert_eq!((p.current, p.projected, p.progress), (None, None, None));
        assert_close(Some(p.expected_progress), 5.0 / 28.0);
        // Before the period.
        let mut input = weekly(Target::Absolute(10_000.0), Direction::Increase, Some(8000.0), 0, &[]);
        input.now = T0 - DAY;
        assert_eq!(run(&input).status, GoalStatus::NotStarted);
    }

    #[test]
    fn least_squares_projection_on_a_known_series() {
        // 3 complete weeks 8200, 8400, 9100 at x = 0, 1, 2 (weeks): mean x = 1, mean y = 25700 / 3 =
        // 8566.67; Sxy = (−1)(8200 − 8566.67) + (1)(9100 − 8566.67) = 366.67 + 533.33 = 900; Sxx = 2;
        // slope 450 per week. At the last week (x = 3): 8566.67 + 2 × 450 = 9466.67.
        // Baseline 8000, target 10000: share (9466.67 − 8000) / 2000 = 0.733 → OFF_TRACK.
        // current 9100 → progress (9100 − 8000) / 2000 = 0.55; expected 21 / 28 = 0.75.
        let p =
            run(&weekly(Target::Absolute(10_000.0), Direction::Increase, Some(8000.0), 21, &[8200.0, 8400.0, 9100.0]));
        assert_close(p.projected, 28_400.0 / 3.0);
        assert_close(p.current, 9100.0);
        assert_close(p.progress, 0.55);
        assert_close(Some(p.expected_progress), 0.75);
        assert_eq!(p.status, GoalStatus::OffTrack);
    }

    #[test]
    fn non_additive_on_track_and_at_risk() {
        // 8700, 9200, 9600: mean 27500 / 3 = 9166.67; Sxy = 466.67 + 433.33 = 900 → slope 450;
        // projected 9166.67 + 900 = 10066.67 ≥ 10000 → ON_TRACK (current 9600 not yet there).
        let p =
            run(&weekly(Target::Absolute(10_000.0), Direction::Increase, Some(8000.0), 21, &[8700.0, 9200.0, 9600.0]));
        assert_close(p.projected, 30_200.0 / 3.0);
        assert_eq!(p.status, GoalStatus::OnTrack);
        // 8600, 9000, 9500: mean 27100 / 3 = 9033.33; Sxy = 433.33 + 466.67 = 900 → slope 450;
        // projected 9933.33; share (9933.33 − 8000) / 2000 = 0.967 ≥ 0.9 → AT_RISK.
        let p =
            run(&weekly(Target::Absolute(10_000.0), Direction::Increase, Some(8000.0), 21, &[8600.0, 9000.0, 9500.0]));
        assert_close(p.projected, 29_800.0 / 3.0);
        assert_eq!(p.status, GoalStatus::AtRisk);
    }

    #[test]
    fn non_additive_achieved_uses_the_latest_complete_bucket_only() {
        // Latest complete week 10100 ≥ 10000 → ACHIEVED.
        let p = run(&weekly(Target::Absolute(10_000.0), Direction::Increase, Some(8000.0), 14, &[9500.0, 10_100.0]));
        assert_eq!(p.status, GoalStatus::Achieved);
        assert_close(p.progress, 1.05);
        // Week 2 met it but week 3 (the latest) fell back to 9800: not ACHIEVED. Fit: mean 29400 / 3
        // = 9800, Sxy = (−1)(9500 − 9800) + (1)(9800 − 9800) = 300, slope 150 → projected 9800 + 300
        // = 10100 ≥ 10000 → ON_TRACK.
        let p = run(&weekly(
            Target::Absolute(10_000.0),
            Direction::Increase,
            Some(8000.0),
            21,
            &[9500.0, 10_100.0, 9800.0],
        ));
        assert_close(p.projected, 10_100.0);
        assert_eq!(p.status, GoalStatus::OnTrack);
    }

    #[test]
    fn non_additive_ignores_the_incomplete_bucket() {
        // now = day 24: week 4 [21d, 28d) holds a partial 20000 that must not count.
        // current = week 3 = 9100; fit as in the known series → 9466.67.
        let input = weekly(
            Target::Absolute(10_000.0),
            Direction::Increase,
            Some(8000.0),
            24,
            &[8200.0, 8400.0, 9100.0, 20_000.0],
        );
        let p = run(&input);
        assert_close(p.current, 9100.0);
        assert_close(p.projected, 28_400.0 / 3.0);
        assert_eq!(p.status, GoalStatus::OffTrack);
    }

    #[test]
    fn non_additive_projection_estimates_future_buckets() {
        // Two weeks 8000, 8500 (x = 0, 1; slope 500/week); weeks 3 and 4 are in the future. The last
        // bucket is taken as [max(14d, 28d − 7d), 28d) = [21d, 28d), x = 3 → 8000 + 3 × 500 = 9500.
        let p = run(&weekly(Target::Absolute(10_000.0), Direction::Increase, Some(8000.0), 14, &[8000.0, 8500.0]));
        assert_close(p.projected, 9500.0);
        // share (9500 − 8000) / 2000 = 0.75 → OFF_TRACK.
        assert_eq!(p.status, GoalStatus::OffTrack);
    }

    #[test]
    fn one_complete_bucket_gives_a_flat_projection() {
        let p = run(&weekly(Target::Absolute(10_000.0), Direction::Increase, Some(8000.0), 7, &[9000.0]));
        assert_close(p.projected, 9000.0);
        // share 1000 / 2000 = 0.5 → OFF_TRACK.
        assert_eq!(p.status, GoalStatus::OffTrack);
    }

    #[test]
    fn non_additive_missed_after_the_period() {
        // 4 weeks, last 9900 < 10000, evaluated at day 30 → MISSED; projected = measured end value.
        let input = weekly(
            Target::Absolute(10_000.0),
            Direction::Increase,
            Some(8000.0),
            30,
            &[9000.0, 9300.0, 9600.0, 9900.0],
        );
        let p = run(&input);
        assert_eq!(p.status, GoalStatus::Missed);
        assert_close(p.current, 9900.0);
        assert_close(p.projected, 9900.0);
        assert_close(p.progress, 0.95);
        assert_eq!(p.expected_progress, 1.0);
    }

    #[test]
    fn least_squares_uses_bucket_midpoints_for_unequal_months() {
        // MONTH buckets over Feb–Apr 2026 (UTC): Feb [0, 28d), Mar [28d, 59d), Apr [59d, 89d);
        // midpoints 14d, 43.5d, 74d. now = 59d (Apr 1): Feb = 100, Mar = 159 complete.
        // slope (159 − 100) / (43.5 − 14) = 59 / 29.5 = 2 per day; Apr (not yet in the input) is
        // [max(59d, 89d − 31d), 89d) = [59d, 89d), midpoint 74d → 159 + (74 − 43.5) × 2 = 220.
        // (With x = bucket index it would be 159 + 59 = 218.)
        let start = T0 + 31 * DAY;
        let input = GoalInput {
            additive: false,
            direction: Direction::Increase,
            target: Target::Absolute(200.0),
            period_start: start,
            period_end: start + 89 * DAY,
            now: start + 59 * DAY,
            baseline: Some(100.0),
            buckets: vec![
                Bucket { start, end: start + 28 * DAY, value: Some(100.0) },
                Bucket { start: start + 28 * DAY, end: start + 59 * DAY, value: Some(159.0) },
            ],
            forecast: None,
        };
        let p = run(&input);
        assert_close(p.projected, 220.0);
        assert_eq!(p.status, GoalStatus::OnTrack);
        // The same with the incomplete April bucket present: its real midpoint is used, same answer.
        let mut with_april = input.clone();
        with_april.now += DAY;
        with_april.buckets.push(Bucket { start: start + 59 * DAY, end: start + 89 * DAY, value: Some(7.0) });
        assert_close(run(&with_april).projected, 220.0);
    }

    #[test]
    fn non_additive_absolute_target_without_baseline_starts_from_the_first_complete_bucket() {
        // No baseline: the first complete bucket (8200) is the baseline → progress
        // (9100 − 8200) / (10000 − 8200) = 0.5; projected 9466.67 → share 1266.67 / 1800 = 0.704.
        let p = run(&weekly(Target::Absolute(10_000.0), Direction::Increase, None, 21, &[8200.0, 8400.0, 9100.0]));
        assert_eq!(p.baseline, Some(8200.0));
        assert_close(p.progress, 0.5);
        assert_eq!(p.status, GoalStatus::OffTrack);
    }

    #[test]
    fn non_additive_missing_values() {
        // The latest complete week has no value: current unset, the fit uses weeks 1–2 (8000, 8500):
        // slope 500/week → projected at x = 3: 9500.
        let mut input = weekly(Target::Absolute(10_000.0), Direction::Increase, Some(8000.0), 21, &[]);
        input.buckets = series(T0, WEEK, &[Some(8000.0), Some(8500.0), None]);
        let p = run(&input);
        assert_eq!((p.current, p.progress), (None, None));
        assert_close(p.projected, 9500.0);
        assert_eq!(p.status, GoalStatus::OffTrack);
        // No complete week with a value yet: still NOT_STARTED.
        input.buckets = series(T0, WEEK, &[None, None, None]);
        assert_eq!(run(&input).status, GoalStatus::NotStarted);
    }

    #[test]
    fn non_additive_decrease_goal() {
        // "−20% churn": baseline 0.05 → target 0.05 × 0.8 = 0.04, met when ≤ 0.04.
        let goal = |days: i64, values: &[f64]| {
            run(&weekly(Target::Relative(-0.20), Direction::Decrease, Some(0.05), days, values))
        };
        // 0.047, 0.044, 0.042: mean 0.044333; Sxy = (−1)(0.002667) + (1)(−0.002333) = −0.005 → slope
        // −0.0025; projected 0.044333 − 0.005 = 0.039333 ≤ 0.04 → ON_TRACK.
        // progress (0.042 − 0.05) / (0.04 − 0.05) = 0.8 (positive: moving toward the lower target).
        let p = goal(21, &[0.047, 0.044, 0.042]);
        assert_close(Some(p.target), 0.04);
        assert_close(p.projected, 0.118 / 3.0);
        assert_close(p.progress, 0.8);
        assert_eq!(p.status, GoalStatus::OnTrack);
        // 0.048, 0.045, 0.043: slope −0.0025; projected 0.045333 − 0.005 = 0.040333;
        // share (0.040333 − 0.05) / (0.04 − 0.05) = 0.967 → AT_RISK.
        let p = goal(21, &[0.048, 0.045, 0.043]);
        assert_close(p.projected, 0.121 / 3.0);
        assert_eq!(p.status, GoalStatus::AtRisk);
        // 0.049, 0.046, 0.044: projected 0.046333 − 0.005 = 0.041333; share 0.867 → OFF_TRACK.
        assert_eq!(goal(21, &[0.049, 0.046, 0.044]).status, GoalStatus::OffTrack);
        // Latest week 0.039 ≤ 0.04 → ACHIEVED, even mid-period (not additive).
        assert_eq!(goal(14, &[0.045, 0.039]).status, GoalStatus::Achieved);
        // Over, last week 0.041 → MISSED.
        assert_eq!(goal(28, &[0.048, 0.045, 0.043, 0.041]).status, GoalStatus::Missed);
    }

    #[test]
    fn relative_target_plus_15_percent_month_over_month() {
        // D7 retention, MONTH granularity, period March 2026 (UTC: Mar 1 = T0 + 59d, 31 days);
        // baseline February = 0.40 → target 0.40 × 1.15 = 0.46.
        let march = T0 + 59 * DAY;
        let mut input = GoalInput {
            additive: false,
            direction: Direction::Increase,
            target: Target::Relative(0.15),
            period_start: march,
            period_end: march + 31 * DAY,
            now: march + 14 * DAY,
            baseline: Some(0.40),
            buckets: vec![Bucket { start: march, end: march + 31 * DAY, value: Some(0.43) }],
            forecast: None,
        };
        // Mid-March the only bucket is incomplete: NOT_STARTED, expected 14 / 31.
        let p = run(&input);
        assert_close(Some(p.target), 0.46);
        assert_eq!(p.status, GoalStatus::NotStarted);
        assert_close(Some(p.expected_progress), 14.0 / 31.0);
        // April 2nd, March complete at 0.47 ≥ 0.46 → ACHIEVED; progress (0.47 − 0.40) / 0.06 = 1.1667.
        input.now = march + 32 * DAY;
        input.buckets[0].value = Some(0.47);
        let p = run(&input);
        assert_eq!(p.status, GoalStatus::Achieved);
        assert_close(p.progress, 0.07 / 0.06);
        // At 0.45 → MISSED.
        input.buckets[0].value = Some(0.45);
        assert_eq!(run(&input).status, GoalStatus::Missed);
    }

    #[test]
    fn target_equal_to_baseline_leaves_progress_undefined() {
        // Target 8000 = baseline: progress is 0 / 0 → None; projected 9500 meets ≥ 8000 anyway.
        let p = run(&weekly(Target::Absolute(8000.0), Direction::Increase, Some(8000.0), 14, &[7000.0, 7500.0]));
        assert_eq!(p.progress, None);
        assert_eq!(p.status, GoalStatus::OnTrack);
    }

    // ---- errors ----

    #[test]
    fn errors() {
        let ok = weekly(Target::Absolute(10_000.0), Direction::Increase, Some(8000.0), 14, &[8000.0, 8500.0]);
        let err = |f: &dyn Fn(&mut GoalInput)| {
            let mut input = ok.clone();
            f(&mut input);
            progress(&input).expect_err("invalid input").to_string()
        };
        assert_eq!(err(&|i| i.period_end = i.period_start), "period_end: must be after period_start");
        assert_eq!(err(&|i| i.baseline = Some(f64::NAN)), "baseline: must be a finite number");
        assert_eq!(err(&|i| i.target = Target::Absolute(f64::INFINITY)), "target: must be a finite number");
        assert_eq!(err(&|i| i.target = Target::Relative(f64::NAN)), "target: must be a finite number");
        assert_eq!(err(&|i| i.buckets[1].value = Some(f64::NAN)), "buckets[1].value: must be a finite number");
        assert_eq!(err(&|i| i.buckets[0].end = i.buckets[0].start), "buckets[0]: end must be after start");
        assert_eq!(err(&|i| i.buckets[0].start -= DAY), "buckets[0]: outside the period [period_start, period_end)");
        assert_eq!(err(&|i| i.buckets.swap(0, 1)), "buckets[1]: overlaps or precedes the previous bucket");
        assert_eq!(err(&|i| i.now = T0 + 7 * DAY), "buckets[1]: starts at or after now");
        assert!(
            err(&|i| {
                i.target = Target::Relative(0.2);
                i.baseline = None;
            })
            .starts_with("baseline: required for a relative target")
        );
        assert_eq!(
            err(&|i| {
                i.target = Target::Relative(0.2);
                i.baseline = Some(0.0);
            }),
            "baseline: is zero, so a relative target is undefined"
        );
        assert_eq!(
            err(&|i| {
                i.target = Target::Relative(1.0);
                i.baseline = Some(f64::MAX);
            }),
            "target: must be a finite number"
        );
        // An absolute target needs no baseline.
        let mut input = ok.clone();
        input.baseline = None;
        assert!(progress(&input).is_ok());
    }

    // ---- default baseline period ----

    fn at(zone: Tz, y: i32, m: u32, d: u32, h: u32) -> i64 {
        zone.with_ymd_and_hms(y, m, d, h, 0, 0).single().expect("unambiguous").timestamp_micros()
    }

    fn utc(y: i32, m: u32, d: u32, h: u32) -> i64 {
        at(Tz::UTC, y, m, d, h)
    }

    #[test]
    fn baseline_of_a_month_is_the_previous_calendar_month() {
        let berlin = Tz::Europe__Berlin;
        // March 2026 in Berlin: 2026-03-01T00:00+01:00 = 02-28T23:00Z to 2026-04-01T00:00+02:00 (DST
        // since Mar 29) = 03-31T22:00Z. Baseline February: 2026-02-01T00:00+01:00 = 01-31T23:00Z — 28
        // days, not March's 31 days less an hour.
        let (start, end) = (at(berlin, 2026, 3, 1, 0), at(berlin, 2026, 4, 1, 0));
        assert_eq!((start, end), (utc(2026, 2, 28, 23), utc(2026, 3, 31, 22)));
        assert_eq!(default_baseline_period(start, end, berlin), (utc(2026, 1, 31, 23), start));
        // Q1 2026 → Q4 2025: 2025-10-01T00:00+02:00 = 09-30T22:00Z.
        let (start, end) = (at(berlin, 2026, 1, 1, 0), at(berlin, 2026, 4, 1, 0));
        assert_eq!(default_baseline_period(start, end, berlin), (utc(2025, 9, 30, 22), start));
        // The year 2026 → the year 2025.
        let (start, end) = (at(berlin, 2026, 1, 1, 0), at(berlin, 2027, 1, 1, 0));
        assert_eq!(default_baseline_period(start, end, berlin), (at(berlin, 2025, 1, 1, 0), start));
        // March 2026 in UTC → February 2026 in UTC.
        assert_eq!(
            default_baseline_period(utc(2026, 3, 1, 0), utc(2026, 4, 1, 0), Tz::UTC),
            (utc(2026, 2, 1, 0), utc(2026, 3, 1, 0))
        );
    }

    #[test]
    fn baseline_of_other_periods_has_the_same_duration() {
        let berlin = Tz::Europe__Berlin;
        // 10 days [2026-03-10, 2026-03-20) UTC → [2026-02-28, 2026-03-10) (Feb has 28 days: 10 − 10).
        assert_eq!(
            default_baseline_period(utc(2026, 3, 10, 0), utc(2026, 3, 20, 0), Tz::UTC),
            (utc(2026, 2, 28, 0), utc(2026, 3, 10, 0))
        );
        // March at UTC midnights is not whole months in Berlin: 31 days before 03-01T00:00Z = 01-29.
        assert_eq!(
            default_baseline_period(utc(2026, 3, 1, 0), utc(2026, 4, 1, 0), berlin),
            (utc(2026, 1, 29, 0), utc(2026, 3, 1, 0))
        );
        // From the 1st to the 15th: only the start is a month boundary → 14 days before.
        let (start, end) = (at(berlin, 2026, 3, 1, 0), at(berlin, 2026, 3, 15, 0));
        assert_eq!(default_baseline_period(start, end, berlin), (start - 14 * DAY, start));
        // A reversed range does not panic: the same (negative) duration arithmetic.
        assert_eq!(default_baseline_period(end, start, berlin), (end + 14 * DAY, end));
        // Two local weeks holding the spring DST change (335 hours) get the two local weeks
        // before (336 hours), not a baseline starting at 01:00.
        let (start, end) = (at(berlin, 2026, 3, 23, 0), at(berlin, 2026, 4, 6, 0));
        assert_eq!(end - start, 14 * DAY - HOUR);
        assert_eq!(default_baseline_period(start, end, berlin), (at(berlin, 2026, 3, 9, 0), start));
        // And two weeks after it get the two weeks holding it.
        let (start, end) = (at(berlin, 2026, 4, 6, 0), at(berlin, 2026, 4, 20, 0));
        assert_eq!(default_baseline_period(start, end, berlin), (at(berlin, 2026, 3, 23, 0), start));
    }
}
