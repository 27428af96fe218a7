//! The metric calls of the engine: versioned definitions, MANUAL values, queries and the metric tree.

use std::sync::Arc;

use crate::core::engine::Engine;
use crate::core::engine::meta::MetaKey;
use crate::core::metric::definition::MetricTarget;
use crate::core::metric::definition::{Metric, MetricKind, MetricRole};
use crate::core::metric::evaluate::*;
use crate::core::metric::scan::MetricQuery;
use crate::core::model::{ManualValue, Micros, now_micros};
use crate::core::store::record::LogRecord;
use crate::core::time::{self, Granularity};
use crate::error::{Error, Result, echo};

impl Engine {
    pub fn create_metric(&self, project: &str, mut metric: Metric) -> Result<Metric> {
        metric.validate()?;
        let entry = self.project(project)?;
        entry.change_settings(|state| {
            if state.defs.metrics.contains_key(&metric.key) {
                return Err(Error::AlreadyExists(format!("metric {} already exists", echo(&metric.key))));
            }
            check_graph(&state.defs.metrics, &metric)?;
            let now = now_micros();
            (metric.version, metric.created, metric.updated) = (1, now, now);
            self.put_meta(MetaKey::Metric { project, key: &metric.key, version: 1 }, &metric)?;
            state.defs_mut().metrics.insert(metric.key.clone(), vec![metric.clone()]);
            Ok(metric)
        })
    }

    /// Stores a new version; earlier versions stay readable.
    pub fn update_metric(&self, project: &str, mut metric: Metric) -> Result<Metric> {
        metric.validate()?;
        let entry = self.project(project)?;
        entry.change_settings(|state| {
            let previous = state.defs.metrics.latest_metric(&metric.key)?.clone();
            check_graph(&state.defs.metrics, &metric)?;
            metric.version = previous.version + 1;
            metric.created = previous.created;
            metric.updated = now_micros();
            self.put_meta(MetaKey::Metric { project, key: &metric.key, version: metric.version }, &metric)?;
            state.defs_mut().metrics.entry(metric.key.clone()).or_default().push(metric.clone());
            Ok(metric)
        })
    }

    /// A version of a metric (0: the latest) and the latest version number.
    pub fn get_metric(&self, project: &str, key: &str, version: u32) -> Result<(Metric, u32)> {
        crate::core::catalog::validate_slug("key", key)?;
        let entry = self.project(project)?;
        let state = entry.settings();
        let metric = state.defs.metrics.metric_version(key, version)?.clone();
        let latest = state.defs.metrics.latest_metric(key)?.version;
        Ok((metric, latest))
    }

    pub fn list_metrics(&self, project: &str, roles: &[MetricRole]) -> Result<Vec<Metric>> {
        let entry = self.project(project)?;
        let state = entry.settings();
        Ok(state
            .defs
            .metrics
            .latest_metrics()
            .into_values()
            .filter(|m| roles.is_empty() || roles.contains(&m.role))
            .collect())
    }

    /// Deletes every version of a metric and, for a MANUAL metric, its recorded values. The
    /// definitions go first; values whose metric no longer exists are also dropped at open, so
    /// a crash between the two steps leaves no values behind.
    pub async fn delete_metric(self: &Arc<Self>, project: &str, key: &str) -> Result<()> {
        let (project_id, metric_key) = (project.to_owned(), key.to_owned());
        let was_manual = self.off_executor(move |engine| engine.remove_metric(&project_id, &metric_key)).await?;
        if was_manual {
            self.clear_manual_values(project, key).await?;
        }
        Ok(())
    }

    /// Removes every version of a metric's definition; true when it was MANUAL.
    fn remove_metric(&self, project: &str, key: &str) -> Result<bool> {
        crate::core::catalog::validate_slug("key", key)?;
        let entry = self.project(project)?;
        entry.change_settings(|state| {
            let versions = state
                .defs
                .metrics
                .get(key)
                .ok_or_else(|| Error::NotFound(format!("metric {key} not found", key = echo(key))))?
                .clone();
            let referrers: Vec<String> = state
                .defs
                .metrics
                .latest_metrics()
                .values()
                .filter(|m| {
                    m.key != key && (m.input_keys().iter().any(|k| k == key) || m.parent_keys.iter().any(|k| k == key))
                })
                .map(|m| m.key.clone())
                .collect();
            let goals = state.defs.goals.values().filter(|g| g.metric_key == key).map(|g| format!("goal {}", g.id));
            let experiments = state
                .defs
                .experiments
                .values()
                .filter(|e| e.metrics().any(|(_, k)| k == key))
                .map(|e| format!("experiment {}", e.key));
            let holdouts = state
                .defs
                .holdouts
                .values()
                .filter(|h| h.metric_keys.iter().any(|k| k == key))
                .map(|h| format!("holdout {}", h.key));
            let referrers: Vec<String> =
                referrers.into_iter().chain(goals).chain(experiments).chain(holdouts).collect();
            if !referrers.is_empty() {
                return Err(Error::FailedPrecondition(format!(
                    "metric {key:?} is referenced by {}",
                    referrers.join(", ")
                )));
            }
            for metric in &versions {
                self.delete_meta(MetaKey::Metric { project, key, version: metric.version })?;
            }
            state.defs_mut().metrics.remove(key);
            Ok(versions.iter().any(|m| m.kind == MetricKind::Manual))
        })
    }

