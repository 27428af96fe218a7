//! Taking checkpoints (see `store::segment`) and compacting with them.
//!
//! The writer thread takes a checkpoint after every `CHECKPOINT_EVENTS` stored events, when the
//! background job asks (`--checkpoint-interval-secs`, if anything was written since), before a
//! compaction, and once more when the engine closes; so a restart after a clean stop replays
//! nothing, and one after a crash replays at most what came after the last checkpoint. It
//! starts between groups with the applier drained, so every project's data in memory is
//! exactly the log up to the position it records; queries go on meanwhile (it reads the
//! projects). While a query holds a project that has jobs waiting, the checkpoint is put off
//! to a later group rather than make the writer wait for the query. The writer waits only for
//! its cut (`Checkpointer::spawn`): the files are written on a thread of their own while acks
//! go on, so a checkpoint of a large project holds up no ack.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::RwLock;

use crate::core::engine::ProjectEntry;
use crate::core::ingest::SharedIds;
use crate::core::store::column::ColumnSpace;
use crate::core::store::segment::Manifest;
use crate::error::Result;
use crate::storage::Storage;

/// The engine's projects, shared with the writer so a checkpoint lists every project that
/// exists when it runs.
pub type ProjectMap = Arc<RwLock<BTreeMap<String, Arc<ProjectEntry>>>>;

/// A checkpoint after this many stored events bounds what a restart after a crash replays.
pub const CHECKPOINT_EVENTS: u64 = 2_000_000;

/// What a checkpoint reads and where it writes.
pub struct Checkpointer {
    pub projects: ProjectMap,
    pub space: Arc<ColumnSpace>,
    pub storage: Arc<dyn Storage>,
    pub seen: SharedIds,
    /// The log position the checkpoint loaded at start covers, when nothing came after it:
    /// no new checkpoint is needed until the log moves.
    pub covered: Option<crate::storage::LogPosition>,
}

impl Checkpointer {
    /// Writes a checkpoint of every project and truncates the log behind it, in this thread,
    /// once the projects' files passed their check. The caller makes sure nothing is appended
    /// or applied meanwhile (the writer thread, applier drained).
    pub fn run(&self) -> Result<()> {
        self.checkpoint(|| ())
    }

    /// Writes a checkpoint on a thread of its own, returning once its cut is taken (see
    /// `checkpoint`): the writer waits only for that, and then appends and applies again. It
    /// needs what `run` needs until then, and projects whose files passed their check.
    /// `written` gets the outcome, on that thread.
    pub fn spawn(self: &Arc<Self>, written: impl FnOnce(Result<()>) + Send + 'static) {
        let (cut, taken) = std::sync::mpsc::channel();
        let checkpointer = self.clone();
        std::thread::Builder::new()
            .name("sextant-checkpoint".into())
            .spawn(move || {
                written(checkpointer.checkpoint(move || {
                    let _ = cut.send(());
                }))
            })
            .expect("spawning the checkpoint thread");
        // Also answered when the checkpoint failed before its cut (the sender is dropped).
        let _ = taken.recv();
    }

    /// A checkpoint: first its cut, every project read-locked at the log position and the
    /// dedupe keys copied, after which `cut_taken` runs (from then on appends and applies may
    /// go on: a project still locked queues its writes and acks them, `entry`); then each
    /// project's files, its lock released once they are written (the largest last, so the
    /// others' are soon), the dedupe runs, the manifest, and the log's truncation.
    fn checkpoint(&self, cut_taken: impl FnOnce()) -> Result<()> {
        let started = Instant::now();
        let position = self.storage.log_position()?;
        let projects: Vec<(String, Arc<ProjectEntry>)> =
            self.projects.read().iter().map(|(id, entry)| (id.clone(), entry.clone())).collect();
        // Recursive reads: a write waiting behind a query does not hold the cut (nothing is
        // pending: the writer waits, its applier drained). The largest last.
        let mut states: Vec<_> = projects
            .iter()
            .map(|(id, entry)| {
                entry.wait_verified();
                (id, entry, entry.read_without_pending())
            })
            .collect();
        states.sort_by_key(|(_, _, state)| state.data.table.len());
        // Queued writes would be in the log before the position but in no file: the log's
        // truncation would lose them. The writer starts a checkpoint only with none queued (its
        // applier drained, no project handed to it), and none can be queued now.
        let queued = states.iter().find(|(_, entry, _)| entry.has_pending());
        let seen = match queued {
            Some((id, _, _)) => Err(crate::error::Error::Internal(format!(
                "project {id} has writes not applied yet; the checkpoint is put off"
            ))),
            None => crate::core::ingest::cut_seen(&self.seen, &self.space),
        };
        cut_taken();
        let cut_ms = started.elapsed().as_millis() as u64;
        // Held until the manifest pins the runs' files (see `SavedRuns`).
        let seen = seen?;
        let mut files = BTreeMap::new();
        for (id, _, state) in states {
            let saved = state.data.save(&self.space)?;
            // Pinned before the lock goes: a write applied after it may replace the project's
            // columns (a deletion's compaction), which would remove their files otherwise.
            self.space.pin_also(saved.files());
            files.insert(id.clone(), saved);
            drop(state);
        }
        let seen = seen.save(&self.space)?;
        let manifest = Manifest::new(position.db.clone(), position.seq, files, seen.listed.clone());
        self.space.pin_also(manifest.files());
        manifest.write(self.space.dir())?;
        self.space.pin(manifest.files()).map_err(|e| {
            crate::storage::files::io_error("cannot remove old checkpoint files in", self.space.dir(), e)
        })?;
        drop(seen);
        self.storage.truncate_log(&position)?;
        tracing::info!(
            projects = projects.len(),
            log_seq = position.seq,
            cut_ms,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "checkpoint written"
        );
        Ok(())
    }

