//! Checkpoints: a project's data as files, so a restart maps them instead of replaying the log.
//!
//! A checkpoint lists, per project, its column files (each with its length and checksums of
//! its values by 4 MiB block, so a checkpoint hashes only new blocks) and one state file
//! (everything small: interner lookups are rebuilt from their columns after the port opens,
//! see `deferred`; the rest is serialized) with the traits in a file of their own (listed again while unchanged) and the
//! rows' cold values after their last compressed block in another (`cold_rows`), and the
//! dedupe set's runs of sorted keys, with the log position it covers. Columns are
//! append-only, so a file a checkpoint lists is never changed in its listed prefix afterwards: later appends go past it, and compaction writes new files. The
//! manifest is written last (temporary file, fsync, rename, fsync of the directory), so a
//! crash leaves either the old checkpoint or the new one, each with all its files.
//!
//! At start the engine maps the files the manifest lists, checks their sizes (a file cut short
//! stops the start) and replays only the log records after the checkpoint's position. Their
//! checksums are checked in the background, and answers wait for the files they read
//! (`engine::Verification`): a bad file ends the process, naming it, rather than answer wrong.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use bytemuck::Pod;
use serde::{Deserialize, Serialize};

use crate::core::model::{ManualValue, Micros, QuarantinedEvent};
use crate::core::store::ProjectData;
use crate::core::store::cold_rows::ColdRows;
use crate::core::store::column::{CHECKSUM_BLOCK, Column, ColumnSpace, block_checksums, checksum};
use crate::core::store::deferred::{Deferred, yield_to_queries};
use crate::core::store::table::{EventTable, FileGroup, Interner, MAX_PROPERTIES, PROP_BLOCK, Prop, WideProp};
use crate::core::store::times::Times;
use crate::core::store::traits::Traits;
use crate::error::{Error, Result};
use crate::storage::files::{io_error, replace_durably};

pub const MANIFEST: &str = "MANIFEST";
/// Version 5 keeps properties encoded, each in as few bytes as its key and value allow
/// (`props`: 1 to 14 bytes; the `props` column holds bytes, the offsets in `prop_end` count
/// them).
/// Version 4 kept properties in 12 bytes (`Prop`; converted when loaded, as the column's value
/// size tells), their ends as u16 offsets in blocks of 64 rows, and packed times in 6 bytes
/// (`Times`: the `time`, `time.bases`, `time.far_rows` and `time.far_times` columns) and big
/// dedupe runs' keys in 10 bytes, as version 5 does; version 3 kept 16-byte properties, u32
/// offsets in blocks of 4,096 rows, plain 8-byte times and 12-byte keys, converted when
/// loaded (as the columns' value sizes tell, and for times the side columns' absence).
/// Version 3 moved each row's event id, anonymous person and previous row into compressed
/// blocks (`cold.blocks`, `cold.block_ends` and the `cold_tail` file) and the dedupe runs to
/// 96-bit keys; version 2 kept those values in plain columns (`id_end`, `id_bytes`,
/// `anonymous`, `previous_row`) and runs of whole keys, converted when loaded. Version 1 kept
/// the dedupe keys in one sorted column (`seen`). Every earlier version still loads.
/// Version 6 lists the rows DeleteUser and retention removed since the last compaction in a
/// file of their own (`removed`, see `tombstones`): the rows themselves stay in the columns
/// until then, so a version that cannot read it must not load the checkpoint.
const MANIFEST_VERSION: u32 = 6;

/// What a checkpoint holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    /// The log database (`Storage::log_position`) and the first sequence number after the
    /// checkpoint: records from there on are replayed. In another database (a compaction
    /// switched after the checkpoint), every record is after it.
    pub log_db: String,
    pub log_seq: u64,
    pub projects: BTreeMap<String, ProjectFiles>,
    /// The dedupe set's runs, oldest first (version 2).
    #[serde(default)]
    pub seen_runs: Vec<SeenRunRef>,
    /// Version 1: the dedupe keys in one sorted column, and its range table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen: Option<ColumnRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_starts: Option<ColumnRef>,
}

/// One run of the dedupe set (`ingest::ids`): its sorted keys and their index.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeenRunRef {
    pub keys: ColumnRef,
    pub index: ColumnRef,
}

/// A column file, how many values of it the checkpoint covers, and their checksums.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ColumnRef {
    pub file: String,
    pub len: u64,
    /// The values' bytes (`len` times the value size): what the checksums cover.
    pub bytes: u64,
    /// Per `column::CHECKSUM_BLOCK` of those bytes.
    pub checksums: Vec<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProjectFiles {
    pub columns: BTreeMap<String, ColumnRef>,
    pub state: String,
    pub state_checksum: u64,
    /// The traits, in a file of their own that a checkpoint rewrites only when they changed
    /// (none: inside `state`, where earlier checkpoints kept them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traits: Option<String>,
    #[serde(default)]
    pub traits_checksum: u64,
    /// The rows' cold values after their last compressed block (version 3; see `ColdRows`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_tail: Option<String>,
    #[serde(default)]
    pub cold_tail_checksum: u64,
    /// The rows removed since the last compaction (`Tombstones`; version 6), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<String>,
    #[serde(default)]
    pub removed_checksum: u64,
}

impl ProjectFiles {
    /// The compressed files (state, traits) with their checksums.
    fn compressed(&self) -> impl Iterator<Item = (&String, u64)> {
        std::iter::once((&self.state, self.state_checksum))
            .chain(self.traits.iter().map(|t| (t, self.traits_checksum)))
            .chain(self.cold_tail.iter().map(|t| (t, self.cold_tail_checksum)))
            .chain(self.removed.iter().map(|t| (t, self.removed_checksum)))
    }
}

impl ProjectFiles {
    /// Every file these are.
    pub fn files(&self) -> impl Iterator<Item = String> + '_ {
        self.compressed().map(|(file, _)| file.clone()).chain(self.columns.values().map(|c| c.file.clone()))
    }
}

impl Manifest {
    /// Every file the manifest lists.
    pub fn files(&self) -> HashSet<String> {
        let mut files: HashSet<String> = self.seen_columns().map(|c| c.file.clone()).collect();
        files.extend(self.projects.values().flat_map(ProjectFiles::files));
        files
    }

    /// The log position this checkpoint covers: records from there on are replayed.
    pub fn position(&self) -> crate::storage::LogPosition {
        crate::storage::LogPosition { db: self.log_db.clone(), seq: self.log_seq }
    }

    /// The dedupe set this checkpoint saved.
    pub fn load_seen(&self, space: &Arc<ColumnSpace>) -> Result<crate::core::ingest::SeenIds> {
        match &self.seen {
            Some(sorted) => crate::core::ingest::SeenIds::load_sorted(space, sorted),
            None => crate::core::ingest::SeenIds::load(space, &self.seen_runs),
        }
    }

