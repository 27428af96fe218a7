//! Live metrics (SPEC §9): the value of a metric's current bucket, pushed to watchers as
//! events arrive, without polling storage.
//!
//! - **Signal.** The writer bumps a project's change counter (`ProjectData::changes`, a
//!   `tokio::sync::watch`) once it has applied a group of records, so ingestion never waits for
//!   watchers: it only increments a counter.
//! - **Feeds.** Watch streams with identical parameters share one *feed*: a task that waits for
//!   the counter to move (or for the current bucket to end), re-evaluates the metric with the
//!   ordinary evaluation on a blocking thread and publishes the reading in a `watch` channel.
//!   Fifty dashboards on the same metric cost one evaluation per update.
//! - **Streams.** Each stream sends its first reading at once (evaluated for it, so it reflects
//!   every acked write), then the feed's readings that differ from what it last sent, at most
//!   one per `MIN_INTERVAL` (1 s); changes in between are coalesced into the next message.
//! - **Cost bound.** A feed evaluates at most once per `MIN_INTERVAL`, and after an evaluation
//!   that took `d` waits at least `d × feeds / LIVE_CPU_SHARE`: all feeds together spend about
//!   2.5% of one core at most, and hold the projects' read locks (which the writer needs to
//!   apply a batch) about 2.5% of the time at most. On a large project updates then come less
//!   often than once per second (3M events: ~40 ms per evaluation, an update every ~1.6 s for
//!   one watched metric; BENCHMARKS.md).
//! - **Lifecycle.** A stream is a plain `Stream` polled by the gRPC layer: when the client goes
//!   away it is dropped, and with it its receiver; no task per stream exists. A feed ends when
//!   its last receiver is gone (checked under the registry lock, so a stream joining at that
//!   moment is never left without a feed), when evaluation fails (the metric was deleted: the
//!   streams end with that error) and at shutdown (`Engine::stop_live`: UNAVAILABLE).
//!   `Engine::live_streams` and `Engine::live_feeds` (and the gauges `sextant_live_streams`,
//!   `sextant_live_feeds`) count what is open.

use crate::core::engine::Engine;
use crate::core::filter::Filter;
use crate::core::metric::evaluate::evaluate;
use crate::core::metric::scan::{MetricQuery, Point, Series};
use crate::core::model::Micros;
use crate::core::time::{self, Granularity};
use crate::error::{Error, Result, echo};
use futures::Stream;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Fewest time between two messages of one stream, and between two evaluations of a feed.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// How often a live feed re-reads a remote engine (ClickHouse) that other nodes write to.
const REMOTE_POLL: Duration = Duration::from_secs(2);
/// Share of one core that feed evaluations may use together (see the module doc).
const LIVE_CPU_SHARE: f64 = 0.025;

/// What a watcher asks for. Streams with equal specs share a feed.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchSpec {
    pub project: String,
    pub metric_key: String,
    /// Not TOTAL.
    pub granularity: Granularity,
    /// IANA zone; empty: the project's.
    pub timezone: String,
    pub filters: Vec<Filter>,
    pub breakdown: Option<String>,
    pub breakdown_limit: usize,
    /// Only members of this cohort (evaluated at each reading); empty: everyone.
    pub cohort_id: String,
}

/// A reading of the current bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveValue {
    /// The bucket containing `computed`, over all breakdown values.
    pub point: Point,
    /// With a breakdown: one series per value, each with the current bucket only.
    pub breakdown: Vec<Series>,
    /// When it was evaluated: it reflects every write acked before.
    pub computed: Micros,
    pub version: u32,
    /// The zone the bucket follows.
    pub timezone: String,
}

impl LiveValue {
    /// Whether two readings show the same values (when and by which version aside).
    fn same_values(&self, other: &LiveValue) -> bool {
        self.point == other.point && self.breakdown == other.breakdown
    }
}

