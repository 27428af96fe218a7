//! ForecastMetric (SPEC §16): exponential smoothing with additive errors, a damped additive
//! trend and additive seasonality, ETS(A,Ad,A), fitted by maximum likelihood, with prediction
//! intervals; simpler models when the history is short.
//!
//! The `augurs-ets` crate was considered: its 0.10 release panics on seasonal models
//! (`unimplemented!`), so the model is written here (Hyndman et al., *Forecasting with
//! Exponential Smoothing*, 2008, ch. 2 and 6). With additive errors the likelihood,
//! concentrated over σ², is −n/2·ln(SSE/n), so maximising it means minimising the one-step
//! squared errors over the smoothing parameters and the initial states, done here by
//! Nelder–Mead from several starts.

use crate::core::metric::scan::Point;
use crate::core::model::Micros;
use crate::core::time::Granularity;
use crate::error::{Error, Result};

pub const MAX_HORIZON: u32 = 1000;
/// Fewer points than this fit only the level (simple exponential smoothing).
const MIN_TREND_POINTS: usize = 10;
/// Fewer points than this: the last value (naive).
const MIN_SMOOTHING_POINTS: usize = 3;

/// The season used when none is given (SPEC §16).
pub fn default_season(granularity: Granularity) -> u32 {
    match granularity {
        Granularity::Hour => 24,
        Granularity::Day => 7,
        Granularity::Week => 52,
        Granularity::Month => 12,
        Granularity::Quarter => 4,
        Granularity::Total => 1,
    }
}

/// Which components a model has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// The last value.
    Naive,
    /// Level only: ETS(A,N,N).
    Level,
    /// Level and damped trend: ETS(A,Ad,N).
    DampedTrend,
    /// ETS(A,Ad,A) with the season length.
    Seasonal(usize),
}

/// A fitted model: smoothing parameters and the states after the last observation.
#[derive(Debug, Clone, PartialEq)]
pub struct Fit {
    shape: Shape,
    pub alpha: f64,
    pub beta: f64,
    pub gamma: f64,
    pub phi: f64,
    level: f64,
    trend: f64,
    /// The last `m` seasonal states, oldest first (empty without a season).
    season: Vec<f64>,
    /// One-step error variance used by the intervals (see `recent_variance`).
    pub sigma2: f64,
    pub method: String,
}

/// One forecast step with its prediction intervals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ForecastValue {
    pub value: f64,
    pub lower_80: f64,
    pub upper_80: f64,
    pub lower_95: f64,
    pub upper_95: f64,
}

/// z-values of the central 80% and 95% normal intervals.
const Z80: f64 = 1.281_551_565_544_600_5;
const Z95: f64 = 1.959_963_984_540_054;

/// Parameters and initial states of one candidate, as the optimiser sees them.
struct Candidate {
    alpha: f64,
    beta: f64,
    gamma: f64,
    phi: f64,
    level: f64,
    trend: f64,
    /// Initial seasonal states s_{1−m} … s_0.
    season: Vec<f64>,
}

/// Parameters are searched as shares of their allowed range, clamped to [0, 1], so an optimum
/// on a bound (γ = 0, φ = 0.995, common for these series) is reached exactly.
fn share(x: f64) -> f64 {
    x.clamp(0.0, 1.0)
}

/// Bounds, as statsmodels' ExponentialSmoothing: 0 ≤ α ≤ 1, 0 ≤ β ≤ α, 0 ≤ γ ≤ 1 − α,
/// 0.8 ≤ φ ≤ 0.995.
const PARAM_MIN: f64 = 0.0;
const PHI_RANGE: (f64, f64) = (0.8, 0.995);

impl Shape {
    fn has_trend(self) -> bool {
        matches!(self, Shape::DampedTrend | Shape::Seasonal(_))
    }

    fn season(self) -> usize {
        match self {
            Shape::Seasonal(m) => m,
            _ => 0,
        }
    }