    pub fn read(dir: &Path) -> Result<Option<Manifest>> {
        let path = dir.join(MANIFEST);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(io_error("cannot read", &path, err)),
        };
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Storage(format!("{} is not a valid manifest: {e}", path.display())))?;
        if !(1..=MANIFEST_VERSION).contains(&manifest.version) {
            return Err(Error::Storage(format!("{} has unknown version {}", path.display(), manifest.version)));
        }
        Ok(Some(manifest))
    }

    /// Whether this is the version `write` writes (an earlier one loads converted).
    pub fn is_current(&self) -> bool {
        self.version == MANIFEST_VERSION
    }

    /// The dedupe set's column files.
    fn seen_columns(&self) -> impl Iterator<Item = &ColumnRef> {
        let runs = self.seen_runs.iter().flat_map(|run| [&run.keys, &run.index]);
        runs.chain(self.seen.iter()).chain(self.seen_starts.iter())
    }

    /// A manifest of this version (what `write` writes).
    pub fn new(
        log_db: String,
        log_seq: u64,
        projects: BTreeMap<String, ProjectFiles>,
        seen_runs: Vec<SeenRunRef>,
    ) -> Manifest {
        Manifest { version: MANIFEST_VERSION, log_db, log_seq, projects, seen_runs, seen: None, seen_starts: None }
    }

    /// Writes the manifest atomically and durably.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| Error::Internal(e.to_string()))?;
        replace_durably(dir, MANIFEST, &bytes)
    }
}

/// Syncs a column and describes it for the manifest.
pub fn save_column<T: Pod>(column: &Column<T>, space: &ColumnSpace) -> Result<ColumnRef> {
    let file = column.file_name().ok_or_else(|| Error::Internal("checkpoint of a column in memory".into()))?;
    column.sync().map_err(|e| io_error("cannot sync", &space.dir().join(file), e))?;
    Ok(ColumnRef {
        file: file.to_owned(),
        len: column.len() as u64,
        bytes: std::mem::size_of_val(column.as_slice()) as u64,
        checksums: column.checksums(),
    })
}

/// Opens a listed column (`Manifest::verify` checked its checksums).
pub fn open_column<T: Pod>(space: &Arc<ColumnSpace>, listed: &ColumnRef) -> Result<Column<T>> {
    let path = space.dir().join(&listed.file);
    let column =
        space.open::<T>(&listed.file, listed.len as usize).map_err(|e| io_error("cannot open column", &path, e))?;
    if std::mem::size_of_val(column.as_slice()) as u64 != listed.bytes {
        return Err(Error::Storage(format!("{} does not hold the values the manifest lists", path.display())));
    }
    column.assume_checksums(&listed.checksums);
    Ok(column)
}

impl Manifest {
    /// Checks every listed file against its checksums (columns read through read-only maps,
    /// on all cores); the first bad one is the error, naming it. Returns how many files were
    /// checked.
    pub fn verify(&self, dir: &Path) -> Result<usize> {
        for (file, listed) in self.projects.values().flat_map(|p| p.compressed()) {
            let path = dir.join(file);
            let bytes = std::fs::read(&path).map_err(|e| io_error("cannot read", &path, e))?;
            if checksum(&bytes) != listed {
                return Err(corrupt(dir, file, "its checksum differs from the manifest's"));
            }
        }
        Ok(self.projects.len() + self.verify_seen(dir)? + self.verify_projects(dir)?)
    }

    /// `verify` for the dedupe runs' files only: what a start checks before it replays the
    /// log or acks a write (the projects' own compressed files are checked as they load).
    pub fn verify_seen(&self, dir: &Path) -> Result<usize> {
        verify_columns(dir, self.seen_columns().collect())
    }

    /// `verify` for the projects' column files only.
    pub fn verify_projects(&self, dir: &Path) -> Result<usize> {
        verify_columns(dir, self.projects.values().flat_map(|p| p.columns.values()).collect())
    }

    /// `verify` for the projects' column files of one group: what a start checks in the
    /// background, group after group, while answers wait for the groups they read
    /// (`engine::Verification`).
    pub fn verify_project_group(&self, dir: &Path, group: FileGroup) -> Result<usize> {
        let columns = self.projects.values().flat_map(|p| p.columns.iter());
        verify_columns(dir, columns.filter(|(name, _)| FileGroup::of_column(name) == group).map(|(_, c)| c).collect())
    }
}

fn corrupt(dir: &Path, file: &str, why: &str) -> Error {
    Error::Storage(format!("{} is corrupt ({why}); restore the data directory from a backup", dir.join(file).display()))
}

/// Checksum blocks one task of `verify_columns` reads: a large file is split among the cores,
/// so checking a group of a few large files takes no longer than checking many small ones.
const VERIFY_SPAN: usize = 16;

/// Checks column files against their block checksums on all cores; the first bad one is the
/// error, naming it. Returns how many were checked.
fn verify_columns(dir: &Path, columns: Vec<&ColumnRef>) -> Result<usize> {
    verify_columns_in_spans(dir, columns, VERIFY_SPAN)
}

/// A read-only mapping of a listed column's file (none when it lists no bytes). It belongs to no
/// `Column`: dropping it removes no file.
fn map_listed(dir: &Path, column: &ColumnRef) -> Result<Option<memmap2::Mmap>> {
    let path = dir.join(&column.file);
    let file = std::fs::File::open(&path).map_err(|e| io_error("cannot open", &path, e))?;
    let size = file.metadata().map_err(|e| io_error("cannot stat", &path, e))?.len();
    if size < column.bytes {
        return Err(corrupt(dir, &column.file, "it is shorter than the manifest lists"));
    }
    if column.bytes == 0 {
        return Ok(None);
    }
    // SAFETY: a read-only map of a file no process changes in the listed prefix (columns only
    // append past it).
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io_error("cannot map", &path, e))?;
    Ok(Some(map))
}

/// `verify_columns`, each task reading `span` checksum blocks.
fn verify_columns_in_spans(dir: &Path, columns: Vec<&ColumnRef>, span: usize) -> Result<usize> {
    let mut maps = Vec::with_capacity(columns.len());
    for column in &columns {
        if column.checksums.len() != (column.bytes as usize).div_ceil(CHECKSUM_BLOCK) {
            return Err(corrupt(dir, &column.file, "its checksum differs from the manifest's"));
        }
        maps.push(map_listed(dir, column)?);
    }
    // Tasks: (column, first block), in the columns' order.
    let tasks: Vec<(usize, usize)> = columns
        .iter()
        .enumerate()
        .flat_map(|(i, column)| (0..column.checksums.len()).step_by(span).map(move |block| (i, block)))
        .collect();
    let check = |&(i, first): &(usize, usize)| -> Result<()> {
        let (column, map) = (columns[i], maps[i].as_deref().unwrap_or_default());
        let listed = &column.checksums[first..(first + span).min(column.checksums.len())];
        let start = first * CHECKSUM_BLOCK;
        let end = (start + listed.len() * CHECKSUM_BLOCK).min(column.bytes as usize);
        if block_checksums(&map[start..end]) != listed {
            return Err(corrupt(dir, &column.file, "its checksum differs from the manifest's"));
        }
        Ok(())
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(tasks.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(task) = tasks.get(i) else { return Ok::<(), Error>(()) };
                        check(task)?;
                    }
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
    })?;
    Ok(columns.len())
}

