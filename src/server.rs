//! Binds the listeners first, then serves every service until a shutdown signal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Identity, Server, ServerTlsConfig};

use crate::config::{ServeConfig, Toggle};
use crate::core::engine::Engine;
use crate::core::engine::compaction::{run_checkpoint_job, run_compaction_job};
use crate::core::engine::expiry::run_retention_job;
use crate::grpc::Api;
use crate::grpc::auth::GuardLayer;
use crate::pb;
use crate::telemetry;

pub struct RunningServer {
    pub addr: SocketAddr,
    /// The dashboard's URL, when it is served.
    pub web_url: Option<String>,
    pub metrics_addr: Option<SocketAddr>,
    pub engine: Arc<Engine>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningServer {
    /// Stops accepting, lets in-flight calls finish within the grace period, then flushes.
    /// Returns once the database is released, so a new server can open the same directory.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.wait().await
    }

    /// Waits until the server ends (after a signal was handled by `serve_until_signal`) and
    /// its storage is released.
    pub async fn wait(self) -> anyhow::Result<()> {
        let engine = Arc::downgrade(&self.engine);
        drop(self.engine);
        self.task.await.context("server task")??;
        released(engine).await;
        Ok(())
    }
}

/// Waits for the last holder of the engine to let go. The server task ends when hyper's graceful
/// shutdown counts no open connection, but a connection's task may still be dropping its copy of
/// the services (and with them the engine and the database's file lock) on another thread; a
/// blocking call cut off by the grace period also runs to its end. The storage is flushed
/// already, so a call that runs longer than the wait is only logged: a process exits anyway,
/// and a server reopened in this one would name the directory as in use.
async fn released(engine: std::sync::Weak<Engine>) {
    const PATIENCE: Duration = Duration::from_secs(30);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while engine.strong_count() > 0 {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                holders = engine.strong_count(),
                waited_secs = PATIENCE.as_secs(),
                "a call still holds the storage after stop"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Opens storage, binds, and starts serving in the background.
pub async fn start(config: &ServeConfig) -> anyhow::Result<RunningServer> {
    config.validate()?;
    let opening = config.clone();
    let engine = tokio::task::spawn_blocking(move || -> anyhow::Result<Arc<Engine>> {
        Ok(Engine::open(opening.open_storage()?, opening.limits(), opening.clock.clone())?)
    })
    .await??;
    // A checkpoint file that fails its check ends the process, as if the start had refused
    // it: no answer has left from it (an answer waits for the check of the files it read), and
    // every ack is in the log.
    let verification = engine.verification();
    std::thread::spawn(move || {
        if let Err(error) = verification.outcome() {
            tracing::error!(%error, "stopping: a checkpoint file is corrupt");
            std::process::exit(1);
        }
    });

    let listener = TcpListener::bind(config.addr).await.with_context(|| format!("binding {}", config.addr))?;
    let addr = listener.local_addr()?;
    let metrics_addr = match config.metrics_addr()? {
        Some(metrics_addr) => {
            telemetry::prometheus();
            let (bound, metrics_listener) = telemetry::bind_metrics(metrics_addr)
                .await
                .with_context(|| format!("binding metrics {metrics_addr}"))?;
            tokio::spawn(telemetry::serve_metrics(metrics_listener));
            Some(bound)
        }
        None => None,
    };

    let guard = GuardLayer::new(engine.clone(), &config.guard())?;
    if guard.auth_enabled() {
        tracing::info!("auth enforced: every call but health and reflection needs an API key");
    } else {
        tracing::warn!(
            "no bootstrap key configured (--bootstrap-key / SEXTANT_BOOTSTRAP_KEY): auth is OFF, every call is allowed"
        );
    }
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let api = Api { engine: engine.clone(), stream_inflight: config.stream_inflight, stopping };
    let max = config.max_message_bytes;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    use pb::admin_service_server::AdminServiceServer;
    use pb::analysis_service_server::AnalysisServiceServer;
    use pb::catalog_service_server::CatalogServiceServer;
    use pb::cohort_service_server::CohortServiceServer;
    use pb::experiment_service_server::ExperimentServiceServer;
    use pb::goal_service_server::GoalServiceServer;
    use pb::ingest_service_server::IngestServiceServer;
    use pb::metric_service_server::MetricServiceServer;
    use pb::project_service_server::ProjectServiceServer;
    use pb::user_service_server::UserServiceServer;
    health_reporter.set_serving::<IngestServiceServer<Api>>().await;
    health_reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;

    let mut builder = Server::builder();
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        let cert = std::fs::read(cert).with_context(|| format!("reading --tls-cert {}", cert.display()))?;
        let key = std::fs::read(key).with_context(|| format!("reading --tls-key {}", key.display()))?;
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
            .context("TLS configuration")?;
    }
    // The dashboard shares the listener: HTTP/1.1 requests and paths that name no gRPC
    // service go to its routes, gRPC calls to the services.
    let web = config.web == Toggle::On;
    let routes = match web {
        true => tonic::service::Routes::from(crate::web::routes(engine.clone(), guard.clone())),
        false => tonic::service::Routes::default(),
    };
    let router = builder
        .accept_http1(web)
        .layer(telemetry::RequestMetricsLayer)
        .layer(guard)
        .add_routes(routes)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(ProjectServiceServer::new(api.clone()).max_decoding_message_size(max))
        .add_service(CatalogServiceServer::new(api.clone()).max_decoding_message_size(max))
        .add_service(IngestServiceServer::new(api.clone()).max_decoding_message_size(max))
        .add_service(UserServiceServer::new(api.clone()).max_decoding_message_size(max))
        .add_service(MetricServiceServer::new(api.clone()).max_decoding_message_size(max))
        .add_service(GoalServiceServer::new(api.clone()).max_decoding_message_size(max))
        .add_service(CohortServiceServer::new(api.clone()).max_decoding_message_size(max))
        .add_service(AnalysisServiceServer::new(api.clone()).max_decoding_message_size(max))
        .add_service(ExperimentServiceServer::new(api.clone()).max_decoding_message_size(max))
        .add_service(AdminServiceServer::new(api.clone()).max_decoding_message_size(max));

    let retention =
        tokio::spawn(run_retention_job(engine.clone(), Duration::from_secs(config.retention_interval_secs)));
    let compaction =
        tokio::spawn(run_compaction_job(engine.clone(), Duration::from_secs(config.compact_interval_secs)));
    let checkpoints =
        tokio::spawn(run_checkpoint_job(engine.clone(), Duration::from_secs(config.checkpoint_interval_secs)));

    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let grace = Duration::from_secs(config.grace_secs);
    let task_engine = engine.clone();
    let stopping_streams = stopping_tx;
    let task = tokio::spawn(async move {
        let (stopping_tx, stopping_rx) = oneshot::channel::<()>();
        let live_engine = task_engine.clone();
        let signal = async move {
            let _ = shutdown_rx.await;
            // Open streams stop reading and finish what they received (see IngestService).
            let _ = stopping_streams.send(true);
            // Watch streams never end by themselves: end them so shutdown need not wait.
            live_engine.stop_live();
            let _ = stopping_tx.send(());
        };
        // No Nagle: a reply that fills a partial segment would otherwise wait for the peer's delayed ACK
        // (40 ms on Linux).
        let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let serve = router.serve_with_incoming_shutdown(incoming, signal);
        tokio::pin!(serve);
        // After the signal, in-flight calls get `grace` to finish; then the server is dropped.
        let served = tokio::select! {
            result = &mut serve => result.map_err(anyhow::Error::from),
            _ = async { let _ = stopping_rx.await; tokio::time::sleep(grace).await } => {
                tracing::warn!(grace_secs = grace.as_secs(), "grace period over; dropping open calls");
                Ok(())
            }
        };
        health_reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        // Wait until the jobs are gone: they hold the engine, and with it the database lock.
        retention.abort();
        let _ = retention.await;
        compaction.abort();
        let _ = compaction.await;
        checkpoints.abort();
        let _ = checkpoints.await;
        let closed = tokio::task::spawn_blocking(move || task_engine.close()).await?;
        served?;
        closed?;
        tracing::info!("stopped; storage flushed");
        Ok(())
    });
    let scheme = if config.tls_cert.is_some() { "https" } else { "http" };
    let web_url = web.then(|| format!("{scheme}://{addr}/"));
    tracing::info!(addr = %addr, metrics = ?metrics_addr, web = ?web_url, "listening");
    Ok(RunningServer { addr, web_url, metrics_addr, engine, shutdown: Some(shutdown_tx), task })
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown signal received");
}
