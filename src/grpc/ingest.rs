use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use super::convert::{incoming_event, item_error, user_update_from_pb};
use super::{Api, Reply};
use crate::core::engine::ingest::Turn;
use crate::core::model::now_micros;
use crate::error::Error;
use crate::pb::{self, ingest_service_server::IngestService};

impl Api {
    async fn track_batch(&self, request: pb::TrackRequest, turn: Turn) -> Result<pb::TrackResponse, Status> {
        let started = Instant::now();
        let received = now_micros();
        let items = request.events.into_iter().map(|e| incoming_event(e, received)).collect();
        let outcome = self.engine.track_in_turn(&request.project, items, turn).await?;
        metrics::histogram!("sextant_ack_latency_seconds").record(started.elapsed().as_secs_f64());
        Ok(pb::TrackResponse {
            sequence: request.sequence,
            accepted: outcome.accepted,
            duplicates: outcome.duplicates,
            quarantined: outcome.quarantined,
            rejected: outcome.rejected.into_iter().map(item_error).collect(),
            warnings: outcome.warnings.into_iter().map(item_error).collect(),
        })
    }
}

#[tonic::async_trait]
impl IngestService for Api {
    async fn track(&self, request: Request<pb::TrackRequest>) -> Reply<pb::TrackResponse> {
        self.authorize(&request, &request.get_ref().project)?;
        Ok(Response::new(self.track_batch(request.into_inner(), Turn::default()).await?))
    }

    /// Batches are processed in order with up to `stream_inflight` of them in flight; acks go
    /// out in the order of the requests. Every received batch is acked or failed: a failed
    /// batch ends the stream with its status after the acks before it. When the server shuts
    /// down, the stream stops reading, acks what it received and ends with UNAVAILABLE: the
    /// client resends from the first unacked sequence, to this server or another.
    async fn track_stream(&self, request: Request<Streaming<pb::TrackRequest>>) -> Reply<BoxStream<pb::TrackResponse>> {
        let grant = self.grant(&request)?;
        let mut inbound = request.into_inner();
        let inflight = self.stream_inflight.max(1);
        let (ack_tx, ack_rx) = mpsc::channel::<Result<pb::TrackResponse, Status>>(inflight);
        let api = self.clone();
        let cut = Arc::new(AtomicBool::new(false));
        let stopped = {
            let (cut, stopped) = (cut.clone(), self.stopped());
            async move {
                stopped.await;
                cut.store(true, Ordering::Relaxed);
            }
        };
        tokio::spawn(async move {
            // Each batch runs as its own task, so decoding, validation and encoding of
            // in-flight batches use every core; `buffered` yields results in request order.
            let cut_by_shutdown = {
                // Each batch queues its write after the one before it: of two batches
                // repeating an id, the earlier one stores it.
                let mut previous = None;
                let pending =
                    (&mut inbound).take_until(stopped).map(|item| {
                        let api = api.clone();
                        let grant = grant.clone();
                        let (turn, next) = Turn::chain(previous.take());
                        previous = Some(next);
                        let task = tokio::spawn(async move {
                            match item {
                                Ok(batch) => {
                                    grant.check(&batch.project)?;
                                    grant.recheck(&api.engine)?;
                                    api.track_batch(batch, turn).await
                                }
                                Err(status) => Err(oversize_as_exhausted(status)),
                            }
                        });
                        async move {
                            task.await.unwrap_or_else(|e| Err(Status::internal(format!("batch task failed: {e}"))))
                        }
                    });
                let mut acks = std::pin::pin!(pending.buffered(inflight));
                loop {
                    match acks.next().await {
                        Some(ack) => {
                            let failed = ack.is_err();
                            if ack_tx.send(ack).await.is_err() || failed {
                                return;
                            }
                        }
                        None => break cut.load(Ordering::Relaxed),
                    }
                }
            };
            if cut_by_shutdown {
                let status = Status::unavailable("server shutting down: batches after the last ack were not read");
                let _ = ack_tx.send(Err(status)).await;
                drop(ack_tx);
                // Keep the request open briefly (discarding what still arrives), so the client
                // reads the status before the connection closes rather than a reset.
                let _ = tokio::time::timeout(SHUTDOWN_LINGER, async { while inbound.next().await.is_some() {} }).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(ack_rx))))
    }

    async fn identify(&self, request: Request<pb::IdentifyRequest>) -> Reply<pb::IdentifyResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        let updates = request.users.into_iter().enumerate().map(|(i, u)| user_update_from_pb(i, u)).collect();
        let (updated, rejected) = self.engine.identify(&request.project, updates).await?;
        Ok(Response::new(pb::IdentifyResponse { updated, rejected: rejected.into_iter().map(item_error).collect() }))
    }

    async fn alias(&self, request: Request<pb::AliasRequest>) -> Reply<pb::AliasResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        self.engine.alias(&request.project, request.anonymous_id, request.user_id).await?;
        Ok(Response::new(pb::AliasResponse {}))
    }
}

/// How long a stream cut by shutdown waits for the client to read its final status.
const SHUTDOWN_LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// See `telemetry::resource_exhausted_for_oversize`: the same rule for streamed messages.
fn oversize_as_exhausted(mut status: Status) -> Status {
    if status.code() == tonic::Code::OutOfRange && status.message().contains("message length too large") {
        return Error::exhausted("message", status.message()).into();
    }
    status.metadata_mut().remove(super::codec::UNDECODABLE);
    status
}