/// What a feed publishes: nothing yet, a reading, or the error that ended it.
type Reading = Option<Result<Arc<LiveValue>>>;

struct Feed {
    id: u64,
    readings: watch::Sender<Reading>,
}

/// The registry of feeds, and counters of what is open.
pub struct LiveHub {
    /// Feeds by the `Debug` text of their spec (filters hold floats, so specs are not `Hash`).
    feeds: Mutex<HashMap<String, Feed>>,
    next_feed: AtomicU64,
    feed_count: AtomicUsize,
    stream_count: AtomicUsize,
    stopping: watch::Sender<bool>,
}

impl Default for LiveHub {
    fn default() -> Self {
        LiveHub {
            feeds: Mutex::new(HashMap::new()),
            next_feed: AtomicU64::new(0),
            feed_count: AtomicUsize::new(0),
            stream_count: AtomicUsize::new(0),
            stopping: watch::Sender::new(false),
        }
    }
}

impl LiveHub {
    /// Moves an open-things counter and its gauge by one.
    fn adjust(counter: &AtomicUsize, gauge: &'static str, up: bool) {
        let now =
            if up { counter.fetch_add(1, Ordering::SeqCst) + 1 } else { counter.fetch_sub(1, Ordering::SeqCst) - 1 };
        metrics::gauge!(gauge).set(now as f64);
    }

    /// Removes the feed `id` if nobody listens any more; false when a stream joined meanwhile.
    fn retire_if_unused(&self, key: &str, id: u64, readings: &watch::Sender<Reading>) -> bool {
        let mut feeds = self.feeds.lock();
        if readings.receiver_count() > 0 {
            return false;
        }
        if feeds.get(key).is_some_and(|f| f.id == id) {
            feeds.remove(key);
        }
        true
    }

    fn retire(&self, key: &str, id: u64) {
        let mut feeds = self.feeds.lock();
        if feeds.get(key).is_some_and(|f| f.id == id) {
            feeds.remove(key);
        }
    }
}

/// Evaluates on a blocking thread; returns the reading and how long it took.
async fn evaluate_live(engine: &Arc<Engine>, spec: &WatchSpec) -> Result<(LiveValue, Duration)> {
    let (engine, spec) = (engine.clone(), spec.clone());
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let value = engine.live_value(&spec)?;
        let took = started.elapsed();
        metrics::histogram!("sextant_live_evaluation_seconds").record(took.as_secs_f64());
        Ok((value, took))
    })
    .await
    .map_err(|e| Error::Internal(format!("live evaluation failed: {e}")))?
}

/// Starts watching: validates the spec by evaluating it once (errors come back here, before
/// any stream exists), joins or starts the spec's feed and returns the stream of readings.
pub async fn watch(
    engine: Arc<Engine>,
    spec: WatchSpec,
) -> Result<impl Stream<Item = Result<Arc<LiveValue>>> + Send + 'static> {
    if *engine.live.stopping.borrow() {
        return Err(Error::Unavailable);
    }
    // Subscribed before evaluating: a write applied after this point wakes the feed. The
    // channel is all it needs of the state, so queued writes are not applied for it.
    let project = spec.project.clone();
    let changes = engine
        .off_executor(move |engine| Ok(engine.project(&project)?.read_without_pending().changes.subscribe()))
        .await?;
    let (first, took) = evaluate_live(&engine, &spec).await?;
    let first = Arc::new(first);
    let key = format!("{spec:?}");
    let readings = {
        let mut feeds = engine.live.feeds.lock();
        match feeds.get(&key) {
            Some(feed) => feed.readings.subscribe(),
            None => {
                let (sender, receiver) = watch::channel::<Reading>(Some(Ok(first.clone())));
                let id = engine.live.next_feed.fetch_add(1, Ordering::Relaxed);
                feeds.insert(key.clone(), Feed { id, readings: sender.clone() });
                LiveHub::adjust(&engine.live.feed_count, "sextant_live_feeds", true);
                let feed = FeedTask { engine: engine.clone(), key, id, spec, readings: sender, changes };
                tokio::spawn(feed.run(first.point.end, took));
                receiver
            }
        }
    };
    LiveHub::adjust(&engine.live.stream_count, "sextant_live_streams", true);
    let watcher =
        Watcher { engine, readings, last: first.clone(), sent_at: Instant::now(), first: Some(first), done: false };
    Ok(futures::stream::unfold(watcher, Watcher::next))
}

