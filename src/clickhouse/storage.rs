//! The engine on a ClickHouse cluster (`serve --storage clickhouse`): definitions and the
//! engine's small records as `Storage`, events, traits and aliases as `RemoteEvents`.
//!
//! The engine calls both from any thread, async workers included, and waits: each call runs on
//! this storage's own runtime, where the HTTP client lives, and the caller waits on a channel
//! (a runtime's `block_on` refuses to run inside another runtime).
//!
//! Every write is numbered by `Sequence`, a clock in units of 1/1024 µs that never repeats or
//! goes back on one node. Numbers from different nodes compare by their clocks: what decides
//! the latest alias, ties in time and what a deletion covered across nodes is wall-clock
//! order, as close as the nodes' clocks agree (keep them synchronised with NTP).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::clickhouse::{ClickHouse, ClickHouseConfig, Fetch};
use crate::core::model::{Event, Micros, UserUpdate, now_micros};
use crate::core::store::person_batch::PersonBatch;
use crate::core::store::record::event_key;
use crate::core::store::remote::{
    AggregateRequest, Aggregated, CohortCountRequest, CohortCounts, EventStats, RecordRewrite, RemoteEvents,
};
use crate::error::{Error, Result};
use crate::storage::{Encoded, ExtraValues, LogPosition, SnapshotVisitor, Storage};

pub struct ClickHouseStorage {
    store: ClickHouse,
    runtime: Option<tokio::runtime::Runtime>,
    sequence: Sequence,
    storing: InFlight,
    ids: Ids,
    /// Event batches, aliases and trait updates waiting for their group commits.
    events: GroupCommit<Vec<Event>, Vec<bool>>,
    aliases: GroupCommit<NumberedAlias, ()>,
    user_updates: GroupCommit<(Vec<UserUpdate>, u64), ()>,
    generation: SharedRead<u64>,
}

/// Ids unique across nodes (quarantine entries): milliseconds since 1970 times 2^20 plus 20
/// random bits, so two nodes' ids collide only in the same millisecond with the same bits
/// (one chance in a million); on one node they only grow.
#[derive(Default)]
struct Ids {
    last: parking_lot::Mutex<u64>,
}

impl Ids {
    fn next(&self) -> u64 {
        let fresh = ((now_micros().max(0) as u64 / 1000) << 20) | (rand::random::<u64>() & 0xF_FFFF);
        let mut last = self.last.lock();
        *last = fresh.max(*last + 1);
        *last
    }
}

/// Dedupe keys of the event ids being stored on this node: a batch waits for any other batch
/// holding one of its ids, so its lookup sees them stored. (Two nodes storing one id at once
/// may both answer "accepted"; reads keep one copy.)
#[derive(Default)]
struct InFlight {
    keys: parking_lot::Mutex<std::collections::HashSet<u128>>,
    done: parking_lot::Condvar,
}

impl InFlight {
    /// Waits until none of `keys` is being stored, then holds them until the guard drops.
    fn hold(&self, keys: Vec<u128>) -> Held<'_> {
        let mut held = self.keys.lock();
        while keys.iter().any(|k| held.contains(k)) {
            self.done.wait(&mut held);
        }
        held.extend(keys.iter().copied());
        Held { in_flight: self, keys }
    }
}

struct Held<'a> {
    in_flight: &'a InFlight,
    keys: Vec<u128>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut held = self.in_flight.keys.lock();
        for key in &self.keys {
            held.remove(key);
        }
        self.in_flight.done.notify_all();
    }
}

