//! Real servers on 127.0.0.1:0 with temporary data dirs, and typed clients.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sextant::config::ServeConfig;
use sextant::core::model::Clock;
use sextant::pb;
use sextant::pb::admin_service_client::AdminServiceClient;
use sextant::pb::analysis_service_client::AnalysisServiceClient;
use sextant::pb::catalog_service_client::CatalogServiceClient;
use sextant::pb::cohort_service_client::CohortServiceClient;
use sextant::pb::experiment_service_client::ExperimentServiceClient;
use sextant::pb::goal_service_client::GoalServiceClient;
use sextant::pb::ingest_service_client::IngestServiceClient;
use sextant::pb::metric_service_client::MetricServiceClient;
use sextant::pb::project_service_client::ProjectServiceClient;
use sextant::pb::user_service_client::UserServiceClient;
use sextant::server::{self, RunningServer};
use tonic::transport::Channel;

pub struct TestServer {
    pub dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    pub running: Option<RunningServer>,
    pub channel: Channel,
    /// The server's clock: `advance` it instead of sleeping (key expiry, data retention).
    pub clock: Clock,
}

impl TestServer {
    pub async fn start() -> Self {
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = temp.path().to_path_buf();
        let mut server = Self::start_in(&dir, |_| {}).await;
        server._temp = Some(temp);
        server
    }

    pub async fn start_with(configure: impl FnOnce(&mut ServeConfig)) -> Self {
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = temp.path().to_path_buf();
        let mut server = Self::start_in(&dir, configure).await;
        server._temp = Some(temp);
        server
    }

    pub async fn start_in(dir: &Path, configure: impl FnOnce(&mut ServeConfig)) -> Self {
        let mut config = ServeConfig::for_data_dir(dir.to_path_buf());
        on_clickhouse_if_asked(&mut config, dir);
        configure(&mut config);
        let running = server::start(&config).await.expect("server starts");
        let channel =
            Channel::from_shared(format!("http://{}", running.addr)).unwrap().connect().await.expect("connects");
        TestServer { dir: dir.to_path_buf(), _temp: None, running: Some(running), channel, clock: config.clock }
    }

    /// A server that enforces auth, with `BOOTSTRAP` as its server admin key.
    pub async fn start_secure(configure: impl FnOnce(&mut ServeConfig)) -> Self {
        Self::start_with(|config| {
            config.bootstrap_key = Some(BOOTSTRAP.into());
            configure(config)
        })
        .await
    }

    /// Stops the server (flushing; unless a test stopped it already) and starts a new one on
    /// the same data dir.
    pub async fn restart(self) -> Self {
        self.restart_with(|_| {}).await
    }

    /// Like `restart`, with a changed configuration.
    pub async fn restart_with(mut self, configure: impl FnOnce(&mut ServeConfig)) -> Self {
        if let Some(running) = self.running.take() {
            running.stop().await.expect("clean stop");
        }
        let mut next = Self::start_in(&self.dir, configure).await;
        next._temp = self._temp.take();
        next
    }

    pub fn projects(&self) -> ProjectServiceClient<Channel> {
        ProjectServiceClient::new(self.channel.clone())
    }
    pub fn catalog(&self) -> CatalogServiceClient<Channel> {
        CatalogServiceClient::new(self.channel.clone())
    }
    pub fn ingest(&self) -> IngestServiceClient<Channel> {
        IngestServiceClient::new(self.channel.clone()).max_encoding_message_size(64 * 1024 * 1024)
    }
    pub fn users(&self) -> UserServiceClient<Channel> {
        UserServiceClient::new(self.channel.clone())
    }
    pub fn metrics(&self) -> MetricServiceClient<Channel> {
        MetricServiceClient::new(self.channel.clone())
    }
    pub fn goals(&self) -> GoalServiceClient<Channel> {
        GoalServiceClient::new(self.channel.clone())
    }
    pub fn cohorts(&self) -> CohortServiceClient<Channel> {
        CohortServiceClient::new(self.channel.clone())
    }
    pub fn analysis(&self) -> AnalysisServiceClient<Channel> {
        AnalysisServiceClient::new(self.channel.clone())
    }
    pub fn experiments(&self) -> ExperimentServiceClient<Channel> {
        ExperimentServiceClient::new(self.channel.clone())
    }
    pub fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel.clone())
    }

    /// Creates a project, with the bootstrap key (which an open server ignores).
    pub async fn create_project(&self, id: &str) {
        let project = pb::Project { id: id.into(), ..Default::default() };
        let request = bearer(pb::CreateProjectRequest { project: Some(project) }, BOOTSTRAP);
        self.projects().create_project(request).await.expect("project");
    }

    pub async fn track(&self, project: &str, events: Vec<pb::Event>) -> pb::TrackResponse {
        let request = pb::TrackRequest { project: project.into(), events, sequence: 0 };
        self.ingest().track(request).await.expect("track").into_inner()
    }

    pub async fn stats(&self, project: &str) -> pb::GetProjectStatsResponse {
        let request = pb::GetProjectStatsRequest { project: project.into() };
        self.projects().get_project_stats(request).await.expect("stats").into_inner()
    }

    pub async fn get_user(&self, project: &str, user_id: &str) -> Result<pb::User, tonic::Status> {
        let request = pb::GetUserRequest { project: project.into(), user_id: user_id.into() };
        Ok(self.users().get_user(request).await?.into_inner().user.expect("user in reply"))
    }

    pub async fn get_event_type(&self, project: &str, name: &str) -> pb::EventType {
        let request = pb::GetEventTypeRequest { project: project.into(), name: name.into() };
        self.catalog().get_event_type(request).await.expect("event type").into_inner().event_type.expect("in reply")
    }

    /// Every event of the project, ordered by time.
    pub async fn export(&self, project: &str) -> Vec<pb::Event> {
        let request = pb::ExportEventsRequest { project: project.into(), ..Default::default() };
        let mut stream = self.users().export_events(request).await.expect("export").into_inner();
        let mut events = Vec::new();
        while let Some(chunk) = stream.message().await.expect("chunk") {
            events.extend(chunk.events);
        }
        events
    }
}

