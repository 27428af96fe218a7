//! CohortService end to end: behavioural and static cohorts, members and sizes, cohorts as
//! filters of metrics, goals and retention, deletion rules and bad definitions. Times are
//! seconds after 2026-01-01T00:00:00Z.

mod common;

use common::*;
use sextant::pb;
use sextant::pb::cohort_service_client::CohortServiceClient;
use tonic::Code;
use tonic::transport::Channel;

const DAY: i64 = 86_400;

fn cohorts(server: &TestServer) -> CohortServiceClient<Channel> {
    server.cohorts()
}

fn did(event: &str, min_count: u32) -> pb::CohortCondition {
    pb::CohortCondition {
        condition: Some(pb::cohort_condition::Condition::Behavioural(pb::BehaviouralCondition {
            event: selector(event),
            min_count,
            ..Default::default()
        })),
    }
}

fn did_not(event: &str) -> pb::CohortCondition {
    pb::CohortCondition {
        condition: Some(pb::cohort_condition::Condition::Behavioural(pb::BehaviouralCondition {
            event: selector(event),
            did_not: true,
            ..Default::default()
        })),
    }
}

fn plan_is(plan: &str) -> pb::CohortCondition {
    pb::CohortCondition {
        condition: Some(pb::cohort_condition::Condition::Trait(pb::Filter {
            property: "user.plan".into(),
            op: pb::FilterOp::Eq as i32,
            values: vec![text(plan)],
        })),
    }
}

fn group(operator: pb::ConditionOperator, conditions: Vec<pb::CohortCondition>) -> pb::CohortConditionGroup {
    pb::CohortConditionGroup { operator: operator as i32, conditions }
}

fn dynamic(id: &str, conditions: pb::CohortConditionGroup) -> pb::Cohort {
    pb::Cohort { id: id.into(), definition: Some(pb::cohort::Definition::Conditions(conditions)), ..Default::default() }
}

fn static_cohort(id: &str, ids: &[&str]) -> pb::Cohort {
    pb::Cohort {
        id: id.into(),
        definition: Some(pb::cohort::Definition::StaticMembers(pb::StaticCohortMembers {
            user_ids: ids.iter().map(|s| s.to_string()).collect(),
        })),
        ..Default::default()
    }
}

async fn create(server: &TestServer, cohort: pb::Cohort) -> Result<pb::Cohort, tonic::Status> {
    cohorts(server)
        .create_cohort(pb::CreateCohortRequest { project: "p".into(), cohort: Some(cohort) })
        .await
        .map(|r| r.into_inner().cohort.unwrap())
}

async fn members(server: &TestServer, id: &str) -> Vec<String> {
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page = cohorts(server)
            .list_cohort_members(pb::ListCohortMembersRequest {
                project: "p".into(),
                id: id.into(),
                page_size: 2,
                page_token: token,
            })
            .await
            .expect("members")
            .into_inner();
        all.extend(page.user_ids);
        if page.next_page_token.is_empty() {
            return all;
        }
        token = page.next_page_token;
    }
}

async fn size(server: &TestServer, id: &str) -> u64 {
    cohorts(server)
        .get_cohort_size(pb::GetCohortSizeRequest { project: "p".into(), id: id.into() })
        .await
        .expect("size")
        .into_inner()
        .size
}

/// u1 bought twice (pro), u2 once (free), u3 only visited (pro), u4 has traits only (free),
/// and an anonymous visitor "anon-1" was never linked; "anon-2" is aliased to u3.
async fn shop() -> TestServer {
    let server = TestServer::start().await;
    server.create_project("p").await;
    let mut anonymous = event("v2", "visit", "", DAY);
    anonymous.anonymous_id = "anon-1".into();
    let mut aliased = event("b4", "purchase", "", 3 * DAY);
    aliased.anonymous_id = "anon-2".into();
    server
        .track(
            "p",
            vec![
                event("b1", "purchase", "u1", 0),
                event("b2", "purchase", "u1", 2 * DAY),
                event("b3", "purchase", "u2", DAY),
                event("v1", "visit", "u3", DAY),
                anonymous,
                aliased,
            ],
        )
        .await;
    let set_plan = |user: &str, plan: &str| pb::UserUpdate {
        user_id: user.into(),
        set: [("plan".to_string(), text(plan))].into(),
        ..Default::default()
    };
    let mut ingest = server.ingest();
    ingest
        .identify(pb::IdentifyRequest {
            project: "p".into(),
            users: vec![set_plan("u1", "pro"), set_plan("u2", "free"), set_plan("u3", "pro"), set_plan("u4", "free")],
        })
        .await
        .unwrap();
    ingest
        .alias(pb::AliasRequest { project: "p".into(), anonymous_id: "anon-2".into(), user_id: "u3".into() })
        .await
        .unwrap();
    server
}

