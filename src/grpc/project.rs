use tonic::{Request, Response};

use super::convert::{
    api_key_to_pb, enforcement_from_pb, micros_from_timestamp, project_from_pb, project_to_pb, role_from_pb,
    stats_to_pb,
};
use super::{Api, Reply};
use crate::core::model::ProjectUpdate;
use crate::core::page::{PageRequest, paginate};
use crate::error::Error;
use crate::pb::{self, project_service_server::ProjectService};

#[tonic::async_trait]
impl ProjectService for Api {
    async fn create_project(&self, request: Request<pb::CreateProjectRequest>) -> Reply<pb::CreateProjectResponse> {
        self.authorize(&request, "")?;
        let project = request.into_inner().project.ok_or_else(|| Error::invalid("project", "required"))?;
        let project = project_from_pb(project)?;
        let created = self.blocking(move |engine| engine.create_project(project)).await?;
        Ok(Response::new(pb::CreateProjectResponse { project: Some(project_to_pb(created)) }))
    }

    async fn get_project(&self, request: Request<pb::GetProjectRequest>) -> Reply<pb::GetProjectResponse> {
        self.authorize(&request, &request.get_ref().project)?;
        let id = request.into_inner().project;
        let project = self.blocking(move |engine| engine.get_project(&id)).await?;
        Ok(Response::new(pb::GetProjectResponse { project: Some(project_to_pb(project)) }))
    }

    async fn list_projects(&self, request: Request<pb::ListProjectsRequest>) -> Reply<pb::ListProjectsResponse> {
        self.authorize(&request, "")?;
        let request = request.into_inner();
        let page = PageRequest { size: request.page_size, token: request.page_token };
        let (projects, next_page_token) =
            self.blocking(move |engine| paginate(engine.list_projects()?, |p| p.id.clone(), &page)).await?;
        Ok(Response::new(pb::ListProjectsResponse {
            projects: projects.into_iter().map(project_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn update_project(&self, request: Request<pb::UpdateProjectRequest>) -> Reply<pb::UpdateProjectResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        let new = request.update.ok_or_else(|| Error::invalid("update", "required"))?;
        let masked = |field: &str| request.update_mask.iter().any(|m| m == field);
        let all = request.update_mask.is_empty();
        for field in &request.update_mask {
            if !["name", "timezone", "enforcement", "retention_days"].contains(&field.as_str()) {
                return Err(Error::invalid("update_mask", format!("unknown field {field:?}")).into());
            }
        }
        let update = ProjectUpdate {
            name: ((all && !new.name.is_empty()) || masked("name")).then(|| new.name.clone()),
            timezone: ((all && !new.timezone.is_empty()) || masked("timezone")).then(|| new.timezone.clone()),
            enforcement: if (all && new.enforcement != 0) || masked("enforcement") {
                Some(enforcement_from_pb("update.enforcement", new.enforcement)?)
            } else {
                None
            },
            retention_days: ((all && new.retention_days != 0) || masked("retention_days"))
                .then_some(new.retention_days),
        };
        let id = request.project;
        let project = self.blocking(move |engine| engine.update_project(&id, update)).await?;
        Ok(Response::new(pb::UpdateProjectResponse { project: Some(project_to_pb(project)) }))
    }

    async fn get_project_stats(
        &self,
        request: Request<pb::GetProjectStatsRequest>,
    ) -> Reply<pb::GetProjectStatsResponse> {
        self.authorize(&request, &request.get_ref().project)?;
        let id = request.into_inner().project;
        let stats = self.blocking(move |engine| engine.project_stats(&id)).await?;
        Ok(Response::new(stats_to_pb(stats)))
    }

    async fn create_api_key(&self, request: Request<pb::CreateApiKeyRequest>) -> Reply<pb::CreateApiKeyResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        let role = role_from_pb("role", request.role)?;
        let expires = request.expire_time.as_ref().map(|t| micros_from_timestamp("expire_time", t)).transpose()?;
        let (key, secret) =
            self.blocking(move |engine| engine.create_api_key(&request.project, role, request.name, expires)).await?;
        Ok(Response::new(pb::CreateApiKeyResponse { key: Some(api_key_to_pb(key)), secret }))
    }

    async fn list_api_keys(&self, request: Request<pb::ListApiKeysRequest>) -> Reply<pb::ListApiKeysResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        let page = PageRequest { size: request.page_size, token: request.page_token };
        let (keys, next_page_token) = self
            .blocking(move |engine| paginate(engine.list_api_keys(&request.project)?, |k| k.id.clone(), &page))
            .await?;
        Ok(Response::new(pb::ListApiKeysResponse {
            keys: keys.into_iter().map(api_key_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn revoke_api_key(&self, request: Request<pb::RevokeApiKeyRequest>) -> Reply<pb::RevokeApiKeyResponse> {
        let request = self.scoped(request, |r| &r.project)?;
        self.blocking(move |engine| engine.revoke_api_key(&request.project, &request.key_id)).await?;
        Ok(Response::new(pb::RevokeApiKeyResponse {}))
    }
}
