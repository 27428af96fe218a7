//! The embedded default: one sled database with a `meta` tree and a `log` tree.
//!
//! Log values are one record per ingested batch (never one key per event: sled tops out near
//! 40k single-key inserts/s here, but near 760k events/s written as one value per batch),
//! keyed by a big-endian sequence number so iteration order is append order. A value is a
//! record in the log codec of `super` (a format byte, then lz4-compressed bincode).
//!
//! sled writes a page too big for a quarter of its log segment to a file of its own under
//! `blobs/` and never fsyncs that file or its directory (sled#1077): its `flush` makes the
//! pointer durable, not the bytes. Every flush here (`Inner::flush`) first fsyncs the blob
//! files written since the last one, with this store's writes held off meanwhile
//! (`Inner::writing`), so the records an ack covers never rest on bytes only the page cache
//! holds. sled also writes blobs on its own, outside those writes: its background thread
//! rewrites whole pages when it cleans segments, and a read may split one; it may make their
//! pointers durable before a flush here syncs them (each flush syncs again after sled's, and
//! the next one syncs what came later). A power cut in that window could cost a rewritten
//! page; closing it needs sled to sync its blobs. A new database's segments are 2 MiB
//! (`SEGMENT_SIZE`) rather than sled's 512 KiB, under which most full batches' records (about
//! 250 KB at the generator's shape) were blobs: a file each to make, sync and remove.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::files::{dir_bytes, io_error, replace_durably, sync_dir};
use super::{Encoded, ExtraValues, LogPosition, SnapshotVisitor, Storage, Tree};
use crate::error::{Error, Result};

pub struct SledStorage {
    /// The data directory; the live database is the subdirectory named in `CURRENT`.
    dir: std::path::PathBuf,
    /// Swapped whole by `rewrite_log`; every other call shares it.
    inner: parking_lot::RwLock<Inner>,
}

struct Inner {
    /// The database's directory name (`sled`, `sled.N`).
    name: String,
    db: sled::Db,
    meta: sled::Tree,
    log: sled::Tree,
    next_seq: AtomicU64,
    /// Held by an append from reserving its numbers to storing its values, and by whoever
    /// reads the log's end (`end`): an end read beside an append (a compaction's catch-up,
    /// a backup) then never covers numbers whose values are not stored yet, which a range
    /// read up to it would skip for good.
    appending: parking_lot::Mutex<()>,
    /// Held shared by every write to the database and exclusively by `flush`, which fsyncs
    /// the blob files written since the last flush: none is half written while it does.
    writing: parking_lot::RwLock<BlobFiles>,
}

impl Inner {
    /// The number after the last stored value: every append before it has finished.
    fn end(&self) -> u64 {
        let _appending = self.appending.lock();
        self.next_seq.load(Ordering::Relaxed)
    }

    /// Runs a write to the database while no `flush` is syncing blob files.
    fn write<T>(&self, write: impl FnOnce(&Inner) -> sled::Result<T>) -> Result<T> {
        let _writing = self.writing.read();
        Ok(write(self)?)
    }

    /// Makes every write before it durable: the blob files sled wrote for them, then its log;
    /// then the blob files sled wrote on its own meanwhile (see the module doc).
    fn flush(&self) -> Result<()> {
        let mut blobs = self.writing.write();
        blobs.sync_new()?;
        self.db.flush()?;
        blobs.sync_new()?;
        Ok(())
    }
}

/// The `blobs/` directory of one database and the length each of its files was synced at.
#[derive(Debug)]
struct BlobFiles {
    dir: std::path::PathBuf,
    /// By blob id (the file's name). A file listed at another length (sled may write one
    /// outside this store's writes, consolidating a page on a read) is synced again.
    synced: hashbrown::HashMap<u64, u64>,
}

impl BlobFiles {
    fn new(dir: std::path::PathBuf) -> BlobFiles {
        BlobFiles { dir, synced: hashbrown::HashMap::new() }
    }

