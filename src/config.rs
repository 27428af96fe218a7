//! Server configuration: flags with environment fallbacks, validated once at start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::core::ingest::Limits;
use crate::core::model::{Clock, MICROS_PER_SECOND};
use crate::grpc::auth::GuardConfig;
use crate::storage::{SledStorage, Storage};

/// The storage backends `serve` can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StorageKind {
    /// The embedded engine (sled for metadata and the log).
    Sled,
    /// A ClickHouse cluster: events, users, aliases and every definition live there, so
    /// several nodes serve the same projects.
    Clickhouse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Toggle {
    On,
    Off,
}

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// gRPC listen address; port 0 picks a free port (the bound address is printed).
    #[arg(long, env = "SEXTANT_ADDR", default_value = "127.0.0.1:50051")]
    pub addr: SocketAddr,

    /// Where events and definitions live: `sled`, the embedded engine in --data-dir, or
    /// `clickhouse`, a cluster (--clickhouse-url).
    #[arg(long, env = "SEXTANT_STORAGE", value_enum, default_value_t = StorageKind::Sled)]
    pub storage: StorageKind,

    /// With --storage clickhouse: the HTTP URL of each shard server, comma-separated; the
    /// first takes the distributed reads and writes.
    #[arg(long, env = "SEXTANT_CLICKHOUSE_URL", value_delimiter = ',')]
    pub clickhouse_url: Vec<String>,

    /// The ClickHouse database Sextant's tables live in (created when missing).
    #[arg(long, env = "SEXTANT_CLICKHOUSE_DATABASE", default_value = "sextant")]
    pub clickhouse_database: String,

    /// The `remote_servers` cluster the Distributed tables spread over.
    #[arg(long, env = "SEXTANT_CLICKHOUSE_CLUSTER", default_value = "sextant")]
    pub clickhouse_cluster: String,

    /// ClickHouse user (default: the server's default user).
    #[arg(long, env = "SEXTANT_CLICKHOUSE_USER")]
    pub clickhouse_user: Option<String>,

    /// ClickHouse password.
    #[arg(long, env = "SEXTANT_CLICKHOUSE_PASSWORD", hide_env_values = true)]
    pub clickhouse_password: Option<String>,

    /// Longest wait for a ClickHouse server to connect, or to send or answer anything on a
    /// connection (a statement's whole run, for reads): past it the call fails with
    /// UNAVAILABLE instead of hanging on a shard that stopped answering.
    #[arg(long, env = "SEXTANT_CLICKHOUSE_TIMEOUT_SECS", default_value_t = 300)]
    pub clickhouse_timeout_secs: u64,

    /// The clock of time-dependent rules; tests move it instead of sleeping.
    #[arg(skip)]
    pub clock: Clock,

    /// Directory of the embedded sled database.
    #[arg(long, env = "SEXTANT_DATA_DIR", default_value = "data/sextant")]
    pub data_dir: PathBuf,

    /// Prometheus text metrics on http://ADDR/metrics; "off" disables them.
    #[arg(long, env = "SEXTANT_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: String,

    /// Log format; the level comes from RUST_LOG (default info).
    #[arg(long, env = "SEXTANT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Seed a `demo` project with generated data when it is empty.
    #[arg(long, env = "SEXTANT_DEMO")]
    pub demo: bool,

    /// Users to generate for the demo project (about 15 events each).
    #[arg(long, env = "SEXTANT_DEMO_USERS", default_value_t = 5000)]
    pub demo_users: u64,

    /// Most events (or users) in one Track / Identify request.
    #[arg(long, env = "SEXTANT_MAX_BATCH_EVENTS", default_value_t = 5000)]
    pub max_batch_events: usize,

    /// Largest gRPC message the server decodes, in bytes.
    #[arg(long, env = "SEXTANT_MAX_MESSAGE_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Largest encoded event, in bytes.
    #[arg(long, env = "SEXTANT_MAX_EVENT_BYTES", default_value_t = 32 * 1024)]
    pub max_event_bytes: usize,

    /// Most properties on one event.
    #[arg(long, env = "SEXTANT_MAX_PROPERTIES", default_value_t = 256)]
    pub max_properties: usize,

    /// Distinct event property keys one project may hold (and likewise distinct trait names):
    /// an event or user update that would add more is rejected with RESOURCE_EXHAUSTED.
    #[arg(long, env = "SEXTANT_MAX_PROPERTY_KEYS", default_value_t = crate::core::ingest::DEFAULT_MAX_PROPERTY_KEYS)]
    pub max_property_keys: usize,

    /// How far in the future an event timestamp may be, in seconds.
    #[arg(long, env = "SEXTANT_MAX_FUTURE_SECS", default_value_t = 3600)]
    pub max_future_secs: i64,

    /// TrackStream batches one stream may have in flight before the server stops reading it.
    #[arg(long, env = "SEXTANT_STREAM_INFLIGHT", default_value_t = 8)]
    pub stream_inflight: usize,

    /// On SIGTERM/SIGINT, how long in-flight calls may take to finish, in seconds.
    #[arg(long, env = "SEXTANT_GRACE_SECS", default_value_t = 10)]
    pub grace_secs: u64,

    /// Server admin API key. When set, every call (but health and reflection) needs
    /// `authorization: Bearer <key>`; when unset the server runs open, without auth.
    #[arg(long, env = "SEXTANT_BOOTSTRAP_KEY", hide_env_values = true)]
    pub bootstrap_key: Option<String>,

    /// PEM certificate chain; with --tls-key, serves TLS instead of plaintext.
    #[arg(long, env = "SEXTANT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "SEXTANT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Requests per second per API key (per client address when auth is off); 0 disables.
    #[arg(long, env = "SEXTANT_RATE_LIMIT", default_value_t = 0.0)]
    pub rate_limit: f64,

    /// Streaming calls (TrackStream, ExportEvents, WatchMetric) open at once, server-wide.
    #[arg(long, env = "SEXTANT_MAX_STREAMS", default_value_t = 1024)]
    pub max_streams: usize,

    /// Time budget of a unary call (queries) in seconds, also bounded by the client's
    /// grpc-timeout; 0: only the client's. AdminService.Compact has only the client's.
    #[arg(long, env = "SEXTANT_QUERY_TIMEOUT_SECS", default_value_t = 30.0)]
    pub query_timeout_secs: f64,

    /// The web dashboard at http(s)://ADDR/ beside the gRPC services: "on" or "off".
    #[arg(long, env = "SEXTANT_WEB", value_enum, default_value_t = Toggle::On)]
    pub web: Toggle,

    /// How often the data retention job runs, in seconds.
    #[arg(long, env = "SEXTANT_RETENTION_INTERVAL_SECS", default_value_t = 3600)]
    pub retention_interval_secs: u64,

    /// How often background compaction runs, in seconds: projects that deleted users or
    /// expired events since their last compaction are rewritten so that data leaves the disk.
    #[arg(long, env = "SEXTANT_COMPACT_INTERVAL_SECS", default_value_t = 3600)]
    pub compact_interval_secs: u64,

    /// How often the stored events are checkpointed if anything was written since, in seconds
    /// (also after every 2,000,000 events and at a clean stop): what a restart after a crash
    /// replays from the log is what came after the last checkpoint.
    #[arg(long, env = "SEXTANT_CHECKPOINT_INTERVAL_SECS", default_value_t = 60)]
    pub checkpoint_interval_secs: u64,
}