    /// Free parameters: smoothing parameters plus initial states (the seasonal ones sum to 0).
    fn parameters(self) -> usize {
        match self {
            Shape::Naive => 0,
            Shape::Level => 2,
            Shape::DampedTrend => 5,
            Shape::Seasonal(m) => 6 + m - 1,
        }
    }

    /// Maps an unconstrained vector to a candidate inside the bounds.
    fn decode(self, x: &[f64]) -> Candidate {
        let alpha = PARAM_MIN + (1.0 - 2.0 * PARAM_MIN) * share(x[0]);
        let (mut beta, mut gamma, mut phi, mut trend) = (0.0, 0.0, 1.0, 0.0);
        let mut next = 1;
        if self.has_trend() {
            beta = PARAM_MIN + (alpha - 2.0 * PARAM_MIN).max(0.0) * share(x[1]);
            phi = PHI_RANGE.0 + (PHI_RANGE.1 - PHI_RANGE.0) * share(x[2]);
            next = 3;
        }
        let m = self.season();
        if m > 0 {
            gamma = PARAM_MIN + (1.0 - alpha - 2.0 * PARAM_MIN).max(0.0) * share(x[next]);
            next += 1;
        }
        let level = x[next];
        next += 1;
        if self.has_trend() {
            trend = x[next];
            next += 1;
        }
        let mut season = Vec::with_capacity(m);
        if m > 0 {
            season.extend_from_slice(&x[next..next + m - 1]);
            season.push(-season.iter().sum::<f64>());
        }
        Candidate { alpha, beta, gamma, phi, level, trend, season }
    }

    fn encode(self, c: &Candidate) -> Vec<f64> {
        let mut x = vec![(c.alpha - PARAM_MIN) / (1.0 - 2.0 * PARAM_MIN)];
        if self.has_trend() {
            x.push((c.beta - PARAM_MIN) / (c.alpha - 2.0 * PARAM_MIN).max(1e-9));
            x.push((c.phi - PHI_RANGE.0) / (PHI_RANGE.1 - PHI_RANGE.0));
        }
        if self.season() > 0 {
            x.push((c.gamma - PARAM_MIN) / (1.0 - c.alpha - 2.0 * PARAM_MIN).max(1e-9));
        }
        x.push(c.level);
        if self.has_trend() {
            x.push(c.trend);
        }
        if let Some((_, free)) = c.season.split_last() {
            x.extend_from_slice(free);
        }
        x
    }
}

/// Runs the model through `y`, handing each one-step error to `on_error`; returns the final
/// level, trend and seasonal states (oldest first).
fn run(c: &Candidate, y: &[f64], mut on_error: impl FnMut(f64)) -> (f64, f64, Vec<f64>) {
    let (mut level, mut trend) = (c.level, c.trend);
    let mut season = c.season.clone();
    let m = season.len();
    for (t, &value) in y.iter().enumerate() {
        let s = if m > 0 { season[t % m] } else { 0.0 };
        let error = value - (level + c.phi * trend + s);
        on_error(error);
        let damped = c.phi * trend;
        level = level + damped + c.alpha * error;
        trend = damped + c.beta * error;
        if m > 0 {
            season[t % m] = s + c.gamma * error;
        }
    }
    // Rotate so the seasonal states are in time order, oldest first.
    if m > 0 {
        season.rotate_left(y.len() % m);
    }
    (level, trend, season)
}

/// The sum of squared one-step errors and the final states.
fn filter(c: &Candidate, y: &[f64]) -> (f64, f64, f64, Vec<f64>) {
    let mut sse = 0.0;
    let (level, trend, season) = run(c, y, |e| sse += e * e);
    (sse, level, trend, season)
}

