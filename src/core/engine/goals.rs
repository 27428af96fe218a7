//! The goal calls of the engine: stored goals and their progress.

use crate::core::catalog::validate_slug;
use crate::core::engine::Engine;
use crate::core::engine::meta::MetaKey;
use crate::core::goal::definition::*;
use crate::core::model::{Micros, now_micros};
use crate::error::{Error, Result, echo};

impl Engine {
    pub fn create_goal(&self, project: &str, mut goal: Goal) -> Result<Goal> {
        goal.validate()?;
        let entry = self.project(project)?;
        entry.change_settings(|state| {
            if state.defs.goals.contains_key(&goal.id) {
                return Err(Error::AlreadyExists(format!("goal {} already exists", echo(&goal.id))));
            }
            if !state.defs.metrics.contains_key(&goal.metric_key) {
                return Err(Error::NotFound(format!("goal.metric_key: metric {} not found", echo(&goal.metric_key))));
            }
            if !goal.cohort_id.is_empty() && !state.defs.cohorts.contains_key(&goal.cohort_id) {
                return Err(Error::invalid("goal.cohort_id", format!("unknown cohort {}", echo(&goal.cohort_id))));
            }
            (goal.created, goal.updated) = (self.clock.now(), self.clock.now());
            self.put_meta(MetaKey::Goal { project, id: &goal.id }, &goal)?;
            state.defs_mut().goals.insert(goal.id.clone(), goal.clone());
            Ok(goal)
        })
    }

    pub fn update_goal(&self, project: &str, mut goal: Goal) -> Result<Goal> {
        goal.validate()?;
        let entry = self.project(project)?;
        entry.change_settings(|state| {
            let previous = state
                .defs
                .goals
                .get(&goal.id)
                .ok_or_else(|| Error::NotFound(format!("goal {} not found", echo(&goal.id))))?;
            if !state.defs.metrics.contains_key(&goal.metric_key) {
                return Err(Error::NotFound(format!("goal.metric_key: metric {} not found", echo(&goal.metric_key))));
            }
            if !goal.cohort_id.is_empty() && !state.defs.cohorts.contains_key(&goal.cohort_id) {
                return Err(Error::invalid("goal.cohort_id", format!("unknown cohort {}", echo(&goal.cohort_id))));
            }
            (goal.created, goal.updated) = (previous.created, self.clock.now());
            self.put_meta(MetaKey::Goal { project, id: &goal.id }, &goal)?;
            state.defs_mut().goals.insert(goal.id.clone(), goal.clone());
            Ok(goal)
        })
    }

    pub fn get_goal(&self, project: &str, id: &str) -> Result<Goal> {
        validate_slug("id", id)?;
        let entry = self.project(project)?;
        let state = entry.settings();
        state.defs.goals.get(id).cloned().ok_or_else(|| Error::NotFound(format!("goal {id} not found", id = echo(id))))
    }

    pub fn list_goals(&self, project: &str, metric_key: &str) -> Result<Vec<Goal>> {
        let entry = self.project(project)?;
        let state = entry.settings();
        Ok(state.defs.goals.values().filter(|g| metric_key.is_empty() || g.metric_key == metric_key).cloned().collect())
    }

    pub fn delete_goal(&self, project: &str, id: &str) -> Result<()> {
        validate_slug("id", id)?;
        let entry = self.project(project)?;
        entry.change_settings(|state| {
            if !state.defs.goals.contains_key(id) {
                return Err(Error::NotFound(format!("goal {id} not found", id = echo(id))));
            }
            self.delete_meta(MetaKey::Goal { project, id })?;
            state.defs_mut().goals.remove(id);
            Ok(())
        })
    }

    pub fn goal_progress(&self, project: &str, id: &str, as_of: Option<Micros>) -> Result<GoalReport> {
        validate_slug("id", id)?;
        let entry = self.project(project)?;
        let state = entry.read();
        let goal =
            state.defs.goals.get(id).ok_or_else(|| Error::NotFound(format!("goal {id} not found", id = echo(id))))?;
        let mut base = base_query(goal, zone(goal, &state.project.timezone)?);
        // On a remote engine, a goal on a plain aggregate reads no events (`metric_events`).
        let metric = state.defs.metrics.latest_metric(&goal.metric_key).ok();
        let source = self.metric_events(&state, metric, &mut base)?;
        base.cohort_id.clear();
        measure(&source, &state.defs.metrics, &base, goal, as_of.unwrap_or_else(now_micros))
    }
}
