//! Taking checkpoints (see `store::segment`) and compacting with them.
//!
//! The writer thread takes a checkpoint after every `CHECKPOINT_EVENTS` stored events, when the
//! background job asks (`--checkpoint-interval-secs`, if anything was written since), before a
//! compaction, and once more when the engine closes; so a restart after a clean stop replays
//! nothing, and one after a crash replays at most what came after the last checkpoint. It
//! runs between groups with the applier drained, so every project's data in memory is exactly
//! the log up to the position it records; queries go on meanwhile (it reads the projects).
//! While a query holds a project that has jobs waiting, the checkpoint is put off to a later
//! group rather than make the writer wait for the query.

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
    /// Writes a checkpoint of every project and truncates the log behind it. The caller makes
    /// sure nothing is appended or applied meanwhile (the writer thread, applier drained).
    pub fn run(&self) -> Result<()> {
        let started = Instant::now();
        let position = self.storage.log_position()?;
        let projects: Vec<(String, Arc<ProjectEntry>)> =
            self.projects.read().iter().map(|(id, entry)| (id.clone(), entry.clone())).collect();
        let mut files = BTreeMap::new();
        for (id, entry) in &projects {
            files.insert(id.clone(), entry.read().data.save(&self.space)?);
        }
        // Held until the manifest pins the runs' files (see `SavedRuns`).
        let seen = crate::core::ingest::save_seen(&self.seen, &self.space)?;
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
