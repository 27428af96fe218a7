//! Persistence behind one trait, so the core does not know which engine holds its data. The
//! storage handles bytes: what a log value means is `core::store::record`'s business.
//!
//! Two kinds of data: *meta* objects (projects, event types, later metrics, goals…), few and
//! small, stored under string keys; and the append-only *log* of ingested records (event
//! batches, user updates, aliases, quarantine changes), one stored value per batch. The core
//! keeps a compact in-memory layout built from the log for queries and rebuilds it at start.

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
    /// Visits every stored log value in append order (the core decodes them).
    fn replay(&self, visit: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()>;
    fn bytes_on_disk(&self) -> Result<u64>;
    /// A directory the engine may fill with files it rebuilds at each start (the columns of
    /// `core::store::column`), or none to keep them in memory. Emptied by the engine at open.
    fn scratch_dir(&self) -> Option<std::path::PathBuf> {
        None
    }
    /// A consistent copy for backups: the log up to its end when the call starts (appends
    /// only add after it), then every meta entry. Raw stored bytes, in store order.
    fn snapshot(&self, visit: &mut SnapshotVisitor<'_>) -> Result<()>;
    /// Compaction: replaces the log with the values `keep` accepts (in order) followed by
    /// the values `extra` puts, so that nothing left out stays in any file. The caller makes sure nothing is
    /// appended meanwhile (the writer thread calls it).
    fn rewrite_log(&self, keep: &mut dyn FnMut(&[u8]) -> Result<bool>, extra: &mut ExtraValues<'_>) -> Result<()>;
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