impl ClickHouseStorage {
    /// Connects and migrates the schema (see `ClickHouse::connect`). Blocking.
    pub fn open(config: &ClickHouseConfig) -> Result<Arc<ClickHouseStorage>> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("clickhouse")
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("cannot start the clickhouse client runtime: {e}")))?;
        let config = config.clone();
        let store = wait(&runtime, async move { ClickHouse::connect(&config).await })?;
        Ok(Arc::new(ClickHouseStorage {
            store,
            runtime: Some(runtime),
            sequence: Sequence::default(),
            storing: InFlight::default(),
            ids: Ids::default(),
            events: GroupCommit::new(STORE_LANES, GROUP_EVENTS),
            aliases: GroupCommit::new(STORE_LANES, GROUP_ROWS),
            user_updates: GroupCommit::new(STORE_LANES, GROUP_ROWS),
            generation: SharedRead::default(),
        }))
    }

    /// Runs `work` on the client's runtime and waits for it.
    pub(super) fn run<T: Send + 'static>(&self, work: impl FnOnce(ClickHouse) -> Work<T>) -> Result<T> {
        let runtime = self.runtime.as_ref().ok_or(Error::Unavailable)?;
        wait(runtime, work(self.store.clone()))
    }

    /// `run` for a read: when the calling query is cancelled (`core::cancel`) the read is
    /// dropped, and the ClickHouse query with its connection.
    fn read<T: Send + 'static>(&self, work: impl FnOnce(ClickHouse) -> Work<T>) -> Result<T> {
        let runtime = self.runtime.as_ref().ok_or(Error::Unavailable)?;
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        let future = work(self.store.clone());
        let task = runtime.spawn(async move {
            let _ = reply.send(future.await);
        });
        loop {
            match answer.recv_timeout(std::time::Duration::from_millis(10)) {
                Ok(result) => return result,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) if crate::core::cancel::stopped() => {
                    task.abort();
                    return Err(Error::Aborted("the call was cancelled".into()));
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Err(stopped()),
            }
        }
    }
}

/// Group commit per project: an item that finds fewer than `lanes` stores of its project
/// running leads one, storing whatever items queued meanwhile as one group (up to `max_weight`
/// rows; a heavier item goes alone) until none is left. ClickHouse wants few large inserts (each
/// makes a part on the shards it reaches: one per Alias call would pile up parts faster than
/// merges remove them, and an old server refuses inserts past 300), and a store is mostly waiting
/// for it: a few run at once.
struct GroupCommit<T, R> {
    lanes: usize,
    max_weight: usize,
    queues: parking_lot::Mutex<std::collections::HashMap<String, GroupQueue<T, R>>>,
}

/// A project's items waiting for a store (each with its weight and where its answer goes), and
/// how many callers are storing them.
struct GroupQueue<T, R> {
    waiting: Vec<(T, usize, std::sync::mpsc::SyncSender<Result<R>>)>,
    storing: usize,
}

impl<T, R> GroupCommit<T, R> {
    fn new(lanes: usize, max_weight: usize) -> Self {
        GroupCommit { lanes, max_weight, queues: Default::default() }
    }

    /// Queues `item` and returns its answer once a group holding it is stored. `store` gets a
    /// group's items in arrival order and answers each, in the same order.
    fn submit(&self, project: &str, item: T, weight: usize, store: impl Fn(Vec<T>) -> Result<Vec<R>>) -> Result<R> {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        let lead = {
            let mut queues = self.queues.lock();
            let queue =
                queues.entry(project.to_owned()).or_insert_with(|| GroupQueue { waiting: Vec::new(), storing: 0 });
            queue.waiting.push((item, weight, reply));
            let lead = queue.storing < self.lanes;
            queue.storing += usize::from(lead);
            lead
        };
        if lead {
            self.lead(project, &store);
        }
        answer.recv().map_err(|_| stopped())?
    }