    /// Compaction: rebuilds the given projects from their data in memory (new columns and
    /// interners holding nothing deleted or expired), checkpoints, and rewrites the log into a
    /// new database, so nothing removed stays in any file. Returns the data directory's bytes
    /// before and after.
    pub fn compact(&self, projects: &[(String, Arc<ProjectEntry>)]) -> Result<(u64, u64)> {
        let started = Instant::now();
        let before = self.bytes_on_disk()?;
        for (id, entry) in projects {
            let rebuilt = entry.read().data.rebuilt(id, &self.space)?;
            entry.write().data = rebuilt;
        }
        self.run()?;
        // The log is empty now (the writer appended nothing since the checkpoint): the new
        // database gets the meta objects only, and the old one, with every removed record, goes.
        self.storage.rewrite_log(&mut |_| Ok(true), &mut |_| Ok(()))?;
        let after = self.bytes_on_disk()?;
        tracing::info!(
            projects = projects.len(),
            before,
            after,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "compacted"
        );
        Ok((before, after))
    }

    fn bytes_on_disk(&self) -> Result<u64> {
        bytes_on_disk(self.storage.as_ref(), Some(&self.space))
    }

    /// At a clean stop, after the last checkpoint: the column files give back the blocks
    /// reserved past their values (up to 4 MiB a column), and the then-empty log moves to a
    /// fresh database (sled keeps its files' size after a truncation). A stopped data
    /// directory then holds only data: at 1.5 M events these were most of its bytes.
    pub fn release_space(&self) -> Result<()> {
        let projects: Vec<Arc<ProjectEntry>> = self.projects.read().values().cloned().collect();
        for entry in projects {
            entry.write().data.release_reserves(&self.space)?;
        }
        self.storage.rewrite_log(&mut |_| Ok(true), &mut |_| Ok(()))
    }
}

