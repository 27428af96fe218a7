//! Persistence behind one trait, so the core does not know which engine holds its data.
//!
//! Two kinds of data: *meta* objects (projects, event types, later metrics, goals…), few and
//! small, stored under string keys; and the append-only *log* of ingested records (event
//! batches, user updates, aliases, quarantine changes), one stored value per batch. The core
//! keeps a compact in-memory layout built from the log for queries and rebuilds it at start.

mod sled_store;

use serde::{Deserialize, Serialize};

pub use sled_store::SledStorage;

use crate::core::model::{Event, ManualValue, Micros, QuarantinedEvent, UserUpdate};
use crate::error::{Error, Result};

/// One durable step of ingestion. Replaying all records in order rebuilds the event data.
/// An `Events` record holds a validated batch as received, duplicates included: whether an
/// event is new depends only on the records before it, so replay decides exactly as the
/// writer did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LogRecord {
    Events {
        project: String,
        events: Vec<Event>,
    },
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
    Unquarantined {
        project: String,
        ids: Vec<u64>,
    },
    /// Values pushed to a MANUAL metric; a value with the same timestamp and dimensions as an
    /// earlier one replaces it.
    ManualValues {
        project: String,
        metric_key: String,
        values: Vec<ManualValue>,
    },
    /// A MANUAL metric was deleted: its values go with it.
    ManualCleared {
        project: String,
        metric_key: String,
    },
    // New variants go at the end: bincode stores the variant index.
    /// DeleteUser: the user's events (and those of anonymous ids aliased to it) stored before
    /// this record, its traits and aliases are erased. Event ids stay in the dedupe set.
    UserDeleted {
        project: String,
        user_id: String,
    },
    /// Data retention: events with a timestamp before `before` stored before this record are
    /// dropped. Event ids stay in the dedupe set.
    EventsExpired {
        project: String,
        before: Micros,
    },
}

impl LogRecord {
    pub fn project(&self) -> &str {
        match self {
            LogRecord::Events { project, .. }
            | LogRecord::Users { project, .. }
            | LogRecord::Alias { project, .. }
            | LogRecord::Quarantined { project, .. }
            | LogRecord::Unquarantined { project, .. }
            | LogRecord::ManualValues { project, .. }
            | LogRecord::ManualCleared { project, .. }
            | LogRecord::UserDeleted { project, .. }
            | LogRecord::EventsExpired { project, .. } => project,
        }
    }
}

pub trait Storage: Send + Sync + 'static {
    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Durable when it returns.
    fn put_meta(&self, key: &str, value: &[u8]) -> Result<()>;
    /// Durable when it returns.
    fn delete_meta(&self, key: &str) -> Result<()>;
    /// Every (key, value) whose key starts with `prefix`, in key order.
    fn scan_meta(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>>;
    /// Appends encoded records to the log; durable only after the next `sync`.
    fn append(&self, records: &[Encoded]) -> Result<()>;
    /// Makes everything appended so far durable (the group-commit point).
    fn sync(&self) -> Result<()>;
    /// Visits every log record in append order.
    fn replay(&self, visit: &mut dyn FnMut(LogRecord) -> Result<()>) -> Result<()>;
    fn bytes_on_disk(&self) -> Result<u64>;
    /// A consistent copy for backups: the log up to its end when the call starts (appends
    /// only add after it), then every meta entry. Raw stored bytes, in store order.
    fn snapshot(&self, visit: &mut SnapshotVisitor<'_>) -> Result<()>;
}

/// Receives each stored entry of a snapshot: (tree, key, value).
pub type SnapshotVisitor<'a> = dyn FnMut(Tree, &[u8], &[u8]) -> Result<()> + 'a;

/// The two kinds of stored data, as a backup names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tree {
    Meta,
    Log,
}

/// A log record in its stored form. Encoding happens on the request path, in parallel, so the
/// single writer thread only appends bytes.
#[derive(Debug, Clone)]
pub struct Encoded(pub Vec<u8>);

pub(crate) const LOG_FORMAT_V1: u8 = 1;

/// The log codec: a format byte followed by an lz4-compressed bincode encoding.
pub fn encode_record(record: &LogRecord) -> Result<Encoded> {
    let raw = bincode::serialize(record).map_err(|e| Error::Internal(format!("encode log record: {e}")))?;
    let mut value = Vec::with_capacity(1 + 4 + lz4_flex::block::get_maximum_output_size(raw.len()));
    value.push(LOG_FORMAT_V1);
    value.extend_from_slice(&lz4_flex::compress_prepend_size(&raw));
    Ok(Encoded(value))
}

pub fn decode_record(value: &[u8]) -> Result<LogRecord> {
    let Some((&format, body)) = value.split_first() else {
        return Err(Error::Storage("empty log value".into()));
    };
    if format != LOG_FORMAT_V1 {
        return Err(Error::Storage(format!("unknown log format {format}")));
    }
    let raw =
        lz4_flex::decompress_size_prepended(body).map_err(|e| Error::Storage(format!("decompress log value: {e}")))?;
    bincode::deserialize(&raw).map_err(|e| Error::Storage(format!("decode log value: {e}")))
}
