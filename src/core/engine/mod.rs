//! The engine: projects and their in-memory state, backed by a `Storage`.
//!
//! Meta objects are read from storage at start; the event log is replayed into one
//! `ProjectState` per project. Reads take a project's read lock; the writer applies durable
//! records under its write lock, or queues them for the next reader when a query holds it
//! (`entry`).

pub mod anomalies;
pub mod attribution;
pub mod checkpoint;
pub mod cohorts;
pub mod compaction;
pub mod dashboard;
pub mod entry;
pub mod experiments;
pub mod expiry;
pub mod forecast;
pub mod framework;
pub mod funnels;
pub mod goals;
pub mod holdouts;
pub mod ingest;
pub mod keys;
pub mod live;
pub mod meta;
pub mod metrics;
pub mod readout_cache;
pub mod retention;
pub mod revenue;
pub mod users;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use parking_lot::{Mutex, RwLock};
use serde::{Serialize, de::DeserializeOwned};

use crate::core::auth::ApiKey;
use crate::core::catalog::{validate_event_type, validate_name, validate_slug, validate_timezone};
use crate::core::cohort::Cohort;
use crate::core::experiment::definition::Experiment;
use crate::core::experiment::holdout::Holdout;
use crate::core::goal::definition::Goal;
use crate::core::ingest::{Limits, SeenIds, Writer, WriterTask};
use crate::core::metric::definition::{Metric, MetricBook};
use crate::core::metric::scan::{AggregatePushdown, MetricQuery, Series};
use crate::core::model::{Clock, EventType, Micros, Project, ProjectStats, ProjectUpdate, QuarantinedEvent};
use crate::core::store::ProjectData;
use crate::core::store::column::ColumnSpace;
use crate::core::store::deferred::yield_to_queries;
use crate::core::store::person_batch::PersonBatch;
use crate::core::store::record::{LogRecord, decode_record};
use crate::core::store::remote::{EventStats, Fetch, RemoteEvents};
use crate::core::store::segment::Manifest;
use crate::core::store::source::{AnySource, EventSource};
use crate::core::store::table::FileGroup;
use crate::error::{Error, Result, echo};
use crate::storage::Storage;
use meta::{MetaKey, MetaKind};

/// Everything known about one project: its settings, its data and its definitions.
#[derive(Debug)]
pub struct ProjectState {
    pub project: Project,
    /// Events, traits, quarantine, MANUAL values and the caches derived from them: what the
    /// analyses read.
    pub data: ProjectData,
    /// The registry of definitions (tracking plan, metrics, goals, cohorts, experiments), as
    /// of the last apply (`ProjectEntry::settings` has the latest, read without this lock).
    pub defs: Arc<Definitions>,
    /// Bumped after the writer applied records to this project (and when a metric definition
    /// changes): live queries wait on it instead of polling (`engine::live`).
    /// Shared by the state's forks (`fork`): it wakes whoever watches the project.
    pub changes: Arc<tokio::sync::watch::Sender<u64>>,
    /// Bumped at every apply to this state: two states of a project with the same version
    /// hold the same data (a fork differs from the state it forked from at its first apply).
    pub version: u64,
    /// With a remote engine: the remote generation this state was rebuilt at (see `refresh`).
    pub generation: u64,
}

/// A project's settings and definitions as last changed: definition reads and ingestion read
/// them without the state's lock, and the state takes them at its next apply
/// (`ProjectEntry::change_settings`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub project: Project,
    pub defs: Arc<Definitions>,
}

impl Settings {
    /// The definitions to change (copied first when a reader still holds them).
    pub fn defs_mut(&mut self) -> &mut Definitions {
        Arc::make_mut(&mut self.defs)
    }
}

/// A project's definitions, loaded from meta storage at start and changed by the engine's
/// create/update/delete calls; analyses receive the parts they read.
#[derive(Debug, Default, Clone)]
pub struct Definitions {
    pub event_types: BTreeMap<String, EventType>,
    pub metrics: MetricBook,
    pub goals: BTreeMap<String, Goal>,
    /// Behind an `Arc` of its own: static cohorts hold up to a million ids each, which a change
    /// of another definition (a copy of the rest, see `Settings::defs_mut`) need not copy.
    pub cohorts: Arc<BTreeMap<String, Cohort>>,
    pub experiments: BTreeMap<String, Experiment>,
    pub holdouts: BTreeMap<String, Holdout>,
}

pub use entry::{AnswerRead, PendingLimits, ProjectEntry, Verification};

impl ProjectState {
    /// A project with no data yet, its columns in files of `columns` (or in memory).
    pub(crate) fn new(project: Project, columns: Option<&Arc<ColumnSpace>>) -> Self {
        Self::with_data(project, ProjectData::in_space(columns))
    }

    /// A project `id` with default settings and no data, in memory (for tests).
    #[cfg(test)]
    pub(crate) fn for_test(id: &str) -> Self {
        let project = Project {
            id: id.into(),
            name: id.into(),
            timezone: "UTC".into(),
            enforcement: crate::core::model::Enforcement::default(),
            retention_days: 0,
            created: 0,
        };
        Self::new(project, None)
    }

    /// A project with the data given (loaded from a checkpoint).
    fn with_data(project: Project, data: ProjectData) -> Self {
        ProjectState {
            project,
            data,
            defs: Arc::default(),
            changes: Arc::new(tokio::sync::watch::Sender::new(0)),
            version: 0,
            generation: 0,
        }
    }