/// Starting points: level, trend and season from the first two seasons (or the first points).
fn initial(shape: Shape, y: &[f64], alpha: f64, beta: f64, gamma: f64, phi: f64) -> Candidate {
    let m = shape.season();
    let first = if m > 0 { m } else { y.len().min(5) };
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len().max(1) as f64;
    let level = mean(&y[..first]);
    let trend = if !shape.has_trend() {
        0.0
    } else if m > 0 && y.len() >= 2 * m {
        (mean(&y[m..2 * m]) - level) / m as f64
    } else {
        let k = y.len().min(first * 2).max(2);
        (y[k - 1] - y[0]) / (k - 1) as f64
    };
    let season = if m > 0 {
        let raw: Vec<f64> = (0..m).map(|i| y[i] - (level + trend * (i as f64 - (m as f64 - 1.0) / 2.0))).collect();
        let centre = mean(&raw);
        raw.iter().map(|s| s - centre).collect()
    } else {
        Vec::new()
    };
    Candidate { alpha, beta: beta.min(alpha * 0.9), gamma: gamma.min((1.0 - alpha) * 0.9), phi, level, trend, season }
}

/// Nelder–Mead minimisation of `f` from `start` with initial steps `steps`.
fn nelder_mead(f: &dyn Fn(&[f64]) -> f64, start: &[f64], steps: &[f64], max_evals: usize) -> (Vec<f64>, f64) {
    let n = start.len();
    let mut simplex: Vec<Vec<f64>> = vec![start.to_vec()];
    for i in 0..n {
        let mut p = start.to_vec();
        p[i] += steps[i];
        simplex.push(p);
    }
    let mut values: Vec<f64> = simplex.iter().map(|p| f(p)).collect();
    let mut evals = n + 1;
    while evals < max_evals {
        let mut order: Vec<usize> = (0..=n).collect();
        order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
        simplex = order.iter().map(|&i| simplex[i].clone()).collect();
        values = order.iter().map(|&i| values[i]).collect();
        let (best, worst) = (values[0], values[n]);
        if (worst - best).abs() <= 1e-10 * (best.abs() + 1e-12) {
            break;
        }
        let centroid: Vec<f64> = (0..n).map(|j| simplex[..n].iter().map(|p| p[j]).sum::<f64>() / n as f64).collect();
        let towards =
            |coef: f64| -> Vec<f64> { centroid.iter().zip(&simplex[n]).map(|(c, w)| c + coef * (w - c)).collect() };
        let reflected = towards(-1.0);
        let fr = f(&reflected);
        evals += 1;
        if fr < values[0] {
            let expanded = towards(-2.0);
            let fe = f(&expanded);
            evals += 1;
            (simplex[n], values[n]) = if fe < fr { (expanded, fe) } else { (reflected, fr) };
        } else if fr < values[n - 1] {
            (simplex[n], values[n]) = (reflected, fr);
        } else {
            let contracted = if fr < values[n] { towards(-0.5) } else { towards(0.5) };
            let fc = f(&contracted);
            evals += 1;
            if fc < values[n].min(fr) {
                (simplex[n], values[n]) = (contracted, fc);
            } else {
                // Shrink towards the best point.
                for i in 1..=n {
                    let shrunk: Vec<f64> = simplex[0].iter().zip(&simplex[i]).map(|(b, p)| b + 0.5 * (p - b)).collect();
                    values[i] = f(&shrunk);
                    simplex[i] = shrunk;
                }
                evals += n;
            }
        }
    }
    let best = (0..=n).min_by(|&a, &b| values[a].total_cmp(&values[b])).unwrap_or(0);
    (simplex[best].clone(), values[best])
}

