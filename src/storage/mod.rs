//! Persistence behind one trait, so the core does not know which engine holds its data.
//!
//! Two kinds of data: *meta* objects (projects, event types, later metrics, goals…), few and
//! small, stored under string keys; and the append-only *log* of ingested records (event
//! batches, user updates, aliases, quarantine changes), one stored value per batch. The core
//! keeps a compact in-memory layout built from the log for queries and rebuilds it at start.

mod sled_store;

use serde::{Deserialize, Serialize};

pub use sled_store::SledStorage;

use crate::core::model::{Event, Micros, QuarantinedEvent, UserUpdate};
use crate::error::Result;

/// One durable step of ingestion. Replaying all records in order rebuilds the event data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LogRecord {
    /// Accepted, deduplicated events.
    Events { project: String, events: Vec<Event> },
    /// Traits set at `at`.
    Users {
        project: String,
        at: Micros,
        updates: Vec<UserUpdate>,
    },
    Alias {
        project: String,
        anonymous_id: String,
        user_id: String,
    },
    Quarantined {
        project: String,
        entries: Vec<QuarantinedEvent>,
    },
    /// Quarantine entries that were replayed (stored or found duplicate) and leave the quarantine.
    Unquarantined { project: String, ids: Vec<u64> },
}

pub trait Storage: Send + Sync + 'static {
    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Durable when it returns.
    fn put_meta(&self, key: &str, value: &[u8]) -> Result<()>;
    /// Durable when it returns.
    fn delete_meta(&self, key: &str) -> Result<()>;
    /// Every (key, value) whose key starts with `prefix`, in key order.
    fn scan_meta(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>>;
    /// Appends records to the log; durable only after the next `sync`.
    fn append(&self, records: &[LogRecord]) -> Result<()>;
    /// Makes everything appended so far durable (the group-commit point).
    fn sync(&self) -> Result<()>;
    /// Visits every log record in append order.
    fn replay(&self, visit: &mut dyn FnMut(LogRecord) -> Result<()>) -> Result<()>;
    fn bytes_on_disk(&self) -> Result<u64>;
}
