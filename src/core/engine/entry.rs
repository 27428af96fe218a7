//! A project's state behind its lock, and the writes that are durable but not applied yet.
//!
//! The writer never waits for a project's lock. When a query holds it, the writer queues the
//! job's records here and acks at once; whoever takes the lock next applies them before
//! anything else: a read (`read`), a write (`write`, `try_write`), or the writer's applier
//! thread once the lock frees. So an ack still means durable and visible to every read that
//! starts after it, and a long query holds up no ack, its own project's included.
//!
//! Nor does a read wait for a long query to apply what is queued: past `FORK_AFTER` it forks
//! the state (`ProjectState::fork`: the columns share their files, the small per-person parts
//! are copied), applies the queue to the fork and publishes it as the newest version. The
//! query goes on reading the version it started on, which nothing changes any more and which
//! goes when its last reader does; every write and every later read goes to the newest. The queue
//! keeps a bounded number of items in memory (`PendingLimits`); the jobs past it are spilled,
//! as the log encoded them, to an unlinked scratch file, and read back when applied, so a long
//! query costs memory no matter how much is written meanwhile. Only past the spill's own bound
//! (or when it cannot be written) does a job's ack wait until it is applied.
//!
//! A project loaded at start also has its checkpoint's column files checked (`Verification`)
//! in the background: the port opens without reading every byte, and no answer leaves before
//! the files it read passed the check. A read waits for the whole check first (`read`); an
//! analysis may compute meanwhile and hold its answer until the groups of files it read
//! passed (`read_for_answer`, `FileGroup`): it writes nothing, and a failed check ends the
//! process before any answer from a failed file leaves.

use std::collections::VecDeque;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use parking_lot::{ArcRwLockReadGuard, ArcRwLockWriteGuard, Condvar, Mutex, RawRwLock, RwLock};

use crate::core::engine::{ProjectState, Settings};
use crate::core::store::record::{LogRecord, decode_record};
use crate::core::store::table::FileGroup;
use crate::storage::Encoded;

/// What to do once a job is applied (send its ack).
pub type Reply = Box<dyn FnOnce() + Send>;

/// A read of a version of a project's state (see the module doc).
pub type StateRead = ArcRwLockReadGuard<RawRwLock, ProjectState>;
/// A write of the newest version of a project's state.
pub type StateWrite = ArcRwLockWriteGuard<RawRwLock, ProjectState>;

type Version = Arc<RwLock<ProjectState>>;

/// Everything known about one project, and its durable writes not applied yet.
pub struct ProjectEntry {
    /// The newest version of the state (see the module doc): only it is ever written, and only
    /// a fork replaces it (`read_forked`).
    newest: Mutex<Version>,
    /// Held by a fork from reading the newest version to publishing its fork.
    forking: Mutex<()>,
    /// Run by the next fork between its copy and its publication (tests of that window).
    #[cfg(test)]
    fork_pause: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// The settings and definitions as last changed, read without the state's lock; the
    /// state's copy takes them at its next apply (`change_settings`).
    settings: RwLock<Arc<Settings>>,
    /// Held by a change of the settings from reading them to publishing the change.
    changing_settings: Mutex<()>,
    pending: Mutex<Pending>,
    /// The check of the files the state was loaded from, which reads wait for (none: made
    /// after the start, from nothing unverified).
    verification: Option<Arc<Verification>>,
}

/// The background check of a checkpoint's column files after a start (see the module doc), in
/// groups (`FileGroup`, in order): an answer waits only for the groups its reads touched.
/// Writes go on meanwhile: they append past the checked bytes. The dedupe files are checked
/// first, by a check of their own that ingestion waits for (`SeenIds::checked_by`). A failed
/// check is final: the server ends the process on it (`server::start`), and a read still
/// waiting panics rather than read a bad file.
#[derive(Debug, Default)]
pub struct Verification {
    /// The last group (as u8) that passed: groups pass in order.
    passed: AtomicU8,
    outcome: Mutex<Option<Result<(), String>>>,
    done: Condvar,
}

impl Verification {
    pub fn running() -> Arc<Verification> {
        Arc::new(Verification::default())
    }

    pub fn passed() -> Arc<Verification> {
        let verification = Verification::running();
        verification.finish(Ok(()));
        verification
    }

    /// `group`'s files (and those of the groups before it) passed.
    pub fn pass(&self, group: FileGroup) {
        let _slot = self.outcome.lock();
        self.passed.fetch_max(group as u8, Ordering::Release);
        self.done.notify_all();
    }

    /// The check ended: every group passed, or one failed.
    pub fn finish(&self, outcome: Result<(), String>) {
        let mut slot = self.outcome.lock();
        if outcome.is_ok() {
            self.passed.store(LAST_GROUP as u8, Ordering::Release);
        }
        *slot = Some(outcome);
        self.done.notify_all();
    }

    /// Waits for the check to end and returns how it did.
    pub fn outcome(&self) -> Result<(), String> {
        let mut slot = self.outcome.lock();
        loop {
            if let Some(outcome) = &*slot {
                return outcome.clone();
            }
            self.done.wait(&mut slot);
        }
    }

    /// Waits until `group` passed (Ok) or the check failed (its error).
    pub fn settled(&self, group: FileGroup) -> Result<(), String> {
        if self.passed.load(Ordering::Acquire) >= group as u8 {
            return Ok(());
        }
        let mut slot = self.outcome.lock();
        loop {
            if self.passed.load(Ordering::Acquire) >= group as u8 {
                return Ok(());
            }
            if let Some(Err(error)) = &*slot {
                return Err(error.clone());
            }
            self.done.wait(&mut slot);
        }
    }