impl ServeConfig {
    /// A config for tests and tools: everything default, the given data dir, port 0.
    pub fn for_data_dir(data_dir: PathBuf) -> Self {
        let mut config = <ServeCli as clap::Parser>::parse_from(["serve"]).config;
        config.addr = "127.0.0.1:0".parse().expect("valid address");
        config.metrics_addr = "127.0.0.1:0".into();
        config.data_dir = data_dir;
        config
    }

    /// Opens the configured storage backend: the one place that picks it. Blocking.
    pub fn open_storage(&self) -> anyhow::Result<Arc<dyn Storage>> {
        match self.storage {
            StorageKind::Sled => {
                let storage = SledStorage::open(&self.data_dir)
                    .with_context(|| format!("opening {}", self.data_dir.display()))?;
                Ok(Arc::new(storage))
            }
            StorageKind::Clickhouse => {
                let config = crate::clickhouse::ClickHouseConfig {
                    urls: self.clickhouse_url.iter().map(|u| u.trim().to_owned()).filter(|u| !u.is_empty()).collect(),
                    database: self.clickhouse_database.clone(),
                    cluster: self.clickhouse_cluster.clone(),
                    user: self.clickhouse_user.clone(),
                    password: self.clickhouse_password.clone(),
                    timeout: std::time::Duration::from_secs(self.clickhouse_timeout_secs),
                };
                let storage = crate::clickhouse::storage::ClickHouseStorage::open(&config)
                    .with_context(|| format!("connecting to clickhouse at {}", config.urls.join(",")))?;
                Ok(storage)
            }
        }
    }

