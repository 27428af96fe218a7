//! The ingest calls of the engine: Track, Identify, Alias and quarantine replays. Each
//! validates and enforces the plan (`ingest::validate`), encodes its log records on the
//! caller's thread and waits for the single writer (`ingest::writer`) to make them durable.

use crate::core::engine::{Engine, ProjectEntry, ProjectState};
use crate::core::ingest::{self, Incoming, TrackOutcome, WriteJob, WriteResult};
use crate::core::model::{Enforcement, Event, QuarantinedEvent, UserUpdate, Value};
use crate::core::store::record::{LogRecord, encode_record};
use crate::error::{Error, Result};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::oneshot;

/// A Track batch ready for the writer (see `Engine::submit`).
struct PreparedWrite {
    entry: Arc<ProjectEntry>,
    records: Vec<LogRecord>,
    keys: Vec<u128>,
    absent_at: Option<u64>,
}

impl Engine {
    /// Encodes records here, on the caller's thread, and has the writer make them durable.
    /// `keys` are the dedupe keys of the first record's events, when it is `Events`.
    pub(crate) async fn write(
        &self,
        project: Arc<ProjectEntry>,
        records: Vec<LogRecord>,
        keys: Vec<u128>,
    ) -> Result<WriteResult> {
        self.submit(project, records, keys, None).await?.await.map_err(|_| Error::Unavailable)?
    }

    /// Queues a write job; the receiver answers once the writer made it durable. The writer
    /// handles jobs in queue order, so of two jobs repeating an id the first queued is stored.
    /// `absent_at`: see `WriteJob::absent_at`.
    ///
    /// With a remote engine (ClickHouse), events go there instead: this returns once their ids
    /// are held (their place in line), the receiver once they are stored; the other records
    /// still go through the writer (to the remote's record table).
    async fn submit(
        &self,
        project: Arc<ProjectEntry>,
        mut records: Vec<LogRecord>,
        mut keys: Vec<u128>,
        absent_at: Option<u64>,
    ) -> Result<oneshot::Receiver<Result<WriteResult>>> {
        if self.remote().is_some()
            && let Some(LogRecord::Events { .. }) = records.first()
        {
            let LogRecord::Events { project: id, events } = records.remove(0) else { unreachable!("checked above") };
            // The store runs on its own; this returns once its ids are held, which is the
            // queue position a stream's next batch waits for (`Turn`), so batches pipeline.
            let (held, holding) = oneshot::channel();
            let (stored_reply, stored) = oneshot::channel();
            let (storage, entry) = (self.storage.clone(), project.clone());
            tokio::task::spawn_blocking(move || {
                let Some(remote) = storage.remote_events() else {
                    return;
                };
                let mut held = Some(held);
                let result = remote.store_events(&id, &events, &mut || {
                    if let Some(held) = held.take() {
                        let _ = held.send(());
                    }
                });
                // Live watchers on this node see the write (other nodes' writes: at their next tick).
                entry.read_without_pending().changes.send_modify(|n| *n += 1);
                let _ = stored_reply.send(result);
            });
            // A store that failed before holding its ids drops `held`: its error comes below.
            let _ = holding.await;
            keys.clear();
            let rest = if records.is_empty() {
                None
            } else {
                Some(Box::pin(self.submit(project, records, keys, absent_at)).await?)
            };
            let (reply, receiver) = oneshot::channel();
            tokio::spawn(async move {
                let written = async {
                    let stored = stored.await.map_err(|_| Error::Unavailable)??;
                    if let Some(rest) = rest {
                        rest.await.map_err(|_| Error::Unavailable)??;
                    }
                    let accepted = stored.iter().filter(|s| **s).count() as u64;
                    let written = WriteResult { accepted, duplicates: stored.len() as u64 - accepted };
                    ::metrics::counter!("sextant_events_accepted_total").increment(written.accepted);
                    ::metrics::counter!("sextant_events_duplicate_total").increment(written.duplicates);
                    Ok(written)
                };
                let _ = reply.send(written.await);
            });
            return Ok(receiver);
        }
        let sender = self.sender.read().clone().ok_or(Error::Unavailable)?;
        let encoded = records.iter().map(encode_record).collect::<Result<Vec<_>>>()?;
        let (reply, receiver) = oneshot::channel();
        let job = WriteJob { project, records, encoded, keys, absent_at, reply };
        sender.send(ingest::WriterTask::Write(job)).await.map_err(|_| Error::Unavailable)?;
        Ok(receiver)
    }

