//! The single writer: every write goes through one thread fed by a bounded channel. The thread
//! takes whatever jobs are waiting (up to `MAX_GROUP`), dedupes their events against the ids
//! stored before and the group's own, appends one log value per job, makes them durable with
//! one `sync`, applies them to the in-memory tables and only then replies: an ack means on
//! disk and visible to every query that starts after it. The writer never waits for a
//! project's lock: a job whose project a query holds is queued on the project
//! (`engine::entry`) and acked at once (within a bound); the next read or write of the project
//! applies it first, or the applier thread once the lock frees, so a long query holds up no
//! ack. The bounded channel is the backpressure: when the writer is behind, senders wait.

use std::hash::Hasher;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::ids::{KeySet, Merger, SeenIds, SharedIds, flush_if_due};
use crate::core::engine::ProjectEntry;
use crate::core::engine::checkpoint::{CHECKPOINT_EVENTS, Checkpointer, CompactionBuild};
use crate::core::engine::entry::{PendingLimits, Reply};
use crate::core::store::record::LogRecord;
use crate::error::Result;
use crate::storage::{Encoded, Storage};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteResult {
    /// New events among `keys`.
    pub accepted: u64,
    /// Events among `keys` seen before.
    pub duplicates: u64,
}

/// Records to make durable, already encoded. If the first record is `Events`, `keys` holds
/// its events' dedupe keys in order and the writer stores only the new ones in memory.
pub struct WriteJob {
    pub project: Arc<ProjectEntry>,
    pub records: Vec<LogRecord>,
    pub encoded: Vec<Encoded>,
    pub keys: Vec<u128>,
    /// When every key was checked absent from the dedupe set: its `SeenIds::mark` then, so
    /// the writer checks only what was added since.
    pub absent_at: Option<u64>,
    pub reply: oneshot::Sender<Result<WriteResult>>,
}

/// What the writer thread is asked to do.
pub enum WriterTask {
    Write(WriteJob),
    Compact(CompactJob),
    /// Take a checkpoint if anything was written since the last one (see
    /// `engine::checkpoint`); answers once it is durable.
    Checkpoint(oneshot::Sender<Result<()>>),
    /// The checkpoint written on its own thread is done (a wake-up: see `Checkpoints::reap`;
    /// its outcome comes another way, sent before this).
    CheckpointWritten,
    /// A compaction's build is done, or its finish was put off (a wake-up: see `Compactions`).
    CompactionReady,
}

/// Rebuilds projects' files so that what they deleted or expired leaves the disk. The
/// rebuild runs beside the writer (`Checkpointer::build_compaction`), and the writer swaps it
/// in between groups (`Checkpointer::finish_compaction`): writes wait only for that.
pub struct CompactJob {
    /// The projects to rebuild from their data in memory, by id.
    pub projects: Vec<(String, Arc<ProjectEntry>)>,
    /// Answers the data directory's bytes before and after.
    pub reply: oneshot::Sender<Result<(u64, u64)>>,
}

/// Hashes already spread their bits: use the low 64 as the table hash.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(buf);
        }
    }
    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}

pub use crate::core::store::record::event_key;

/// Marks which keys are new, adding them to `seen`; a key repeated inside `keys` is new once.
pub fn dedupe(seen: &mut SeenIds, keys: &[u128]) -> Vec<bool> {
    keys.iter().map(|key| seen.insert(*key)).collect()
}

/// What a replay of `record` keeps (`ProjectData::apply`'s `keep`): the events not seen before,
/// which join `seen`; the keys of a `SeenIds` record (erased events) join `seen` too.
pub fn replay_keep(seen: &mut SeenIds, record: &LogRecord) -> Vec<bool> {
    match record {
        LogRecord::Events { project, events } => {
            let keys: Vec<u128> = events.iter().map(|e| event_key(project, &e.event_id)).collect();
            dedupe(seen, &keys)
        }
        LogRecord::SeenIds { keys, .. } => {
            keys.iter().for_each(|key| {
                seen.insert(*key);
            });
            Vec::new()
        }
        _ => Vec::new(),
    }
}

