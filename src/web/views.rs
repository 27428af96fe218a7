//! The page's HTML: the shell, the project chooser and the tiles, with the test hooks of
//! SPEC §17 (`data-tile`, `data-metric-key` + `data-value`, `data-error`).

use chrono::{Days, NaiveDate};
use maud::{DOCTYPE, Markup, html};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

use super::svg;
use crate::core::engine::dashboard::{
    AttributionTile, Dashboard, DashboardRequest, DayRange, ExperimentTile, FunnelTile, MetricTile, RetentionTile,
};
use crate::core::experiment::readout::Decision;
use crate::core::goal::definition::GoalReport;
use crate::core::goal::progress::GoalStatus;
use crate::core::metric::definition::{Direction, Period};
use crate::core::model::{Micros, Project};
use crate::error::{Error, Result};

/// The page before any data: the key prompt (hidden unless needed) and the tiles' place.
pub fn shell() -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Sextant dashboard" }
                link rel="stylesheet" href="/assets/style.css";
                script type="module" src="/assets/app.js" {}
            }
            body {
                header.top { h1 { "Sextant" } span #live {} }
                form #key-prompt hidden method="post" autocomplete="off" {
                    h2 { "API key" }
                    p #key-reason {}
                    label { "A key of the project with role READ (or ADMIN)" input #key-input type="password" name="key" required; }
                    button type="submit" { "Open the dashboard" }
                    p.hint { "The key stays in this tab's session storage and is sent as a header, never in a URL." }
                }
                main #dashboard { p.loading { "Loading…" } }
                noscript { p { "The dashboard needs JavaScript to send your key and load the tiles." } }
            }
        }
    }
}

