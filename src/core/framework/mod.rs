//! ApplyFramework (SPEC §16): metric templates (North Star + AARRR, SaaS revenue) instantiated
//! from an event mapping, and the tracking-plan entries those metrics rely on.
//!
//! `plan` is pure: from the mapping and what the project holds it derives the definitions and
//! the skipped keys; `Engine::apply_framework` compares them with the stored ones and writes.

use std::collections::BTreeMap;

use crate::core::analysis::revenue::BridgeComponent;
use crate::core::catalog::validate_name;
use crate::core::filter::EventSelector;
use crate::core::metric::definition::{Direction, Metric, MetricInput, MetricKind, MetricRole, Period};
use crate::core::model::{EventType, Micros, PropertySchema, PropertyType};
use crate::error::{Error, Result};

pub const DEFAULT_ACTIVATION_WINDOW: Micros = 7 * crate::core::model::MICROS_PER_DAY;
const WEEK: Micros = 7 * 86_400_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framework {
    NorthStarAarrr,
    SaasRevenue,
}

/// Which events and properties play which part; empty strings are unmapped slots.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FrameworkMapping {
    pub signup_event: String,
    pub activation_event: String,
    pub activation_window: Option<Micros>,
    pub core_event: String,
    pub purchase_event: String,
    pub revenue_property: String,
    pub subscription_event: String,
    pub mrr_property: String,
    pub referral_event: String,
    pub touch_event: String,
    pub channel_property: String,
    pub spend_metric_key: String,
}

impl FrameworkMapping {
    /// Checks the names that are set; unset slots are fine (their metrics are skipped).
    pub fn validate(&self) -> Result<()> {
        for (slot, name) in self.slots() {
            if !name.is_empty() {
                validate_name(&format!("mapping.{slot}"), name)?;
            }
        }
        if self.activation_window.is_some_and(|w| w <= 0) {
            return Err(Error::invalid("mapping.activation_window", "must be positive"));
        }
        Ok(())
    }

    fn slots(&self) -> [(&'static str, &str); 11] {
        [
            ("signup_event", &self.signup_event),
            ("activation_event", &self.activation_event),
            ("core_event", &self.core_event),
            ("purchase_event", &self.purchase_event),
            ("revenue_property", &self.revenue_property),
            ("subscription_event", &self.subscription_event),
            ("mrr_property", &self.mrr_property),
            ("referral_event", &self.referral_event),
            ("touch_event", &self.touch_event),
            ("channel_property", &self.channel_property),
            ("spend_metric_key", &self.spend_metric_key),
        ]
    }

    fn slot(&self, slot: &str) -> &str {
        self.slots().into_iter().find(|(s, _)| *s == slot).map_or("", |(_, v)| v)
    }
}

/// What the project holds that a plan depends on.
pub struct ProjectView<'a> {
    /// Whether the project has ever received an event of this name.
    pub seen: &'a dyn Fn(&str) -> bool,
    pub metrics: &'a BTreeMap<String, Metric>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Skipped {
    pub key: String,
    pub reason: String,
}

/// The definitions to create or update, in an order where every reference comes first.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub metrics: Vec<Metric>,
    pub skipped: Vec<Skipped>,
    pub event_types: Vec<EventType>,
}

/// A template: the metric, the mapping slots it needs (events must have been received) and the
/// framework metrics it reads.
struct Template {
    metric: Metric,
    events: Vec<&'static str>,
    properties: Vec<&'static str>,
    reads: Vec<String>,
}

fn selector(event: &str) -> Option<EventSelector> {
    (!event.is_empty()).then(|| EventSelector { event: event.to_owned(), filters: vec![] })
}

fn metric(key: &str, name: &str, description: &str, kind: MetricKind, unit: &str) -> Metric {
    Metric {
        key: key.into(),
        name: name.into(),
        description: description.into(),
        kind,
        unit: unit.into(),
        ..Default::default()
    }
}

fn template(metric: Metric, events: &[&'static str], properties: &[&'static str], reads: &[&str]) -> Template {
    Template {
        metric,
        events: events.to_vec(),
        properties: properties.to_vec(),
        reads: reads.iter().map(|r| r.to_string()).collect(),
    }
}

fn ratio(key: &str, name: &str, description: &str, numerator: &str, denominator: &str, unit: &str) -> Metric {
    Metric {
        numerator_key: numerator.into(),
        denominator_key: denominator.into(),
        ..metric(key, name, description, MetricKind::Ratio, unit)
    }
}