/// The small part of a project's data, serialized whole at each checkpoint: borrowed when
/// saved (no copy of the per-person arrays), owned when loaded.
#[derive(Serialize, Deserialize)]
struct ProjectState<'a> {
    canonical: Cow<'a, [u32]>,
    is_user: Cow<'a, [bool]>,
    aliases: Vec<(u32, Vec<u32>)>,
    last_row: Cow<'a, [u32]>,
    name_counts: Cow<'a, [u64]>,
    prop_block_start: Cow<'a, [u64]>,
    min_time: Option<Micros>,
    max_time: Option<Micros>,
    generation: u64,
    traits: crate::core::store::traits::TraitsState,
    quarantine: Vec<QuarantinedEvent>,
    manual: Vec<(String, Vec<ManualValue>)>,
    erased_keys: Cow<'a, [u128]>,
    needs_compaction: bool,
}

/// Writes `value` (bincode) through lz4 into a new file `<n>.<extension>` of `space`, synced;
/// returns its name and checksum. Streamed: no whole copy of the value in memory.
fn write_compressed<T: Serialize>(space: &ColumnSpace, extension: &str, value: &T) -> Result<(String, u64)> {
    let name = space.new_name(extension);
    let path = space.dir().join(&name);
    let failed = |e: std::io::Error| io_error("cannot write", &path, e);
    let file = std::fs::File::create(&path).map_err(|e| io_error("cannot create", &path, e))?;
    let hashing = Hashing { inner: std::io::BufWriter::new(file), hasher: twox_hash::XxHash3_64::default() };
    let mut encoder = lz4_flex::frame::FrameEncoder::new(hashing);
    bincode::serialize_into(&mut encoder, value).map_err(|e| match *e {
        bincode::ErrorKind::Io(e) => failed(e),
        e => Error::Internal(format!("checkpoint {extension}: {e}")),
    })?;
    let mut hashing = encoder.finish().map_err(|e| failed(e.into()))?;
    hashing.flush().map_err(failed)?;
    let checksum = std::hash::Hasher::finish(&hashing.hasher);
    let file = hashing.inner.into_inner().map_err(|e| failed(e.into_error()))?;
    file.sync_all().map_err(failed)?;
    Ok((name, checksum))
}

/// Reads a file `write_compressed` wrote, checking its checksum first.
fn read_compressed<T: serde::de::DeserializeOwned>(space: &ColumnSpace, name: &str, listed: u64) -> Result<T> {
    let path = space.dir().join(name);
    let bytes = std::fs::read(&path).map_err(|e| io_error("cannot read", &path, e))?;
    if checksum(&bytes) != listed {
        return Err(Error::Storage(format!(
            "{} is corrupt: its checksum differs from the manifest's; restore the data directory from a backup",
            path.display()
        )));
    }
    // Buffered: bincode reads value by value, and each frame read has a cost.
    let decoder = std::io::BufReader::with_capacity(1 << 16, lz4_flex::frame::FrameDecoder::new(&bytes[..]));
    bincode::deserialize_from(decoder).map_err(|e| Error::Storage(format!("{} cannot be read: {e}", path.display())))
}

