//! A project's events as the analyses read them: the columnar table and its person order,
//! traits, quarantine and MANUAL values, with the caches derived from them; and the log record
//! that changes them.

pub mod cold_rows;
pub mod column;
pub mod deferred;
pub mod embedded;
pub mod person_batch;
pub mod person_order;
pub mod props;
pub mod record;
pub mod remote;
pub mod segment;
pub mod source;
pub mod table;
pub mod times;
pub mod tombstones;
pub mod trait_groups;
pub mod traits;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::core::model::{ManualValue, Micros, QuarantinedEvent, UserUpdate};
use person_order::PersonOrderCache;
use record::LogRecord;
use table::EventTable;
use trait_groups::TraitGroupCache;

/// One project's data. The writer applies durable log records to it under the project's write
/// lock; analyses read it under the read lock and never see the engine.
#[derive(Debug, Default)]
pub struct ProjectData {
    pub table: EventTable,
    /// Per user person id: traits by name. Shared with the forks of this data until one of
    /// them changes its traits (`traits_mut`).
    pub traits: Arc<deferred::Deferred<traits::Traits>>,
    pub quarantine: BTreeMap<u64, QuarantinedEvent>,
    /// MANUAL metric values by metric key, keyed by (timestamp, dimensions).
    pub manual: HashMap<String, BTreeMap<(Micros, String), ManualValue>>,
    /// Events by person then time, for funnels and retention; rebuilt lazily.
    pub person_order: PersonOrderCache,
    /// The traits file the last checkpoint listed: (`Traits::changes` then, file, checksum).
    /// Shared with the data's forks: it describes the disk, not one version of the data.
    pub traits_file: Arc<parking_lot::Mutex<Option<(u64, String, u64)>>>,
    /// The removed rows' file the last checkpoint listed: (how many rows it holds, file,
    /// checksum). Rows are only ever added to it until a compaction makes a new table.
    pub removed_file: Arc<parking_lot::Mutex<Option<(usize, String, u64)>>>,
    pub trait_groups: TraitGroupCache,
    /// Dedupe keys of deleted users' events: compaction writes them in place of the events, so
    /// re-sent events of a deleted user stay duplicates. (Expired events need none: Track
    /// refuses events older than the retention.)
    pub erased_keys: Vec<u128>,
    /// Something was deleted or expired since the log was last rewritten: its bytes are still
    /// on disk until the next compaction.
    pub needs_compaction: std::sync::atomic::AtomicBool,
    /// The latest retention cutoff applied (`EventsExpired`): a remote engine's reads start
    /// there, since its own removal runs in the background.
    pub expired_before: Option<Micros>,
}

impl ProjectData {
    /// No data yet, the event columns in files of `columns` (or in memory).
    pub fn in_space(columns: Option<&Arc<column::ColumnSpace>>) -> ProjectData {
        let table = columns.map_or_else(EventTable::default, |space| EventTable::in_space(space.clone()));
        ProjectData { table, ..ProjectData::default() }
    }

    /// The same data, for a snapshot: queries that hold this one read it unchanged while the
    /// writer changes the fork. The columns share their files (see `EventTable::fork`), the
    /// traits are shared until one side changes them, the rest is copied. Only the fork may
    /// change from then on.
    pub fn fork(&self) -> ProjectData {
        ProjectData {
            table: self.table.fork(),
            traits: self.traits.clone(),
            quarantine: self.quarantine.clone(),
            manual: self.manual.clone(),
            person_order: self.person_order.fork(),
            traits_file: self.traits_file.clone(),
            removed_file: self.removed_file.clone(),
            trait_groups: self.trait_groups.fork(),
            erased_keys: self.erased_keys.clone(),
            needs_compaction: std::sync::atomic::AtomicBool::new(
                self.needs_compaction.load(std::sync::atomic::Ordering::Relaxed),
            ),
            expired_before: self.expired_before,
        }
    }

    /// The traits, to change (copied first when a snapshot still shares them).
    pub fn traits_mut(&mut self) -> &mut traits::Traits {
        Arc::make_mut(&mut self.traits).get_mut()
    }

