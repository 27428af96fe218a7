//! Paging under concurrent writes: a page token is a position in the list's order, so events
//! and objects added between two pages never make a page repeat or skip anything that existed
//! when paging started. Malformed tokens are INVALID_ARGUMENT naming `page_token`.

mod common;

use common::*;
use sextant::pb;
use sextant::pb::cohort_service_client::CohortServiceClient;
use sextant::pb::metric_service_client::MetricServiceClient;
use tonic::Code;

/// A COUNT of `view` events named `key` in project "p".
async fn create_views_metric(server: &TestServer, key: &str) {
    let metric = pb::MetricDefinition {
        key: key.into(),
        kind: pb::MetricKind::Count as i32,
        selector: Some(pb::EventSelector { event: "view".into(), filters: vec![] }),
        ..Default::default()
    };
    let request = pb::CreateMetricRequest { project: "p".into(), metric: Some(metric) };
    MetricServiceClient::new(server.channel.clone()).create_metric(request).await.unwrap();
}

async fn user_events_page(server: &TestServer, token: &str) -> Result<(Vec<String>, String), tonic::Status> {
    let request = pb::ListUserEventsRequest {
        project: "p".into(),
        user_id: "u".into(),
        page_size: 3,
        page_token: token.into(),
        ..Default::default()
    };
    let reply = server.users().list_user_events(request).await?.into_inner();
    Ok((reply.events.into_iter().map(|e| e.event_id).collect(), reply.next_page_token))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_events_added_while_paging_never_repeat_or_skip_earlier_ones() {
    let server = TestServer::start().await;
    server.create_project("p").await;
    // Ten events at 10 s … 100 s; two share a time, ordered by id.
    let mut sent: Vec<pb::Event> = (1..=9).map(|i| event(&format!("e{i:02}"), "view", "u", i * 10)).collect();
    sent.push(event("e05b", "view", "u", 50));
    server.track("p", sent).await;
    let existing = ["e01", "e02", "e03", "e04", "e05", "e05b", "e06", "e07", "e08", "e09"];

    let mut times: std::collections::HashMap<String, i64> =
        existing.iter().zip([10, 20, 30, 40, 50, 50, 60, 70, 80, 90]).map(|(id, t)| (id.to_string(), t)).collect();
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut round = 0;
    loop {
        let (ids, next) = user_events_page(&server, &token).await.unwrap();
        seen.extend(ids);
        if next.is_empty() {
            break;
        }
        token = next;
        // Between pages: an event older than everything listed so far, one at the time of the
        // last listed one (with an id that sorts first), and a newer one.
        round += 1;
        let last_time = times[seen.last().unwrap()];
        let added = [
            (format!("old{round}"), 1),
            (format!("e00-tie{round}"), last_time),
            (format!("new{round}"), 1_000 + round),
        ];
        let events = added.iter().map(|(id, t)| event(id, "view", "u", *t)).collect();
        times.extend(added);
        server.track("p", events).await;
    }
    let listed_existing: Vec<&str> =
        seen.iter().map(String::as_str).filter(|id| id.starts_with('e') && !id.contains("tie")).collect();
    assert_eq!(listed_existing, existing, "every event that existed once, in order: {seen:?}");
    // Events added after the position already passed never show up; newer ones do.
    assert!(!seen.iter().any(|id| id.starts_with("old") || id.contains("tie")), "{seen:?}");
    assert!(seen.iter().any(|id| id.starts_with("new")), "{seen:?}");

    for bad in ["zz", "abc", "00ff", "not a token"] {
        let status = user_events_page(&server, bad).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}");
        assert_eq!(violated_fields(&status), vec!["page_token"], "{bad}");
    }
}

