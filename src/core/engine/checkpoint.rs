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
use crate::core::ingest::{SeenIds, SharedIds, replay_keep};
use crate::core::store::ProjectData;
use crate::core::store::column::ColumnSpace;
use crate::core::store::record::decode_record;
use crate::core::store::segment::Manifest;
use crate::error::{Error, Result};
use crate::storage::{LogPosition, Storage};

/// The engine's projects, shared with the writer so a checkpoint lists every project that
/// exists when it runs.
pub type ProjectMap = Arc<RwLock<BTreeMap<String, Arc<ProjectEntry>>>>;

/// A compaction's new data, built beside the writer from the last checkpoint and the log after
/// it (`Checkpointer::build_compaction`), then caught up and swapped in by the writer
/// (`Checkpointer::finish_compaction`).
pub struct CompactionBuild {
    /// Each project, its id, and its data rebuilt.
    projects: Vec<(Arc<ProjectEntry>, String, ProjectData)>,
    /// The dedupe set after the records replayed so far, for the events of those after them.
    seen: SeenIds,
    /// Where the replay got to.
    replayed_to: LogPosition,
    bytes_before: u64,
    /// Swaps tried and refused so far because a query held a project (`finish_compaction`).
    refused: u32,
}

/// How long a compaction's swap waits for a project's lock after `refused` refusals: not at
/// all at first (the writer holds every project's acks while it waits), then a little longer
/// each time, up to 100 ms. A wait makes queries that start meanwhile queue behind it, so
/// queries that keep overlapping cannot put the swap, and with it every checkpoint, off for
/// ever: it needs only the ones already running to end within the wait.
fn swap_wait(refused: u32) -> std::time::Duration {
    const PLAIN_TRIES: u32 = 10;
    let steps = refused.saturating_sub(PLAIN_TRIES).min(20);
    std::time::Duration::from_millis(5 * u64::from(steps))
}

/// A compaction swapped in: the data directory's bytes before and after, and the data it
/// replaced.
pub struct Finished {
    pub bytes: (u64, u64),
    pub replaced: Vec<ProjectData>,
}