    /// Stores groups of `project` until its queue is empty.
    fn lead(&self, project: &str, store: &impl Fn(Vec<T>) -> Result<Vec<R>>) {
        loop {
            let group: Vec<(T, usize, std::sync::mpsc::SyncSender<Result<R>>)> = {
                let mut queues = self.queues.lock();
                let Some(queue) = queues.get_mut(project) else {
                    return;
                };
                if queue.waiting.is_empty() {
                    queue.storing -= 1;
                    if queue.storing == 0 {
                        queues.remove(project);
                    }
                    return;
                }
                let mut weight = 0;
                let take = queue
                    .waiting
                    .iter()
                    .position(|(_, w, _)| {
                        weight += w;
                        weight > self.max_weight
                    })
                    .unwrap_or(queue.waiting.len())
                    .max(1);
                queue.waiting.drain(..take).collect()
            };
            let (items, replies): (Vec<T>, Vec<_>) = group.into_iter().map(|(item, _, reply)| (item, reply)).unzip();
            let count = items.len();
            match store(items) {
                Ok(answers) if answers.len() == count => {
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        let _ = reply.send(Ok(answer));
                    }
                }
                Ok(answers) => {
                    let error = Error::Internal(format!("a group of {count} stored gave {} answers", answers.len()));
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
                Err(error) => {
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        }
    }
}

/// Events stored in one group commit at most (a batch larger than that goes alone).
const GROUP_EVENTS: usize = 50_000;

/// Aliases or trait updates stored in one group commit at most.
const GROUP_ROWS: usize = 10_000;

/// Group commits of one project running at once on a node, per kind of write (2 beat 3 on the
/// 2-core bench: fewer, larger inserts; BENCHMARKS.md).
const STORE_LANES: usize = 2;

/// An alias waiting for its group: (anonymous id, user id) and its write number.
type NumberedAlias = ((String, String), u64);

/// A read that callers arriving together share: one runs at a time, and a caller gets the
/// answer of the first read that started after it arrived (so it sees every write finished
/// before it came), running that read itself when none is running. Many concurrent calls then
/// cost one query in flight, not one each.
struct SharedRead<T> {
    state: parking_lot::Mutex<SharedReadState<T>>,
    finished: parking_lot::Condvar,
}

struct SharedReadState<T> {
    /// Reads started and finished so far (they finish in order: one runs at a time).
    started: u64,
    done: u64,
    running: bool,
    last: Option<Result<T>>,
}

impl<T> Default for SharedRead<T> {
    fn default() -> Self {
        let state = SharedReadState { started: 0, done: 0, running: false, last: None };
        SharedRead { state: parking_lot::Mutex::new(state), finished: parking_lot::Condvar::new() }
    }
}

impl<T: Clone> SharedRead<T> {
    fn read(&self, run: impl FnOnce() -> Result<T>) -> Result<T> {
        let mut state = self.state.lock();
        let wanted = state.started + 1;
        loop {
            if state.done >= wanted
                && let Some(last) = &state.last
            {
                return last.clone();
            }
            if !state.running {
                state.running = true;
                state.started += 1;
                let this = state.started;
                drop(state);
                // A panic in `run` must not leave the others waiting for ever.
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run))
                    .unwrap_or_else(|_| Err(Error::Internal("a shared read panicked".into())));
                let mut state = self.state.lock();
                state.running = false;
                state.done = this;
                state.last = Some(result.clone());
                self.finished.notify_all();
                return result;
            }
            self.finished.wait(&mut state);
        }
    }
}

/// A call of the client, run on its runtime.
type Work<T> = std::pin::Pin<Box<dyn Future<Output = Result<T>> + Send>>;

impl Drop for ClickHouseStorage {
    fn drop(&mut self) {
        // The engine may be dropped on an async worker, where a runtime must not block.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A call cut short because the client's runtime stopped (the server is stopping): retry.
fn stopped() -> Error {
    Error::BackendUnavailable("the clickhouse client stopped (the server is stopping)".into())
}

/// Spawns `future` on `runtime` and waits for it from whatever thread this is.
fn wait<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    future: impl Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    let (reply, answer) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = reply.send(future.await);
    });
    answer.recv().map_err(|_| stopped())?
}

/// Write numbers: microseconds since 1970 times 1024, plus this node's random salt below
/// 1024 (so two nodes' numbers in one microsecond mostly differ; a tie only leaves their order
/// open), never less than one past the last number given out (see the module doc).
struct Sequence {
    last: AtomicU64,
    salt: u64,
}

impl Default for Sequence {
    fn default() -> Self {
        Sequence { last: AtomicU64::new(0), salt: rand::random::<u64>() % 1024 }
    }
}

impl Sequence {
    /// Reserves `count` consecutive numbers and returns the first.
    fn take(&self, count: u64) -> u64 {
        let now = ((now_micros().max(0) as u64) << 10) + self.salt;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let first = now.max(last + 1);
            match self.last.compare_exchange_weak(last, first + count.max(1) - 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return first,
                Err(current) => last = current,
            }
        }
    }
}

