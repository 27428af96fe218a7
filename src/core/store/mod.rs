//! A project's events as the analyses read them: the columnar table and its person order,
//! traits, quarantine and MANUAL values, with the caches derived from them; and the log record
//! that changes them.

pub mod person_order;
pub mod record;
pub mod table;
pub mod trait_groups;

use std::collections::{BTreeMap, HashMap};

use crate::core::model::{ManualValue, Micros, QuarantinedEvent, UserUpdate, Value};
use person_order::PersonOrderCache;
use record::LogRecord;
use table::EventTable;
use trait_groups::TraitGroupCache;

/// One project's data. The writer applies durable log records to it under the project's write
/// lock; analyses read it under the read lock and never see the engine.
#[derive(Debug, Default)]
pub struct ProjectData {
    pub table: EventTable,
    /// Per user person id: traits by name.
    pub traits: HashMap<u32, BTreeMap<String, Value>>,
    pub quarantine: BTreeMap<u64, QuarantinedEvent>,
    /// MANUAL metric values by metric key, keyed by (timestamp, dimensions).
    pub manual: HashMap<String, BTreeMap<(Micros, String), ManualValue>>,
    /// Events by person then time, for funnels and retention; rebuilt lazily.
    pub person_order: PersonOrderCache,
    /// Bumped on every trait change, so caches derived from traits know when to rebuild.
    pub traits_version: u64,
    pub trait_groups: TraitGroupCache,
}

impl ProjectData {
    /// Applies a durable log record. For `Events`, `keep[i]` says whether event i is new
    /// (not a duplicate); an empty `keep` keeps every event.
    pub fn apply(&mut self, record: &LogRecord, keep: &[bool]) {
        match record {
            LogRecord::Events { events, .. } => {
                for (i, event) in events.iter().enumerate() {
                    if keep.get(i).copied().unwrap_or(true) {
                        self.table.push(event);
                    }
                }
            }
            LogRecord::Users { updates, .. } => {
                for update in updates {
                    self.apply_user_update(update);
                }
            }
            LogRecord::Alias { anonymous_id, user_id, .. } => self.table.alias(anonymous_id, user_id),
            LogRecord::Quarantined { entries, .. } => {
                for entry in entries {
                    self.quarantine.insert(entry.id, entry.clone());
                }
            }
            LogRecord::Unquarantined { ids, .. } => {
                for id in ids {
                    self.quarantine.remove(id);
                }
            }
            LogRecord::ManualValues { metric_key, values, .. } => {
                let stored = self.manual.entry(metric_key.clone()).or_default();
                for value in values {
                    let key = (value.timestamp, format!("{:?}", value.dimensions));
                    stored.insert(key, value.clone());
                }
            }
            LogRecord::ManualCleared { metric_key, .. } => {
                self.manual.remove(metric_key);
            }
            LogRecord::UserDeleted { user_id, .. } => self.erase_user(user_id),
            LogRecord::EventsExpired { before, .. } => self.expire(*before),
        }
    }

    /// Removes the rows that `apply` marked for erasure (DeleteUser, retention). The writer
    /// calls it after each job, replay once at the end, so a log with many deletions replays
    /// in one pass.
    pub fn compact(&mut self) -> usize {
        self.table.compact()
    }

    /// Marks the user's events (aliased anonymous ids' included) for erasure and forgets its
    /// traits, aliases and quarantined events at once.
    fn erase_user(&mut self, user_id: &str) {
        let table = &mut self.table;
        let Some(person) = table.find_user(user_id) else {
            return;
        };
        for row in table.user_rows(person) {
            table.erase(row);
        }
        let anonymous: std::collections::HashSet<String> =
            table.unalias_all(person).into_iter().map(|a| table.person_name(a).to_owned()).collect();
        self.traits.remove(&person);
        self.traits_version += 1;
        self.quarantine.retain(|_, q| {
            let event = &q.event;
            event.user_id != user_id && !(event.user_id.is_empty() && anonymous.contains(&event.anonymous_id))
        });
    }

    /// Marks events older than `before` for erasure and drops old quarantined events.
    fn expire(&mut self, before: Micros) {
        let table = &mut self.table;
        if table.min_time.is_some_and(|t| t < before) {
            for row in 0..table.len() {
                if table.time[row] < before {
                    table.erase(row as u32);
                }
            }
        }
        self.quarantine.retain(|_, q| q.event.timestamp >= before);
    }

    fn apply_user_update(&mut self, update: &UserUpdate) {
        self.traits_version += 1;
        let person = self.table.user_person(&update.user_id);
        let traits = self.traits.entry(person).or_default();
        for (key, value) in &update.set {
            // Setting null removes the trait: a null trait and a missing one mean the same.
            if matches!(value, Value::Null) {
                traits.remove(key);
            } else {
                traits.insert(key.clone(), value.clone());
            }
        }
        for (key, value) in &update.set_once {
            if !matches!(value, Value::Null) {
                traits.entry(key.clone()).or_insert_with(|| value.clone());
            }
        }
        for key in &update.unset {
            traits.remove(key);
        }
    }
}