    /// The records of an ingest step: events first (`keys` are their dedupe keys, see
    /// `event_keys`), then quarantine changes. Quarantine entries get their ids here.
    fn event_records(
        &self,
        project: &str,
        events: Vec<Event>,
        mut quarantine: Vec<QuarantinedEvent>,
        unquarantine: Vec<u64>,
    ) -> Vec<LogRecord> {
        let mut records = Vec::with_capacity(3);
        if !events.is_empty() {
            records.push(LogRecord::Events { project: project.to_owned(), events });
        }
        if !quarantine.is_empty() {
            for entry in &mut quarantine {
                entry.id = match self.remote() {
                    // Several nodes number entries: ids from the remote's write numbers.
                    Some(remote) => remote.next_id(),
                    None => self.next_quarantine_id.fetch_add(1, Ordering::Relaxed),
                };
            }
            records.push(LogRecord::Quarantined { project: project.to_owned(), entries: quarantine });
        }
        if !unquarantine.is_empty() {
            records.push(LogRecord::Unquarantined { project: project.to_owned(), ids: unquarantine });
        }
        records
    }

    /// Validates, enforces the plan, dedupes and stores a batch; returns once it is durable.
    pub async fn track(self: &Arc<Self>, project_id: &str, items: Vec<Incoming>) -> Result<TrackOutcome> {
        self.track_with_plan(project_id, items, true, Turn::default()).await
    }

    /// `track` for one batch of a stream: validated in parallel with the others, but queued for
    /// the writer only after the batch before it (`turn`), so an id repeated by two batches of
    /// one stream is stored by the earlier batch.
    pub async fn track_in_turn(
        self: &Arc<Self>,
        project_id: &str,
        items: Vec<Incoming>,
        turn: Turn,
    ) -> Result<TrackOutcome> {
        self.track_with_plan(project_id, items, true, turn).await
    }

    /// `track`, enforcing the tracking plan or not (exposures logged by the experiment
    /// service are checked against their experiment instead).
    pub(crate) async fn track_with_plan(
        self: &Arc<Self>,
        project_id: &str,
        items: Vec<Incoming>,
        enforce_plan: bool,
        mut turn: Turn,
    ) -> Result<TrackOutcome> {
        // Validation reads the project under its lock: off the executor, like every lock wait.
        let project = project_id.to_owned();
        let prepared = self.off_executor(move |engine| engine.prepare_track(&project, items, enforce_plan)).await;
        turn.wait().await;
        let (mut outcome, receiver) = match prepared {
            Ok((outcome, Some(prepared))) => {
                let submitted = self.submit(prepared.entry, prepared.records, prepared.keys, prepared.absent_at).await;
                turn.pass();
                (outcome, submitted?)
            }
            Ok((outcome, None)) => return Ok(outcome),
            Err(error) => return Err(error),
        };
        let written = receiver.await.map_err(|_| Error::Unavailable)??;
        outcome.accepted = written.accepted;
        outcome.duplicates += written.duplicates;
        Ok(outcome)
    }

    /// Validation and the tracking plan for a batch: its outcome so far and, when anything is
    /// to be stored, the write to queue.
    fn prepare_track(
        &self,
        project_id: &str,
        items: Vec<Incoming>,
        enforce_plan: bool,
    ) -> Result<(TrackOutcome, Option<PreparedWrite>)> {
        self.limits.check_batch("events", items.len())?;
        let entry = self.project(project_id)?;
        // Settings and the plan as last changed, read once: the remote lookup below and the
        // plan's judgement go by the same enforcement.
        let settings = entry.settings();
        // A remote engine's stored ids, looked up at once for the events the plan may judge
        // (see `Received::stored`); when the plan judges none, `store_events` answers.
        let remote_stored = match self.remote() {
            Some(remote) if enforce_plan && settings.project.enforcement != Enforcement::Allow => {
                let ids: Vec<String> =
                    items.iter().filter_map(|item| item.event.as_ref().ok().map(|e| e.event_id.clone())).collect();
                remote.stored_ids(project_id, &ids)?
            }
            _ => Default::default(),
        };
        let sorted = {
            // What quarantine holds: no waiting for a query on the project (see
            // `ProjectEntry::read_without_pending`).
            let state = entry.read_without_pending();
            let enforcement = if enforce_plan { settings.project.enforcement } else { Enforcement::Allow };
            let held: std::collections::HashSet<&str> =
                state.data.quarantine.values().map(|q| q.event.event_id.as_str()).collect();
            let mut held_pending = std::collections::HashSet::new();
            entry.pending_quarantine(|record| {
                if let LogRecord::Quarantined { entries, .. } = record {
                    held_pending.extend(entries.iter().map(|q| q.event.event_id.clone()));
                }
            });
            let stored =
                |id: &str| remote_stored.contains(id) || self.seen.read().contains(&ingest::event_key(project_id, id));
            let quarantined = |id: &str| held.contains(id) || held_pending.contains(id);
            let (key_known, keys) = self.property_keys(&state);
            let received = ingest::Received { stored: &stored, quarantined: &quarantined, key_known: &key_known, keys };
            let now = self.clock.now();
            let cutoff = settings.project.retention_cutoff(now);
            ingest::sort_batch(items, enforcement, &settings.defs.event_types, &self.limits, now, cutoff, &received)
        };
        let mut outcome = sorted.outcome;
        // Ids stored before are answered here and never written again: a client re-sending a
        // deleted user's events must not put them back on disk. (Two batches racing with one
        // new id are still settled by the writer.)
        let mut accepted = sorted.accepted;
        let mut keys = event_keys(project_id, &accepted);
        let (known, mark): (Vec<bool>, u64) = {
            let seen = self.seen.read();
            (seen.contains_each(&keys), seen.mark())
        };
        // The writer publishes ids only once their job is applied or queued on the project,
        // which every later read applies first: a known id means a visible event, as an ack must.
        let duplicates = known.iter().filter(|k| **k).count();
        let answered_here = duplicates > 0;
        if answered_here {
            outcome.duplicates += duplicates as u64;
            (accepted, keys) =
                accepted.into_iter().zip(keys).zip(&known).filter(|(_, known)| !**known).map(|(pair, _)| pair).unzip();
        }
        // When no key left was known at `mark`, the writer checks only ids added since;
        // otherwise (known ids left for it to answer) it checks them all.
        let absent_at = (duplicates == 0 || answered_here).then_some(mark);
        outcome.quarantined = sorted.quarantined.len() as u64;
        ::metrics::counter!("sextant_events_rejected_total").increment(outcome.rejected.len() as u64);
        ::metrics::counter!("sextant_events_quarantined_total").increment(outcome.quarantined);
        if accepted.is_empty() && sorted.quarantined.is_empty() {
            return Ok((outcome, None));
        }
        let records = self.event_records(project_id, accepted, sorted.quarantined, vec![]);
        Ok((outcome, Some(PreparedWrite { entry, records, keys, absent_at })))
    }

