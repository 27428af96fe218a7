//! Who may call what, and how much.
//!
//! - `ACCESS` maps every RPC to what it needs: nothing (health, reflection), the server admin
//!   key, or a role on the request's project. A method missing from the table is denied.
//! - `GuardLayer`, a tower layer in front of every service, checks the bearer key and the
//!   role, applies the per-key rate limit, the limit on concurrent streams and the time budget
//!   of unary calls, and hands the handler a `Grant`.
//! - Handlers check the project of the request: `self.authorize(&request, &project)?` as the
//!   first line (or `self.grant(&request)?` for client streams, then `grant.check(..)` per
//!   message). A handler of a project-scoped method that returns without checking has its
//!   reply replaced by PERMISSION_DENIED (fail closed), and tests/security.rs calls every method
//!   with another project's key.
//!
//! Auth is enforced if and only if a bootstrap key is configured; without one every call is
//! allowed (the server logs a warning at start).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::codegen::Bytes;
use tonic::{Request, Status};

use super::Api;
use crate::core::auth::{BootstrapKey, Principal, Role};
use crate::core::engine::Engine;
use crate::core::model::{Micros, now_micros};
use crate::error::{Error, echo};

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No key (health checks, reflection).
    Open,
    /// The server admin (bootstrap) key.
    Server,
    /// A key of the request's project with this role (or the server admin key).
    Project(Role),
    /// A key with this role of any project (stateless calls: the project may be empty).
    Stateless(Role),
}

use Access::{Project, Server, Stateless};
use Role::{Admin, Ingest, Read};

/// Every RPC of `sextant.v1` and what it needs (SPEC §10). Keep in step with the protos: a
/// unit test fails when an RPC is missing here.
pub const ACCESS: &[(&str, &[(&str, Access)])] = &[
    (
        "ProjectService",
        &[
            ("CreateProject", Server),
            ("ListProjects", Server),
            ("CreateApiKey", Server),
            ("GetProject", Project(Read)),
            ("GetProjectStats", Project(Read)),
            ("ListApiKeys", Project(Admin)),
            ("UpdateProject", Project(Admin)),
            ("RevokeApiKey", Project(Admin)),
        ],
    ),
    (
        "CatalogService",
        &[
            ("GetEventType", Project(Read)),
            ("ListEventTypes", Project(Read)),
            ("ListQuarantined", Project(Read)),
            ("UpsertEventType", Project(Admin)),
            ("DeleteEventType", Project(Admin)),
            ("ReplayQuarantined", Project(Admin)),
        ],
    ),
    (
        "IngestService",
        &[
            ("Track", Project(Ingest)),
            ("TrackStream", Project(Ingest)),
            ("Identify", Project(Ingest)),
            ("Alias", Project(Ingest)),
        ],
    ),
    (
        "UserService",
        &[
            ("GetUser", Project(Read)),
            ("ListUserEvents", Project(Read)),
            ("ExportEvents", Project(Read)),
            ("DeleteUser", Project(Admin)),
        ],
    ),
    (
        "MetricService",
        &[
            ("GetMetric", Project(Read)),
            ("ListMetrics", Project(Read)),
            ("QueryMetric", Project(Read)),
            ("GetMetricTree", Project(Read)),
            ("WatchMetric", Project(Read)),
            ("DetectAnomalies", Project(Read)),
            ("ForecastMetric", Project(Read)),
            ("CreateMetric", Project(Admin)),
            ("UpdateMetric", Project(Admin)),
            ("DeleteMetric", Project(Admin)),
            // Pushed values change stored data like a create; not in SPEC's INGEST list.
            ("RecordValues", Project(Admin)),
            ("ApplyFramework", Project(Admin)),
        ],
    ),
    (
        "GoalService",
        &[
            ("GetGoal", Project(Read)),
            ("ListGoals", Project(Read)),
            ("GetGoalProgress", Project(Read)),
            ("CreateGoal", Project(Admin)),
            ("UpdateGoal", Project(Admin)),
            ("DeleteGoal", Project(Admin)),
        ],
    ),
    (
        "CohortService",
        &[
            ("GetCohort", Project(Read)),
            ("ListCohorts", Project(Read)),
            ("ListCohortMembers", Project(Read)),
            ("GetCohortSize", Project(Read)),
            ("CreateCohort", Project(Admin)),
            ("DeleteCohort", Project(Admin)),
        ],
    ),
    (
        "AnalysisService",
        &[
            ("QueryFunnel", Project(Read)),
            ("QueryRetention", Project(Read)),
            ("QueryCohortTable", Project(Read)),
            ("QueryAttribution", Project(Read)),
            ("QueryRevenueBridge", Project(Read)),
        ],
    ),
    (
        "ExperimentService",
        &[
            ("Assign", Project(Ingest)),
            ("LogExposures", Project(Ingest)),
            ("GetExperiment", Project(Read)),
            ("ListExperiments", Project(Read)),
            ("GetExperimentResults", Project(Read)),
            ("CreateExperiment", Project(Admin)),
            ("UpdateExperiment", Project(Admin)),
            ("StartExperiment", Project(Admin)),
            ("StopExperiment", Project(Admin)),
            ("AnalyzeSummaries", Stateless(Read)),
            ("AdjustPValues", Stateless(Read)),
            ("PlanExperiment", Stateless(Read)),
            ("GetHoldout", Project(Read)),
            ("ListHoldouts", Project(Read)),
            ("GetHoldoutResults", Project(Read)),
            ("CreateHoldout", Project(Admin)),
            ("StopHoldout", Project(Admin)),
        ],
    ),
    ("AdminService", &[("Backup", Server), ("Compact", Server)]),
];

