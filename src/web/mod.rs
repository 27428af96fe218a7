//! The dashboard (SPEC §17): HTTP/1.1 routes served beside the gRPC services on the same
//! listener. Handlers decode the query string, check the key like a READ call, run one core
//! call on a blocking thread and render server-side HTML (maud) with SVG charts.
//!
//! `GET /` is a shell page whose small ES module (`assets/app.js`) keeps the key in session
//! storage and fetches the tiles from `/api/dashboard` with it in the `authorization` header,
//! so a key never appears in a URL. `/api/north-star` re-renders the North Star tile for the
//! live refresh.

pub mod demo;
mod svg;
mod views;

use std::sync::Arc;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::NaiveDate;

use crate::core::auth::Principal;
use crate::core::engine::Engine;
use crate::core::engine::dashboard::DashboardRequest;
use crate::error::Error;
use crate::grpc::auth::GuardLayer;

const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

#[derive(Clone)]
struct Web {
    engine: Arc<Engine>,
    guard: GuardLayer,
}

/// The dashboard's routes. Requests to other paths get gRPC's UNIMPLEMENTED when they are
/// gRPC calls, and a plain 404 otherwise.
pub fn routes(engine: Arc<Engine>, guard: GuardLayer) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/assets/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/assets/style.css", get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }))
        .route("/api/dashboard", get(dashboard))
        .route("/api/north-star", get(north_star))
        .fallback(fallback)
        .with_state(Web { engine, guard })
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

async fn fallback(headers: HeaderMap) -> Response {
    let grpc = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        return tonic::Status::unimplemented("").into_http::<axum::body::Body>().into_response();
    }
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

async fn page() -> Response {
    html(StatusCode::OK, views::shell().into_string())
}

fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A failed request: the status a gRPC call would get, and the message as text (the page
/// shows it; 401 and 403 bring the key prompt back).
fn failure(error: Error) -> Response {
    let status = match &error {
        Error::InvalidArgument { .. } => StatusCode::BAD_REQUEST,
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        Error::PermissionDenied(_) => StatusCode::FORBIDDEN,
        Error::RateLimited { .. } | Error::ResourceExhausted { .. } => StatusCode::TOO_MANY_REQUESTS,
        Error::FailedPrecondition(_) => StatusCode::PRECONDITION_FAILED,
        Error::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
        Error::Unavailable | Error::BackendUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut response = (status, format!("{error}\n")).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    if let Error::RateLimited { retry_after, .. } = &error
        && let Ok(value) = HeaderValue::from_str(&retry_after.as_secs().max(1).to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// The page's query string: `project`, `from`, `to` (YYYY-MM-DD, `to` exclusive), `funnel`
/// (comma-separated event names), `retention` (cohort event, return event).
#[derive(Debug, Default, PartialEq)]
struct PageQuery {
    project: Option<String>,
    request: DashboardRequest,
}

fn parse_query(raw: Option<&str>) -> Result<PageQuery, Error> {
    let mut query = PageQuery::default();
    for pair in raw.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = decode(value);
        if value.is_empty() {
            continue;
        }
        let date = |field: &str| {
            NaiveDate::parse_from_str(&value, "%Y-%m-%d")
                .map_err(|_| Error::invalid(field, format!("expected a date YYYY-MM-DD, got {value:?}")))
        };
        match name {
            "project" => {
                crate::core::catalog::validate_slug("project", &value)?;
                query.project = Some(value.clone());
            }
            "from" => query.request.from = Some(date("from")?),
            "to" => query.request.to = Some(date("to")?),
            "funnel" => {
                query.request.funnel = events("funnel", &value)?;
                if query.request.funnel.len() < 2 {
                    return Err(Error::invalid("funnel", "name at least 2 events, comma-separated"));
                }
            }
            "retention" => match events("retention", &value)?.as_slice() {
                [cohort, back] => query.request.retention = Some((cohort.clone(), back.clone())),
                _ => return Err(Error::invalid("retention", "name 2 events: cohort event,return event")),
            },
            _ => {}
        }
    }
    Ok(query)
}

fn events(field: &str, value: &str) -> Result<Vec<String>, Error> {
    let names: Vec<String> = value.split(',').map(|s| s.trim().to_owned()).collect();
    for (i, name) in names.iter().enumerate() {
        crate::core::catalog::validate_name(&format!("{field}[{i}]"), name)?;
    }
    Ok(names)
}

fn decode(value: &str) -> String {
    percent_encoding::percent_decode_str(&value.replace('+', " ")).decode_utf8_lossy().into_owned()
}

/// Checks the key, then picks the project: the asked one, or the key's own.
fn admit(web: &Web, parts: &axum::http::request::Parts, query: &PageQuery) -> Result<Option<String>, Error> {
    let principal = web.guard.admit_web(&parts.headers, &parts.extensions, query.project.as_deref())?;
    Ok(match (&query.project, principal) {
        (Some(project), _) => Some(project.clone()),
        (None, Principal::Key { project, .. }) => Some(project),
        (None, _) => None,
    })
}

async fn blocking<T: Send + 'static>(
    web: &Web,
    work: impl FnOnce(&Engine) -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    let engine = web.engine.clone();
    tokio::task::spawn_blocking(move || work(&engine))
        .await
        .map_err(|e| Error::Internal(format!("task failed: {e}")))?
}

async fn dashboard(State(web): State<Web>, RawQuery(raw): RawQuery, parts: axum::http::request::Parts) -> Response {
    let query = match parse_query(raw.as_deref()) {
        Ok(query) => query,
        Err(error) => return failure(error),
    };
    let project = match admit(&web, &parts, &query) {
        Ok(project) => project,
        Err(error) => return failure(error),
    };
    let Some(project) = project else {
        let projects = match blocking(&web, |engine| engine.list_projects()).await {
            Ok(projects) => projects,
            Err(error) => return failure(error),
        };
        return html(StatusCode::OK, views::chooser(&projects).into_string());
    };
    let request = query.request;
    let asked = request.clone();
    let auth = web.guard.auth_enabled();
    match blocking(&web, move |engine| engine.dashboard(&project, &request)).await {
        Ok(dashboard) => {
            tracing::debug!(project = %dashboard.project, from = %dashboard.range.from, to = %dashboard.range.to, "dashboard rendered");
            html(StatusCode::OK, views::dashboard(&dashboard, &asked, auth).into_string())
        }
        Err(error) => failure(error),
    }
}

async fn north_star(State(web): State<Web>, RawQuery(raw): RawQuery, parts: axum::http::request::Parts) -> Response {
    let query = match parse_query(raw.as_deref()) {
        Ok(query) => query,
        Err(error) => return failure(error),
    };
    let project = match admit(&web, &parts, &query) {
        Ok(Some(project)) => project,
        Ok(None) => return failure(Error::invalid("project", "required")),
        Err(error) => return failure(error),
    };
    let request = query.request;
    match blocking(&web, move |engine| engine.dashboard_north_star(&project, &request)).await {
        Ok((range, tile)) => html(StatusCode::OK, views::north_star_tile(Ok(tile.as_ref()), &range).into_string()),
        Err(error) => failure(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings() {
        let query =
            parse_query(Some("project=demo&from=2026-03-01&to=2026-04-01&funnel=signup,add_to_cart%2Cpurchase"))
                .unwrap();
        assert_eq!(query.project.as_deref(), Some("demo"));
        assert_eq!(query.request.from, Some("2026-03-01".parse().unwrap()));
        assert_eq!(query.request.to, Some("2026-04-01".parse().unwrap()));
        assert_eq!(query.request.funnel, ["signup", "add_to_cart", "purchase"]);
        let query = parse_query(Some("retention=signup,session_start&from=&x=1")).unwrap();
        assert_eq!(query.request.retention, Some(("signup".into(), "session_start".into())));
        assert_eq!(query.request.from, None);
        assert_eq!(parse_query(None).unwrap(), PageQuery::default());
        for (raw, field) in [
            ("from=2026-13-01", "from"),
            ("to=yesterday", "to"),
            ("project=Bad%20Id", "project"),
            ("funnel=signup", "funnel"),
            ("retention=a,b,c", "retention"),
        ] {
            let error = parse_query(Some(raw)).unwrap_err();
            assert!(matches!(&error, Error::InvalidArgument { field: f, .. } if f == field), "{raw}: {error}");
        }
    }
}