#[tokio::test]
async fn behavioural_and_trait_conditions_combine_with_and_or() {
    let server = shop().await;
    // Bought at least twice: u1.
    create(&server, dynamic("loyal", group(pb::ConditionOperator::And, vec![did("purchase", 2)]))).await.unwrap();
    assert_eq!(members(&server, "loyal").await, vec!["u1"]);
    // Bought at all: u1, u2, and u3 through the purchase of its aliased anonymous id.
    create(&server, dynamic("buyers", group(pb::ConditionOperator::And, vec![did("purchase", 0)]))).await.unwrap();
    assert_eq!(members(&server, "buyers").await, vec!["u1", "u2", "u3"]);
    // Never bought: every other known person, traits-only users and unlinked visitors included.
    create(&server, dynamic("never", group(pb::ConditionOperator::And, vec![did_not("purchase")]))).await.unwrap();
    assert_eq!(members(&server, "never").await, vec!["anon-1", "u4"]);
    // Pro AND (bought twice OR visited): u1 (bought twice), u3 (visited).
    let nested = group(
        pb::ConditionOperator::And,
        vec![
            plan_is("pro"),
            pb::CohortCondition {
                condition: Some(pb::cohort_condition::Condition::Group(group(
                    pb::ConditionOperator::Or,
                    vec![did("purchase", 2), did("visit", 1)],
                ))),
            },
        ],
    );
    create(&server, dynamic("engaged-pro", nested)).await.unwrap();
    assert_eq!(members(&server, "engaged-pro").await, vec!["u1", "u3"]);
    assert_eq!(size(&server, "engaged-pro").await, 2);
    // free OR never bought: u2, u4, anon-1.
    let either = group(pb::ConditionOperator::Or, vec![plan_is("free"), did_not("purchase")]);
    create(&server, dynamic("free-or-idle", either)).await.unwrap();
    assert_eq!(members(&server, "free-or-idle").await, vec!["anon-1", "u2", "u4"]);
    // A deleted user is nobody: not even a member of "never bought".
    server.users().delete_user(pb::DeleteUserRequest { project: "p".into(), user_id: "u4".into() }).await.unwrap();
    assert_eq!(members(&server, "never").await, vec!["anon-1"]);
    assert_eq!(members(&server, "free-or-idle").await, vec!["anon-1", "u2"]);
}

#[tokio::test]
async fn time_frames_bound_the_counted_events() {
    let server = shop().await;
    let in_range = |from: i64, to: i64| pb::CohortCondition {
        condition: Some(pb::cohort_condition::Condition::Behavioural(pb::BehaviouralCondition {
            event: selector("purchase"),
            min_count: 1,
            did_not: false,
            time_frame: Some(pb::behavioural_condition::TimeFrame::Range(pb::TimeRange {
                from: Some(ts(from)),
                to: Some(ts(to)),
            })),
        })),
    };
    // Purchases in [day 1, day 3): u1's second (day 2) and u2's (day 1); u3's is on day 3.
    create(&server, dynamic("mid", group(pb::ConditionOperator::And, vec![in_range(DAY, 3 * DAY)]))).await.unwrap();
    assert_eq!(members(&server, "mid").await, vec!["u1", "u2"]);
    // The last 7 days before now hold none of the January events; a purchase now counts.
    let recent = pb::CohortCondition {
        condition: Some(pb::cohort_condition::Condition::Behavioural(pb::BehaviouralCondition {
            event: selector("purchase"),
            min_count: 1,
            did_not: false,
            time_frame: Some(pb::behavioural_condition::TimeFrame::LastDays(7)),
        })),
    };
    create(&server, dynamic("recent", group(pb::ConditionOperator::And, vec![recent]))).await.unwrap();
    assert_eq!(size(&server, "recent").await, 0);
    let now = chrono::Utc::now().timestamp() - 1_767_225_600;
    server.track("p", vec![event("b-now", "purchase", "u4", now)]).await;
    assert_eq!(members(&server, "recent").await, vec!["u4"], "dynamic cohorts are evaluated at call time");
}