impl Storage for ClickHouseStorage {
    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let key = key.to_owned();
        self.run(|store| Box::pin(async move { store.meta_get(&key).await }))
    }

    fn put_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        let (key, value, version) = (key.to_owned(), value.to_vec(), self.sequence.take(1));
        self.run(move |store| Box::pin(async move { store.meta_put(&key, version, Some(&value)).await }))
    }

    fn delete_meta(&self, key: &str) -> Result<()> {
        let (key, version) = (key.to_owned(), self.sequence.take(1));
        self.run(move |store| Box::pin(async move { store.meta_put(&key, version, None).await }))
    }

    fn scan_meta(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let prefix = prefix.to_owned();
        self.run(|store| Box::pin(async move { store.meta_scan(&prefix).await }))
    }

    /// Stored when it returns (inserts are synchronous): `sync` has nothing left to do.
    fn append(&self, records: &[Encoded]) -> Result<()> {
        let values: Vec<Vec<u8>> = records.iter().map(|r| r.0.clone()).collect();
        let first = self.sequence.take(values.len() as u64);
        self.run(move |store| Box::pin(async move { store.append_records(&values, first).await }))
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    /// Every record: nothing is checkpointed beside ClickHouse, so `after` is never set.
    fn replay(&self, _after: Option<&LogPosition>, visit: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        for value in self.run(|store| Box::pin(async move { store.records().await }))? {
            visit(&value)?;
        }
        Ok(())
    }

    fn log_position(&self) -> Result<LogPosition> {
        Ok(LogPosition { db: "clickhouse".into(), seq: 0 })
    }

    fn truncate_log(&self, _position: &LogPosition) -> Result<()> {
        Ok(())
    }

    fn bytes_on_disk(&self) -> Result<u64> {
        self.run(|store| Box::pin(async move { store.bytes_on_disk().await }))
    }

    fn snapshot(&self, _visit: &mut SnapshotVisitor<'_>) -> Result<()> {
        Err(Error::FailedPrecondition(
            "backups of a clickhouse deployment are the cluster's own (BACKUP or clickhouse-backup): \
             every definition and event lives there"
                .into(),
        ))
    }

    fn rewrite_log(&self, _keep: &mut dyn FnMut(&[u8]) -> Result<bool>, _extra: &mut ExtraValues<'_>) -> Result<()> {
        Err(Error::FailedPrecondition("compaction of a clickhouse deployment is ClickHouse's own (mutations)".into()))
    }

    fn remote_events(&self) -> Option<&dyn RemoteEvents> {
        Some(self)
    }
}

impl RemoteEvents for ClickHouseStorage {
    fn store_events(&self, project: &str, events: &[Event], held: &mut dyn FnMut()) -> Result<Vec<bool>> {
        let mut keys: Vec<u128> = events.iter().map(|e| event_key(project, &e.event_id)).collect();
        keys.sort_unstable();
        keys.dedup();
        let _held = self.storing.hold(keys);
        held();
        // Batches of one group share no id (`InFlight`), so each id is still stored once.
        self.events.submit(project, events.to_vec(), events.len(), |group| {
            let sizes: Vec<usize> = group.iter().map(Vec::len).collect();
            let combined: Vec<Event> = group.into_iter().flatten().collect();
            let first = self.sequence.take(combined.len() as u64);
            let owned = project.to_owned();
            let stored =
                self.run(move |store| Box::pin(async move { store.store_events(&owned, &combined, first).await }))?;
            let mut offset = 0;
            Ok(sizes
                .into_iter()
                .map(|size| {
                    offset += size;
                    stored[offset - size..offset].to_vec()
                })
                .collect())
        })
    }

    fn stored_ids(&self, project: &str, ids: &[String]) -> Result<std::collections::HashSet<String>> {
        let (project, ids) = (project.to_owned(), ids.to_vec());
        self.run(move |store| {
            Box::pin(async move {
                let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                store.stored_ids(&project, &ids).await
            })
        })
    }

    /// Numbered as they arrive, stored with the other calls' updates queued meanwhile.
    fn store_user_updates(&self, project: &str, updates: &[UserUpdate]) -> Result<()> {
        let first = self.sequence.take(updates.len() as u64);
        self.user_updates.submit(project, (updates.to_vec(), first), updates.len(), |group| {
            let count = group.len();
            let numbered: Vec<(UserUpdate, u64)> =
                group.into_iter().flat_map(|(updates, first)| updates.into_iter().zip(first..)).collect();
            let owned = project.to_owned();
            self.run(move |store| Box::pin(async move { store.write_user_updates(&owned, &numbered).await }))?;
            Ok(vec![(); count])
        })
    }