/// `dedupe` for the writer's group: keys already durable (`durable`) are old, new ones go to
/// `group`, which joins `durable` only once the group is synced, so that whoever reads
/// `durable` (the Track fast path answers "duplicate" from it) sees only stored ids.
fn dedupe_in_group(durable: &SeenIds, group: &mut KeySet, keys: &[u128], absent_at: Option<u64>) -> Vec<bool> {
    let stored = |key: &u128| match absent_at {
        Some(mark) => durable.added_since(key, mark),
        None => durable.contains(key),
    };
    keys.iter().map(|key| !stored(key) && group.insert(*key)).collect()
}

const MAX_GROUP: usize = 64;

pub struct Writer {
    pub sender: mpsc::Sender<WriterTask>,
    pub thread: JoinHandle<()>,
}

/// Starts the writer thread; it ends when every sender is dropped, after syncing.
/// `pending_limits`: see `ProjectEntry::push`.
pub fn spawn_writer(
    storage: Arc<dyn Storage>,
    seen: SharedIds,
    capacity: usize,
    pending_limits: PendingLimits,
    checkpoints: Option<Checkpointer>,
) -> Writer {
    let (sender, receiver) = mpsc::channel(capacity);
    // Weak: the writer still ends once every sender outside it is dropped.
    let wake = sender.downgrade();
    let thread = std::thread::Builder::new()
        .name("sextant-writer".into())
        .spawn(move || run_writer(storage, (receiver, wake), seen, pending_limits, checkpoints))
        .expect("spawning the writer thread");
    Writer { sender, thread }
}

/// A job whose records were appended, waiting for the group's sync.
struct Appended {
    job: WriteJob,
    keep: Vec<bool>,
    result: WriteResult,
}

/// The ack of a job, with its counts.
fn reply(sender: oneshot::Sender<Result<WriteResult>>, result: WriteResult) {
    metrics::counter!("sextant_events_accepted_total").increment(result.accepted);
    metrics::counter!("sextant_events_duplicate_total").increment(result.duplicates);
    let _ = sender.send(Ok(result));
}

enum ApplierTask {
    /// Apply the project's queued jobs once its lock is free.
    Apply(Arc<ProjectEntry>),
    /// Answered once every project handed over before it is applied.
    Barrier(std::sync::mpsc::Sender<()>),
}

/// Applies the queued jobs of projects that were busy when the writer got to them, in the
/// order the writer handed them over, waiting for each project's lock here instead of in the
/// writer. A project whose jobs a read applied already is passed, not waited for
/// (`ProjectEntry::apply_queued`): a query that began since would hold the applier, and with
/// it a barrier the writer waits on (a checkpoint's), for as long as it runs — under query
/// load every project's acks stalled up to 1.5 s so.
fn run_applier(receiver: std::sync::mpsc::Receiver<ApplierTask>) {
    for task in receiver {
        match task {
            ApplierTask::Apply(project) => project.apply_queued(),
            ApplierTask::Barrier(done) => {
                let _ = done.send(());
            }
        }
    }
}