    /// A copy for the writer to change while queries read this one (`ProjectEntry`): see
    /// `ProjectData::fork`.
    pub fn fork(&self) -> ProjectState {
        ProjectState {
            project: self.project.clone(),
            data: self.data.fork(),
            defs: self.defs.clone(),
            changes: self.changes.clone(),
            version: self.version,
            generation: self.generation,
        }
    }
}

pub struct Engine {
    storage: Arc<dyn Storage>,
    projects: checkpoint::ProjectMap,
    writer: Mutex<Option<Writer>>,
    sender: RwLock<Option<tokio::sync::mpsc::Sender<WriterTask>>>,
    next_quarantine_id: AtomicU64,
    /// Ids of every stored event (the writer's dedupe set).
    pub(crate) seen: crate::core::ingest::SharedIds,
    /// Every project's API keys by key id (see `auth`).
    pub(crate) api_keys: RwLock<BTreeMap<String, ApiKey>>,
    /// Held by a key's creation or revocation while it is stored: the keys' map is locked
    /// only to change it after, since every call's authentication reads it on the executor.
    key_changes: Mutex<()>,
    /// Likewise for projects' creation and the projects' map, which every call reads.
    project_changes: Mutex<()>,
    /// Bumped by every revocation, so open streams re-check their key only when it moves.
    pub(crate) api_key_generation: AtomicU64,
    pub limits: Limits,
    /// What "now" is for key expiry and data retention.
    pub clock: Clock,
    /// Live metric feeds and watch streams (WatchMetric).
    pub live: crate::core::engine::live::LiveHub,
    /// Readouts of stopped experiments, reused while their inputs are unchanged.
    pub(crate) readouts: crate::core::engine::readout_cache::ReadoutCache,
    /// Where projects' event columns are kept (none: in memory).
    columns: Option<Arc<ColumnSpace>>,
    /// With a remote engine: the generation (`RemoteEvents::generation`) this node's
    /// definitions and records were loaded at (see `refresh`).
    remote_generation: AtomicU64,
    /// Event aggregates the remote engine computed (`metric_events`), for tests and telemetry.
    pushed_down: Arc<AtomicU64>,
    /// Cohorts whose members the remote engine counted for this node (`counted_cohort`).
    cohorts_counted: AtomicU64,
    /// Rebuilt project states not swapped in yet (their project was busy).
    pending: Mutex<BTreeMap<String, (u64, ProjectState)>>,
    verification: Arc<Verification>,
}

/// Checks the dedupe files of `manifest` on a thread of its own, at a lower priority than the
/// load beside it (the port waits for the load, not for this); the check it returns ends with
/// the outcome.
fn check_dedupe_in_background(
    dir: std::path::PathBuf,
    manifest: Manifest,
    started: std::time::Instant,
) -> Arc<Verification> {
    let check = Verification::running();
    let checking = check.clone();
    std::thread::spawn(move || {
        yield_to_queries();
        let outcome = manifest.verify_seen(&dir).map(|_| ()).map_err(|e| e.to_string());
        match &outcome {
            Ok(()) => tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "dedupe files verified"),
            Err(error) => tracing::error!(%error, "a dedupe file failed its check"),
        }
        checking.finish(outcome);
    });
    check
}

/// Checks the projects' column files of `manifest` on a thread of its own, once the dedupe
/// files passed theirs (`dedupe_check`, which has the disk to itself first), group after group
/// (`FileGroup`; after the first, every loaded table's rows against its people and names,
/// `EventTable::check_rows`), passing each in `verification`; then waits for what the load
/// left to build (`ProjectData::loaded`), and ends it with the outcome: a failure of any.
fn verify_in_background(
    dir: std::path::PathBuf,
    manifest: Manifest,
    projects: checkpoint::ProjectMap,
    (dedupe_check, verification): (Arc<Verification>, Arc<Verification>),
    started: std::time::Instant,
) {
    std::thread::spawn(move || {
        if let Err(error) = dedupe_check.outcome() {
            verification.finish(Err(error));
            return;
        }
        // Runs `check` on every project's data as loaded, as a query would read it.
        let each_project = |check: &dyn Fn(&str, &ProjectData) -> Result<(), String>| {
            let entries: Vec<(String, Arc<ProjectEntry>)> =
                projects.read().iter().map(|(id, entry)| (id.clone(), entry.clone())).collect();
            entries.iter().try_for_each(|(id, entry)| check(id, &entry.read_without_pending().data))
        };
        let rows = || {
            each_project(&|id, data| {
                data.table.check_rows().map_err(|e| {
                    format!(
                        "the checkpoint of project {id} is inconsistent ({e}); restore the data directory from a backup"
                    )
                })
            })
        };
        // What the load left to build after the port opened (`Deferred`): a failure is the
        // check's.
        let built = || each_project(&|_, data| data.loaded());
        // Group after group, so an answer that reads only the first waits for it alone.
        let outcome = FileGroup::ALL
            .into_iter()
            .try_fold(0, |files, group| {
                let checked = manifest.verify_project_group(&dir, group).map_err(|e| e.to_string())?;
                if group == FileGroup::Scanned {
                    rows()?;
                }
                verification.pass(group);
                tracing::debug!(
                    ?group,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "column file group verified"
                );
                Ok::<_, String>(files + checked)
            })
            .and_then(|files| built().map(|()| files));
        match &outcome {
            Ok(files) => {
                tracing::info!(files, elapsed_ms = started.elapsed().as_millis() as u64, "column files verified")
            }
            Err(error) => tracing::error!(%error, "a checkpoint file failed its check"),
        }
        verification.finish(outcome.map(|_| ()));
    });
}

/// Projects of at least this many events get their person order built right after a start.
const WARM_UP_ROWS: usize = 100_000;