    /// Fsyncs the blob files not synced at their present length, then the directory that
    /// names them; returns how many it synced. The caller keeps this store's writes out.
    fn sync_new(&mut self) -> Result<usize> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(err) => return Err(io_error("cannot list", &self.dir, err)),
        };
        let mut listed = hashbrown::HashMap::with_capacity(self.synced.len());
        let mut unsynced = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_error("cannot list", &self.dir, e))?;
            let Some(id) = entry.file_name().to_str().and_then(|name| name.parse::<u64>().ok()) else { continue };
            let len = match entry.metadata() {
                Ok(meta) => meta.len(),
                // sled removed it since the listing (a page rewritten since): nothing to keep.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Err(io_error("cannot stat", &entry.path(), err)),
            };
            if self.synced.get(&id) != Some(&len) {
                unsynced.push(entry.path());
            }
            listed.insert(id, len);
        }
        sync_files(&unsynced)?;
        if !unsynced.is_empty() {
            sync_dir(&self.dir)?;
        }
        // Files sled removed leave the map with the listing.
        self.synced = listed;
        Ok(unsynced.len())
    }
}

/// Fsyncs `paths`, skipping a file removed meanwhile.
fn sync_files(paths: &[std::path::PathBuf]) -> Result<()> {
    paths.iter().try_for_each(|path| match std::fs::File::open(path).and_then(|file| file.sync_all()) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(io_error("cannot sync", path, err)),
        _ => Ok(()),
    })
}

/// Names the live database's subdirectory. Written atomically (temporary file, fsync,
/// rename), so after a crash it names either the old database or the finished new one.
const CURRENT: &str = "CURRENT";
const FIRST_DB: &str = "sled";
/// Key (in the default tree) of the sequence number below which the log was truncated.
const LOG_FLOOR: &[u8] = b"log_floor";

impl Inner {
    fn open(path: &Path) -> Result<Inner> {
        let (segment_size, conf_written) = segment_size_of(path)?;
        let db = open_db(path, segment_size)?;
        if conf_written {
            // sled syncs neither the `conf` it wrote (which names the segment size every
            // later open needs) nor the directories: before anything is stored here.
            let synced = std::fs::File::open(path.join("conf")).and_then(|conf| conf.sync_all());
            synced.map_err(|e| io_error("cannot sync", &path.join("conf"), e))?;
            sync_dir(&path.join("blobs"))?;
            sync_dir(path)?;
            if let Some(parent) = path.parent() {
                sync_dir(parent)?;
            }
        }
        let meta = db.open_tree("meta")?;
        let log = db.open_tree("log")?;
        let after_last = match log.last()? {
            Some((key, _)) => decode_seq(&key)? + 1,
            None => 0,
        };
        // A truncated log may be empty: its numbering goes on from where it was cut, or a
        // checkpoint's position would skip the values appended next.
        let floor = match db.get(LOG_FLOOR)? {
            Some(bytes) => decode_seq(&bytes)?,
            None => 0,
        };
        let next_seq = after_last.max(floor);
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // Blobs from before this open may never have been synced (a crash, or a build before
        // this one): the first flush syncs them all.
        let writing = parking_lot::RwLock::new(BlobFiles::new(path.join("blobs")));
        Ok(Inner {
            name,
            db,
            meta,
            log,
            next_seq: AtomicU64::new(next_seq),
            appending: parking_lot::Mutex::new(()),
            writing,
        })
    }
}

/// How long opening waits for the database's file lock. sled releases it only when its last
/// background write of a closed database ends (its thread pool holds the file), which can be
/// just after a server in this process stopped; another process holding it keeps it.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// The log segment size of a new database. A page over a quarter of one goes to a blob file,
/// which costs a file made, synced apart and later removed: 2 MiB keeps a full batch's record
/// (about 250 KB at the generator's shape) in the segments.
const SEGMENT_SIZE: usize = 2 * 1024 * 1024;

/// sled's own segment size, which databases made before `SEGMENT_SIZE` have.
const SLED_DEFAULT_SEGMENT_SIZE: usize = 512 * 1024;

