//! Plain domain types shared by the core: no tonic or prost types here.

use serde::{Deserialize, Serialize};

/// Microseconds since the Unix epoch, UTC.
pub type Micros = i64;

pub const MICROS_PER_SECOND: i64 = 1_000_000;
pub const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;

pub fn now_micros() -> Micros {
    chrono::Utc::now().timestamp_micros()
}

/// The engine's clock for time-dependent rules (key expiry, data retention): the system
/// clock plus an offset, which tests move forward instead of sleeping. Clones share it.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

impl Clock {
    pub fn now(&self) -> Micros {
        now_micros().saturating_add(self.offset.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Moves this clock (and every clone) forward.
    pub fn advance(&self, by: std::time::Duration) {
        let micros = i64::try_from(by.as_micros()).unwrap_or(i64::MAX);
        self.offset.fetch_add(micros, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A property or trait value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Timestamp(Micros),
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Timestamp(_) => "timestamp",
        }
    }
}

/// A product event as stored. `user_id` or `anonymous_id` (or both) is non-empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub event_id: String,
    pub name: String,
    pub user_id: String,
    pub anonymous_id: String,
    pub timestamp: Micros,
    /// Sorted by key, keys unique.
    pub properties: Vec<(String, Value)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Enforcement {
    #[default]
    Allow,
    Warn,
    Block,
    Quarantine,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Project {
    pub id: String,
    pub name: String,
    /// IANA zone name; "UTC" when unset.
    pub timezone: String,
    pub enforcement: Enforcement,
    pub retention_days: u32,
    pub created: Micros,
}

impl Project {
    /// Events with a timestamp before this are past the project's data retention: dropped by
    /// the retention job, refused by Track. None when the project keeps everything.
    pub fn retention_cutoff(&self, now: Micros) -> Option<Micros> {
        (self.retention_days > 0).then(|| now.saturating_sub(i64::from(self.retention_days) * MICROS_PER_DAY))
    }
}

/// Which project fields an update overwrites.
#[derive(Debug, Clone, Default)]
pub struct ProjectUpdate {
    pub name: Option<String>,
    pub timezone: Option<String>,
    pub enforcement: Option<Enforcement>,
    pub retention_days: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PropertyType {
    #[default]
    Any,
    String,
    Number,
    Bool,
    Timestamp,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PropertySchema {
    pub name: String,
    pub kind: PropertyType,
    pub required: bool,
    pub allowed_values: Vec<String>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub description: String,
}

/// One entry of the tracking plan.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct EventType {
    pub name: String,
    pub description: String,
    pub question: String,
    pub properties: Vec<PropertySchema>,
    /// Properties not in `properties` are violations.
    pub closed: bool,
    pub updated: Micros,
}

/// An Identify item.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct UserUpdate {
    pub user_id: String,
    pub set: Vec<(String, Value)>,
    pub set_once: Vec<(String, Value)>,
    pub unset: Vec<String>,
}

/// An event held back by QUARANTINE enforcement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuarantinedEvent {
    pub id: u64,
    pub event: Event,
    pub reasons: Vec<String>,
    pub received: Micros,
}

/// One value of a MANUAL metric (ad spend, finance targets, balances).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManualValue {
    pub timestamp: Micros,
    pub value: f64,
    /// Sorted by key.
    pub dimensions: Vec<(String, Value)>,
}

/// A user as GetUser shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct UserProfile {
    pub user_id: String,
    pub traits: Vec<(String, Value)>,
    pub anonymous_ids: Vec<String>,
    pub first_seen: Option<Micros>,
    pub last_seen: Option<Micros>,
    pub events: u64,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProjectStats {
    pub events: u64,
    pub events_by_name: Vec<(String, u64)>,
    pub users: u64,
    pub first_event: Option<Micros>,
    pub last_event: Option<Micros>,
    pub bytes_on_disk: u64,
    pub quarantined: u64,
}

/// A half-open range [from, to) of event times; `None` bounds are open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimeRange {
    pub from: Option<Micros>,
    pub to: Option<Micros>,
}

impl TimeRange {
    /// The bounds of a range a query requires: both set, `from` before `to`.
    pub fn required(&self, field: &str) -> crate::error::Result<(Micros, Micros)> {
        match (self.from, self.to) {
            (Some(from), Some(to)) if from < to => Ok((from, to)),
            (Some(_), Some(_)) => Err(crate::error::Error::invalid(field, "to must be after from")),
            _ => Err(crate::error::Error::invalid(field, "from and to are required")),
        }
    }

    pub fn contains(&self, t: Micros) -> bool {
        self.from.is_none_or(|from| t >= from) && self.to.is_none_or(|to| t < to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn required_ranges_have_both_ends_in_order() {
        let range = |from, to| TimeRange { from, to };
        assert_eq!(range(Some(1), Some(2)).required("range").unwrap(), (1, 2));
        for bad in [range(Some(2), Some(2)), range(Some(3), Some(2)), range(None, Some(2)), range(Some(1), None)] {
            assert!(matches!(bad.required("range"), Err(Error::InvalidArgument { field, .. }) if field == "range"));
        }
    }
}