    /// Waits until `group` passed; panics when the check failed first.
    pub fn wait_for(&self, group: FileGroup) {
        if let Err(error) = self.settled(group) {
            panic!("refusing to read files that failed their check: {error}");
        }
    }

    /// Whether the whole check passed (without waiting).
    pub fn has_passed(&self) -> bool {
        self.passed.load(Ordering::Acquire) >= LAST_GROUP as u8
    }

    /// Waits for the whole check to pass; panics when it failed.
    pub fn wait(&self) {
        self.wait_for(LAST_GROUP);
    }
}

const LAST_GROUP: FileGroup = FileGroup::ALL[FileGroup::ALL.len() - 1];

/// A read whose drop waits for the files' check (see `ProjectEntry::read_for_answer`).
pub struct AnswerRead<'a> {
    state: Option<StateRead>,
    entry: &'a ProjectEntry,
}

impl std::ops::Deref for AnswerRead<'_> {
    type Target = ProjectState;

    fn deref(&self) -> &ProjectState {
        self.state.as_deref().unwrap_or_else(|| unreachable!("taken only when dropped"))
    }
}

impl Drop for AnswerRead<'_> {
    fn drop(&mut self) {
        // The groups the answer's reads touched (any read of the table since the start counts:
        // waiting for more is safe), then the lock goes before the wait.
        let read = self.state.as_ref().map_or(LAST_GROUP, |state| state.data.table.groups_read());
        drop(self.state.take());
        let Some(verification) = &self.entry.verification else { return };
        if std::thread::panicking() {
            // The analysis failed: its error too leaves only after the check of what it read.
            let _ = verification.settled(read);
        } else {
            verification.wait_for(read);
        }
    }
}

/// How much a project's queue of durable, unapplied writes holds before acks wait (`push`).
#[derive(Debug, Clone)]
pub struct PendingLimits {
    /// Items (events, user updates, aliases; 1 for other records) kept in memory.
    pub items: usize,
    /// Where the jobs past `items` go, in an unlinked file (none: nowhere, their acks wait).
    pub spill_dir: Option<PathBuf>,
    /// Bytes of encoded records the spill file may hold.
    pub spill_bytes: u64,
}

#[derive(Default)]
struct Pending {
    jobs: VecDeque<PendingJob>,
    /// Settings changed since the state's copy was last brought up to date.
    settings: Option<Arc<Settings>>,
    /// Items (see `PendingLimits::items`) held in memory in `jobs`.
    items: usize,
    /// Where the spilled jobs of `jobs` are (made when the first one is).
    spill: Option<Spill>,
    /// Some job in `jobs` scans the table to apply (`LogRecord::scans_the_table`).
    scans: bool,
}

struct PendingJob {
    records: Held,
    /// Which events of the first record are new (`ProjectData::apply`).
    keep: Vec<bool>,
    /// The ack, when it waits for the apply (the queue was past its bounds).
    reply: Option<Reply>,
}

enum Held {
    Memory(Vec<LogRecord>),
    /// Encoded records at `at` in the spill file, one after another, of these lengths.
    Spilled {
        at: u64,
        lens: Vec<u32>,
    },
}

/// The settings and definitions `state` holds, to publish as the entry's.
fn settings_of(state: &ProjectState) -> Arc<Settings> {
    Arc::new(Settings { project: state.project.clone(), defs: state.defs.clone() })
}

/// An unlinked scratch file of encoded records, read back when they are applied. It is
/// memory relief, not durability (the log has the records), so it is never synced.
struct Spill {
    file: std::fs::File,
    len: u64,
}

impl Spill {
    /// Appends `encoded` when it fits in `limit` bytes: its place in the file.
    fn append(&mut self, encoded: &[Encoded], limit: u64) -> std::io::Result<Option<Held>> {
        let bytes: usize = encoded.iter().map(|e| e.0.len()).sum();
        if self.len + bytes as u64 > limit {
            return Ok(None);
        }
        let lens = encoded.iter().map(|e| u32::try_from(e.0.len()).map_err(std::io::Error::other));
        let lens = lens.collect::<std::io::Result<Vec<u32>>>()?;
        let at = self.len;
        let joined = encoded.iter().map(|e| e.0.as_slice()).collect::<Vec<_>>().concat();
        self.file.write_all_at(&joined, at)?;
        self.len += bytes as u64;
        Ok(Some(Held::Spilled { at, lens }))
    }

    /// The records spilled at `at`, decoded.
    fn read(&self, at: u64, lens: &[u32]) -> crate::error::Result<Vec<LogRecord>> {
        let mut bytes = vec![0; lens.iter().map(|&n| n as usize).sum()];
        self.file
            .read_exact_at(&mut bytes, at)
            .map_err(|e| crate::error::Error::Storage(format!("cannot read back queued writes: {e}")))?;
        let mut rest = bytes.as_slice();
        lens.iter()
            .map(|&n| {
                let (record, after) = rest.split_at(n as usize);
                rest = after;
                decode_record(record)
            })
            .collect()
    }
}

/// How often the applier, waiting for a project's lock, checks whether a read applied its
/// queued jobs meanwhile (`ProjectEntry::apply_queued`).
const APPLY_RECHECK: std::time::Duration = std::time::Duration::from_millis(20);

