//! Data retention of the engine: expiring old events through the log.

use crate::core::engine::compaction::{REMOTE_SETTLE, purge_quarantine_records};
use crate::core::engine::{Engine, ProjectEntry};
use crate::core::model::Micros;
use crate::core::store::record::LogRecord;
use crate::core::store::remote::Fetch;
use crate::core::store::source::EventSource;
use crate::error::Result;
use std::sync::Arc;
use std::time::Duration;

impl Engine {
    /// Drops events of `project` with a timestamp before `before`; returns how many.
    pub async fn expire_events(self: &Arc<Self>, project: &str, before: Micros) -> Result<u64> {
        let entry = self.project(project)?;
        if self.remote().is_some() {
            return self.expire_remote(project, entry, before).await;
        }
        // The project lock may wait for a writer: counted off the executor.
        let counted = entry.clone();
        let expiring = self
            .off_executor(move |_| {
                let state = counted.read();
                let table = &state.data.table;
                let old_quarantine = state.data.quarantine.values().any(|q| q.event.timestamp < before);
                if table.min_time().is_none_or(|t| t >= before) && !old_quarantine {
                    return Ok(None);
                }
                let expiring = (0..table.len()).filter(|&row| !table.is_removed(row) && table.time_of(row) < before);
                Ok(Some(expiring.count() as u64))
            })
            .await?;
        let Some(expiring) = expiring else {
            return Ok(0);
        };
        let record = LogRecord::EventsExpired { project: project.to_owned(), before };
        self.write(entry, vec![record], vec![]).await?;
        tracing::info!(project = %project, events = expiring, before, "retention dropped old events");
        Ok(expiring)
    }

    /// `expire_events` on a remote engine: a record first, from which every node's reads
    /// leave the events out (and old quarantined events go), then ClickHouse's mutations,
    /// which remove them (and the old quarantined events' bytes) from its files in the
    /// background.
    async fn expire_remote(self: &Arc<Self>, project: &str, entry: Arc<ProjectEntry>, before: Micros) -> Result<u64> {
        let project_id = project.to_owned();
        let old = Fetch { to: before, ..Fetch::everything() };
        let expiring =
            self.on_remote(move |remote| Ok(remote.person_batch(&project_id, &old)?.row_count() as u64)).await?;
        let old_quarantine = self
            .read_project(&entry, move |_, state| {
                Ok(state.data.quarantine.values().any(|q| q.event.timestamp < before))
            })
            .await?;
        if expiring == 0 && !old_quarantine {
            return Ok(0);
        }
        let record = LogRecord::EventsExpired { project: project.to_owned(), before };
        self.write(entry, vec![record], vec![]).await?;
        if old_quarantine {
            self.on_remote(purge_quarantine_records).await?;
        }
        if expiring > 0 {
            let project_id = project.to_owned();
            self.on_remote(move |remote| {
                remote.expire(&project_id, before)?;
                if !remote.settle(REMOTE_SETTLE)? {
                    tracing::warn!(project = %project_id, "clickhouse retention mutations still running");
                }
                Ok(())
            })
            .await?;
            tracing::info!(project = %project, events = expiring, before, "retention dropped old events");
        }
        Ok(expiring)
    }

    /// One pass of the retention job over every project with a retention setting.
    pub async fn enforce_retention(self: &Arc<Self>, now: Micros) -> Result<u64> {
        let mut dropped = 0;
        // Off the executor: listing may refresh from a remote engine.
        for project in self.off_executor(|engine| engine.list_projects()).await? {
            let Some(before) = project.retention_cutoff(now) else {
                continue;
            };
            dropped += self.expire_events(&project.id, before).await?;
        }
        Ok(dropped)
    }
}

/// Runs the retention job every `every` until the engine's writer closes.
pub async fn run_retention_job(engine: Arc<Engine>, every: Duration) {
    crate::core::engine::compaction::run_every(every, true, "retention pass", || {
        engine.enforce_retention(engine.clock.now())
    })
    .await
}