/// Unary methods the server's time budget (`--query-timeout-secs`) does not bound: Compact
/// returns when its files are durable, which at tens of millions of events takes longer than a
/// query's budget (it would go on after the client read DEADLINE_EXCEEDED). The client's own
/// deadline still bounds them.
const UNBUDGETED: &[&str] = &["/sextant.v1.AdminService/Compact"];

/// Services open to everyone (every method).
const OPEN_SERVICES: &[&str] =
    &["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

/// What the guard knows about one method.
#[derive(Debug, Clone, Copy)]
struct Method {
    access: Access,
    /// Client or server streaming: counts against the stream limit, no unary time budget.
    streaming: bool,
}

/// The methods of `sextant.v1` by path (`/sextant.v1.IngestService/Track`), with their
/// streaming kind from the descriptor set.
fn method_table() -> HashMap<String, Method> {
    let mut streaming = HashMap::new();
    if let Ok(set) = prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET) {
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    streaming.insert(path, method.client_streaming() || method.server_streaming());
                }
            }
        }
    }
    let mut table = HashMap::new();
    for (service, methods) in ACCESS {
        for (name, access) in *methods {
            let path = format!("/sextant.v1.{service}/{name}");
            let streaming = streaming.get(&path).copied().unwrap_or(false);
            table.insert(path, Method { access: *access, streaming });
        }
    }
    table
}

/// What the guard allowed, for the handler to finish the check against the request's project.
#[derive(Debug)]
pub struct Grant {
    principal: Principal,
    access: Access,
    method: String,
    checked: AtomicBool,
    /// The key generation and expiry at the last `recheck`.
    seen: Mutex<Option<(u64, Option<Micros>)>>,
}

