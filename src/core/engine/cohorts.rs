//! The cohort calls of the engine: stored cohorts, their members and size.

use crate::core::catalog::validate_slug;
use crate::core::cohort::*;
use crate::core::engine::meta::MetaKey;
use crate::core::engine::{Definitions, Engine};
use crate::core::model::Micros;
use crate::core::page::{PageRequest, paginate};
use crate::core::store::source::EventSource;
use crate::error::{Error, Result, echo};

impl Engine {
    pub fn create_cohort(&self, project: &str, mut cohort: Cohort) -> Result<Cohort> {
        cohort.validate()?;
        let entry = self.project(project)?;
        entry.change_settings(|state| {
            if state.defs.cohorts.contains_key(&cohort.id) {
                return Err(Error::AlreadyExists(format!("cohort {} already exists", echo(&cohort.id))));
            }
            cohort.created = self.clock.now();
            self.put_meta(MetaKey::Cohort { project, id: &cohort.id }, &cohort)?;
            std::sync::Arc::make_mut(&mut state.defs_mut().cohorts).insert(cohort.id.clone(), cohort.clone());
            Ok(cohort)
        })
    }

    pub fn get_cohort(&self, project: &str, id: &str) -> Result<Cohort> {
        validate_slug("id", id)?;
        let entry = self.project(project)?;
        let state = entry.settings();
        state.defs.cohort(id).cloned()
    }

    /// Cohorts by id; static cohorts without their ids (see `Cohort::static_size`).
    pub fn list_cohorts(&self, project: &str, page: &PageRequest) -> Result<(Vec<(Cohort, usize)>, String)> {
        let entry = self.project(project)?;
        let state = entry.settings();
        let listed: Vec<(Cohort, usize)> = state
            .defs
            .cohorts
            .values()
            .map(|c| {
                let definition = match &c.definition {
                    Definition::Static(_) => Definition::Static(Vec::new()),
                    other => other.clone(),
                };
                let listed = Cohort {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    description: c.description.clone(),
                    definition,
                    created: c.created,
                };
                (listed, c.static_size())
            })
            .collect();
        paginate(listed, |(c, _)| c.id.clone(), page)
    }

    pub fn delete_cohort(&self, project: &str, id: &str) -> Result<()> {
        validate_slug("id", id)?;
        let entry = self.project(project)?;
        entry.change_settings(|state| {
            if !state.defs.cohorts.contains_key(id) {
                return Err(Error::NotFound(format!("cohort {id} not found", id = echo(id))));
            }
            let referrers: Vec<String> = state
                .defs
                .goals
                .values()
                .filter(|g| g.cohort_id == id)
                .map(|g| format!("goal {}", echo(&g.id)))
                .collect();
            if !referrers.is_empty() {
                return Err(Error::FailedPrecondition(format!(
                    "cohort {id:?} is referenced by {}",
                    referrers.join(", ")
                )));
            }
            self.delete_meta(MetaKey::Cohort { project, id })?;
            std::sync::Arc::make_mut(&mut state.defs_mut().cohorts).remove(id);
            Ok(())
        })
    }

    /// One page of members by id: the uploaded ids of a static cohort, or the people a
    /// dynamic one holds now.
    pub fn cohort_members(&self, project: &str, id: &str, page: &PageRequest) -> Result<(Vec<String>, String)> {
        validate_slug("id", id)?;
        let entry = self.project(project)?;
        let state = entry.read();
        let cohort = state.defs.cohort(id)?;
        let ids = match &cohort.definition {
            Definition::Static(ids) => ids.clone(),
            Definition::Conditions(_) => match self.counted_cohort(&state, id, self.clock.now())? {
                Some(members) => members.sorted(),
                None => {
                    let source = self.events_of(&state, &fetch(cohort))?;
                    member_ids(&source, &evaluate(&source, cohort, self.clock.now()))
                }
            },
        };
        paginate(ids, String::clone, page)
    }

    /// The number of members and when they were counted.
    pub fn cohort_size(&self, project: &str, id: &str) -> Result<(u64, Micros)> {
        validate_slug("id", id)?;
        let entry = self.project(project)?;
        let state = entry.read();
        let cohort = state.defs.cohort(id)?;
        let now = self.clock.now();
        let size = match &cohort.definition {
            Definition::Static(ids) => ids.len() as u64,
            Definition::Conditions(_) => match self.counted_cohort(&state, id, now)? {
                Some(members) => members.len() as u64,
                None => {
                    let source = self.events_of(&state, &fetch(cohort))?;
                    let mask = evaluate(&source, cohort, now);
                    let canonical = source.canonical();
                    (0..canonical.len()).filter(|&p| canonical[p] as usize == p && mask[p]).count() as u64
                }
            },
        };
        Ok((size, now))
    }
}

impl Definitions {
    fn cohort(&self, id: &str) -> Result<&Cohort> {
        self.cohorts.get(id).ok_or_else(|| Error::NotFound(format!("cohort {id} not found", id = echo(id))))
    }
}