    /// Waits for what a start of a checkpoint builds after the port opens (`Deferred`): the
    /// interners' lookups and the traits. The error of one that failed.
    pub fn loaded(&self) -> Result<(), String> {
        self.table.lookups_built()?;
        self.traits.outcome().map(|_| ()).map_err(str::to_owned)
    }

    /// Applies a durable log record. For `Events`, `keep[i]` says whether event i is new
    /// (not a duplicate); an empty `keep` keeps every event.
    pub fn apply(&mut self, record: &LogRecord, keep: &[bool]) {
        match record {
            LogRecord::Events { events, .. } => {
                for (i, event) in events.iter().enumerate() {
                    if keep.get(i).copied().unwrap_or(true) {
                        self.table.push(event);
                    }
                }
            }
            LogRecord::Users { updates, .. } => {
                for update in updates {
                    self.apply_user_update(update);
                }
            }
            LogRecord::Alias { anonymous_id, user_id, .. } => self.table.alias(anonymous_id, user_id),
            LogRecord::Aliases { pairs, .. } => {
                for (anonymous_id, user_id) in pairs {
                    self.table.alias(anonymous_id, user_id);
                }
            }
            LogRecord::Quarantined { entries, .. } => {
                for entry in entries {
                    self.quarantine.insert(entry.id, entry.clone());
                }
            }
            LogRecord::Unquarantined { ids, .. } => {
                for id in ids {
                    self.quarantine.remove(id);
                }
            }
            LogRecord::ManualValues { metric_key, values, .. } => self.add_manual(metric_key, values),
            LogRecord::ManualCleared { metric_key, .. } => {
                self.manual.remove(metric_key);
            }
            LogRecord::UserDeleted { project, user_id } => {
                self.erase_user(project, user_id);
                *self.needs_compaction.get_mut() = true;
            }
            LogRecord::EventsExpired { before, .. } => {
                self.expired_before = self.expired_before.max(Some(*before));
                self.expire(*before);
                *self.needs_compaction.get_mut() = true;
            }
            LogRecord::SeenIds { keys, .. } => self.erased_keys.extend_from_slice(keys),
        }
    }

    /// The same data rebuilt from `checkpoint`'s records into new columns and interners, which
    /// hold nothing deleted or expired (compaction swaps it in).
    pub fn rebuilt(
        &self,
        project: &str,
        space: &std::sync::Arc<column::ColumnSpace>,
    ) -> crate::error::Result<ProjectData> {
        let mut fresh = ProjectData::in_space(Some(space));
        self.checkpoint(project, &mut |record| {
            fresh.apply(&record, &[]);
            Ok(())
        })?;
        fresh.settle_removals();
        // Caches keyed by the generation (readouts) must not take the new rows for old ones.
        fresh.table.generation = self.table.generation + 1;
        Ok(fresh)
    }

    /// Puts `rebuilt` (a compaction's, holding the same log as this data) in this one's place
    /// and gives this one back: its rows are renumbered, so its generation moves past this
    /// one's.
    pub fn replace_with(&mut self, mut rebuilt: ProjectData) -> ProjectData {
        rebuilt.table.generation = rebuilt.table.generation.max(self.table.generation + 1);
        rebuilt.expired_before = rebuilt.expired_before.max(self.expired_before);
        std::mem::replace(self, rebuilt)
    }

    /// Stores values of a MANUAL metric; one with the timestamp and dimensions of an earlier
    /// one replaces it.
    pub(crate) fn add_manual(&mut self, metric_key: &str, values: &[ManualValue]) {
        let stored = self.manual.entry(metric_key.to_owned()).or_default();
        for value in values {
            let key = (value.timestamp, format!("{:?}", value.dimensions));
            stored.insert(key, value.clone());
        }
    }

    /// Ends the removals of the records applied since the last call (DeleteUser, retention:
    /// `EventTable::settle_removals`). The writer calls it after each job, a replay once at
    /// the end. Returns whether rows were removed.
    pub fn settle_removals(&mut self) -> bool {
        self.table.settle_removals()
    }

