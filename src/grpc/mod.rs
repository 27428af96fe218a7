//! The gRPC layer: thin handlers that decode, call the core and encode.

pub mod analysis;
pub mod catalog;
pub mod cohort;
pub mod convert;
pub mod experiment;
pub mod goal;
pub mod ingest;
pub mod metric;
pub mod project;
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
}

impl Api {
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
