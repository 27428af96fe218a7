//! Metric definitions: kinds, roles, validation and the reference graph (inputs and parents).

pub mod forecast;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::analysis::revenue::BridgeComponent;
use super::catalog::validate_slug;
use super::filter::{EventSelector, validate_selector};
use super::model::Micros;
use super::time::{CalendarOffset, CalendarPeriod};
use crate::error::{Error, Result};

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

pub const DEFAULT_CONVERSION_WINDOW: Micros = 14 * 86_400_000_000;

impl Metric {
    /// Metrics this one reads values from (RATIO and FORMULA inputs).
    pub fn input_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = match self.kind {
            MetricKind::Ratio => vec![self.numerator_key.clone(), self.denominator_key.clone()],
            MetricKind::Formula => {
                let mut keys: Vec<String> = self.inputs.iter().map(|i| i.metric_key.clone()).collect();
                let aliases: BTreeSet<&str> = self.inputs.iter().map(|i| i.alias.as_str()).collect();
                if let Ok(expr) = super::formula::parse(&self.formula) {
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
        if self.name.chars().count() > 200 {
            return Err(Error::invalid("metric.name", "longer than 200 characters"));
        }
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
            super::catalog::validate_name("metric.property", &self.property)?;
        }
        if self.kind == MetricKind::Percentile && !(self.percentile > 0.0 && self.percentile < 100.0) {
            return Err(Error::invalid("metric.percentile", "must be in (0, 100), e.g. 95 for p95"));
        }
        if self.kind == MetricKind::Ratio {
            validate_slug("metric.numerator_key", &self.numerator_key)?;
            validate_slug("metric.denominator_key", &self.denominator_key)?;
        }
        if self.kind == MetricKind::Formula {
            let expr =
                super::formula::parse(&self.formula).map_err(|e| Error::invalid("metric.formula", e.to_string()))?;
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
                    return Err(Error::invalid("metric.formula", format!("{reference:?} is not among the inputs")));
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
            super::catalog::validate_name("metric.constant_properties", property)?;
        }
        Ok(())
    }
}

/// Checks that every referenced metric exists and that neither inputs nor parent links form
/// a cycle, with `candidate` replacing its previous version in `metrics`.
pub fn validate_references(candidate: &Metric, metrics: &BTreeMap<String, Metric>) -> Result<()> {
    for key in candidate.input_keys() {
        if key != candidate.key && !metrics.contains_key(&key) {
            return Err(Error::invalid("metric", format!("references unknown metric {key:?}")));
        }
    }
    for key in &candidate.parent_keys {
        if !metrics.contains_key(key) {
            return Err(Error::invalid("metric.parent_keys", format!("unknown metric {key:?}")));
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
                return Err(Error::invalid(field, format!("{what} form a cycle through {:?}", candidate.key)));
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