    /// The log records that rebuild this data as it is now, and nothing that was deleted or
    /// expired: what compaction writes in place of the project's history. Replaying them
    /// gives the same rows in the same order, traits, aliases, quarantine, MANUAL values and
    /// dedupe keys.
    pub fn checkpoint(
        &self,
        project: &str,
        emit: &mut dyn FnMut(LogRecord) -> crate::error::Result<()>,
    ) -> crate::error::Result<()> {
        const EVENTS_PER_RECORD: usize = 10_000;
        let project = || project.to_owned();
        let table = &self.table;
        if !self.erased_keys.is_empty() {
            emit(LogRecord::SeenIds { project: project(), keys: self.erased_keys.clone() })?;
        }
        let mut events = Vec::with_capacity(EVENTS_PER_RECORD);
        for row in (0..table.len()).filter(|&row| !table.is_removed(row)) {
            events.push(table.event(row));
            if events.len() == EVENTS_PER_RECORD {
                emit(LogRecord::Events { project: project(), events: std::mem::take(&mut events) })?;
            }
        }
        if !events.is_empty() {
            emit(LogRecord::Events { project: project(), events })?;
        }
        let people = self.traits.users();
        for chunk in people.chunks(EVENTS_PER_RECORD) {
            let updates = chunk
                .iter()
                .map(|(person, traits)| UserUpdate {
                    user_id: table.person_name(*person).to_owned(),
                    set: traits.clone(),
                    set_once: Vec::new(),
                    unset: Vec::new(),
                })
                .collect();
            emit(LogRecord::Users { project: project(), at: 0, updates })?;
        }
        let mut aliases: Vec<(u32, u32)> = table
            .aliases()
            .iter()
            .flat_map(|(&user, anonymous)| anonymous.iter().map(move |&anon| (user, anon)))
            .collect();
        aliases.sort_unstable();
        for chunk in aliases.chunks(EVENTS_PER_RECORD) {
            let pairs = chunk
                .iter()
                .map(|&(user, anon)| (table.person_name(anon).to_owned(), table.person_name(user).to_owned()))
                .collect();
            emit(LogRecord::Aliases { project: project(), pairs })?;
        }
        if !self.quarantine.is_empty() {
            emit(LogRecord::Quarantined { project: project(), entries: self.quarantine.values().cloned().collect() })?;
        }
        let mut metric_keys: Vec<&String> = self.manual.keys().collect();
        metric_keys.sort_unstable();
        for metric_key in metric_keys {
            let values = &self.manual[metric_key];
            emit(LogRecord::ManualValues {
                project: project(),
                metric_key: metric_key.clone(),
                values: values.values().cloned().collect(),
            })?;
        }
        Ok(())
    }

    /// Marks the user's events (aliased anonymous ids' included) for erasure and forgets its
    /// traits, aliases and quarantined events at once.
    fn erase_user(&mut self, project: &str, user_id: &str) {
        let table = &mut self.table;
        let Some(person) = table.find_user(user_id) else {
            return;
        };
        for row in table.user_rows(person) {
            self.erased_keys.push(record::event_key(project, &table.row_event_id(row as usize)));
            table.erase(row);
        }
        let anonymous: std::collections::HashSet<String> =
            table.unalias_all(person).into_iter().map(|a| table.person_name(a).to_owned()).collect();
        self.traits_mut().remove(person);
        self.quarantine.retain(|_, q| {
            let event = &q.event;
            event.user_id != user_id && !(event.user_id.is_empty() && anonymous.contains(&event.anonymous_id))
        });
    }

    /// Marks events older than `before` for erasure and drops old quarantined events.
    fn expire(&mut self, before: Micros) {
        self.table.remove_before(before);
        self.quarantine.retain(|_, q| q.event.timestamp >= before);
    }

    fn apply_user_update(&mut self, update: &UserUpdate) {
        let person = self.table.user_person(&update.user_id);
        self.traits_mut().update(person, update);
    }
}

