//! The tracking plan: event types with property schemas, and the check of an event against it.

use crate::core::model::{Event, EventType, PropertyType, Value};
use crate::error::{Error, Result, echo};

pub const MAX_NAME_CHARS: usize = super::bounds::MAX_NAME_CHARS;

/// Ids of projects and other objects: `[a-z0-9][a-z0-9_-]{0,62}`.
pub fn validate_slug(field: &str, id: &str) -> Result<()> {
    let bytes = id.as_bytes();
    let Some(first) = bytes.first() else {
        return Err(Error::invalid(field, "must not be empty"));
    };
    if bytes.len() > 63 {
        return Err(Error::invalid(field, format!("{} characters, at most 63", id.chars().count())));
    }
    let lower_digit = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !lower_digit(first) || !bytes.iter().all(|b| lower_digit(b) || *b == b'_' || *b == b'-') {
        return Err(Error::invalid(field, format!("{id} must match [a-z0-9][a-z0-9_-]{{0,62}}", id = echo(id))));
    }
    Ok(())
}

/// Event and property names: non-empty, at most 200 characters, no control characters.
pub fn validate_name(field: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    // A UTF-8 character is at least one byte: only long names need counting.
    if name.len() > MAX_NAME_CHARS {
        let chars = name.chars().count();
        if chars > MAX_NAME_CHARS {
            return Err(Error::invalid(field, format!("{chars} characters, at most {MAX_NAME_CHARS}")));
        }
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// An IANA zone name; empty means UTC. Returns the canonical spelling stored.
pub fn validate_timezone(field: &str, zone: &str) -> Result<String> {
    if zone.is_empty() {
        return Ok("UTC".into());
    }
    zone.parse::<chrono_tz::Tz>()
        .map(|tz| tz.name().to_owned())
        .map_err(|_| Error::invalid(field, format!("unknown IANA time zone {zone}", zone = echo(zone))))
}

pub fn validate_event_type(event_type: &EventType) -> Result<()> {
    validate_name("event_type.name", &event_type.name)?;
    super::bounds::check_text("event_type.description", &event_type.description)?;
    super::bounds::check_text("event_type.question", &event_type.question)?;
    let mut seen = std::collections::HashSet::new();
    for (i, property) in event_type.properties.iter().enumerate() {
        let field = format!("event_type.properties[{i}]");
        validate_name(&format!("{field}.name"), &property.name)?;
        super::bounds::check_text(&format!("{field}.description"), &property.description)?;
        if !seen.insert(property.name.as_str()) {
            return Err(Error::invalid(
                format!("{field}.name"),
                format!("duplicate property {}", echo(&property.name)),
            ));
        }
        if let (Some(min), Some(max)) = (property.min, property.max)
            && min > max
        {
            return Err(Error::invalid(format!("{field}.min"), format!("min {min} is greater than max {max}")));
        }
        if [property.min, property.max].iter().flatten().any(|b| !b.is_finite()) {
            return Err(Error::invalid(format!("{field}.min"), "bounds must be finite"));
        }
        let numeric_bounds = property.min.is_some() || property.max.is_some();
        if numeric_bounds && !matches!(property.kind, PropertyType::Number) {
            return Err(Error::invalid(format!("{field}.min"), "min and max need type NUMBER"));
        }
        if !property.allowed_values.is_empty() && !matches!(property.kind, PropertyType::String) {
            return Err(Error::invalid(format!("{field}.allowed_values"), "allowed values need type STRING"));
        }
    }
    Ok(())
}

fn type_matches(kind: PropertyType, value: &Value) -> bool {
    matches!(
        (kind, value),
        (PropertyType::Any, _)
            | (PropertyType::String, Value::String(_))
            | (PropertyType::Number, Value::Number(_))
            | (PropertyType::Bool, Value::Bool(_))
            | (PropertyType::Timestamp, Value::Timestamp(_))
    )
}

/// How an event breaks the plan, one message per violation; empty when it conforms.
/// An event name missing from the plan is itself a violation.
pub fn violations(event: &Event, plan: Option<&EventType>) -> Vec<String> {
    let Some(plan) = plan else {
        return vec![format!("name: event {:?} is not in the tracking plan", event.name)];
    };
    let mut found = Vec::new();
    for schema in &plan.properties {
        let value = event
            .properties
            .iter()
            .find(|(key, _)| *key == schema.name)
            .map(|(_, v)| v)
            .filter(|v| !matches!(v, Value::Null));
        let Some(value) = value else {
            if schema.required {
                found.push(format!("properties.{}: required", schema.name));
            }
            continue;
        };
        if !type_matches(schema.kind, value) {
            found.push(format!(
                "properties.{}: expected {}, got {}",
                schema.name,
                format!("{:?}", schema.kind).to_lowercase(),
                value.type_name()
            ));
            continue;
        }
        if let Value::String(s) = value
            && !schema.allowed_values.is_empty()
            && !schema.allowed_values.contains(s)
        {
            found.push(format!("properties.{}: {s:?} is not an allowed value", schema.name));
        }
        if let Value::Number(n) = value {
            if schema.min.is_some_and(|min| *n < min) {
                found.push(format!(
                    "properties.{}: {n} is below the minimum {}",
                    schema.name,
                    schema.min.unwrap_or_default()
                ));
            }
            if schema.max.is_some_and(|max| *n > max) {
                found.push(format!(
                    "properties.{}: {n} is above the maximum {}",
                    schema.name,
                    schema.max.unwrap_or_default()
                ));
            }
        }
    }
    if plan.closed {
        for (key, _) in &event.properties {
            if !plan.properties.iter().any(|s| s.name == *key) {
                found.push(format!("properties.{key}: not in the tracking plan"));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::PropertySchema;

    fn plan() -> EventType {
        EventType {
            name: "purchase".into(),
            properties: vec![
                PropertySchema {
                    name: "revenue".into(),
                    kind: PropertyType::Number,
                    required: true,
                    min: Some(0.0),
                    max: Some(10_000.0),
                    ..Default::default()
                },
                PropertySchema {
                    name: "currency".into(),
                    kind: PropertyType::String,
                    allowed_values: vec!["USD".into(), "EUR".into()],
                    ..Default::default()
                },
            ],
            closed: true,
            ..Default::default()
        }
    }

    fn purchase(props: Vec<(&str, Value)>) -> Event {
        Event {
            event_id: "e".into(),
            name: "purchase".into(),
            user_id: "u".into(),
            anonymous_id: String::new(),
            timestamp: 0,
            properties: props.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        }
    }

    #[test]
    fn conforming_event_has_no_violations() {
        let e = purchase(vec![("revenue", Value::Number(12.5)), ("currency", Value::String("EUR".into()))]);
        assert!(violations(&e, Some(&plan())).is_empty());
    }

    #[test]
    fn each_rule_is_reported() {
        let p = plan();
        assert_eq!(violations(&purchase(vec![]), Some(&p)), vec!["properties.revenue: required"]);
        assert_eq!(
            violations(&purchase(vec![("revenue", Value::Null)]), Some(&p)),
            vec!["properties.revenue: required"]
        );
        assert_eq!(
            violations(&purchase(vec![("revenue", Value::String("1".into()))]), Some(&p)),
            vec!["properties.revenue: expected number, got string"]
        );
        assert_eq!(
            violations(&purchase(vec![("revenue", Value::Number(-1.0))]), Some(&p)),
            vec!["properties.revenue: -1 is below the minimum 0"]
        );
        assert_eq!(
            violations(&purchase(vec![("revenue", Value::Number(1e5))]), Some(&p)),
            vec!["properties.revenue: 100000 is above the maximum 10000"]
        );
        assert_eq!(
            violations(
                &purchase(vec![("revenue", Value::Number(1.0)), ("currency", Value::String("GBP".into()))]),
                Some(&p)
            ),
            vec!["properties.currency: \"GBP\" is not an allowed value"]
        );
        assert_eq!(
            violations(&purchase(vec![("revenue", Value::Number(1.0)), ("coupon", Value::Bool(true))]), Some(&p)),
            vec!["properties.coupon: not in the tracking plan"]
        );
        assert_eq!(violations(&purchase(vec![]), None), vec!["name: event \"purchase\" is not in the tracking plan"]);
    }

    #[test]
    fn slugs() {
        for ok in ["a", "demo", "a-b_c9", &"a".repeat(63)] {
            assert!(validate_slug("id", ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "_a", "A", "a b", "a.b", &"a".repeat(64), "é"] {
            assert!(validate_slug("id", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timezones() {
        assert_eq!(validate_timezone("tz", "").unwrap(), "UTC");
        assert_eq!(validate_timezone("tz", "Europe/Berlin").unwrap(), "Europe/Berlin");
        assert!(validate_timezone("tz", "Mars/Olympus").is_err());
    }
}