impl Grant {
    /// Allows the call on `project`; a key of another project is PERMISSION_DENIED.
    pub fn check(&self, project: &str) -> Result<(), Status> {
        self.checked.store(true, Ordering::Relaxed);
        match (&self.principal, self.access) {
            (Principal::Open | Principal::ServerAdmin, _) | (_, Access::Open | Access::Stateless(_)) => Ok(()),
            (Principal::Key { project: own, id, .. }, _) if own != project => Err(Error::PermissionDenied(format!(
                "api key {id} belongs to project {own}, not {project}",
                own = echo(own),
                project = echo(project)
            ))
            .into()),
            _ => Ok(()),
        }
    }

    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// Re-checks a project key on every message of an open stream: revoked or expired since
    /// the call started is UNAUTHENTICATED. Cheap: a full look only when a key was revoked
    /// since the last one, or the cached expiry passed.
    pub fn recheck(&self, engine: &Engine) -> Result<(), Status> {
        let Principal::Key { id, .. } = &self.principal else {
            return Ok(());
        };
        let generation = engine.api_key_generation();
        let mut seen = self.seen.lock();
        if let Some((at, expires)) = *seen
            && at == generation
            && expires.is_none_or(|t| now_micros() < t)
        {
            return Ok(());
        }
        let expires = engine.recheck_api_key(id)?;
        *seen = Some((generation, expires));
        Ok(())
    }
}

impl Api {
    /// The project check every handler of a project-scoped call makes first.
    pub fn authorize<T>(&self, request: &Request<T>, project: &str) -> Result<(), Status> {
        self.grant(request)?.check(project)
    }

    /// The grant of a call, for client streams that check each message's project with
    /// `grant.check(..)`. Marks the call as checked.
    pub fn grant<T>(&self, request: &Request<T>) -> Result<Arc<Grant>, Status> {
        let grant = request.extensions().get::<Arc<Grant>>().cloned().ok_or_else(|| {
            Status::from(Error::PermissionDenied("no access grant: the call did not pass the guard".into()))
        })?;
        grant.checked.store(true, Ordering::Relaxed);
        Ok(grant)
    }
}

/// Limits the guard applies.
#[derive(Debug, Clone, Default)]
pub struct GuardConfig {
    /// The server admin key; None runs the server open.
    pub bootstrap_key: Option<String>,
    /// Requests per second per key (per peer address when open); 0 disables.
    pub rate_limit: f64,
    /// Streaming calls open at once, server-wide.
    pub max_streams: usize,
    /// Time budget of unary calls; None: only the client's grpc-timeout.
    pub unary_budget: Option<Duration>,
}

/// A token bucket per caller: `rate` tokens a second, at most `rate` (at least 1) stored.
struct RateLimiter {
    rate: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// Takes a token, or says how long until one is available.
    fn take(&self, caller: &str) -> Result<(), Duration> {
        let burst = self.rate.max(1.0);
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        if buckets.len() > 100_000 {
            // Forget callers whose bucket has refilled: they would start full anyway.
            buckets.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * self.rate < burst);
        }
        let (tokens, at) = buckets.entry(caller.to_owned()).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - *tokens) / self.rate))
    }
}

struct Guard {
    methods: HashMap<String, Method>,
    bootstrap: Option<BootstrapKey>,
    engine: Arc<Engine>,
    rate: Option<RateLimiter>,
    streams: Arc<Semaphore>,
    max_streams: usize,
    unary_budget: Option<Duration>,
}

/// The tower layer in front of every service (see the module docs).
#[derive(Clone)]
pub struct GuardLayer(Arc<Guard>);

impl GuardLayer {
    pub fn new(engine: Arc<Engine>, config: &GuardConfig) -> crate::error::Result<Self> {
        let bootstrap = match config.bootstrap_key.as_deref() {
            Some(key) if !key.is_empty() => Some(BootstrapKey::new(key)?),
            _ => None,
        };
        let rate = (config.rate_limit > 0.0)
            .then(|| RateLimiter { rate: config.rate_limit, buckets: Mutex::new(HashMap::new()) });
        let max_streams = config.max_streams.max(1);
        Ok(GuardLayer(Arc::new(Guard {
            methods: method_table(),
            bootstrap,
            engine,
            rate,
            streams: Arc::new(Semaphore::new(max_streams)),
            max_streams,
            unary_budget: config.unary_budget,
        })))
    }

    pub fn auth_enabled(&self) -> bool {
        self.0.bootstrap.is_some()
    }

