use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response};

use super::convert::{event_to_pb, time_range, user_to_pb};
use super::{Api, Reply};
use crate::core::engine::users::{EXPORT_CHUNK, Export};
use crate::core::model::Event;
use crate::core::page::PageRequest;
use crate::pb::{self, user_service_server::UserService};

#[tonic::async_trait]
impl UserService for Api {
    async fn get_user(&self, request: Request<pb::GetUserRequest>) -> Reply<pb::GetUserResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        let user = self.blocking(move |engine| engine.get_user(&request.project, &request.user_id)).await?;
        Ok(Response::new(pb::GetUserResponse { user: Some(user_to_pb(user)) }))
    }

    async fn list_user_events(&self, request: Request<pb::ListUserEventsRequest>) -> Reply<pb::ListUserEventsResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        let range = time_range("range", request.range.as_ref())?;
        let page = PageRequest { size: request.page_size, token: request.page_token };
        let (events, next_page_token) = self
            .blocking(move |engine| engine.list_user_events(&request.project, &request.user_id, range, &page))
            .await?;
        Ok(Response::new(pb::ListUserEventsResponse {
            events: events.into_iter().map(event_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn delete_user(&self, request: Request<pb::DeleteUserRequest>) -> Reply<pb::DeleteUserResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        let events_deleted = self.engine.delete_user(&request.project, &request.user_id).await?;
        Ok(Response::new(pb::DeleteUserResponse { events_deleted }))
    }

    /// Streams chunks of events; a slow reader holds back only this stream (bounded channel).
    async fn export_events(
        &self,
        request: Request<pb::ExportEventsRequest>,
    ) -> Reply<BoxStream<pb::ExportEventsResponse>> {
        let grant = self.grant(&request)?;
        grant.check(&request.get_ref().project)?;
        let request = request.into_inner();
        let range = time_range("range", request.range.as_ref())?;
        let project = request.project.clone();
        let export = self
            .blocking(move |engine| engine.export(&request.project, range, &request.names, &request.user_id))
            .await?;
        let (tx, rx) = mpsc::channel(4);
        let api = self.clone();
        tokio::spawn(async move {
            // Chunks of rows to read (the embedded table) or of events read already (a remote engine).
            let chunks: Vec<Result<Vec<Event>, (Vec<u32>, u64)>> = match export {
                Export::Rows { rows, generation } => {
                    rows.chunks(EXPORT_CHUNK).map(|chunk| Err((chunk.to_vec(), generation))).collect()
                }
                Export::Events(events) => {
                    let mut events = events.into_iter();
                    std::iter::from_fn(|| Some(events.by_ref().take(EXPORT_CHUNK).collect::<Vec<_>>()))
                        .take_while(|chunk| !chunk.is_empty())
                        .map(Ok)
                        .collect()
                }
            };
            for chunk in chunks {
                let project = project.clone();
                // A key revoked or expired mid-export ends the stream (UNAUTHENTICATED).
                let events = match (grant.recheck(&api.engine), chunk) {
                    (Err(status), _) => Err(status),
                    (Ok(()), Ok(events)) => Ok(events),
                    (Ok(()), Err((rows, generation))) => {
                        api.blocking(move |engine| engine.events_at(&project, &rows, generation)).await
                    }
                };
                let message = events
                    .map(|events| pb::ExportEventsResponse { events: events.into_iter().map(event_to_pb).collect() });
                let failed = message.is_err();
                if tx.send(message).await.is_err() || failed {
                    return; // the client went away, or the export failed
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