fn north_star_aarrr(m: &FrameworkMapping) -> Vec<Template> {
    let core = || selector(&m.core_event);
    let signup = || selector(&m.signup_event);
    let north_star = Metric {
        selector: core(),
        rolling_window: Some(WEEK),
        role: MetricRole::NorthStar,
        ..metric(
            "north_star",
            "Weekly active users",
            "How many people got value from the product (did the core event) in the last 7 days?",
            MetricKind::UniqueUsers,
            "users",
        )
    };
    let signups = Metric {
        selector: signup(),
        ..metric("acquisition_signups", "Signups", "How many people sign up?", MetricKind::Count, "signups")
    };
    let activation = Metric {
        selector: signup(),
        conversion_selector: selector(&m.activation_event),
        window: Some(m.activation_window.unwrap_or(DEFAULT_ACTIVATION_WINDOW)),
        ..metric(
            "activation_rate",
            "Activation rate",
            "What share of new signups reach the activation event within the activation window?",
            MetricKind::Conversion,
            "%",
        )
    };
    let retention = Metric {
        selector: signup(),
        conversion_selector: core(),
        retention_period: Period::Day,
        retention_offset: 7,
        ..metric(
            "retention_d7",
            "Day-7 retention",
            "What share of the people who signed up come back with the core event on day 7?",
            MetricKind::Retention,
            "%",
        )
    };
    let revenue = Metric {
        selector: selector(&m.purchase_event),
        property: m.revenue_property.clone(),
        ..metric("revenue", "Revenue", "How much revenue do purchases bring?", MetricKind::Sum, "USD")
    };
    let paying = Metric {
        selector: selector(&m.purchase_event),
        ..metric("paying_users", "Paying users", "How many people buy?", MetricKind::UniqueUsers, "users")
    };
    let active = Metric {
        selector: core(),
        ..metric(
            "active_users",
            "Active users",
            "How many people did the core event in the bucket (the ARPU and referral denominator)?",
            MetricKind::UniqueUsers,
            "users",
        )
    };
    let arpu = ratio(
        "arpu",
        "ARPU",
        "How much revenue does an active user bring (revenue / active users)?",
        "revenue",
        "active_users",
        "USD",
    );
    let referring = Metric {
        selector: selector(&m.referral_event),
        ..metric(
            "referring_users",
            "Referring users",
            "How many people refer others?",
            MetricKind::UniqueUsers,
            "users",
        )
    };
    let referral = ratio(
        "referral_rate",
        "Referral rate",
        "What share of active users refer others?",
        "referring_users",
        "active_users",
        "%",
    );
    let cac = Metric {
        formula: "spend / signups".into(),
        inputs: vec![
            MetricInput { alias: "spend".into(), metric_key: m.spend_metric_key.clone(), offset: Default::default() },
            MetricInput {
                alias: "signups".into(),
                metric_key: "acquisition_signups".into(),
                offset: Default::default(),
            },
        ],
        direction: Direction::Decrease,
        ..metric(
            "cac",
            "Customer acquisition cost",
            "What does one signup cost in ad spend? Query with the channel breakdown for CAC per channel.",
            MetricKind::Formula,
            "USD",
        )
    };
    vec![
        template(north_star, &["core_event"], &[], &[]),
        template(signups, &["signup_event"], &[], &[]),
        template(activation, &["signup_event", "activation_event"], &[], &[]),
        template(retention, &["signup_event", "core_event"], &[], &[]),
        template(revenue, &["purchase_event"], &["revenue_property"], &[]),
        template(paying, &["purchase_event"], &[], &[]),
        template(active, &["core_event"], &[], &[]),
        template(arpu, &[], &[], &["revenue", "active_users"]),
        template(referring, &["referral_event"], &[], &[]),
        template(referral, &[], &[], &["referring_users", "active_users"]),
        template(cac, &[], &["spend_metric_key"], &["acquisition_signups"]),
    ]
}

