//! `sextant watch`: prints a metric's current bucket as it changes (WatchMetric), one line per
//! update, until Ctrl-C or the server ends the stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use crate::cli::load::ClientArgs;
use crate::pb;
use crate::pb::metric_service_client::MetricServiceClient;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GranularityArg {
    Hour,
    Day,
    Week,
    Month,
    Quarter,
}

impl GranularityArg {
    fn to_pb(self) -> pb::Granularity {
        match self {
            GranularityArg::Hour => pb::Granularity::Hour,
            GranularityArg::Day => pb::Granularity::Day,
            GranularityArg::Week => pb::Granularity::Week,
            GranularityArg::Month => pb::Granularity::Month,
            GranularityArg::Quarter => pb::Granularity::Quarter,
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long)]
    pub project: String,
    /// Key of the metric to watch.
    pub metric: String,
    #[arg(long, value_enum, default_value_t = GranularityArg::Day)]
    pub granularity: GranularityArg,
    /// IANA zone of the buckets; default: the project's.
    #[arg(long, default_value = "")]
    pub timezone: String,
    /// Split by an event property or a trait (`user.channel`).
    #[arg(long)]
    pub breakdown: Option<String>,
    /// Breakdown values shown; the rest are summed up as `$other`.
    #[arg(long, default_value_t = 10)]
    pub breakdown_limit: u32,
    /// Stop after this many updates (0: run until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    pub updates: u64,
    /// Open this many identical streams and print only the first one's updates, then a count
    /// of all messages at the end (for load tests such as scripts/bench-live.sh).
    #[arg(long, default_value_t = 1, hide = true)]
    pub streams: usize,
}

fn show_value(point: &pb::Point) -> String {
    if point.has_value { crate::core::analysis::breakdown::format_number(point.value) } else { "no value".into() }
}

fn local(ts: Option<&prost_types::Timestamp>, tz: Tz, format: &str) -> String {
    ts.and_then(|t| DateTime::<Utc>::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|t| t.with_timezone(&tz).format(format).to_string())
        .unwrap_or_default()
}

/// One update as text: `12:00:03  signups  2026-11-23 (day, UTC)  1234`, then one line per
/// breakdown value.
pub fn render(args: &WatchArgs, message: &pb::WatchMetricResponse) -> String {
    let tz: Tz = message.timezone.parse().unwrap_or(Tz::UTC);
    let point = message.point.unwrap_or_default();
    let (label, bucket_format) = match args.granularity {
        GranularityArg::Hour => ("hour", "%Y-%m-%d %H:00"),
        GranularityArg::Day => ("day", "%Y-%m-%d"),
        GranularityArg::Week => ("week of", "%Y-%m-%d"),
        GranularityArg::Month => ("month", "%Y-%m"),
        GranularityArg::Quarter => ("quarter from", "%Y-%m"),
    };
    let mut out = format!(
        "{}  {}  {label} {} ({})  {}",
        local(message.computed_time.as_ref(), tz, "%H:%M:%S"),
        args.metric,
        local(point.start.as_ref(), tz, bucket_format),
        tz.name(),
        show_value(&point)
    );
    let width = message.breakdown.iter().map(|s| s.breakdown_value.chars().count()).max().unwrap_or(0);
    for series in &message.breakdown {
        let value = series.points.first().map(show_value).unwrap_or_default();
        out.push_str(&format!("\n    {:width$}  {value}", series.breakdown_value));
    }
    out
}

pub async fn run(args: &WatchArgs) -> anyhow::Result<()> {
    let (channel, key) = args.client.connect().await?;
    let request = pb::WatchMetricRequest {
        project: args.project.clone(),
        metric_key: args.metric.clone(),
        granularity: args.granularity.to_pb() as i32,
        timezone: args.timezone.clone(),
        breakdown: args.breakdown.clone().unwrap_or_default(),
        breakdown_limit: args.breakdown_limit,
        ..Default::default()
    };
    let started = Instant::now();
    let mut streams = Vec::with_capacity(args.streams.max(1));
    for _ in 0..args.streams.max(1) {
        let mut client = MetricServiceClient::with_interceptor(channel.clone(), key.clone());
        let stream = client.watch_metric(request.clone()).await.context("WatchMetric")?.into_inner();
        streams.push(stream);
    }
    let mut first = streams.remove(0);
    // The other streams are only read and counted, as more dashboards would.
    let others = Arc::new(AtomicU64::new(0));
    for mut stream in streams {
        let others = others.clone();
        tokio::spawn(async move {
            while let Ok(Some(_)) = stream.message().await {
                others.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let mut updates = 0u64;
    let ended = loop {
        tokio::select! {
            message = first.message() => match message {
                Ok(Some(message)) => {
                    updates += 1;
                    println!("{}", render(args, &message));
                    if args.updates > 0 && updates >= args.updates {
                        break None;
                    }
                }
                Ok(None) => break Some("the server ended the stream".to_owned()),
                Err(status) => break Some(format!("the stream ended: {}: {}", status.code(), status.message())),
            },
            _ = tokio::signal::ctrl_c() => break None,
        }
    };
    if args.streams > 1 {
        println!(
            "{} streams: {updates} updates on the first, {} on the others, in {:.1} s",
            args.streams,
            others.load(Ordering::Relaxed),
            started.elapsed().as_secs_f64()
        );
    }
    match ended {
        Some(reason) => anyhow::bail!(reason),
        None => Ok(()),
    }
}
