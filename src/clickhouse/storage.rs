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
    /// Per project, batches waiting for the group commit (`store_queued`).
    queues: parking_lot::Mutex<std::collections::HashMap<String, StoreQueue>>,
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
            queues: Default::default(),
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

impl ClickHouseStorage {
    /// Group commit: a batch that found fewer than `STORE_LANES` stores of its project running
    /// leads one, storing whatever batches queued meanwhile as one (one id lookup, one insert
    /// per table) until none is left. ClickHouse wants few large inserts (each makes a part on
    /// every shard), and a store is mostly waiting for it: a few run at once. Their batches
    /// share no id (`InFlight`), so each id is still stored once.
    fn store_queued(&self, project: &str) {
        loop {
            let group: Vec<QueuedStore> = {
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
                let mut events = 0;
                let take = queue
                    .waiting
                    .iter()
                    .position(|(batch, _)| {
                        events += batch.len();
                        events > GROUP_EVENTS
                    })
                    .unwrap_or(queue.waiting.len())
                    .max(1);
                queue.waiting.drain(..take).collect()
            };
            let sizes: Vec<usize> = group.iter().map(|(batch, _)| batch.len()).collect();
            let mut combined = Vec::with_capacity(sizes.iter().sum());
            let mut replies = Vec::with_capacity(group.len());
            for (batch, reply) in group {
                combined.extend(batch);
                replies.push(reply);
            }
            let first = self.sequence.take(combined.len() as u64);
            let owned = project.to_owned();
            let stored =
                self.run(move |store| Box::pin(async move { store.store_events(&owned, &combined, first).await }));
            let mut offset = 0;
            for (reply, size) in replies.into_iter().zip(sizes) {
                let _ = reply.send(stored.as_ref().map(|s| s[offset..offset + size].to_vec()).map_err(Error::clone));
                offset += size;
            }
        }
    }
}

/// Events stored in one group commit at most (a batch larger than that goes alone).
const GROUP_EVENTS: usize = 50_000;

/// Group commits of one project running at once on a node (2 beat 3 on the 2-core bench:
/// fewer, larger inserts; BENCHMARKS.md).
const STORE_LANES: usize = 2;

/// A batch waiting for its project's store, and where its answer goes.
type QueuedStore = (Vec<Event>, std::sync::mpsc::SyncSender<Result<Vec<bool>>>);

/// A project's batches waiting for a store, and how many callers are storing them.
#[derive(Default)]
struct StoreQueue {
    waiting: Vec<QueuedStore>,
    storing: usize,
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
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        let lead = {
            let mut queues = self.queues.lock();
            let queue = queues.entry(project.to_owned()).or_default();
            queue.waiting.push((events.to_vec(), reply));
            let lead = queue.storing < STORE_LANES;
            queue.storing += usize::from(lead);
            lead
        };
        if lead {
            self.store_queued(project);
        }
        answer.recv().map_err(|_| stopped())?
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

    fn store_user_updates(&self, project: &str, updates: &[UserUpdate]) -> Result<()> {
        let (project, updates) = (project.to_owned(), updates.to_vec());
        let first = self.sequence.take(updates.len() as u64);
        self.run(move |store| Box::pin(async move { store.insert_user_updates(&project, &updates, first).await }))
    }

    fn store_alias(&self, project: &str, anonymous_id: &str, user_id: &str) -> Result<()> {
        let (project, pair) = (project.to_owned(), vec![(anonymous_id.to_owned(), user_id.to_owned())]);
        let seq = self.sequence.take(1);
        self.run(move |store| Box::pin(async move { store.insert_aliases(&project, &pair, seq).await }))
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

    fn generation(&self) -> Result<u64> {
        self.run(|store| Box::pin(async move { store.generation().await }))
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
}