fn saas_revenue(m: &FrameworkMapping) -> Vec<Template> {
    let mrr = Metric {
        selector: selector(&m.subscription_event),
        property: m.mrr_property.clone(),
        ..metric(
            "mrr",
            "MRR",
            "How much monthly recurring revenue do we have (each customer's latest MRR, summed)?",
            MetricKind::LatestSum,
            "USD",
        )
    };
    let column = |key: &str, name: &str, question: &str, component: BridgeComponent, unit: &str, good: Direction| {
        let metric = Metric {
            selector: selector(&m.subscription_event),
            property: m.mrr_property.clone(),
            revenue_component: component,
            direction: good,
            ..metric(key, name, question, MetricKind::RevenueBridge, unit)
        };
        template(metric, &["subscription_event"], &["mrr_property"], &[])
    };
    use BridgeComponent as C;
    use Direction::{Decrease, Increase};
    vec![
        template(mrr, &["subscription_event"], &["mrr_property"], &[]),
        column("new_mrr", "New MRR", "How much MRR do new customers bring?", C::NewMrr, "USD", Increase),
        column(
            "reactivation_mrr",
            "Reactivation MRR",
            "How much MRR do returning customers bring back?",
            C::ReactivationMrr,
            "USD",
            Increase,
        ),
        column(
            "expansion_mrr",
            "Expansion MRR",
            "How much do customers grow (upgrades)?",
            C::ExpansionMrr,
            "USD",
            Increase,
        ),
        column(
            "contraction_mrr",
            "Contraction MRR",
            "How much do customers shrink (downgrades)?",
            C::ContractionMrr,
            "USD",
            Decrease,
        ),
        column("churned_mrr", "Churned MRR", "How much MRR do cancellations cost?", C::ChurnedMrr, "USD", Decrease),
        column(
            "customers",
            "Customers",
            "How many paying customers are there?",
            C::EndingCustomers,
            "customers",
            Increase,
        ),
        column(
            "net_revenue_retention",
            "Net revenue retention",
            "How much of the starting MRR do existing customers keep, expansion included?",
            C::NetRevenueRetention,
            "%",
            Increase,
        ),
        column(
            "gross_revenue_retention",
            "Gross revenue retention",
            "How much of the starting MRR is kept, before expansion?",
            C::GrossRevenueRetention,
            "%",
            Increase,
        ),
        column(
            "customer_churn_rate",
            "Customer churn rate",
            "What share of the customers at the start of the bucket cancel during it?",
            C::CustomerChurnRate,
            "%",
            Decrease,
        ),
        template(
            ratio("arpa", "ARPA", "How much MRR does an account bring (MRR / customers)?", "mrr", "customers", "USD"),
            &[],
            &[],
            &["mrr", "customers"],
        ),
        template(
            ratio(
                "ltv",
                "Customer lifetime value",
                "What is a customer worth over their lifetime (ARPA / customer churn rate per bucket; \
                 query by MONTH for monthly churn)?",
                "arpa",
                "customer_churn_rate",
                "USD",
            ),
            &[],
            &[],
            &["arpa", "customer_churn_rate"],
        ),
    ]
}

/// Tracking-plan entries for the mapped events the project has received: the question each
/// answers and the properties the framework's metrics read (required).
fn plan_entries(
    framework: Framework,
    m: &FrameworkMapping,
    view: &ProjectView<'_>,
) -> Vec<(String, String, Vec<PropertySchema>)> {
    let property = |name: &str, kind: PropertyType, min: Option<f64>, description: &str| PropertySchema {
        name: name.to_owned(),
        kind,
        required: true,
        min,
        description: description.to_owned(),
        ..Default::default()
    };
    let channel = || {
        (!m.channel_property.is_empty())
            .then(|| property(&m.channel_property, PropertyType::String, None, "the acquisition channel"))
    };
    let mut entries: Vec<(&str, &str, Vec<PropertySchema>)> = match framework {
        Framework::NorthStarAarrr => vec![
            (
                &m.signup_event,
                "How many people sign up, and through which channel? (acquisition)",
                channel().into_iter().collect(),
            ),
            (&m.activation_event, "Do new users reach the moment they get value? (activation)", vec![]),
            (&m.core_event, "How many people get value from the product? (the North Star, retention)", vec![]),
            (
                &m.purchase_event,
                "How much revenue do purchases bring, and from how many buyers? (revenue)",
                (!m.revenue_property.is_empty())
                    .then(|| property(&m.revenue_property, PropertyType::Number, None, "the purchase amount"))
                    .into_iter()
                    .collect(),
            ),
            (&m.referral_event, "Do users bring other users? (referral)", vec![]),
            (
                &m.touch_event,
                "Which marketing channels do people come through before signing up?",
                channel().into_iter().collect(),
            ),
        ],
        Framework::SaasRevenue => vec![(
            &m.subscription_event,
            "How does MRR move: new, expansion, contraction, churn, reactivation?",
            (!m.mrr_property.is_empty())
                .then(|| {
                    property(
                        &m.mrr_property,
                        PropertyType::Number,
                        Some(0.0),
                        "the customer's MRR after the change; 0 = cancelled",
                    )
                })
                .into_iter()
                .collect(),
        )],
    };
    entries.retain(|(event, _, _)| !event.is_empty() && (view.seen)(event));
    let mut merged: Vec<(String, String, Vec<PropertySchema>)> = Vec::new();
    for (event, question, properties) in entries {
        // One event may fill several slots: keep the first question, add every property.
        match merged.iter_mut().find(|(e, _, _)| e == event) {
            Some((_, _, existing)) => {
                for p in properties {
                    if !existing.iter().any(|q| q.name == p.name) {
                        existing.push(p);
                    }
                }
            }
            None => merged.push((event.to_owned(), question.to_owned(), properties)),
        }
    }
    merged
}