/// Builds the person orders of the projects of at least `WARM_UP_ROWS` events (largest first),
/// one after another, on a thread of its own, beside the files' check: a large project's first
/// query after a restart then waits for less of it. Queries find the order built, or, for a
/// build under way, read an order of their names (or wait, for a scan of every name; see
/// `PersonOrderCache`); their answers wait for the check of what they read. It reads the state without waiting
/// for the check, holding the project's read lock as a query would, at a lower priority than
/// queries.
fn warm_up_in_background(projects: &checkpoint::ProjectMap) {
    let mut large: Vec<(usize, Arc<ProjectEntry>)> = projects
        .read()
        .values()
        .map(|entry| (entry.read_without_pending().data.table.len(), entry.clone()))
        .filter(|(rows, _)| *rows >= WARM_UP_ROWS)
        .collect();
    if large.is_empty() {
        return;
    }
    large.sort_unstable_by_key(|(rows, _)| std::cmp::Reverse(*rows));
    let entries: Vec<Arc<ProjectEntry>> = large.into_iter().map(|(_, entry)| entry).collect();
    std::thread::spawn(move || {
        yield_to_queries();
        for entry in entries {
            let state = entry.read_without_pending();
            state.data.person_order.get(&state.data.table);
        }
    });
}

/// The engine's column files under a data directory: `segments` (checkpointed, see
/// `store::segment`) and `columns` (scratch: the person order, rebuilt after each start).
fn column_spaces(dir: &std::path::Path) -> Result<Arc<ColumnSpace>> {
    let prepare =
        |what: &str, e: std::io::Error| Error::Storage(format!("cannot prepare {what} under {}: {e}", dir.display()));
    let scratch = ColumnSpace::scratch(&dir.join("columns")).map_err(|e| prepare("columns", e))?;
    ColumnSpace::durable(&dir.join("segments"), scratch).map_err(|e| prepare("segments", e))
}

/// Projects with their definitions (and, from a checkpoint, their data) and API keys, as
/// meta storage holds them: what `Engine::open` starts from and a remote engine's refresh
/// rebuilds.
fn load_definitions(
    storage: &dyn Storage,
    columns: Option<&Arc<ColumnSpace>>,
    manifest: Option<&Manifest>,
) -> Result<(BTreeMap<String, ProjectState>, BTreeMap<String, ApiKey>)> {
    let mut projects = BTreeMap::new();
    for (key, bytes) in storage.scan_meta(MetaKind::Project.prefix())? {
        let project: Project = meta::decode(&key, &bytes)?;
        // A checkpointed project is loaded, not made empty first (its new files unused).
        let state = match (columns, manifest.and_then(|m| m.projects.get(&project.id))) {
            (Some(space), Some(files)) => ProjectState::with_data(project, ProjectData::load(space, files)?),
            _ => ProjectState::new(project, columns),
        };
        projects.insert(state.project.id.clone(), state);
    }
    // Per-project objects are keyed `kind/<project>/...`; objects of unknown projects are skipped.
    fn load<T: DeserializeOwned>(
        storage: &dyn Storage,
        kind: MetaKind,
        projects: &mut BTreeMap<String, ProjectState>,
        mut add: impl FnMut(&mut ProjectState, T),
    ) -> Result<()> {
        for (key, bytes) in storage.scan_meta(kind.prefix())? {
            let object: T = meta::decode(&key, &bytes)?;
            if let Some(state) = projects.get_mut(MetaKind::project_of(&key)) {
                add(state, object);
            }
        }
        Ok(())
    }
    load(storage, MetaKind::EventType, &mut projects, |state, t: EventType| {
        Arc::make_mut(&mut state.defs).event_types.insert(t.name.clone(), t);
    })?;
    // Keys sort by version (zero-padded), so pushing in key order keeps versions in order.
    load(storage, MetaKind::Metric, &mut projects, |state, m: Metric| {
        Arc::make_mut(&mut state.defs).metrics.entry(m.key.clone()).or_default().push(m);
    })?;
    load(storage, MetaKind::Goal, &mut projects, |state, g: Goal| {
        Arc::make_mut(&mut state.defs).goals.insert(g.id.clone(), g);
    })?;
    load(storage, MetaKind::Cohort, &mut projects, |state, c: Cohort| {
        Arc::make_mut(&mut Arc::make_mut(&mut state.defs).cohorts).insert(c.id.clone(), c);
    })?;
    load(storage, MetaKind::Experiment, &mut projects, |state, e: Experiment| {
        Arc::make_mut(&mut state.defs).experiments.insert(e.key.clone(), e);
    })?;
    load(storage, MetaKind::Holdout, &mut projects, |state, h: Holdout| {
        Arc::make_mut(&mut state.defs).holdouts.insert(h.key.clone(), h);
    })?;
    let mut api_keys = BTreeMap::new();
    for (key, bytes) in storage.scan_meta(MetaKind::ApiKey.prefix())? {
        let api_key: ApiKey = meta::decode(&key, &bytes)?;
        if projects.contains_key(&api_key.project) {
            api_keys.insert(api_key.id.clone(), api_key);
        }
    }
    Ok((projects, api_keys))
}

/// Puts a project state rebuilt at `generation` in place of `current`, unless that is newer
/// (another thread swapped in a later rebuild first); live feeds re-read.
fn swap_in(current: &mut ProjectState, (generation, state): (u64, ProjectState)) {
    if current.generation > generation {
        return;
    }
    current.project = state.project;
    current.defs = state.defs;
    current.data = state.data;
    current.generation = generation;
    current.version += 1;
    current.changes.send_modify(|n| *n += 1);
}

