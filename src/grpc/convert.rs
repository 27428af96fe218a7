//! Conversions between generated protobuf types and domain types.

use std::collections::BTreeMap;

use prost_types::Timestamp;

use crate::core::auth::{ApiKey, Role};
use crate::core::ingest::{Incoming, ItemError};
use crate::core::model::{
    Enforcement, Event, EventType, Micros, Project, ProjectStats, PropertySchema, PropertyType, QuarantinedEvent,
    TimeRange, UserProfile, UserUpdate, Value,
};
use crate::error::{Error, Result};
use crate::pb;

/// Timestamps outside years 1..=9999 (the protobuf Timestamp range) are invalid.
const MIN_SECONDS: i64 = -62_135_596_800;
const MAX_SECONDS: i64 = 253_402_300_799;

pub fn micros_from_timestamp(field: &str, ts: &Timestamp) -> Result<Micros> {
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&ts.seconds) || !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(Error::invalid(field, "timestamp out of range"));
    }
    Ok(ts.seconds * 1_000_000 + i64::from(ts.nanos / 1000))
}

pub fn timestamp(micros: Micros) -> Timestamp {
    Timestamp { seconds: micros.div_euclid(1_000_000), nanos: (micros.rem_euclid(1_000_000) * 1000) as i32 }
}

pub fn optional_timestamp(micros: Option<Micros>) -> Option<Timestamp> {
    micros.map(timestamp)
}

/// The `range` a query requires: both ends, `from` before `to` (`TimeRange::required`).
pub fn required_range(range: Option<&pb::TimeRange>) -> Result<(i64, i64)> {
    time_range("range", range)?.required("range")
}

pub fn time_range(field: &str, range: Option<&pb::TimeRange>) -> Result<TimeRange> {
    let Some(range) = range else {
        return Ok(TimeRange::default());
    };
    let from = range.from.as_ref().map(|t| micros_from_timestamp(&format!("{field}.from"), t)).transpose()?;
    let to = range.to.as_ref().map(|t| micros_from_timestamp(&format!("{field}.to"), t)).transpose()?;
    if let (Some(f), Some(t)) = (from, to)
        && f > t
    {
        return Err(Error::invalid(field, "from is after to"));
    }
    Ok(TimeRange { from, to })
}

/// An enum number the protos do not define.
pub fn enum_error(field: &str, value: i32) -> Error {
    Error::invalid(field, format!("unknown enum value {value}"))
}

/// Takes the value by value: an event's string properties move instead of being copied.
pub fn value_from_pb(field: &str, value: pb::Value) -> Result<Value> {
    use pb::value::Kind;
    Ok(match value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::NumberValue(n)) => {
            if !n.is_finite() {
                return Err(Error::invalid(field, "number must be finite"));
            }
            Value::Number(n)
        }
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::TimestampValue(t)) => Value::Timestamp(micros_from_timestamp(field, &t)?),
    })
}

pub fn value_to_pb(value: &Value) -> pb::Value {
    use pb::value::Kind;
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(*n),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Timestamp(t) => Kind::TimestampValue(timestamp(*t)),
    };
    pb::Value { kind: Some(kind) }
}

/// Map entries (already sorted: maps decode into BTreeMaps), values converted; errors name
/// `field.key`.
fn properties_from_pb(field: &str, map: BTreeMap<String, pb::Value>) -> Result<Vec<(String, Value)>> {
    let mut out = Vec::with_capacity(map.len());
    for (key, value) in map {
        let converted = value_from_pb("", value).map_err(|e| e.under(&format!("{field}.{key}")))?;
        out.push((key, converted));
    }
    Ok(out)
}

fn properties_to_pb(properties: &[(String, Value)]) -> BTreeMap<String, pb::Value> {
    properties.iter().map(|(k, v)| (k.clone(), value_to_pb(v))).collect()
}

/// A received event; a missing timestamp becomes `received`. Field names are relative to the event.
pub fn incoming_event(event: pb::Event, received: Micros) -> Incoming {
    use prost::Message;
    let encoded_len = event.encoded_len();
    let converted = (|| {
        let timestamp = match &event.timestamp {
            Some(ts) => micros_from_timestamp("timestamp", ts)?,
            None => received,
        };
        Ok(Event {
            properties: properties_from_pb("properties", event.properties)?,
            event_id: event.event_id,
            name: event.name,
            user_id: event.user_id,
            anonymous_id: event.anonymous_id,
            timestamp,
        })
    })();
    Incoming { event: converted, encoded_len }
}

