//! `sextant load --aliases / --spend`: the marketing files of `sextant gen` (SPEC §11) through
//! the public API: one Alias call per alias line, spend lines as values of a MANUAL metric.

use std::io::BufRead;
use std::path::Path;

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use tonic::Code;

use crate::cli::load::{Intercepted, open};
use crate::pb;
use crate::pb::ingest_service_client::IngestServiceClient;
use crate::pb::metric_service_client::MetricServiceClient;

/// Alias calls in flight at once.
const ALIAS_CONCURRENCY: usize = 32;
/// Values per RecordValues call (the server's limit is 5,000).
const SPEND_BATCH: usize = 1000;
/// The dimension spend lines carry: the touch property attribution groups by.
pub const SPEND_DIMENSION: &str = "utm_source";

#[derive(serde::Deserialize)]
struct AliasLine {
    anonymous_id: String,
    user_id: String,
}

#[derive(serde::Deserialize)]
struct SpendLine {
    /// YYYY-MM-DD.
    date: String,
    utm_source: String,
    amount: f64,
}

/// Non-empty lines of `path`, parsed; errors name the file and line.
fn parse_lines<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<Vec<T>> {
    let (reader, _) = open(path)?;
    let mut out = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).with_context(|| format!("{}:{}", path.display(), i + 1))?);
    }
    Ok(out)
}

/// Links every anonymous id of aliases.jsonl to its user; returns the number of aliases.
pub async fn load_aliases(client: IngestServiceClient<Intercepted>, project: &str, path: &Path) -> anyhow::Result<u64> {
    let lines: Vec<AliasLine> = parse_lines(path)?;
    let count = lines.len() as u64;
    futures::stream::iter(lines)
        .map(|line| {
            let mut client = client.clone();
            let request = pb::AliasRequest {
                project: project.to_owned(),
                anonymous_id: line.anonymous_id,
                user_id: line.user_id,
            };
            async move { client.alias(request).await.map(|_| ()) }
        })
        .buffer_unordered(ALIAS_CONCURRENCY)
        .try_collect::<()>()
        .await?;
    Ok(count)
}

/// Records spend.jsonl as values of MANUAL metric `metric` (created when absent): each line
/// at its date's midnight UTC with dimension `utm_source`. Returns the number of values.
pub async fn load_spend(
    mut client: MetricServiceClient<Intercepted>,
    project: &str,
    metric: &str,
    path: &Path,
) -> anyhow::Result<u64> {
    let lines: Vec<SpendLine> = parse_lines(path)?;
    let mut values = Vec::with_capacity(lines.len());
    for (i, line) in lines.into_iter().enumerate() {
        let date = chrono::NaiveDate::parse_from_str(&line.date, "%Y-%m-%d")
            .with_context(|| format!("{}: line {}: date {:?}", path.display(), i + 1, line.date))?;
        let midnight = date.and_time(chrono::NaiveTime::MIN).and_utc();
        let source = pb::Value { kind: Some(pb::value::Kind::StringValue(line.utm_source)) };
        values.push(pb::ManualValue {
            timestamp: Some(prost_types::Timestamp { seconds: midnight.timestamp(), nanos: 0 }),
            value: line.amount,
            dimensions: [(SPEND_DIMENSION.to_owned(), source)].into_iter().collect(),
        });
    }
    let get = pb::GetMetricRequest { project: project.to_owned(), key: metric.to_owned(), version: 0 };
    match client.get_metric(get).await {
        Ok(found) => {
            let kind = found.into_inner().metric.map(|m| m.kind).unwrap_or_default();
            if kind != pb::MetricKind::Manual as i32 {
                bail!("--spend-metric {metric:?} exists and is not a MANUAL metric");
            }
        }
        Err(status) if status.code() == Code::NotFound => {
            let definition = pb::MetricDefinition {
                key: metric.to_owned(),
                name: "Ad spend".into(),
                description: format!("Daily ad spend per paid channel (dimension {SPEND_DIMENSION})"),
                kind: pb::MetricKind::Manual as i32,
                unit: "USD".into(),
                ..Default::default()
            };
            client
                .create_metric(pb::CreateMetricRequest { project: project.to_owned(), metric: Some(definition) })
                .await?;
        }
        Err(status) => return Err(status.into()),
    }
    let mut recorded = 0;
    for chunk in values.chunks(SPEND_BATCH) {
        let values = chunk.to_vec();
        let request = pb::RecordValuesRequest { project: project.to_owned(), metric_key: metric.to_owned(), values };
        let response = client.record_values(request).await?.into_inner();
        if let Some(first) = response.rejected.first() {
            bail!("{} spend values rejected, the first: {}", response.rejected.len(), first.message);
        }
        recorded += response.recorded;
    }
    Ok(recorded)
}