/// The segment size to open `path`'s database with (sled refuses another than the one it was
/// made with), and whether sled (re)writes its `conf` on this open, which then needs a sync.
fn segment_size_of(path: &Path) -> Result<(usize, bool)> {
    let conf = path.join("conf");
    let bytes = match std::fs::read(&conf) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(err) => return Err(io_error("cannot read", &conf, err)),
    };
    // Lines of `key: value`, then a checksum that sled checks when it opens.
    let text = String::from_utf8_lossy(&bytes);
    if let Some(size) = text.lines().find_map(|line| line.strip_prefix("segment_size: ")?.trim().parse().ok()) {
        return Ok((size, false));
    }
    // No conf, or one a power cut emptied. This build syncs a new database's conf before
    // storing anything, so data beside a lost conf is an older build's, made with sled's size
    // (sled would have written the conf again with it).
    let data = std::fs::metadata(path.join("db")).is_ok_and(|db| db.len() > 0);
    Ok((if data { SLED_DEFAULT_SEGMENT_SIZE } else { SEGMENT_SIZE }, true))
}

fn open_db(path: &Path, segment_size: usize) -> Result<sled::Db> {
    let config = sled::Config::new()
        .path(path)
        .mode(sled::Mode::HighThroughput)
        .cache_capacity(256 * 1024 * 1024)
        .segment_size(segment_size);
    let deadline = std::time::Instant::now() + LOCK_PATIENCE;
    loop {
        match config.open() {
            Err(sled::Error::Io(err)) if err.to_string().contains("could not acquire lock") => {
                if std::time::Instant::now() >= deadline {
                    return Err(Error::Storage(format!(
                        "{} is in use by another process (its lock stayed held for {} s)",
                        path.display(),
                        LOCK_PATIENCE.as_secs()
                    )));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            opened => return Ok(opened?),
        }
    }
}

/// The database subdirectory `CURRENT` names (the first one when there is no `CURRENT`).
fn current_db(dir: &Path) -> Result<String> {
    match std::fs::read_to_string(dir.join(CURRENT)) {
        Ok(name) => {
            let name = name.trim().to_owned();
            if !is_db_name(&name) {
                return Err(Error::Storage(format!("{} names {name:?}, not a database", dir.join(CURRENT).display())));
            }
            Ok(name)
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            // No compaction has switched yet: the first database is live, and a numbered one
            // can only be a compaction's unfinished copy, unless the first one is gone too.
            let numbered = std::fs::read_dir(dir)
                .map_err(|e| io_error("cannot list", dir, e))?
                .filter_map(|entry| entry.ok())
                .any(|entry| entry.file_name().to_str().is_some_and(|n| is_db_name(n) && n != FIRST_DB));
            if numbered && !dir.join(FIRST_DB).exists() {
                return Err(Error::Storage(format!(
                    "{} is missing but compacted databases exist; restore it (it names the live sled.N directory)",
                    dir.join(CURRENT).display()
                )));
            }
            Ok(FIRST_DB.to_owned())
        }
        Err(err) => Err(io_error("cannot read", &dir.join(CURRENT), err)),
    }
}

/// `sled` or `sled.<n>`: the only names this store creates (and may remove) in the data dir.
fn is_db_name(name: &str) -> bool {
    name == FIRST_DB
        || name.strip_prefix("sled.").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Removes database directories other than the live one: the one a compaction just replaced,
/// or at open what a crashed compaction left (its new database before the switch, the old one
/// after); `what` says which, for the log.
fn remove_stale_dbs(dir: &Path, live: &str, what: &str) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| io_error("cannot list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_error("cannot list", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_db_name(&name) && name != live {
            tracing::info!(dir = %entry.path().display(), "removing {what}");
            std::fs::remove_dir_all(entry.path()).map_err(|e| io_error("cannot remove", &entry.path(), e))?;
        }
    }
    Ok(())
}

impl SledStorage {
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Storage(format!("cannot create data dir {}: {e}", dir.display())))?;
        let live = current_db(dir)?;
        // `CURRENT` may have been renamed into place by a process killed before it synced the
        // directory: the rename is made durable before the database it replaced goes.
        sync_dir(dir)?;
        remove_stale_dbs(dir, &live, "a database left by an earlier compaction")?;
        Self::open_live(dir, &live)
    }

    /// Opens an existing data directory's live database and changes nothing else there (for
    /// `sextant check`, which must not tidy what it inspects).
    pub fn open_existing(dir: &Path) -> Result<Self> {
        let live = current_db(dir)?;
        if !dir.join(&live).is_dir() {
            return Err(Error::Storage(format!("{} holds no database ({live})", dir.display())));
        }
        Self::open_live(dir, &live)
    }

    fn open_live(dir: &Path, live: &str) -> Result<Self> {
        let inner = Inner::open(&dir.join(live))?;
        Ok(SledStorage { dir: dir.to_owned(), inner: parking_lot::RwLock::new(inner) })
    }

    /// Opens a new, empty data directory to restore a backup into.
    pub fn create_empty(dir: &Path) -> Result<Self> {
        let storage = Self::open(dir)?;
        {
            let inner = storage.inner.read();
            if !inner.meta.is_empty() || !inner.log.is_empty() {
                return Err(Error::Storage(format!("{} already holds data", dir.display())));
            }
        }
        Ok(storage)
    }

    /// Stores one backup entry as it was (the caller has checked that a log value decodes).
    pub fn restore(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<()> {
        let inner = self.inner.read();
        match tree {
            Tree::Meta => inner.write(|inner| inner.meta.insert(key, value))?,
            Tree::Log => {
                let seq = decode_seq(key)?;
                inner.next_seq.fetch_max(seq + 1, Ordering::Relaxed);
                inner.write(|inner| inner.log.insert(key, value))?
            }
        };
        Ok(())
    }
}