/// How many write jobs may wait for the writer before senders wait too.
const WRITE_QUEUE: usize = 64;
/// Full batches a project's queue of durable, unapplied writes holds in memory before the next
/// ones are spilled to a file (`entry`): at the default 5,000 events a batch, 80,000 events.
const PENDING_BATCHES: usize = 16;
/// Bytes of encoded writes a project's queue may spill before acks wait for the apply: at
/// about 100 bytes an event, some 10 million events, half a minute of a fast load behind one
/// query.
const SPILL_BYTES: u64 = 1 << 30;

impl Engine {
    /// Loads meta objects and replays the log, then starts the writer.
    pub fn open(storage: Arc<dyn Storage>, limits: Limits, clock: Clock) -> Result<Arc<Engine>> {
        let started = std::time::Instant::now();
        // Read before the definitions, so a change made meanwhile triggers a rebuild.
        let remote_generation = storage.remote_events().map(|remote| remote.generation()).transpose()?;
        let columns = match storage.files_dir() {
            Some(dir) => Some(column_spaces(&dir)?),
            None => None,
        };
        tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "column spaces ready");
        let manifest = match &columns {
            Some(space) => Manifest::read(space.dir())?,
            None => None,
        };
        // The dedupe files are checked in the background (`check_dedupe_in_background`):
        // only ingestion reads them, and it waits for the check (`SeenIds::checked_by`), so
        // the port opens without reading them. A checkpoint of an earlier version may convert
        // its dedupe keys while loading, so those are checked first. The projects' column
        // files are checked after them, while answers wait for those they read
        // (`Verification`); the load checks their sizes, and the compressed files as it reads
        // them.
        let dedupe_check = match (&columns, &manifest) {
            (Some(space), Some(manifest)) => {
                let check = check_dedupe_in_background(space.dir().to_owned(), manifest.clone(), started);
                if !manifest.is_current() {
                    check.outcome().map_err(Error::Storage)?;
                }
                check
            }
            _ => Verification::passed(),
        };
        if let Some(space) = &columns {
            // The manifest read may have been renamed into place by a process killed before
            // it synced the directory: made durable before what it replaced goes, files and
            // (below) the log the checkpoint covers.
            crate::storage::files::sync_dir(space.dir())?;
            // Files of a checkpoint that a crash kept from finishing go; the listed ones stay.
            let listed = manifest.as_ref().map(Manifest::files).unwrap_or_default();
            space.keep_only(listed).map_err(|e| crate::storage::files::io_error("cannot tidy", space.dir(), e))?;
        }
        let (mut projects, api_keys) = load_definitions(storage.as_ref(), columns.as_ref(), manifest.as_ref())?;
        tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "definitions and projects loaded");
        let mut seen = match (&columns, &manifest) {
            (Some(space), Some(manifest)) => manifest.load_seen(space)?,
            _ => SeenIds::in_space(columns.as_ref()),
        };
        seen.checked_by(dedupe_check.clone());
        let mut next_quarantine_id =
            projects.values().flat_map(|p| p.data.quarantine.keys()).max().map_or(0, |id| id + 1);
        let mut records = 0u64;
        let mut dedupe_checked = false;
        let after = manifest.as_ref().map(Manifest::position);
        tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "checkpoint loaded");
        storage.replay(after.as_ref(), &mut |value| {
            let record = decode_record(value)?;
            records += 1;
            let project = record.project();
            let Some(state) = projects.get_mut(project) else {
                tracing::warn!(project = %project, "log record of an unknown project skipped");
                return Ok(());
            };
            if matches!(record, LogRecord::Events { .. } | LogRecord::SeenIds { .. }) && !dedupe_checked {
                // The replay reads the dedupe runs: a bad file is the start's error, naming it.
                dedupe_check.outcome().map_err(Error::Storage)?;
                dedupe_checked = true;
            }
            if let LogRecord::Quarantined { entries, .. } = &record {
                let max = entries.iter().map(|e| e.id + 1).max().unwrap_or(0);
                next_quarantine_id = next_quarantine_id.max(max);
            }
            let keep = crate::core::ingest::replay_keep(&mut seen, &record);
            state.data.apply(&record, &keep);
            Ok(())
        })?;
        // A crash between a checkpoint's manifest and its log truncation leaves records the
        // checkpoint covers (the replay skipped them): they go now, as the truncation would
        // have removed them. Otherwise a later clean stop, with nothing new to checkpoint,
        // would leave them in the log for ever.
        if let Some(after) = &after {
            storage.truncate_log(after)?;
        }
        for state in projects.values_mut() {
            // Values of a MANUAL metric deleted just before a crash (see `delete_metric`).
            let metrics = &state.defs.metrics;
            state.data.manual.retain(|key, _| metrics.contains_key(key));
            state.data.settle_removals();
        }
        let events: usize = projects.values().map(|p| p.data.table.len()).sum();
        tracing::info!(
            projects = projects.len(),
            records,
            events,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "storage loaded"
        );
        let seen: crate::core::ingest::SharedIds = Arc::new(RwLock::new(seen));
        let checked = columns.as_ref().zip(manifest.as_ref());
        let verification = if checked.is_some() { Verification::running() } else { Verification::passed() };
        let projects: checkpoint::ProjectMap = Arc::new(RwLock::new(
            projects
                .into_iter()
                .map(|(id, state)| (id, Arc::new(ProjectEntry::loaded(state, verification.clone()))))
                .collect(),
        ));
        if let Some((space, manifest)) = checked {
            let dir = space.dir().to_owned();
            let checks = (dedupe_check, verification.clone());
            verify_in_background(dir, manifest.clone(), projects.clone(), checks, started);
        }
        warm_up_in_background(&projects);
        let checkpointer = columns.as_ref().map(|space| checkpoint::Checkpointer {
            projects: projects.clone(),
            space: space.clone(),
            storage: storage.clone(),
            seen: seen.clone(),
            // A checkpoint of an earlier version was converted while loading: written again at
            // the next chance (a clean stop at the latest), so it is converted once.
            covered: if manifest.as_ref().is_some_and(Manifest::is_current) && records == 0 {
                storage.log_position().ok()
            } else {
                None
            },
        });
        // What a project a query holds may queue before acks wait for the query (`entry`): the
        // spill goes to the scratch space beside the column files, or the system's temporary
        // directory.
        let spill_dir = match &columns {
            Some(space) => space.derived().dir().to_owned(),
            None => std::env::temp_dir(),
        };
        let pending = PendingLimits {
            items: limits.max_batch_events * PENDING_BATCHES,
            spill_dir: Some(spill_dir),
            spill_bytes: SPILL_BYTES,
        };
        let writer =
            crate::core::ingest::spawn_writer(storage.clone(), seen.clone(), WRITE_QUEUE, pending, checkpointer);
        let sender = writer.sender.clone();
        Ok(Arc::new(Engine {
            storage,
            projects,
            writer: Mutex::new(Some(writer)),
            sender: RwLock::new(Some(sender)),
            next_quarantine_id: AtomicU64::new(next_quarantine_id),
            seen,
            api_keys: RwLock::new(api_keys),
            api_key_generation: AtomicU64::new(0),
            key_changes: Mutex::new(()),
            project_changes: Mutex::new(()),
            limits,
            clock,
            live: crate::core::engine::live::LiveHub::default(),
            readouts: Default::default(),
            columns,
            remote_generation: AtomicU64::new(remote_generation.unwrap_or_default()),
            pushed_down: Arc::default(),
            cohorts_counted: AtomicU64::default(),
            pending: Mutex::new(BTreeMap::new()),
            verification,
        }))
    }

    /// The check of the files the start loaded (see `Verification`).
    pub fn verification(&self) -> Arc<Verification> {
        self.verification.clone()
    }

    /// Stops the writer after the queued writes and makes everything durable. Writes after
    /// this fail with UNAVAILABLE.
    pub fn close(&self) -> Result<()> {
        self.stop_live();
        self.sender.write().take();
        if let Some(writer) = self.writer.lock().take() {
            drop(writer.sender);
            let _ = writer.thread.join();
        }
        self.storage.sync()
    }

    /// Stores a definition under its key; durable when it returns.
    pub(crate) fn put_meta<T: Serialize>(&self, key: MetaKey<'_>, value: &T) -> Result<()> {
        self.storage.put_meta(&key.path(), &meta::encode(value)?)
    }

    /// A copy of everything stored, for backups, in the storage's raw form (meta entries,
    /// then log values a restore replays): every project's data as of one moment, written as
    /// the log records that rebuild it (`ProjectData::checkpoint`; the log alone no longer
    /// holds what checkpoints cover). Each project's records are spooled to a file under its
    /// read lock and sent from there, so a slow reader holds back nothing; while the spool is
    /// written, only that project's acks wait.
    pub fn snapshot(&self, visit: &mut crate::storage::SnapshotVisitor<'_>) -> Result<()> {
        let Some(space) = &self.columns else {
            return self.storage.snapshot(visit);
        };
        for (key, value) in self.storage.scan_meta("")? {
            visit(crate::storage::Tree::Meta, key.as_bytes(), &value)?;
        }
        let projects: Vec<(String, Arc<ProjectEntry>)> =
            self.projects.read().iter().map(|(id, entry)| (id.clone(), entry.clone())).collect();
        let spool_path = space.derived().dir().join(space.new_name("backup"));
        let mut seq = 0u64;
        let result = (|| -> Result<()> {
            for (id, entry) in &projects {
                let spool = std::fs::File::create(&spool_path)
                    .map_err(|e| crate::storage::files::io_error("cannot create", &spool_path, e))?;
                let mut spool = std::io::BufWriter::new(spool);
                entry.read().data.checkpoint(id, &mut |record| {
                    let encoded = crate::core::store::record::encode_record(&record)?;
                    use std::io::Write;
                    spool
                        .write_all(&(encoded.0.len() as u64).to_le_bytes())
                        .and_then(|()| spool.write_all(&encoded.0))
                        .map_err(|e| crate::storage::files::io_error("cannot write", &spool_path, e))
                })?;
                drop(spool);
                let mut spool = std::io::BufReader::new(
                    std::fs::File::open(&spool_path)
                        .map_err(|e| crate::storage::files::io_error("cannot open", &spool_path, e))?,
                );
                let mut length = [0u8; 8];
                loop {
                    use std::io::Read;
                    match spool.read_exact(&mut length) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                        Err(e) => return Err(crate::storage::files::io_error("cannot read", &spool_path, e)),
                    }
                    let mut value = vec![0u8; u64::from_le_bytes(length) as usize];
                    spool
                        .read_exact(&mut value)
                        .map_err(|e| crate::storage::files::io_error("cannot read", &spool_path, e))?;
                    visit(crate::storage::Tree::Log, &seq.to_be_bytes(), &value)?;
                    seq += 1;
                }
            }
            Ok(())
        })();
        let _ = std::fs::remove_file(&spool_path);
        result
    }

    /// Runs blocking work (locks a writer may hold, storage) on the blocking pool, so async
    /// calls that mix it with writes never block the executor.
    pub(crate) async fn off_executor<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&Engine) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let engine = self.clone();
        tokio::task::spawn_blocking(move || work(&engine))
            .await
            .map_err(|e| Error::Internal(format!("task failed: {e}")))?
    }

    /// Reads a project's state off the executor, for async calls: the lock may wait behind a
    /// writer that waits for a long query.
    pub(crate) async fn read_project<T: Send + 'static>(
        self: &Arc<Self>,
        entry: &Arc<ProjectEntry>,
        read: impl FnOnce(&Engine, &ProjectState) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let entry = entry.clone();
        self.off_executor(move |engine| read(engine, &entry.read())).await
    }

    /// The engine keeping events, traits and aliases when it is not this one (ClickHouse).
    pub(crate) fn remote(&self) -> Option<&dyn RemoteEvents> {
        self.storage.remote_events()
    }

    /// Runs a call of the remote engine on the blocking pool (it waits for the network).
    pub(crate) async fn on_remote<T: Send + 'static>(
        &self,
        call: impl FnOnce(&dyn RemoteEvents) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let storage = self.storage.clone();
        tokio::task::spawn_blocking(move || match storage.remote_events() {
            Some(remote) => call(remote),
            None => Err(Error::Internal("no remote engine".into())),
        })
        .await
        .map_err(|e| Error::Internal(format!("task failed: {e}")))?
    }

    /// Every event of `state`'s project, as its analyses read them.
    pub(crate) fn events<'a>(&self, state: &'a ProjectState) -> Result<AnySource<'a>> {
        self.events_of(state, &Fetch::everything())
    }

    /// The events `fetch` asks for: the project's own table (all of it: a scan prunes), or
    /// what the remote engine returns, with the MANUAL values this node keeps.
    pub(crate) fn events_of<'a>(&self, state: &'a ProjectState, fetch: &Fetch) -> Result<AnySource<'a>> {
        let Some(remote) = self.remote() else {
            return Ok(AnySource::Embedded(state.data.source()));
        };
        // Expired events are left out at once; ClickHouse removes them in the background.
        let mut fetch = fetch.clone();
        fetch.from = fetch.from.max(not_before(state));
        let mut batch = remote.person_batch(&state.project.id, &fetch)?;
        add_manual(&mut batch, state);
        Ok(AnySource::Batch(Box::new(batch)))
    }

    /// The earliest and latest time of the project's events, if any: on a remote engine, one
    /// query rather than a read of every event.
    pub(crate) fn time_span(&self, state: &ProjectState) -> Result<Option<(Micros, Micros)>> {
        match self.remote() {
            Some(remote) => {
                let fetch = Fetch { from: not_before(state), ..Fetch::everything() };
                remote.time_span(&state.project.id, &fetch)
            }
            None => Ok(AnySource::Embedded(state.data.source()).time_span()),
        }
    }

    /// What evaluating `metrics` over `query` reads, with the query's cohort (`cohort_id`)
    /// resolved into `query.members` (or, counted by a remote engine, `query.member_ids`). With
    /// a remote engine: when every event aggregate among them is computed there
    /// (`scan::pushable`) and nothing else reads events, no events at all (the aggregates go to
    /// the remote engine as they are evaluated); otherwise the events their selectors name
    /// (`evaluate::fetch`).
    pub(crate) fn metric_events<'a, 'm>(
        &self,
        state: &'a ProjectState,
        metrics: impl IntoIterator<Item = &'m Metric>,
        query: &mut MetricQuery,
    ) -> Result<AnySource<'a>> {
        query.member_ids = self.counted_cohort(state, &query.cohort_id, crate::core::model::now_micros())?;
        let source = self.metric_source(state, metrics, query)?;
        if source.pushdown().is_none() {
            query.members = match query.member_ids.take() {
                Some(members) => Some(members.on(&source)),
                None => crate::core::cohort::resolve(&source, &state.defs.cohorts, "cohort_id", &query.cohort_id)?,
            };
        }
        Ok(source)
    }

    /// With a remote engine, the members of cohort `cohort_id` counted there
    /// (`cohort::count_request`), so that a query with it reads only its own events. `None`
    /// without a remote engine, without a cohort, for an unknown one (the query says so) and
    /// for one not counted there (a static cohort, or filter values too long for a statement).
    pub(crate) fn counted_cohort(
        &self,
        state: &ProjectState,
        cohort_id: &str,
        now: Micros,
    ) -> Result<Option<Arc<crate::core::cohort::MemberIds>>> {
        let (Some(remote), Some(cohort)) = (self.remote(), state.defs.cohorts.get(cohort_id)) else {
            return Ok(None);
        };
        let Some(request) = crate::core::cohort::count_request(cohort, now, not_before(state)) else {
            return Ok(None);
        };
        let counted = remote.cohort_counts(&state.project.id, &request)?;
        self.cohorts_counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ::metrics::counter!("sextant_cohorts_counted_remotely_total").increment(1);
        Ok(Some(Arc::new(crate::core::cohort::members_from_counts(cohort, counted)?)))
    }

    /// The events a query with cohort `cohort_id` reads: `fetch(counted)`, where `counted` says
    /// that the remote engine counted the cohort's members (`counted_cohort`), so the read
    /// need not hold the events the cohort's conditions look at; the members go with it.
    pub(crate) fn events_in_cohort<'a>(
        &self,
        state: &'a ProjectState,
        cohort_id: &str,
        fetch: impl FnOnce(bool) -> Fetch,
    ) -> Result<AnySource<'a>> {
        let counted = self.counted_cohort(state, cohort_id, crate::core::model::now_micros())?;
        let mut source = self.events_of(state, &fetch(counted.is_some()))?;
        if let (Some(members), AnySource::Batch(batch)) = (counted, &mut source) {
            batch.set_counted_cohort(cohort_id, members);
        }
        Ok(source)
    }

    fn metric_source<'a, 'm>(
        &self,
        state: &'a ProjectState,
        metrics: impl IntoIterator<Item = &'m Metric>,
        query: &MetricQuery,
    ) -> Result<AnySource<'a>> {
        let book = &state.defs.metrics;
        let metrics: Vec<&Metric> = metrics.into_iter().collect();
        let reads = |m: &&Metric| crate::core::metric::evaluate::reads_events(book, m, query, 0);
        if self.remote().is_none() || metrics.iter().any(reads) {
            let cohort_read = !query.cohort_id.is_empty() && query.member_ids.is_none();
            let fetch = crate::core::metric::evaluate::fetch(book, metrics, query, cohort_read);
            return self.events_of(state, &fetch);
        }
        let mut batch = PersonBatch::default();
        add_manual(&mut batch, state);
        batch.set_pushdown(Arc::new(RemoteAggregates {
            storage: self.storage.clone(),
            project: state.project.id.clone(),
            not_before: not_before(state),
            pushed_down: self.pushed_down.clone(),
        }));
        Ok(AnySource::Batch(Box::new(batch)))
    }

    /// How many event aggregates the remote engine has computed for this node.
    pub fn pushed_down_aggregates(&self) -> u64 {
        self.pushed_down.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many cohorts the remote engine has counted the members of for this node.
    pub fn counted_cohorts(&self) -> u64 {
        self.cohorts_counted.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn delete_meta(&self, key: MetaKey<'_>) -> Result<()> {
        self.storage.delete_meta(&key.path())
    }

    /// With a remote engine, rebuilds this node's definitions, API keys and records (quarantine,
    /// MANUAL values) when the remote's generation moved since they were loaded: another node,
    /// or this one, changed them. A version check per call; without a remote engine, nothing.
    ///
    /// A project whose lock a query holds keeps its state until the lock is free, except
    /// `wait_for`, the project the caller is about to use: it waits for it, as a definition
    /// change waits for queries on the embedded engine. The rebuilt states wait in `pending`
    /// meanwhile, so a busy project never makes other calls load everything again.
    pub(crate) fn refresh(&self, wait_for: Option<&str>) -> Result<()> {
        if self.remote().is_none() {
            return Ok(());
        }
        // It waits for the network: told to the runtime when on one of its workers.
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                tokio::task::block_in_place(|| self.refresh_now(wait_for))
            }
            _ => self.refresh_now(wait_for),
        }
    }

    fn refresh_now(&self, wait_for: Option<&str>) -> Result<()> {
        let Some(remote) = self.remote() else {
            return Ok(());
        };
        let generation = remote.generation()?;
        let mut pending = self.pending.lock();
        if self.remote_generation.load(std::sync::atomic::Ordering::Acquire) == generation && pending.is_empty() {
            return Ok(());
        }
        if self.remote_generation.load(std::sync::atomic::Ordering::Acquire) != generation {
            let (mut fresh, api_keys) = load_definitions(self.storage.as_ref(), None, None)?;
            self.storage.replay(None, &mut |value| {
                let record = decode_record(value)?;
                if let Some(state) = fresh.get_mut(record.project()) {
                    state.data.apply(&record, &[]);
                }
                Ok(())
            })?;
            for state in fresh.values_mut() {
                let metrics = &state.defs.metrics;
                state.data.manual.retain(|key, _| metrics.contains_key(key));
            }
            *pending = fresh.into_iter().map(|(id, state)| (id, (generation, state))).collect();
            *self.api_keys.write() = api_keys;
            self.api_key_generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.remote_generation.store(generation, std::sync::atomic::Ordering::Release);
            tracing::debug!(generation, "definitions reloaded from the remote engine");
        }
        let ids: Vec<String> = pending.keys().cloned().collect();
        let mut waited = None;
        for id in ids {
            let entry = self.projects.read().get(&id).cloned();
            let Some(entry) = entry else {
                let (generation, mut state) = pending.remove(&id).expect("listed");
                state.generation = generation;
                self.projects.write().entry(id).or_insert_with(|| Arc::new(ProjectEntry::new(state)));
                continue;
            };
            if wait_for == Some(id.as_str()) {
                waited = Some((entry, pending.remove(&id).expect("listed")));
                continue;
            }
            if let Some(mut current) = entry.try_write() {
                let rebuilt = pending.remove(&id).expect("listed");
                entry.replace_state(&mut current, |current| swap_in(current, rebuilt));
            }
        }
        // The caller's project last, without holding the others back while its lock is busy.
        drop(pending);
        if let Some((entry, rebuilt)) = waited {
            entry.replace_state(&mut entry.write(), |current| swap_in(current, rebuilt));
        }
        Ok(())
    }

    pub fn project(&self, id: &str) -> Result<Arc<ProjectEntry>> {
        validate_slug("project", id)?;
        self.refresh(Some(id))?;
        self.projects
            .read()
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("project {id} not found", id = echo(id))))
    }

    // ---- projects ----

    pub fn create_project(&self, mut project: Project) -> Result<Project> {
        validate_slug("project.id", &project.id)?;
        project.timezone = validate_timezone("project.timezone", &project.timezone)?;
        crate::core::bounds::check_name("project.name", &project.name)?;
        if project.name.is_empty() {
            project.name = project.id.clone();
        }
        project.created = self.clock.now();
        let _creating = self.project_changes.lock();
        if self.projects.read().contains_key(&project.id) {
            return Err(Error::AlreadyExists(format!("project {} already exists", echo(&project.id))));
        }
        self.put_meta(MetaKey::Project(&project.id), &project)?;
        tracing::info!(project = %project.id, "project created");
        // An entry a remote engine's refresh made meanwhile (from the meta just stored) stays:
        // calls may hold it already.
        self.projects
            .write()
            .entry(project.id.clone())
            .or_insert_with(|| Arc::new(ProjectEntry::new(ProjectState::new(project.clone(), self.columns.as_ref()))));
        Ok(project)
    }

    pub fn get_project(&self, id: &str) -> Result<Project> {
        Ok(self.project(id)?.settings().project.clone())
    }

    pub fn list_projects(&self) -> Result<Vec<Project>> {
        self.refresh(None)?;
        // Entries first: no project lock is waited for under the map's lock.
        let entries: Vec<Arc<ProjectEntry>> = self.projects.read().values().cloned().collect();
        Ok(entries.iter().map(|p| p.settings().project.clone()).collect())
    }

    pub fn update_project(&self, id: &str, update: ProjectUpdate) -> Result<Project> {
        let entry = self.project(id)?;
        entry.change_settings(|state| {
            let mut project = state.project.clone();
            if let Some(name) = update.name {
                crate::core::bounds::check_name("update.name", &name)?;
                project.name = name;
            }
            if let Some(zone) = update.timezone {
                project.timezone = validate_timezone("update.timezone", &zone)?;
            }
            if let Some(enforcement) = update.enforcement {
                project.enforcement = enforcement;
            }
            if let Some(days) = update.retention_days {
                project.retention_days = days;
            }
            self.put_meta(MetaKey::Project(id), &project)?;
            state.project = project.clone();
            Ok(project)
        })
    }

    pub fn project_stats(&self, id: &str) -> Result<ProjectStats> {
        let entry = self.project(id)?;
        let state = entry.read();
        // On a remote engine, counted there rather than read.
        let stats = match self.remote() {
            Some(remote) => remote.event_stats(id, &Fetch { from: not_before(&state), ..Fetch::everything() })?,
            None => {
                let source = self.events(&state)?;
                let counts = source.name_counts();
                let mut by_name: Vec<(String, u64)> = counts
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| **n > 0)
                    .map(|(i, n)| (source.names().resolve(i as u32).to_owned(), *n))
                    .collect();
                by_name.sort();
                EventStats { by_name, span: source.time_span(), users: source.user_count() }
            }
        };
        Ok(ProjectStats {
            events: stats.by_name.iter().map(|(_, n)| n).sum(),
            events_by_name: stats.by_name,
            users: stats.users,
            first_event: stats.span.map(|(first, _)| first),
            last_event: stats.span.map(|(_, last)| last),
            bytes_on_disk: self.bytes_on_disk()?,
            quarantined: state.data.quarantine.len() as u64,
        })
    }

    // ---- tracking plan ----

    pub fn upsert_event_type(&self, project: &str, mut event_type: EventType) -> Result<EventType> {
        let entry = self.project(project)?;
        validate_event_type(&event_type)?;
        event_type.updated = self.clock.now();
        entry.change_settings(|state| {
            self.put_meta(MetaKey::EventType { project, name: &event_type.name }, &event_type)?;
            state.defs_mut().event_types.insert(event_type.name.clone(), event_type.clone());
            Ok(event_type)
        })
    }

    pub fn get_event_type(&self, project: &str, name: &str) -> Result<EventType> {
        validate_name("name", name)?;
        self.project(project)?
            .settings()
            .defs
            .event_types
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("event type {name} not found", name = echo(name))))
    }

    pub fn list_event_types(&self, project: &str) -> Result<Vec<EventType>> {
        Ok(self.project(project)?.settings().defs.event_types.values().cloned().collect())
    }

    pub fn delete_event_type(&self, project: &str, name: &str) -> Result<()> {
        validate_name("name", name)?;
        let entry = self.project(project)?;
        entry.change_settings(|state| {
            if !state.defs.event_types.contains_key(name) {
                return Err(Error::NotFound(format!("event type {name} not found", name = echo(name))));
            }
            self.delete_meta(MetaKey::EventType { project, name })?;
            state.defs_mut().event_types.remove(name);
            Ok(())
        })
    }

    pub fn list_quarantined(&self, project: &str) -> Result<Vec<QuarantinedEvent>> {
        Ok(self.project(project)?.read().data.quarantine.values().cloned().collect())
    }
}

