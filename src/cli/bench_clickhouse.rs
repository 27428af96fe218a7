//! `sextant bench-clickhouse`: how fast `sextant gen` events go into a ClickHouse cluster
//! through the backend's exactly-once write path, and how long reading them back for a funnel
//! and answering it takes, next to the embedded engine's funnel over the same events in
//! memory. Numbers go into BENCHMARKS.md.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use futures::StreamExt;
use std::io::BufRead;

use crate::cli::load::{open, parse_event_line, parse_user_line};
use crate::clickhouse::{ClickHouse, ClickHouseConfig, Fetch, schema, sql};
use crate::core::analysis::funnel::{self, FunnelQuery};
use crate::core::cohort::Cohorts;
use crate::core::filter::EventSelector;
use crate::core::model::{Event, Micros};
use crate::core::store::ProjectData;
use crate::core::store::record::LogRecord;
use crate::core::store::source::EventSource;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchClickHouseArgs {
    /// Shard servers' HTTP URLs, comma-separated (`scripts/clickhouse-cluster.sh up` prints them).
    #[arg(long, env = "SEXTANT_CLICKHOUSE_URL", value_delimiter = ',')]
    pub clickhouse_url: Vec<String>,
    /// Dropped and created again at the start, so every run starts empty.
    #[arg(long, default_value = "sextant_bench")]
    pub database: String,
    #[arg(long, default_value = "sextant")]
    pub cluster: String,
    /// events.jsonl from `sextant gen`.
    #[arg(long)]
    pub events: PathBuf,
    /// users.jsonl from `sextant gen`.
    #[arg(long)]
    pub users: Option<PathBuf>,
    /// Events per insert.
    #[arg(long, default_value_t = 20_000)]
    pub batch: usize,
    /// Inserts in flight.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Keep the database an earlier run loaded and time only the reads.
    #[arg(long)]
    pub reuse: bool,
}

const PROJECT: &str = "bench";

pub async fn run(args: &BenchClickHouseArgs) -> anyhow::Result<()> {
    let config = ClickHouseConfig {
        urls: args.clickhouse_url.clone(),
        database: args.database.clone(),
        cluster: args.cluster.clone(),
        user: None,
        password: None,
        timeout: std::time::Duration::from_secs(3600),
    };
    anyhow::ensure!(schema::is_identifier(&args.database), "--database {:?} is not a plain identifier", args.database);
    for url in config.urls.iter().filter(|_| !args.reuse) {
        sql::drop_database(&clickhouse::Client::default().with_url(url.as_str()), &args.database).execute().await?;
    }
    let store = Arc::new(ClickHouse::connect(&config).await?);

    let (reader, _) = open(&args.events)?;
    let mut events = Vec::new();
    for line in reader.lines() {
        let incoming = crate::grpc::convert::incoming_event(parse_event_line(&line?)?, 0);
        events.push(incoming.event?);
    }
    if !args.reuse {
        store_all(&store, &events, args).await?;
    }

    let mut updates = Vec::new();
    if let Some(path) = &args.users {
        let (reader, _) = open(path)?;
        for (i, line) in reader.lines().enumerate() {
            let update = crate::grpc::convert::user_update_from_pb(i, parse_user_line(&line?)?)
                .map_err(|(field, error)| anyhow::anyhow!("{field}: {error}"))?;
            updates.push(update);
        }
        let started = Instant::now();
        for chunk in updates.chunks(args.batch.max(1)).filter(|_| !args.reuse) {
            store.insert_user_updates(PROJECT, chunk, 0).await?;
        }
        println!("stored {} users' traits in {:.2} s", updates.len(), started.elapsed().as_secs_f64());
    }

    let (from, to) = time_range(&events).context("no events")?;
    let query = FunnelQuery {
        steps: ["signup", "onboarding_complete", "add_to_cart", "purchase"]
            .map(|e| EventSelector { event: e.into(), filters: vec![] })
            .to_vec(),
        from,
        to,
        window: 7 * crate::core::model::MICROS_PER_DAY,
        timezone: "UTC".into(),
        ..Default::default()
    };
    let names = Some(query.steps.iter().map(|s| s.event.clone()).collect());
    let fetch = Fetch { names, from: query.from, to: query.to.saturating_add(query.window), user: None, traits: true };
    let cohorts = Cohorts::new();
    for run in 1..=3 {
        let started = Instant::now();
        let batch = store.person_batch(PROJECT, &fetch).await?;
        let read = started.elapsed().as_secs_f64();
        let result = funnel::run(&batch, &cohorts, &query)?;
        let total = started.elapsed().as_secs_f64();
        let users: Vec<u64> = result.steps.iter().map(|s| s.users).collect();
        println!(
            "clickhouse funnel, run {run}: read {} rows in {read:.2} s, answered in {total:.2} s: {users:?}",
            batch.row_count()
        );
    }

    let mut data = ProjectData::default();
    data.apply(&LogRecord::Events { project: PROJECT.into(), events }, &[]);
    data.apply(&LogRecord::Users { project: PROJECT.into(), at: 0, updates }, &[]);
    for run in 1..=3 {
        let started = Instant::now();
        let result = funnel::run(&data.source(), &cohorts, &query)?;
        let users: Vec<u64> = result.steps.iter().map(|s| s.users).collect();
        println!("embedded funnel (in memory), run {run}: {:.2} s: {users:?}", started.elapsed().as_secs_f64());
    }
    Ok(())
}

/// Stores `events` in batches, several in flight, and prints the rate.
async fn store_all(store: &Arc<ClickHouse>, events: &[Event], args: &BenchClickHouseArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let chunks: Vec<(u64, &[Event])> =
        events.chunks(args.batch.max(1)).enumerate().map(|(i, c)| ((i * args.batch) as u64, c)).collect();
    let stored: Vec<anyhow::Result<usize>> = futures::stream::iter(chunks)
        .map(|(seq, chunk)| {
            let store = store.clone();
            async move {
                let new = store.store_events(PROJECT, chunk, seq).await?;
                Ok(new.iter().filter(|&&n| n).count())
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    let accepted: usize = stored.into_iter().sum::<anyhow::Result<usize>>()?;
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "stored {} events ({} new) in {elapsed:.2} s: {:.0} events/s ({} per insert, {} in flight)",
        events.len(),
        accepted,
        events.len() as f64 / elapsed,
        args.batch,
        args.concurrency
    );

    Ok(())
}

/// The events' days, [first midnight, the midnight after the last).
fn time_range(events: &[Event]) -> Option<(Micros, Micros)> {
    let day = crate::core::model::MICROS_PER_DAY;
    let first = events.iter().map(|e| e.timestamp).min()?;
    let last = events.iter().map(|e| e.timestamp).max()?;
    Some((first - first.rem_euclid(day), last - last.rem_euclid(day) + day))
}