fn run_writer(
    storage: Arc<dyn Storage>,
    (mut receiver, wake): (mpsc::Receiver<WriterTask>, mpsc::WeakSender<WriterTask>),
    seen: SharedIds,
    pending_limits: PendingLimits,
    checkpoints: Option<Checkpointer>,
) {
    let (applier, applier_receiver) = std::sync::mpsc::channel::<ApplierTask>();
    let applier_thread = std::thread::Builder::new()
        .name("sextant-applier".into())
        .spawn(move || run_applier(applier_receiver))
        .expect("spawning the applier thread");
    // Projects handed to the applier that may still have queued jobs.
    let mut handed: Vec<Arc<ProjectEntry>> = Vec::new();
    let drain = || {
        let (done, applied) = std::sync::mpsc::channel();
        let _ = applier.send(ApplierTask::Barrier(done));
        let _ = applied.recv();
    };
    let last = checkpoints.as_ref().and_then(|c| c.covered.clone());
    let mut checkpoint = Checkpoints { checkpointer: checkpoints.map(Arc::new), last, events: 0, running: None };
    let mut compactions = Compactions::default();
    let mut checkpoint_asked = Vec::new();
    let mut merger = Merger::default();
    while let Some(first) = receiver.blocking_recv() {
        let started = Instant::now();
        let mut jobs = Vec::new();
        let mut take = |task: WriterTask, jobs: &mut Vec<WriteJob>| match task {
            WriterTask::Write(job) => jobs.push(job),
            WriterTask::Compact(job) => compactions.waiting.push_back(job),
            WriterTask::Checkpoint(reply) => checkpoint_asked.push(reply),
            WriterTask::CheckpointWritten | WriterTask::CompactionReady => {}
        };
        take(first, &mut jobs);
        while jobs.len() < MAX_GROUP {
            match receiver.try_recv() {
                Ok(task) => take(task, &mut jobs),
                Err(_) => break,
            }
        }
        checkpoint.reap(false);
        let mut appended: Vec<Appended> = Vec::with_capacity(jobs.len());
        let mut group_keys = KeySet::with_capacity_and_hasher(
            jobs.iter().map(|job| job.keys.len()).sum(),
            std::hash::BuildHasherDefault::default(),
        );
        for job in jobs {
            let keep = dedupe_in_group(&seen.read(), &mut group_keys, &job.keys, job.absent_at);
            let accepted = keep.iter().filter(|k| **k).count() as u64;
            let result = WriteResult { accepted, duplicates: keep.len() as u64 - accepted };
            if let Err(err) = storage.append(&job.encoded) {
                forget(&mut group_keys, &job.keys, &keep);
                let _ = job.reply.send(Err(err));
                continue;
            }
            appended.push(Appended { job, keep, result });
        }
        if let Err(err) = storage.sync() {
            tracing::error!(error = %err, "sync failed; failing the group");
            group_keys.clear();
            for a in appended {
                let _ = a.job.reply.send(Err(err.clone()));
            }
            continue;
        }
        let mut events = 0u64;
        let mut replies: Vec<Reply> = Vec::with_capacity(appended.len());
        for Appended { job, keep, result } in appended {
            events += result.accepted;
            let WriteJob { project, records, encoded, reply: sender, .. } = job;
            let ack: Reply = Box::new(move || reply(sender, result));
            // Queued on the project, then applied at once unless a query holds its lock (the
            // applier or the next read applies it then): no ack waits for a query. Nor for a
            // deletion or an expiry queued (by this job or an earlier one): its pass over the
            // project's rows (a second at 30 M) would hold every project's acks here, so the
            // applier applies that queue.
            let ack_now = project.push(records, &encoded, keep, &pending_limits, ack);
            if project.has_queued_scan() || project.try_write().is_none() {
                if !handed.iter().any(|p| Arc::ptr_eq(p, &project)) {
                    handed.push(project.clone());
                }
                // The applier ends only after this thread drops its sender.
                let _ = applier.send(ApplierTask::Apply(project));
            }
            replies.extend(ack_now);
        }
        // Only now, with every job applied or queued on its project, may Track's fast path see
        // these ids: a known id then means an event every later read sees.
        seen.write().extend(group_keys.drain());
        metrics::histogram!("sextant_group_commit_seconds").record(started.elapsed().as_secs_f64());
        tracing::trace!(jobs = replies.len(), events, "group committed");
        for ack in replies {
            ack();
        }
        // After the acks, so that sorting the recent dedupe keys into a run delays no ack of
        // this group; merging runs happens in the background.
        flush_if_due(&seen);
        merger.start_if_due(&seen);
        checkpoint.events += events;
        handed.retain(|project| project.has_queued_writes());
        compactions.step(&mut checkpoint, &storage, handed.is_empty(), &drain, &wake);
        // A checkpoint waits for no query: while some project's jobs wait for a query to end,
        // it is put off to a later group, so no project's acks wait behind another's query.
        // Nor for another checkpoint: the one being written wakes the writer when done. None
        // is written while a compaction runs, which reads the last one.
        let due = !checkpoint_asked.is_empty() || checkpoint.events >= CHECKPOINT_EVENTS;
        if due && handed.is_empty() && checkpoint.running.is_none() && compactions.running.is_none() {
            drain();
            let asked = std::mem::take(&mut checkpoint_asked);
            checkpoint.start(&storage, asked, &wake);
        } else if !checkpoint_asked.is_empty() && !handed.is_empty() {
            // An asked checkpoint put off for the applier: look again soon, written to or not.
            retry_later(&wake);
        }
    }
    compactions.abandon();
    drop(applier);
    merger.finish();
    checkpoint.reap(true);
    if applier_thread.join().is_err() {
        tracing::error!("the applier thread panicked");
    }
    if let Err(err) = storage.sync() {
        tracing::error!(error = %err, "final sync failed");
    }
    // A clean stop leaves a checkpoint of everything, so the next start replays nothing, and
    // gives back the space the files hold beyond their data (`Checkpointer::release_space`).
    match (checkpoint.take(&storage), &checkpoint.checkpointer) {
        (Err(err), _) => tracing::error!(error = %err, "final checkpoint failed; the next start replays the log"),
        (Ok(()), Some(checkpointer)) => {
            if let Err(err) = checkpointer.release_space() {
                tracing::error!(error = %err, "could not give back the data directory's unused space at stop");
            }
        }
        (Ok(()), None) => {}
    }
}