/// Writes what passes through to `inner`, hashing it.
struct Hashing<W> {
    inner: W,
    hasher: twox_hash::XxHash3_64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(bytes)?;
        std::hash::Hasher::write(&mut self.hasher, &bytes[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Applies `$visit!(name, field)` to every row column and interner column of a table, so that
/// saving and loading list the same columns.
macro_rules! table_columns {
    ($table:expr, $visit:ident) => {
        $visit!("person", $table.person);
        $visit!("time", $table.time.cells);
        $visit!("time.bases", $table.time.bases);
        $visit!("time.far_rows", $table.time.far_rows);
        $visit!("time.far_times", $table.time.far_times);
        $visit!("name", $table.name);
        $visit!("prop_end", $table.prop_end);
        $visit!("props", $table.props);
        $visit!("cold.blocks", $table.cold.blocks);
        $visit!("cold.block_ends", $table.cold.block_ends);
        $visit!("names.bytes", $table.names.bytes);
        $visit!("names.ends", $table.names.ends);
        $visit!("keys.bytes", $table.keys.bytes);
        $visit!("keys.ends", $table.keys.ends);
        $visit!("strings.bytes", $table.strings.bytes);
        $visit!("strings.ends", $table.strings.ends);
        $visit!("people.bytes", $table.people.bytes);
        $visit!("people.ends", $table.people.ends);
    };
}

/// The property ends of versions 3 (u32 offsets from the start of their block of 4,096 rows)
/// and 4 (u16 offsets in blocks of `PROP_BLOCK` rows), counted in properties.
enum OldPropEnds {
    Wide(Column<u32>),
    Narrow(Column<u16>),
}

/// Writes the properties of versions up to 4 (whole properties, read as `Prop`s by `read`;
/// ends counted in properties, the blocks' starts in `table.prop_block_start`) encoded
/// (`props`) into new columns of `table`.
fn encode_props<P>(
    table: &mut EventTable,
    space: &Arc<ColumnSpace>,
    props: &[P],
    read: impl Fn(&P) -> Option<Prop>,
    ends: &OldPropEnds,
) -> std::result::Result<(), String> {
    let (rows, block) = match ends {
        OldPropEnds::Wide(ends) => (ends.len(), 4096),
        OldPropEnds::Narrow(ends) => (ends.len(), PROP_BLOCK),
    };
    let starts = std::mem::take(&mut table.prop_block_start);
    if starts.len() != rows.div_ceil(block) {
        return Err(format!("{} blocks of offsets for {rows} rows", starts.len()));
    }
    let end_of = |row: usize| {
        starts[row / block]
            + match ends {
                OldPropEnds::Wide(ends) => u64::from(ends[row]),
                OldPropEnds::Narrow(ends) => u64::from(ends[row]),
            }
    };
    table.props = Column::in_space(Some(space));
    table.prop_end = Column::in_space(Some(space));
    table.prop_end.reserve(rows);
    let mut start = 0u64;
    for row in 0..rows {
        let end = end_of(row);
        let Some(row_props) = props.get(start as usize..end as usize) else {
            return Err(format!("row {row}'s properties end at {end}, outside {start}..={}", props.len()));
        };
        let row_start = table.props.len();
        for prop in row_props {
            let prop = read(prop).ok_or("a property has a key past the key space or a value of no known type")?;
            table.props.extend_from_slice(crate::core::store::props::encode(prop.key(), prop.value()).as_bytes());
        }
        if table.props.len() - row_start > usize::from(u16::MAX) {
            return Err(format!(
                "row {row} holds {} properties (this version keeps {MAX_PROPERTIES} a row)",
                row_props.len()
            ));
        }
        table.push_prop_end();
        start = end;
    }
    Ok(())
}

impl ProjectData {
    /// Writes this project's checkpoint files (its columns synced in place, a new state file)
    /// and describes them. The caller holds the project so nothing changes meanwhile.
    pub fn save(&self, space: &Arc<ColumnSpace>) -> Result<ProjectFiles> {
        let table = &self.table;
        let mut columns = BTreeMap::new();
        macro_rules! save {
            ($name:expr, $column:expr) => {
                columns.insert($name.to_owned(), save_column(&$column, space)?);
            };
        }
        table_columns!(table, save);
        let mut aliases: Vec<(u32, Vec<u32>)> = table.aliases.iter().map(|(&u, a)| (u, a.clone())).collect();
        aliases.sort_unstable();
        let mut manual: Vec<(String, Vec<ManualValue>)> =
            self.manual.iter().map(|(key, values)| (key.clone(), values.values().cloned().collect())).collect();
        manual.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let state = ProjectState {
            canonical: Cow::Borrowed(&table.canonical),
            is_user: Cow::Borrowed(&table.is_user),
            aliases,
            last_row: Cow::Borrowed(&table.last_row),
            name_counts: Cow::Borrowed(&table.name_counts),
            prop_block_start: Cow::Borrowed(&table.prop_block_start),
            min_time: table.min_time,
            max_time: table.max_time,
            generation: table.generation,
            // In their own file (below).
            traits: crate::core::store::traits::Traits::empty_state(),
            quarantine: self.quarantine.values().cloned().collect(),
            manual,
            erased_keys: Cow::Borrowed(&self.erased_keys),
            needs_compaction: self.needs_compaction.load(std::sync::atomic::Ordering::Relaxed),
        };
        let (state, state_checksum) = write_compressed(space, "state", &state)?;
        // The traits file the last checkpoint wrote is listed again while the traits have not
        // changed since: a load of users is written once, not at every checkpoint.
        let mut saved = self.traits_file.lock();
        let (traits, traits_checksum) = match &*saved {
            Some((changes, file, checksum)) if *changes == self.traits.changes() => (file.clone(), *checksum),
            _ => {
                let (file, checksum) = write_compressed(space, "traits", &self.traits.state())?;
                *saved = Some((self.traits.changes(), file.clone(), checksum));
                (file, checksum)
            }
        };
        let (cold_tail, cold_tail_checksum) = write_compressed(space, "cold", table.cold.tail())?;
        // Likewise the removed rows, while no more were removed; none before the first.
        let removed = table.removed();
        let mut saved = self.removed_file.lock();
        let (removed, removed_checksum) = match &*saved {
            _ if removed.is_empty() => (None, 0),
            Some((count, file, checksum)) if *count == removed.count() => (Some(file.clone()), *checksum),
            _ => {
                let (file, checksum) = write_compressed(space, "removed", removed)?;
                *saved = Some((removed.count(), file.clone(), checksum));
                (Some(file), checksum)
            }
        };
        Ok(ProjectFiles {
            columns,
            state,
            state_checksum,
            traits: Some(traits),
            traits_checksum,
            cold_tail: Some(cold_tail),
            cold_tail_checksum,
            removed,
            removed_checksum,
        })
    }

    /// Gives back every column file's reserved blocks past its values (at a clean stop).
    pub fn release_reserves(&mut self, space: &ColumnSpace) -> Result<()> {
        let table = &mut self.table;
        macro_rules! release {
            ($name:expr, $column:expr) => {
                if let Some(file) = $column.file_name().map(str::to_owned) {
                    $column.release_reserve().map_err(|e| io_error("cannot shrink", &space.dir().join(file), e))?;
                }
            };
        }
        table_columns!(table, release);
        Ok(())
    }

    /// The project a checkpoint saved, its columns mapped from their files.
    pub fn load(space: &Arc<ColumnSpace>, files: &ProjectFiles) -> Result<ProjectData> {
        let path = space.dir().join(&files.state);
        let corrupt = |e: String| Error::Storage(format!("{} cannot be read: {e}", path.display()));
        // The traits file is read and restored on a thread of its own, after the port opens,
        // at a lower priority than queries: readers of the traits wait for it (`Deferred`).
        let traits = files.traits.clone().map(|file| {
            let (builder, traits) = Deferred::pending();
            let (space, checksum) = (space.clone(), files.traits_checksum);
            std::thread::spawn(move || {
                yield_to_queries();
                let restored = read_compressed(&space, &file, checksum).map_err(|e| e.to_string()).and_then(|state| {
                    Traits::from_state(state)
                        .map_err(|e| format!("{} cannot be read: {e}", space.dir().join(&file).display()))
                });
                // A project replaced meanwhile (a compaction) no longer waits for it.
                let _ = builder.send(restored);
            });
            traits
        });
        let state: ProjectState<'static> = read_compressed(space, &files.state, files.state_checksum)?;
        // Every column is replaced by its file below: start from empty ones in memory, not new files.
        let mut table = EventTable::default();
        table.space = Some(space.clone());
        let listed = |name: &str| {
            files.columns.get(name).ok_or_else(|| Error::Storage(format!("the manifest lists no column {name}")))
        };
        // Version 3 and earlier kept 16-byte properties and u32 offsets in blocks of 4,096
        // rows, version 4 12-byte properties: encoded below, as their values' size tells.
        let value_size = |name: &str| listed(name).map(|c| c.bytes.checked_div(c.len).unwrap_or(0));
        let props_size = value_size("props")?;
        let wide_ends = value_size("prop_end")? == 4;
        let plain_props = props_size == size_of::<WideProp>() as u64 || props_size == size_of::<Prop>() as u64;
        // Before times were packed, one 8-byte column and no side columns (told by the side
        // columns, as an empty column has no value size).
        let plain_times = !files.columns.contains_key("time.bases");
        macro_rules! load {
            ($name:expr, $column:expr) => {
                // Version 2 listed the cold values plain: compressed below.
                let converted = ($name.starts_with("cold.") && files.cold_tail.is_none())
                    || (($name == "props" || $name == "prop_end") && (plain_props || wide_ends))
                    || ($name.starts_with("time") && plain_times);
                if !converted {
                    $column = open_column(space, listed($name)?)?;
                }
            };
        }
        table_columns!(table, load);
        let times_corrupt = |e: String| corrupt(format!("the times: {e}"));
        if plain_times {
            let plain: Column<Micros> = open_column(space, listed("time")?)?;
            table.time = Times::from_plain(Some(space), &plain);
        } else {
            let Times { cells, bases, far_rows, far_times } = std::mem::take(&mut table.time);
            table.time = Times::from_parts(cells, bases, far_rows, far_times).map_err(times_corrupt)?;
        }
        let props_corrupt = |e: String| corrupt(format!("the properties: {e}"));
        table.prop_block_start = state.prop_block_start.into_owned();
        if plain_props || wide_ends {
            let ends = if wide_ends {
                OldPropEnds::Wide(open_column(space, listed("prop_end")?)?)
            } else {
                OldPropEnds::Narrow(open_column(space, listed("prop_end")?)?)
            };
            // Read from their files as they are encoded: no copy in memory.
            if props_size == size_of::<WideProp>() as u64 {
                let wide: Column<WideProp> = open_column(space, listed("props")?)?;
                encode_props(&mut table, space, &wide, WideProp::narrow, &ends)
            } else if props_size == size_of::<Prop>() as u64 {
                let props: Column<Prop> = open_column(space, listed("props")?)?;
                encode_props(&mut table, space, &props, |p| Some(*p), &ends)
            } else {
                encode_props(&mut table, space, &[], |p: &Prop| Some(*p), &ends)
            }
            .map_err(props_corrupt)?;
        }
        let cold_corrupt = |e: String| corrupt(format!("the event ids, anonymous people or previous rows: {e}"));
        match &files.cold_tail {
            Some(tail) => {
                let tail = read_compressed(space, tail, files.cold_tail_checksum)?;
                let blocks = std::mem::take(&mut table.cold.blocks);
                let block_ends = std::mem::take(&mut table.cold.block_ends);
                table.cold = ColdRows::from_parts(blocks, block_ends, tail).map_err(cold_corrupt)?;
            }
            None => {
                let ends: Column<u64> = open_column(space, listed("id_end")?)?;
                let bytes: Column<u8> = open_column(space, listed("id_bytes")?)?;
                let anonymous: Column<u32> = open_column(space, listed("anonymous")?)?;
                let previous: Column<u32> = open_column(space, listed("previous_row")?)?;
                table.cold =
                    ColdRows::from_plain(Some(space), &ends, &bytes, &anonymous, &previous).map_err(cold_corrupt)?;
            }
        }
        table.canonical = state.canonical.into_owned();
        table.is_user = state.is_user.into_owned();
        table.aliases = state.aliases.into_iter().collect();
        table.last_row = state.last_row.into_owned();
        table.name_counts = state.name_counts.into_owned();
        table.min_time = state.min_time;
        table.max_time = state.max_time;
        table.generation = state.generation;
        table.check_consistent().map_err(corrupt)?;
        if let Some(file) = &files.removed {
            let removed = read_compressed(space, file, files.removed_checksum)?;
            table.restore_removed(removed).map_err(|e| corrupt(format!("the removed rows: {e}")))?;
        }
        // The interners' lookups are built on a thread of their own, after the port opens, at a
        // lower priority than queries, from second mappings of their files: a lookup waits for
        // its table (`Deferred`), a resolve does not. The people's, by far the largest, comes
        // last.
        let mut sources = Vec::new();
        for (name, interner) in [
            ("names", &mut table.names),
            ("keys", &mut table.keys),
            ("strings", &mut table.strings),
            ("people", &mut table.people),
        ] {
            let bytes = listed(&format!("{name}.bytes"))?;
            let ends = listed(&format!("{name}.ends"))?;
            let maps = (map_listed(space.dir(), bytes)?, map_listed(space.dir(), ends)?);
            let (builder, index) = Deferred::pending();
            interner.index = index;
            sources.push((maps, (bytes.bytes as usize, ends.bytes as usize), builder));
        }
        let path = path.display().to_string();
        std::thread::spawn(move || {
            yield_to_queries();
            for ((bytes, ends), (bytes_len, ends_len), builder) in sources {
                let bytes = &bytes.as_deref().unwrap_or_default()[..bytes_len];
                let ends = match &ends {
                    Some(map) => bytemuck::try_cast_slice(&map[..ends_len]).map_err(|e| format!("the ends: {e}")),
                    None => Ok(&[][..]),
                };
                let index = ends
                    .and_then(|ends| Interner::built_index(bytes, ends))
                    .map_err(|e| format!("{path} cannot be read: a checkpointed interner is corrupt: {e}"));
                let _ = builder.send(index);
            }
        });
        let mut data = ProjectData { table, ..ProjectData::default() };
        data.traits = std::sync::Arc::new(match traits {
            Some(traits) => traits,
            // Earlier checkpoints kept the traits inside the state.
            None => Deferred::ready(Traits::from_state(state.traits).map_err(corrupt)?),
        });
        if let Some(traits) = &files.traits {
            // A file is written only with changes, and a load of one has none.
            *data.traits_file.lock() = Some((0, traits.clone(), files.traits_checksum));
        }
        if let Some(removed) = &files.removed {
            *data.removed_file.lock() = Some((data.table.removed().count(), removed.clone(), files.removed_checksum));
        }
        data.quarantine = state.quarantine.into_iter().map(|q| (q.id, q)).collect();
        for (metric_key, values) in state.manual {
            data.add_manual(&metric_key, &values);
        }
        data.erased_keys = state.erased_keys.into_owned();
        *data.needs_compaction.get_mut() = state.needs_compaction;
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::{Event, UserUpdate, Value};
    use crate::core::store::record::LogRecord;
    use crate::core::store::table::MAX_PROPERTY_KEYS;

    fn users(set: &[(&str, &str)]) -> LogRecord {
        let updates = set
            .iter()
            .map(|(user, plan)| UserUpdate {
                user_id: (*user).into(),
                set: vec![("plan".into(), Value::String((*plan).into()))],
                set_once: vec![],
                unset: vec![],
            })
            .collect();
        LogRecord::Users { project: "p".into(), at: 0, updates }
    }

    #[test]
    fn cold_values_load_back_compressed_and_plain_ones_of_version_2_are_converted() {
        let dir = tempfile::tempdir().unwrap();
        let space = ColumnSpace::durable_for_tests(dir.path());
        let mut data = ProjectData::in_space(Some(&space));
        let rows = 2 * crate::core::store::cold_rows::BLOCK_ROWS + 5;
        for i in 0..rows {
            // Two users, one of them sometimes sent with an anonymous id too.
            let (user, anonymous) = if i % 3 == 0 { ("u1", "") } else { ("u2", if i % 2 == 0 { "a2" } else { "" }) };
            let event = crate::core::store::table::test_event(&format!("event-{i}-é"), user, anonymous, i as i64);
            data.table.push(&event);
        }
        let files = data.save(&space).unwrap();
        assert!(files.columns.contains_key("cold.blocks") && files.cold_tail.is_some());
        // As a checkpoint does: what it lists outlives the columns loaded from it.
        space.pin_also(files.columns.values().map(|c| c.file.clone()));
        // Every event as sent, and each person's own rows (the chain of previous rows).
        let read = |data: &ProjectData| {
            let table = &data.table;
            let events: Vec<_> = (0..rows).map(|r| table.event(r)).collect();
            let chains: Vec<_> = ["u1", "u2"].map(|u| table.own_rows(table.find_user(u).unwrap())).to_vec();
            (events, chains)
        };
        let expected = read(&data);
        assert_eq!(expected.1[0], (0..rows as u32).step_by(3).collect::<Vec<_>>());
        assert_eq!(read(&ProjectData::load(&space, &files).unwrap()), expected);

        // The same project as version 2 listed it: plain columns.
        let mut plain_bytes: Column<u8> = space.column();
        let mut plain_ends: Column<u64> = space.column();
        let mut anonymous: Column<u32> = space.column();
        let mut previous: Column<u32> = space.column();
        for row in 0..rows {
            let values = data.table.cold.get(row).unwrap();
            plain_bytes.extend_from_slice(values.event_id.as_bytes());
            plain_ends.push(plain_bytes.len() as u64);
            anonymous.push(values.anonymous);
            previous.push(values.previous);
        }
        assert!(anonymous.iter().any(|&a| a != crate::core::store::table::NONE));
        let mut v2 = files.clone();
        v2.columns.retain(|name, _| !name.starts_with("cold."));
        v2.columns.insert("id_bytes".into(), save_column(&plain_bytes, &space).unwrap());
        v2.columns.insert("id_end".into(), save_column(&plain_ends, &space).unwrap());
        v2.columns.insert("anonymous".into(), save_column(&anonymous, &space).unwrap());
        v2.columns.insert("previous_row".into(), save_column(&previous, &space).unwrap());
        v2.cold_tail = None;
        // A start pins what the manifest lists, so the plain columns outlive their conversion.
        space.pin_also(v2.columns.values().map(|c| c.file.clone()));
        let converted = ProjectData::load(&space, &v2).unwrap();
        assert_eq!(read(&converted), expected);
        // Saved again, it is version 3.
        let resaved = converted.save(&space).unwrap();
        assert!(resaved.cold_tail.is_some() && !resaved.columns.contains_key("id_end"));
        assert_eq!(read(&ProjectData::load(&space, &resaved).unwrap()), expected);

        // Plain ends past their bytes are refused, naming what.
        plain_ends.push(plain_bytes.len() as u64 + 10);
        v2.columns.insert("id_end".into(), save_column(&plain_ends, &space).unwrap());
        space.pin_also(v2.columns.values().map(|c| c.file.clone()));
        let err = ProjectData::load(&space, &v2).unwrap_err().to_string();
        assert!(err.contains("the event ids, anonymous people or previous rows"), "{err}");
        // So are block ends that disagree with the rows.
        let mut short = files.clone();
        short.columns.get_mut("cold.block_ends").unwrap().len = 1;
        short.columns.get_mut("cold.block_ends").unwrap().bytes = 8;
        let err = ProjectData::load(&space, &short).unwrap_err().to_string();
        assert!(err.contains("the rows after the last block do not fit together"), "{err}");
    }

    /// A start checks the column files group by group (`FileGroup`): together the groups are
    /// every listed file once, and a bad properties file fails its own group only, naming it.
    #[test]
    fn column_files_are_checked_by_group_and_a_bad_one_fails_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let space = ColumnSpace::durable_for_tests(dir.path());
        let mut data = ProjectData::in_space(Some(&space));
        for i in 0..300 {
            let event = crate::core::store::table::test_event(&format!("e{i}"), "u1", "a1", i);
            data.table.push(&event);
        }
        let files = data.save(&space).unwrap();
        let groups: BTreeMap<&str, FileGroup> =
            files.columns.keys().map(|name| (name.as_str(), FileGroup::of_column(name))).collect();
        assert_eq!(groups["person"], FileGroup::Scanned);
        assert_eq!(groups["time.bases"], FileGroup::Scanned);
        assert_eq!(groups["strings.bytes"], FileGroup::Scanned);
        assert_eq!(groups["props"], FileGroup::Properties);
        assert_eq!(groups["prop_end"], FileGroup::Properties);
        assert_eq!(groups["cold.blocks"], FileGroup::Cold);
        let manifest = Manifest::new("log".into(), 0, BTreeMap::from([("p".into(), files.clone())]), vec![]);
        let checked: Vec<usize> =
            FileGroup::ALL.iter().map(|&group| manifest.verify_project_group(space.dir(), group).unwrap()).collect();
        assert_eq!(checked.iter().sum::<usize>(), files.columns.len());
        assert_eq!(checked[1], 2);

        let props = space.dir().join(&files.columns["props"].file);
        let mut bytes = std::fs::read(&props).unwrap();
        bytes[5] ^= 1;
        std::fs::write(&props, bytes).unwrap();
        assert!(manifest.verify_project_group(space.dir(), FileGroup::Scanned).is_ok());
        assert!(manifest.verify_project_group(space.dir(), FileGroup::Cold).is_ok());
        let err = manifest.verify_project_group(space.dir(), FileGroup::Properties).unwrap_err().to_string();
        assert!(err.contains(&files.columns["props"].file) && err.contains("corrupt"), "{err}");
    }

    /// A file is checked in spans of blocks on several threads: a bad byte in any block, or a
    /// list of checksums of the wrong length, names the file.
    #[test]
    fn a_file_checked_in_spans_finds_a_bad_block_anywhere() {
        let dir = tempfile::tempdir().unwrap();
        let space = ColumnSpace::durable_for_tests(dir.path());
        let mut column: Column<u64> = space.column();
        let values = (2 * CHECKSUM_BLOCK + CHECKSUM_BLOCK / 2) / 8;
        column.extend_from_slice(&(0..values as u64).collect::<Vec<_>>());
        let listed = save_column(&column, &space).unwrap();
        assert_eq!(listed.checksums.len(), 3);
        for span in [1, 2, 16] {
            assert_eq!(verify_columns_in_spans(space.dir(), vec![&listed], span).unwrap(), 1);
        }
        let path = space.dir().join(&listed.file);
        let good = std::fs::read(&path).unwrap();
        for at in [0, CHECKSUM_BLOCK + 3, 2 * CHECKSUM_BLOCK + 100] {
            let mut bytes = good.clone();
            bytes[at] ^= 0x40;
            std::fs::write(&path, &bytes).unwrap();
            for span in [1, 2, 16] {
                let err = verify_columns_in_spans(space.dir(), vec![&listed], span).unwrap_err().to_string();
                assert!(err.contains(&listed.file) && err.contains("checksum"), "{err}");
            }
        }
        std::fs::write(&path, &good).unwrap();
        let mut short = listed.clone();
        short.checksums.pop();
        let err = verify_columns(space.dir(), vec![&short]).unwrap_err().to_string();
        assert!(err.contains(&listed.file), "{err}");
    }

    #[test]
    fn unchanged_traits_keep_their_file_and_everything_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let space = ColumnSpace::durable_for_tests(dir.path());
        let mut data = ProjectData::in_space(Some(&space));
        data.apply(&users(&[("u1", "free"), ("u2", "pro")]), &[]);
        let event = |id: &str, user: &str| Event {
            event_id: id.into(),
            name: "view".into(),
            user_id: user.into(),
            anonymous_id: String::new(),
            timestamp: 1_000,
            properties: vec![],
        };
        data.table.push(&event("e1", "u1"));
        let first = data.save(&space).unwrap();
        data.table.push(&event("e2", "u2"));
        let second = data.save(&space).unwrap();
        assert_ne!(first.state, second.state, "the state is written at every checkpoint");
        assert_eq!((&first.traits, first.traits_checksum), (&second.traits, second.traits_checksum));
        data.apply(&users(&[("u2", "team")]), &[]);
        let third = data.save(&space).unwrap();
        assert_ne!(third.traits, second.traits, "changed traits get a new file");

        let loaded = ProjectData::load(&space, &third).unwrap();
        assert_eq!(loaded.table.len(), 2);
        let u2 = loaded.table.find_user("u2").unwrap();
        assert_eq!(loaded.traits.of(u2).unwrap(), vec![("plan".to_owned(), Value::String("team".into()))]);
        // Loaded, then saved without a change: the listed traits file again.
        assert_eq!(loaded.save(&space).unwrap().traits, third.traits);

        // A flipped byte in the traits file is found by its checksum.
        let path = space.dir().join(third.traits.as_ref().unwrap());
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        // The traits are read after the load returns: their readers, and the start's check
        // (`ProjectData::loaded`), get the error.
        let loaded = ProjectData::load(&space, &third).unwrap();
        assert_eq!(loaded.table.len(), 2, "the events load without the traits");
        let err = loaded.loaded().unwrap_err();
        assert!(err.contains(third.traits.as_ref().unwrap()) && err.contains("corrupt"), "{err}");
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| loaded.traits.len())).unwrap_err();
        assert!(read.downcast_ref::<String>().unwrap().contains("corrupt"));
    }