    /// Numbered as it arrives (the latest alias of an anonymous id wins), stored with the
    /// other calls' aliases queued meanwhile.
    fn store_alias(&self, project: &str, anonymous_id: &str, user_id: &str) -> Result<()> {
        let alias = ((anonymous_id.to_owned(), user_id.to_owned()), self.sequence.take(1));
        self.aliases.submit(project, alias, 1, |group| {
            let count = group.len();
            let owned = project.to_owned();
            self.run(move |store| Box::pin(async move { store.write_aliases(&owned, &group).await }))?;
            Ok(vec![(); count])
        })
    }

    fn delete_user(&self, project: &str, user_id: &str) -> Result<Vec<String>> {
        let (project, user_id, seq) = (project.to_owned(), user_id.to_owned(), self.sequence.take(1));
        self.run(move |store| Box::pin(async move { store.delete_user(&project, &user_id, seq).await }))
    }

    fn expire(&self, project: &str, cutoff: Micros) -> Result<()> {
        let project = project.to_owned();
        self.run(move |store| Box::pin(async move { store.expire(&project, cutoff).await }))
    }

    fn person_batch(&self, project: &str, fetch: &Fetch) -> Result<PersonBatch> {
        let (project, fetch) = (project.to_owned(), fetch.clone());
        self.read(move |store| Box::pin(async move { store.person_batch(&project, &fetch).await }))
    }

    fn time_span(&self, project: &str, fetch: &Fetch) -> Result<Option<(Micros, Micros)>> {
        let (project, fetch) = (project.to_owned(), fetch.clone());
        self.read(move |store| Box::pin(async move { store.time_span(&project, &fetch).await }))
    }

    fn first_seen(&self, project: &str, fetch: &Fetch) -> Result<Vec<(String, bool, Micros)>> {
        let (project, fetch) = (project.to_owned(), fetch.clone());
        self.read(move |store| Box::pin(async move { store.first_seen(&project, &fetch).await }))
    }

    fn event_stats(&self, project: &str, fetch: &Fetch) -> Result<EventStats> {
        let (project, fetch) = (project.to_owned(), fetch.clone());
        self.read(move |store| Box::pin(async move { store.event_stats(&project, &fetch).await }))
    }

    fn aggregate(&self, project: &str, request: &AggregateRequest) -> Result<Aggregated> {
        let (project, request) = (project.to_owned(), request.clone());
        self.read(move |store| Box::pin(async move { store.aggregate(&project, &request).await }))
    }

    fn cohort_counts(&self, project: &str, request: &CohortCountRequest) -> Result<CohortCounts> {
        let (project, request) = (project.to_owned(), request.clone());
        self.read(move |store| Box::pin(async move { store.cohort_counts(&project, &request).await }))
    }

    fn events_as_sent(&self, project: &str, fetch: &Fetch) -> Result<Vec<(u64, Event)>> {
        let (project, fetch) = (project.to_owned(), fetch.clone());
        self.read(move |store| Box::pin(async move { store.events_as_sent(&project, &fetch).await }))
    }

    fn anonymous_ids(&self, project: &str, user_id: &str) -> Result<Vec<String>> {
        let (project, user_id) = (project.to_owned(), user_id.to_owned());
        self.run(move |store| Box::pin(async move { store.anonymous_ids(&project, &user_id).await }))
    }

    fn next_id(&self) -> u64 {
        self.ids.next()
    }

    /// Every call checks it: concurrent checks share one query (`SharedRead`).
    fn generation(&self) -> Result<u64> {
        self.generation.read(|| self.run(|store| Box::pin(async move { store.generation().await })))
    }

    fn rewrite_records(&self, rewrite: &mut RecordRewrite<'_>) -> Result<usize> {
        let stored = self.run(|store| Box::pin(async move { store.local_records().await }))?;
        let listed: Vec<(u64, &[u8])> = stored.iter().map(|(_, r)| (r.seq, r.value.as_slice())).collect();
        let mut rewrites = Vec::new();
        for (seq, value) in rewrite(&listed)? {
            let at = stored.partition_point(|(_, r)| r.seq < seq);
            let Some((server, record)) = stored.get(at).filter(|(_, r)| r.seq == seq) else {
                return Err(Error::Internal(format!("no stored record {seq} to rewrite")));
            };
            rewrites.push((*server, seq, record.hash, value.0));
        }
        let count = rewrites.len();
        if count > 0 {
            self.run(move |store| Box::pin(async move { store.rewrite_records(&rewrites).await }))?;
        }
        Ok(count)
    }