/// The writer's compactions: those asked for, in order, and the one being built.
#[derive(Default)]
struct Compactions {
    waiting: std::collections::VecDeque<CompactJob>,
    running: Option<RunningCompaction>,
    /// The thread freeing the data the last compaction replaced (joined before the next one
    /// and when the writer stops, so that no file of it is removed after a restart that
    /// reuses its name).
    freeing: Option<JoinHandle<()>>,
}

struct RunningCompaction {
    reply: oneshot::Sender<Result<(u64, u64)>>,
    /// The build's outcome, sent as its thread ends (which then wakes the writer).
    outcome: std::sync::mpsc::Receiver<Result<CompactionBuild>>,
    built: Option<CompactionBuild>,
    thread: JoinHandle<()>,
}

/// How long a compaction's start or finish waits before it tries again, when a query holds one
/// of its projects or some project's writes are queued.
const FINISH_RETRY: std::time::Duration = std::time::Duration::from_millis(20);

impl Compactions {
    /// Between groups: starts the next compaction asked for when none runs, and finishes the
    /// running one once built, when no project has writes queued (`nothing_queued`: the
    /// checkpoint it ends with needs that) and no query holds its projects; else it tries
    /// again after `FINISH_RETRY`. One that ends lets the next one start at once.
    fn step(
        &mut self,
        checkpoint: &mut Checkpoints,
        storage: &Arc<dyn Storage>,
        nothing_queued: bool,
        drain: &dyn Fn(),
        wake: &mpsc::WeakSender<WriterTask>,
    ) {
        let Some(checkpointer) = checkpoint.checkpointer.clone() else {
            for job in self.waiting.drain(..) {
                let _ = job.reply.send(Err(crate::error::Error::Internal(
                    "compaction needs a storage with a data directory for column files".into(),
                )));
            }
            return;
        };
        loop {
            if self.running.is_none() && !self.waiting.is_empty() {
                // It starts with a checkpoint, whose cut needs what a checkpoint's does: no
                // writes queued, and no checkpoint being written (whose end wakes the writer).
                if checkpoint.running.is_some() {
                    return;
                }
                // Nor may its cut wait for a start's check of the files (as a checkpoint's would).
                let verified = checkpointer.projects.read().values().all(|entry| entry.is_verified());
                if !nothing_queued || !verified {
                    return retry_later(wake);
                }
                drain();
                let job = self.waiting.pop_front().expect("not empty");
                let (sent, outcome) = std::sync::mpsc::channel();
                let wake = wake.clone();
                let thread = checkpointer.spawn_compaction(job.projects, move |built| {
                    let _ = sent.send(built);
                    if let Some(writer) = wake.upgrade() {
                        let _ = writer.blocking_send(WriterTask::CompactionReady);
                    }
                });
                // Events stored from now on are the next checkpoint's.
                checkpoint.events = 0;
                self.running = Some(RunningCompaction { reply: job.reply, outcome, built: None, thread });
            }
            let Some(running) = &mut self.running else {
                return;
            };
            if running.built.is_none() {
                match running.outcome.try_recv() {
                    Ok(Ok(build)) => running.built = Some(build),
                    Ok(Err(err)) => {
                        self.end(Err(err));
                        continue;
                    }
                    Err(std::sync::mpsc::TryRecvError::Empty) => return,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        self.end(Err(crate::error::Error::Internal("the compaction panicked".into())));
                        continue;
                    }
                }
            }
            if !nothing_queued {
                return retry_later(wake);
            }
            drain();
            let build = running.built.as_mut().expect("built above");
            match checkpointer.finish_compaction(build) {
                Ok(Some(finished)) => {
                    checkpoint.done(storage);
                    self.end(Ok(finished.bytes));
                    self.join_freeing();
                    let replaced = finished.replaced;
                    self.freeing = Some(std::thread::spawn(move || drop(replaced)));
                }
                Ok(None) => return retry_later(wake),
                Err(err) => self.end(Err(err)),
            }
            // This one ended: the next one asked for, if any, starts now.
        }
    }

    /// Answers the running compaction, which is over. Its thread may still be waking the
    /// writer: not joined here.
    fn end(&mut self, result: Result<(u64, u64)>) {
        if let Some(running) = self.running.take() {
            let _ = running.reply.send(result);
        }
    }

    /// When the writer stops (every sender gone, so the build's thread cannot block waking
    /// it): waits for a build still running, which writes files the last checkpoint then
    /// removes, and answers every compaction that did not happen.
    fn join_freeing(&mut self) {
        if let Some(thread) = self.freeing.take() {
            let _ = thread.join();
        }
    }

    fn abandon(&mut self) {
        self.join_freeing();
        if let Some(running) = self.running.take() {
            let _ = running.thread.join();
            let _ = running.reply.send(Err(crate::error::Error::Unavailable));
        }
        for job in self.waiting.drain(..) {
            let _ = job.reply.send(Err(crate::error::Error::Unavailable));
        }
    }
}