    /// The dashboard's check, the one a READ call on `project` gets: the bearer key, its
    /// role and project, and the rate limit. `project` None: any project the key may read
    /// (the caller picks one from the returned principal).
    pub fn admit_web(
        &self,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
        project: Option<&str>,
    ) -> Result<Principal, Error> {
        let guard = &self.0;
        let principal = match &guard.bootstrap {
            None => Principal::Open,
            Some(bootstrap) => guard.authenticate(bootstrap, headers)?,
        };
        check_role(&principal, Access::Project(Role::Read), "/dashboard")?;
        guard.limit_rate(&principal, extensions)?;
        if let (Principal::Key { project: own, id, .. }, Some(project)) = (&principal, project)
            && own != project
        {
            return Err(Error::PermissionDenied(format!("api key {id} belongs to project {own:?}, not {project:?}")));
        }
        Ok(principal)
    }
}

impl<S> tower::Layer<S> for GuardLayer {
    type Service = GuardService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GuardService { inner, guard: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct GuardService<S> {
    inner: S,
    guard: Arc<Guard>,
}

/// What the guard decided before calling the service.
struct Admitted {
    grant: Option<Arc<Grant>>,
    permit: Option<OwnedSemaphorePermit>,
    deadline: Option<Duration>,
}

impl Guard {
    fn admit<B>(&self, request: &http::Request<B>) -> Result<Admitted, Error> {
        let path = request.uri().path();
        let service = path.trim_start_matches('/').split('/').next().unwrap_or_default();
        // The dashboard's paths (`/`, `/api/…`, `/assets/…`) name no gRPC service: the web
        // routes check their key themselves (`GuardLayer::admit_web`).
        if OPEN_SERVICES.contains(&service) || !service.contains('.') {
            return Ok(Admitted { grant: None, permit: None, deadline: None });
        }
        let method = self.methods.get(path).copied();
        let principal = match &self.bootstrap {
            None => Principal::Open,
            Some(bootstrap) => self.authenticate(bootstrap, request.headers())?,
        };
        let method = match (method, &principal) {
            (Some(method), _) => method,
            // Open servers let the router answer (UNIMPLEMENTED) for unknown paths.
            (None, Principal::Open) => Method { access: Access::Project(Role::Admin), streaming: false },
            (None, _) => return Err(Error::PermissionDenied(format!("{path} is not in the access table"))),
        };
        check_role(&principal, method.access, path)?;
        self.limit_rate(&principal, request.extensions())?;
        let permit = if method.streaming {
            let permit = self.streams.clone().try_acquire_owned().map_err(|_| {
                Error::exhausted("streams", format!("{} streaming calls open, at most that many", self.max_streams))
            })?;
            Some(permit)
        } else {
            None
        };
        let deadline = if method.streaming {
            None
        } else {
            let client = request.headers().get("grpc-timeout").and_then(|v| parse_grpc_timeout(v.as_bytes()));
            // End just before the client's deadline so it reads DEADLINE_EXCEEDED, not the
            // CANCELLED tonic's own timer would send.
            let client =
                client.map(|d| d.saturating_sub((d / 20).clamp(Duration::from_millis(1), Duration::from_millis(50))));
            let budget = if UNBUDGETED.contains(&path) { None } else { self.unary_budget };
            match (client, budget) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        };
        let grant = Grant {
            principal,
            access: method.access,
            method: path.to_owned(),
            checked: AtomicBool::new(false),
            seen: Mutex::new(None),
        };
        Ok(Admitted { grant: Some(Arc::new(grant)), permit, deadline })
    }

    /// The per-key (per-address when open) token bucket.
    fn limit_rate(&self, principal: &Principal, extensions: &http::Extensions) -> Result<(), Error> {
        let Some(rate) = &self.rate else {
            return Ok(());
        };
        let caller = match principal {
            Principal::Key { id, .. } => id.clone(),
            Principal::ServerAdmin => "server-admin".to_owned(),
            Principal::Open => peer(extensions).map(|ip| ip.to_string()).unwrap_or_default(),
        };
        rate.take(&caller).map_err(|retry_after| Error::RateLimited {
            message: format!("rate limit of {} requests per second exceeded", rate.rate),
            retry_after,
        })
    }

    fn authenticate(&self, bootstrap: &BootstrapKey, headers: &http::HeaderMap) -> Result<Principal, Error> {
        let value = headers
            .get(http::header::AUTHORIZATION)
            .ok_or_else(|| Error::Unauthenticated("missing authorization metadata (Bearer <api key>)".into()))?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or_else(|| Error::Unauthenticated("authorization must be \"Bearer <api key>\"".into()))?;
        if bootstrap.matches(token) {
            return Ok(Principal::ServerAdmin);
        }
        self.engine.authenticate(token)
    }
}

fn check_role(principal: &Principal, access: Access, path: &str) -> Result<(), Error> {
    let method = path.rsplit('/').next().unwrap_or(path);
    match (principal, access) {
        (Principal::Open | Principal::ServerAdmin, _) | (_, Access::Open) => Ok(()),
        (Principal::Key { .. }, Access::Server) => {
            Err(Error::PermissionDenied(format!("{method} needs the server admin key")))
        }
        (Principal::Key { role, id, .. }, Access::Project(needed) | Access::Stateless(needed)) => {
            if role.allows(needed) {
                Ok(())
            } else {
                Err(Error::PermissionDenied(format!(
                    "api key {id} has role {}; {method} needs {}",
                    role.name(),
                    needed.name()
                )))
            }
        }
    }
}

fn peer(extensions: &http::Extensions) -> Option<IpAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    extensions
        .get::<TcpConnectInfo>()
        .and_then(|info| info.remote_addr())
        .or_else(|| extensions.get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|info| info.get_ref().remote_addr()))
        .map(|addr| addr.ip())
}

/// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

fn status_response(error: Error) -> http::Response<tonic::body::Body> {
    Status::from(error).into_http()
}

impl<S, B, R> tower::Service<http::Request<B>> for GuardService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: http_body::Body<Data = Bytes> + Send + 'static,
    R::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The ready service handles this call; a fresh clone waits for the next poll_ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let admitted = match self.guard.admit(&request) {
            Ok(admitted) => admitted,
            Err(error) => return Box::pin(async move { Ok(status_response(error)) }),
        };
        if let Some(grant) = &admitted.grant {
            request.extensions_mut().insert(grant.clone());
        }
        Box::pin(async move {
            let Admitted { grant, permit, deadline } = admitted;
            let call = inner.call(request);
            let mut response = match deadline {
                None => call.await?,
                Some(deadline) => match tokio::time::timeout(deadline, call).await {
                    Ok(response) => response?,
                    Err(_) => {
                        let budget = format!("call exceeded its time budget of {:.3} s", deadline.as_secs_f64());
                        return Ok(status_response(Error::DeadlineExceeded(budget)));
                    }
                },
            };
            // Fail closed when a project-scoped handler forgot its check (UNIMPLEMENTED stubs
            // touch no data and pass; neither do requests the codec could not decode, which
            // never reached the handler).
            let unimplemented = response.headers().get("grpc-status").is_some_and(|code| code == "12");
            let undecodable = response.headers_mut().remove(super::codec::UNDECODABLE).is_some();
            if let Some(grant) = grant
                && matches!((&grant.principal, grant.access), (Principal::Key { .. }, Access::Project(_)))
                && !grant.checked.load(Ordering::Relaxed)
                && !unimplemented
                && !undecodable
            {
                tracing::error!(method = %grant.method, "handler returned without checking the project; denied");
                return Ok(status_response(Error::PermissionDenied(format!(
                    "{} did not check project access",
                    grant.method
                ))));
            }
            let response = response.map(tonic::body::Body::new);
            Ok(match permit {
                None => response,
                Some(permit) => response.map(|body| tonic::body::Body::new(Held { body, _permit: permit })),
            })
        })
    }
}