    fn settle(&self, timeout: std::time::Duration) -> Result<bool> {
        self.run(move |store| Box::pin(async move { store.mutations_done(timeout).await }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn sequence_numbers_grow_and_never_repeat_across_threads() {
        let sequence = Arc::new(Sequence::default());
        let taken: Vec<Vec<(u64, u64)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let sequence = sequence.clone();
                    scope.spawn(move || (0..2000).map(|i| (sequence.take(1 + i % 3), 1 + i % 3)).collect::<Vec<_>>())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for thread in &taken {
            assert!(thread.windows(2).all(|w| w[1].0 >= w[0].0 + w[0].1), "one thread's numbers grow");
        }
        let mut all: Vec<u64> = taken.iter().flatten().flat_map(|&(first, n)| first..first + n).collect();
        let count = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), count, "no number is given out twice");
        let now = (now_micros() as u64) << 10;
        assert!(all[0] > now - (60_000_000 << 10) && *all.last().unwrap() <= now + (1 << 30), "clock-based");
    }

    #[test]
    fn a_group_commit_answers_each_item_and_stores_it_once() {
        let commit: GroupCommit<u64, u64> = GroupCommit::new(2, 5);
        let stored = parking_lot::Mutex::new(Vec::new());
        let groups = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for thread in 0..8u64 {
                let (commit, stored, groups) = (&commit, &stored, &groups);
                scope.spawn(move || {
                    for i in 0..25 {
                        let item = thread * 100 + i;
                        let answer = commit.submit("p", item, 1, |group| {
                            assert!(group.len() <= 5, "a group of {} is past its weight", group.len());
                            groups.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(std::time::Duration::from_millis(2));
                            stored.lock().extend(group.iter().copied());
                            Ok(group.iter().map(|item| item * 2).collect())
                        });
                        assert_eq!(answer.unwrap(), item * 2);
                    }
                });
            }
        });
        let mut stored = stored.into_inner();
        stored.sort_unstable();
        let expected: Vec<u64> = (0..8).flat_map(|t| (0..25).map(move |i| t * 100 + i)).collect();
        assert_eq!(stored, expected);
        let groups = groups.into_inner();
        assert!(groups < 200, "{groups} stores for 200 items: nothing was grouped");
        assert!(commit.queues.lock().is_empty(), "the queue of an idle project is left behind");
    }

    #[test]
    fn a_failed_group_fails_every_item_in_it_and_the_next_group_stores() {
        let commit: GroupCommit<u64, ()> = GroupCommit::new(1, 10);
        let failed = commit.submit("p", 1, 1, |_| Err(Error::BackendUnavailable("down".into())));
        assert!(matches!(failed, Err(Error::BackendUnavailable(m)) if m == "down"));
        let short = commit.submit("p", 2, 1, |_| Ok(Vec::new()));
        assert!(matches!(short, Err(Error::Internal(m)) if m.contains("gave 0 answers")));
        assert!(commit.submit("p", 3, 1, |group| Ok(vec![(); group.len()])).is_ok());
    }

    #[test]
    fn a_shared_read_sees_every_write_finished_before_it_and_runs_fewer_queries() {
        let shared: SharedRead<u64> = SharedRead::default();
        let writes = AtomicU64::new(0);
        let reads = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                let (shared, writes, reads) = (&shared, &writes, &reads);
                scope.spawn(move || {
                    for _ in 0..30 {
                        let written = writes.fetch_add(1, Ordering::SeqCst) + 1;
                        let seen = shared
                            .read(|| {
                                reads.fetch_add(1, Ordering::Relaxed);
                                let now = writes.load(Ordering::SeqCst);
                                std::thread::sleep(std::time::Duration::from_millis(1));
                                Ok(now)
                            })
                            .unwrap();
                        assert!(seen >= written, "a read saw {seen} writes after the {written}th finished");
                    }
                });
            }
        });
        let reads = reads.into_inner();
        assert!(reads <= 120, "{reads} queries for 240 reads: they were not shared");
        let failing = shared.read(|| Err(Error::BackendUnavailable("down".into())));
        assert!(failing.is_err());
        assert_eq!(shared.read(|| Ok(7)).unwrap(), 7, "a failed read is not kept as the answer");
    }
}