/// Wakes the writer after `FINISH_RETRY`, for a compaction step or an asked checkpoint it put
/// off.
fn retry_later(wake: &mpsc::WeakSender<WriterTask>) {
    let wake = wake.clone();
    std::thread::spawn(move || {
        std::thread::sleep(FINISH_RETRY);
        if let Some(writer) = wake.upgrade() {
            let _ = writer.blocking_send(WriterTask::CompactionReady);
        }
    });
}

/// The writer's checkpoint state: the position of the last one and the events stored since,
/// and the one being written on its own thread.
struct Checkpoints {
    checkpointer: Option<Arc<Checkpointer>>,
    last: Option<crate::storage::LogPosition>,
    events: u64,
    running: Option<RunningCheckpoint>,
}

struct RunningCheckpoint {
    /// Its outcome, sent as it ends (before it wakes the writer, so waiting for it here never
    /// waits for the writer).
    outcome: std::sync::mpsc::Receiver<Result<()>>,
    /// The log position it covers.
    position: crate::storage::LogPosition,
    /// Who asked for it (`WriterTask::Checkpoint`), answered once it is written.
    asked: Vec<oneshot::Sender<Result<()>>>,
}

impl Checkpoints {
    /// Takes a checkpoint in this thread if the log moved since the last one (the applier
    /// drained), after the one being written, if any.
    fn take(&mut self, storage: &Arc<dyn Storage>) -> Result<()> {
        self.reap(true);
        let Some(checkpointer) = &self.checkpointer else {
            return Ok(());
        };
        if self.last.as_ref() == Some(&storage.log_position()?) {
            return Ok(());
        }
        checkpointer.run()?;
        self.done(storage);
        Ok(())
    }

    /// Starts a checkpoint (the applier drained, none running) if the log moved since the last
    /// one, answering `asked` once it is written: on its own thread once every project's files
    /// passed their check (the writer waits only for its cut; the thread wakes the writer
    /// through `wake` when done), else in this thread, which waits for the check first.
    fn start(
        &mut self,
        storage: &Arc<dyn Storage>,
        asked: Vec<oneshot::Sender<Result<()>>>,
        wake: &mpsc::WeakSender<WriterTask>,
    ) {
        let answer = |asked: Vec<oneshot::Sender<Result<()>>>, result: &Result<()>| {
            for reply in asked {
                let _ = reply.send(result.clone());
            }
        };
        let position = match storage.log_position() {
            Ok(position) => position,
            Err(err) => return answer(asked, &Err(err)),
        };
        let checkpointer = match &self.checkpointer {
            Some(checkpointer) if self.last.as_ref() != Some(&position) => checkpointer.clone(),
            _ => return answer(asked, &Ok(())),
        };
        if !checkpointer.projects.read().values().all(|entry| entry.is_verified()) {
            let result = self.take(storage);
            return answer(asked, &result);
        }
        let wake = wake.clone();
        let (sent, outcome) = std::sync::mpsc::channel();
        checkpointer.spawn(move |result| {
            let _ = sent.send(result);
            if let Some(writer) = wake.upgrade() {
                let _ = writer.blocking_send(WriterTask::CheckpointWritten);
            }
        });
        // Events stored from now on count toward the next one.
        self.events = 0;
        self.running = Some(RunningCheckpoint { outcome, position, asked });
    }

