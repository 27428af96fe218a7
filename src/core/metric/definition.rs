//! Metric definitions: kinds, roles, validation and the reference graph (inputs and parents).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::core::analysis::revenue::BridgeComponent;
use crate::core::bounds;
use crate::core::catalog::validate_slug;
use crate::core::filter::{EventSelector, validate_selector};
use crate::core::model::Micros;
use crate::core::time::{CalendarOffset, CalendarPeriod};
use crate::error::{Error, Result, echo};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum MetricKind {
    #[default]
    Count,
    UniqueUsers,
    Sum,
    Avg,
    Min,
    Max,
    Percentile,
    Ratio,
    Formula,
    Conversion,
    Retention,
    Manual,
    /// Per bucket, the sum over people of their latest `property` value before its end.
    LatestSum,
    /// A column of the revenue bridge (`revenue_component`).
    RevenueBridge,
}

impl MetricKind {
    /// Kinds computed from one scan of matching events.
    pub fn is_event_aggregate(self) -> bool {
        matches!(
            self,
            MetricKind::Count
                | MetricKind::UniqueUsers
                | MetricKind::Sum
                | MetricKind::Avg
                | MetricKind::Min
                | MetricKind::Max
                | MetricKind::Percentile
        )
    }

    fn needs_property(self) -> bool {
        matches!(
            self,
            MetricKind::Sum
                | MetricKind::Avg
                | MetricKind::Min
                | MetricKind::Max
                | MetricKind::Percentile
                | MetricKind::LatestSum
                | MetricKind::RevenueBridge
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum MetricRole {
    #[default]
    Kpi,
    NorthStar,
    Input,
    Guardrail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Direction {
    #[default]
    Increase,
    Decrease,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Period {
    #[default]
    Day,
    Week,
    Month,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MetricInput {
    /// The name a formula uses for this input; the metric key when empty.
    pub alias: String,
    pub metric_key: String,
    pub offset: CalendarOffset,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Metric {
    pub key: String,
    pub name: String,
    pub description: String,
    pub kind: MetricKind,
    pub selector: Option<EventSelector>,
    pub conversion_selector: Option<EventSelector>,
    pub property: String,
    pub percentile: f64,
    pub numerator_key: String,
    pub denominator_key: String,
    pub numerator_offset: CalendarOffset,
    pub denominator_offset: CalendarOffset,
    pub formula: String,
    pub inputs: Vec<MetricInput>,
    /// CONVERSION window (default 14 days).
    pub window: Option<Micros>,
    pub retention_period: Period,
    pub retention_offset: u32,
    /// RETENTION: periods counted from each user's first event (ROLLING) instead of calendar periods.
    pub retention_rolling: bool,
    /// RETENTION: returning in the period or any later one counts.
    pub retention_unbounded: bool,
    pub rolling_window: Option<Micros>,
    pub to_date: Option<CalendarPeriod>,
    /// MANUAL: the last value per bucket instead of the sum.
    pub semi_additive_last: bool,
    pub fill_nulls_with: Option<f64>,
    pub constant_properties: Vec<String>,
    /// REVENUE_BRIDGE: the column read. Defaulted so definitions stored before it still load.
    #[serde(default)]
    pub revenue_component: BridgeComponent,
    pub role: MetricRole,
    pub parent_keys: Vec<String>,
    pub direction: Direction,
    pub unit: String,
    pub version: u32,
    pub created: Micros,
    pub updated: Micros,
}

pub const DEFAULT_CONVERSION_WINDOW: Micros = 14 * crate::core::model::MICROS_PER_DAY;
const ROLLING_DAY: Micros = crate::core::model::MICROS_PER_DAY;
/// The longest rolling window, in days (every window's bound, `bounds::MAX_WINDOW_DAYS`).
pub const MAX_ROLLING_DAYS: i64 = bounds::MAX_WINDOW_DAYS;

impl Metric {
    /// Metrics this one reads values from (RATIO and FORMULA inputs).
    pub fn input_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = match self.kind {
            MetricKind::Ratio => vec![self.numerator_key.clone(), self.denominator_key.clone()],
            MetricKind::Formula => {
                let mut keys: Vec<String> = self.inputs.iter().map(|i| i.metric_key.clone()).collect();
                let aliases: BTreeSet<&str> = self.inputs.iter().map(|i| i.alias.as_str()).collect();
                if let Ok(expr) = crate::core::metric::formula::parse(&self.formula) {
                    keys.extend(expr.references().into_iter().filter(|r| !aliases.contains(r.as_str())));
                }
                keys
            }
            _ => vec![],
        };
        keys.sort();
        keys.dedup();
        keys
    }

    /// Checks the definition on its own; references to other metrics are checked by
    /// `validate_references`.
    pub fn validate(&self) -> Result<()> {
        validate_slug("metric.key", &self.key)?;
        bounds::check_name("metric.name", &self.name)?;
        bounds::check_name("metric.unit", &self.unit)?;
        bounds::check_text("metric.description", &self.description)?;
        self.validate_offsets()?;
        bounds::check_period_index("metric.retention_offset", self.retention_offset)?;
        bounds::check_window("metric.window", self.window)?;
        bounds::check_window("metric.rolling_window", self.rolling_window)?;
        let selector_needed = self.kind.is_event_aggregate()
            || matches!(
                self.kind,
                MetricKind::Conversion | MetricKind::Retention | MetricKind::LatestSum | MetricKind::RevenueBridge
            );
        match (&self.selector, selector_needed) {
            (Some(selector), _) => validate_selector("metric.selector", selector)?,
            (None, true) => {
                return Err(Error::invalid("metric.selector", format!("required for {:?} metrics", self.kind)));
            }
            (None, false) => {}
        }
        if matches!(self.kind, MetricKind::Conversion | MetricKind::Retention) {
            let Some(selector) = &self.conversion_selector else {
                return Err(Error::invalid(
                    "metric.conversion_selector",
                    format!("required for {:?} metrics", self.kind),
                ));
            };
            validate_selector("metric.conversion_selector", selector)?;
        }
        if self.kind.needs_property() {
            crate::core::catalog::validate_name("metric.property", &self.property)?;
        }
        if self.kind == MetricKind::Percentile && !(self.percentile > 0.0 && self.percentile < 100.0) {
            return Err(Error::invalid("metric.percentile", "must be in (0, 100), e.g. 95 for p95"));
        }
        if self.kind == MetricKind::Ratio {
            validate_slug("metric.numerator_key", &self.numerator_key)?;
            validate_slug("metric.denominator_key", &self.denominator_key)?;
        }
        if self.kind == MetricKind::Formula {
            let expr = crate::core::metric::formula::parse(&self.formula)
                .map_err(|e| Error::invalid("metric.formula", e.to_string()))?;
            for (i, input) in self.inputs.iter().enumerate() {
                validate_slug(&format!("metric.inputs[{i}].metric_key"), &input.metric_key)?;
            }
            let known: BTreeSet<&str> = self
                .inputs
                .iter()
                .flat_map(|i| [i.alias.as_str(), i.metric_key.as_str()])
                .filter(|s| !s.is_empty())
                .collect();
            for reference in expr.references() {
                if !self.inputs.is_empty() && !known.contains(reference.as_str()) {
                    return Err(Error::invalid(
                        "metric.formula",
                        format!("{reference} is not among the inputs", reference = echo(&reference)),
                    ));
                }
                if self.inputs.is_empty() {
                    validate_slug("metric.formula", &reference)?;
                }
            }
        }
        let window_ok = |w: Option<Micros>| w.is_none_or(|w| w > 0);
        if !window_ok(self.window) {
            return Err(Error::invalid("metric.window", "must be positive"));
        }
        if !window_ok(self.rolling_window) {
            return Err(Error::invalid("metric.rolling_window", "must be positive"));
        }
        if let Some(window) = self.rolling_window
            && (window % ROLLING_DAY != 0 || window / ROLLING_DAY > MAX_ROLLING_DAYS)
        {
            return Err(Error::invalid(
                "metric.rolling_window",
                format!("must be a whole number of days, at most {MAX_ROLLING_DAYS}"),
            ));
        }
        if (self.rolling_window.is_some() || self.to_date.is_some()) && !self.kind.is_event_aggregate() {
            return Err(Error::invalid(
                "metric.rolling_window",
                "windows apply to event aggregates (COUNT … PERCENTILE)",
            ));
        }
        if self.rolling_window.is_some() && self.to_date.is_some() {
            return Err(Error::invalid("metric.to_date", "use either rolling_window or to_date"));
        }
        if self.semi_additive_last && self.kind != MetricKind::Manual {
            return Err(Error::invalid("metric.semi_additive", "applies to MANUAL metrics"));
        }
        if self.fill_nulls_with.is_some_and(|f| !f.is_finite()) {
            return Err(Error::invalid("metric.fill_nulls_with", "must be finite"));
        }
        for (i, parent) in self.parent_keys.iter().enumerate() {
            validate_slug(&format!("metric.parent_keys[{i}]"), parent)?;
            if *parent == self.key {
                return Err(Error::invalid(format!("metric.parent_keys[{i}]"), "a metric cannot be its own parent"));
            }
        }
        for property in &self.constant_properties {
            crate::core::catalog::validate_name("metric.constant_properties", property)?;
        }
        Ok(())
    }
}

impl Metric {
    /// The calendar offsets of RATIO and FORMULA inputs are bounded (`bounds::check_offset`);
    /// checked at create and again before a stored definition is evaluated.
    pub fn validate_offsets(&self) -> Result<()> {
        bounds::check_offset("metric.numerator_offset", self.numerator_offset)?;
        bounds::check_offset("metric.denominator_offset", self.denominator_offset)?;
        for (i, input) in self.inputs.iter().enumerate() {
            bounds::check_offset(&format!("metric.inputs[{i}].offset"), input.offset)?;
        }
        Ok(())
    }
}

/// Checks that every referenced metric exists and that neither inputs nor parent links form
/// a cycle, with `candidate` replacing its previous version in `metrics`.
pub fn validate_references(candidate: &Metric, metrics: &BTreeMap<String, Metric>) -> Result<()> {
    for key in candidate.input_keys() {
        if key != candidate.key && !metrics.contains_key(&key) {
            return Err(Error::invalid("metric", format!("references unknown metric {key}", key = echo(&key))));
        }
    }
    for key in &candidate.parent_keys {
        if !metrics.contains_key(key) {
            return Err(Error::invalid("metric.parent_keys", format!("unknown metric {key}", key = echo(key))));
        }
    }
    let lookup = |key: &str| if key == candidate.key { Some(candidate) } else { metrics.get(key) };
    for (edges, what) in [
        (&Metric::input_keys as &dyn Fn(&Metric) -> Vec<String>, "inputs"),
        (&|m: &Metric| m.parent_keys.clone(), "parent links"),
    ] {
        // Depth-first search from the candidate: reaching it again is a cycle.
        let mut stack = edges(candidate);
        let mut seen = BTreeSet::new();
        while let Some(key) = stack.pop() {
            if key == candidate.key {
                let field = if what == "inputs" { "metric" } else { "metric.parent_keys" };
                return Err(Error::invalid(field, format!("{what} form a cycle through {}", echo(&candidate.key))));
            }
            if seen.insert(key.clone())
                && let Some(metric) = lookup(&key)
            {
                stack.extend(edges(metric));
            }
        }
    }
    Ok(())
}

/// Every version of every metric of a project, oldest first, by key. Derefs to the map so
/// the engine's create/update/delete calls change it directly.
#[derive(Debug, Default, Clone)]
pub struct MetricBook {
    versions: BTreeMap<String, Vec<Metric>>,
}

impl std::ops::Deref for MetricBook {
    type Target = BTreeMap<String, Vec<Metric>>;
    fn deref(&self) -> &Self::Target {
        &self.versions
    }
}

impl std::ops::DerefMut for MetricBook {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.versions
    }
}

/// Which metric a query runs.
pub enum MetricTarget {
    Key(String, u32),
    Inline(Box<Metric>),
}

impl MetricBook {
    /// The latest version of every metric.
    pub fn latest_metrics(&self) -> BTreeMap<String, Metric> {
        self.versions.iter().filter_map(|(k, versions)| versions.last().map(|m| (k.clone(), m.clone()))).collect()
    }

    /// A version of a metric (0: the latest).
    pub(crate) fn metric_version(&self, key: &str, version: u32) -> Result<&Metric> {
        let versions = self
            .versions
            .get(key)
            .ok_or_else(|| Error::NotFound(format!("metric {key} not found", key = echo(key))))?;
        let found = if version == 0 { versions.last() } else { versions.iter().find(|m| m.version == version) };
        found.ok_or_else(|| Error::NotFound(format!("metric {key} has no version {version}", key = echo(key))))
    }

    pub(crate) fn latest_metric(&self, key: &str) -> Result<&Metric> {
        self.versions
            .get(key)
            .and_then(|v| v.last())
            .ok_or_else(|| Error::NotFound(format!("metric {key} not found", key = echo(key))))
    }

    /// The definition a query runs: a stored version, or a checked inline definition.
    pub(crate) fn resolve_target(&self, target: MetricTarget) -> Result<Metric> {
        match target {
            MetricTarget::Key(key, version) => Ok(self.metric_version(&key, version)?.clone()),
            MetricTarget::Inline(metric) => {
                metric.validate()?;
                validate_references(&metric, &self.latest_metrics())?;
                Ok(*metric)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(key: &str) -> Metric {
        Metric {
            key: key.into(),
            kind: MetricKind::Count,
            selector: Some(EventSelector { event: "signup".into(), filters: vec![] }),
            ..Default::default()
        }
    }

    #[test]
    fn definitions_are_checked() {
        assert!(count("signups").validate().is_ok());
        let field = |m: Metric| match m.validate() {
            Err(Error::InvalidArgument { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(Metric { key: "Bad Key".into(), ..count("x") }), "metric.key");
        assert_eq!(field(Metric { selector: None, ..count("x") }), "metric.selector");
        assert_eq!(field(Metric { kind: MetricKind::Sum, ..count("x") }), "metric.property");
        assert_eq!(
            field(Metric { kind: MetricKind::Percentile, property: "p".into(), percentile: 100.0, ..count("x") }),
            "metric.percentile"
        );
        assert_eq!(field(Metric { kind: MetricKind::Formula, formula: "a + ".into(), ..count("x") }), "metric.formula");
        assert_eq!(field(Metric { kind: MetricKind::Conversion, ..count("x") }), "metric.conversion_selector");
        assert_eq!(field(Metric { parent_keys: vec!["x".into()], ..count("x") }), "metric.parent_keys[0]");
        let days = |days| CalendarOffset { months: 0, days };
        assert_eq!(field(Metric { numerator_offset: days(i32::MIN), ..count("x") }), "metric.numerator_offset.days");
        let input = MetricInput { metric_key: "a".into(), offset: days(i32::MAX), ..Default::default() };
        assert_eq!(field(Metric { inputs: vec![input], ..count("x") }), "metric.inputs[0].offset.days");
        assert_eq!(field(Metric { retention_offset: u32::MAX, ..count("x") }), "metric.retention_offset");
        assert_eq!(field(Metric { rolling_window: Some(i64::MAX), ..count("x") }), "metric.rolling_window");
        assert_eq!(field(Metric { name: "x".repeat(201), ..count("x") }), "metric.name");
        // Rolling windows are whole local days.
        assert!(Metric { rolling_window: Some(7 * ROLLING_DAY), ..count("x") }.validate().is_ok());
        for window in [ROLLING_DAY + 1, ROLLING_DAY / 2, (MAX_ROLLING_DAYS + 1) * ROLLING_DAY] {
            assert_eq!(field(Metric { rolling_window: Some(window), ..count("x") }), "metric.rolling_window");
        }
    }

    #[test]
    fn references_must_exist_and_not_cycle() {
        let mut metrics = BTreeMap::new();
        metrics.insert("a".to_string(), count("a"));
        let ratio = |key: &str, num: &str, den: &str| Metric {
            key: key.into(),
            kind: MetricKind::Ratio,
            numerator_key: num.into(),
            denominator_key: den.into(),
            ..Default::default()
        };
        assert!(validate_references(&ratio("r", "a", "a"), &metrics).is_ok());
        assert!(validate_references(&ratio("r", "a", "zzz"), &metrics).is_err());
        metrics.insert("r".into(), ratio("r", "a", "a"));
        // f = r + 1, then r redefined as f / a: a cycle.
        let formula =
            Metric { key: "f".into(), kind: MetricKind::Formula, formula: "r + 1".into(), ..Default::default() };
        assert!(validate_references(&formula, &metrics).is_ok());
        metrics.insert("f".into(), formula);
        assert!(validate_references(&ratio("r", "f", "a"), &metrics).is_err());
        // Parent links: a -> b -> a.
        metrics.insert("b".into(), Metric { parent_keys: vec!["a".into()], ..count("b") });
        assert!(validate_references(&Metric { parent_keys: vec!["b".into()], ..count("a") }, &metrics).is_err());
        assert!(validate_references(&Metric { parent_keys: vec!["f".into()], ..count("a") }, &metrics).is_ok());
    }
}
