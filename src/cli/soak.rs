//! `sextant soak`: a bounded mixed load against a running server — several clients ingesting
//! and querying at once for a fixed time — reporting calls, errors and latency percentiles
//! per call (scripts/soak.sh, numbers in BENCHMARKS.md).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::cli::load::{ClientArgs, Intercepted};
use crate::pb;
use crate::pb::ingest_service_client::IngestServiceClient;
use crate::pb::metric_service_client::MetricServiceClient;
use crate::pb::project_service_client::ProjectServiceClient;
use crate::pb::user_service_client::UserServiceClient;

#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Project to use; created when missing (needs the server admin key when auth is on).
    #[arg(long, default_value = "soak")]
    pub project: String,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Concurrent clients, each with its own connection.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Events per Track call.
    #[arg(long, default_value_t = 200)]
    pub batch: usize,
}

/// Calls, errors and latencies of one kind of call.
#[derive(Debug, Default, Clone)]
pub struct CallStats {
    pub calls: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    latencies: Vec<Duration>,
}

impl CallStats {
    fn record(&mut self, started: Instant, result: Result<(), tonic::Status>) {
        self.calls += 1;
        self.latencies.push(started.elapsed());
        if let Err(status) = result {
            self.errors += 1;
            self.first_error.get_or_insert_with(|| format!("{:?}: {}", status.code(), status.message()));
        }
    }

    pub fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        sorted[((sorted.len() - 1) as f64 * p / 100.0).round() as usize]
    }
}

#[derive(Debug, Default)]
pub struct SoakReport {
    pub elapsed: Duration,
    pub events: u64,
    pub calls: BTreeMap<&'static str, CallStats>,
}

impl SoakReport {
    /// A Markdown table, one row per kind of call.
    pub fn table(&self) -> String {
        let mut out = String::from("| Call | Calls | Errors | p50 | p99 | max |\n|---|---|---|---|---|---|\n");
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
        for (name, stats) in &self.calls {
            out += &format!(
                "| {name} | {} | {} | {} | {} | {} |\n",
                stats.calls,
                stats.errors,
                ms(stats.percentile(50.0)),
                ms(stats.percentile(99.0)),
                ms(stats.percentile(100.0))
            );
        }
        out
    }
}

const DAY: i64 = 86_400;
/// 2026-01-01T00:00:00Z: events spread over the 30 days after it.
const START: i64 = 1_767_225_600;

struct Clients {
    ingest: IngestServiceClient<Intercepted>,
    metrics: MetricServiceClient<Intercepted>,
    users: UserServiceClient<Intercepted>,
    projects: ProjectServiceClient<Intercepted>,
}

async fn connect(args: &ClientArgs) -> anyhow::Result<Clients> {
    let (channel, key) = args.connect().await?;
    Ok(Clients {
        ingest: IngestServiceClient::with_interceptor(channel.clone(), key.clone()),
        metrics: MetricServiceClient::with_interceptor(channel.clone(), key.clone()),
        users: UserServiceClient::with_interceptor(channel.clone(), key.clone()),
        projects: ProjectServiceClient::with_interceptor(channel, key),
    })
}

fn ok_or_exists<T>(result: Result<T, tonic::Status>) -> anyhow::Result<()> {
    match result {
        Ok(_) => Ok(()),
        Err(status) if status.code() == tonic::Code::AlreadyExists => Ok(()),
        Err(status) => Err(status.into()),
    }
}