    /// Rows removed since the last compaction stay removed across a checkpoint: their file is
    /// written once per change, read back at load (person counts included), and a flipped
    /// byte in it stops the load, naming it.
    #[test]
    fn removed_rows_load_back_removed_and_a_bad_file_of_them_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let space = ColumnSpace::durable_for_tests(dir.path());
        let mut data = ProjectData::in_space(Some(&space));
        let event = |id: &str, user: &str, at: i64| Event {
            event_id: id.into(),
            name: "view".into(),
            user_id: user.into(),
            anonymous_id: String::new(),
            timestamp: at,
            properties: vec![],
        };
        for (id, user, at) in [("e1", "u1", 10), ("e2", "u2", 20), ("e3", "u1", 30), ("e4", "u3", 40)] {
            data.table.push(&event(id, user, at));
        }
        assert_eq!(data.save(&space).unwrap().removed, None, "no file before a removal");
        data.apply(&LogRecord::UserDeleted { project: "p".into(), user_id: "u1".into() }, &[]);
        data.apply(&LogRecord::EventsExpired { project: "p".into(), before: 21 }, &[]);
        assert!(data.settle_removals());
        let first = data.save(&space).unwrap();
        data.table.push(&event("e5", "u2", 50));
        let second = data.save(&space).unwrap();
        assert!(first.removed.is_some());
        assert_eq!((&first.removed, first.removed_checksum), (&second.removed, second.removed_checksum));