/// How long a read with writes to apply waits for a query holding the state before it forks
/// the state instead (see the module doc): a fork copies the per-person arrays, a few
/// milliseconds per million people.
const FORK_AFTER: std::time::Duration = std::time::Duration::from_millis(20);

impl ProjectEntry {
    pub fn new(state: ProjectState) -> ProjectEntry {
        ProjectEntry {
            settings: RwLock::new(settings_of(&state)),
            newest: Mutex::new(Arc::new(RwLock::new(state))),
            forking: Mutex::new(()),
            #[cfg(test)]
            fork_pause: Mutex::new(None),
            changing_settings: Mutex::new(()),
            pending: Mutex::default(),
            verification: None,
        }
    }

    /// The settings and definitions as last changed, without the state's lock: reads of them
    /// wait for no query (the queue of writes never changes them).
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.read().clone()
    }

    /// Changes the settings or definitions: `change` checks and stores a copy; once it
    /// succeeds, the copy is what `settings` returns, and what the state holds from its next
    /// apply, which every read and write of the state makes first. So a change waits for no
    /// query, and every read that starts after it sees it.
    pub fn change_settings<T>(
        &self,
        change: impl FnOnce(&mut Settings) -> crate::error::Result<T>,
    ) -> crate::error::Result<T> {
        let changing = self.changing_settings.lock();
        let published = self.settings();
        let mut settings = Settings::clone(&published);
        let changed = change(&mut settings)?;
        // A change that changed nothing (a repeated stop) leaves the state and its readers be.
        if Arc::ptr_eq(&settings.defs, &published.defs) && settings.project == published.project {
            return Ok(changed);
        }
        let settings = Arc::new(settings);
        // Queued before published: a read that sees the change in `settings` then finds it
        // queued, and applies it before reading the state.
        self.pending.lock().settings = Some(settings.clone());
        *self.settings.write() = settings;
        // Released before the state's lock is asked for: `replace_state` takes them the other
        // way round.
        drop(changing);
        match self.try_write() {
            Some(state) => drop(state),
            // Live queries re-read the state, which applies the change first.
            None => self.newest().read_arc_recursive().changes.send_modify(|n| *n += 1),
        }
        Ok(changed)
    }

    /// `replace` on the state (held for writing), whose settings become the ones published.
    pub fn replace_state(&self, state: &mut ProjectState, replace: impl FnOnce(&mut ProjectState)) {
        let _changing = self.changing_settings.lock();
        // A change published since the caller's apply reaches the state before the replace.
        self.apply_pending(state);
        replace(state);
        *self.settings.write() = settings_of(state);
    }

    /// A project loaded from files that `verification` checks.
    pub fn loaded(state: ProjectState, verification: Arc<Verification>) -> ProjectEntry {
        ProjectEntry { verification: Some(verification), ..ProjectEntry::new(state) }
    }

    /// Waits until the files the state was loaded from passed their check (see
    /// `Verification`).
    pub fn wait_verified(&self) {
        if let Some(verification) = &self.verification {
            verification.wait();
        }
    }

    /// Whether the files the state was loaded from passed their check (without waiting).
    pub fn is_verified(&self) -> bool {
        self.verification.as_ref().is_none_or(|verification| verification.has_passed())
    }

    /// The state with every write acked so far applied, once its files passed their check.
    /// Waits for a query holding the lock only when there is something to apply, and then at
    /// most `FORK_AFTER` (see the module doc).
    pub fn read(&self) -> StateRead {
        self.wait_verified();
        self.read_applied()
    }

    /// The newest version.
    fn newest(&self) -> Version {
        self.newest.lock().clone()
    }

    /// The state with every write acked so far applied (without waiting for the check).
    fn read_applied(&self) -> StateRead {
        // Asked before the newest version is: a fork publishes its version before it takes the
        // queue, so with nothing queued the newest version has every ack (or is being written
        // by whoever took the queue, and the read waits for that).
        if !self.has_pending() {
            return self.newest().read_arc();
        }
        match self.try_write_for(FORK_AFTER) {
            Some(state) => ArcRwLockWriteGuard::downgrade(state),
            // The lock may have been a writer's (the applier's, with a deletion): free by the
            // time `forks_cheaply` read the state, and then no fork is needed.
            None if self.forks_cheaply() => match self.try_write() {
                Some(state) => ArcRwLockWriteGuard::downgrade(state),
                None => self.read_forked(),
            },
            None => ArcRwLockWriteGuard::downgrade(self.write()),
        }
    }

    /// Whether the state's event columns are in files, which a fork shares: a fork of columns
    /// in memory (a server without a data directory) would copy every event.
    fn forks_cheaply(&self) -> bool {
        self.newest().read_arc_recursive().data.table.space().is_some()
    }

    /// Forks the newest version, which a query holds, publishes the fork as the newest, and
    /// applies the queue to it: the read that returns waits for no query.
    fn read_forked(&self) -> StateRead {
        let _forking = self.forking.lock();
        let started = std::time::Instant::now();
        // Recursive: alongside the query, not behind a writer waiting for it. Held until the
        // fork is published, so that no writer takes the old version in between: one waiting
        // for it finds it superseded once it gets it (`lock_newest`).
        let source = self.newest().read_arc_recursive();
        // Another read forked meanwhile, or a writer applied the queue while this waited for
        // the read: the newest version has the queue, nothing to fork (see `read_applied`).
        if !self.has_pending() {
            drop(source);
            return self.newest().read_arc();
        }
        let forked = Arc::new(RwLock::new(source.fork()));
        #[cfg(test)]
        if let Some(pause) = self.fork_pause.lock().take() {
            pause();
        }
        let mut state = forked.write_arc();
        *self.newest.lock() = forked;
        drop(source);
        let forked_ms = started.elapsed().as_secs_f64() * 1000.0;
        self.apply_pending(&mut state);
        tracing::debug!(
            project = %state.project.id,
            forked_ms,
            applied_ms = started.elapsed().as_secs_f64() * 1000.0 - forked_ms,
            "forked the state past a query"
        );
        ArcRwLockWriteGuard::downgrade(state)
    }

    /// The state with every write acked so far applied, for an analysis that only computes an
    /// answer from it: it does not wait for the files' check, but dropping the read does (after
    /// releasing the lock), so the answer, made before the drop, leaves only once the check has
    /// passed. After a start the analysis' scans then overlap the check instead of following it.
    pub fn read_for_answer(&self) -> AnswerRead<'_> {
        AnswerRead { state: Some(self.read_applied()), entry: self }
    }

    /// The state, with writes not applied yet left pending, and without waiting behind a
    /// writer waiting for a query (a read lock held lets another in), nor for the files' check:
    /// for what ingestion reads of the data on its way to the writer (the quarantine, the
    /// property keys and trait names in use), which must not wait for queries. The events and
    /// quarantine it shows may lag the acks (see `pending_quarantine`), and its settings and
    /// definitions may lag a change (read `settings` for those). After a failed check it still
    /// answers (the process is ending on that failure).
    pub fn read_without_pending(&self) -> StateRead {
        self.newest().read_arc_recursive()
    }

    /// A write lock of the newest version, taken by `lock`, or none when `lock` gives none.
    /// A version a fork superseded while `lock` waited for it is let go for the newest.
    fn lock_newest(&self, lock: impl Fn(&Version) -> Option<StateWrite>) -> Option<StateWrite> {
        loop {
            let newest = self.newest();
            let locked = lock(&newest);
            // A fork publishes its version while it holds a read of the one it forked, so the
            // version written here is still the newest once this holds its write lock.
            let superseded = !Arc::ptr_eq(&newest, &self.newest());
            match locked {
                Some(mut state) if !superseded => {
                    self.apply_pending(&mut state);
                    return Some(state);
                }
                // Forked while `lock` waited: the newest may well be free.
                _ if superseded => continue,
                _ => return None,
            }
        }
    }

    pub fn write(&self) -> StateWrite {
        self.lock_newest(|version| Some(version.write_arc()))
            .unwrap_or_else(|| unreachable!("a write lock is waited for"))
    }

    /// `write`, unless the lock is held.
    pub fn try_write(&self) -> Option<StateWrite> {
        self.lock_newest(RwLock::try_write_arc)
    }

    /// `write`, unless the lock stays held for `wait` (meanwhile new readers queue behind).
    pub fn try_write_for(&self, wait: std::time::Duration) -> Option<StateWrite> {
        self.lock_newest(|version| version.try_write_arc_for(wait))
    }

    /// Whether the state is behind: writes queued, or settings changed since its last apply.
    pub fn has_pending(&self) -> bool {
        let pending = self.pending.lock();
        !pending.jobs.is_empty() || pending.settings.is_some()
    }

    /// Whether log records are queued (settings are not in the log, so no checkpoint waits
    /// for them).
    pub fn has_queued_writes(&self) -> bool {
        !self.pending.lock().jobs.is_empty()
    }

    /// Whether a queued job scans the table to apply (a deletion, an expiry): the writer leaves
    /// such a queue to its applier.
    pub fn has_queued_scan(&self) -> bool {
        self.pending.lock().scans
    }

    /// Applies the queued jobs once the lock is free, for the writer's applier; returns as
    /// soon as nothing is queued (a read applied the jobs first), so a query on a project with
    /// nothing left to apply holds the applier up at most `APPLY_RECHECK`.
    pub fn apply_queued(&self) {
        // Log records only: a settings change alone waits for the next read or write, so the
        // applier is not held by a query for it.
        while self.has_queued_writes() {
            // A timed wait for the write lock still holds back new readers meanwhile (the
            // lock is fair), so the apply is not starved by a stream of queries.
            if self.try_write_for(APPLY_RECHECK).is_some() {
                return;
            }
        }
    }

    /// Visits the quarantine records queued and not applied yet, oldest first (they are
    /// never spilled).
    pub fn pending_quarantine(&self, mut visit: impl FnMut(&LogRecord)) {
        for job in &self.pending.lock().jobs {
            if let Held::Memory(records) = &job.records {
                records.iter().filter(|r| matches!(r, LogRecord::Quarantined { .. })).for_each(&mut visit);
            }
        }
    }

    /// Queues a durable job's records (`encoded` as the log holds them), to be applied before
    /// the state is next read or written, and gives `reply` back (ack now), unless the queue is
    /// past both its bounds (`PendingLimits`): then keeps `reply` to run once they are applied.
    pub fn push(
        &self,
        records: Vec<LogRecord>,
        encoded: &[Encoded],
        keep: Vec<bool>,
        limits: &PendingLimits,
        reply: Reply,
    ) -> Option<Reply> {
        let mut pending = self.pending.lock();
        pending.scans |= records.iter().any(LogRecord::scans_the_table);
        let weight = records.iter().map(items).sum::<usize>();
        let in_memory = pending.items + weight <= limits.items;
        // Quarantine records stay in memory: ingestion looks at them (`pending_quarantine`).
        let spilled = match &limits.spill_dir {
            Some(dir) if !in_memory && !records.iter().any(|r| matches!(r, LogRecord::Quarantined { .. })) => {
                spill(&mut pending.spill, dir, encoded, limits.spill_bytes)
            }
            _ => None,
        };
        let (records, reply, ack_now) = match spilled {
            Some(held) => (held, None, Some(reply)),
            None => {
                pending.items += weight;
                let (reply, ack_now) = if in_memory { (None, Some(reply)) } else { (Some(reply), None) };
                (Held::Memory(records), reply, ack_now)
            }
        };
        pending.jobs.push_back(PendingJob { records, keep, reply });
        ack_now
    }

    /// Applies the queued jobs in order (the caller holds the write lock), then runs the acks
    /// that waited for them and wakes the project's live queries (`engine::live`).
    fn apply_pending(&self, state: &mut ProjectState) {
        // The spill goes with its jobs: later ones start a new file.
        let (jobs, spill, settings) = {
            let mut pending = self.pending.lock();
            pending.items = 0;
            pending.scans = false;
            (std::mem::take(&mut pending.jobs), pending.spill.take(), pending.settings.take())
        };
        if jobs.is_empty() && settings.is_none() {
            return;
        }
        if let Some(settings) = settings {
            state.project = settings.project.clone();
            state.defs = settings.defs.clone();
        }
        for job in &jobs {
            match &job.records {
                Held::Memory(records) => records.iter().for_each(|record| state.data.apply(record, &job.keep)),
                Held::Spilled { at, lens } => {
                    let spill = spill.as_ref().expect("a spilled job's file goes with it");
                    // Acked writes that cannot be applied: the log has them, a restart does.
                    let records = spill.read(*at, lens).unwrap_or_else(|e| {
                        tracing::error!(error = %e, "stopping: acknowledged writes come back from the log at restart");
                        std::process::abort()
                    });
                    records.iter().for_each(|record| state.data.apply(record, &job.keep));
                }
            }
        }
        state.data.settle_removals();
        state.version += 1;
        state.changes.send_modify(|n| *n += 1);
        for reply in jobs.into_iter().filter_map(|job| job.reply) {
            reply();
        }
    }
}