/// A response body holding a stream permit until the stream ends.
struct Held {
    body: tonic::body::Body,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for Held {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_has_an_access_rule() {
        let set = prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET).unwrap();
        let table = method_table();
        let mut rpcs = 0;
        for file in set.file.iter().filter(|f| f.package() == "sextant.v1") {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/sextant.v1.{}/{}", service.name(), method.name());
                    assert!(table.contains_key(&path), "{path} is missing from grpc::auth::ACCESS");
                    rpcs += 1;
                }
            }
        }
        assert_eq!(rpcs, table.len(), "ACCESS names an RPC the protos do not declare");
        assert!(table["/sextant.v1.IngestService/TrackStream"].streaming);
        assert!(table["/sextant.v1.UserService/ExportEvents"].streaming);
        assert!(!table["/sextant.v1.IngestService/Track"].streaming);
    }

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout(b"100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        for bad in [&b""[..], b"m", b"10x", b"123456789S", b"-1S", b"1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    /// A guard in front of a service that takes `delay` and answers OK; returns grpc-status.
    async fn guarded_call(budget: Option<Duration>, header: Option<&str>, delay: Duration) -> String {
        guarded_call_of("/sextant.v1.ProjectService/GetProjectStats", budget, header, delay).await
    }

    /// `guarded_call` of the method at `path`.
    async fn guarded_call_of(path: &str, budget: Option<Duration>, header: Option<&str>, delay: Duration) -> String {
        use tower::{Layer, Service, ServiceExt};
        let dir = tempfile::tempdir().unwrap();
        let storage = crate::storage::SledStorage::open(dir.path()).unwrap();
        let engine = Engine::open(Arc::new(storage), Default::default(), Default::default()).unwrap();
        let config = GuardConfig { unary_budget: budget, max_streams: 1, ..Default::default() };
        let slow = tower::service_fn(move |_: http::Request<()>| async move {
            tokio::time::sleep(delay).await;
            Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
        });
        let mut service = GuardLayer::new(engine, &config).unwrap().layer(slow);
        let mut request = http::Request::builder().uri(path);
        if let Some(header) = header {
            request = request.header("grpc-timeout", header);
        }
        let response = service.ready().await.unwrap().call(request.body(()).unwrap()).await.unwrap();
        let status = response.headers().get("grpc-status").map(|v| v.to_str().unwrap().to_owned());
        status.unwrap_or_else(|| "0".into())
    }

    #[tokio::test]
    async fn unary_calls_end_at_the_budget_or_the_client_deadline() {
        let slow = Duration::from_secs(5);
        assert_eq!(guarded_call(None, Some("100m"), slow).await, "4", "client deadline");
        assert_eq!(guarded_call(Some(Duration::from_millis(50)), None, slow).await, "4", "budget");
        assert_eq!(guarded_call(Some(Duration::from_millis(50)), Some("10S"), slow).await, "4", "the earlier wins");
        let fast = Duration::from_millis(1);
        assert_eq!(guarded_call(Some(Duration::from_secs(5)), Some("5S"), fast).await, "0");
        assert_eq!(guarded_call(None, None, fast).await, "0");
    }

    #[tokio::test]
    async fn compact_is_bounded_by_the_client_deadline_only() {
        let compact = "/sextant.v1.AdminService/Compact";
        let budget = Some(Duration::from_millis(50));
        let longer = Duration::from_millis(300);
        assert_eq!(guarded_call_of(compact, budget, None, longer).await, "0", "past the server's budget");
        assert_eq!(
            guarded_call_of(compact, budget, Some("100m"), Duration::from_secs(5)).await,
            "4",
            "client deadline"
        );
        assert_eq!(guarded_call(budget, None, longer).await, "4", "a query at the same budget");
    }

    #[test]
    fn rate_limiter_refills() {
        let limiter = RateLimiter { rate: 2.0, buckets: Mutex::new(HashMap::new()) };
        assert!(limiter.take("a").is_ok());
        assert!(limiter.take("a").is_ok());
        let wait = limiter.take("a").unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(500), "{wait:?}");
        assert!(limiter.take("b").is_ok(), "buckets are per caller");
    }
}