pub fn event_to_pb(event: Event) -> pb::Event {
    pb::Event {
        properties: properties_to_pb(&event.properties),
        event_id: event.event_id,
        name: event.name,
        user_id: event.user_id,
        anonymous_id: event.anonymous_id,
        timestamp: Some(timestamp(event.timestamp)),
    }
}

pub fn item_error(item: ItemError) -> pb::EventError {
    pb::EventError {
        index: item.index,
        event_id: item.event_id,
        code: item.error.code_name().to_owned(),
        message: item.error.to_string(),
    }
}

/// A received user update; a conversion error keeps the user id so the reply can name it.
pub fn user_update_from_pb(index: usize, update: pb::UserUpdate) -> Result<UserUpdate, (String, Error)> {
    let field = format!("users[{index}]");
    let user_id = update.user_id.clone();
    let convert = || -> Result<UserUpdate> {
        Ok(UserUpdate {
            set: properties_from_pb(&format!("{field}.set"), update.set)?,
            set_once: properties_from_pb(&format!("{field}.set_once"), update.set_once)?,
            unset: update.unset,
            user_id: update.user_id,
        })
    };
    convert().map_err(|e| (user_id, e))
}

pub fn enforcement_from_pb(field: &str, value: i32) -> Result<Enforcement> {
    Ok(match pb::Enforcement::try_from(value) {
        Ok(pb::Enforcement::Unspecified | pb::Enforcement::Allow) => Enforcement::Allow,
        Ok(pb::Enforcement::Warn) => Enforcement::Warn,
        Ok(pb::Enforcement::Block) => Enforcement::Block,
        Ok(pb::Enforcement::Quarantine) => Enforcement::Quarantine,
        Err(_) => return Err(Error::invalid(field, format!("unknown enforcement {value}"))),
    })
}

fn enforcement_to_pb(value: Enforcement) -> pb::Enforcement {
    match value {
        Enforcement::Allow => pb::Enforcement::Allow,
        Enforcement::Warn => pb::Enforcement::Warn,
        Enforcement::Block => pb::Enforcement::Block,
        Enforcement::Quarantine => pb::Enforcement::Quarantine,
    }
}

pub fn project_from_pb(project: pb::Project) -> Result<Project> {
    Ok(Project {
        enforcement: enforcement_from_pb("project.enforcement", project.enforcement)?,
        id: project.id,
        name: project.name,
        timezone: project.timezone,
        retention_days: project.retention_days,
        created: 0,
    })
}

pub fn project_to_pb(project: Project) -> pb::Project {
    pb::Project {
        enforcement: enforcement_to_pb(project.enforcement) as i32,
        id: project.id,
        name: project.name,
        timezone: project.timezone,
        retention_days: project.retention_days,
        created_time: Some(timestamp(project.created)),
    }
}

pub fn stats_to_pb(stats: ProjectStats) -> pb::GetProjectStatsResponse {
    pb::GetProjectStatsResponse {
        events: stats.events,
        events_by_name: stats
            .events_by_name
            .into_iter()
            .map(|(name, events)| pb::EventNameCount { name, events })
            .collect(),
        users: stats.users,
        first_event_time: optional_timestamp(stats.first_event),
        last_event_time: optional_timestamp(stats.last_event),
        bytes_on_disk: stats.bytes_on_disk,
        quarantined: stats.quarantined,
    }
}

fn property_type_from_pb(field: &str, value: i32) -> Result<PropertyType> {
    Ok(match pb::PropertyType::try_from(value) {
        Ok(pb::PropertyType::Unspecified) => PropertyType::Any,
        Ok(pb::PropertyType::String) => PropertyType::String,
        Ok(pb::PropertyType::Number) => PropertyType::Number,
        Ok(pb::PropertyType::Bool) => PropertyType::Bool,
        Ok(pb::PropertyType::Timestamp) => PropertyType::Timestamp,
        Err(_) => return Err(Error::invalid(field, format!("unknown property type {value}"))),
    })
}

