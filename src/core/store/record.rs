//! The log record: one durable step of ingestion, what the writer appends and a restart
//! replays, with its codec (a format byte, then lz4-compressed bincode).

use serde::{Deserialize, Serialize};

use crate::core::model::{Event, ManualValue, Micros, QuarantinedEvent, UserUpdate};
use crate::error::{Error, Result};
use crate::storage::Encoded;

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
    /// Written by compaction in place of the events it dropped (deleted users, retention):
    /// their dedupe keys (`event_key`), so their ids stay duplicates for ever while nothing
    /// else of them stays on disk.
    SeenIds {
        project: String,
        keys: Vec<u128>,
    },
    /// Written by compaction: many `Alias` records in one, (anonymous id, user id) applied in
    /// order.
    Aliases {
        project: String,
        pairs: Vec<(String, String)>,
    },
}

/// The dedupe key of an event: a 128-bit hash of (project, event id).
pub fn event_key(project: &str, event_id: &str) -> u128 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(project.as_bytes());
    hasher.update(&[0]);
    hasher.update(event_id.as_bytes());
    hasher.digest128()
}

impl LogRecord {
    /// Whether applying the record scans the project's whole table (a deletion's first removal
    /// counts every person's rows; an expiry looks at every row's time), where every other
    /// record touches only its own rows and people.
    pub fn scans_the_table(&self) -> bool {
        matches!(self, LogRecord::UserDeleted { .. } | LogRecord::EventsExpired { .. })
    }

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
            | LogRecord::EventsExpired { project, .. }
            | LogRecord::SeenIds { project, .. }
            | LogRecord::Aliases { project, .. } => project,
        }
    }
}

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
