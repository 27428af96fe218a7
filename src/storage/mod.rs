//! Persistence behind one trait, so the core does not know which engine holds its data. The
//! storage handles bytes: what a log value means is `core::store::record`'s business.
//!
//! Two kinds of data: *meta* objects (projects, event types, later metrics, goals…), few and
//! small, stored under string keys; and the append-only *log* of ingested records (event
//! batches, user updates, aliases, quarantine changes), one stored value per batch. The core
//! keeps a compact in-memory layout built from the log for queries and rebuilds it at start.

pub mod files;
mod sled_store;

pub use sled_store::SledStorage;

use crate::error::Result;

pub trait Storage: Send + Sync + 'static {
    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Durable when it returns.
    fn put_meta(&self, key: &str, value: &[u8]) -> Result<()>;
    /// Durable when it returns.
    fn delete_meta(&self, key: &str) -> Result<()>;
    /// Every (key, value) whose key starts with `prefix`, in key order.
    fn scan_meta(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>>;
    /// Appends encoded records to the log atomically (after a crash, all of them or none);
    /// durable only after the next `sync`.
    fn append(&self, records: &[Encoded]) -> Result<()>;
    /// Makes everything appended so far durable (the group-commit point).
    fn sync(&self) -> Result<()>;
    /// Visits every stored log value in append order (the core decodes them), or only those
    /// after `after` (a position `log_position` gave; when the log has been rewritten since,
    /// into another database, every value is after it).
    fn replay(&self, after: Option<&LogPosition>, visit: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()>;
    /// `replay`, up to `until` (exclusive; a position of the current database, which the log
    /// reaches): a compaction catches up on a log that is still being appended to.
    fn replay_until(
        &self,
        _after: &LogPosition,
        _until: &LogPosition,
        _visit: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        Err(crate::error::Error::Internal("this storage cannot replay part of its log".into()))
    }
    /// Where the log ends now: what a checkpoint covers when the caller appends nothing
    /// meanwhile.
    fn log_position(&self) -> Result<LogPosition>;
    /// Drops the log values before `position` (a checkpoint holds them now); nothing when the
    /// log has been rewritten since.
    fn truncate_log(&self, position: &LogPosition) -> Result<()>;
    /// Bytes of every file under the storage's directory (for sled, the data directory, the
    /// column files of `files_dir` included).
    fn bytes_on_disk(&self) -> Result<u64>;
    /// The data directory, where the engine keeps its column files and checkpoints
    /// (`core::store::segment`) beside the storage's own; none to keep them in memory.
    fn files_dir(&self) -> Option<std::path::PathBuf> {
        None
    }
    /// A consistent copy for backups: the log up to its end when the call starts (appends
    /// only add after it), then every meta entry. Raw stored bytes, in store order.
    fn snapshot(&self, visit: &mut SnapshotVisitor<'_>) -> Result<()>;
    /// Compaction: replaces the log with the values `keep` accepts (in order) followed by
    /// the values `extra` puts, so that nothing left out stays in any file. The caller makes sure nothing is
    /// appended meanwhile (the writer thread calls it).
    fn rewrite_log(&self, keep: &mut dyn FnMut(&[u8]) -> Result<bool>, extra: &mut ExtraValues<'_>) -> Result<()>;
    /// Where events, traits and aliases live when another engine keeps them (the ClickHouse
    /// backend); none when they are the log's records, applied to the engine's own table.
    fn remote_events(&self) -> Option<&dyn crate::core::store::remote::RemoteEvents> {
        None
    }
}

/// A point in the log: the database that holds it (compaction rewrites the log into a new
/// one) and the sequence number of the next value appended there.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogPosition {
    pub db: String,
    pub seq: u64,
}

/// Produces values to append, one `put` each, so a rewrite never holds them all at once.
pub type ExtraValues<'a> = dyn FnMut(&mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> + 'a;

/// Receives each stored entry of a snapshot: (tree, key, value).
pub type SnapshotVisitor<'a> = dyn FnMut(Tree, &[u8], &[u8]) -> Result<()> + 'a;

/// The two kinds of stored data, as a backup names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tree {
    Meta,
    Log,
}

/// A log record in its stored form (`core::store::record` encodes it). Encoding happens on the
/// request path, in parallel, so the single writer thread only appends bytes.
#[derive(Debug, Clone)]
pub struct Encoded(pub Vec<u8>);

/// How many log records `storage` replays after `after` (for tests).
#[cfg(test)]
pub(crate) fn replayed_records(storage: &dyn Storage, after: Option<&LogPosition>) -> usize {
    let mut records = 0;
    storage
        .replay(after, &mut |_| {
            records += 1;
            Ok(())
        })
        .unwrap();
    records
}