        let loaded = ProjectData::load(&space, &second).unwrap();
        let table = &loaded.table;
        let live: Vec<String> =
            (0..table.len()).filter(|&r| !table.is_removed(r)).map(|r| table.row_event_id(r).into_owned()).collect();
        assert_eq!(live, ["e4", "e5"]);
        let person = |user: &str| table.find_user(user).unwrap();
        assert!(!table.has_rows(person("u1")) && table.has_rows(person("u2")) && table.has_rows(person("u3")));
        assert_eq!((table.min_time(), table.max_time(), table.name_counts()), (Some(40), Some(50), &[2][..]));
        assert_eq!(loaded.save(&space).unwrap().removed, second.removed, "loaded, the same file is listed");

        let path = space.dir().join(second.removed.as_ref().unwrap());
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let err = ProjectData::load(&space, &second).unwrap_err().to_string();
        assert!(err.contains(second.removed.as_ref().unwrap()) && err.contains("corrupt"), "{err}");
    }

    /// The interners' lookups are built after the load returns: lookups wait for them, and a
    /// checkpoint whose strings repeat (a bug, as its checksums match) fails them all, while
    /// resolving an id still reads the file.
    #[test]
    fn loaded_lookups_answer_once_built_and_repeated_strings_fail_them() {
        let dir = tempfile::tempdir().unwrap();
        let space = ColumnSpace::durable_for_tests(dir.path());
        let mut data = ProjectData::in_space(Some(&space));
        let people = ["ann", "bob", "cat"];
        for (i, user) in people.iter().enumerate() {
            data.table.push(&crate::core::store::table::test_event(&format!("e{i}"), user, "", i as i64));
        }
        let files = data.save(&space).unwrap();
        space.pin_also(files.columns.values().map(|c| c.file.clone()));
        let loaded = ProjectData::load(&space, &files).unwrap();
        for (i, user) in people.iter().enumerate() {
            let person = loaded.table.find_user(user).unwrap();
            assert_eq!(loaded.table.person_name(person), *user);
            assert_eq!(loaded.table.person[i], person);
        }
        assert_eq!(loaded.table.find_user("dan"), None);
        assert_eq!(loaded.loaded(), Ok(()));

        // "bob" becomes a second "ann" on disk.
        let path = space.dir().join(&files.columns["people.bytes"].file);
        let bytes = std::fs::read(&path).unwrap();
        let at = bytes.windows(3).position(|w| w == b"bob").unwrap();
        let mut changed = bytes.clone();
        changed[at..at + 3].copy_from_slice(b"ann");
        std::fs::write(&path, &changed).unwrap();
        let loaded = ProjectData::load(&space, &files).unwrap();
        let err = loaded.loaded().unwrap_err();
        assert!(err.contains("interner is corrupt") && err.contains("stored twice"), "{err}");
        assert_eq!(loaded.table.person_name(loaded.table.person[2]), "cat");
        let lookup = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| loaded.table.find_user("cat")));
        assert!(lookup.is_err(), "a lookup without its table panics rather than answer");
    }

    #[test]
    fn properties_of_versions_3_and_4_and_plain_times_convert_across_blocks_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let space = ColumnSpace::durable_for_tests(dir.path());
        let mut data = ProjectData::in_space(Some(&space));
        let rows = 4096 + 300;
        for i in 0..rows {
            let mut event = crate::core::store::table::test_event(&format!("e{i}"), "u1", "", i as i64);
            // Up to 39 properties: a 4,096-row block holds more than u16 offsets reach.
            event.properties = (0..i % 40)
                .map(|k| {
                    let value = match k % 4 {
                        0 => Value::Number(i as f64 / 3.0),
                        1 => Value::String(format!("s{}", i % 11)),
                        2 => Value::Bool(i % 2 == 0),
                        _ => Value::Timestamp(-(i as i64)),
                    };
                    (format!("k{k}"), value)
                })
                .collect();
            data.table.push(&event);
        }
        let files = data.save(&space).unwrap();
        space.pin_also(files.columns.values().map(|c| c.file.clone()));
        let expected: Vec<_> = (0..rows).map(|r| data.table.event(r)).collect();

        // The same rows as version 3 kept their properties: 16 bytes each, and ends as u32
        // offsets from the start of their block of 4,096 rows.
        let table = &data.table;
        let row_props: Vec<Vec<Prop>> = (0..rows).map(|r| table.row_props(r).collect()).collect();
        let mut wide: Column<WideProp> = space.column();
        row_props.iter().flatten().for_each(|p| wide.push(p.wide()));
        let ends: Vec<u64> = row_props
            .iter()
            .scan(0u64, |end, props| {
                *end += props.len() as u64;
                Some(*end)
            })
            .collect();
        let starts: Vec<u64> = (0..rows.div_ceil(4096)).map(|b| if b == 0 { 0 } else { ends[b * 4096 - 1] }).collect();
        let mut wide_ends: Column<u32> = space.column();
        ends.iter().enumerate().for_each(|(r, &end)| wide_ends.push((end - starts[r / 4096]) as u32));
        assert!(wide_ends.iter().any(|&e| e > u32::from(u16::MAX)), "offsets past u16 in a 4,096-row block");
        let mut state: ProjectState<'static> = read_compressed(&space, &files.state, files.state_checksum).unwrap();
        state.prop_block_start = Cow::Owned(starts);
        let (state_file, state_checksum) = write_compressed(&space, "state", &state).unwrap();
        let mut v3 = files.clone();
        v3.columns.insert("props".into(), save_column(&wide, &space).unwrap());
        v3.columns.insert("prop_end".into(), save_column(&wide_ends, &space).unwrap());
        (v3.state, v3.state_checksum) = (state_file, state_checksum);
        // And its times in one plain column.
        let mut plain_times: Column<Micros> = space.column();
        (0..rows).for_each(|r| plain_times.push(table.time_of(r)));
        v3.columns.retain(|name, _| !name.starts_with("time."));
        v3.columns.insert("time".into(), save_column(&plain_times, &space).unwrap());
        space.pin_also(v3.columns.values().map(|c| c.file.clone()));
        let converted = ProjectData::load(&space, &v3).unwrap();
        assert_eq!((0..rows).map(|r| converted.table.event(r)).collect::<Vec<_>>(), expected);
        assert_eq!(converted.table.prop_block_start, data.table.prop_block_start);
        assert_eq!(converted.table.props.to_vec(), data.table.props.to_vec());
        assert_eq!(converted.table.time.bases.to_vec(), data.table.time.bases.to_vec());

        // As version 4 kept them: 12 bytes each, ends as u16 offsets in blocks of 64 rows.
        let mut plain: Column<Prop> = space.column();
        row_props.iter().flatten().for_each(|p| plain.push(*p));
        let starts: Vec<u64> =
            (0..rows.div_ceil(PROP_BLOCK)).map(|b| if b == 0 { 0 } else { ends[b * PROP_BLOCK - 1] }).collect();
        let mut narrow_ends: Column<u16> = space.column();
        ends.iter().enumerate().for_each(|(r, &end)| narrow_ends.push((end - starts[r / PROP_BLOCK]) as u16));
        state.prop_block_start = Cow::Owned(starts);
        let mut v4 = files.clone();
        (v4.state, v4.state_checksum) = write_compressed(&space, "state", &state).unwrap();
        v4.columns.insert("props".into(), save_column(&plain, &space).unwrap());
        v4.columns.insert("prop_end".into(), save_column(&narrow_ends, &space).unwrap());
        space.pin_also(v4.columns.values().map(|c| c.file.clone()));
        let converted = ProjectData::load(&space, &v4).unwrap();
        assert_eq!((0..rows).map(|r| converted.table.event(r)).collect::<Vec<_>>(), expected);
        assert_eq!(converted.table.props.to_vec(), data.table.props.to_vec());
        // Encoded, the properties take fewer bytes (thirds and times keep 8 bytes a value).
        assert!(data.table.props.len() < plain.len() * size_of::<Prop>(), "{}", data.table.props.len());

        // Packed times without their bases are refused.
        let mut no_bases = files.clone();
        let empty: Column<i64> = space.column();
        no_bases.columns.insert("time.bases".into(), save_column(&empty, &space).unwrap());
        space.pin_also(no_bases.columns.values().map(|c| c.file.clone()));
        let err = ProjectData::load(&space, &no_bases).unwrap_err().to_string();
        assert!(err.contains("the times: 0 bases for 4396 times"), "{err}");

        // A project without events converts too: its empty time column has no value size.
        let empty = ProjectData::in_space(Some(&space));
        let mut empty_v3 = empty.save(&space).unwrap();
        empty_v3.columns.retain(|name, _| !name.starts_with("time."));
        let no_times: Column<Micros> = space.column();
        empty_v3.columns.insert("time".into(), save_column(&no_times, &space).unwrap());
        space.pin_also(empty_v3.columns.values().map(|c| c.file.clone()));
        let loaded = ProjectData::load(&space, &empty_v3).unwrap();
        assert!(loaded.table.is_empty() && loaded.save(&space).unwrap().columns.contains_key("time.bases"));

        // A key past the key space, or block starts that disagree with the rows, are refused.
        let mut bad = wide.to_vec();
        bad[7].key = MAX_PROPERTY_KEYS as u32;
        let mut bad_column: Column<WideProp> = space.column();
        bad_column.extend_from_slice(&bad);
        let mut past = v3.clone();
        past.columns.insert("props".into(), save_column(&bad_column, &space).unwrap());
        space.pin_also(past.columns.values().map(|c| c.file.clone()));
        let err = ProjectData::load(&space, &past).unwrap_err().to_string();
        assert!(err.contains("the properties: a property has a key past the key space"), "{err}");
        let err = ProjectData::load(
            &space,
            &ProjectFiles { state: files.state.clone(), state_checksum: files.state_checksum, ..v3 },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("the properties: 69 blocks of offsets for 4396 rows"), "{err}");
    }
}
