use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response};

use super::convert::{event_to_pb, time_range, user_to_pb};
use super::{Api, Reply};
use crate::core::engine::users::EXPORT_CHUNK;
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
        let (rows, generation) = self
            .blocking(move |engine| engine.export_rows(&request.project, range, &request.names, &request.user_id))
            .await?;
        let (tx, rx) = mpsc::channel(4);
        let api = self.clone();
        tokio::spawn(async move {
            for chunk in rows.chunks(EXPORT_CHUNK) {
                let chunk = chunk.to_vec();
                let project = project.clone();
                // A key revoked or expired mid-export ends the stream (UNAUTHENTICATED).
                let events = match grant.recheck(&api.engine) {
                    Ok(()) => api.blocking(move |engine| engine.events_at(&project, &chunk, generation)).await,
                    Err(status) => Err(status),
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
