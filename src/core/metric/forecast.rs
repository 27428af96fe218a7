//! ForecastMetric (SPEC §16): exponential smoothing with additive errors, an additive trend
//! (damped or not, whichever has the lower AICc) and additive seasonality, ETS(A,Ad,A) or
//! ETS(A,A,A), fitted by maximum likelihood, with prediction intervals; simpler models when
//! the history is short.
//!
//! The `augurs-ets` crate was considered: its latest release, 0.10.3, panics on seasonal models
//! (`unimplemented!("seasonal component not implemented yet")`), so the model is written here (Hyndman et al., *Forecasting with
//! Exponential Smoothing*, 2008, ch. 2, 6 and 7). With additive errors the likelihood,
//! concentrated over σ², is −n/2·ln(SSE/n), so maximising it means minimising the one-step
//! squared errors over the smoothing parameters and the initial states, done here by
//! Nelder–Mead from several starts, within statsmodels' bounds.
//!
//! The trend is damped only when the data say so. Both trends are fitted and the one with
//! the lower AICc is kept (as R's `forecast::ets` chooses among its models): a metric that
//! grows steadily drives the damped fit's φ to its upper bound, where the undamped model fits
//! as well with one parameter fewer, and forecasts the growth instead of flattening it.
//!
//! The intervals' one-step variance is either constant or proportional to the level, the one
//! of the two under which the fitted one-step errors are likelier. Counts and sums of events
//! are roughly Poisson: their noise grows with their level, so a growing metric's early
//! errors understate the noise of its forecasts, and a constant variance gives bands that
//! are too narrow. On generated data (tests/reference/forecast_vs_statsmodels.py, seeds 1 to
//! 12) the 95% bands held 86.3% of held-out points with the constant variance (taken over the
//! latest third of the history where larger) and hold 93.4% with the variance following the
//! level.

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
    /// Level, additive trend (damped or not) and, with `season` > 0, additive seasonality:
    /// ETS(A,Ad,N), ETS(A,A,N), ETS(A,Ad,A), ETS(A,A,A).
    Trend { damped: bool, season: usize },
}

/// How the one-step error variance depends on the level (see `VarianceModel::choose`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum VarianceModel {
    /// σ² at every step.
    Constant(f64),
    /// k · level at each step.
    Level(f64),
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
    /// The one-step error variance used by the intervals.
    variance: VarianceModel,
    /// The sum of squared one-step errors over the history.
    pub sse: f64,
    /// Akaike's information criterion, corrected for small samples (infinite when the model
    /// has as many parameters as the history has points, or for the naive forecast).
    pub aicc: f64,
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

/// The damping parameter's range, as statsmodels' ExponentialSmoothing.
const PHI_RANGE: (f64, f64) = (0.8, 0.995);

// Bounds, as statsmodels' ExponentialSmoothing, which states them for the component form
// (ℓ_t = α·(y_t − s_{t−m}) + (1 − α)(ℓ_{t−1} + φb_{t−1}), b_t = β*·(ℓ_t − ℓ_{t−1}) + (1 − β*)·φb_{t−1}):
// 0 ≤ α ≤ 1, 0 ≤ β* ≤ α, 0 ≤ γ ≤ 1 − α. In the error-correction form used here the trend's
// parameter is β = α·β*, so 0 ≤ β ≤ α².

impl Shape {
    fn has_trend(self) -> bool {
        matches!(self, Shape::Trend { .. })
    }

    fn damped(self) -> bool {
        matches!(self, Shape::Trend { damped: true, .. })
    }

    fn season(self) -> usize {
        match self {
            Shape::Trend { season, .. } => season,
            _ => 0,
        }
    }

    /// The smoothing parameters searched: α, then β and φ with a trend, γ with a season.
    fn smoothing(self) -> usize {
        1 + usize::from(self.has_trend()) + usize::from(self.damped()) + usize::from(self.season() > 0)
    }

