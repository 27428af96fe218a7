//! Small SVG charts: a sparkline, a series with marked points, horizontal bars. Coordinates
//! live in a fixed viewBox; CSS scales the picture to its box.

use std::fmt::Write as _;

use maud::{Markup, html};

/// Maps values to y in a box of height `h` with a margin, low values at the bottom.
fn scale(values: &[Option<f64>], h: f64) -> impl Fn(f64) -> f64 {
    let known = values.iter().flatten().copied();
    let (lo, hi) = known.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if lo.is_finite() { (lo.min(0.0), hi) } else { (0.0, 1.0) };
    let span = if hi > lo { hi - lo } else { 1.0 };
    move |v| 2.0 + (h - 4.0) * (1.0 - (v - lo) / span)
}

/// x of point `i` of `n` across width `w`.
fn x_of(i: usize, n: usize, w: f64) -> f64 {
    if n <= 1 { w / 2.0 } else { w * i as f64 / (n - 1) as f64 }
}

/// Polyline paths through the values, broken where a value is missing.
fn path(values: &[Option<f64>], w: f64, h: f64) -> String {
    let y = scale(values, h);
    let mut d = String::new();
    let mut pen_down = false;
    for (i, value) in values.iter().enumerate() {
        match value {
            Some(v) => {
                let command = if pen_down { 'L' } else { 'M' };
                let _ = write!(d, "{command}{:.1} {:.1} ", x_of(i, values.len(), w), y(*v));
                pen_down = true;
            }
            None => pen_down = false,
        }
    }
    d.trim_end().to_owned()
}

/// A sparkline of a daily series.
pub fn sparkline(values: &[Option<f64>]) -> Markup {
    let (w, h) = (120.0, 32.0);
    html! {
        svg.spark viewBox=(format!("0 0 {w} {h}")) preserveAspectRatio="none" role="img" aria-label="daily trend" {
            path d=(path(values, w, h)) fill="none" stroke="currentColor" stroke-width="1.5" vector-effect="non-scaling-stroke" {}
        }
    }
}

/// A series with flagged points marked (`marks[i]`: None, or Some(bad)).
pub fn marked_series(values: &[Option<f64>], marks: &[Option<bool>]) -> Markup {
    let (w, h) = (600.0, 140.0);
    let y = scale(values, h);
    html! {
        svg.series viewBox=(format!("0 0 {w} {h}")) preserveAspectRatio="none" role="img" aria-label="series with anomalies" {
            path d=(path(values, w, h)) fill="none" stroke="currentColor" stroke-width="2" vector-effect="non-scaling-stroke" {}
            @for (i, (value, mark)) in values.iter().zip(marks).enumerate() {
                @if let (Some(v), Some(bad)) = (value, mark) {
                    circle class=(if *bad { "anomaly bad" } else { "anomaly" }) cx=(format!("{:.1}", x_of(i, values.len(), w)))
                        cy=(format!("{:.1}", y(*v))) r="5" {}
                }
            }
        }
    }
}

/// Horizontal bars, one per (label, value, note), widths relative to the largest value.
pub fn bars(rows: &[(String, f64, String)]) -> Markup {
    let row_h = 28.0;
    let h = row_h * rows.len() as f64;
    let max = rows.iter().map(|r| r.1).fold(0.0, f64::max);
    html! {
        svg.bars viewBox=(format!("0 0 400 {h}")) role="img" aria-label="funnel steps" {
            @for (i, (label, value, note)) in rows.iter().enumerate() {
                @let top = i as f64 * row_h;
                @let width = if max > 0.0 { 400.0 * value / max } else { 0.0 };
                rect x="0" y=(format!("{:.1}", top + 2.0)) width=(format!("{width:.1}")) height=(row_h - 4.0) rx="3" {}
                text x="6" y=(format!("{:.1}", top + row_h / 2.0 + 4.0)) { (label) " · " (note) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_break_at_missing_values_and_put_low_values_low() {
        let d = path(&[Some(0.0), Some(10.0), None, Some(5.0)], 30.0, 24.0);
        // x at 0, 10, 20, 30; y from 22 (0) to 2 (10).
        assert_eq!(d, "M0.0 22.0 L10.0 2.0 M30.0 12.0");
        assert_eq!(path(&[None, None], 10.0, 10.0), "");
        // A flat series draws a line rather than dividing by zero.
        assert_eq!(path(&[Some(3.0), Some(3.0)], 10.0, 24.0), "M0.0 2.0 L10.0 2.0");
    }

    #[test]
    fn bars_scale_to_the_largest() {
        let svg = bars(&[("a".into(), 200.0, "100%".into()), ("b".into(), 50.0, "25%".into())]).into_string();
        assert!(svg.contains(r#"width="400.0""#), "{svg}");
        assert!(svg.contains(r#"width="100.0""#), "{svg}");
        assert!(svg.contains("b · 25%"), "{svg}");
    }
}