/// The server admin key of `TestServer::start_secure`.
pub const BOOTSTRAP: &str = "test-bootstrap-key-0123456789";

/// A request carrying `authorization: Bearer <key>`.
/// The bytes of every file under `path` (or of `path`, a file): walked here, independently of
/// the server's own accounting, so that a test can check that.
/// With `SEXTANT_TEST_STORAGE=clickhouse` (and `SEXTANT_CLICKHOUSE_URL`), servers run on the
/// ClickHouse cluster, each data dir with a database of its own (a restart finds it again):
/// how `scripts/test.sh` runs end-to-end tests against both backends.
pub fn on_clickhouse_if_asked(config: &mut ServeConfig, dir: &Path) {
    if std::env::var("SEXTANT_TEST_STORAGE").as_deref() != Ok("clickhouse") {
        return;
    }
    let urls =
        std::env::var("SEXTANT_CLICKHOUSE_URL").expect("SEXTANT_TEST_STORAGE=clickhouse needs SEXTANT_CLICKHOUSE_URL");
    on_clickhouse(config, &urls, &database_for(dir));
}

/// `on_clickhouse_if_asked` as `sextant serve` flags, for tests that run the binary.
pub fn clickhouse_flags_if_asked(dir: &Path) -> Vec<String> {
    if std::env::var("SEXTANT_TEST_STORAGE").as_deref() != Ok("clickhouse") {
        return Vec::new();
    }
    let urls =
        std::env::var("SEXTANT_CLICKHOUSE_URL").expect("SEXTANT_TEST_STORAGE=clickhouse needs SEXTANT_CLICKHOUSE_URL");
    let database = database_for(dir);
    ["--storage", "clickhouse", "--clickhouse-url", &urls, "--clickhouse-database", &database]
        .map(str::to_owned)
        .to_vec()
}

/// Points `config` at the cluster `urls`, database `database`.
pub fn on_clickhouse(config: &mut ServeConfig, urls: &str, database: &str) {
    config.storage = sextant::config::StorageKind::Clickhouse;
    config.clickhouse_url = urls.split(',').map(str::to_owned).collect();
    config.clickhouse_database = database.to_owned();
    config.clickhouse_cluster = "sextant".into();
}

/// A database name of its own for a test's data dir.
pub fn database_for(dir: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    dir.hash(&mut hasher);
    format!("t{:016x}", hasher.finish())
}

pub fn bytes_under(path: &Path) -> u64 {
    let meta = std::fs::metadata(path).unwrap();
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path).unwrap().map(|entry| bytes_under(&entry.unwrap().path())).sum()
}

pub fn bearer<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().expect("ascii key"));
    request
}

/// 2026-01-01T00:00:00Z plus `seconds`.
pub fn ts(seconds: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: 1_767_225_600 + seconds, nanos: 0 }
}

pub fn event(id: &str, name: &str, user: &str, seconds: i64) -> pb::Event {
    pb::Event {
        event_id: id.into(),
        name: name.into(),
        user_id: user.into(),
        timestamp: Some(ts(seconds)),
        ..Default::default()
    }
}

pub fn with_props(mut event: pb::Event, props: &[(&str, pb::Value)]) -> pb::Event {
    event.properties = props.iter().map(|(k, v)| (k.to_string(), v.clone())).collect::<BTreeMap<_, _>>();
    event
}

/// A selector of one event name, without filters.
pub fn selector(event: &str) -> Option<pb::EventSelector> {
    Some(pb::EventSelector { event: event.into(), filters: vec![] })
}

/// A metric definition of `kind` over `event`.
pub fn definition(key: &str, kind: pb::MetricKind, event: &str) -> pb::MetricDefinition {
    pb::MetricDefinition { key: key.into(), kind: kind as i32, selector: selector(event), ..Default::default() }
}

pub fn num(n: f64) -> pb::Value {
    pb::Value { kind: Some(pb::value::Kind::NumberValue(n)) }
}

pub fn text(s: &str) -> pb::Value {
    pb::Value { kind: Some(pb::value::Kind::StringValue(s.into())) }
}

/// The BadRequest field violations carried in a status's details.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// A server with TLS on a fresh self-signed certificate for `localhost`, and a channel to it
/// that trusts the certificate.
pub struct TlsServer {
    pub running: RunningServer,
    pub channel: Channel,
    pub port: u16,
    _temp: tempfile::TempDir,
}

impl TlsServer {
    pub async fn start(configure: impl FnOnce(&mut ServeConfig)) -> Self {
        use tonic::transport::{Certificate, ClientTlsConfig};
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let temp = tempfile::tempdir().unwrap();
        let (cert, key) = (temp.path().join("cert.pem"), temp.path().join("key.pem"));
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
        let mut config = ServeConfig::for_data_dir(temp.path().join("data"));
        config.tls_cert = Some(cert);
        config.tls_key = Some(key);
        configure(&mut config);
        let running = server::start(&config).await.expect("TLS server starts");
        let port = running.addr.port();
        let tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(certified.cert.pem())).domain_name("localhost");
        let channel = Channel::from_shared(format!("https://localhost:{port}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .expect("TLS connects");
        TlsServer { running, channel, port, _temp: temp }
    }
}
