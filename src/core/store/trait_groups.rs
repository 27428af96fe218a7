//! Breakdown groups by a user trait, per person, cached until traits, people or aliases
//! change; and how a property value prints as a breakdown label.

use std::sync::Arc;

use hashbrown::HashMap;

use crate::core::model::{Micros, Value};
use crate::core::store::ProjectData;

/// The label of a missing (or null) breakdown value.
pub const NO_VALUE: &str = "$none";

pub fn format_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 { format!("{}", n as i64) } else { format!("{n}") }
}

pub fn format_time(t: Micros) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_micros(t).map(|d| d.to_rfc3339()).unwrap_or_default()
}

pub fn label_of_value(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => NO_VALUE.into(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => format_number(*n),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Timestamp(t)) => format_time(*t),
    }
}

/// A trait's value per person id as a group id (0: `$none`), with one label per group.
#[derive(Debug)]
pub struct TraitGroups {
    /// (traits version, people, table layout, owner changes) when built.
    built_for: (u64, usize, u64, u64),
    pub group_of: Vec<u32>,
    pub labels: Vec<String>,
}

impl TraitGroups {
    fn build(state: &ProjectData, name: &str) -> TraitGroups {
        let mut groups = TraitGroups::of_values(&state.table.canonical, state.traits.values_of(name));
        groups.built_for = TraitGroups::version(state);
        groups
    }

    /// Groups per person id from a trait's value per canonical person (`values`), through the
    /// `canonical` mapping: one label per distinct value, without a per-person allocation.
    pub fn of_values(canonical: &[u32], values: impl IntoIterator<Item = (u32, Value)>) -> TraitGroups {
        let mut labels: Vec<String> = vec![NO_VALUE.into()];
        let mut ids: hashbrown::HashMap<String, u32> = hashbrown::HashMap::new();
        ids.insert(NO_VALUE.into(), 0);
        let mut by_user = vec![0u32; canonical.len()];
        for (person, value) in values {
            let id = match &value {
                Value::String(s) => ids.get(s.as_str()).copied(),
                _ => None,
            };
            by_user[person as usize] = id.unwrap_or_else(|| {
                let label = label_of_value(Some(&value));
                *ids.entry(label.clone()).or_insert_with(|| {
                    labels.push(label);
                    labels.len() as u32 - 1
                })
            });
        }
        TraitGroups {
            built_for: (0, 0, 0, 0),
            group_of: canonical.iter().map(|&c| by_user[c as usize]).collect(),
            labels,
        }
    }

    fn version(state: &ProjectData) -> (u64, usize, u64, u64) {
        (state.traits.changes(), state.table.canonical.len(), state.table.layout_version(), state.table.owner_changes())
    }
}

/// Trait groups by trait name, reused until traits, people or aliases change: a breakdown by
/// `user.channel` otherwise walks every user's trait map on each query.
#[derive(Debug, Default)]
pub struct TraitGroupCache {
    by_trait: parking_lot::Mutex<HashMap<String, Arc<TraitGroups>>>,
}

impl TraitGroupCache {
    /// A copy for a fork of the data: each entry knows what it was built for.
    pub fn fork(&self) -> TraitGroupCache {
        TraitGroupCache { by_trait: parking_lot::Mutex::new(self.by_trait.lock().clone()) }
    }

    pub fn get(&self, state: &ProjectData, name: &str) -> Arc<TraitGroups> {
        let version = TraitGroups::version(state);
        if let Some(groups) = self.by_trait.lock().get(name).filter(|g| g.built_for == version) {
            return groups.clone();
        }
        let groups = Arc::new(TraitGroups::build(state, name));
        let mut cached = self.by_trait.lock();
        // Keep the cache to the traits queried lately.
        cached.retain(|_, g| g.built_for == version);
        cached.insert(name.to_owned(), groups.clone());
        groups
    }
}
