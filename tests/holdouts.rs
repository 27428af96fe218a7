//! Holdouts end to end (SPEC §15): who is held out (against an independent GrowthBook v2 hash
//! written here, checked on SPEC §8's reference buckets), Assign while the holdout runs and
//! after it stops, persistence across a restart, the readout of holdout vs general with
//! hand-computed numbers, bad input and roles.

mod common;

use common::*;
use sextant::pb;
use sextant::pb::experiment_service_client::ExperimentServiceClient;
use sextant::pb::metric_service_client::MetricServiceClient;
use tonic::Code;
use tonic::transport::Channel;

const DAY: i64 = 86_400;

fn client(server: &TestServer) -> ExperimentServiceClient<Channel> {
    ExperimentServiceClient::new(server.channel.clone())
}

/// GrowthBook SDK hashing v2, written from its documentation: fnv1a32 of seed + id, its
/// decimal string hashed again, mod 10000 / 10000.
fn growthbook_bucket(seed: &str, id: &str) -> f64 {
    fn fnv1a32(bytes: &[u8]) -> u32 {
        let mut h: u32 = 2_166_136_261;
        for &b in bytes {
            h ^= u32::from(b);
            h = h.wrapping_mul(16_777_619);
        }
        h
    }
    let first = fnv1a32(format!("{seed}{id}").as_bytes());
    f64::from(fnv1a32(first.to_string().as_bytes()) % 10_000) / 10_000.0
}

const IDS: usize = 40;

fn ids() -> Vec<String> {
    (0..IDS).map(|i| format!("u{i}")).collect()
}

fn held(id: &str) -> bool {
    growthbook_bucket("hs", id) < 0.2
}

/// Project "p" with metric `purchases` (COUNT), experiment `exp` (50/50) and holdout `h`
/// (20%, seed "hs", since 2026-01-01). Every id u0..u39 has a session on day 1 and purchases:
/// held-out ids 1 each; the others 3 when their number is even, 1 when odd.
async fn setup(server: &TestServer) {
    server.create_project("p").await;
    let metric = pb::MetricDefinition {
        key: "purchases".into(),
        kind: pb::MetricKind::Count as i32,
        selector: Some(pb::EventSelector { event: "purchase".into(), filters: vec![] }),
        ..Default::default()
    };
    MetricServiceClient::new(server.channel.clone())
        .create_metric(pb::CreateMetricRequest { project: "p".into(), metric: Some(metric) })
        .await
        .expect("metric");
    let variant = |key: &str| pb::Variant { key: key.into(), weight: 0.5, ..Default::default() };
    let experiment = pb::Experiment {
        key: "exp".into(),
        variants: vec![variant("control"), variant("treatment")],
        ..Default::default()
    };
    client(server)
        .create_experiment(pb::CreateExperimentRequest { project: "p".into(), experiment: Some(experiment) })
        .await
        .expect("experiment");
    let mut events = Vec::new();
    for (i, id) in ids().iter().enumerate() {
        events.push(event(&format!("s{i}"), "session", id, DAY));
        let purchases = if held(id) || i % 2 == 1 { 1 } else { 3 };
        for k in 0..purchases {
            events.push(event(&format!("p{i}_{k}"), "purchase", id, DAY + 60 * (k + 1)));
        }
    }
    let reply = server.track("p", events).await;
    assert!(reply.rejected.is_empty(), "{:?}", reply.rejected);
    let holdout = pb::Holdout {
        key: "h".into(),
        name: "Q1 holdout".into(),
        percent: 0.2,
        seed: "hs".into(),
        metric_keys: vec!["purchases".into()],
        start_time: Some(ts(0)),
        ..Default::default()
    };
    let created = client(server)
        .create_holdout(pb::CreateHoldoutRequest { project: "p".into(), holdout: Some(holdout) })
        .await
        .expect("holdout")
        .into_inner()
        .holdout
        .unwrap();
    assert!(created.running && created.end_time.is_none());
}

async fn assign(server: &TestServer, user: &str, anonymous: &str) -> pb::AssignResponse {
    let request = pb::AssignRequest {
        project: "p".into(),
        experiment_key: "exp".into(),
        user_id: user.into(),
        anonymous_id: anonymous.into(),
        log_exposure: true,
    };
    client(server).assign(request).await.expect("assign").into_inner()
}

#[test]
fn the_reference_hash_reproduces_spec_buckets() {
    assert_eq!(growthbook_bucket("", "a"), 0.0216);
    assert_eq!(growthbook_bucket("", "b"), 0.9054);
}

