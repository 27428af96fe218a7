//! `sextant load`: ingests `sextant gen` files through the public gRPC API, the way a
//! production client would: Identify for users, TrackStream with several batches in flight.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};

use crate::pb;
use crate::pb::ingest_service_client::IngestServiceClient;
use crate::pb::project_service_client::ProjectServiceClient;

/// Where a client subcommand connects and how it authenticates.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Server address: `http://host:port` or `host:port`.
    #[arg(long, env = "SEXTANT_CLIENT_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// API key, sent as `authorization: Bearer <key>`.
    #[arg(long, env = "SEXTANT_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// PEM certificate to trust for an `https://` address (e.g. the server's self-signed one).
    #[arg(long, env = "SEXTANT_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Project to load into; created (UTC) when missing.
    #[arg(long)]
    pub project: String,
    /// users.jsonl from `sextant gen`.
    #[arg(long)]
    pub users: Option<PathBuf>,
    /// events.jsonl from `sextant gen`.
    #[arg(long)]
    pub events: Option<PathBuf>,
    /// touches.jsonl from `sextant gen`: anonymous page views, loaded like events.
    #[arg(long)]
    pub touches: Option<PathBuf>,
    /// aliases.jsonl from `sextant gen`: one Alias call per line (anonymous id → user).
    #[arg(long)]
    pub aliases: Option<PathBuf>,
    /// spend.jsonl from `sextant gen`: recorded as values of the MANUAL metric --spend-metric,
    /// each with dimension `utm_source`.
    #[arg(long, requires = "spend_metric")]
    pub spend: Option<PathBuf>,
    /// The MANUAL metric the spend goes to; created when absent.
    #[arg(long)]
    pub spend_metric: Option<String>,
    /// Events per TrackStream batch (the default is the most a server takes by default:
    /// ClickHouse wants few large inserts, BENCHMARKS.md).
    #[arg(long, default_value_t = 5000)]
    pub batch: usize,
    /// Batches sent ahead of their acks.
    #[arg(long, default_value_t = 16)]
    pub inflight: usize,
}

#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub users: u64,
    pub sent: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub quarantined: u64,
    pub rejected: u64,
    pub aliases: u64,
    pub spend_values: u64,
    pub elapsed: Duration,
}