/// The state of one stream; dropping it (the client went away) is all the cleanup needed.
struct Watcher {
    engine: Arc<Engine>,
    readings: watch::Receiver<Reading>,
    last: Arc<LiveValue>,
    sent_at: Instant,
    /// The first reading, sent as soon as the stream is polled.
    first: Option<Arc<LiveValue>>,
    done: bool,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        LiveHub::adjust(&self.engine.live.stream_count, "sextant_live_streams", false);
    }
}

impl Watcher {
    async fn next(mut self) -> Option<(Result<Arc<LiveValue>>, Watcher)> {
        if let Some(first) = self.first.take() {
            return Some((Ok(first), self));
        }
        if self.done {
            return None;
        }
        tokio::time::sleep_until((self.sent_at + MIN_INTERVAL).into()).await;
        loop {
            let reading = self.readings.borrow_and_update().clone();
            match reading {
                // Older than what was sent: a feed evaluation that started before ours.
                Some(Ok(value)) if value.computed >= self.last.computed && !value.same_values(&self.last) => {
                    self.last = value.clone();
                    self.sent_at = Instant::now();
                    return Some((Ok(value), self));
                }
                Some(Err(error)) => {
                    // The feed ended: this is the stream's last item.
                    self.done = true;
                    return Some((Err(error), self));
                }
                _ => {}
            }
            if self.readings.changed().await.is_err() {
                return None;
            }
        }
    }
}

/// Why a feed woke up.
enum Wake {
    Evaluate,
    /// No stream listens any more.
    Unused,
    Stopping,
    /// The project's change signal is gone with the project.
    ProjectGone,
}

struct FeedTask {
    engine: Arc<Engine>,
    key: String,
    id: u64,
    spec: WatchSpec,
    readings: watch::Sender<Reading>,
    changes: watch::Receiver<u64>,
}

impl FeedTask {
    /// Waits for `until` (true: a reason to evaluate; false: the project is gone), unless the
    /// feed loses its last receiver or the server stops first.
    async fn wait(&mut self, until: impl std::future::Future<Output = bool>) -> Wake {
        let mut stopping = self.engine.live.stopping.subscribe();
        tokio::select! {
            _ = self.readings.closed() => Wake::Unused,
            _ = stopping.wait_for(|s| *s) => Wake::Stopping,
            go = until => if go { Wake::Evaluate } else { Wake::ProjectGone },
        }
    }