    pub fn metrics_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        match self.metrics_addr.trim() {
            "" | "off" => Ok(None),
            addr => Ok(Some(addr.parse().map_err(|e| anyhow::anyhow!("--metrics-addr {addr:?}: {e}"))?)),
        }
    }

    pub fn guard(&self) -> GuardConfig {
        GuardConfig {
            bootstrap_key: self.bootstrap_key.clone().filter(|k| !k.is_empty()),
            rate_limit: self.rate_limit,
            max_streams: self.max_streams,
            unary_budget: (self.query_timeout_secs > 0.0).then(|| Duration::from_secs_f64(self.query_timeout_secs)),
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_batch_events: self.max_batch_events,
            max_event_bytes: self.max_event_bytes,
            max_properties: self.max_properties,
            max_future_micros: self.max_future_secs.saturating_mul(MICROS_PER_SECOND),
            max_property_keys: self.max_property_keys,
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.max_batch_events > 0, "--max-batch-events must be positive");
        anyhow::ensure!(self.clickhouse_timeout_secs > 0, "--clickhouse-timeout-secs must be positive");
        anyhow::ensure!(self.max_message_bytes >= 1024, "--max-message-bytes must be at least 1024");
        anyhow::ensure!(self.stream_inflight > 0, "--stream-inflight must be positive");
        anyhow::ensure!(self.max_future_secs >= 0, "--max-future-secs must not be negative");
        anyhow::ensure!(self.rate_limit >= 0.0 && self.rate_limit.is_finite(), "--rate-limit must be >= 0");
        anyhow::ensure!(self.max_streams > 0, "--max-streams must be positive");
        anyhow::ensure!(
            (1..=crate::core::ingest::MAX_PROPERTY_KEYS_LIMIT).contains(&self.max_property_keys),
            "--max-property-keys must be between 1 and {}",
            crate::core::ingest::MAX_PROPERTY_KEYS_LIMIT
        );
        anyhow::ensure!(
            self.query_timeout_secs >= 0.0 && self.query_timeout_secs.is_finite(),
            "--query-timeout-secs must be >= 0"
        );
        anyhow::ensure!(self.retention_interval_secs > 0, "--retention-interval-secs must be positive");
        anyhow::ensure!(self.compact_interval_secs > 0, "--compact-interval-secs must be positive");
        anyhow::ensure!(self.checkpoint_interval_secs > 0, "--checkpoint-interval-secs must be positive");
        anyhow::ensure!(
            self.max_properties <= crate::core::store::table::MAX_PROPERTIES,
            "--max-properties must be at most {}",
            crate::core::store::table::MAX_PROPERTIES
        );
        anyhow::ensure!(
            self.bootstrap_key.as_deref().is_none_or(|k| k.is_empty() || k.len() >= 16),
            "--bootstrap-key must be at least 16 characters"
        );
        anyhow::ensure!(self.tls_cert.is_some() == self.tls_key.is_some(), "--tls-cert and --tls-key go together");
        self.metrics_addr()?;
        Ok(())
    }
}

#[derive(clap::Parser)]
struct ServeCli {
    #[command(flatten)]
    config: ServeConfig,
}
