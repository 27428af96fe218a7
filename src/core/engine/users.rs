//! Users: profiles, timelines and raw event export.

use std::sync::Arc;

use crate::core::engine::{Engine, compaction};
use crate::core::ingest;
use crate::core::model::{Event, Micros, TimeRange, UserProfile};
use crate::core::page::PageRequest;
use crate::core::store::ProjectData;
use crate::core::store::record::LogRecord;
use crate::core::store::remote::Fetch;
use crate::core::store::source::{EventSource, Scan};
use crate::error::{Error, Result, echo};

/// What an export sends (see `Engine::export`).
pub enum Export {
    Rows { rows: Vec<u32>, generation: u64 },
    Events(Vec<Event>),
}

/// The person of `user_id` when GetUser and ListUserEvents find them: with events, their own
/// or an aliased anonymous id's, or with traits (`EventSource::known`, which a remote engine's
/// batch answers the same way).
fn known_user(data: &ProjectData, user_id: &str) -> Option<u32> {
    data.table.find_user(user_id).filter(|&person| data.source().known(person))
}

/// The most events one export message carries.
pub const EXPORT_CHUNK: usize = 1000;

impl Engine {
    pub fn get_user(&self, project: &str, user_id: &str) -> Result<UserProfile> {
        if user_id.is_empty() {
            return Err(Error::invalid("user_id", "must not be empty"));
        }
        ingest::validate_user_id("user_id", user_id)?;
        let entry = self.project(project)?;
        let not_found = || Error::NotFound(format!("user {user_id} not found", user_id = echo(user_id)));
        if let Some(remote) = self.remote() {
            let batch = remote.person_batch(project, &Fetch::of_user(user_id))?;
            let person = batch.find_person(user_id).filter(|&p| batch.known(p)).ok_or_else(not_found)?;
            let mut times = Vec::new();
            batch.for_each(Scan::all(), |p, events| {
                if p == person {
                    times.extend_from_slice(events.times);
                }
            });
            let anonymous_ids = remote.anonymous_ids(project, user_id)?;
            return Ok(UserProfile {
                user_id: user_id.to_owned(),
                traits: batch.traits_of(person),
                anonymous_ids,
                first_seen: times.first().copied(),
                last_seen: times.last().copied(),
                events: times.len() as u64,
            });
        }
        let state = entry.read();
        let table = &state.data.table;
        let person = known_user(&state.data, user_id).ok_or_else(not_found)?;
        let rows = table.user_rows(person);
        let traits = state.data.traits.of(person);
        let anonymous_ids = table
            .aliases()
            .get(&person)
            .map(|anons| anons.iter().map(|&a| table.person_name(a).to_owned()).collect())
            .unwrap_or_default();
        Ok(UserProfile {
            user_id: user_id.to_owned(),
            traits: traits.map(|t| t.into_iter().collect()).unwrap_or_default(),
            anonymous_ids,
            first_seen: rows.first().map(|&r| table.time_of(r as usize)),
            last_seen: rows.last().map(|&r| table.time_of(r as usize)),
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
        let not_found = || Error::NotFound(format!("user {user_id} not found", user_id = echo(user_id)));
        if let Some(remote) = self.remote() {
            let fetch = Fetch {
                from: range.from.unwrap_or(Micros::MIN),
                to: range.to.unwrap_or(Micros::MAX),
                ..Fetch::of_user(user_id)
            };
            let mut events: Vec<Event> = remote.events_as_sent(project, &fetch)?.into_iter().map(|(_, e)| e).collect();
            if events.is_empty() && !self.remote_user_known(project, user_id)? {
                return Err(not_found());
            }
            let position = |e: &Event| (e.timestamp, e.event_id.clone());
            events.retain(|e| after.as_ref().is_none_or(|(time, id)| (e.timestamp, e.event_id.as_str()) > (*time, id)));
            events.sort_unstable_by_key(position);
            let size = page.size();
            let next = match events.get(size.saturating_sub(1)) {
                Some(last) if events.len() > size => crate::core::page::time_token_for(last.timestamp, &last.event_id),
                _ => String::new(),
            };
            events.truncate(size);
            return Ok((events, next));
        }
        let state = entry.read();
        let table = &state.data.table;
        // Found exactly when GetUser finds the user, on either engine: a deleted user is gone,
        // also before compaction renumbers anything.
        let person = known_user(&state.data, user_id).ok_or_else(not_found)?;
        // Each row's (time, event id) once: ids are decoded from their blocks.
        let mut rows: Vec<(Micros, String, u32)> = table
            .user_rows(person)
            .into_iter()
            .filter(|&r| range.contains(table.time_of(r as usize)))
            .map(|r| (table.time_of(r as usize), table.row_event_id(r as usize).into_owned(), r))
            .filter(|(time, id, _)| {
                after.as_ref().is_none_or(|(after_time, after_id)| (*time, id) > (*after_time, after_id))
            })
            .collect();
        rows.sort_unstable();
        let size = page.size();
        let next = match rows.get(size.saturating_sub(1)) {
            Some((time, id, _)) if rows.len() > size => crate::core::page::time_token_for(*time, id),
            _ => String::new(),
        };
        let events = rows.iter().take(size).map(|&(_, _, r)| table.event(r as usize)).collect();
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
        if self.remote().is_some() {
            let (project_id, user) = (project.to_owned(), user.clone());
            // Tombstones even for a user without events: an alias to them is unlinked too.
            let (events, anonymous) = self
                .on_remote(move |remote| {
                    let batch = remote.person_batch(&project_id, &Fetch::of_user(&user))?;
                    let mut events = 0u64;
                    if let Some(person) = batch.find_person(&user) {
                        batch.for_each(Scan::all(), |p, rows| {
                            events += u64::from(p == person) * rows.times.len() as u64
                        });
                    }
                    Ok((events, remote.delete_user(&project_id, &user)?))
                })
                .await?;
            // Their quarantined events leave the quarantine, on every node.
            let user = user_id.to_owned();
            let leaving: Vec<u64> = self
                .read_project(&entry, move |_, state| {
                    let theirs =
                        |e: &Event| e.user_id == user || (e.user_id.is_empty() && anonymous.contains(&e.anonymous_id));
                    Ok(state.data.quarantine.values().filter(|q| theirs(&q.event)).map(|q| q.id).collect())
                })
                .await?;
            if !leaving.is_empty() {
                let record = LogRecord::Unquarantined { project: project.to_owned(), ids: leaving };
                self.write(entry, vec![record], vec![]).await?;
                // Their bytes too (AdminService.Compact sweeps again, for a retry cut short).
                self.on_remote(compaction::purge_quarantine_records).await?;
            }
            tracing::info!(project = %project, events, "user erased");
            return Ok(events);
        }
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

    /// What an export returns, ordered by time then arrival: rows of the project's table with
    /// the table generation they belong to (see `events_at`), or the events themselves when a
    /// remote engine keeps them.
    pub fn export(&self, project: &str, range: TimeRange, names: &[String], user_id: &str) -> Result<Export> {
        let entry = self.project(project)?;
        if let Some(remote) = self.remote() {
            let fetch = Fetch {
                names: (!names.is_empty()).then(|| names.to_vec()),
                from: range.from.unwrap_or(Micros::MIN),
                to: range.to.unwrap_or(Micros::MAX),
                user: (!user_id.is_empty()).then(|| user_id.to_owned()),
                traits: false,
            };
            let mut events = remote.events_as_sent(project, &fetch)?;
            events.sort_unstable_by_key(|(seq, event)| (event.timestamp, *seq));
            return Ok(Export::Events(events.into_iter().map(|(_, event)| event).collect()));
        }
        let state = entry.read();
        let table = &state.data.table;
        let generation = table.generation();
        let name_ids: Vec<u32> = names.iter().filter_map(|n| table.names().get(n)).collect();
        if !names.is_empty() && name_ids.is_empty() {
            return Ok(Export::Rows { rows: Vec::new(), generation });
        }
        let name_ok = |row: usize| name_ids.is_empty() || name_ids.contains(&table.name()[row]);
        let mut rows: Vec<u32> = if user_id.is_empty() {
            (0..table.len() as u32)
                .filter(|&r| {
                    !table.is_removed(r as usize) && range.contains(table.time_of(r as usize)) && name_ok(r as usize)
                })
                .collect()
        } else {
            let Some(person) = table.find_user(user_id) else {
                return Ok(Export::Rows { rows: Vec::new(), generation });
            };
            table.user_rows(person)
        };
        if !user_id.is_empty() {
            rows.retain(|&r| range.contains(table.time_of(r as usize)) && name_ok(r as usize));
        }
        rows.sort_unstable_by_key(|&r| (table.time_of(r as usize), r));
        Ok(Export::Rows { rows, generation })
    }

    /// Whether a remote engine knows `user_id` (events or traits).
    fn remote_user_known(&self, project: &str, user_id: &str) -> Result<bool> {
        let Some(remote) = self.remote() else {
            return Ok(false);
        };
        let batch = remote.person_batch(project, &Fetch::of_user(user_id))?;
        Ok(batch.find_person(user_id).is_some_and(|p| batch.known(p)))
    }

    /// Events at rows listed by `export_rows`. A deletion in between (which removes rows) or a
    /// compaction (which renumbers them): then the export fails with ABORTED (retry) rather
    /// than return removed or other events.
    pub fn events_at(&self, project: &str, rows: &[u32], generation: u64) -> Result<Vec<Event>> {
        let entry = self.project(project)?;
        let state = entry.read();
        if state.data.table.generation() != generation {
            return Err(Error::Aborted("events were deleted while the export ran; retry".into()));
        }
        Ok(rows.iter().map(|&r| state.data.table.event(r as usize)).collect())
    }
}
