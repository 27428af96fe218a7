//! Users: profiles, timelines and raw event export.

use std::sync::Arc;

use crate::core::engine::Engine;
use crate::core::ingest;
use crate::core::model::{Event, TimeRange, UserProfile};
use crate::core::page::PageRequest;
use crate::core::store::record::LogRecord;
use crate::error::{Error, Result, echo};

/// The most events one export message carries.
pub const EXPORT_CHUNK: usize = 1000;

impl Engine {
    pub fn get_user(&self, project: &str, user_id: &str) -> Result<UserProfile> {
        if user_id.is_empty() {
            return Err(Error::invalid("user_id", "must not be empty"));
        }
        ingest::validate_user_id("user_id", user_id)?;
        let entry = self.project(project)?;
        let state = entry.read();
        let table = &state.data.table;
        let not_found = || Error::NotFound(format!("user {user_id} not found", user_id = echo(user_id)));
        let person = table.find_user(user_id).ok_or_else(not_found)?;
        let rows = table.user_rows(person);
        let traits = state.data.traits.of(person);
        if rows.is_empty() && traits.is_none() {
            return Err(not_found());
        }
        let anonymous_ids = table
            .aliases()
            .get(&person)
            .map(|anons| anons.iter().map(|&a| table.person_name(a).to_owned()).collect())
            .unwrap_or_default();
        Ok(UserProfile {
            user_id: user_id.to_owned(),
            traits: traits.map(|t| t.into_iter().collect()).unwrap_or_default(),
            anonymous_ids,
            first_seen: rows.first().map(|&r| table.time()[r as usize]),
            last_seen: rows.last().map(|&r| table.time()[r as usize]),
            events: rows.len() as u64,
        })
    }

    /// A user's events oldest first (ties by event id), one page at a time. The token is the
    /// (time, event id) of the page's last event, so events tracked between two pages never
    /// make the next page repeat or skip one.
    pub fn list_user_events(
        &self,
        project: &str,
        user_id: &str,
        range: TimeRange,
        page: &PageRequest,
    ) -> Result<(Vec<Event>, String)> {
        if user_id.is_empty() {
            return Err(Error::invalid("user_id", "must not be empty"));
        }
        ingest::validate_user_id("user_id", user_id)?;
        let after = page.after_time()?;
        let entry = self.project(project)?;
        let state = entry.read();
        let table = &state.data.table;
        let Some(person) = table.find_user(user_id) else {
            return Err(Error::NotFound(format!("user {user_id} not found", user_id = echo(user_id))));
        };
        let position = |r: u32| (table.time()[r as usize], table.row_event_id(r as usize));
        let mut rows: Vec<u32> = table
            .user_rows(person)
            .into_iter()
            .filter(|&r| range.contains(table.time()[r as usize]))
            .filter(|&r| after.as_ref().is_none_or(|(time, id)| position(r) > (*time, id.as_str())))
            .collect();
        rows.sort_unstable_by(|&a, &b| position(a).cmp(&position(b)));
        let size = page.size();
        let next = match rows.get(size.saturating_sub(1)) {
            Some(&last) if rows.len() > size => {
                let (time, id) = position(last);
                crate::core::page::time_token_for(time, id)
            }
            _ => String::new(),
        };
        let events = rows.iter().take(size).map(|&r| table.event(r as usize)).collect();
        Ok((events, next))
    }

    /// Erases a user (a GDPR request): its events, those of anonymous ids aliased to it, its
    /// traits, aliases and quarantined events. Durable when it returns; the event ids stay
    /// known, so replaying the same events is deduplicated. Returns the events erased;
    /// erasing an unknown user erases nothing and succeeds (retries are safe).
    pub async fn delete_user(self: &Arc<Self>, project: &str, user_id: &str) -> Result<u64> {
        if user_id.is_empty() {
            return Err(Error::invalid("user_id", "must not be empty"));
        }
        ingest::validate_user_id("user_id", user_id)?;
        let entry = self.project(project)?;
        let user = user_id.to_owned();
        let events = self
            .read_project(&entry, move |_, state| {
                let table = &state.data.table;
                Ok(table.find_user(&user).map(|person| table.user_rows(person).len() as u64))
            })
            .await?;
        let Some(events) = events else {
            return Ok(0);
        };
        let record = LogRecord::UserDeleted { project: project.to_owned(), user_id: user_id.to_owned() };
        self.write(entry, vec![record], vec![]).await?;
        tracing::info!(project = %project, events, "user erased");
        Ok(events)
    }

    /// The rows an export returns, ordered by time then arrival, with the table generation
    /// they belong to (see `events_at`).
    pub fn export_rows(
        &self,
        project: &str,
        range: TimeRange,
        names: &[String],
        user_id: &str,
    ) -> Result<(Vec<u32>, u64)> {
        let entry = self.project(project)?;
        let state = entry.read();
        let table = &state.data.table;
        let generation = table.generation();
        let name_ids: Vec<u32> = names.iter().filter_map(|n| table.names().get(n)).collect();
        if !names.is_empty() && name_ids.is_empty() {
            return Ok((Vec::new(), generation));
        }
        let name_ok = |row: usize| name_ids.is_empty() || name_ids.contains(&table.name()[row]);
        let mut rows: Vec<u32> = if user_id.is_empty() {
            (0..table.len() as u32)
                .filter(|&r| range.contains(table.time()[r as usize]) && name_ok(r as usize))
                .collect()
        } else {
            let Some(person) = table.find_user(user_id) else {
                return Ok((Vec::new(), generation));
            };
            table.user_rows(person)
        };
        if !user_id.is_empty() {
            rows.retain(|&r| range.contains(table.time()[r as usize]) && name_ok(r as usize));
        }
        rows.sort_unstable_by_key(|&r| (table.time()[r as usize], r));
        Ok((rows, generation))
    }

    /// Events at rows listed by `export_rows`. A deletion in between renumbers rows: then the
    /// export fails with ABORTED (retry) rather than return other events.
    pub fn events_at(&self, project: &str, rows: &[u32], generation: u64) -> Result<Vec<Event>> {
        let entry = self.project(project)?;
        let state = entry.read();
        if state.data.table.generation() != generation {
            return Err(Error::Aborted("events were deleted while the export ran; retry".into()));
        }
        Ok(rows.iter().map(|&r| state.data.table.event(r as usize)).collect())
    }
}