/// The framework's definitions for this mapping and project: templates whose slots are
/// mapped and whose events were received, with parent links to the North Star (AARRR) or to
/// `mrr` (SaaS); the rest in `skipped` with the reason. Event types are returned as they
/// should read after the upsert (`existing` entries extended), in event name order.
pub fn plan(
    framework: Framework,
    mapping: &FrameworkMapping,
    view: &ProjectView<'_>,
    existing_types: &BTreeMap<String, EventType>,
) -> Plan {
    let (templates, root) = match framework {
        Framework::NorthStarAarrr => (north_star_aarrr(mapping), "north_star"),
        Framework::SaasRevenue => (saas_revenue(mapping), "mrr"),
    };
    let helpers = ["active_users", "referring_users"];
    // A project that already has another North Star keeps it: the inputs point at it.
    let other_north_star =
        view.metrics.values().find(|m| m.role == MetricRole::NorthStar && m.key != "north_star").map(|m| m.key.clone());
    let parent = match (&other_north_star, framework) {
        (Some(key), Framework::NorthStarAarrr) => key.clone(),
        _ => root.to_owned(),
    };
    let mut out = Plan::default();
    let mut planned: Vec<String> = Vec::new();
    for template in templates {
        let key = template.metric.key.clone();
        let reason = skip_reason(&template, mapping, view, &planned, &out.skipped, other_north_star.as_deref());
        if let Some(reason) = reason {
            out.skipped.push(Skipped { key, reason });
            continue;
        }
        let mut metric = template.metric;
        if key != root && !helpers.contains(&key.as_str()) {
            metric.parent_keys = vec![parent.clone()];
            if framework == Framework::NorthStarAarrr {
                metric.role = MetricRole::Input;
            }
        }
        // A parent that is itself skipped cannot be linked.
        metric.parent_keys.retain(|p| planned.contains(p) || view.metrics.contains_key(p));
        planned.push(key);
        out.metrics.push(metric);
    }
    for (event, question, properties) in plan_entries(framework, mapping, view) {
        let mut entry = existing_types.get(&event).cloned().unwrap_or_else(|| EventType {
            name: event.clone(),
            description: format!("Tracking-plan entry added by ApplyFramework ({framework:?})."),
            ..Default::default()
        });
        if entry.question.is_empty() {
            entry.question = question;
        }
        for property in properties {
            match entry.properties.iter_mut().find(|p| p.name == property.name) {
                Some(known) => known.required = true,
                None => entry.properties.push(property),
            }
        }
        out.event_types.push(entry);
    }
    out
}

fn skip_reason(
    template: &Template,
    mapping: &FrameworkMapping,
    view: &ProjectView<'_>,
    planned: &[String],
    skipped: &[Skipped],
    other_north_star: Option<&str>,
) -> Option<String> {
    for slot in &template.events {
        let event = mapping.slot(slot);
        if event.is_empty() {
            return Some(format!("mapping.{slot} is empty"));
        }
        if !(view.seen)(event) {
            return Some(format!("mapping.{slot}: event {event:?} has never been received"));
        }
    }
    for slot in &template.properties {
        if mapping.slot(slot).is_empty() {
            return Some(format!("mapping.{slot} is empty"));
        }
    }
    if template.properties.contains(&"spend_metric_key") {
        let key = &mapping.spend_metric_key;
        match view.metrics.get(key) {
            None => return Some(format!("mapping.spend_metric_key: metric {key:?} not found")),
            Some(m) if m.kind != MetricKind::Manual => {
                return Some(format!("mapping.spend_metric_key: metric {key:?} is not MANUAL"));
            }
            Some(_) => {}
        }
    }
    for read in &template.reads {
        if let Some(s) = skipped.iter().find(|s| s.key == *read) {
            return Some(format!("needs {read:?}, skipped: {}", s.reason));
        }
        debug_assert!(planned.contains(read), "templates list {read} before its readers");
    }
    if template.metric.role == MetricRole::NorthStar
        && let Some(other) = other_north_star
    {
        return Some(format!("the project's north star is {other:?}; the inputs point at it"));
    }
    None
}