/// The data directory's bytes: the storage's and, when they live elsewhere, the column
/// files' (`space`). The sled storage's directory is the data directory, columns included:
/// adding them again counted every checkpointed byte twice.
pub fn bytes_on_disk(storage: &dyn Storage, space: Option<&Arc<ColumnSpace>>) -> Result<u64> {
    let inside = |space: &Arc<ColumnSpace>| storage.files_dir().is_some_and(|dir| space.dir().starts_with(dir));
    let columns = match space {
        Some(space) if !inside(space) => crate::storage::files::dir_bytes(space.dir())?,
        _ => 0,
    };
    Ok(storage.bytes_on_disk()? + columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::engine::Engine;
    use crate::core::ingest::Incoming;
    use crate::core::model::Event;
    use crate::storage::{Encoded, ExtraValues, LogPosition, SledStorage, SnapshotVisitor};
    use parking_lot::{Condvar, Mutex};

    /// Sled storage whose log truncation (a checkpoint's last step) waits while `held`, and
    /// says when one started.
    struct HeldTruncation {
        sled: SledStorage,
        held: Mutex<bool>,
        released: Condvar,
        started: std::sync::mpsc::SyncSender<()>,
    }

    impl crate::storage::Storage for HeldTruncation {
        fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
            self.sled.get_meta(key)
        }
        fn put_meta(&self, key: &str, value: &[u8]) -> Result<()> {
            self.sled.put_meta(key, value)
        }
        fn delete_meta(&self, key: &str) -> Result<()> {
            self.sled.delete_meta(key)
        }
        fn scan_meta(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
            self.sled.scan_meta(prefix)
        }
        fn append(&self, records: &[Encoded]) -> Result<()> {
            self.sled.append(records)
        }
        fn sync(&self) -> Result<()> {
            self.sled.sync()
        }
        fn replay(&self, after: Option<&LogPosition>, visit: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
            self.sled.replay(after, visit)
        }
        fn log_position(&self) -> Result<LogPosition> {
            self.sled.log_position()
        }
        fn truncate_log(&self, position: &LogPosition) -> Result<()> {
            let _ = self.started.try_send(());
            let mut held = self.held.lock();
            while *held {
                self.released.wait(&mut held);
            }
            self.sled.truncate_log(position)
        }
        fn bytes_on_disk(&self) -> Result<u64> {
            self.sled.bytes_on_disk()
        }
        fn files_dir(&self) -> Option<std::path::PathBuf> {
            self.sled.files_dir()
        }
        fn snapshot(&self, visit: &mut SnapshotVisitor<'_>) -> Result<()> {
            self.sled.snapshot(visit)
        }
        fn rewrite_log(&self, keep: &mut dyn FnMut(&[u8]) -> Result<bool>, extra: &mut ExtraValues<'_>) -> Result<()> {
            self.sled.rewrite_log(keep, extra)
        }
    }

    fn view(id: &str, seconds: i64) -> Vec<Incoming> {
        let event = Event {
            event_id: id.into(),
            name: "view".into(),
            user_id: "u1".into(),
            anonymous_id: String::new(),
            timestamp: seconds * 1_000_000,
            properties: Vec::new(),
        };
        vec![Incoming { event: Ok(event), encoded_len: 1 }]
    }

    /// A checkpoint writes its files beside the writer: while one waits in its last step,
    /// a write is acked and applied, and the checkpoint, answered once done, holds exactly
    /// what was acked before its cut; the later write is in the log after its position, so a
    /// restart replays it once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_checkpoint_being_written_holds_up_no_ack() {
        let dir = tempfile::tempdir().unwrap();
        let (started, truncating) = std::sync::mpsc::sync_channel(8);
        let storage = Arc::new(HeldTruncation {
            sled: SledStorage::open(dir.path()).unwrap(),
            held: Mutex::new(false),
            released: Condvar::new(),
            started,
        });
        let engine = Engine::open(storage.clone(), Default::default(), Default::default()).unwrap();
        engine.create_project(crate::core::engine::ProjectState::for_test("p").project).unwrap();
        assert_eq!(engine.track("p", view("before", 1)).await.unwrap().accepted, 1);

        *storage.held.lock() = true;
        let checkpoint = tokio::spawn({
            let engine = engine.clone();
            async move { engine.checkpoint().await }
        });
        tokio::task::spawn_blocking(move || truncating.recv().unwrap()).await.unwrap();
        let during = tokio::time::timeout(std::time::Duration::from_secs(30), engine.track("p", view("during", 2)));
        assert_eq!(during.await.expect("an ack waited for the checkpoint").unwrap().accepted, 1);
        assert_eq!(engine.project("p").unwrap().read().data.table.len(), 2);
        assert!(!checkpoint.is_finished(), "answered before the checkpoint was written");

        *storage.held.lock() = false;
        storage.released.notify_all();
        checkpoint.await.unwrap().unwrap();
        let manifest = Manifest::read(&dir.path().join("segments")).unwrap().unwrap();
        assert_eq!(manifest.projects["p"].columns["person"].len, 1, "the checkpoint holds its cut");
        let after = LogPosition { db: manifest.log_db.clone(), seq: manifest.log_seq };
        let mut replayed = Vec::new();
        storage
            .replay(Some(&after), &mut |value| {
                if let crate::core::store::record::LogRecord::Events { events, .. } =
                    crate::core::store::record::decode_record(value)?
                {
                    replayed.extend(events.into_iter().map(|e| e.event_id));
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(replayed, ["during"]);
        engine.close().unwrap();
    }

    /// A checkpoint never covers writes still queued on a project (the log's truncation would
    /// lose them): it fails and writes nothing, and once they are applied it goes through.
    #[test]
    fn a_checkpoint_refuses_projects_with_queued_writes() {
        use crate::core::engine::{PendingLimits, ProjectEntry, ProjectState};
        use crate::core::store::record::{LogRecord, encode_record};
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn crate::storage::Storage> = Arc::new(SledStorage::open(dir.path()).unwrap());
        let space = ColumnSpace::durable_for_tests(dir.path());
        let entry = Arc::new(ProjectEntry::new(ProjectState::new(ProjectState::for_test("p").project, Some(&space))));
        let projects: ProjectMap = Arc::new(RwLock::new([("p".to_owned(), entry.clone())].into()));
        let seen = crate::core::ingest::SharedIds::default();
        let checkpointer =
            Checkpointer { projects, space: space.clone(), storage: storage.clone(), seen, covered: None };
        let Ok(incoming) = view("e1", 1).remove(0).event else { unreachable!() };
        let record = LogRecord::Events { project: "p".into(), events: vec![incoming] };
        let encoded = encode_record(&record).unwrap();
        storage.append(std::slice::from_ref(&encoded)).unwrap();
        storage.sync().unwrap();
        let limits = PendingLimits { items: 10, spill_dir: None, spill_bytes: 0 };
        assert!(entry.push(vec![record], &[encoded], vec![true], &limits, Box::new(|| ())).is_some());

        let err = checkpointer.run().unwrap_err().to_string();
        assert!(err.contains("project p has writes not applied yet"), "{err}");
        assert!(Manifest::read(space.dir()).unwrap().is_none(), "no manifest written");
        assert_eq!(crate::storage::replayed_records(storage.as_ref(), None), 1, "the log keeps the write");

        drop(entry.write());
        checkpointer.run().unwrap();
        let manifest = Manifest::read(space.dir()).unwrap().unwrap();
        assert_eq!(manifest.projects["p"].columns["person"].len, 1);
    }
}