fn decode_seq(key: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] =
        key.try_into().map_err(|_| Error::Storage(format!("log key of {} bytes, expected 8", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

impl From<sled::Error> for Error {
    fn from(err: sled::Error) -> Self {
        // A full disk is the client's to wait out (RESOURCE_EXHAUSTED), not an internal fault.
        if let sled::Error::Io(io) = &err
            && io.kind() == std::io::ErrorKind::StorageFull
        {
            return Error::exhausted("storage", format!("the disk is full: {io}"));
        }
        Error::Storage(err.to_string())
    }
}

impl Storage for SledStorage {
    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.inner.read().meta.get(key)?.map(|v| v.to_vec()))
    }

    fn put_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        let inner = self.inner.read();
        inner.write(|inner| inner.meta.insert(key, value))?;
        inner.flush()
    }

    fn delete_meta(&self, key: &str) -> Result<()> {
        let inner = self.inner.read();
        inner.write(|inner| inner.meta.remove(key))?;
        inner.flush()
    }

    fn scan_meta(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.inner
            .read()
            .meta
            .scan_prefix(prefix)
            .map(|item| {
                let (key, value) = item?;
                Ok((String::from_utf8_lossy(&key).into_owned(), value.to_vec()))
            })
            .collect()
    }

    fn append(&self, records: &[Encoded]) -> Result<()> {
        let inner = self.inner.read();
        // One sled batch: a crash keeps all of a job's records or none of them.
        let mut batch = sled::Batch::default();
        let _appending = inner.appending.lock();
        let first = inner.next_seq.fetch_add(records.len() as u64, Ordering::Relaxed);
        for (seq, record) in (first..).zip(records) {
            batch.insert(&seq.to_be_bytes()[..], record.0.as_slice());
        }
        inner.write(|inner| inner.log.apply_batch(batch))
    }

    fn sync(&self) -> Result<()> {
        self.inner.read().flush()
    }

    fn replay(&self, after: Option<&LogPosition>, visit: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let inner = self.inner.read();
        let from = after.filter(|p| p.db == inner.name).map_or(0, |p| p.seq);
        for item in inner.log.range(from.to_be_bytes()..) {
            let (_, value) = item?;
            visit(&value)?;
        }
        Ok(())
    }

    fn replay_until(
        &self,
        after: &LogPosition,
        until: &LogPosition,
        visit: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let inner = self.inner.read();
        if until.db != inner.name {
            return Err(Error::Internal(format!("log position in {} replayed in {}", until.db, inner.name)));
        }
        let from = if after.db == inner.name { after.seq } else { 0 };
        for item in inner.log.range(from.to_be_bytes()..until.seq.max(from).to_be_bytes()) {
            let (_, value) = item?;
            visit(&value)?;
        }
        Ok(())
    }

    fn log_position(&self) -> Result<LogPosition> {
        let inner = self.inner.read();
        Ok(LogPosition { db: inner.name.clone(), seq: inner.end() })
    }

    fn truncate_log(&self, position: &LogPosition) -> Result<()> {
        let inner = self.inner.read();
        if position.db != inner.name {
            return Ok(());
        }
        // Nothing below the position and the floor already there (every start asks, see
        // `Engine::open`): no write, no flush.
        let floor = inner.db.get(LOG_FLOOR)?.map(|bytes| decode_seq(&bytes)).transpose()?;
        let below = inner.log.range(..position.seq.to_be_bytes()).next().transpose()?;
        if below.is_none() && floor.is_some_and(|floor| floor >= position.seq) {
            return Ok(());
        }
        inner.write(|inner| inner.db.insert(LOG_FLOOR, &position.seq.to_be_bytes()[..]))?;
        inner.flush()?;
        let mut batch = sled::Batch::default();
        for item in inner.log.range(..position.seq.to_be_bytes()) {
            let (key, _) = item?;
            batch.remove(key);
        }
        inner.write(|inner| inner.log.apply_batch(batch))?;
        inner.flush()
    }

    fn files_dir(&self) -> Option<std::path::PathBuf> {
        Some(self.dir.clone())
    }

    fn bytes_on_disk(&self) -> Result<u64> {
        let _unchanging = self.inner.read();
        dir_bytes(&self.dir)
    }

    fn snapshot(&self, visit: &mut SnapshotVisitor<'_>) -> Result<()> {
        // The read guard keeps a compaction from swapping the database mid-copy.
        let inner = self.inner.read();
        let end = inner.end().to_be_bytes();
        for item in inner.log.range(..end) {
            let (key, value) = item?;
            visit(Tree::Log, &key, &value)?;
        }
        for item in inner.meta.iter() {
            let (key, value) = item?;
            visit(Tree::Meta, &key, &value)?;
        }
        Ok(())
    }

    /// Writes a new database beside the live one (the log values `keep` accepts in order,
    /// then what `extra` puts, then every meta entry), switches `CURRENT` to it and deletes the
    /// old one, so what was left out is gone from the disk. The log is copied under a shared
    /// lock (the caller appends nothing meanwhile; `extra` may take project locks, whose
    /// holders may store meta); only the meta copy and the switch hold the exclusive lock.
    fn rewrite_log(&self, keep: &mut dyn FnMut(&[u8]) -> Result<bool>, extra: &mut ExtraValues<'_>) -> Result<()> {
        let (fresh, new_name) = {
            let inner = self.inner.read();
            let old_name = current_db(&self.dir)?;
            let number = old_name.strip_prefix("sled.").and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
            let new_name = format!("sled.{}", number + 1);
            let new_path = self.dir.join(&new_name);
            if new_path.exists() {
                std::fs::remove_dir_all(&new_path).map_err(|e| io_error("cannot remove", &new_path, e))?;
            }
            let fresh = Inner::open(&new_path)?;
            let mut seq = 0u64;
            let mut batch = sled::Batch::default();
            let mut batched = 0usize;
            let mut put = |value: &[u8], batch: &mut sled::Batch, batched: &mut usize| -> Result<()> {
                batch.insert(&seq.to_be_bytes()[..], value);
                seq += 1;
                *batched += value.len();
                if *batched >= 16 * 1024 * 1024 {
                    fresh.write(|fresh| fresh.log.apply_batch(std::mem::take(batch)))?;
                    *batched = 0;
                }
                Ok(())
            };
            for item in inner.log.iter() {
                let (_, value) = item?;
                if keep(&value)? {
                    put(&value, &mut batch, &mut batched)?;
                }
            }
            extra(&mut |value| put(value, &mut batch, &mut batched))?;
            fresh.write(|fresh| fresh.log.apply_batch(batch))?;
            fresh.next_seq.store(seq, Ordering::Relaxed);
            (fresh, new_name)
        };
        let mut inner = self.inner.write();
        let mut batch = sled::Batch::default();
        for item in inner.meta.iter() {
            let (key, value) = item?;
            batch.insert(key, value);
        }
        fresh.write(|fresh| fresh.meta.apply_batch(batch))?;
        fresh.flush()?;
        // The switch: from here on a restart opens the new database.
        if let Err(err) = replace_durably(&self.dir, CURRENT, new_name.as_bytes()) {
            if current_db(&self.dir).ok().as_deref() != Some(inner.name.as_str()) {
                // Renamed but not synced: going on with the old database would store acks
                // where the next start does not look. A restart opens the new one, which holds
                // everything (the caller appended nothing meanwhile).
                tracing::error!(error = %err, "stopping: CURRENT may name the new database but could not be synced");
                std::process::abort();
            }
            return Err(err);
        }
        let old = std::mem::replace(&mut *inner, fresh);
        drop(old);
        remove_stale_dbs(&self.dir, &new_name, "the database this compaction replaced")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::{Event, Value};
    use crate::core::store::record::{LOG_FORMAT_V1, LogRecord, decode_record, encode_record};

    /// Every log value, in order.
    fn replayed(store: &SledStorage) -> Vec<Vec<u8>> {
        let mut values = Vec::new();
        store
            .replay(None, &mut |v| {
                values.push(v.to_vec());
                Ok(())
            })
            .unwrap();
        values
    }

    fn sample() -> LogRecord {
        LogRecord::Events {
            project: "p".into(),
            events: vec![Event {
                event_id: "e1".into(),
                name: "signup".into(),
                user_id: "u1".into(),
                anonymous_id: String::new(),
                timestamp: 1_700_000_000_000_000,
                properties: vec![("plan".into(), Value::String("pro".into())), ("n".into(), Value::Number(2.5))],
            }],
        }
    }

    #[test]
    fn a_truncated_log_replays_from_its_position_and_numbers_on_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let value = encode_record(&sample()).unwrap();
        let count = |store: &SledStorage, after: Option<&LogPosition>| crate::storage::replayed_records(store, after);
        let position = {
            let store = SledStorage::open(dir.path()).unwrap();
            store.append(&[value.clone(), value.clone(), value.clone()]).unwrap();
            store.sync().unwrap();
            let position = store.log_position().unwrap();
            assert_eq!(position, LogPosition { db: "sled".into(), seq: 3 });
            store.append(std::slice::from_ref(&value)).unwrap();
            assert_eq!(count(&store, Some(&position)), 1);
            store.truncate_log(&store.log_position().unwrap()).unwrap();
            assert_eq!(count(&store, None), 0);
            store.log_position().unwrap()
        };
        // Reopened with an empty log, the numbering goes on after the cut.
        let store = SledStorage::open(dir.path()).unwrap();
        assert_eq!(store.log_position().unwrap(), position);
        store.append(std::slice::from_ref(&value)).unwrap();
        assert_eq!(count(&store, Some(&position)), 1);
        // A position in another database covers nothing here.
        assert_eq!(count(&store, Some(&LogPosition { db: "sled.7".into(), seq: 99 })), 1);
    }

    /// A compaction's catch-up reads the log up to its end while the writer appends, then goes
    /// on from there: read that way, range after range, every appended value comes exactly
    /// once. (An end that counted numbers reserved by an append still storing its values made
    /// the range skip them for good.)
    #[test]
    fn ranges_up_to_the_end_read_beside_appends_miss_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(SledStorage::open(dir.path()).unwrap());
        let (jobs, per_job) = (3000u64, 8);
        // Taken before the appends begin: the reads start from the first value.
        let mut after = store.log_position().unwrap();
        let appender = {
            let store = store.clone();
            std::thread::spawn(move || {
                for job in 0..jobs {
                    let values: Vec<Encoded> =
                        (0..per_job).map(|k| Encoded((job * per_job + k).to_be_bytes().to_vec())).collect();
                    store.append(&values).unwrap();
                }
            })
        };
        let mut read = Vec::new();
        loop {
            let done = appender.is_finished();
            let until = store.log_position().unwrap();
            store
                .replay_until(&after, &until, &mut |value| {
                    read.push(u64::from_be_bytes(value.try_into().unwrap()));
                    Ok(())
                })
                .unwrap();
            after = until;
            if done {
                break;
            }
        }
        appender.join().unwrap();
        assert_eq!(read.len() as u64, jobs * per_job, "values read once each");
        assert!(read.iter().enumerate().all(|(i, &v)| v == i as u64), "in order, none skipped");
    }

    #[test]
    fn records_round_trip_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStorage::open(dir.path()).unwrap();
            store.append(&[encode_record(&sample()).unwrap(), encode_record(&sample()).unwrap()]).unwrap();
            store.sync().unwrap();
            store.put_meta("project/p", b"{}").unwrap();
        }
        let store = SledStorage::open(dir.path()).unwrap();
        store.append(&[encode_record(&sample()).unwrap()]).unwrap();
        let mut seen = Vec::new();
        store
            .replay(None, &mut |r| {
                seen.push(decode_record(r)?);
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, vec![sample(), sample(), sample()]);
        assert_eq!(store.get_meta("project/p").unwrap().as_deref(), Some(&b"{}"[..]));
        assert_eq!(store.scan_meta("project/").unwrap().len(), 1);
    }

    #[test]
    fn a_rewrite_switches_databases_and_a_missing_current_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStorage::open(dir.path()).unwrap();
            store.append(&[encode_record(&sample()).unwrap(), Encoded(vec![9])]).unwrap();
            store.put_meta("project/p", b"{}").unwrap();
            let mut keep = |value: &[u8]| Ok(value != [9]);
            let mut extra = |put: &mut dyn FnMut(&[u8]) -> Result<()>| put(&[7]);
            store.rewrite_log(&mut keep, &mut extra).unwrap();
            assert_eq!(replayed(&store), vec![encode_record(&sample()).unwrap().0, vec![7]]);
        }
        assert_eq!(std::fs::read_to_string(dir.path().join(CURRENT)).unwrap(), "sled.1");
        assert!(!dir.path().join(FIRST_DB).exists());
        let store = SledStorage::open(dir.path()).unwrap();
        assert_eq!(store.get_meta("project/p").unwrap().as_deref(), Some(&b"{}"[..]));
        drop(store);
        std::fs::remove_file(dir.path().join(CURRENT)).unwrap();
        let refused = SledStorage::open(dir.path()).err().expect("refused");
        assert!(refused.to_string().contains("CURRENT is missing"), "{refused}");
        assert!(dir.path().join("sled.1").exists(), "nothing was removed");
    }

    /// Values larger than a quarter of a segment: sled writes them to blob files
    /// (never fsynced by sled), which every flush syncs first, once each, with the directory.
    #[test]
    fn blob_files_are_synced_by_the_flush_that_makes_their_pointers_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStorage::open(dir.path()).unwrap();
        let blobs = dir.path().join(FIRST_DB).join("blobs");
        let count = || std::fs::read_dir(&blobs).map_or(0, |entries| entries.count());
        // Past a quarter of a segment.
        let big = |fill: u8| Encoded(vec![fill; SEGMENT_SIZE / 2]);
        store.append(&[big(1)]).unwrap();
        assert!(count() >= 1, "the value went to a blob file");
        let sync_new = || store.inner.read().writing.write().sync_new().unwrap();
        assert!(sync_new() >= 1, "not synced before the flush");
        store.append(&[big(2), Encoded(vec![3])]).unwrap();
        store.sync().unwrap();
        assert_eq!(sync_new(), 0, "the flush synced every blob file written before it");
        store.put_meta("big", &vec![4; SEGMENT_SIZE / 2]).unwrap();
        assert_eq!(sync_new(), 0, "put_meta's flush syncs them too");
        assert!(count() >= 3);
        drop(store);

        let store = SledStorage::open(dir.path()).unwrap();
        assert_eq!(replayed(&store), vec![big(1).0, big(2).0, vec![3]]);
        assert_eq!(store.get_meta("big").unwrap().map(|v| v.len()), Some(SEGMENT_SIZE / 2));
        // After a reopen nothing is known synced: the first flush syncs what is there.
        assert!(store.inner.read().writing.write().sync_new().unwrap() >= 1);
    }

    /// A blob file is synced again when it is listed at another length (one sled was still
    /// writing when listed); files named otherwise are not sled's blobs.
    #[test]
    fn a_blob_file_is_synced_again_when_its_length_changed() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let mut blobs = BlobFiles::new(dir.path().join("blobs"));
        assert_eq!(blobs.sync_new().unwrap(), 0, "no directory yet");
        std::fs::create_dir(dir.path().join("blobs")).unwrap();
        let path = dir.path().join("blobs").join("41");
        std::fs::write(&path, b"crc").unwrap();
        std::fs::write(dir.path().join("blobs").join("notes.tmp"), b"x").unwrap();
        assert_eq!(blobs.sync_new().unwrap(), 1);
        assert_eq!(blobs.sync_new().unwrap(), 0);
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"kind+data").unwrap();
        assert_eq!(blobs.sync_new().unwrap(), 1, "grown since it was synced");
        assert_eq!(blobs.synced.get(&41), Some(&12));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(blobs.sync_new().unwrap(), 0);
        assert!(blobs.synced.is_empty(), "a removed file leaves the map");
    }

    /// A database made with sled's own segment size (before `SEGMENT_SIZE`) opens with it,
    /// which sled requires; a new one gets `SEGMENT_SIZE`.
    #[test]
    fn a_database_keeps_the_segment_size_it_was_made_with() {
        let dir = tempfile::tempdir().unwrap();
        let old_db = |dir: &Path| {
            let db = sled::Config::new().path(dir.join(FIRST_DB)).open().unwrap();
            db.open_tree("log").unwrap().insert(0u64.to_be_bytes(), &b"old"[..]).unwrap();
            db.flush().unwrap();
        };
        old_db(dir.path());
        // sled's own size, which a database made before `SEGMENT_SIZE` keeps.
        assert_eq!(segment_size_of(&dir.path().join(FIRST_DB)).unwrap(), (SLED_DEFAULT_SEGMENT_SIZE, false));
        let store = SledStorage::open(dir.path()).unwrap();
        store.append(&[Encoded(b"new".to_vec())]).unwrap();
        store.sync().unwrap();
        assert_eq!(replayed(&store), [b"old".to_vec(), b"new".to_vec()]);
        // A compaction moves the log to a new database, made with the new size.
        store.rewrite_log(&mut |_| Ok(true), &mut |_| Ok(())).unwrap();
        drop(store);
        assert_eq!(segment_size_of(&dir.path().join("sled.1")).unwrap(), (SEGMENT_SIZE, false));
        assert_eq!(segment_size_of(&dir.path().join("sled.9")).unwrap(), (SEGMENT_SIZE, true), "none yet");
        // A `conf` cut by a power cut before it was synced, with nothing stored beside it:
        // sled writes it again, with the new size.
        std::fs::create_dir(dir.path().join("sled.9")).unwrap();
        std::fs::write(dir.path().join("sled.9").join("conf"), b"segm").unwrap();
        assert_eq!(segment_size_of(&dir.path().join("sled.9")).unwrap(), (SEGMENT_SIZE, true));
        std::fs::remove_dir_all(dir.path().join("sled.9")).unwrap();
        let store = SledStorage::open(dir.path()).unwrap();
        assert_eq!(store.inner.read().log.len(), 2);
        drop(store);

        // An older build never synced the conf: one a power cut emptied beside its data opens
        // with sled's size, the one the data was written with.
        let dir = tempfile::tempdir().unwrap();
        old_db(dir.path());
        std::fs::write(dir.path().join(FIRST_DB).join("conf"), b"").unwrap();
        assert_eq!(segment_size_of(&dir.path().join(FIRST_DB)).unwrap(), (SLED_DEFAULT_SEGMENT_SIZE, true));
        let store = SledStorage::open(dir.path()).unwrap();
        assert_eq!(replayed(&store), [b"old".to_vec()]);
        drop(store);
        assert_eq!(segment_size_of(&dir.path().join(FIRST_DB)).unwrap(), (SLED_DEFAULT_SEGMENT_SIZE, false));
    }

    #[test]
    fn corrupt_values_are_errors_not_panics() {
        assert!(decode_record(&[]).is_err());
        assert!(decode_record(&[9, 1, 2]).is_err());
        assert!(decode_record(&[LOG_FORMAT_V1, 4, 0, 0, 0, 1]).is_err());
    }

    #[test]
    fn opening_waits_for_a_released_lock_and_names_one_that_stays_held() {
        let dir = tempfile::tempdir().unwrap();
        let held = SledStorage::open(dir.path()).unwrap();
        let released = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(held);
        });
        let reopened = SledStorage::open(dir.path()).expect("opens once the other handle lets go");
        released.join().unwrap();
        let error = SledStorage::open(dir.path()).err().expect("the lock stays held");
        assert!(error.to_string().contains("in use by another process"), "{error}");
        assert!(error.to_string().contains(&dir.path().join(FIRST_DB).display().to_string()), "{error}");
        drop(reopened);
    }
}