/// Pages through a list of names two at a time, creating `a<round>` and `z<round>` (which
/// sort before and after every existing name) between the first pages.
async fn page_through<F, Fut, C, CFut>(list: F, create: C, existing: &[&str]) -> Vec<String>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = (Vec<String>, String)>,
    C: Fn(String) -> CFut,
    CFut: std::future::Future<Output = ()>,
{
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut round = 0;
    loop {
        let (names, next) = list(token).await;
        seen.extend(names);
        if next.is_empty() {
            break;
        }
        token = next;
        round += 1;
        // Two rounds: a list ordered by arrival grows by two at its end each time.
        if round <= 2 {
            create(format!("a{round}")).await;
            create(format!("z{round}")).await;
        }
    }
    let listed: Vec<&str> = seen.iter().map(String::as_str).filter(|n| n.starts_with('m')).collect();
    assert_eq!(listed, existing, "each existing item once, in order: {seen:?}");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_page_by_position_while_objects_are_added() {
    let server = TestServer::start().await;
    server.create_project("p").await;
    let existing = ["m1", "m2", "m3", "m4", "m5"];

    // Metrics.
    let metrics = MetricServiceClient::new(server.channel.clone());
    let create_metric = |key: String| {
        let server = &server;
        async move { create_views_metric(server, &key).await }
    };
    for key in existing {
        create_metric(key.into()).await;
    }
    let list_metrics = |token: String| {
        let mut client = metrics.clone();
        async move {
            let request =
                pb::ListMetricsRequest { project: "p".into(), page_size: 2, page_token: token, ..Default::default() };
            let reply = client.list_metrics(request).await.unwrap().into_inner();
            (reply.metrics.into_iter().map(|m| m.key).collect(), reply.next_page_token)
        }
    };
    let seen = page_through(list_metrics, create_metric, &existing).await;
    assert!(seen.contains(&"z1".to_string()) && !seen.contains(&"a1".to_string()), "{seen:?}");

    // Event types.
    let catalog = server.catalog();
    let create_type = |name: String| {
        let mut client = catalog.clone();
        async move {
            let event_type = pb::EventType { name, ..Default::default() };
            let request = pb::UpsertEventTypeRequest { project: "p".into(), event_type: Some(event_type) };
            client.upsert_event_type(request).await.unwrap();
        }
    };
    for name in existing {
        create_type(name.into()).await;
    }
    let list_types = |token: String| {
        let mut client = catalog.clone();
        async move {
            let request = pb::ListEventTypesRequest { project: "p".into(), page_size: 2, page_token: token };
            let reply = client.list_event_types(request).await.unwrap().into_inner();
            (reply.event_types.into_iter().map(|t| t.name).collect(), reply.next_page_token)
        }
    };
    page_through(list_types, create_type, &existing).await;

    // Cohorts, and the members of a cohort whose members change while paging.
    let cohorts = CohortServiceClient::new(server.channel.clone());
    let create_cohort = |id: String| {
        let mut client = cohorts.clone();
        async move {
            let cohort = pb::Cohort {
                id,
                definition: Some(pb::cohort::Definition::StaticMembers(pb::StaticCohortMembers {
                    user_ids: vec!["x".into()],
                })),
                ..Default::default()
            };
            client.create_cohort(pb::CreateCohortRequest { project: "p".into(), cohort: Some(cohort) }).await.unwrap();
        }
    };
    for id in existing {
        create_cohort(id.into()).await;
    }
    let list_cohorts = |token: String| {
        let mut client = cohorts.clone();
        async move {
            let request = pb::ListCohortsRequest { project: "p".into(), page_size: 2, page_token: token };
            let reply = client.list_cohorts(request).await.unwrap().into_inner();
            (reply.cohorts.into_iter().map(|c| c.id).collect(), reply.next_page_token)
        }
    };
    page_through(list_cohorts, create_cohort, &existing).await;

    // Members of a dynamic cohort (everyone who viewed): people join while paging.
    let everyone = pb::Cohort {
        id: "viewers".into(),
        definition: Some(pb::cohort::Definition::Conditions(pb::CohortConditionGroup {
            conditions: vec![pb::CohortCondition {
                condition: Some(pb::cohort_condition::Condition::Behavioural(pb::BehaviouralCondition {
                    event: Some(pb::EventSelector { event: "view".into(), filters: vec![] }),
                    min_count: 1,
                    ..Default::default()
                })),
            }],
            ..Default::default()
        })),
        ..Default::default()
    };
    cohorts
        .clone()
        .create_cohort(pb::CreateCohortRequest { project: "p".into(), cohort: Some(everyone) })
        .await
        .unwrap();
    let viewers: Vec<pb::Event> = existing.iter().map(|u| event(&format!("v-{u}"), "view", u, 10)).collect();
    server.track("p", viewers).await;
    let join = |user: String| {
        let server = &server;
        async move {
            server.track("p", vec![event(&format!("v-{user}"), "view", &user, 20)]).await;
        }
    };
    let list_members = |token: String| {
        let mut client = cohorts.clone();
        async move {
            let request = pb::ListCohortMembersRequest {
                project: "p".into(),
                id: "viewers".into(),
                page_size: 2,
                page_token: token,
            };
            let reply = client.list_cohort_members(request).await.unwrap().into_inner();
            (reply.user_ids, reply.next_page_token)
        }
    };
    page_through(list_members, join, &existing).await;

    // A malformed token names the field, in every list.
    let status = metrics
        .clone()
        .list_metrics(pb::ListMetricsRequest { project: "p".into(), page_token: "zz".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), vec!["page_token"]);
    let status = cohorts
        .clone()
        .list_cohort_members(pb::ListCohortMembersRequest {
            project: "p".into(),
            id: "viewers".into(),
            page_size: 2,
            page_token: "q".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), vec!["page_token"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goals_experiments_projects_and_quarantine_page_by_position() {
    use sextant::pb::experiment_service_client::ExperimentServiceClient;
    use sextant::pb::goal_service_client::GoalServiceClient;
    let server = TestServer::start().await;
    server.create_project("p").await;
    let existing = ["m1", "m2", "m3", "m4", "m5"];
    create_views_metric(&server, "views").await;

    let goals = GoalServiceClient::new(server.channel.clone());
    let create_goal = |id: String| {
        let mut client = goals.clone();
        async move {
            let goal = pb::Goal {
                id,
                metric_key: "views".into(),
                period: Some(pb::TimeRange { from: Some(ts(0)), to: Some(ts(86_400)) }),
                target: Some(pb::goal::Target::TargetValue(1.0)),
                ..Default::default()
            };
            client.create_goal(pb::CreateGoalRequest { project: "p".into(), goal: Some(goal) }).await.unwrap();
        }
    };
    for id in existing {
        create_goal(id.into()).await;
    }
    let list_goals = |token: String| {
        let mut client = goals.clone();
        async move {
            let request =
                pb::ListGoalsRequest { project: "p".into(), page_size: 2, page_token: token, ..Default::default() };
            let reply = client.list_goals(request).await.unwrap().into_inner();
            (reply.goals.into_iter().map(|g| g.id).collect(), reply.next_page_token)
        }
    };
    page_through(list_goals, create_goal, &existing).await;

    let experiments = ExperimentServiceClient::new(server.channel.clone());
    let create_experiment = |key: String| {
        let mut client = experiments.clone();
        async move {
            let variant = |key: &str| pb::Variant { key: key.into(), weight: 0.5, ..Default::default() };
            let experiment = pb::Experiment {
                key,
                variants: vec![variant("control"), variant("treatment")],
                primary_metric_keys: vec!["views".into()],
                ..Default::default()
            };
            let request = pb::CreateExperimentRequest { project: "p".into(), experiment: Some(experiment) };
            client.create_experiment(request).await.unwrap();
        }
    };
    for key in existing {
        create_experiment(key.into()).await;
    }
    let list_experiments = |token: String| {
        let mut client = experiments.clone();
        async move {
            let request = pb::ListExperimentsRequest {
                project: "p".into(),
                page_size: 2,
                page_token: token,
                ..Default::default()
            };
            let reply = client.list_experiments(request).await.unwrap().into_inner();
            (reply.experiments.into_iter().map(|e| e.key).collect(), reply.next_page_token)
        }
    };
    page_through(list_experiments, create_experiment, &existing).await;

    let create_project = |id: String| {
        let server = &server;
        async move { server.create_project(&id).await }
    };
    for id in existing {
        create_project(id.into()).await;
    }
    let list_projects = |token: String| {
        let mut client = server.projects();
        async move {
            let request = pb::ListProjectsRequest { page_size: 2, page_token: token, ..Default::default() };
            let reply = client.list_projects(request).await.unwrap().into_inner();
            (reply.projects.into_iter().map(|p| p.id).collect(), reply.next_page_token)
        }
    };
    page_through(list_projects, create_project, &existing).await;

    // Quarantined events list oldest first: events quarantined while paging come after.
    server
        .projects()
        .update_project(pb::UpdateProjectRequest {
            project: "p".into(),
            update: Some(pb::Project { enforcement: pb::Enforcement::Quarantine as i32, ..Default::default() }),
            update_mask: vec!["enforcement".into()],
        })
        .await
        .unwrap();
    let quarantine = |id: String| {
        let server = &server;
        async move { assert_eq!(server.track("p", vec![event(&id, "unplanned", "u", 10)]).await.quarantined, 1) }
    };
    for id in existing {
        quarantine(id.into()).await;
    }
    let list_quarantined = |token: String| {
        let mut client = server.catalog();
        async move {
            let request = pb::ListQuarantinedRequest { project: "p".into(), page_size: 2, page_token: token };
            let reply = client.list_quarantined(request).await.unwrap().into_inner();
            (reply.events.into_iter().map(|q| q.event.unwrap().event_id).collect(), reply.next_page_token)
        }
    };
    let seen = page_through(list_quarantined, quarantine, &existing).await;
    assert_eq!(&seen[existing.len()..existing.len() + 2], ["a1", "z1"], "added ones come last: {seen:?}");
}