/// A compaction's build replays the log written meanwhile in up to this many rounds, until one
/// reads at most `CAUGHT_UP` records.
const CATCH_UP_ROUNDS: usize = 8;
const CAUGHT_UP: u64 = 256;

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
        let queued = states.iter().find(|(_, entry, _)| entry.has_queued_writes());
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

    /// A compaction's first part, on a thread of its own: a checkpoint, for which the caller
    /// waits only until its cut is taken (as `spawn`'s), so what was deleted until then is in
    /// none of its files; then `build_compaction` from it, while the writer appends and
    /// applies. The caller writes no other checkpoint until `finish_compaction`. `built` gets
    /// the outcome, on that thread.
    pub fn spawn_compaction(
        self: &Arc<Self>,
        projects: Vec<(String, Arc<ProjectEntry>)>,
        built: impl FnOnce(Result<CompactionBuild>) + Send + 'static,
    ) -> std::thread::JoinHandle<()> {
        let (cut, taken) = std::sync::mpsc::channel();
        let checkpointer = self.clone();
        let thread = std::thread::Builder::new()
            .name("sextant-compaction".into())
            .spawn(move || {
                let bytes_before = checkpointer.bytes_on_disk();
                let checkpoint = checkpointer.checkpoint(move || {
                    let _ = cut.send(());
                    crate::core::store::deferred::yield_to_queries();
                });
                built(checkpoint.and_then(|()| checkpointer.build_compaction(&projects, bytes_before?)))
            })
            .expect("spawning the compaction thread");
        // Also answered when the checkpoint failed before its cut (the sender is dropped).
        let _ = taken.recv();
        thread
    }

    /// Loads each project from the last checkpoint, rebuilds it into new files from what it
    /// holds (`ProjectData::rebuilt`: nothing deleted or expired), replays the log after the
    /// checkpoint into it, and syncs its files.
    fn build_compaction(&self, projects: &[(String, Arc<ProjectEntry>)], bytes_before: u64) -> Result<CompactionBuild> {
        let started = Instant::now();
        let manifest = Manifest::read(self.space.dir())?
            .ok_or_else(|| Error::Internal("a compaction starts from a checkpoint, and there is none".into()))?;
        let mut built = Vec::with_capacity(projects.len());
        for (id, entry) in projects {
            let rebuilt = match manifest.projects.get(id) {
                Some(files) => ProjectData::load(&self.space, files)?.rebuilt(id, &self.space)?,
                None => ProjectData::in_space(Some(&self.space)),
            };
            built.push((entry.clone(), id.clone(), rebuilt));
        }
        let rebuilt_ms = started.elapsed().as_millis() as u64;
        let seen = manifest.load_seen(&self.space)?;
        let mut build =
            CompactionBuild { projects: built, seen, replayed_to: manifest.position(), bytes_before, refused: 0 };
        // In rounds while writes go on (each replays what came during the one before), so that
        // the writer's own, at the swap, has little left.
        let mut replayed = 0;
        for _ in 0..CATCH_UP_ROUNDS {
            let records = self.catch_up(&mut build)?;
            replayed += records;
            if records <= CAUGHT_UP {
                break;
            }
        }
        for (_, _, data) in &build.projects {
            // Synced here rather than in the writer. Pinned: the checkpoint that lists them
            // keeps them, and otherwise the next one removes them (as a crash's start would).
            let saved = data.save(&self.space)?;
            self.space.pin_also(saved.files());
        }
        tracing::info!(
            projects = projects.len(),
            rebuilt_ms,
            replayed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "compaction built"
        );
        Ok(build)
    }

    /// Applies the log's records after `build.replayed_to`, up to where the log ends now, to
    /// the built projects, deduplicating their events as a start's replay does. Returns how
    /// many records it read.
    fn catch_up(&self, build: &mut CompactionBuild) -> Result<u64> {
        let until = self.storage.log_position()?;
        let CompactionBuild { projects, seen, replayed_to, .. } = build;
        let mut records = 0;
        self.storage.replay_until(replayed_to, &until, &mut |value| {
            records += 1;
            let record = decode_record(value)?;
            if let Some((_, _, data)) = projects.iter_mut().find(|(_, id, _)| id == record.project()) {
                let keep = replay_keep(seen, &record);
                data.apply(&record, &keep);
            }
            Ok(())
        })?;
        for (_, _, data) in projects.iter_mut() {
            data.settle_removals();
        }
        *replayed_to = until;
        Ok(records)
    }

    /// A compaction's last part, in the writer (nothing appended or queued meanwhile): catches
    /// the built projects up with the log, swaps them in, checkpoints, and moves the then
    /// empty log to a new database, so nothing removed stays in any file. Returns the data
    /// directory's bytes before and after, and the replaced data (freeing it takes a while: a
    /// value per user, for the caller to drop elsewhere); none, with nothing swapped, while a
    /// query holds one of the projects (the writer tries again, and this catches up from
    /// where it got).
    pub fn finish_compaction(&self, build: &mut CompactionBuild) -> Result<Option<Finished>> {
        let started = Instant::now();
        let replayed = self.catch_up(build)?;
        let caught_up_ms = started.elapsed().as_millis() as u64;
        let entries: Vec<Arc<ProjectEntry>> = build.projects.iter().map(|(entry, _, _)| entry.clone()).collect();
        let mut states = Vec::with_capacity(entries.len());
        let wait = swap_wait(build.refused);
        for entry in &entries {
            // Applies its queued writes, which the log, and so the build, holds already.
            let state = if wait.is_zero() { entry.try_write() } else { entry.try_write_for(wait) };
            match state {
                Some(state) => states.push(state),
                None => {
                    build.refused += 1;
                    return Ok(None);
                }
            }
        }
        let mut replaced: Vec<ProjectData> = states
            .iter_mut()
            .zip(build.projects.drain(..))
            .map(|(state, (_, _, rebuilt))| state.data.replace_with(rebuilt))
            .collect();
        drop(states);
        // Its person order's scratch files go now (quickly), so the size below is without them.
        replaced.iter_mut().for_each(|data| drop(std::mem::take(&mut data.person_order)));
        let swapped_ms = started.elapsed().as_millis() as u64;
        self.run()?;
        // The log is empty now (the writer appended nothing since the checkpoint): the new
        // database gets the meta objects only, and the old one, with every removed record, goes.
        self.storage.rewrite_log(&mut |_| Ok(true), &mut |_| Ok(()))?;
        let after = self.bytes_on_disk()?;
        tracing::info!(
            projects = entries.len(),
            before = build.bytes_before,
            after,
            replayed,
            caught_up_ms,
            swapped_ms,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "compacted"
        );
        Ok(Some(Finished { bytes: (build.bytes_before, after), replaced }))
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
    /// says when one started; likewise a replay of part of the log (a compaction's catch-up)
    /// while `replay_held`.
    struct HeldTruncation {
        sled: SledStorage,
        held: Mutex<bool>,
        released: Condvar,
        started: std::sync::mpsc::SyncSender<()>,
        replay_held: Mutex<bool>,
        replay_started: std::sync::mpsc::SyncSender<()>,
    }

    impl HeldTruncation {
        fn open(dir: &std::path::Path) -> (Arc<Self>, std::sync::mpsc::Receiver<()>, std::sync::mpsc::Receiver<()>) {
            let (started, truncating) = std::sync::mpsc::sync_channel(8);
            let (replay_started, replaying) = std::sync::mpsc::sync_channel(8);
            let storage = Arc::new(HeldTruncation {
                sled: SledStorage::open(dir).unwrap(),
                held: Mutex::new(false),
                released: Condvar::new(),
                started,
                replay_held: Mutex::new(false),
                replay_started,
            });
            (storage, truncating, replaying)
        }

        fn release_replays(&self) {
            *self.replay_held.lock() = false;
            self.released.notify_all();
        }
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
        fn replay_until(
            &self,
            after: &LogPosition,
            until: &LogPosition,
            visit: &mut dyn FnMut(&[u8]) -> Result<()>,
        ) -> Result<()> {
            let _ = self.replay_started.try_send(());
            let mut held = self.replay_held.lock();
            while *held {
                self.released.wait(&mut held);
            }
            drop(held);
            self.sled.replay_until(after, until, visit)
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

    /// An engine on `storage` with an empty project "p".
    fn engine_with_p(storage: &Arc<HeldTruncation>) -> Arc<Engine> {
        let engine = Engine::open(storage.clone(), Default::default(), Default::default()).unwrap();
        engine.create_project(crate::core::engine::ProjectState::for_test("p").project).unwrap();
        engine
    }

    fn view(id: &str, seconds: i64) -> Vec<Incoming> {
        view_by(id, "u1", seconds)
    }

    fn view_by(id: &str, user: &str, seconds: i64) -> Vec<Incoming> {
        let event = Event {
            event_id: id.into(),
            name: "view".into(),
            user_id: user.into(),
            anonymous_id: String::new(),
            timestamp: seconds * 1_000_000,
            properties: Vec::new(),
        };
        vec![Incoming { event: Ok(event), encoded_len: 1 }]
    }

    /// A deletion (a pass over its project's rows) is applied by the applier, never by the
    /// writer, which would hold every project's acks meanwhile: with the applier held by a
    /// query on another project, the deletion is acked, still queued, and the next read of its
    /// project applies it first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deletion_is_applied_off_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let engine =
            Engine::open(Arc::new(SledStorage::open(dir.path()).unwrap()), Default::default(), Default::default())
                .unwrap();
        for id in ["p", "q"] {
            engine.create_project(crate::core::engine::ProjectState::for_test(id).project).unwrap();
        }
        engine.track("p", view("a", 1)).await.unwrap();
        engine.track("q", view_by("b", "u2", 1)).await.unwrap();
        let p = engine.project("p").unwrap();
        let query = p.read();
        // Queued behind the query: the applier waits for it from now on.
        engine.track("p", view("c", 2)).await.unwrap();
        assert!(p.has_queued_writes());
        assert_eq!(engine.delete_user("q", "u2").await.unwrap(), 1);
        let q = engine.project("q").unwrap();
        assert!(q.has_queued_writes(), "the writer applied the deletion itself");
        // Nor does the writer apply it with the project's next write.
        engine.track("q", view_by("d", "u3", 3)).await.unwrap();
        assert!(q.has_queued_writes(), "the writer applied the deletion with a later write");
        // A checkpoint asked meanwhile is put off, and written once the applier is through,
        // with nothing else written to wake the writer.
        let checkpoint = tokio::spawn({
            let engine = engine.clone();
            async move { engine.checkpoint().await }
        });
        let live = q.read().data.table.live_rows();
        assert_eq!(live, 1, "a read applies the deletion first");
        drop(query);
        let written = tokio::time::timeout(std::time::Duration::from_secs(60), checkpoint);
        written.await.expect("the asked checkpoint waited for a write").unwrap().unwrap();
        assert_eq!(p.read().data.table.len(), 2);
    }

    /// A checkpoint writes its files beside the writer: while one waits in its last step,
    /// a write is acked and applied, and the checkpoint, answered once done, holds exactly
    /// what was acked before its cut; the later write is in the log after its position, so a
    /// restart replays it once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_checkpoint_being_written_holds_up_no_ack() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, truncating, _) = HeldTruncation::open(dir.path());
        let engine = engine_with_p(&storage);
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

    /// The events' ids in `p`, in row order.
    fn event_ids(engine: &Engine) -> Vec<String> {
        let entry = engine.project("p").unwrap();
        let state = entry.read();
        let table = &state.data.table;
        (0..table.len()).filter(|&row| !table.is_removed(row)).map(|row| table.row_event_id(row).into_owned()).collect()
    }

    /// A compaction is rebuilt beside the writer: while its rebuild catches up with the log,
    /// writes are acked and seen at once (a new event, a duplicate of a compacted one, a user
    /// deleted), and the compacted data swapped in afterwards holds exactly what was acked:
    /// the user deleted before it gone, the one deleted during it gone, every event once. A
    /// restart reads the same.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_compaction_being_built_holds_up_no_ack_and_misses_no_write() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, _, replaying) = HeldTruncation::open(dir.path());
        let engine = engine_with_p(&storage);
        for (id, user, at) in [("a1", "ann", 1), ("b1", "bob", 2), ("c1", "cat", 3), ("a2", "ann", 4)] {
            assert_eq!(engine.track("p", view_by(id, user, at)).await.unwrap().accepted, 1);
        }
        engine.checkpoint().await.unwrap();
        assert_eq!(engine.delete_user("p", "bob").await.unwrap(), 1);
        assert_eq!(engine.track("p", view_by("d1", "dan", 5)).await.unwrap().accepted, 1);
        let generation = engine.project("p").unwrap().read().data.table.generation();

        *storage.replay_held.lock() = true;
        let compaction = tokio::spawn({
            let engine = engine.clone();
            async move { engine.compact("p").await }
        });
        tokio::task::spawn_blocking(move || replaying.recv().unwrap()).await.unwrap();
        let patience = std::time::Duration::from_secs(30);
        let during = tokio::time::timeout(patience, engine.track("p", view_by("e1", "eve", 6)));
        assert_eq!(during.await.expect("an ack waited for the compaction").unwrap().accepted, 1);
        let again = engine.track("p", view_by("a1", "ann", 1)).await.unwrap();
        assert_eq!((again.accepted, again.duplicates), (0, 1), "a compacted event stays a duplicate");
        assert_eq!(engine.delete_user("p", "cat").await.unwrap(), 1);
        assert_eq!(event_ids(&engine), ["a1", "a2", "d1", "e1"], "writes are seen while the compaction runs");
        assert!(!compaction.is_finished(), "answered before the compaction was swapped in");

        storage.release_replays();
        let compacted = tokio::time::timeout(patience, compaction).await.expect("the compaction ended").unwrap();
        assert!(compacted.unwrap().bytes_after > 0);
        assert_eq!(crate::storage::replayed_records(storage.as_ref(), None), 0, "the log was moved, empty");
        assert_eq!(event_ids(&engine), ["a1", "a2", "d1", "e1"]);
        {
            let entry = engine.project("p").unwrap();
            let state = entry.read();
            assert!(state.data.table.generation() > generation, "rows renumbered: a new generation");
            assert!(
                state.data.needs_compaction.load(std::sync::atomic::Ordering::Relaxed),
                "cat, deleted during the compaction, is still in the files it did not rewrite"
            );
            assert!(state.data.table.find_user("bob").is_none(), "bob is in no file now");
        }
        let again = engine.track("p", view_by("c1", "cat", 3)).await.unwrap();
        assert_eq!((again.accepted, again.duplicates), (0, 1), "a deleted user's events stay duplicates");
        engine.close().unwrap();
        drop(engine);

        let engine = Engine::open(storage, Default::default(), Default::default()).unwrap();
        assert_eq!(event_ids(&engine), ["a1", "a2", "d1", "e1"], "a restart reads what was acked");
        engine.close().unwrap();
    }

    /// Queries that keep overlapping (one always holds the project) do not put the swap off
    /// for ever: its waits grow until the running ones end within one, and the compaction ends
    /// while they go on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn overlapping_queries_do_not_put_a_built_compaction_off_for_ever() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, _, _) = HeldTruncation::open(dir.path());
        let engine = engine_with_p(&storage);
        assert_eq!(engine.track("p", view_by("a1", "ann", 1)).await.unwrap().accepted, 1);
        assert_eq!(engine.delete_user("p", "ann").await.unwrap(), 1);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Two readers, each holding the project 40 ms at a time, half a hold apart; each gives
        // up after 60 s (a hang, which would fail the test, not a timing).
        let readers: Vec<_> = (0..2)
            .map(|k| {
                let (entry, stop) = (engine.project("p").unwrap(), stop.clone());
                std::thread::spawn(move || {
                    std::thread::sleep(std::time::Duration::from_millis(20 * k));
                    let deadline = Instant::now() + std::time::Duration::from_secs(60);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        if Instant::now() > deadline {
                            return false;
                        }
                        let state = entry.read();
                        std::thread::sleep(std::time::Duration::from_millis(40));
                        drop(state);
                    }
                    true
                })
            })
            .collect();
        engine.compact("p").await.unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for reader in readers {
            assert!(reader.join().unwrap(), "the compaction ended only once the queries stopped");
        }
        assert!(engine.project("p").unwrap().read().data.table.find_user("ann").is_none(), "ann is in no file now");
        engine.close().unwrap();
    }

    /// A compaction built while a query holds its project is swapped in only once the query
    /// ends; meanwhile the project's writes are acked (queued), and the swap holds them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_built_compaction_waits_for_a_query_without_holding_up_acks() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, _, replaying) = HeldTruncation::open(dir.path());
        let engine = engine_with_p(&storage);
        assert_eq!(engine.track("p", view_by("a1", "ann", 1)).await.unwrap().accepted, 1);
        assert_eq!(engine.delete_user("p", "ann").await.unwrap(), 1);

        *storage.replay_held.lock() = true;
        let compaction = tokio::spawn({
            let engine = engine.clone();
            async move { engine.compact("p").await }
        });
        tokio::task::spawn_blocking(move || replaying.recv().unwrap()).await.unwrap();
        // A query holds the project from before the build is done until `release` says.
        let (held, holding) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let query = std::thread::spawn({
            let entry = engine.project("p").unwrap();
            move || {
                let state = entry.read();
                held.send(()).unwrap();
                released.recv().unwrap();
                drop(state);
            }
        });
        holding.recv().unwrap();
        storage.release_replays();
        // The build is done long before this; the writer's swap then waits for the query.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let patience = std::time::Duration::from_secs(30);
        for (i, id) in ["b1", "b2", "b3"].into_iter().enumerate() {
            let tracked = tokio::time::timeout(patience, engine.track("p", view_by(id, "bob", 2 + i as i64)));
            assert_eq!(tracked.await.expect("an ack waited for the query").unwrap().accepted, 1);
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        }
        assert!(!compaction.is_finished(), "swapped in under a query");
        release.send(()).unwrap();
        query.join().unwrap();
        tokio::time::timeout(patience, compaction).await.expect("the compaction ended").unwrap().unwrap();
        assert_eq!(event_ids(&engine), ["b1", "b2", "b3"]);
        assert!(engine.project("p").unwrap().read().data.table.find_user("ann").is_none(), "ann is in no file now");
        engine.close().unwrap();
    }
}
