use tonic::{Request, Response};

use super::convert::{event_type_from_pb, event_type_to_pb, quarantined_to_pb};
use super::{Api, Reply};
use crate::core::page::{PageRequest, paginate};
use crate::error::{Error, echo};
use crate::pb::{self, catalog_service_server::CatalogService};

#[tonic::async_trait]
impl CatalogService for Api {
    async fn upsert_event_type(
        &self,
        request: Request<pb::UpsertEventTypeRequest>,
    ) -> Reply<pb::UpsertEventTypeResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        let event_type = request.event_type.ok_or_else(|| Error::invalid("event_type", "required"))?;
        let event_type = event_type_from_pb(event_type)?;
        let project = request.project;
        let stored = self.blocking(move |engine| engine.upsert_event_type(&project, event_type)).await?;
        Ok(Response::new(pb::UpsertEventTypeResponse { event_type: Some(event_type_to_pb(stored)) }))
    }

    async fn get_event_type(&self, request: Request<pb::GetEventTypeRequest>) -> Reply<pb::GetEventTypeResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        let found = self.blocking(move |engine| engine.get_event_type(&request.project, &request.name)).await?;
        Ok(Response::new(pb::GetEventTypeResponse { event_type: Some(event_type_to_pb(found)) }))
    }

    async fn list_event_types(&self, request: Request<pb::ListEventTypesRequest>) -> Reply<pb::ListEventTypesResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        let page = PageRequest { size: request.page_size, token: request.page_token };
        let project = request.project;
        let (types, next_page_token) = self
            .blocking(move |engine| paginate(engine.list_event_types(&project)?, |t| t.name.clone(), &page))
            .await?;
        Ok(Response::new(pb::ListEventTypesResponse {
            event_types: types.into_iter().map(event_type_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn delete_event_type(
        &self,
        request: Request<pb::DeleteEventTypeRequest>,
    ) -> Reply<pb::DeleteEventTypeResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        self.blocking(move |engine| engine.delete_event_type(&request.project, &request.name)).await?;
        Ok(Response::new(pb::DeleteEventTypeResponse {}))
    }

    async fn list_quarantined(
        &self,
        request: Request<pb::ListQuarantinedRequest>,
    ) -> Reply<pb::ListQuarantinedResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        let page = PageRequest { size: request.page_size, token: request.page_token };
        let project = request.project;
        // Zero-padded ids sort like numbers, so the key order is the quarantine order.
        let (entries, next_page_token) = self
            .blocking(move |engine| paginate(engine.list_quarantined(&project)?, |e| format!("{:020}", e.id), &page))
            .await?;
        Ok(Response::new(pb::ListQuarantinedResponse {
            events: entries.into_iter().map(quarantined_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn replay_quarantined(
        &self,
        request: Request<pb::ReplayQuarantinedRequest>,
    ) -> Reply<pb::ReplayQuarantinedResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        let ids = request
            .ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                id.parse::<u64>().map_err(|_| {
                    Error::invalid(format!("ids[{i}]"), format!("{id} is not a quarantine id", id = echo(id)))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let outcome = self.engine.replay_quarantined(&request.project, &ids).await?;
        Ok(Response::new(pb::ReplayQuarantinedResponse {
            accepted: outcome.accepted,
            duplicates: outcome.duplicates,
            remaining: outcome.remaining,
            rejected: outcome.rejected,
        }))
    }
}