/// Without a project in the URL (and a key that is not bound to one): links to each project.
pub fn chooser(projects: &[Project]) -> Markup {
    html! {
        section.chooser {
            h2 { "Projects" }
            @if projects.is_empty() {
                p.empty { "No project yet: create one with ProjectService/CreateProject, or start the server with --demo." }
            }
            ul { @for p in projects { li { a href=(format!("/?project={}", enc(&p.id))) { (p.id) } " " span.muted { (p.name) } } } }
        }
    }
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

/// The page's URL for another range, keeping the funnel and retention asked for.
fn page_url(project: &str, from: NaiveDate, to: NaiveDate, request: &DashboardRequest) -> String {
    let mut url = format!("/?project={}&from={from}&to={to}", enc(project));
    if !request.funnel.is_empty() {
        url.push_str(&format!("&funnel={}", enc(&request.funnel.join(","))));
    }
    if let Some((cohort, back)) = &request.retention {
        url.push_str(&format!("&retention={}", enc(&format!("{cohort},{back}"))));
    }
    url
}

pub fn dashboard(d: &Dashboard, request: &DashboardRequest, auth: bool) -> Markup {
    let range = &d.range;
    html! {
        div.bar {
            h2 { (d.project) }
            nav.ranges aria-label="range" {
                @for days in [7u64, 30, 90] {
                    @let from = range.to.checked_sub_days(Days::new(days)).unwrap_or(range.from);
                    a class=(if range.days() == days as i64 { "on" } else { "" }) href=(page_url(&d.project, from, range.to, request)) { (days) " days" }
                }
                form.custom method="get" action="/" {
                    input type="hidden" name="project" value=(d.project);
                    @if !request.funnel.is_empty() { input type="hidden" name="funnel" value=(request.funnel.join(",")); }
                    @if let Some((cohort, back)) = &request.retention { input type="hidden" name="retention" value=(format!("{cohort},{back}")); }
                    label { "from " input type="date" name="from" value=(range.from.to_string()) required; }
                    label { "to (exclusive) " input type="date" name="to" value=(range.to.to_string()) required; }
                    button type="submit" { "Apply" }
                }
            }
            p.muted {
                (range.from) " to " (range.to.pred_opt().unwrap_or(range.to)) " (" (range.days()) " days, " (d.timezone) ")"
                @if let Some(t) = d.latest_event { " · latest event " (datetime(t)) }
                @if auth { " · " button #sign-out type="button" { "Forget key" } }
            }
        }
        div.grid {
            (north_star_tile(d.north_star.as_ref().map(Option::as_ref), range))
            (inputs_tile(d.inputs.as_ref(), range))
            (goals_tile(d.goals.as_ref()))
            (funnel_tile(d.funnel.as_ref().map(Option::as_ref)))
            (retention_tile(d.retention.as_ref().map(Option::as_ref)))
            (experiments_tile(d.experiments.as_ref()))
            (anomalies_tile(d.anomalies.as_ref().map(Option::as_ref)))
            (attribution_tile(d.attribution.as_ref().map(Option::as_ref)))
        }
    }
}

/// A tile: its hook, title and body, or its error in `data-error`.
fn tile<T>(name: &str, title: &str, data: Result<T, &Error>, body: impl FnOnce(T) -> Markup) -> Markup {
    // Tables need the room of two columns on a wide screen.
    let class = if matches!(name, "experiments" | "attribution" | "retention") { "tile wide" } else { "tile" };
    match data {
        Ok(data) => html! { section class=(class) data-tile=(name) { h3 { (title) } (body(data)) } },
        Err(error) => html! {
            section.tile.failed data-tile=(name) data-error=(error.to_string()) { h3 { (title) } p.error { (error.to_string()) } }
        },
    }
}

fn empty(what: &str, call: &str) -> Markup {
    html! { div.empty { p { (what) } @if !call.is_empty() { pre { code { (call) } } } } }
}

/// Numbers for people: thousands separators, up to 3 significant decimals below 100.
pub fn number(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    if v.abs() >= 100.0 || v.fract() == 0.0 {
        let rounded = v.round() as i64;
        let digits = rounded.unsigned_abs().to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        return if rounded < 0 { format!("-{out}") } else { out };
    }
    let decimals = if v.abs() >= 10.0 {
        1
    } else if v.abs() >= 1.0 {
        2
    } else {
        3
    };
    format!("{v:.decimals$}")
}

fn with_unit(v: Option<f64>, unit: &str) -> String {
    match v {
        None => "—".into(),
        Some(v) if unit == "%" => format!("{}%", number(v * 100.0)),
        Some(v) if unit.is_empty() => number(v),
        Some(v) => format!("{} {unit}", number(v)),
    }
}

fn percent(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

fn signed_percent(v: f64) -> String {
    format!("{}{:.1}%", if v > 0.0 { "+" } else { "" }, v * 100.0)
}

fn date(t: Micros) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_micros(t)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

fn datetime(t: Micros) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_micros(t)
        .map(|d| d.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default()
}

/// The raw number of `data-value` (shortest round-trip form); empty when there is none.
fn raw(v: Option<f64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// Value, change against the previous period (coloured by the metric's direction), sparkline.
fn metric_card(m: &MetricTile, headline: bool) -> Markup {
    let change = m.change();
    let good = change.map(|c| (c > 0.0) == (m.direction == Direction::Increase));
    let values: Vec<Option<f64>> = m.series.iter().map(|p| p.value).collect();
    html! {
        div class=(if headline { "metric headline" } else { "metric" }) {
            div.label { (if m.name.is_empty() { &m.key } else { &m.name }) " " span.muted { (m.key) } }
            div.value data-metric-key=(m.key) data-value=(raw(m.value)) { (with_unit(m.value, &m.unit)) }
            div.change {
                @match (change, good) {
                    (Some(c), Some(good)) => span class=(if c == 0.0 { "flat" } else if good { "good" } else { "bad" }) { (signed_percent(c)) }
                    _ => span.flat { "no change to compare" }
                }
                " vs previous period (" (with_unit(m.previous, &m.unit)) ")"
            }
            (svg::sparkline(&values))
        }
    }
}

pub fn north_star_tile(data: Result<Option<&MetricTile>, &Error>, _range: &DayRange) -> Markup {
    tile("north-star", "North Star", data, |m| match m {
        Some(m) => metric_card(m, true),
        None => empty(
            "No North Star yet: create a metric with role NORTH_STAR.",
            r#"grpcurl -d '{"project":"P","metric":{"key":"dau","kind":"METRIC_KIND_UNIQUE_USERS","role":"METRIC_ROLE_NORTH_STAR","selector":{"event":"session_start"}}}' ADDR sextant.v1.MetricService/CreateMetric"#,
        ),
    })
}

fn inputs_tile(data: Result<&Vec<MetricTile>, &Error>, _range: &DayRange) -> Markup {
    tile("inputs", "Inputs", data, |inputs| {
        if inputs.is_empty() {
            return empty(
                "No input metrics: give a metric parent_keys naming the North Star to show it here.",
                r#"grpcurl -d '{"project":"P","metric":{"key":"signups","kind":"METRIC_KIND_COUNT","selector":{"event":"signup"},"parent_keys":["dau"]}}' ADDR sextant.v1.MetricService/CreateMetric"#,
            );
        }
        html! { div.metrics { @for m in inputs { (metric_card(m, false)) } } }
    })
}

fn status_name(status: GoalStatus) -> (&'static str, &'static str) {
    match status {
        GoalStatus::NotStarted => ("not started", "flat"),
        GoalStatus::Achieved => ("achieved", "good"),
        GoalStatus::Missed => ("missed", "bad"),
        GoalStatus::OnTrack => ("on track", "good"),
        GoalStatus::AtRisk => ("at risk", "warn"),
        GoalStatus::OffTrack => ("off track", "bad"),
    }
}

fn goals_tile(data: Result<&Vec<(String, Result<GoalReport>)>, &Error>) -> Markup {
    tile("goals", "Goals", data, |goals| {
        if goals.is_empty() {
            return empty(
                "No goals yet: set one on a metric with GoalService/CreateGoal.",
                r#"grpcurl -d '{"project":"P","goal":{"id":"q-signups","metric_key":"signups","period":{"from":"…","to":"…"},"relative_target":0.2}}' ADDR sextant.v1.GoalService/CreateGoal"#,
            );
        }
        html! {
            ul.goals {
                @for (id, report) in goals {
                    @match report {
                        Ok(r) => {
                            @let (status, class) = status_name(r.progress.status);
                            @let progress = r.progress.progress.unwrap_or(0.0).clamp(0.0, 1.0);
                            li {
                                div.label { (if r.goal.name.is_empty() { id } else { &r.goal.name }) " " span.muted { (r.goal.metric_key) }
                                    " " span class=(format!("badge {class}")) { (status) } }
                                div.progress title="progress; the mark is the expected pace" {
                                    div.done style=(format!("width:{:.1}%", progress * 100.0)) {}
                                    div.pace style=(format!("left:{:.1}%", r.progress.expected_progress.clamp(0.0, 1.0) * 100.0)) {}
                                }
                                div.muted {
                                    (with_unit(r.progress.current, "")) " of " (number(r.progress.target))
                                    " · progress " (r.progress.progress.map(percent).unwrap_or_else(|| "—".into()))
                                    " vs pace " (percent(r.progress.expected_progress))
                                    " · as of " (date(r.as_of))
                                }
                            }
                        }
                        Err(error) => li data-error=(error.to_string()) { (id) ": " span.error { (error.to_string()) } }
                    }
                }
            }
        }
    })
}

fn funnel_tile(data: Result<Option<&FunnelTile>, &Error>) -> Markup {
    tile("funnel", "Funnel", data, |funnel| match funnel {
        None => empty(
            "No funnel: add &funnel=signup,purchase (event names, in order) to the URL, or create a CONVERSION metric.",
            "",
        ),
        Some(f) => {
            let rows: Vec<(String, f64, String)> = f
                .result
                .steps
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let note = if i == 0 {
                        format!("{} users", number(s.users as f64))
                    } else {
                        format!("{} · {} of previous", number(s.users as f64), percent(s.conversion_from_previous))
                    };
                    (s.event.clone(), s.users as f64, note)
                })
                .collect();
            let last = f.result.steps.last().map(|s| s.conversion_from_start).unwrap_or(0.0);
            html! {
                (svg::bars(&rows))
                p.muted { "Overall conversion " strong { (percent(last)) } " within " (f.window / 86_400_000_000) " days of "
                    (f.steps.first().map(String::as_str).unwrap_or_default()) }
            }
        }
    })
}

fn retention_tile(data: Result<Option<&RetentionTile>, &Error>) -> Markup {
    tile("retention", "Retention", data, |retention| match retention {
        None => empty(
            "No retention table: create a North Star with an event, or add &retention=signup,session_start to the URL.",
            "",
        ),
        Some(r) => {
            let unit = match r.period {
                Period::Day => "day",
                Period::Week => "week",
                Period::Month => "month",
            };
            let columns =
                r.table.average_shares.len().max(r.table.rows.first().map(|row| row.shares.len()).unwrap_or(0));
            html! {
                p.muted { "First " (r.cohort_event) ", back with " (r.return_event) ", by " (unit) }
                @if r.table.rows.is_empty() {
                    p.empty { "No one entered a cohort in this range." }
                } @else {
                    div.scroll { table.heatmap {
                        thead { tr { th { "cohort" } th { "users" } @for i in 0..columns { th { (unit) " " (i) } } } }
                        tbody {
                            @for row in &r.table.rows {
                                tr {
                                    th { (date(row.start)) } td { (number(row.size as f64)) }
                                    @for (i, share) in row.shares.iter().enumerate() {
                                        @let complete = row.complete.get(i).copied().unwrap_or(false);
                                        td class=(if complete { "cell" } else { "cell partial" })
                                            style=(format!("--share:{share:.3}")) title=(format!("{} of {}", row.retained.get(i).copied().unwrap_or(0), row.size)) {
                                            (percent(*share))
                                        }
                                    }
                                }
                            }
                            tr.average { th { "average" } td {} @for share in &r.table.average_shares { td.cell style=(format!("--share:{share:.3}")) { (percent(*share)) } } }
                        }
                    } }
                }
            }
        }
    })
}

fn decision_name(decision: Decision) -> (&'static str, &'static str) {
    match decision {
        Decision::Ship => ("ship", "good"),
        Decision::Rollback => ("roll back", "bad"),
        Decision::KeepRunning => ("keep running", "flat"),
        Decision::Inconclusive => ("inconclusive", "warn"),
    }
}

fn experiments_tile(data: Result<&Vec<ExperimentTile>, &Error>) -> Markup {
    tile("experiments", "Experiments", data, |experiments| {
        if experiments.is_empty() {
            return empty(
                "No running or finished experiments: create one with ExperimentService/CreateExperiment, then StartExperiment.",
                "",
            );
        }
        html! {
            div.scroll { table.experiments {
                thead { tr { th { "experiment" } th { "primary metric" } th { "lift" } th { "interval" } th { "p-value" } th { "decision" } } }
                tbody {
                    @for e in experiments {
                        @match &e.readout {
                            Ok(r) => {
                                @let fmt = |v: f64| if r.relative { signed_percent(v) } else { number(v) };
                                @let (decision, class) = decision_name(r.decision);
                                tr {
                                    td { (e.key) br; span.muted { (format!("{:?}", e.status).to_lowercase()) ", " (number(r.users as f64)) " users" } }
                                    td { (r.metric_key) br; span.muted { (r.variant) " vs control" } }
                                    td { strong { (fmt(r.effect)) } }
                                    td { "[" (fmt(r.ci.0)) ", " (fmt(r.ci.1)) "]" }
                                    td { (format!("{:.4}", r.p_value)) }
                                    td { span class=(format!("badge {class}")) { (decision) } }
                                }
                            }
                            Err(error) => tr data-error=(error.to_string()) { td { (e.key) } td colspan="5" { span.error { (error.to_string()) } } }
                        }
                    }
                }
            } }
        }
    })
}

fn anomalies_tile(data: Result<Option<&(String, crate::core::metric::anomaly::AnomalyReport)>, &Error>) -> Markup {
    tile("anomalies", "Anomalies on the North Star", data, |report| match report {
        None => empty("No North Star to watch: anomalies are found on its daily series.", ""),
        Some((key, report)) => {
            let values: Vec<Option<f64>> = report.points.iter().map(|p| p.value).collect();
            let marks: Vec<Option<bool>> =
                report.points.iter().map(|p| p.verdict.is_anomaly.then_some(p.verdict.is_bad)).collect();
            let flagged: Vec<_> = report.points.iter().filter(|p| p.verdict.is_anomaly).collect();
            html! {
                (svg::marked_series(&values, &marks))
                @if flagged.is_empty() {
                    p.muted { "No anomaly in " (key) " over this range (robust z-score above " (report.threshold) " against the same weekday of the " (report.history) " weeks before)." }
                } @else {
                    ul.anomalies {
                        @for p in flagged {
                            li class=(if p.verdict.is_bad { "bad" } else { "good" }) {
                                (date(p.start)) ": " (with_unit(p.value, "")) " where " (with_unit(p.verdict.expected, "")) " was expected"
                                " (score " (format!("{:.1}", p.verdict.score.unwrap_or(0.0))) ")"
                            }
                        }
                    }
                }
            }
        }
    })
}

fn attribution_tile(data: Result<Option<&AttributionTile>, &Error>) -> Markup {
    tile("attribution", "Attribution by channel", data, |attribution| match attribution {
        None => empty(
            "No spend recorded in this range: push it with MetricService/RecordValues on a MANUAL metric, with a utm_source dimension.",
            "",
        ),
        Some(a) => html! {
            p.muted { "Spend from " (a.spend_metric) }
            div.scroll { table {
                thead { tr { th { "channel" } th { "conversions credited" } th { "spend" } th { "cost per conversion" } th { "ROAS" } } }
                tbody { @for row in &a.rows { tr {
                    td { (row.channel) }
                    td { (with_unit(row.credit, "")) }
                    td { (number(row.spend)) }
                    td { (with_unit(row.cost_per_conversion, "")) }
                    td { (row.roas.map(|r| format!("{r:.2}×")).unwrap_or_else(|| "—".into())) }
                } } }
            } }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::engine::dashboard::{AttributionRow, with_costs};

    #[test]
    fn numbers_for_people() {
        assert_eq!(number(1234567.4), "1,234,567");
        assert_eq!(number(-1500.0), "-1,500");
        assert_eq!(number(42.0), "42");
        assert_eq!(number(12.345), "12.3");
        assert_eq!(number(0.12345), "0.123");
        assert_eq!(raw(Some(0.1)), "0.1");
        assert_eq!(raw(Some(1234.0)), "1234");
        assert_eq!(raw(None), "");
    }

    #[test]
    fn attribution_rows_render_credit_spend_and_costs() {
        let tile = AttributionTile {
            spend_metric: "ad_spend".into(),
            rows: vec![
                with_costs("paid_search", 40.0, 3000.0, 1200.0),
                AttributionRow {
                    channel: "social".into(),
                    credit: None,
                    spend: 900.0,
                    cost_per_conversion: None,
                    roas: None,
                },
            ],
        };
        let html = attribution_tile(Ok(Some(&tile))).into_string();
        assert!(html.contains(r#"data-tile="attribution""#), "{html}");
        for cell in
            ["<td>paid_search</td>", "<td>40</td>", "<td>1,200</td>", "<td>30</td>", "<td>2.50×</td>", "<td>900</td>"]
        {
            assert!(html.contains(cell), "{cell} missing: {html}");
        }
        let empty = attribution_tile(Ok(None)).into_string();
        assert!(empty.contains("No spend recorded"), "{empty}");
        let failed = attribution_tile(Err(&Error::invalid("range", "bad"))).into_string();
        assert!(failed.contains(r#"data-error="range: bad""#), "{failed}");
    }
}
