use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use super::{Api, Reply};
use crate::error::Error;
use crate::pb::{self, admin_service_server::AdminService};
use crate::storage::Tree;

/// Bytes of keys and values per backup message (below the default 4 MiB client decode limit
/// with room for framing).
const BACKUP_CHUNK_BYTES: usize = 3 * 1024 * 1024;

#[tonic::async_trait]
impl AdminService for Api {
    /// Streams the snapshot from a blocking thread through a bounded channel: a slow reader
    /// holds back only the snapshot, never the writer (the log is append-only).
    async fn backup(&self, request: Request<pb::BackupRequest>) -> Reply<BoxStream<pb::BackupResponse>> {
        self.authorize(&request, "")?;
        let (tx, rx) = mpsc::channel::<Result<pb::BackupResponse, Status>>(4);
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || {
            let mut chunk = pb::BackupResponse::default();
            let mut bytes = 0usize;
            let result = engine.snapshot(&mut |tree, key, value| {
                let tree = match tree {
                    Tree::Meta => pb::BackupTree::Meta,
                    Tree::Log => pb::BackupTree::Log,
                };
                chunk.entries.push(pb::BackupEntry { tree: tree as i32, key: key.to_vec(), value: value.to_vec() });
                bytes += key.len() + value.len() + 16;
                if bytes >= BACKUP_CHUNK_BYTES {
                    bytes = 0;
                    tx.blocking_send(Ok(std::mem::take(&mut chunk)))
                        .map_err(|_| Error::Aborted("backup reader went away".into()))?;
                }
                Ok(())
            });
            let last = match result {
                Ok(()) if chunk.entries.is_empty() => return,
                Ok(()) => Ok(chunk),
                Err(error) => Err(Status::from(error)),
            };
            let _ = tx.blocking_send(last);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn compact(&self, request: Request<pb::CompactRequest>) -> Reply<pb::CompactResponse> {
        self.authorize(&request, "")?;
        let compacted = self.engine.compact(&request.into_inner().project).await?;
        Ok(Response::new(pb::CompactResponse {
            bytes_before: compacted.bytes_before,
            bytes_after: compacted.bytes_after,
        }))
    }
}
