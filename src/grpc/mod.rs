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
pub mod codec;
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

use crate::core::cancel::CancelToken;
use crate::core::engine::Engine;
use crate::error::Result;

/// A unary handler's answer, short enough for one-line handler signatures.
pub type Reply<T> = Result<tonic::Response<T>, tonic::Status>;

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
    /// Authorizes a project-scoped request (`project` reads its project field) and hands
    /// over its message.
    pub fn scoped<T>(&self, request: tonic::Request<T>, project: impl FnOnce(&T) -> &str) -> Result<T, Status> {
        self.authorize(&request, project(request.get_ref()))?;
        Ok(request.into_inner())
    }

    pub async fn blocking<T, F>(&self, work: F) -> Result<T, Status>
    where
        F: FnOnce(&Engine) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        Ok(self.engine.off_executor(work).await?)
    }

    /// Like `blocking`, for read-only queries that may run long: when the call is dropped (its
    /// deadline, a client cancel, shutdown), the work's scans see the token and stop within a
    /// few hundred people, releasing the project. Never for work that stores anything.
    pub async fn query<T, F>(&self, work: F) -> Result<T, Status>
    where
        F: FnOnce(&Engine) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        /// Cancels the token when the handler's future is dropped before the work ends.
        struct CancelOnDrop(CancelToken);
        impl Drop for CancelOnDrop {
            fn drop(&mut self) {
                self.0.cancel();
            }
        }
        let token = CancelToken::default();
        // Dropped with this future: at once when the call is dropped, harmlessly after the work.
        let _cancel_on_drop = CancelOnDrop(token.clone());
        self.blocking(move |engine| token.scope(|| work(engine))).await
    }
}