fn property_type_to_pb(value: PropertyType) -> pb::PropertyType {
    match value {
        PropertyType::Any => pb::PropertyType::Unspecified,
        PropertyType::String => pb::PropertyType::String,
        PropertyType::Number => pb::PropertyType::Number,
        PropertyType::Bool => pb::PropertyType::Bool,
        PropertyType::Timestamp => pb::PropertyType::Timestamp,
    }
}

pub fn event_type_from_pb(event_type: pb::EventType) -> Result<EventType> {
    let properties = event_type
        .properties
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            Ok(PropertySchema {
                kind: property_type_from_pb(&format!("event_type.properties[{i}].type"), p.r#type)?,
                name: p.name,
                required: p.required,
                allowed_values: p.allowed_values,
                min: p.min,
                max: p.max,
                description: p.description,
            })
        })
        .collect::<Result<_>>()?;
    Ok(EventType {
        name: event_type.name,
        description: event_type.description,
        question: event_type.question,
        properties,
        closed: event_type.closed,
        updated: 0,
    })
}

pub fn event_type_to_pb(event_type: EventType) -> pb::EventType {
    pb::EventType {
        name: event_type.name,
        description: event_type.description,
        question: event_type.question,
        properties: event_type
            .properties
            .into_iter()
            .map(|p| pb::PropertySchema {
                name: p.name,
                r#type: property_type_to_pb(p.kind) as i32,
                required: p.required,
                allowed_values: p.allowed_values,
                min: p.min,
                max: p.max,
                description: p.description,
            })
            .collect(),
        closed: event_type.closed,
        update_time: Some(timestamp(event_type.updated)),
    }
}

pub fn quarantined_to_pb(entry: QuarantinedEvent) -> pb::QuarantinedEvent {
    pb::QuarantinedEvent {
        id: entry.id.to_string(),
        event: Some(event_to_pb(entry.event)),
        reasons: entry.reasons,
        receive_time: Some(timestamp(entry.received)),
    }
}

pub fn user_to_pb(user: UserProfile) -> pb::User {
    pb::User {
        traits: properties_to_pb(&user.traits),
        user_id: user.user_id,
        anonymous_ids: user.anonymous_ids,
        first_seen: optional_timestamp(user.first_seen),
        last_seen: optional_timestamp(user.last_seen),
        events: user.events,
    }
}

pub fn role_from_pb(field: &str, role: i32) -> Result<Role> {
    match pb::Role::try_from(role) {
        Ok(pb::Role::Ingest) => Ok(Role::Ingest),
        Ok(pb::Role::Read) => Ok(Role::Read),
        Ok(pb::Role::Admin) => Ok(Role::Admin),
        Ok(pb::Role::Unspecified) => Err(Error::invalid(field, "required: ROLE_INGEST, ROLE_READ or ROLE_ADMIN")),
        Err(_) => Err(enum_error(field, role)),
    }
}

pub fn api_key_to_pb(key: ApiKey) -> pb::ApiKey {
    let role = match key.role {
        Role::Ingest => pb::Role::Ingest,
        Role::Read => pb::Role::Read,
        Role::Admin => pb::Role::Admin,
    };
    pb::ApiKey {
        id: key.id,
        role: role as i32,
        name: key.name,
        created_time: Some(timestamp(key.created)),
        expire_time: optional_timestamp(key.expires),
        revoked: key.revoked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn timestamps_round_trip(micros in (MIN_SECONDS * 1_000_000)..(MAX_SECONDS * 1_000_000)) {
            prop_assert_eq!(micros_from_timestamp("t", &timestamp(micros)).unwrap(), micros);
        }

        #[test]
        fn any_timestamp_converts_or_errs(seconds in any::<i64>(), nanos in any::<i32>()) {
            let _ = micros_from_timestamp("t", &Timestamp { seconds, nanos });
        }
    }

    #[test]
    fn non_finite_numbers_are_rejected() {
        for n in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let v = pb::Value { kind: Some(pb::value::Kind::NumberValue(n)) };
            assert!(value_from_pb("p", v).is_err());
        }
    }
}