/// The quarantine records (of `records`: every stored record with its arrival number, in
/// order) that still hold events which have left the quarantine by the end of them (replayed,
/// a deleted user's, expired), each with the record to store in its place: the same entries
/// but those. Replaying the records with these in place gives every project the same
/// quarantine, since only entries that have left it go; an entry quarantined later is in none
/// of `records` and so untouched. A remote engine stores records for ever (it has no log to
/// compact), so this is how their bytes leave its files.
pub fn quarantine_rewrites(records: &[(u64, &[u8])]) -> crate::error::Result<Vec<(u64, crate::storage::Encoded)>> {
    let mut projects: HashMap<String, ProjectData> = HashMap::new();
    let mut quarantined = Vec::new();
    for &(seq, value) in records {
        let record = record::decode_record(value)?;
        projects.entry(record.project().to_owned()).or_default().apply(&record, &[]);
        if let LogRecord::Quarantined { project, entries } = record {
            quarantined.push((seq, project, entries));
        }
    }
    let mut rewrites = Vec::new();
    for (seq, project, entries) in quarantined {
        let current = &projects[&project].quarantine;
        if entries.iter().all(|entry| current.contains_key(&entry.id)) {
            continue;
        }
        let entries = entries.into_iter().filter(|entry| current.contains_key(&entry.id)).collect();
        rewrites.push((seq, record::encode_record(&LogRecord::Quarantined { project, entries })?));
    }
    Ok(rewrites)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::{Event, Value};

    #[test]
    fn quarantine_records_lose_exactly_the_entries_that_left_and_replay_the_same() {
        let entry = |id: u64, user: &str, t: Micros| QuarantinedEvent {
            id,
            event: event(&format!("q{id}"), user, "", t, &format!("secret of {user}")),
            reasons: vec!["unknown event".into()],
            received: t,
        };
        let quarantined =
            |project: &str, entries: Vec<QuarantinedEvent>| LogRecord::Quarantined { project: project.into(), entries };
        let history = vec![
            quarantined("p", vec![entry(1, "gone", 50), entry(2, "kept", 50)]),
            quarantined("p", vec![entry(3, "gone", 60)]),
            quarantined("p", vec![entry(4, "kept", 5), entry(5, "kept", 70)]),
            // Another project's entry 1 is another entry.
            quarantined("q", vec![entry(1, "gone", 50)]),
            LogRecord::ManualValues {
                project: "p".into(),
                metric_key: "spend".into(),
                values: vec![ManualValue { timestamp: 3, value: 9.5, dimensions: vec![] }],
            },
            // DeleteUser of "gone", then retention at 10, then a replay of entry 5.
            LogRecord::Unquarantined { project: "p".into(), ids: vec![1, 3] },
            LogRecord::EventsExpired { project: "p".into(), before: 10 },
            LogRecord::Unquarantined { project: "p".into(), ids: vec![5] },
            // Quarantined after the entries left: untouched.
            quarantined("p", vec![entry(6, "gone", 80)]),
        ];
        let encoded: Vec<Vec<u8>> = history.iter().map(|r| record::encode_record(r).unwrap().0).collect();
        let stored: Vec<(u64, &[u8])> =
            encoded.iter().enumerate().map(|(i, v)| (10 * i as u64, v.as_slice())).collect();
        let rewrites = quarantine_rewrites(&stored).unwrap();
        let decoded: Vec<(u64, LogRecord)> =
            rewrites.iter().map(|(seq, value)| (*seq, record::decode_record(&value.0).unwrap())).collect();
        assert_eq!(
            decoded,
            vec![
                (0, quarantined("p", vec![entry(2, "kept", 50)])),
                (10, quarantined("p", vec![])),
                (20, quarantined("p", vec![])),
            ]
        );
        // Rewritten, the records rebuild each project's quarantine and values as before, and a
        // second pass finds nothing left to rewrite.
        let mut rewritten = encoded.clone();
        for (seq, value) in &rewrites {
            rewritten[(*seq / 10) as usize] = value.0.clone();
        }
        let rebuild = |values: &[Vec<u8>], project: &str| {
            let records: Vec<LogRecord> = values.iter().map(|v| record::decode_record(v).unwrap()).collect();
            let records: Vec<LogRecord> = records.into_iter().filter(|r| r.project() == project).collect();
            let data = replay(&records);
            (data.quarantine, data.manual)
        };
        for project in ["p", "q"] {
            assert_eq!(rebuild(&rewritten, project), rebuild(&encoded, project), "{project}");
        }
        let stored_entries: Vec<(String, u64)> = rewritten
            .iter()
            .filter_map(|v| match record::decode_record(v).unwrap() {
                LogRecord::Quarantined { project, entries } => Some((project, entries)),
                _ => None,
            })
            .flat_map(|(project, entries)| entries.into_iter().map(move |e| (project.clone(), e.id)))
            .collect();
        assert_eq!(stored_entries, vec![("p".into(), 2), ("q".into(), 1), ("p".into(), 6)]);
        let again: Vec<(u64, &[u8])> =
            rewritten.iter().enumerate().map(|(i, v)| (10 * i as u64, v.as_slice())).collect();
        assert!(quarantine_rewrites(&again).unwrap().is_empty());
        // A value that is not a record is an error, not a guess.
        assert!(quarantine_rewrites(&[(0, b"\x07junk".as_slice())]).is_err());
    }

    fn event(id: &str, user: &str, anon: &str, t: Micros, note: &str) -> Event {
        let properties = vec![("note".into(), Value::String(note.into()))];
        Event { properties, ..table::test_event(id, user, anon, t) }
    }

    /// Sets `user`'s plan trait.
    fn set(user: &str, plan: &str) -> UserUpdate {
        UserUpdate {
            user_id: user.into(),
            set: vec![("plan".into(), Value::String(plan.into()))],
            set_once: vec![],
            unset: vec![],
        }
    }

    fn replay(records: &[LogRecord]) -> ProjectData {
        let mut data = ProjectData::default();
        for record in records {
            data.apply(record, &[]);
        }
        data.settle_removals();
        data
    }

    /// The records a checkpoint of `data` holds, and each person's rows in a person-ordered
    /// scan: what a query can see of it.
    fn seen(data: &ProjectData) -> (Vec<LogRecord>, Vec<(String, Vec<String>)>) {
        let mut records = Vec::new();
        data.checkpoint("p", &mut |record| {
            records.push(record);
            Ok(())
        })
        .unwrap();
        let mut people = Vec::new();
        let source = data.source();
        crate::core::store::source::EventSource::for_each(&source, source::Scan::all(), |person, events| {
            let ids = events.rows.iter().map(|&row| data.table.row_event_id(row as usize).into_owned()).collect();
            people.push((data.table.person_name(person).to_owned(), ids));
        });
        (records, people)
    }

    /// A fork (the writer's next version, `ProjectEntry`) takes every kind of record while the
    /// data it forked from, which queries still read, stays exactly as it was; the fork ends up
    /// as the records replayed from nothing.
    #[test]
    fn a_fork_changes_while_the_data_it_forked_from_stays_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let space = column::ColumnSpace::durable_for_tests(dir.path());
        let p = || "p".to_owned();
        let before = vec![
            LogRecord::Events {
                project: p(),
                events: (0..5_000).map(|i| event(&format!("k{i}"), &format!("u{}", i % 40), "", i, "kept")).collect(),
            },
            LogRecord::Events { project: p(), events: vec![event("a1", "", "anon", 6, "secret")] },
            LogRecord::Users { project: p(), at: 1, updates: vec![set("u1", "x"), set("u2", "pro")] },
        ];
        let after = vec![
            LogRecord::Events {
                project: p(),
                events: (0..3_000)
                    .map(|i| event(&format!("n{i}"), &format!("u{}", i % 70), "", 9_000 + i, "new"))
                    .collect(),
            },
            LogRecord::Alias { project: p(), anonymous_id: "anon".into(), user_id: "u1".into() },
            LogRecord::Users { project: p(), at: 2, updates: vec![set("u2", "team"), set("u50", "free")] },
            LogRecord::UserDeleted { project: p(), user_id: "u3".into() },
            LogRecord::EventsExpired { project: p(), before: 100 },
            LogRecord::ManualValues {
                project: p(),
                metric_key: "spend".into(),
                values: vec![ManualValue { timestamp: 3, value: 9.5, dimensions: vec![] }],
            },
        ];
        let mut written = ProjectData::in_space(Some(&space));
        before.iter().for_each(|record| written.apply(record, &[]));
        written.settle_removals();
        // As a start finds it: loaded from a checkpoint's files, the lookups built after.
        let files = written.save(&space).unwrap();
        space.pin_also(files.files());
        drop(written);
        let original = ProjectData::load(&space, &files).unwrap();
        let as_it_was = seen(&original);
        assert_eq!(as_it_was.1.len(), 41);

        let mut fork = original.fork();
        after.iter().for_each(|record| fork.apply(record, &[]));
        fork.settle_removals();
        assert_eq!(seen(&original), as_it_was, "the data a query reads does not change under it");
        assert_ne!(seen(&fork), as_it_was);
        let all: Vec<LogRecord> = before.into_iter().chain(after).collect();
        assert_eq!(seen(&fork), seen(&replay(&all)));
        // The fork outlives the data it forked from, whose files it shares.
        drop(original);
        assert_eq!(seen(&fork), seen(&replay(&all)));
    }

    #[test]
    fn a_checkpoint_replays_to_the_same_data_without_what_was_deleted() {
        let p = || "p".to_owned();
        let history = vec![
            LogRecord::Events {
                project: p(),
                events: (0..25_000).map(|i| event(&format!("k{i}"), "keeper", "", i, "kept")).collect(),
            },
            LogRecord::Events {
                project: p(),
                events: vec![event("v1", "victim", "", 5, "secret"), event("a1", "", "anon", 6, "secret")],
            },
            LogRecord::Events { project: p(), events: vec![event("a2", "", "anon2", 7, "kept")] },
            LogRecord::Users { project: p(), at: 1, updates: vec![set("victim", "x"), set("keeper", "pro")] },
            LogRecord::Alias { project: p(), anonymous_id: "anon".into(), user_id: "victim".into() },
            LogRecord::Alias { project: p(), anonymous_id: "anon2".into(), user_id: "keeper".into() },
            LogRecord::ManualValues {
                project: p(),
                metric_key: "spend".into(),
                values: vec![ManualValue { timestamp: 3, value: 9.5, dimensions: vec![] }],
            },
            LogRecord::UserDeleted { project: p(), user_id: "victim".into() },
        ];
        let original = replay(&history);
        let mut checkpoint = Vec::new();
        original
            .checkpoint("p", &mut |record| {
                checkpoint.push(record);
                Ok(())
            })
            .unwrap();
        // 25,001 events in records of at most 10,000, the removed ids as keys only.
        let sizes: Vec<usize> = checkpoint
            .iter()
            .filter_map(|r| match r {
                LogRecord::Events { events, .. } => Some(events.len()),
                _ => None,
            })
            .collect();
        assert_eq!(sizes, vec![10_000, 10_000, 5_001]);
        let aliases: Vec<&LogRecord> = checkpoint.iter().filter(|r| matches!(r, LogRecord::Aliases { .. })).collect();
        assert!(
            matches!(aliases[..], [LogRecord::Aliases { pairs, .. }] if *pairs == vec![("anon2".to_string(), "keeper".to_string())])
        );
        let text = format!("{checkpoint:?}");
        assert!(!text.contains("victim") && !text.contains("secret") && !text.contains("\"anon\""), "{text:.300}");
        assert!(matches!(&checkpoint[0], LogRecord::SeenIds { keys, .. }
            if *keys == vec![record::event_key("p", "v1"), record::event_key("p", "a1")]));

        let rebuilt = replay(&checkpoint);
        let table = &rebuilt.table;
        let live: Vec<usize> = (0..original.table.len()).filter(|&row| !original.table.is_removed(row)).collect();
        assert_eq!(table.len(), live.len());
        for (row, &was) in live.iter().enumerate() {
            assert_eq!(table.event(row), original.table.event(was));
        }
        let keeper = table.find_user("keeper").unwrap();
        assert_eq!(rebuilt.traits.of(keeper).unwrap(), vec![("plan".to_owned(), Value::String("pro".into()))]);
        assert_eq!(rebuilt.traits.len(), 1);
        assert_eq!(table.user_rows(keeper).len(), 25_001, "the alias of anon2 survives");
        assert_eq!(rebuilt.manual, original.manual);
        assert_eq!(rebuilt.erased_keys, original.erased_keys);
        assert!(table.find_user("victim").is_none() && table.find_anonymous("anon").is_none());
    }
}