    /// Applies trait updates; invalid items (already failed in decoding, as `(user_id, error)`,
    /// or failing validation here) are returned with their index and skipped.
    pub async fn identify(
        self: &Arc<Self>,
        project_id: &str,
        updates: Vec<Result<UserUpdate, (String, Error)>>,
    ) -> Result<(u64, Vec<ingest::ItemError>)> {
        self.limits.check_batch("users", updates.len())?;
        let entry = self.project(project_id)?;
        // The trait names the project holds are read under its lock: off the executor.
        let checking = entry.clone();
        let (valid, rejected) =
            self.off_executor(move |engine| Ok(engine.check_user_updates(&checking, updates))).await?;
        if valid.is_empty() {
            return Ok((0, rejected));
        }
        let updated = valid.len() as u64;
        if self.remote().is_some() {
            let project = project_id.to_owned();
            self.on_remote(move |remote| remote.store_user_updates(&project, &valid)).await?;
            return Ok((updated, rejected));
        }
        let record = LogRecord::Users { project: project_id.to_owned(), at: self.clock.now(), updates: valid };
        self.write(entry, vec![record], vec![]).await?;
        Ok((updated, rejected))
    }

    /// Whether the project holds a property key, and how many it holds, for a `KeyBudget`. The
    /// embedded table's key space is bounded (`Limits::max_property_keys`); a remote engine's
    /// is not, and then no key counts as new.
    fn property_keys<'a>(&self, state: &'a ProjectState) -> (impl Fn(&str) -> bool + 'a, usize) {
        let (keys, remote) = (state.data.table.keys(), self.remote().is_some());
        (move |key: &str| remote || keys.get(key).is_some(), keys.len())
    }

    /// Validates trait updates and keeps the trait names they add within
    /// `Limits::max_property_keys`: the valid ones, and the rejected ones with their index.
    fn check_user_updates(
        &self,
        entry: &ProjectEntry,
        updates: Vec<Result<UserUpdate, (String, Error)>>,
    ) -> (Vec<UserUpdate>, Vec<ingest::ItemError>) {
        let state = entry.read_without_pending();
        let traits = &state.data.traits;
        // A remote engine's key space is not bounded: no name counts as new there.
        let remote = self.remote().is_some();
        let known = |name: &str| remote || traits.has_name(name);
        let held = if remote { 0 } else { traits.name_count() };
        let mut budget = ingest::KeyBudget::new(&known, held, self.limits.max_property_keys, "trait names");
        let mut valid = Vec::with_capacity(updates.len());
        let mut rejected = Vec::new();
        for (index, update) in updates.into_iter().enumerate() {
            let checked = update.and_then(|u| {
                let lists: [(&str, &[(String, Value)]); 2] = [("set", &u.set), ("set_once", &u.set_once)];
                let checked = ingest::validate_user_update(index, &u, &self.limits)
                    .and_then(|()| budget.admit(&lists).map_err(|e| e.under(&format!("users[{index}]"))));
                match checked {
                    Ok(()) => Ok(u),
                    Err(error) => Err((u.user_id, error)),
                }
            });
            match checked {
                Ok(update) => valid.push(update),
                Err((user_id, error)) => {
                    rejected.push(ingest::ItemError { index: index as u32, event_id: user_id, error })
                }
            }
        }
        (valid, rejected)
    }

    pub async fn alias(&self, project_id: &str, anonymous_id: String, user_id: String) -> Result<()> {
        let entry = self.project(project_id)?;
        for (field, id) in [("anonymous_id", &anonymous_id), ("user_id", &user_id)] {
            if id.is_empty() {
                return Err(Error::invalid(field, "must not be empty"));
            }
            ingest::validate_user_id(field, id)?;
        }
        if self.remote().is_some() {
            let project = project_id.to_owned();
            return self.on_remote(move |remote| remote.store_alias(&project, &anonymous_id, &user_id)).await;
        }
        let record = LogRecord::Alias { project: project_id.to_owned(), anonymous_id, user_id };
        self.write(entry, vec![record], vec![]).await?;
        Ok(())
    }

    /// Re-checks quarantined events against the current plan and stores the ones that pass.
    pub async fn replay_quarantined(self: &Arc<Self>, project_id: &str, ids: &[u64]) -> Result<ReplayOutcome> {
        let entry = self.project(project_id)?;
        let now = self.clock.now();
        let ids = ids.to_vec();
        let (passing, leaving, mut outcome) = self
            .read_project(&entry, move |engine, state| {
                let mut outcome = ReplayOutcome::default();
                let selected: Vec<&QuarantinedEvent> = if ids.is_empty() {
                    state.data.quarantine.values().collect()
                } else {
                    let mut selected = Vec::with_capacity(ids.len());
                    for id in &ids {
                        let found = state.data.quarantine.get(id);
                        selected
                            .push(found.ok_or_else(|| Error::NotFound(format!("quarantined event {id} not found")))?);
                    }
                    selected
                };
                let mut passing = Vec::new();
                let mut leaving = Vec::new();
                // Stored events add their keys now, so they count against the project's limit
                // like a Track call's; one past it stays in quarantine.
                let (key_known, keys) = engine.property_keys(state);
                let limit = engine.limits.max_property_keys;
                let mut key_budget = ingest::KeyBudget::new(&key_known, keys, limit, "property keys");
                for entry in selected {
                    let mut event = entry.event.clone();
                    if ingest::validate_event(&mut event, 0, &engine.limits, now).is_err() {
                        outcome.rejected += 1;
                        continue;
                    }
                    let plan = state.defs.event_types.get(&event.name);
                    if !crate::core::catalog::violations(&event, plan).is_empty() {
                        outcome.remaining += 1;
                        continue;
                    }
                    if key_budget.admit(&[("properties", &event.properties)]).is_err() {
                        outcome.rejected += 1;
                        continue;
                    }
                    passing.push(event);
                    leaving.push(entry.id);
                }
                Ok((passing, leaving, outcome))
            })
            .await?;
        if leaving.is_empty() {
            return Ok(outcome);
        }
        let keys = event_keys(project_id, &passing);
        let records = self.event_records(project_id, passing, vec![], leaving);
        let written = self.write(entry, records, keys).await?;
        outcome.accepted = written.accepted;
        outcome.duplicates += written.duplicates;
        Ok(outcome)
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplayOutcome {
    pub accepted: u64,
    pub duplicates: u64,
    pub remaining: u64,
    pub rejected: u64,
}

/// A batch's place in its stream: it queues its write after the batch before it did (or
/// finished without one), then lets the next batch go. Dropping it lets the next batch go.
#[derive(Debug, Default)]
pub struct Turn {
    after: Option<oneshot::Receiver<()>>,
    then: Option<oneshot::Sender<()>>,
}

impl Turn {
    /// The turn after `previous`, and the one after it.
    pub fn chain(previous: Option<oneshot::Receiver<()>>) -> (Turn, oneshot::Receiver<()>) {
        let (then, next) = oneshot::channel();
        (Turn { after: previous, then: Some(then) }, next)
    }

    async fn wait(&mut self) {
        if let Some(after) = self.after.take() {
            // A dropped sender means the batch before finished: go on.
            let _ = after.await;
        }
    }

    fn pass(&mut self) {
        if let Some(then) = self.then.take() {
            let _ = then.send(());
        }
    }
}

/// The dedupe keys of a batch's events, in order: computed once per batch, for the fast
/// duplicate answer and the writer alike.
fn event_keys(project: &str, events: &[Event]) -> Vec<u128> {
    events.iter().map(|e| ingest::event_key(project, &e.event_id)).collect()
}