#[tokio::test]
async fn held_out_ids_stay_out_of_every_experiment_while_the_holdout_runs() {
    let server = TestServer::start().await;
    setup(&server).await;
    let held_ids: Vec<String> = ids().into_iter().filter(|id| held(id)).collect();
    assert!(!held_ids.is_empty() && held_ids.len() < IDS, "the table has both kinds: {held_ids:?}");
    for id in ids() {
        let reply = assign(&server, &id, "").await;
        assert_eq!(reply.bucket, growthbook_bucket("exp", &id), "{id}: the experiment's own bucket");
        if held(&id) {
            assert_eq!(
                (reply.variant.as_str(), reply.in_experiment, reply.holdout_key.as_str()),
                ("", false, "h"),
                "{id}"
            );
        } else {
            let variant = if growthbook_bucket("exp", &id) < 0.5 { "control" } else { "treatment" };
            assert_eq!(
                (reply.variant.as_str(), reply.in_experiment, reply.holdout_key.as_str()),
                (variant, true, ""),
                "{id}"
            );
        }
    }
    // Anonymous ids are held out by their own hash.
    let anonymous = (0..100).map(|i| format!("anon{i}")).find(|a| held(a)).unwrap();
    assert_eq!(assign(&server, "", &anonymous).await.holdout_key, "h");
    // A held-out Assign with log_exposure records no exposure.
    let exposures = server.export("p").await.into_iter().filter(|e| e.name == "$exposure").count();
    assert_eq!(exposures, IDS - held_ids.len());

    // Persisted: the same after a restart.
    let get = |server: &TestServer| {
        let mut c = client(server);
        async move {
            c.get_holdout(pb::GetHoldoutRequest { project: "p".into(), holdout_key: "h".into() })
                .await
                .expect("get")
                .into_inner()
                .holdout
                .unwrap()
        }
    };
    let before = get(&server).await;
    let server = server.restart().await;
    assert_eq!(get(&server).await, before);
    assert_eq!(assign(&server, &held_ids[0], "").await.holdout_key, "h");
    let listed = client(&server)
        .list_holdouts(pb::ListHoldoutsRequest { project: "p".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.holdouts, vec![before.clone()]);

    // Stopped: held-out ids get their variants again; stopping twice changes nothing.
    let stop = pb::StopHoldoutRequest { project: "p".into(), holdout_key: "h".into() };
    let stopped = client(&server).stop_holdout(stop.clone()).await.unwrap().into_inner().holdout.unwrap();
    assert!(!stopped.running && stopped.end_time.is_some());
    assert_eq!(client(&server).stop_holdout(stop).await.unwrap().into_inner().holdout.unwrap(), stopped);
    let again = assign(&server, &held_ids[0], "").await;
    assert!(again.in_experiment && again.holdout_key.is_empty());
}

#[tokio::test]
async fn results_compare_holdout_with_general() {
    let server = TestServer::start().await;
    setup(&server).await;
    let request = pb::GetHoldoutResultsRequest { project: "p".into(), holdout_key: "h".into(), stats: None };
    let results = client(&server).get_holdout_results(request).await.expect("results").into_inner();
    // Everyone seen since 2026-01-01: the 40 ids, split by the reference hash.
    let n_held = ids().iter().filter(|id| held(id)).count() as u64;
    let general: Vec<f64> =
        ids().iter().enumerate().filter(|(_, id)| !held(id)).map(|(i, _)| if i % 2 == 1 { 1.0 } else { 3.0 }).collect();
    assert_eq!(results.variant_users, vec![n_held, IDS as u64 - n_held]);
    let metric = &results.metrics[0];
    assert_eq!(metric.metric_key, "purchases");
    let variants: Vec<(&str, u64, f64)> =
        metric.variants.iter().map(|v| (v.variant.as_str(), v.users, v.mean)).collect();
    let general_mean = general.iter().sum::<f64>() / general.len() as f64;
    assert_eq!(variants[0], ("holdout", n_held, 1.0));
    assert_eq!(variants[1].0, "general");
    assert_eq!(variants[1].1, general.len() as u64);
    assert!((variants[1].2 - general_mean).abs() < 1e-12);
    // Held-out users all bought once (control mean 1): relative effect = mean_g − 1.
    let c = &metric.comparisons[0];
    assert_eq!(c.variant, "general");
    assert!((c.relative_effect - (general_mean - 1.0)).abs() < 1e-9);
    // SRM: chi-square of the split against (0.2, 0.8), one degree of freedom.
    let expected = [0.2 * IDS as f64, 0.8 * IDS as f64];
    let observed = [n_held as f64, (IDS as u64 - n_held) as f64];
    let chi2: f64 = observed.iter().zip(expected).map(|(o, e)| (o - e).powi(2) / e).sum();
    let p = statrs::function::erf::erfc((chi2 / 2.0).sqrt());
    assert!((results.srm_p_value - p).abs() < 1e-9, "{} != {p}", results.srm_p_value);
    assert_eq!(results.analysis_range.unwrap().from, Some(ts(0)));
}

#[tokio::test]
async fn bad_holdouts_name_the_field() {
    let server = TestServer::start().await;
    setup(&server).await;
    let base = || pb::Holdout { key: "h2".into(), percent: 0.1, ..Default::default() };
    let cases: Vec<(&str, Code, pb::Holdout)> = vec![
        ("holdout.percent", Code::InvalidArgument, pb::Holdout { percent: 0.0, ..base() }),
        ("holdout.percent", Code::InvalidArgument, pb::Holdout { percent: 0.6, ..base() }),
        ("holdout.key", Code::InvalidArgument, pb::Holdout { key: "Bad Key".into(), ..base() }),
        ("holdout.metric_keys[0]", Code::InvalidArgument, pb::Holdout { metric_keys: vec!["nope".into()], ..base() }),
        (
            "holdout.end_time",
            Code::InvalidArgument,
            pb::Holdout { start_time: Some(ts(DAY)), end_time: Some(ts(0)), ..base() },
        ),
        ("already exists", Code::AlreadyExists, pb::Holdout { key: "h".into(), ..base() }),
    ];
    for (field, code, holdout) in cases {
        let request = pb::CreateHoldoutRequest { project: "p".into(), holdout: Some(holdout) };
        let status = client(&server).create_holdout(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{field}: {status:?}");
        assert!(status.message().contains(field), "{field}: {}", status.message());
    }
    let listed = client(&server)
        .list_holdouts(pb::ListHoldoutsRequest { project: "p".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.holdouts.len(), 1, "nothing stored by the bad calls");
    for status in [
        client(&server)
            .get_holdout(pb::GetHoldoutRequest { project: "p".into(), holdout_key: "nope".into() })
            .await
            .unwrap_err(),
        client(&server)
            .get_holdout_results(pb::GetHoldoutResultsRequest {
                project: "p".into(),
                holdout_key: "nope".into(),
                stats: None,
            })
            .await
            .unwrap_err(),
    ] {
        assert_eq!(status.code(), Code::NotFound);
    }
    // A metric a holdout reads cannot be deleted.
    let delete = pb::DeleteMetricRequest { project: "p".into(), key: "purchases".into() };
    let status = MetricServiceClient::new(server.channel.clone()).delete_metric(delete).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("holdout h"), "{}", status.message());
}

#[tokio::test]
async fn read_keys_read_holdouts_and_admin_keys_change_them() {
    let server = TestServer::start_secure(|_| {}).await;
    server.create_project("p").await;
    let key = |role: pb::Role| {
        let mut projects = server.projects();
        async move {
            let request =
                pb::CreateApiKeyRequest { project: "p".into(), role: role as i32, name: "k".into(), expire_time: None };
            projects.create_api_key(bearer(request, BOOTSTRAP)).await.expect("key").into_inner().secret
        }
    };
    let (read, admin) = (key(pb::Role::Read).await, key(pb::Role::Admin).await);
    let holdout = || pb::CreateHoldoutRequest {
        project: "p".into(),
        holdout: Some(pb::Holdout { key: "h".into(), percent: 0.1, ..Default::default() }),
    };
    let denied = client(&server).create_holdout(bearer(holdout(), &read)).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    client(&server).create_holdout(bearer(holdout(), &admin)).await.expect("admin creates");
    let get = pb::GetHoldoutRequest { project: "p".into(), holdout_key: "h".into() };
    client(&server).get_holdout(bearer(get, &read)).await.expect("read gets");
    let results = pb::GetHoldoutResultsRequest { project: "p".into(), holdout_key: "h".into(), stats: None };
    client(&server).get_holdout_results(bearer(results, &read)).await.expect("read reads results");
    let stop = pb::StopHoldoutRequest { project: "p".into(), holdout_key: "h".into() };
    assert_eq!(
        client(&server).stop_holdout(bearer(stop.clone(), &read)).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    client(&server).stop_holdout(bearer(stop, &admin)).await.expect("admin stops");
    let attribution = pb::QueryAttributionRequest {
        project: "p".into(),
        conversion: Some(pb::EventSelector { event: "purchase".into(), filters: vec![] }),
        touch: Some(pb::EventSelector { event: "page_view".into(), filters: vec![] }),
        channel_property: "utm_source".into(),
        range: Some(pb::TimeRange { from: Some(ts(0)), to: Some(ts(DAY)) }),
        ..Default::default()
    };
    sextant::pb::analysis_service_client::AnalysisServiceClient::new(server.channel.clone())
        .query_attribution(bearer(attribution, &read))
        .await
        .expect("read attributes");
}