/// A definition as compared for idempotency: without version and timestamps.
pub(crate) fn definition(metric: &Metric) -> Metric {
    Metric { version: 0, created: 0, updated: 0, ..metric.clone() }
}

/// What ApplyFramework did (or, with `dry_run`, would do).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Applied {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub unchanged: Vec<String>,
    pub skipped: Vec<Skipped>,
    pub event_types_created: Vec<String>,
    pub event_types_updated: Vec<String>,
    pub event_types_unchanged: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping() -> FrameworkMapping {
        FrameworkMapping {
            signup_event: "signup".into(),
            activation_event: "activate".into(),
            core_event: "session".into(),
            purchase_event: "purchase".into(),
            revenue_property: "revenue".into(),
            spend_metric_key: "ad_spend".into(),
            channel_property: "channel".into(),
            ..Default::default()
        }
    }

    fn planned(metrics: &BTreeMap<String, Metric>, seen: &dyn Fn(&str) -> bool) -> Plan {
        let view = ProjectView { seen, metrics };
        plan(Framework::NorthStarAarrr, &mapping(), &view, &BTreeMap::new())
    }

    #[test]
    fn an_existing_north_star_stays_and_the_inputs_point_at_it() {
        let mut metrics = BTreeMap::new();
        let dau = Metric { key: "dau".into(), role: MetricRole::NorthStar, ..Default::default() };
        metrics.insert("dau".to_string(), dau);
        metrics.insert(
            "ad_spend".to_string(),
            Metric { key: "ad_spend".into(), kind: MetricKind::Manual, ..Default::default() },
        );
        let plan = planned(&metrics, &|_| true);
        let north = plan.skipped.iter().find(|s| s.key == "north_star").expect("north_star skipped");
        assert!(north.reason.contains("\"dau\""), "{north:?}");
        for metric in &plan.metrics {
            let expected: &[&str] = if metric.key == "active_users" { &[] } else { &["dau"] };
            assert_eq!(metric.parent_keys, expected, "{}", metric.key);
        }
        // With the spend metric, CAC is planned over it and the signups.
        let cac = plan.metrics.iter().find(|m| m.key == "cac").expect("cac");
        assert_eq!(cac.input_keys(), ["acquisition_signups", "ad_spend"]);
        assert!(cac.validate().is_ok());
        // The signup entry requires the channel property.
        let signup = plan.event_types.iter().find(|e| e.name == "signup").expect("signup entry");
        assert_eq!(signup.properties[0].name, "channel");
        assert!(signup.properties[0].required && !signup.question.is_empty());
    }

    #[test]
    fn every_planned_definition_is_valid_and_unseen_events_skip() {
        let plan = planned(&BTreeMap::new(), &|name| name != "activate");
        for metric in &plan.metrics {
            assert!(metric.validate().is_ok(), "{metric:?}");
        }
        let reason = |key: &str| plan.skipped.iter().find(|s| s.key == key).map(|s| s.reason.as_str());
        assert_eq!(
            reason("activation_rate"),
            Some("mapping.activation_event: event \"activate\" has never been received")
        );
        assert_eq!(reason("cac"), Some("mapping.spend_metric_key: metric \"ad_spend\" not found"));
        assert!(plan.event_types.iter().all(|e| e.name != "activate"));
        let saas = plan_saas();
        assert!(saas.metrics.iter().all(|m| m.validate().is_ok()));
        assert_eq!(saas.skipped.len(), 0);
    }

    fn plan_saas() -> Plan {
        let mapping =
            FrameworkMapping { subscription_event: "sub".into(), mrr_property: "mrr".into(), ..Default::default() };
        let metrics = BTreeMap::new();
        let view = ProjectView { seen: &|_| true, metrics: &metrics };
        plan(Framework::SaasRevenue, &mapping, &view, &BTreeMap::new())
    }
}