/// Where a project's events start: its retention cutoff, if any. The remote engine removes
/// older events in the background; reads leave them out meanwhile.
pub(crate) fn not_before(state: &ProjectState) -> Micros {
    state.data.expired_before.unwrap_or(Micros::MIN)
}

/// The MANUAL values this node keeps, into a batch the remote engine returned.
fn add_manual(batch: &mut PersonBatch, state: &ProjectState) {
    for (key, values) in &state.data.manual {
        batch.add_manual(key, values.clone());
    }
}

/// A project's event aggregates computed by the remote engine (`metric_events`).
struct RemoteAggregates {
    storage: Arc<dyn Storage>,
    project: String,
    not_before: Micros,
    pushed_down: Arc<AtomicU64>,
}

impl AggregatePushdown for RemoteAggregates {
    fn event_aggregate(&self, metric: &Metric, query: &MetricQuery) -> Result<Vec<Series>> {
        let remote = self.storage.remote_events().ok_or_else(|| Error::Internal("no remote engine".into()))?;
        let request = crate::core::metric::scan::aggregate_request(metric, query, self.not_before)?;
        let aggregated = remote.aggregate(&self.project, &request)?;
        self.pushed_down.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ::metrics::counter!("sextant_aggregates_pushed_down_total").increment(1);
        crate::core::metric::scan::aggregate_partials(metric, query, &request, aggregated)
    }
}
