//! The single writer: every write goes through one thread fed by a bounded channel. The thread
//! takes whatever jobs are waiting (up to `MAX_GROUP`), dedupes their events against the in-memory id set,
//! appends one log value per job, makes them durable with one `sync`, applies them to the
//! in-memory tables and only then replies: an ack means on disk and visible to queries. The
//! writer never waits for a project's lock: a job whose project a query holds goes to the
//! applier thread, which applies it (and that project's later jobs, in order) when the lock
//! frees, so a long query delays only its own project's acks.
//! The bounded channel is the backpressure: when the writer is behind, senders wait.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::core::engine::{ProjectEntry, ProjectState};
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
    pub reply: oneshot::Sender<Result<WriteResult>>,
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

/// 128-bit hashes of (project, event id): every event id ever accepted.
pub type SeenIds = HashSet<u128, BuildHasherDefault<IdHasher>>;

/// The writer's id set, shared so that ingestion can ask whether an id was stored before the
/// tracking plan judges it. Only the writer thread writes it.
pub type SharedIds = Arc<parking_lot::RwLock<SeenIds>>;

pub fn event_key(project: &str, event_id: &str) -> u128 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(project.as_bytes());
    hasher.update(&[0]);
    hasher.update(event_id.as_bytes());
    hasher.digest128()
}

/// Marks which keys are new, adding them to `seen`; a key repeated inside `keys` is new once.
pub fn dedupe(seen: &mut SeenIds, keys: &[u128]) -> Vec<bool> {
    keys.iter().map(|key| seen.insert(*key)).collect()
}

const MAX_GROUP: usize = 64;

pub struct Writer {
    pub sender: mpsc::Sender<WriteJob>,
    pub thread: JoinHandle<()>,
}

/// Starts the writer thread; it ends when every sender is dropped, after syncing.
pub fn spawn_writer(storage: Arc<dyn Storage>, seen: SharedIds, capacity: usize) -> Writer {
    let (sender, receiver) = mpsc::channel(capacity);
    let thread = std::thread::Builder::new()
        .name("sextant-writer".into())
        .spawn(move || run_writer(storage, receiver, seen))
        .expect("spawning the writer thread");
    Writer { sender, thread }
}

/// A job whose records were appended, waiting for the group's sync.
struct Appended {
    job: WriteJob,
    keep: Vec<bool>,
    result: WriteResult,
}

/// Jobs handed to the applier thread, per project (by `project_id`).
type Deferred = Arc<parking_lot::Mutex<HashMap<usize, usize>>>;

fn project_id(project: &Arc<ProjectEntry>) -> usize {
    Arc::as_ptr(project) as usize
}

/// Applies a durable job and wakes the project's live queries (`engine::live`).
fn apply(state: &mut ProjectState, a: &Appended) {
    for record in &a.job.records {
        state.data.apply(record, &a.keep);
    }
    state.data.compact();
    state.changes.send_modify(|n| *n += 1);
}

/// Applies the job if the project's lock is free now; false if a query holds it.
fn try_apply(project: &ProjectEntry, a: &Appended) -> bool {
    let Some(mut state) = project.try_write() else {
        return false;
    };
    apply(&mut state, a);
    true
}

fn reply(a: Appended) {
    metrics::counter!("sextant_events_accepted_total").increment(a.result.accepted);
    metrics::counter!("sextant_events_duplicate_total").increment(a.result.duplicates);
    let _ = a.job.reply.send(Ok(a.result));
}

/// Applies durable jobs whose project was busy when the writer got to them, in the order the
/// writer handed them over, waiting for each project's lock here instead of in the writer.
fn run_applier(receiver: std::sync::mpsc::Receiver<Appended>, deferred: Deferred) {
    for a in receiver {
        apply(&mut a.job.project.write(), &a);
        if let Some(count) = deferred.lock().get_mut(&project_id(&a.job.project)) {
            *count -= 1;
        }
        reply(a);
    }
}

fn run_writer(storage: Arc<dyn Storage>, mut receiver: mpsc::Receiver<WriteJob>, seen: SharedIds) {
    let deferred = Deferred::default();
    let (applier, applier_receiver) = std::sync::mpsc::channel::<Appended>();
    let applier_thread = {
        let deferred = deferred.clone();
        std::thread::Builder::new()
            .name("sextant-applier".into())
            .spawn(move || run_applier(applier_receiver, deferred))
            .expect("spawning the applier thread")
    };
    while let Some(first) = receiver.blocking_recv() {
        let started = Instant::now();
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match receiver.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let mut appended: Vec<Appended> = Vec::with_capacity(jobs.len());
        for job in jobs {
            let keep = dedupe(&mut seen.write(), &job.keys);
            let accepted = keep.iter().filter(|k| **k).count() as u64;
            let result = WriteResult { accepted, duplicates: keep.len() as u64 - accepted };
            if let Err(err) = storage.append(&job.encoded) {
                forget(&mut seen.write(), &job.keys, &keep);
                let _ = job.reply.send(Err(err));
                continue;
            }
            appended.push(Appended { job, keep, result });
        }
        if let Err(err) = storage.sync() {
            tracing::error!(error = %err, "sync failed; failing the group");
            for a in appended {
                forget(&mut seen.write(), &a.job.keys, &a.keep);
                let _ = a.job.reply.send(Err(err.clone()));
            }
            continue;
        }
        let mut events = 0u64;
        let mut replies = Vec::with_capacity(appended.len());
        for a in appended {
            events += a.result.accepted;
            // A project whose lock a query holds (or that has jobs waiting) is applied by the
            // applier thread, so one long query delays only its own project's acks.
            let project = a.job.project.clone();
            let waiting = deferred.lock().get(&project_id(&project)).copied().unwrap_or(0) > 0;
            if waiting || !try_apply(&project, &a) {
                *deferred.lock().entry(project_id(&project)).or_default() += 1;
                // The applier ends only after this thread drops its sender.
                let _ = applier.send(a);
                continue;
            }
            replies.push(a);
        }
        metrics::histogram!("sextant_group_commit_seconds").record(started.elapsed().as_secs_f64());
        tracing::trace!(jobs = replies.len(), events, "group committed");
        for a in replies {
            reply(a);
        }
    }
    drop(applier);
    if applier_thread.join().is_err() {
        tracing::error!("the applier thread panicked");
    }
    if let Err(err) = storage.sync() {
        tracing::error!(error = %err, "final sync failed");
    }
}

/// Undoes `dedupe` for a job that did not become durable.
fn forget(seen: &mut SeenIds, keys: &[u128], keep: &[bool]) {
    for (key, kept) in keys.iter().zip(keep) {
        if *kept {
            seen.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedupe_keeps_the_first_of_each_key() {
        let mut seen = SeenIds::default();
        assert_eq!(dedupe(&mut seen, &[1, 2, 1, 3]), vec![true, true, false, true]);
        assert_eq!(dedupe(&mut seen, &[3, 4]), vec![false, true]);
        forget(&mut seen, &[3, 4], &[false, true]);
        assert_eq!(dedupe(&mut seen, &[4, 3]), vec![true, false]);
    }

    #[test]
    fn event_keys_separate_projects() {
        assert_ne!(event_key("a", "bc"), event_key("ab", "c"));
        assert_eq!(event_key("a", "x"), event_key("a", "x"));
    }
}
