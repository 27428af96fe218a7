//! The gRPC layer: thin handlers that decode, call the core and encode.
//!
//! Access: `auth::ACCESS` says what each RPC needs (a role, or the server admin key) and the
//! guard layer checks key and role before the handler runs. Each handler's first line checks
//! the request's project: `self.authorize(&request, &request.get_ref().project)?;` (client
//! streams: `let grant = self.grant(&request)?;`, then `grant.check(&message.project)?` per
//! message). Forgetting it makes the call PERMISSION_DENIED for project keys.

pub mod admin;
pub mod analysis;
pub mod auth;
pub mod catalog;
pub mod cohort;
pub mod convert;
pub mod experiment;
pub mod goal;
pub mod ingest;
pub mod metric;
pub mod project;
pub mod status;
pub mod user;

use std::sync::Arc;

use tonic::Status;

use crate::core::engine::Engine;
use crate::error::Result;

/// Shared handle every service holds.
#[derive(Clone)]
pub struct Api {
    pub engine: Arc<Engine>,
    /// How many TrackStream batches one stream may have in flight before it stops reading.
    pub stream_inflight: usize,
    /// Turns true when the server starts shutting down: open streams stop reading, finish
    /// what they received and end with UNAVAILABLE.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

impl Api {
    /// Resolves once the server starts shutting down.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stopping = self.stopping.clone();
        async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        }
    }

    /// Runs blocking core work (locks, sled) off the async executor.
    pub async fn blocking<T, F>(&self, work: F) -> Result<T, Status>
    where
        F: FnOnce(&Engine) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || work(&engine))
            .await
            .map_err(|e| Status::internal(format!("task failed: {e}")))?
            .map_err(Status::from)
    }
}