    async fn clear_manual_values(&self, project: &str, key: &str) -> Result<()> {
        let entry = self.project(project)?;
        let record = LogRecord::ManualCleared { project: project.to_owned(), metric_key: key.to_owned() };
        self.write(entry, vec![record], vec![]).await?;
        Ok(())
    }

    /// Stores values of a MANUAL metric; invalid items are returned with their index.
    pub async fn record_values(
        self: &Arc<Self>,
        project: &str,
        key: &str,
        values: Vec<Result<ManualValue>>,
    ) -> Result<(u64, Vec<crate::core::ingest::ItemError>)> {
        crate::core::catalog::validate_slug("metric_key", key)?;
        self.limits.check_batch("values", values.len())?;
        let entry = self.project(project)?;
        let metric_key = key.to_owned();
        let kind =
            self.read_project(&entry, move |_, state| Ok(state.defs.metrics.latest_metric(&metric_key)?.kind)).await?;
        if kind != MetricKind::Manual {
            return Err(Error::FailedPrecondition(format!("metric {key:?} is {kind:?}, not MANUAL")));
        }
        let mut valid = Vec::with_capacity(values.len());
        let mut rejected = Vec::new();
        for (index, value) in values.into_iter().enumerate() {
            let checked = value.and_then(|v| {
                if !v.value.is_finite() {
                    return Err(Error::invalid("value", "must be finite"));
                }
                crate::core::ingest::validate_properties("dimensions", &v.dimensions, &self.limits)?;
                Ok(v)
            });
            match checked {
                Ok(v) => valid.push(v),
                Err(error) => rejected.push(crate::core::ingest::ItemError {
                    index: index as u32,
                    event_id: String::new(),
                    error: error.under(&format!("values[{index}]")),
                }),
            }
        }
        let recorded = valid.len() as u64;
        if !valid.is_empty() {
            let record =
                LogRecord::ManualValues { project: project.to_owned(), metric_key: key.to_owned(), values: valid };
            self.write(entry, vec![record], vec![]).await?;
        }
        Ok((recorded, rejected))
    }

    /// Runs a query for a stored metric (`version` 0: latest) or an inline definition.
    pub fn query_metric(
        &self,
        project: &str,
        target: MetricTarget,
        mut query: MetricQuery,
        zone: &str,
        compare: Option<Compare>,
    ) -> Result<MetricAnswer> {
        let compare = compare.unwrap_or_default();
        let entry = self.project(project)?;
        let state = entry.read_for_answer();
        let zone = if zone.is_empty() { state.project.timezone.as_str() } else { zone };
        query.tz = time::parse_zone("timezone", zone)?;
        let metric = state.defs.metrics.resolve_target(target)?;
        let source = self.metric_events(&state, [&metric], &mut query)?;
        let series = evaluate(&source, &state.defs.metrics, &metric, &query, 0)?;
        let comparison = match comparison_range(query.from, query.to, compare, query.granularity, query.tz) {
            Some((from, to)) => {
                evaluate(&source, &state.defs.metrics, &metric, &MetricQuery { from, to, ..query.clone() }, 0)?
            }
            None => Vec::new(),
        };
        Ok(MetricAnswer { series, comparison, version: metric.version, timezone: query.tz.name().to_owned() })
    }
}

impl Engine {
    /// The metric tree under `root_key` (default: the North Star): each metric's value over
    /// the range and the comparison range, children being the metrics that name it as parent.
    pub fn metric_tree(
        &self,
        project: &str,
        root_key: &str,
        mut query: MetricQuery,
        zone: &str,
        compare: Option<Compare>,
        max_depth: usize,
    ) -> Result<(TreeNode, Option<(Micros, Micros)>)> {
        let entry = self.project(project)?;
        let state = entry.read_for_answer();
        let zone = if zone.is_empty() { state.project.timezone.as_str() } else { zone };
        query.tz = time::parse_zone("timezone", zone)?;
        query.granularity = Granularity::Total;
        let metrics = state.defs.metrics.latest_metrics();
        let source = self.metric_events(&state, metrics.values(), &mut query)?;
        let root = if root_key.is_empty() {
            metrics.values().find(|m| m.role == MetricRole::NorthStar).ok_or_else(|| {
                Error::FailedPrecondition(
                    "the project has no NORTH_STAR metric; give one that role or set root_key".into(),
                )
            })?
        } else {
            crate::core::catalog::validate_slug("root_key", root_key)?;
            metrics
                .get(root_key)
                .ok_or_else(|| Error::NotFound(format!("metric {root_key} not found", root_key = echo(root_key))))?
        };
        let compare = compare.unwrap_or(Compare::TREE_DEFAULT);
        let previous = comparison_range(query.from, query.to, compare, query.granularity, query.tz);
        let depth = if max_depth == 0 { MAX_DEPTH } else { max_depth.min(MAX_DEPTH) };
        let node = tree_node(&source, &state.defs.metrics, &metrics, root, &query, previous, depth, &mut Vec::new())?;
        Ok((node, previous))
    }
}