pub async fn run(args: &SoakArgs) -> anyhow::Result<SoakReport> {
    let mut setup = connect(&args.client).await?;
    let project = pb::Project { id: args.project.clone(), ..Default::default() };
    ok_or_exists(setup.projects.create_project(pb::CreateProjectRequest { project: Some(project) }).await)?;
    for (key, kind) in [("soak_views", pb::MetricKind::Count), ("soak_viewers", pb::MetricKind::UniqueUsers)] {
        let metric = pb::MetricDefinition {
            key: key.into(),
            kind: kind as i32,
            selector: Some(pb::EventSelector { event: "view".into(), filters: vec![] }),
            ..Default::default()
        };
        let request = pb::CreateMetricRequest { project: args.project.clone(), metric: Some(metric) };
        ok_or_exists(setup.metrics.create_metric(request).await)?;
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for client in 0..args.clients {
        let args = args.clone();
        tasks.push(tokio::spawn(async move { soak_client(client, &args, deadline).await }));
    }
    let mut report = SoakReport::default();
    for task in tasks {
        let (events, calls) = task.await??;
        report.events += events;
        for (name, stats) in calls {
            let total = report.calls.entry(name).or_default();
            total.calls += stats.calls;
            total.errors += stats.errors;
            total.latencies.extend(stats.latencies);
            if total.first_error.is_none() {
                total.first_error = stats.first_error;
            }
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// One client: half Track calls, the rest queries, until the deadline.
async fn soak_client(
    client: usize,
    args: &SoakArgs,
    deadline: Instant,
) -> anyhow::Result<(u64, BTreeMap<&'static str, CallStats>)> {
    let mut c = connect(&args.client).await?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(client as u64);
    let mut calls: BTreeMap<&'static str, CallStats> = BTreeMap::new();
    let mut events = 0u64;
    let project = args.project.clone();
    let range = |days: i64| pb::TimeRange {
        from: Some(prost_types::Timestamp { seconds: START, nanos: 0 }),
        to: Some(prost_types::Timestamp { seconds: START + days * DAY, nanos: 0 }),
    };
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let user = format!("u{}", rng.random_range(0..5_000));
        let started = Instant::now();
        match rng.random_range(0..20) {
            0..10 => {
                let batch: Vec<pb::Event> = (0..args.batch)
                    .map(|i| pb::Event {
                        event_id: format!("soak-{client}-{n}-{i}"),
                        name: if i % 10 == 0 { "buy".into() } else { "view".into() },
                        user_id: format!("u{}", rng.random_range(0..5_000)),
                        timestamp: Some(prost_types::Timestamp {
                            seconds: START + rng.random_range(0..30 * DAY),
                            nanos: 0,
                        }),
                        ..Default::default()
                    })
                    .collect();
                let request = pb::TrackRequest { project: project.clone(), events: batch, sequence: n };
                let result = c.ingest.track(request).await;
                if let Ok(reply) = &result {
                    events += reply.get_ref().accepted;
                }
                calls.entry("Track").or_default().record(started, result.map(|_| ()));
            }
            10..14 => {
                let key = if n.is_multiple_of(2) { "soak_views" } else { "soak_viewers" };
                let request = pb::QueryMetricRequest {
                    project: project.clone(),
                    metric: Some(pb::query_metric_request::Metric::MetricKey(key.into())),
                    range: Some(range(30)),
                    granularity: pb::Granularity::Day as i32,
                    ..Default::default()
                };
                let result = c.metrics.query_metric(request).await.map(|_| ());
                calls.entry("QueryMetric").or_default().record(started, result);
            }
            14..17 => {
                let request = pb::GetUserRequest { project: project.clone(), user_id: user };
                let result = match c.users.get_user(request).await {
                    Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
                    other => other.map(|_| ()),
                };
                calls.entry("GetUser").or_default().record(started, result);
            }
            17..19 => {
                let request =
                    pb::ListUserEventsRequest { project: project.clone(), user_id: user, ..Default::default() };
                let result = match c.users.list_user_events(request).await {
                    Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
                    other => other.map(|_| ()),
                };
                calls.entry("ListUserEvents").or_default().record(started, result);
            }
            _ => {
                let request = pb::GetProjectStatsRequest { project: project.clone() };
                let result = c.projects.get_project_stats(request).await.map(|_| ());
                calls.entry("GetProjectStats").or_default().record(started, result);
            }
        }
    }
    Ok((events, calls))
}
