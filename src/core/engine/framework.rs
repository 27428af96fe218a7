//! ApplyFramework: plans the framework's metrics and tracking-plan entries against what the
//! project holds, then creates or updates what differs (nothing with dry_run).

use crate::core::engine::Engine;
use crate::core::framework::*;
use crate::core::model::EventType;
use crate::core::store::source::EventSource;
use crate::error::Result;

impl Engine {
    pub fn apply_framework(
        &self,
        project: &str,
        framework: Framework,
        mapping: &FrameworkMapping,
        dry_run: bool,
    ) -> Result<Applied> {
        mapping.validate()?;
        let (plan, metrics, types) = {
            let entry = self.project(project)?;
            let state = entry.read();
            let source = self.events(&state)?;
            let counts = source.name_counts();
            let seen = |name: &str| source.names().get(name).is_some_and(|id| counts[id as usize] > 0);
            let metrics = state.defs.metrics.latest_metrics();
            let view = ProjectView { seen: &seen, metrics: &metrics };
            (plan(framework, mapping, &view, &state.defs.event_types), metrics, state.defs.event_types.clone())
        };
        let mut applied = Applied { skipped: plan.skipped, ..Default::default() };
        for metric in plan.metrics {
            let key = metric.key.clone();
            match metrics.get(&key) {
                Some(stored) if definition(stored) == definition(&metric) => applied.unchanged.push(key),
                Some(_) => {
                    applied.updated.push(key);
                    if !dry_run {
                        self.update_metric(project, metric)?;
                    }
                }
                None => {
                    applied.created.push(key);
                    if !dry_run {
                        self.create_metric(project, metric)?;
                    }
                }
            }
        }
        for mut entry in plan.event_types {
            let name = entry.name.clone();
            match types.get(&name) {
                None => applied.event_types_created.push(name),
                Some(stored)
                    if EventType { updated: 0, ..stored.clone() } == EventType { updated: 0, ..entry.clone() } =>
                {
                    applied.event_types_unchanged.push(name);
                    continue;
                }
                Some(_) => applied.event_types_updated.push(name),
            }
            if !dry_run {
                entry.updated = 0;
                self.upsert_event_type(project, entry)?;
            }
        }
        tracing::info!(
            project,
            ?framework,
            dry_run,
            created = applied.created.len(),
            updated = applied.updated.len(),
            skipped = applied.skipped.len(),
            "applied framework"
        );
        Ok(applied)
    }
}