/// Fits the richest model the history allows: ETS(A,Ad,A) with `season` (> 1) when there are
/// at least two seasons, else ETS(A,Ad,N) from 10 points, ETS(A,N,N) from 3, else naive.
pub fn fit(y: &[f64], season: usize) -> Result<Fit> {
    if y.is_empty() {
        return Err(Error::invalid("range", "the metric has no value in the range to forecast from"));
    }
    let n = y.len();
    let (shape, why) = if n < MIN_SMOOTHING_POINTS {
        (Shape::Naive, format!(" (fewer than {MIN_SMOOTHING_POINTS} buckets)"))
    } else if n < MIN_TREND_POINTS {
        (Shape::Level, format!(" (fewer than {MIN_TREND_POINTS} buckets)"))
    } else if season <= 1 {
        (Shape::DampedTrend, " (no season)".to_owned())
    } else if n < 2 * season {
        (Shape::DampedTrend, format!(" (history shorter than two seasons of {season})"))
    } else {
        (Shape::Seasonal(season), String::new())
    };
    if shape == Shape::Naive {
        let last = y[n - 1];
        let diffs: Vec<f64> = y.windows(2).map(|w| w[1] - w[0]).collect();
        let sigma2 = if diffs.is_empty() { 0.0 } else { diffs.iter().map(|d| d * d).sum::<f64>() / diffs.len() as f64 };
        return Ok(Fit {
            shape,
            alpha: 1.0,
            beta: 0.0,
            gamma: 0.0,
            phi: 1.0,
            level: last,
            trend: 0.0,
            season: Vec::new(),
            sigma2,
            method: format!("naive{why}"),
        });
    }

    Ok(fit_shape(shape, y).named(why))
}

impl Fit {
    fn named(mut self, why: String) -> Fit {
        let name = match self.shape {
            Shape::Level => "ETS(A,N,N)".to_owned(),
            Shape::DampedTrend => "ETS(A,Ad,N)".to_owned(),
            Shape::Seasonal(m) => format!("ETS(A,Ad,A) season {m}"),
            Shape::Naive => "naive".to_owned(),
        };
        self.method = format!("{name}, maximum likelihood{why}");
        self
    }
}