#[tokio::test]
async fn static_cohorts_keep_uploaded_ids_and_list_without_them() {
    let server = shop().await;
    let created = create(&server, static_cohort("vip", &["u2", "u1", "u2", "ghost"])).await.unwrap();
    assert_eq!(created.static_size, 3, "duplicates removed");
    assert_eq!(members(&server, "vip").await, vec!["ghost", "u1", "u2"]);
    assert_eq!(size(&server, "vip").await, 3);
    create(&server, dynamic("all-buyers", group(pb::ConditionOperator::And, vec![did("purchase", 1)]))).await.unwrap();
    let listed = cohorts(&server)
        .list_cohorts(pb::ListCohortsRequest { project: "p".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = listed.cohorts.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, vec!["all-buyers", "vip"]);
    match &listed.cohorts[1].definition {
        Some(pb::cohort::Definition::StaticMembers(m)) => assert!(m.user_ids.is_empty()),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(listed.cohorts[1].static_size, 3);
    let got = cohorts(&server)
        .get_cohort(pb::GetCohortRequest { project: "p".into(), id: "vip".into() })
        .await
        .unwrap()
        .into_inner()
        .cohort
        .unwrap();
    match got.definition {
        Some(pb::cohort::Definition::StaticMembers(m)) => assert_eq!(m.user_ids, vec!["ghost", "u1", "u2"]),
        other => panic!("unexpected {other:?}"),
    }
    let status = create(&server, static_cohort("vip", &["u1"])).await.expect_err("taken");
    assert_eq!(status.code(), Code::AlreadyExists);
    // Cohorts survive a restart.
    let server = server.restart().await;
    assert_eq!(members(&server, "vip").await, vec!["ghost", "u1", "u2"]);
    assert_eq!(members(&server, "all-buyers").await, vec!["u1", "u2", "u3"]);
}

#[tokio::test]
async fn cohorts_filter_metrics_goals_and_retention() {
    let server = shop().await;
    create(&server, static_cohort("pair", &["u1", "u3"])).await.unwrap();
    let mut metrics = server.metrics();
    let purchases = pb::MetricDefinition {
        key: "purchases".into(),
        kind: pb::MetricKind::Count as i32,
        selector: selector("purchase"),
        ..Default::default()
    };
    metrics.create_metric(pb::CreateMetricRequest { project: "p".into(), metric: Some(purchases) }).await.unwrap();
    let query = |cohort_id: &str| pb::QueryMetricRequest {
        project: "p".into(),
        metric: Some(pb::query_metric_request::Metric::MetricKey("purchases".into())),
        range: Some(pb::TimeRange { from: Some(ts(0)), to: Some(ts(7 * DAY)) }),
        granularity: pb::Granularity::Total as i32,
        cohort_id: cohort_id.into(),
        ..Default::default()
    };
    let total = |reply: pb::QueryMetricResponse| reply.series[0].points[0].value;
    assert_eq!(total(metrics.query_metric(query("")).await.unwrap().into_inner()), 4.0);
    // u1's two purchases and u3's (made under its aliased anonymous id).
    assert_eq!(total(metrics.query_metric(query("pair")).await.unwrap().into_inner()), 3.0);
    let status = metrics.query_metric(query("missing")).await.expect_err("unknown cohort");
    assert_eq!(status.code(), Code::NotFound);

    let mut goals = server.goals();
    let goal = |cohort_id: &str| pb::Goal {
        id: "buys".into(),
        metric_key: "purchases".into(),
        granularity: pb::Granularity::Day as i32,
        period: Some(pb::TimeRange { from: Some(ts(0)), to: Some(ts(7 * DAY)) }),
        target: Some(pb::goal::Target::TargetValue(6.0)),
        cohort_id: cohort_id.into(),
        ..Default::default()
    };
    let status = goals
        .create_goal(pb::CreateGoalRequest { project: "p".into(), goal: Some(goal("missing")) })
        .await
        .expect_err("unknown cohort");
    assert_eq!(violated_fields(&status), vec!["goal.cohort_id".to_string()]);
    goals.create_goal(pb::CreateGoalRequest { project: "p".into(), goal: Some(goal("pair")) }).await.unwrap();
    let progress = goals
        .get_goal_progress(pb::GetGoalProgressRequest { project: "p".into(), id: "buys".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(progress.goal.unwrap().cohort_id, "pair");
    assert_eq!(progress.current, Some(3.0), "the pair's three purchases");
    assert_eq!(progress.progress, Some(0.5));

    // A referenced cohort cannot be deleted; once the goal is gone it can.
    let delete = pb::DeleteCohortRequest { project: "p".into(), id: "pair".into() };
    let status = cohorts(&server).delete_cohort(delete.clone()).await.expect_err("referenced");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("goal \"buys\""), "{}", status.message());
    goals.delete_goal(pb::DeleteGoalRequest { project: "p".into(), id: "buys".into() }).await.unwrap();

    let mut retention = pb::QueryRetentionRequest {
        project: "p".into(),
        cohort_event: selector("purchase"),
        return_event: selector("purchase"),
        first_time: true,
        period: pb::Period::Day as i32,
        periods: 3,
        range: Some(pb::TimeRange { from: Some(ts(0)), to: Some(ts(7 * DAY)) }),
        cohort_id: "pair".into(),
        ..Default::default()
    };
    let mut analysis = server.analysis();
    let reply = analysis.query_retention(retention.clone()).await.unwrap().into_inner();
    let sizes: Vec<u64> = reply.cohorts.iter().map(|c| c.size).collect();
    assert_eq!(sizes, vec![1, 1], "u1 on day 0 and u3 on day 3, not u2");
    retention.cohort_id.clear();
    let reply = analysis.query_retention(retention).await.unwrap().into_inner();
    assert_eq!(reply.cohorts.iter().map(|c| c.size).sum::<u64>(), 3);

    cohorts(&server).delete_cohort(delete.clone()).await.unwrap();
    let status = cohorts(&server).delete_cohort(delete).await.expect_err("gone");
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn bad_cohorts_are_rejected_naming_the_field() {
    let server = shop().await;
    let deep = (0..20).fold(group(pb::ConditionOperator::And, vec![did("purchase", 1)]), |inner, _| {
        group(
            pb::ConditionOperator::And,
            vec![pb::CohortCondition { condition: Some(pb::cohort_condition::Condition::Group(inner)) }],
        )
    });
    let not_a_trait = pb::CohortCondition {
        condition: Some(pb::cohort_condition::Condition::Trait(pb::Filter {
            property: "plan".into(),
            op: pb::FilterOp::Eq as i32,
            values: vec![text("pro")],
        })),
    };
    let zero_days = pb::CohortCondition {
        condition: Some(pb::cohort_condition::Condition::Behavioural(pb::BehaviouralCondition {
            event: selector("purchase"),
            time_frame: Some(pb::behavioural_condition::TimeFrame::LastDays(0)),
            ..Default::default()
        })),
    };
    let cases: Vec<(pb::Cohort, &str)> = vec![
        (dynamic("Bad Id", group(pb::ConditionOperator::And, vec![did("purchase", 1)])), "cohort.id"),
        (pb::Cohort { id: "none".into(), ..Default::default() }, "cohort.definition"),
        (dynamic("empty", group(pb::ConditionOperator::And, vec![])), "cohort.conditions.conditions"),
        (
            dynamic("trait", group(pb::ConditionOperator::And, vec![not_a_trait])),
            "cohort.conditions.conditions[0].trait.property",
        ),
        (
            dynamic("days", group(pb::ConditionOperator::And, vec![zero_days])),
            "cohort.conditions.conditions[0].behavioural.last_days",
        ),
        (
            dynamic("no-event", group(pb::ConditionOperator::And, vec![pb::CohortCondition { condition: None }])),
            "cohort.conditions.conditions[0]",
        ),
        (static_cohort("blank", &["u1", ""]), "cohort.static_members.user_ids[1]"),
    ];
    for (cohort, field) in cases {
        let status = create(&server, cohort).await.expect_err("rejected");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(violated_fields(&status), vec![field.to_string()], "{status:?}");
    }
    let status = create(&server, dynamic("deep", deep)).await.expect_err("too deep");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("nest at most"), "{}", status.message());
    let listed = cohorts(&server)
        .list_cohorts(pb::ListCohortsRequest { project: "p".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.cohorts.is_empty(), "nothing was stored");
    let status = cohorts(&server)
        .get_cohort(pb::GetCohortRequest { project: "p".into(), id: "ghost".into() })
        .await
        .expect_err("missing");
    assert_eq!(status.code(), Code::NotFound);
}