impl LoadReport {
    pub fn events_per_second(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Adds the bearer key to every call.
#[derive(Clone)]
pub struct BearerKey(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for BearerKey {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub type Intercepted = tonic::service::interceptor::InterceptedService<Channel, BearerKey>;

impl ClientArgs {
    pub async fn connect(&self) -> anyhow::Result<(Channel, BearerKey)> {
        let url = if self.addr.contains("://") { self.addr.clone() } else { format!("http://{}", self.addr) };
        let mut endpoint = Endpoint::from_shared(url.clone()).with_context(|| format!("--addr {:?}", self.addr))?;
        if url.starts_with("https://") {
            let mut tls = tonic::transport::ClientTlsConfig::new();
            if let Some(ca) = &self.ca_cert {
                let pem = std::fs::read(ca).with_context(|| format!("reading --ca-cert {}", ca.display()))?;
                tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
            }
            endpoint = endpoint.tls_config(tls).context("TLS configuration")?;
        }
        let channel = endpoint.connect().await.with_context(|| format!("connecting to {url}"))?;
        let key = match &self.api_key {
            Some(key) => Some(format!("Bearer {key}").parse().context("--api-key is not valid in a header")?),
            None => None,
        };
        Ok((channel, BearerKey(key)))
    }
}

#[derive(serde::Deserialize)]
struct JsonEvent {
    #[serde(default)]
    event_id: String,
    name: String,
    #[serde(default)]
    user_id: String,
    #[serde(default)]
    anonymous_id: String,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default)]
    properties: serde_json::Map<String, serde_json::Value>,
}

#[derive(serde::Deserialize)]
struct JsonUser {
    user_id: String,
    #[serde(default)]
    traits: serde_json::Map<String, serde_json::Value>,
}

fn json_value(value: serde_json::Value) -> pb::Value {
    use pb::value::Kind;
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => Kind::StringValue(s),
        // Nested JSON has no property type: keep it as its JSON text.
        other => Kind::StringValue(other.to_string()),
    };
    pb::Value { kind: Some(kind) }
}

fn json_map(map: serde_json::Map<String, serde_json::Value>) -> std::collections::BTreeMap<String, pb::Value> {
    map.into_iter().map(|(k, v)| (k, json_value(v))).collect()
}

/// One line of events.jsonl as a protobuf event.
pub fn parse_event_line(line: &str) -> anyhow::Result<pb::Event> {
    let event: JsonEvent = serde_json::from_str(line)?;
    let timestamp = match event.timestamp {
        Some(ts) => {
            let parsed = chrono::DateTime::parse_from_rfc3339(&ts).with_context(|| format!("timestamp {ts:?}"))?;
            Some(prost_types::Timestamp { seconds: parsed.timestamp(), nanos: parsed.timestamp_subsec_nanos() as i32 })
        }
        None => None,
    };
    Ok(pb::Event {
        event_id: event.event_id,
        name: event.name,
        user_id: event.user_id,
        anonymous_id: event.anonymous_id,
        timestamp,
        properties: json_map(event.properties),
    })
}

/// One line of users.jsonl as an Identify update setting its traits.
pub fn parse_user_line(line: &str) -> anyhow::Result<pb::UserUpdate> {
    let user: JsonUser = serde_json::from_str(line)?;
    Ok(pb::UserUpdate { user_id: user.user_id, set: json_map(user.traits), ..Default::default() })
}

fn progress(total_bytes: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total_bytes), indicatif::ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(&format!(
        "{what} {{bar:40}} {{percent}}% {{bytes}}/{{total_bytes}} {{msg}} eta {{eta}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

pub(crate) fn open(path: &Path) -> anyhow::Result<(BufReader<File>, u64)> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata()?.len();
    Ok((BufReader::with_capacity(1 << 20, file), size))
}

pub async fn run(args: &LoadArgs) -> anyhow::Result<LoadReport> {
    if args.batch == 0 || args.inflight == 0 {
        bail!("--batch and --inflight must be positive");
    }
    let (channel, key) = args.client.connect().await?;
    let mut projects = ProjectServiceClient::with_interceptor(channel.clone(), key.clone());
    let get = projects.get_project(pb::GetProjectRequest { project: args.project.clone() }).await;
    match get {
        Ok(_) => {}
        Err(status) if status.code() == tonic::Code::NotFound => {
            let project = pb::Project { id: args.project.clone(), ..Default::default() };
            projects.create_project(pb::CreateProjectRequest { project: Some(project) }).await?;
        }
        Err(status) => return Err(status.into()),
    }
    let ingest = IngestServiceClient::with_interceptor(channel.clone(), key.clone())
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024);
    let started = Instant::now();
    let mut report = LoadReport::default();
    if let Some(users) = &args.users {
        report.users = load_users(ingest.clone(), &args.project, users).await?;
    }
    if let Some(events) = &args.events {
        load_events(ingest.clone(), args, events, &mut report).await?;
    }
    if let Some(touches) = &args.touches {
        load_events(ingest.clone(), args, touches, &mut report).await?;
    }
    if let Some(aliases) = &args.aliases {
        report.aliases = crate::cli::load_marketing::load_aliases(ingest, &args.project, aliases).await?;
    }
    if let (Some(spend), Some(metric)) = (&args.spend, &args.spend_metric) {
        let metrics = crate::pb::metric_service_client::MetricServiceClient::with_interceptor(channel, key);
        report.spend_values = crate::cli::load_marketing::load_spend(metrics, &args.project, metric, spend).await?;
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

async fn load_users(client: IngestServiceClient<Intercepted>, project: &str, path: &Path) -> anyhow::Result<u64> {
    let (reader, size) = open(path)?;
    let bar = progress(size, "users ");
    let mut batches = Vec::new();
    let mut batch = Vec::with_capacity(1000);
    for (i, line) in reader.lines().enumerate() {
        let line = line?;
        bar.inc(line.len() as u64 + 1);
        if line.trim().is_empty() {
            continue;
        }
        batch.push(parse_user_line(&line).with_context(|| format!("{}:{}", path.display(), i + 1))?);
        if batch.len() == 1000 {
            batches.push(std::mem::take(&mut batch));
        }
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    let updated: Vec<u64> = futures::stream::iter(batches)
        .map(|users| {
            let mut client = client.clone();
            let request = pb::IdentifyRequest { project: project.to_owned(), users };
            async move { client.identify(request).await.map(|r| r.into_inner().updated) }
        })
        .buffer_unordered(4)
        .try_collect()
        .await?;
    bar.finish_and_clear();
    Ok(updated.iter().sum())
}

async fn load_events(
    mut client: IngestServiceClient<Intercepted>,
    args: &LoadArgs,
    path: &Path,
    report: &mut LoadReport,
) -> anyhow::Result<()> {
    let (reader, size) = open(path)?;
    let bar = progress(size, "events");
    let (tx, rx) = mpsc::channel::<pb::TrackRequest>(args.inflight);
    let project = args.project.clone();
    let batch_size = args.batch;
    let path_name = path.display().to_string();
    let reader_bar = bar.clone();
    // JSON parsing runs on its own thread so it overlaps with sending and acks.
    let parser = std::thread::spawn(move || -> anyhow::Result<u64> {
        let mut sequence = 0u64;
        let mut sent = 0u64;
        let mut events = Vec::with_capacity(batch_size);
        for (i, line) in reader.lines().enumerate() {
            let line = line?;
            reader_bar.inc(line.len() as u64 + 1);
            if line.trim().is_empty() {
                continue;
            }
            events.push(parse_event_line(&line).with_context(|| format!("{path_name}:{}", i + 1))?);
            if events.len() == batch_size {
                sent += events.len() as u64;
                let batch = std::mem::replace(&mut events, Vec::with_capacity(batch_size));
                sequence += 1;
                if tx.blocking_send(pb::TrackRequest { project: project.clone(), events: batch, sequence }).is_err() {
                    bail!("the stream ended before all events were sent");
                }
            }
        }
        if !events.is_empty() {
            sent += events.len() as u64;
            sequence += 1;
            let _ = tx.blocking_send(pb::TrackRequest { project, events, sequence });
        }
        Ok(sent)
    });
    let mut acks = client.track_stream(ReceiverStream::new(rx)).await?.into_inner();
    let mut expected = 1u64;
    while let Some(ack) = acks.message().await? {
        if ack.sequence != expected {
            bail!("ack for batch {} arrived when {expected} was expected", ack.sequence);
        }
        expected += 1;
        report.accepted += ack.accepted;
        report.duplicates += ack.duplicates;
        report.quarantined += ack.quarantined;
        report.rejected += ack.rejected.len() as u64;
        if let Some(first) = ack.rejected.first() {
            tracing::warn!(sequence = ack.sequence, index = first.index, message = %first.message, "events rejected");
        }
        bar.set_message(format!("{} accepted", report.accepted));
    }
    report.sent += parser.join().map_err(|_| anyhow::anyhow!("parser thread panicked"))??;
    bar.finish_and_clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_generator_lines() {
        let line = r#"{"event_id": "e42_7", "name": "purchase", "user_id": "u42_0", "timestamp": "2026-01-03T04:05:06.789Z", "properties": {"revenue": 30.0, "currency": "USD"}}"#;
        let event = parse_event_line(line).unwrap();
        assert_eq!(event.event_id, "e42_7");
        assert_eq!(event.timestamp, Some(prost_types::Timestamp { seconds: 1_767_413_106, nanos: 789_000_000 }));
        assert_eq!(event.properties["revenue"].kind, Some(pb::value::Kind::NumberValue(30.0)));
        let user = parse_user_line(r#"{"user_id": "u1", "traits": {"channel": "email"}}"#).unwrap();
        assert_eq!(user.set["channel"].kind, Some(pb::value::Kind::StringValue("email".into())));
        assert!(parse_event_line("{").is_err());
        assert!(parse_event_line(r#"{"name": "x", "timestamp": "yesterday"}"#).is_err());
    }
}