/// Maximum-likelihood fit of one model shape (not naive).
fn fit_shape(shape: Shape, y: &[f64]) -> Fit {
    let n = y.len();
    let scale = {
        let mean = y.iter().sum::<f64>() / n as f64;
        let sd = (y.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
        sd.max(mean.abs() * 0.01).max(1e-6)
    };
    let objective = |x: &[f64]| {
        let sse = filter(&shape.decode(x), y).0;
        if sse.is_finite() { sse } else { f64::MAX }
    };
    let mut best: Option<(Vec<f64>, f64)> = None;
    for &(alpha, beta, gamma, phi) in
        &[(0.3, 0.05, 0.1, 0.9), (0.1, 0.01, 0.05, 0.95), (0.6, 0.2, 0.2, 0.85), (0.9, 0.05, 0.05, 0.98)]
    {
        let start = shape.encode(&initial(shape, y, alpha, beta, gamma, phi));
        let smoothing = 1 + if shape.has_trend() { 2 } else { 0 } + usize::from(shape.season() > 0);
        let steps: Vec<f64> =
            start.iter().enumerate().map(|(i, _)| if i < smoothing { 0.25 } else { 0.2 * scale }).collect();
        let mut found = nelder_mead(&objective, &start, &steps, 400 * start.len());
        // A restart from the optimum escapes a collapsed simplex.
        let again = nelder_mead(&objective, &found.0, &steps, 200 * start.len());
        if again.1 < found.1 {
            found = again;
        }
        if best.as_ref().is_none_or(|b| found.1 < b.1) {
            best = Some(found);
        }
    }
    let (x, sse) = best.expect("at least one start was tried");
    let c = shape.decode(&x);
    let (_, level, trend, season) = filter(&c, y);
    let k = shape.parameters();
    let sigma2 = recent_variance(&c, y, sse, k);
    Fit {
        shape,
        alpha: c.alpha,
        beta: c.beta,
        gamma: c.gamma,
        phi: c.phi,
        level,
        trend,
        season,
        sigma2,
        method: String::new(),
    }
}

/// The one-step error variance the intervals use: over the whole history, SSE / (n − k); or
/// over the latest third of it (at least two seasons, 10 points) when that is larger, since
/// the noise of count metrics grows with their level and a growing metric's early errors
/// understate today's.
fn recent_variance(c: &Candidate, y: &[f64], sse: f64, k: usize) -> f64 {
    let n = y.len();
    let whole = if n > k { sse / (n - k) as f64 } else { sse / n as f64 };
    let recent = (n / 3).max(2 * c.season.len()).max(10);
    if recent >= n {
        return whole;
    }
    let errors = one_step_errors(c, y);
    let tail = &errors[n - recent..];
    // The same degrees-of-freedom correction as the whole history's: fitted errors understate
    // fresh ones by (n − k) / n.
    let correction = if n > k { n as f64 / (n - k) as f64 } else { 1.0 };
    whole.max(tail.iter().map(|e| e * e).sum::<f64>() / tail.len() as f64 * correction)
}

/// The one-step errors of the model through `y`.
fn one_step_errors(c: &Candidate, y: &[f64]) -> Vec<f64> {
    let mut errors = Vec::with_capacity(y.len());
    run(c, y, |e| errors.push(e));
    errors
}

impl Fit {
    /// Point forecasts and intervals for 1..=horizon steps ahead. Variance of the h-step error
    /// for class-1 ETS: σ²·(1 + Σ_{j<h} c_j²), c_j = α + β·(φ + … + φ^j) + γ·[j mod m = 0].
    pub fn forecast(&self, horizon: usize) -> Vec<ForecastValue> {
        let m = self.season.len();
        let mut damped_sum = 0.0;
        let mut phi_power = 1.0;
        let mut variance_sum = 0.0;
        (1..=horizon)
            .map(|h| {
                phi_power *= self.phi;
                damped_sum += phi_power;
                let s = if m > 0 { self.season[(h - 1) % m] } else { 0.0 };
                let trend = if self.shape.has_trend() { damped_sum * self.trend } else { 0.0 };
                let value = self.level + trend + s;
                let sd = (self.sigma2 * (1.0 + variance_sum)).sqrt();
                // c_h for the next step's variance.
                let c = match self.shape {
                    Shape::Naive => 1.0,
                    Shape::Level => self.alpha,
                    _ => {
                        let seasonal = if m > 0 && h % m == 0 { self.gamma } else { 0.0 };
                        self.alpha + self.beta * damped_sum + seasonal
                    }
                };
                variance_sum += c * c;
                ForecastValue {
                    value,
                    lower_80: value - Z80 * sd,
                    upper_80: value + Z80 * sd,
                    lower_95: value - Z95 * sd,
                    upper_95: value + Z95 * sd,
                }
            })
            .collect()
    }
}

/// The history's values for fitting: buckets without a value are interpolated between their
/// neighbours; leading ones are dropped and trailing ones repeat the last value.
pub fn fill_gaps(values: &[Option<f64>]) -> Vec<f64> {
    let Some(first) = values.iter().position(Option::is_some) else { return Vec::new() };
    let values = &values[first..];
    let mut out = Vec::with_capacity(values.len());
    for (i, v) in values.iter().enumerate() {
        match v {
            Some(v) => out.push(*v),
            None => {
                let previous = out.last().copied().unwrap_or(0.0);
                let next = values[i..].iter().enumerate().find_map(|(k, v)| v.map(|v| (k, v)));
                out.push(match next {
                    Some((k, next)) => previous + (next - previous) / (k + 1) as f64,
                    None => previous,
                });
            }
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
pub struct ForecastQuery {
    pub metric_key: String,
    pub from: Micros,
    pub to: Micros,
    pub granularity: Granularity,
    pub timezone: String,
    pub horizon: u32,
    /// 0: `default_season`.
    pub season: u32,
}

impl ForecastQuery {
    pub fn validate(&self) -> Result<()> {
        crate::core::catalog::validate_slug("metric_key", &self.metric_key)?;
        if self.horizon == 0 || self.horizon > MAX_HORIZON {
            return Err(Error::invalid("horizon", format!("must be between 1 and {MAX_HORIZON}")));
        }
        if self.granularity == Granularity::Total {
            return Err(Error::invalid(
                "granularity",
                "TOTAL is a single bucket; use HOUR, DAY, WEEK, MONTH or QUARTER",
            ));
        }
        if self.season as usize > crate::core::metric::scan::MAX_BUCKETS {
            return Err(Error::invalid("season", format!("at most {}", crate::core::metric::scan::MAX_BUCKETS)));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Forecast {
    pub history: Vec<Point>,
    /// (start, end, forecast) per future bucket.
    pub points: Vec<(Micros, Micros, ForecastValue)>,
    pub method: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trend, a weekly pattern and deterministic noise.
    fn series(n: usize) -> Vec<f64> {
        let pattern = [5.0, -3.0, 2.0, 0.0, -6.0, 4.0, -2.0];
        (0..n).map(|t| 100.0 + 1.5 * t as f64 + pattern[t % 7] + ((t * 7919) % 13) as f64 * 0.3).collect()
    }

    #[test]
    fn seasonal_model_recovers_a_weekly_pattern() {
        let y = series(70);
        let fit = fit(&y[..56], 7).unwrap();
        assert_eq!(fit.method, "ETS(A,Ad,A) season 7, maximum likelihood");
        assert!((0.0..=1.0).contains(&fit.alpha) && fit.beta <= fit.alpha && fit.gamma <= 1.0 - fit.alpha);
        assert!((0.8..=0.995).contains(&fit.phi));
        let forecast = fit.forecast(14);
        let mape: f64 =
            forecast.iter().zip(&y[56..]).map(|(f, a)| ((f.value - a) / a).abs()).sum::<f64>() / 14.0 * 100.0;
        assert!(mape < 3.0, "MAPE {mape}");
        for f in &forecast {
            assert!(f.lower_95 < f.lower_80 && f.lower_80 < f.value && f.value < f.upper_80 && f.upper_80 < f.upper_95);
        }
        // Intervals widen with the horizon.
        assert!(forecast[13].upper_95 - forecast[13].lower_95 > forecast[0].upper_95 - forecast[0].lower_95);
    }

    #[test]
    fn short_histories_fall_back_and_say_so() {
        let y = series(20);
        assert_eq!(
            fit(&y[..12], 7).unwrap().method,
            "ETS(A,Ad,N), maximum likelihood (history shorter than two seasons of 7)"
        );
        assert_eq!(fit(&y[..5], 7).unwrap().method, "ETS(A,N,N), maximum likelihood (fewer than 10 buckets)");
        let naive = fit(&[4.0, 6.0], 7).unwrap();
        assert_eq!(naive.method, "naive (fewer than 3 buckets)");
        assert_eq!(naive.forecast(2)[1].value, 6.0);
        assert!(fit(&[], 7).is_err());
    }

    #[test]
    fn a_constant_series_forecasts_itself_with_no_spread() {
        let fit = fit(&[10.0; 30], 7).unwrap();
        for f in fit.forecast(5) {
            assert!((f.value - 10.0).abs() < 1e-6, "{f:?}");
            assert!(f.upper_95 - f.lower_95 < 1e-3, "{f:?}");
        }
    }

    #[test]
    fn the_variance_formula_matches_the_simple_model() {
        // ETS(A,N,N): Var(h) = σ²(1 + (h − 1)α²).
        let y: Vec<f64> = (0..40).map(|t| 50.0 + ((t * 37) % 11) as f64).collect();
        let fit = fit(&y[..8], 1).unwrap();
        let f = fit.forecast(3);
        let sd3 = (fit.sigma2 * (1.0 + 2.0 * fit.alpha * fit.alpha)).sqrt();
        assert!((f[2].upper_95 - f[2].value - Z95 * sd3).abs() < 1e-9);
    }

    #[test]
    fn gaps_are_interpolated() {
        assert_eq!(fill_gaps(&[None, Some(1.0), None, Some(3.0), None]), [1.0, 2.0, 3.0, 3.0]);
        assert!(fill_gaps(&[None, None]).is_empty());
    }
}