    /// Free parameters: smoothing parameters plus initial states (the seasonal ones sum to 0).
    fn parameters(self) -> usize {
        match self {
            Shape::Naive => 0,
            _ => self.smoothing() + 1 + usize::from(self.has_trend()) + self.season().saturating_sub(1),
        }
    }

    fn name(self) -> String {
        match self {
            Shape::Naive => "naive".to_owned(),
            Shape::Level => "ETS(A,N,N)".to_owned(),
            Shape::Trend { damped, season } => {
                let trend = if damped { "Ad" } else { "A" };
                if season > 0 { format!("ETS(A,{trend},A) season {season}") } else { format!("ETS(A,{trend},N)") }
            }
        }
    }

    /// Maps an unconstrained vector to a candidate inside the bounds.
    fn decode(self, x: &[f64]) -> Candidate {
        let alpha = share(x[0]);
        let (mut beta, mut gamma, mut phi, mut trend) = (0.0, 0.0, 1.0, 0.0);
        let mut next = 1;
        if self.has_trend() {
            beta = alpha * alpha * share(x[next]);
            next += 1;
        }
        if self.damped() {
            phi = PHI_RANGE.0 + (PHI_RANGE.1 - PHI_RANGE.0) * share(x[next]);
            next += 1;
        }
        let m = self.season();
        if m > 0 {
            gamma = (1.0 - alpha) * share(x[next]);
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
        let mut x = vec![c.alpha];
        if self.has_trend() {
            x.push(c.beta / (c.alpha * c.alpha).max(1e-9));
        }
        if self.damped() {
            x.push((c.phi - PHI_RANGE.0) / (PHI_RANGE.1 - PHI_RANGE.0));
        }
        if self.season() > 0 {
            x.push(c.gamma / (1.0 - c.alpha).max(1e-9));
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

/// Runs the model through `y`, handing each one-step error and forecast to `on_step`; returns
/// the final level, trend and seasonal states (oldest first).
fn run(c: &Candidate, y: &[f64], mut on_step: impl FnMut(f64, f64)) -> (f64, f64, Vec<f64>) {
    let (mut level, mut trend) = (c.level, c.trend);
    let mut season = c.season.clone();
    let m = season.len();
    for (t, &value) in y.iter().enumerate() {
        let s = if m > 0 { season[t % m] } else { 0.0 };
        let damped = c.phi * trend;
        let fitted = level + damped + s;
        let error = value - fitted;
        on_step(error, fitted);
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

/// The sum of squared one-step errors.
fn sse(c: &Candidate, y: &[f64]) -> f64 {
    let mut sse = 0.0;
    run(c, y, |e, _| sse += e * e);
    sse
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
    let phi = if shape.damped() { phi } else { 1.0 };
    Candidate {
        alpha,
        beta: beta.min(alpha * alpha * 0.9),
        gamma: gamma.min((1.0 - alpha) * 0.9),
        phi,
        level,
        trend,
        season,
    }
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

/// Fits the richest model the history allows: with at least two seasons of `season` (> 1)
/// ETS(A,Ad,A) and ETS(A,A,A), else from 10 points ETS(A,Ad,N) and ETS(A,A,N), keeping the
/// one with the lower AICc; ETS(A,N,N) from 3 points, else naive.
pub fn fit(y: &[f64], season: usize) -> Result<Fit> {
    if y.is_empty() {
        return Err(Error::invalid("range", "the metric has no value in the range to forecast from"));
    }
    let n = y.len();
    if n < MIN_SMOOTHING_POINTS {
        return Ok(naive(y));
    }
    if n < MIN_TREND_POINTS {
        let why = format!("fewer than {MIN_TREND_POINTS} buckets");
        return Ok(fit_shape(Shape::Level, y).named(&[why]));
    }
    let (m, why) = if season <= 1 {
        (0, Some("no season".to_owned()))
    } else if n < 2 * season {
        (0, Some(format!("history shorter than two seasons of {season}")))
    } else {
        (season, None)
    };
    let damped = fit_shape(Shape::Trend { damped: true, season: m }, y);
    let undamped = fit_shape(Shape::Trend { damped: false, season: m }, y);
    // On a tie the damped trend, the model SPEC §16 names, is kept.
    let (best, other) = if undamped.aicc < damped.aicc { (undamped, damped) } else { (damped, undamped) };
    let choice = format!("lower AICc than {}", other.shape.name());
    Ok(best.named(&why.into_iter().chain([choice]).collect::<Vec<_>>()))
}

/// The last value, with the variance of the steps between values.
fn naive(y: &[f64]) -> Fit {
    let diffs: Vec<f64> = y.windows(2).map(|w| w[1] - w[0]).collect();
    let sigma2 = if diffs.is_empty() { 0.0 } else { diffs.iter().map(|d| d * d).sum::<f64>() / diffs.len() as f64 };
    Fit {
        shape: Shape::Naive,
        alpha: 1.0,
        beta: 0.0,
        gamma: 0.0,
        phi: 1.0,
        level: y[y.len() - 1],
        trend: 0.0,
        season: Vec::new(),
        variance: VarianceModel::Constant(sigma2),
        sse: sigma2 * (y.len() - 1) as f64,
        aicc: f64::INFINITY,
        method: format!("naive (fewer than {MIN_SMOOTHING_POINTS} buckets)"),
    }
}

impl Fit {
    /// Sets `method`: the model, how it was fitted, and why it was chosen.
    fn named(mut self, notes: &[String]) -> Fit {
        let variance = match self.variance {
            VarianceModel::Constant(_) => "",
            VarianceModel::Level(_) => ", variance proportional to the level",
        };
        self.method = format!("{}, maximum likelihood{variance}", self.shape.name());
        if !notes.is_empty() {
            self.method += &format!(" ({})", notes.join("; "));
        }
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
        let sse = sse(&shape.decode(x), y);
        if sse.is_finite() { sse } else { f64::MAX }
    };
    let mut best: Option<(Vec<f64>, f64)> = None;
    for &(alpha, beta, gamma, phi) in
        &[(0.3, 0.05, 0.1, 0.9), (0.1, 0.01, 0.05, 0.95), (0.6, 0.2, 0.2, 0.85), (0.9, 0.05, 0.05, 0.98)]
    {
        let start = shape.encode(&initial(shape, y, alpha, beta, gamma, phi));
        let smoothing = shape.smoothing();
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
    let mut steps = Vec::with_capacity(n);
    let (level, trend, season) = run(&c, y, |e, fitted| steps.push((e, fitted)));
    let k = shape.parameters();
    Fit {
        shape,
        alpha: c.alpha,
        beta: c.beta,
        gamma: c.gamma,
        phi: c.phi,
        level,
        trend,
        season,
        variance: VarianceModel::choose(&steps, k),
        sse,
        aicc: aicc(sse, n, k + 1),
        method: String::new(),
    }
}

/// AICc of an additive-error model with `k` parameters (σ² included) and one-step squared
/// errors summing to `sse` over `n` points: n·ln(SSE/n) + 2k + 2k(k + 1)/(n − k − 1), the
/// likelihood's constant left out (Hyndman et al. 2008, §7.1).
fn aicc(sse: f64, n: usize, k: usize) -> f64 {
    if n <= k + 1 {
        return f64::INFINITY;
    }
    let (n, k) = (n as f64, k as f64);
    n * (sse.max(f64::MIN_POSITIVE) / n).ln() + 2.0 * k + 2.0 * k * (k + 1.0) / (n - k - 1.0)
}

impl VarianceModel {
    /// Of a constant one-step variance and one proportional to the fitted value, the one
    /// under which the fitted one-step errors (error, fitted value) are likelier as independent
    /// normals. Both are judged on the steps whose fitted value is positive (above a hundredth
    /// of the largest, so a misfit where the metric starts from zero does not decide), and only
    /// when those are at least half of the steps; the constant is then the mean squared error
    /// of all steps. The level's factor is Σe²/Σfitted, a moment estimate steadier than the
    /// maximum-likelihood mean of e²/fitted when fitted values are small. Either is scaled by
    /// n / (n − k) for the `k` fitted parameters, since fitted errors understate fresh ones.
    fn choose(steps: &[(f64, f64)], k: usize) -> VarianceModel {
        let n = steps.len();
        let correction = if n > k { n as f64 / (n - k) as f64 } else { 1.0 };
        let squares = |s: &[(f64, f64)]| s.iter().map(|(e, _)| e * e).sum::<f64>();
        let whole = VarianceModel::Constant(squares(steps) / n as f64 * correction);
        let top = steps.iter().map(|(_, f)| *f).fold(0.0, f64::max);
        let positive: Vec<(f64, f64)> = steps.iter().copied().filter(|(_, f)| *f > top * 0.01).collect();
        if squares(steps) <= 0.0 || positive.len() * 2 < n {
            return whole;
        }
        let count = positive.len() as f64;
        let sigma2 = squares(&positive) / count;
        let ratio = squares(&positive) / positive.iter().map(|(_, f)| f).sum::<f64>();
        // −2·log-likelihood, constants shared by both left out.
        let constant_fit = count * (sigma2.ln() + 1.0);
        let level_fit = positive.iter().map(|(e, f)| (ratio * f).ln() + e * e / (ratio * f)).sum::<f64>();
        if level_fit < constant_fit { VarianceModel::Level(ratio * correction) } else { whole }
    }

    /// The one-step error variance where the forecast is `value`.
    fn at(self, value: f64) -> f64 {
        match self {
            VarianceModel::Constant(sigma2) => sigma2,
            VarianceModel::Level(k) => k * value.max(0.0),
        }
    }
}

impl Fit {
    /// Point forecasts and intervals for 1..=horizon steps ahead. For class-1 ETS the h-step
    /// error is ε_{T+h} + Σ_{j=1}^{h−1} c_j·ε_{T+h−j}, c_j = α + β·(φ + … + φ^j) + γ·[j mod m = 0]
    /// (Hyndman et al. 2008, §6.1), so its variance is v_{T+h} + Σ c_j²·v_{T+h−j}, with v_t the
    /// one-step variance at step t (constant, or following the forecast level).
    pub fn forecast(&self, horizon: usize) -> Vec<ForecastValue> {
        let m = self.season.len();
        let mut damped_sum = 0.0;
        let mut phi_power = 1.0;
        let values: Vec<f64> = (1..=horizon)
            .map(|h| {
                phi_power *= self.phi;
                damped_sum += phi_power;
                let s = if m > 0 { self.season[(h - 1) % m] } else { 0.0 };
                let trend = if self.shape.has_trend() { damped_sum * self.trend } else { 0.0 };
                self.level + trend + s
            })
            .collect();
        // c_j for j = 1..horizon − 1.
        let mut damped_sum = 0.0;
        let mut phi_power = 1.0;
        let c: Vec<f64> = (1..horizon)
            .map(|j| {
                phi_power *= self.phi;
                damped_sum += phi_power;
                match self.shape {
                    Shape::Naive => 1.0,
                    Shape::Level => self.alpha,
                    Shape::Trend { .. } => {
                        let seasonal = if m > 0 && j % m == 0 { self.gamma } else { 0.0 };
                        self.alpha + self.beta * damped_sum + seasonal
                    }
                }
            })
            .collect();
        let one_step: Vec<f64> = values.iter().map(|v| self.variance.at(*v)).collect();
        (0..horizon)
            .map(|i| {
                let value = values[i];
                let variance = one_step[i] + (1..=i).map(|j| c[j - 1] * c[j - 1] * one_step[i - j]).sum::<f64>();
                let sd = variance.sqrt();
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

    /// Standard normal draws from a fixed linear congruential generator (Box–Muller).
    fn normals(n: usize) -> Vec<f64> {
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut unit = || {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        (0..n).map(|_| (-2.0 * unit().ln()).sqrt() * (std::f64::consts::TAU * unit()).cos()).collect()
    }

    /// Checks `fit` against statsmodels 0.15 on `series(56)`, season 7. The numbers were computed
    /// once and are hard-coded:
    ///
    /// ```python
    /// from statsmodels.tsa.holtwinters import ExponentialSmoothing
    /// pattern = [5.0, -3.0, 2.0, 0.0, -6.0, 4.0, -2.0]
    /// y = [100 + 1.5 * t + pattern[t % 7] + ((t * 7919) % 13) * 0.3 for t in range(56)]
    /// for damped in (True, False):
    ///     r = ExponentialSmoothing(y, trend="add", damped_trend=damped, seasonal="add",
    ///                              seasonal_periods=7).fit()
    ///     print(r.sse, r.params, r.forecast(7))
    /// ```
    ///
    /// Undamped: SSE 55.366976 (α = β = 0, γ = 0.839873), forecast 191.032, 185.132, 192.232,
    /// 189.0565, 184.548, 196.6324, 192.4231; the last one-step error (`y[-1] - r.fittedvalues[-1]`)
    /// 0.3679. Damped: SSE 66.494655 at φ = 0.995 (a local
    /// optimum: the damped model nests the undamped one's fit up to φ's bound).
    #[test]
    fn fits_match_statsmodels_on_a_fixed_series() {
        let y = series(56);
        let undamped = fit_shape(Shape::Trend { damped: false, season: 7 }, &y);
        assert!((undamped.sse - 55.366976).abs() < 1e-3, "SSE {}", undamped.sse);
        // statsmodels' 7th step is 192.4231 + γ·e_T = 192.4231 + 0.839873 × 0.367900 (e_T, the
        // last one-step error): its forecast uses the seasonal state of a season before the
        // last observation (`_predict` overwrites the last one), where the model's forecast
        // uses the state that observation updated (Hyndman et al. 2008, §2.4).
        let expected = [191.032, 185.132, 192.232, 189.0565, 184.548, 196.6324, 192.4231 + 0.839873 * 0.3679];
        for (f, e) in undamped.forecast(7).iter().zip(expected) {
            assert!((f.value - e).abs() < 0.01, "{} against statsmodels' {e}", f.value);
        }
        let damped = fit_shape(Shape::Trend { damped: true, season: 7 }, &y);
        assert!(damped.sse <= 66.494655, "SSE {}", damped.sse);
        assert!((0.8..=0.995).contains(&damped.phi));
        for fit in [&damped, &undamped] {
            // statsmodels' bounds: β* = β/α ≤ α, γ ≤ 1 − α.
            assert!((0.0..=1.0).contains(&fit.alpha) && fit.beta <= fit.alpha * fit.alpha + 1e-12);
            assert!(fit.gamma <= 1.0 - fit.alpha);
        }
        // AICc: the damped fit is no better and has one parameter more.
        assert!(undamped.aicc < damped.aicc);
        let chosen = fit(&y, 7).unwrap();
        assert!(chosen.method.starts_with("ETS(A,A,A) season 7, maximum likelihood"), "{}", chosen.method);
        assert!(chosen.method.ends_with(" (lower AICc than ETS(A,Ad,A) season 7)"), "{}", chosen.method);
        assert_eq!(chosen.sse, undamped.sse);
    }

    #[test]
    fn a_levelling_series_keeps_its_damped_trend() {
        // Growth that flattens out: ℓ_t = 200 − 150·0.93^t, with noise.
        let noise = normals(80);
        let y: Vec<f64> = (0..80).map(|t| 200.0 - 150.0 * 0.93f64.powi(t) + 2.0 * noise[t as usize]).collect();
        let fit = fit(&y, 1).unwrap();
        assert!(fit.method.starts_with("ETS(A,Ad,N), maximum likelihood"), "{}", fit.method);
        assert!(fit.method.ends_with(" (no season; lower AICc than ETS(A,A,N))"), "{}", fit.method);
        assert!(fit.phi < 0.99, "φ {}", fit.phi);
    }

    #[test]
    fn the_variance_follows_the_level_when_the_noise_does() {
        let noise = normals(120);
        let level = |t: usize| 20.0 + 2.0 * t as f64;
        // Poisson-like: the noise's variance is the level.
        let counts: Vec<f64> = (0..120).map(|t| level(t) + level(t).sqrt() * noise[t]).collect();
        let fit_counts = fit(&counts, 7).unwrap();
        assert!(matches!(fit_counts.variance, VarianceModel::Level(k) if (0.7..1.4).contains(&k)), "{fit_counts:?}");
        assert!(fit_counts.method.contains(", variance proportional to the level"), "{}", fit_counts.method);
        // The same noise at a constant scale.
        let steady: Vec<f64> = (0..120).map(|t| level(t) + 10.0 * noise[t]).collect();
        let fit_steady = fit(&steady, 7).unwrap();
        assert!(
            matches!(fit_steady.variance, VarianceModel::Constant(s) if (70.0..140.0).contains(&s)),
            "{fit_steady:?}"
        );
        assert!(!fit_steady.method.contains("variance"), "{}", fit_steady.method);
        // The bands of the counts widen as the forecast level grows, even without smoothing.
        let f = fit_counts.forecast(28);
        let width = |i: usize| f[i].upper_95 - f[i].lower_95;
        assert!(width(27) > width(0) * (level(147) / level(120)).sqrt() * 0.99);
    }

    #[test]
    fn short_histories_fall_back_and_say_so() {
        let y = series(20);
        assert_eq!(
            fit(&y[..12], 7).unwrap().method,
            "ETS(A,A,N), maximum likelihood (history shorter than two seasons of 7; lower AICc than ETS(A,Ad,N))"
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
        // ETS(A,N,N): Var(h) = v·(1 + (h − 1)α²), the one-step variance v the same at every
        // step since the forecast is flat (constant, or following that flat level).
        let y: Vec<f64> = (0..40).map(|t| 50.0 + ((t * 37) % 11) as f64).collect();
        let fit = fit(&y[..8], 1).unwrap();
        let f = fit.forecast(3);
        let sd3 = (fit.variance.at(f[2].value) * (1.0 + 2.0 * fit.alpha * fit.alpha)).sqrt();
        assert!(sd3 > 0.0 && (f[2].upper_95 - f[2].value - Z95 * sd3).abs() < 1e-9);
        assert!((f[2].upper_80 - f[2].value - Z80 * sd3).abs() < 1e-9);
    }

    #[test]
    fn the_variance_formula_sums_each_step_at_its_own_level() {
        // Var(h) = v_{T+h} + Σ_{j<h} c_j²·v_{T+h−j}, with c_j = α + β·j + γ·[j mod m = 0].
        let fit = Fit {
            shape: Shape::Trend { damped: false, season: 2 },
            alpha: 0.5,
            beta: 0.1,
            gamma: 0.2,
            phi: 1.0,
            level: 100.0,
            trend: 10.0,
            season: vec![-5.0, 5.0],
            variance: VarianceModel::Level(2.0),
            sse: 0.0,
            aicc: 0.0,
            method: String::new(),
        };
        let f = fit.forecast(3);
        let values: Vec<f64> = f.iter().map(|p| p.value).collect();
        assert_eq!(values, [105.0, 125.0, 125.0]);
        let (c1, c2) = (0.5 + 0.1, 0.5 + 0.2 + 0.2);
        let variance: f64 = 2.0 * 125.0 + c1 * c1 * 2.0 * 125.0 + c2 * c2 * 2.0 * 105.0;
        assert!((f[2].upper_95 - 125.0 - Z95 * variance.sqrt()).abs() < 1e-9);
    }

    #[test]
    fn gaps_are_interpolated() {
        assert_eq!(fill_gaps(&[None, Some(1.0), None, Some(3.0), None]), [1.0, 2.0, 3.0, 3.0]);
        assert!(fill_gaps(&[None, None]).is_empty());
    }
}