    async fn run(mut self, mut bucket_end: Micros, mut took: Duration) {
        let mut evaluated_at = Instant::now();
        loop {
            // New data, or the start of the next bucket.
            let mut to_next_bucket = Duration::from_micros((bucket_end - self.engine.clock.now()).max(0) as u64);
            if self.engine.remote().is_some() {
                // Other nodes' writes to a shared remote engine notify nobody here: poll.
                to_next_bucket = to_next_bucket.min(REMOTE_POLL);
            }
            let mut changes = self.changes.clone();
            let wake = self
                .wait(async move {
                    tokio::select! {
                        changed = changes.changed() => changed.is_ok(),
                        _ = tokio::time::sleep(to_next_bucket) => true,
                    }
                })
                .await;
            // Spaced evaluations: at least MIN_INTERVAL, more when they are expensive.
            let feeds = self.engine.live_feeds().max(1) as f64;
            let gap = MIN_INTERVAL.max(took.mul_f64(feeds / LIVE_CPU_SHARE));
            let wake = match wake {
                Wake::Evaluate => {
                    self.wait(async {
                        tokio::time::sleep_until((evaluated_at + gap).into()).await;
                        true
                    })
                    .await
                }
                other => other,
            };
            match wake {
                Wake::Evaluate => {}
                Wake::Unused => {
                    if self.engine.live.retire_if_unused(&self.key, self.id, &self.readings) {
                        break;
                    }
                    continue;
                }
                Wake::Stopping | Wake::ProjectGone => {
                    let error = match wake {
                        Wake::Stopping => Error::Unavailable,
                        _ => Error::NotFound(format!("project {} not found", echo(&self.spec.project))),
                    };
                    self.readings.send_replace(Some(Err(error)));
                    self.engine.live.retire(&self.key, self.id);
                    break;
                }
            }
            self.changes.borrow_and_update();
            evaluated_at = Instant::now();
            match evaluate_live(&self.engine, &self.spec).await {
                Ok((value, cost)) => {
                    (bucket_end, took) = (value.point.end, cost);
                    self.readings.send_replace(Some(Ok(Arc::new(value))));
                }
                Err(error) => {
                    tracing::debug!(project = %self.spec.project, metric = %self.spec.metric_key, error = %error, "live feed ended");
                    self.readings.send_replace(Some(Err(error)));
                    self.engine.live.retire(&self.key, self.id);
                    break;
                }
            }
        }
        LiveHub::adjust(&self.engine.live.feed_count, "sextant_live_feeds", false);
    }
}

impl Engine {
    /// Ends every feed (and so every watch stream, with UNAVAILABLE); new watches are refused.
    /// Called when the server starts shutting down, so open streams do not hold it up.
    pub fn stop_live(&self) {
        self.live.stopping.send_replace(true);
    }

    /// Open WatchMetric streams.
    pub fn live_streams(&self) -> usize {
        self.live.stream_count.load(Ordering::SeqCst)
    }

    /// Running feeds (one per distinct watched spec).
    pub fn live_feeds(&self) -> usize {
        self.live.feed_count.load(Ordering::SeqCst)
    }

    /// The metric's current bucket (and its breakdown), latest metric version.
    pub fn live_value(&self, spec: &WatchSpec) -> Result<LiveValue> {
        spec.granularity.series("granularity")?;
        let entry = self.project(&spec.project)?;
        let state = entry.read();
        // Read under the lock the writer applies under: a later `computed` saw every write an
        // earlier one saw (streams rely on that to skip stale readings).
        let now = self.clock.now();
        let zone = if spec.timezone.is_empty() { state.project.timezone.as_str() } else { spec.timezone.as_str() };
        let tz = time::parse_zone("timezone", zone)?;
        let metric = state.defs.metrics.metric_version(&spec.metric_key, 0)?;
        let from = time::floor(now, spec.granularity, tz);
        let to = time::next(from, spec.granularity, tz).max(from + 1);
        let mut query = MetricQuery {
            filters: spec.filters.clone(),
            breakdown_limit: spec.breakdown_limit,
            cohort_id: spec.cohort_id.clone(),
            ..MetricQuery::new(from, to, spec.granularity, tz)
        };
        let source = self.metric_events(&state, [metric], &mut query)?;
        query.cohort_id = String::new();
        let overall = evaluate(&source, &state.defs.metrics, metric, &query, 0)?;
        let point = overall.first().and_then(|s| s.points.first()).copied();
        let breakdown = match &spec.breakdown {
            Some(property) => evaluate(
                &source,
                &state.defs.metrics,
                metric,
                &MetricQuery { breakdown: Some(property.clone()), ..query },
                0,
            )?,
            None => Vec::new(),
        };
        Ok(LiveValue {
            point: point.unwrap_or(Point { start: from, end: to, value: None }),
            breakdown,
            computed: now,
            version: metric.version,
            timezone: tz.name().to_owned(),
        })
    }
}