    /// Ends the checkpoint being written once it is done (or waits for it, with `wait`):
    /// records its position when it succeeded (else the next group tries again) and answers
    /// who asked.
    fn reap(&mut self, wait: bool) {
        let Some(running) = &self.running else {
            return;
        };
        let outcome = match wait {
            true => running.outcome.recv().ok(),
            false => match running.outcome.try_recv() {
                Err(std::sync::mpsc::TryRecvError::Empty) => return,
                received => received.ok(),
            },
        };
        // None: the thread ended without one (it panicked).
        let result = outcome.unwrap_or_else(|| Err(crate::error::Error::Internal("the checkpoint panicked".into())));
        let Some(RunningCheckpoint { position, asked, .. }) = self.running.take() else {
            return;
        };
        match &result {
            Ok(()) => self.last = Some(position),
            Err(err) => {
                tracing::error!(error = %err, "checkpoint failed; the next group tries again");
                self.events = self.events.max(CHECKPOINT_EVENTS);
            }
        }
        for reply in asked {
            let _ = reply.send(result.clone());
        }
    }

    fn done(&mut self, storage: &Arc<dyn Storage>) {
        self.last = storage.log_position().ok();
        self.events = 0;
    }
}

/// Undoes `dedupe_in_group` for a job that could not be appended.
fn forget(seen: &mut KeySet, keys: &[u128], keep: &[bool]) {
    for (key, kept) in keys.iter().zip(keep) {
        if *kept {
            seen.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The writer's barrier before a checkpoint passes a project whose queued jobs a read
    /// applied already, even while a query holds that project.
    #[test]
    fn the_applier_skips_a_project_with_nothing_queued_while_a_query_holds_it() {
        let project = Arc::new(ProjectEntry::new(crate::core::engine::ProjectState::for_test("p")));
        let (applier, tasks) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || run_applier(tasks));
        let query = project.read_without_pending();
        // A settings change waiting for the state counts as nothing to apply here.
        project
            .change_settings(|settings| {
                settings.project.name = "renamed".into();
                Ok(())
            })
            .unwrap();
        applier.send(ApplierTask::Apply(project.clone())).unwrap();
        let (done, barrier) = std::sync::mpsc::channel();
        applier.send(ApplierTask::Barrier(done)).unwrap();
        barrier
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the barrier waited for a query on a project with nothing to apply");
        drop(query);
        drop(applier);
        thread.join().unwrap();
    }

    #[test]
    fn dedupe_keeps_the_first_of_each_key() {
        let mut seen = SeenIds::default();
        assert_eq!(dedupe(&mut seen, &[1, 2, 1, 3]), vec![true, true, false, true]);
        assert_eq!(dedupe(&mut seen, &[3, 4]), vec![false, true]);
        let mut group: KeySet = [3u128, 4].into_iter().collect();
        forget(&mut group, &[3, 4], &[false, true]);
        assert!(group.contains(&3) && !group.contains(&4));
    }

    #[test]
    fn a_group_sees_durable_keys_and_its_own_but_adds_to_neither_until_synced() {
        let mut durable = SeenIds::default();
        durable.extend([1u128, 2]);
        let mut group = KeySet::default();
        assert_eq!(dedupe_in_group(&durable, &mut group, &[1, 3, 3, 4], None), vec![false, true, false, true]);
        assert_eq!(dedupe_in_group(&durable, &mut group, &[4, 5, 2], None), vec![false, true, false]);
        assert_eq!(durable.len(), 2);
        assert_eq!(group.len(), 3);
    }

    #[test]
    fn event_keys_separate_projects() {
        assert_ne!(event_key("a", "bc"), event_key("ab", "c"));
        assert_eq!(event_key("a", "x"), event_key("a", "x"));
    }
}
