//! Compaction: rewriting the stored log so that what DeleteUser and data retention removed
//! leaves the disk, on demand (AdminService.Compact) and in the background.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::core::engine::{Engine, ProjectEntry};
use crate::core::ingest::{CompactJob, WriterTask};
use crate::core::store::quarantine_rewrites;
use crate::core::store::remote::RemoteEvents;
use crate::error::{Error, Result};

/// How long a compaction waits for a remote engine's removals.
pub(crate) const REMOTE_SETTLE: Duration = Duration::from_secs(600);

/// The data directory's size around a compaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// On a remote engine, which keeps every record: rewrites the stored quarantine records
/// without the events that have left the quarantine (a deleted user's, expired, replayed), so
/// their bytes leave its files once its mutations ran (`settle` waits).
pub(crate) fn purge_quarantine_records(remote: &dyn RemoteEvents) -> Result<()> {
    let rewritten = remote.rewrite_records(&mut |records| quarantine_rewrites(records))?;
    if rewritten > 0 {
        tracing::info!(records = rewritten, "quarantine records rewritten without the events that left");
    }
    Ok(())
}

impl Engine {
    /// Rewrites `project`'s stored data (every project's when empty) from what it holds now,
    /// so deleted users, expired events and deleted records are in no file any more. Writes
    /// and queries go on meanwhile (see `Checkpointer::spawn_compaction`); it returns when the
    /// new files are durable and the old ones gone.
    ///
    /// On a remote engine (ClickHouse) the removals are its own background mutations, which
    /// DeleteUser and retention started: this waits for them to finish.
    pub async fn compact(&self, project: &str) -> Result<Compacted> {
        if self.remote().is_some() {
            if !project.is_empty() {
                self.project(project)?;
            }
            let storage = self.storage.clone();
            return tokio::task::spawn_blocking(move || {
                let remote = storage.remote_events().ok_or_else(|| Error::Internal("no remote engine".into()))?;
                let bytes_before = storage.bytes_on_disk()?;
                purge_quarantine_records(remote)?;
                if !remote.settle(REMOTE_SETTLE)? {
                    return Err(Error::BackendUnavailable(format!(
                        "clickhouse mutations still running after {} s; retry later",
                        REMOTE_SETTLE.as_secs()
                    )));
                }
                Ok(Compacted { bytes_before, bytes_after: storage.bytes_on_disk()? })
            })
            .await
            .map_err(|e| Error::Internal(format!("task failed: {e}")))?;
        }
        let projects = if project.is_empty() {
            self.projects.read().iter().map(|(id, entry)| (id.clone(), entry.clone())).collect()
        } else {
            vec![(project.to_owned(), self.project(project)?)]
        };
        self.compact_projects(projects).await
    }

    /// The background pass: compacts the projects that deleted or expired something since
    /// their last compaction, if any.
    pub async fn compact_if_needed(self: &Arc<Self>) -> Result<Option<Compacted>> {
        if self.remote().is_some() {
            return Ok(None); // ClickHouse runs its mutations itself
        }
        // Project locks may wait for a writer: off the executor.
        let due: Vec<(String, Arc<ProjectEntry>)> = self
            .off_executor(|engine| {
                Ok(engine
                    .projects
                    .read()
                    .iter()
                    .filter(|(_, entry)| entry.read().data.needs_compaction.load(Ordering::Relaxed))
                    .map(|(id, entry)| (id.clone(), entry.clone()))
                    .collect())
            })
            .await?;
        if due.is_empty() {
            return Ok(None);
        }
        self.compact_projects(due).await.map(Some)
    }

    async fn compact_projects(&self, projects: Vec<(String, Arc<ProjectEntry>)>) -> Result<Compacted> {
        let sender = self.sender.read().clone().ok_or(Error::Unavailable)?;
        let (reply, answer) = oneshot::channel();
        let job = CompactJob { projects, reply };
        sender.send(WriterTask::Compact(job)).await.map_err(|_| Error::Unavailable)?;
        let (bytes_before, bytes_after) = answer.await.map_err(|_| Error::Unavailable)??;
        Ok(Compacted { bytes_before, bytes_after })
    }
}

impl Engine {
    /// Takes a checkpoint now if anything was written since the last one (see
    /// `engine::checkpoint`).
    pub async fn checkpoint(&self) -> Result<()> {
        let sender = self.sender.read().clone().ok_or(Error::Unavailable)?;
        let (reply, answer) = oneshot::channel();
        sender.send(WriterTask::Checkpoint(reply)).await.map_err(|_| Error::Unavailable)?;
        answer.await.map_err(|_| Error::Unavailable)?
    }

    /// The data directory's bytes: the storage's and the checkpoint's files.
    pub fn bytes_on_disk(&self) -> Result<u64> {
        crate::core::engine::checkpoint::bytes_on_disk(self.storage.as_ref(), self.columns.as_ref())
    }
}

/// Runs `pass` every `every` (the first time at once when `at_start`) until the engine's
/// writer closes (a pass answers UNAVAILABLE); a failed pass is logged and retried at the next
/// tick. The background jobs: retention, compaction, checkpoints.
pub(crate) async fn run_every<T, F: Future<Output = Result<T>>>(
    every: Duration,
    at_start: bool,
    what: &str,
    mut pass: impl FnMut() -> F,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    if !at_start {
        ticks.tick().await;
    }
    loop {
        ticks.tick().await;
        match pass().await {
            Ok(_) => {}
            Err(Error::Unavailable) => return,
            Err(err) => tracing::warn!(error = %err, "{what} failed; retrying at the next tick"),
        }
    }
}

/// Runs `Engine::checkpoint` every `every` until the engine's writer closes.
pub async fn run_checkpoint_job(engine: Arc<Engine>, every: Duration) {
    run_every(every, false, "checkpoint", || engine.checkpoint()).await
}

/// Runs `compact_if_needed` every `every` until the engine's writer closes.
pub async fn run_compaction_job(engine: Arc<Engine>, every: Duration) {
    run_every(every, false, "background compaction", || engine.compact_if_needed()).await
}