/// Appends `encoded` to the project's spill file in `dir` (made when missing) when it fits in
/// `limit` bytes; none when it does not, or cannot be written (logged: the ack then waits).
fn spill(spill: &mut Option<Spill>, dir: &std::path::Path, encoded: &[Encoded], limit: u64) -> Option<Held> {
    let appended = match spill {
        Some(spill) => spill.append(encoded, limit),
        None => tempfile::tempfile_in(dir).and_then(|file| {
            let mut made = Spill { file, len: 0 };
            let appended = made.append(encoded, limit);
            *spill = Some(made);
            appended
        }),
    };
    appended.unwrap_or_else(|e| {
        tracing::warn!(error = %e, dir = %dir.display(), "cannot spill queued writes; their ack waits for the apply");
        None
    })
}

/// How much a record weighs in the queue's bound.
fn items(record: &LogRecord) -> usize {
    match record {
        LogRecord::Events { events, .. } => events.len(),
        LogRecord::Users { updates, .. } => updates.len(),
        LogRecord::Aliases { pairs, .. } => pairs.len(),
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::Event;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn events(ids: &[&str]) -> Vec<LogRecord> {
        let events = ids
            .iter()
            .map(|id| Event {
                event_id: (*id).into(),
                name: "visit".into(),
                user_id: "u1".into(),
                anonymous_id: String::new(),
                timestamp: 1_000_000,
                properties: Vec::new(),
            })
            .collect();
        vec![LogRecord::Events { project: "p".into(), events }]
    }

    fn entry() -> Arc<ProjectEntry> {
        Arc::new(ProjectEntry::new(ProjectState::for_test("p")))
    }

    /// An entry whose columns are files in `dir`, which forks share.
    fn entry_in_files(dir: &std::path::Path) -> Arc<ProjectEntry> {
        let space = crate::core::store::column::ColumnSpace::scratch(dir).unwrap();
        let project = ProjectState::for_test("p").project;
        Arc::new(ProjectEntry::new(ProjectState::new(project, Some(&space))))
    }

    /// A change of the settings waits for no query: `settings` has it at once, the query's
    /// state keeps its copy, and the next read applies it; a failed change publishes nothing.
    #[test]
    fn settings_change_past_a_query_and_reach_the_state_at_its_next_read() {
        let entry = entry();
        let query = entry.read();
        let renamed = entry.change_settings(|settings| {
            settings.project.name = "renamed".into();
            Ok(settings.project.name.clone())
        });
        assert_eq!(renamed.unwrap(), "renamed");
        let failed = entry.change_settings(|settings| -> crate::error::Result<()> {
            settings.project.name = "never".into();
            Err(crate::error::Error::invalid("name", "refused"))
        });
        assert!(failed.is_err());
        assert_eq!(entry.settings().project.name, "renamed");
        assert_eq!(query.project.name, "p", "the running query's state does not change under it");
        assert!(entry.has_pending() && !entry.has_queued_writes(), "settings are not log records");
        assert_eq!(*query.changes.borrow(), 1, "live queries are woken to read again");
        drop(query);
        assert_eq!(entry.read().project.name, "renamed");
        assert!(!entry.has_pending());
        // With no query holding the state, the change reaches it at once.
        entry
            .change_settings(|settings| {
                settings.project.timezone = "Europe/Berlin".into();
                Ok(())
            })
            .unwrap();
        assert!(!entry.has_pending());
        assert_eq!(entry.read_without_pending().project.timezone, "Europe/Berlin");
        // A change of other definitions shares the cohorts (static ones hold up to 1 M ids).
        let before = entry.settings();
        entry
            .change_settings(|settings| {
                settings.defs_mut().goals.clear();
                Ok(())
            })
            .unwrap();
        let after = entry.settings();
        assert!(!Arc::ptr_eq(&before.defs, &after.defs) && Arc::ptr_eq(&before.defs.cohorts, &after.defs.cohorts));
        // A change that changes nothing queues nothing and wakes no one.
        let woken = *entry.read().changes.borrow();
        let query = entry.read();
        entry.change_settings(|settings| Ok(settings.project.name.clone())).unwrap();
        assert!(!entry.has_pending());
        assert_eq!(*query.changes.borrow(), woken);
    }

    /// Counts the replies run, and says whether `push` gave its reply back (3 items in
    /// memory, no spill).
    fn push(entry: &ProjectEntry, ids: &[&str], keep: Vec<bool>, replied: &Arc<AtomicUsize>) -> bool {
        let limits = PendingLimits { items: 3, spill_dir: None, spill_bytes: 0 };
        push_records(entry, events(ids), keep, &limits, replied)
    }

    fn push_records(
        entry: &ProjectEntry,
        records: Vec<LogRecord>,
        keep: Vec<bool>,
        limits: &PendingLimits,
        replied: &Arc<AtomicUsize>,
    ) -> bool {
        let replied = replied.clone();
        let reply: Reply = Box::new(move || {
            replied.fetch_add(1, Ordering::SeqCst);
        });
        let encoded: Vec<Encoded> =
            records.iter().map(|r| crate::core::store::record::encode_record(r).unwrap()).collect();
        entry.push(records, &encoded, keep, limits, reply).is_some()
    }

    fn event_ids(state: &ProjectState) -> Vec<String> {
        (0..state.data.table.len()).map(|row| state.data.table.row_event_id(row).into_owned()).collect()
    }

    #[test]
    fn queued_jobs_are_applied_in_order_before_any_read_or_write() {
        let entry = entry();
        let replied = Arc::new(AtomicUsize::new(0));
        let query = entry.read();
        // Within the bound (3 items): acked at once.
        assert!(push(&entry, &["a", "b"], vec![true, true], &replied));
        assert!(push(&entry, &["c"], vec![true], &replied));
        // Past it: the ack waits for the apply. `keep` leaves out a duplicate.
        assert!(!push(&entry, &["d", "dup"], vec![true, false], &replied));
        assert_eq!(query.data.table.len(), 0, "the query's view does not change under it");
        assert!(entry.try_write().is_none(), "the query holds the lock");
        let mut seen = 0;
        entry.pending_quarantine(|_| seen += 1);
        assert_eq!(seen, 0, "no quarantine queued");
        assert_eq!(entry.read_without_pending().data.table.len(), 0);
        drop(query);

        assert_eq!(replied.load(Ordering::SeqCst), 0);
        let state = entry.read();
        assert_eq!(event_ids(&state), ["a", "b", "c", "d"]);
        assert_eq!(replied.load(Ordering::SeqCst), 1, "the waiting ack runs once applied");
        assert!(!entry.has_pending());
        assert_eq!(*state.changes.borrow(), 1, "live queries woken once for the three jobs");
        drop(state);

        // The queue's weight starts again from nothing.
        assert!(push(&entry, &["e", "f", "g"], vec![], &replied));
        assert_eq!(entry.write().data.table.len(), 7);
    }

    /// A read with writes queued behind a query forks the state (columns in files): it sees
    /// every ack without waiting for the query, which keeps reading its version unchanged;
    /// writes go to the fork from then on, a writer that waited for the old version included.
    #[test]
    fn a_read_behind_a_query_forks_the_state_and_the_query_keeps_its_version() {
        let dir = tempfile::tempdir().unwrap();
        let entry = entry_in_files(dir.path());
        let replied = Arc::new(AtomicUsize::new(0));
        assert!(push(&entry, &["a", "b"], vec![true, true], &replied));
        let query = entry.read();
        assert_eq!(event_ids(&query), ["a", "b"]);
        assert!(push(&entry, &["c"], vec![true], &replied));
        // A writer asks for the lock the query holds, before the fork.
        let writer = {
            let entry = entry.clone();
            std::thread::spawn(move || entry.write().data.apply(&events(&["w"])[0], &[true]))
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        let (sender, read) = std::sync::mpsc::channel();
        let reader = {
            let entry = entry.clone();
            std::thread::spawn(move || sender.send(event_ids(&entry.read())).unwrap())
        };
        let forked = read.recv_timeout(std::time::Duration::from_secs(60)).expect("the read waited for the query");
        assert_eq!(forked, ["a", "b", "c"]);
        reader.join().unwrap();
        assert_eq!(event_ids(&query), ["a", "b"], "the query's version does not change under it");
        assert!(!entry.has_pending());
        // The fork is free: a write goes through at once, and a later read sees it.
        entry.try_write().expect("the newest version is not the query's").data.apply(&events(&["d"])[0], &[true]);
        assert_eq!(event_ids(&entry.read()), ["a", "b", "c", "d"]);
        assert_eq!(event_ids(&query), ["a", "b"]);
        // The writer that waited for the query's version writes to the newest once it ends.
        drop(query);
        writer.join().unwrap();
        assert_eq!(event_ids(&entry.read()), ["a", "b", "c", "d", "w"]);
        assert_eq!(replied.load(Ordering::SeqCst), 0, "every ack ran at once");
    }

    /// Between a fork's copy and its publication the old version stays read, so a writer
    /// cannot apply the queue to it (and lose it to the fork) even when the query ends then.
    #[test]
    fn no_writer_takes_the_old_version_between_a_forks_copy_and_its_publication() {
        let dir = tempfile::tempdir().unwrap();
        let entry = entry_in_files(dir.path());
        let replied = Arc::new(AtomicUsize::new(0));
        assert!(push(&entry, &["a"], vec![true], &replied));
        let (held, holding) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let query = {
            let entry = entry.clone();
            std::thread::spawn(move || {
                let state = entry.read();
                held.send(()).unwrap();
                released.recv().unwrap();
                drop(state);
            })
        };
        holding.recv().unwrap();
        assert!(push(&entry, &["b"], vec![true], &replied));
        *entry.fork_pause.lock() = Some(Box::new({
            let (entry, replied) = (entry.clone(), replied.clone());
            move || {
                release.send(()).unwrap();
                query.join().unwrap();
                // The writer's next job finds the lock taken, and queues.
                assert!(push(&entry, &["c"], vec![true], &replied));
                assert!(entry.try_write().is_none(), "a writer took the version being forked");
            }
        }));
        assert_eq!(event_ids(&entry.read()), ["a", "b", "c"]);
        assert!(entry.fork_pause.lock().is_none(), "the read forked");
        assert_eq!(event_ids(&entry.write()), ["a", "b", "c"]);
    }

    /// The applier's apply waits for a query holding the project while jobs are queued, and
    /// applies them once it ends; with nothing queued it returns at once, query or not.
    #[test]
    fn apply_queued_waits_only_while_something_is_queued() {
        let entry = entry();
        let replied = Arc::new(AtomicUsize::new(0));
        let query = entry.read_without_pending();
        entry.apply_queued();
        assert!(push(&entry, &["a", "b"], vec![true, true], &replied));
        let applier = {
            let entry = entry.clone();
            std::thread::spawn(move || entry.apply_queued())
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!applier.is_finished(), "the apply waits for the query");
        assert!(entry.has_pending());
        drop(query);
        applier.join().unwrap();
        assert!(!entry.has_pending());
        assert_eq!(event_ids(&entry.read_without_pending()), ["a", "b"]);
    }

    /// Past the items kept in memory, jobs go to the spill file and are acked at once, up to
    /// its bytes; they are applied in order with the jobs kept in memory, keeping their
    /// duplicates out. Quarantine records are never spilled (ingestion reads them queued), so
    /// past the memory bound their ack waits, as does one past the spill's bytes.
    #[test]
    fn jobs_past_the_memory_bound_are_spilled_acked_and_applied_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let size = |ids: &[&str]| crate::core::store::record::encode_record(&events(ids)[0]).unwrap().0.len() as u64;
        let spill_bytes = size(&["c", "dup"]) + size(&["d"]) + size(&["e"]);
        let limits = PendingLimits { items: 2, spill_dir: Some(dir.path().into()), spill_bytes };
        let entry = entry();
        let replied = Arc::new(AtomicUsize::new(0));
        let query = entry.read();
        assert!(push_records(&entry, events(&["a", "b"]), vec![true, true], &limits, &replied));
        // Past the 2 items in memory: spilled, acked.
        assert!(push_records(&entry, events(&["c", "dup"]), vec![true, false], &limits, &replied));
        assert!(push_records(&entry, events(&["d"]), vec![true], &limits, &replied));
        let Some(LogRecord::Events { events: mut held_event, .. }) = events(&["q"]).pop() else { unreachable!() };
        let entry_of = |event| crate::core::model::QuarantinedEvent { id: 7, event, reasons: vec![], received: 1 };
        let quarantined = LogRecord::Quarantined { project: "p".into(), entries: vec![entry_of(held_event.remove(0))] };
        assert!(!push_records(&entry, vec![quarantined], vec![], &limits, &replied), "quarantine stays in memory");
        let mut held = 0;
        entry.pending_quarantine(|_| held += 1);
        assert_eq!(held, 1);
        assert!(push_records(&entry, events(&["e"]), vec![true], &limits, &replied));
        // The spill holds c, dup, d and e: the next job does not fit, its ack waits.
        assert!(!push_records(&entry, events(&["f"]), vec![true], &limits, &replied));
        assert_eq!(query.data.table.len(), 0);
        drop(query);

        let state = entry.read();
        assert_eq!(event_ids(&state), ["a", "b", "c", "d", "e", "f"]);
        assert_eq!(state.data.quarantine.len(), 1);
        assert_eq!(replied.load(Ordering::SeqCst), 2, "the two waiting acks run once applied");
        drop(state);
        // The memory bound and the spill went with their jobs: the next ones fit again.
        let query = entry.read();
        assert!(push_records(&entry, events(&["g", "h"]), vec![true; 2], &limits, &replied));
        assert!(push_records(&entry, events(&["i", "j"]), vec![true; 2], &limits, &replied));
        drop(query);
        assert_eq!(event_ids(&entry.read())[6..], ["g", "h", "i", "j"]);
    }

    /// An analysis computes from the state while the files are checked; its answer leaves only
    /// after the check passed, and none leaves when it failed. The lock is free meanwhile.
    #[test]
    fn an_answer_is_computed_during_the_files_check_and_leaves_after_it() {
        for passes in [true, false] {
            let verification = Verification::running();
            let entry = Arc::new(ProjectEntry::loaded(ProjectState::for_test("p"), verification.clone()));
            entry.write().data.apply(&events(&["a"])[0], &[true]);
            let (computed, computed_rx) = std::sync::mpsc::channel();
            let (answered, answer) = std::sync::mpsc::channel();
            let reader = {
                let entry = entry.clone();
                std::thread::spawn(move || {
                    let rows = {
                        let state = entry.read_for_answer();
                        computed.send(()).unwrap();
                        state.data.table.len()
                    };
                    answered.send(rows).unwrap();
                })
            };
            computed_rx.recv().unwrap();
            let wait = std::time::Duration::from_millis(50);
            assert!(answer.recv_timeout(wait).is_err(), "an answer left before the check");
            // The reader waits without the lock: a write goes through.
            entry.write().data.apply(&events(&["b"])[0], &[true]);
            assert!(answer.recv_timeout(wait).is_err(), "an answer left before the check");
            if passes {
                verification.finish(Ok(()));
                assert_eq!(answer.recv().unwrap(), 1, "the answer as computed");
                reader.join().unwrap();
            } else {
                verification.finish(Err("segments/7.col is corrupt".into()));
                assert!(reader.join().is_err(), "no answer from files that failed their check");
                assert!(answer.try_recv().is_err());
            }
        }
    }

    /// An answer waits for the groups of files its reads touched, in the order they are
    /// checked: one that read only people, names and times leaves once those passed, while the
    /// properties and the cold values are still being checked.
    #[test]
    fn an_answer_waits_only_for_the_groups_of_files_it_read() {
        type Read = fn(&crate::core::store::table::EventTable) -> usize;
        let reads: [(Read, FileGroup); 4] = [
            (|table| table.person().len() + table.name().len() + table.time_of(0) as usize, FileGroup::Scanned),
            (|table| table.row_props(0).count(), FileGroup::Properties),
            (|table| table.row_event_id(0).len(), FileGroup::Cold),
            (|table| table.event(0).properties.len(), FileGroup::Cold),
        ];
        for (read, needs) in reads {
            let verification = Verification::running();
            let entry = Arc::new(ProjectEntry::loaded(ProjectState::for_test("p"), verification.clone()));
            entry.write().data.apply(&events(&["a"])[0], &[true]);
            let (answered, answer) = std::sync::mpsc::channel();
            let reader = {
                let entry = entry.clone();
                std::thread::spawn(move || {
                    let value = read(&entry.read_for_answer().data.table);
                    answered.send(value).unwrap();
                })
            };
            let wait = std::time::Duration::from_millis(50);
            for group in FileGroup::ALL {
                assert!(answer.recv_timeout(wait).is_err(), "an answer reading {needs:?} left before {group:?} passed");
                verification.pass(group);
                if group == needs {
                    break;
                }
            }
            answer.recv().expect("the answer leaves once its groups passed");
            reader.join().unwrap();
            assert_eq!(entry.read_without_pending().data.table.groups_read(), needs);
        }
        // A later group's failure does not hold an answer whose groups passed; one that read
        // the failed group gets none.
        let verification = Verification::running();
        let entry = ProjectEntry::loaded(ProjectState::for_test("p"), verification.clone());
        entry.write().data.apply(&events(&["a"])[0], &[true]);
        verification.pass(FileGroup::Scanned);
        verification.finish(Err("segments/9.col is corrupt".into()));
        assert_eq!(entry.read_for_answer().data.table.len(), 1);
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            entry.read_for_answer().data.table.row_props(0).count()
        }));
        assert!(read.is_err(), "no answer from a group that failed its check");
    }

    #[test]
    fn reads_of_a_loaded_project_wait_for_its_files_check_and_writes_do_not() {
        let verification = Verification::running();
        let entry = Arc::new(ProjectEntry::loaded(ProjectState::for_test("p"), verification.clone()));
        let (done, read) = std::sync::mpsc::channel();
        let reader = {
            let entry = entry.clone();
            std::thread::spawn(move || done.send(entry.read().data.table.len()).unwrap())
        };
        // Ingestion's reads and the writer go on meanwhile.
        assert_eq!(entry.read_without_pending().data.table.len(), 0);
        entry.write().data.apply(&events(&["a"])[0], &[true]);
        assert!(read.recv_timeout(std::time::Duration::from_millis(50)).is_err(), "a read went ahead of the check");
        verification.finish(Ok(()));
        assert_eq!(read.recv().unwrap(), 1, "the read sees the write made meanwhile");
        reader.join().unwrap();
        assert_eq!(entry.read().data.table.len(), 1);
        assert_eq!(verification.outcome(), Ok(()));
    }

    #[test]
    fn a_failed_check_fails_every_read_of_the_project() {
        let verification = Verification::running();
        let entry = ProjectEntry::loaded(ProjectState::for_test("p"), verification.clone());
        verification.finish(Err("segments/7.col is corrupt".into()));
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| entry.read().data.table.len()));
        let message = *read.unwrap_err().downcast::<String>().unwrap();
        assert!(message.contains("segments/7.col is corrupt"), "{message}");
        assert_eq!(verification.outcome(), Err("segments/7.col is corrupt".into()));
        // A project made after the start has nothing to wait for.
        assert_eq!(ProjectEntry::new(ProjectState::for_test("q")).read().data.table.len(), 0);
    }
}
