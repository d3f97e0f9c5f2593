//! Local models through the edge, with the ollama-loader on real NATS and the provider simulator
//! as Ollama: status transitions, one shared job for concurrent loads, SSE progress that can be
//! reconnected on another edge replica, a loader killed mid-job, a failed pull, cancel, a chat to
//! an unloaded model (status events, then tokens; or 503 with Retry-After when not streaming),
//! and the real llama.cpp model reported `loaded`.

use crate::envelope;
use polylogue_tests::{Cookies, Ev, SseReader, TestCluster};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// 120 MB of simulated weights at this speed: a pull of about 3 s.
const SLOW: u64 = 40_000_000;

async fn cluster_with(configure: impl FnOnce(&mut polylogue_config::Settings)) -> TestCluster {
    let mut app = TestCluster::start_with(|s| {
        for route in [
            "models",
            "model_status",
            "model_load",
            "model_load_stream",
            "model_load_cancel",
            "threads_create",
            "messages_send",
            "default",
        ] {
            s.edge.rate_limits.overrides.insert(route.into(), 100_000);
        }
        configure(s);
    })
    .await;
    app.start_loader().await;
    app
}

async fn cluster() -> TestCluster {
    cluster_with(|_| {}).await
}

async fn user(app: &TestCluster, name: &str) -> Cookies {
    app.signed_in(&format!("{name}@example.test"), "correct horse battery")
        .await
}

async fn status(app: &TestCluster, who: &Cookies, model: &str) -> Value {
    let (code, body) = envelope(
        app.get_with(&format!("/api/models/{model}/status"), who)
            .await,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    body["data"].clone()
}

/// Polls the status until `pred` holds (or fails after `limit`).
async fn status_until(
    app: &TestCluster,
    who: &Cookies,
    model: &str,
    limit: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let s = status(app, who, model).await;
        if pred(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "status of {model} stuck at {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn load(app: &TestCluster, who: &Cookies, model: &str) -> (u16, Value) {
    envelope(
        app.send_json(
            Method::POST,
            &format!("/api/models/{model}/load"),
            who,
            &json!({}),
        )
        .await,
    )
    .await
}

async fn progress_stream(
    app: &TestCluster,
    base: &str,
    who: &Cookies,
    model: &str,
    job: &str,
) -> SseReader {
    let r = app
        .http
        .get(format!("{base}/api/models/{model}/load/stream?jobId={job}"))
        .header("cookie", who.header())
        .send()
        .await
        .unwrap();
    SseReader::open(r).await
}

fn progress_of(events: &[Ev]) -> Vec<f64> {
    events
        .iter()
        .filter_map(|e| e.data["progress"].as_f64())
        .collect()
}

fn non_decreasing(values: &[f64]) -> bool {
    values.windows(2).all(|w| w[0] <= w[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_goes_from_not_loaded_through_loading_to_loaded() {
    let app = cluster().await;
    app.sim.set_ollama_pull_speed(SLOW);
    let who = user(&app, "loader").await;
    let first = status_until(&app, &who, "sim-pull", Duration::from_secs(10), |s| {
        s["status"] != "unavailable"
    })
    .await;
    assert_eq!(first["status"], "not_loaded", "{first}");
    assert_eq!(first["loadProgress"], Value::Null);
    assert!(first["estimatedLoadTime"].as_u64().is_some(), "{first}");

    let (code, body) = load(&app, &who, "sim-pull").await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["data"]["status"], "loading");
    assert_eq!(body["data"]["modelId"], "sim-pull");
    let job = body["data"]["jobId"].as_str().unwrap().to_owned();
    assert!(body["data"]["estimatedTime"].as_u64().is_some(), "{body}");

    // Poll all the way: loading with progress that never goes down, then loaded.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let last = loop {
        let s = status(&app, &who, "sim-pull").await;
        if s["status"] == "loading" {
            assert_eq!(s["jobId"], job.as_str(), "{s}");
            seen.push(s["loadProgress"].as_f64().unwrap());
        } else if s["status"] == "loaded" {
            break s;
        } else {
            assert_eq!(s["status"], "not_loaded", "{s}");
            assert!(seen.is_empty(), "back to not_loaded mid-load: {s}");
        }
        assert!(Instant::now() < deadline, "never loaded: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(seen.len() >= 3, "too few loading observations: {seen:?}");
    assert!(non_decreasing(&seen), "{seen:?}");
    assert!(seen.iter().any(|p| *p > 0.0 && *p < 100.0), "{seen:?}");
    assert_eq!(last["loadProgress"], 100.0);
    assert!(
        last["memoryUsage"].as_str().unwrap().ends_with('B'),
        "{last}"
    );
    assert!(last["lastLoaded"].as_str().unwrap().contains('T'));
    assert_eq!(last["estimatedLoadTime"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_loads_share_one_job_and_one_download() {
    let app = cluster().await;
    app.sim.set_ollama_pull_speed(SLOW);
    let (alice, bob) = (user(&app, "alice").await, user(&app, "bob").await);
    let (a, b) = tokio::join!(load(&app, &alice, "sim-pull"), load(&app, &bob, "sim-pull"));
    assert_eq!((a.0, b.0), (202, 202), "{a:?} {b:?}");
    assert_eq!(a.1["data"]["jobId"], b.1["data"]["jobId"], "{a:?} {b:?}");
    assert!(
        a.1["data"]["joined"] == true || b.1["data"]["joined"] == true,
        "one of them joined"
    );
    let job = a.1["data"]["jobId"].as_str().unwrap().to_owned();
    let events = progress_stream(&app, &app.base, &alice, "sim-pull", &job)
        .await
        .all()
        .await;
    assert_eq!(
        events.iter().rev().nth(1).unwrap().event,
        "complete",
        "{events:?}"
    );
    assert_eq!(app.sim.ollama_state().downloads, 1, "one pull for both");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_streams_reconnect_mid_job_on_another_replica_at_the_current_progress() {
    let app = cluster().await;
    app.sim.set_ollama_pull_speed(SLOW);
    let who = user(&app, "watcher").await;
    let (_, body) = load(&app, &who, "sim-pull").await;
    let job = body["data"]["jobId"].as_str().unwrap().to_owned();
    let mut first = progress_stream(&app, &app.base, &who, "sim-pull", &job).await;
    let mut before = Vec::new();
    while before.len() < 5 {
        let e = first.next().await.unwrap();
        assert_eq!(e.event, "progress", "{e:?}");
        assert_eq!(e.data["jobId"], job.as_str());
        before.push(e.data["progress"].as_f64().unwrap());
    }
    drop(first);
    let seen_last = *before.last().unwrap();
    // Another edge replica: it starts with the job's current state, then follows it.
    let other = app.start_edge_replica().await;
    let events = progress_stream(&app, &other, &who, "sim-pull", &job)
        .await
        .all()
        .await;
    let after = progress_of(&events);
    assert!(
        after[0] >= seen_last,
        "resumed at {} after {seen_last}",
        after[0]
    );
    assert!(
        non_decreasing(&before) && non_decreasing(&after),
        "{before:?} {after:?}"
    );
    let n = events.len();
    assert_eq!(events[n - 2].event, "complete", "{events:?}");
    assert_eq!(events[n - 2].data["progress"], 100.0);
    assert_eq!(events[n - 1].event, "close");
    // A finished job's stream is its final state at once.
    let again = progress_stream(&app, &app.base, &who, "sim-pull", &job)
        .await
        .all()
        .await;
    assert_eq!(
        again.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(),
        ["complete", "close"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_killed_mid_job_is_replaced_and_the_job_never_stays_loading() {
    let mut app = cluster_with(|s| s.loader.ack_wait_secs = 3).await;
    app.sim.set_ollama_pull_speed(20_000_000);
    let who = user(&app, "survivor").await;
    let (_, body) = load(&app, &who, "sim-pull").await;
    let job = body["data"]["jobId"].as_str().unwrap().to_owned();
    status_until(&app, &who, "sim-pull", Duration::from_secs(10), |s| {
        s["loadProgress"].as_f64().is_some_and(|p| p > 5.0)
    })
    .await;
    app.kill_loader(0).await;
    app.start_loader().await;
    let events = progress_stream(&app, &app.base, &who, "sim-pull", &job)
        .await
        .all()
        .await;
    let end = &events[events.len() - 2];
    assert!(
        end.event == "complete" || end.event == "error",
        "the job ended: {events:?}"
    );
    assert!(non_decreasing(&progress_of(&events)), "{events:?}");
    let s = status_until(&app, &who, "sim-pull", Duration::from_secs(10), |s| {
        s["status"] != "loading"
    })
    .await;
    if end.event == "complete" {
        assert_eq!(s["status"], "loaded", "{s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_that_fails_ends_the_job_in_error_with_the_reason() {
    let app = cluster().await;
    let who = user(&app, "unlucky").await;
    let (code, body) = load(&app, &who, "sim-pull-fail").await;
    assert_eq!(code, 202, "{body}");
    let job = body["data"]["jobId"].as_str().unwrap().to_owned();
    let events = progress_stream(&app, &app.base, &who, "sim-pull-fail", &job)
        .await
        .all()
        .await;
    let end = &events[events.len() - 2];
    assert_eq!(end.event, "error", "{events:?}");
    assert_eq!(end.data["status"], "error");
    // Retried (a cut-off download is passing), then reported with Ollama's reason.
    assert!(
        end.data["message"]
            .as_str()
            .unwrap()
            .contains("unexpected EOF (after 3 retries)"),
        "{end:?}"
    );
    assert!(
        events.iter().any(|e| e.data["phase"] == "retrying"),
        "{events:?}"
    );
    let s = status_until(&app, &who, "sim-pull-fail", Duration::from_secs(5), |s| {
        s["status"] == "error"
    })
    .await;
    assert!(
        s["error"].as_str().unwrap().contains("unexpected EOF"),
        "{s}"
    );
    assert!(
        !app.sim
            .ollama_state()
            .installed
            .iter()
            .any(|m| m.contains("fail-midway"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_can_be_cancelled() {
    let app = cluster().await;
    app.sim.set_ollama_pull_speed(10_000_000);
    let who = user(&app, "canceller").await;
    let (_, body) = load(&app, &who, "sim-pull").await;
    let job = body["data"]["jobId"].as_str().unwrap().to_owned();
    let mut stream = progress_stream(&app, &app.base, &who, "sim-pull", &job).await;
    let e = stream.next().await.unwrap();
    assert_eq!(e.event, "progress");
    let (code, body) = envelope(
        app.delete_with(&format!("/api/models/sim-pull/load/{job}"), &who)
            .await,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let started = Instant::now();
    let rest = stream.all().await;
    let end = &rest[rest.len() - 2];
    assert_eq!(end.event, "error", "{rest:?}");
    assert_eq!(end.data["status"], "cancelled");
    assert!(started.elapsed() < Duration::from_secs(5));
    let s = status_until(&app, &who, "sim-pull", Duration::from_secs(5), |s| {
        s["status"] == "not_loaded"
    })
    .await;
    assert_eq!(s["loadProgress"], Value::Null);
    // A job of another model, or an unknown one, is 404.
    let (code, _) = envelope(
        app.delete_with(&format!("/api/models/sim-pull-fail/load/{job}"), &who)
            .await,
    )
    .await;
    assert_eq!(code, 404);
    let (code, _) = envelope(
        app.delete_with("/api/models/sim-pull/load/load_nope", &who)
            .await,
    )
    .await;
    assert_eq!(code, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_local_catalog_models_load_and_loads_are_limited_to_three_a_minute() {
    let app = {
        let mut app = TestCluster::start().await;
        app.start_loader().await;
        app
    };
    let who = user(&app, "picky").await;
    let (code, body) = load(&app, &who, "gpt-4o").await;
    assert_eq!(code, 422, "{body}");
    let (code, body) = load(&app, &who, "no-such-model").await;
    assert_eq!(code, 404, "{body}");
    let (code, body) = load(&app, &who, "sim-pull").await;
    assert_eq!(code, 202, "{body}");
    let (code, body) = load(&app, &who, "sim-pull").await;
    assert_eq!(code, 429, "the fourth load this minute: {body}");
    let (code, _) = envelope(app.get_with("/api/models/no-such-model/status", &who).await).await;
    assert_eq!(code, 404);
    let r = app
        .http
        .get(app.url("/api/models/sim-pull/load/stream"))
        .header("cookie", who.header())
        .send()
        .await
        .unwrap();
    let (code, body) = envelope(r).await;
    assert_eq!(code, 400, "jobId missing: {body}");
    // Cloud models report their provider's reachability.
    let s = status_until(&app, &who, "gpt-4o", Duration::from_secs(10), |s| {
        s["status"] == "loaded"
    })
    .await;
    assert_eq!(s["loadProgress"], 100.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_to_an_unloaded_model_streams_its_load_then_the_reply() {
    let app = cluster().await;
    app.sim.set_ollama_pull_speed(SLOW);
    let who = user(&app, "chatty").await;
    let (_, body) = envelope(
        app.send_json(
            Method::POST,
            "/api/threads",
            &who,
            &json!({ "title": "local" }),
        )
        .await,
    )
    .await;
    let t = body["data"]["thread"]["id"].as_str().unwrap().to_owned();
    let r = app
        .http
        .post(app.url(&format!("/api/threads/{t}/models/sim-pull/messages")))
        .header("cookie", who.header())
        .json(&json!({ "content": "hello", "stream": true }))
        .send()
        .await
        .unwrap();
    let events = SseReader::open(r).await.all().await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    let first_token = names.iter().position(|n| *n == "token").expect("tokens");
    let statuses: Vec<&Ev> = events[..first_token]
        .iter()
        .filter(|e| e.event == "status")
        .collect();
    assert!(statuses.len() >= 3, "{names:?}");
    let progress: Vec<f64> = statuses
        .iter()
        .map(|e| e.data["loadProgress"].as_f64().unwrap())
        .collect();
    assert!(non_decreasing(&progress), "{progress:?}");
    assert_eq!(statuses.last().unwrap().data["status"], "loaded");
    assert_eq!(statuses[0].data["status"], "loading");
    assert!(
        statuses[0].data["jobId"]
            .as_str()
            .unwrap()
            .starts_with("load_")
    );
    assert_eq!(names.last(), Some(&"close"));
    assert!(names.contains(&"message_complete"), "{names:?}");
    let s = status(&app, &who, "sim-pull").await;
    assert_eq!(s["status"], "loaded", "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_streaming_chat_waits_for_a_short_load_and_answers_503_for_a_long_one() {
    let app = cluster_with(|s| s.inference.load_wait_secs = 2).await;
    let who = user(&app, "patient").await;
    let (_, body) = envelope(
        app.send_json(
            Method::POST,
            "/api/threads",
            &who,
            &json!({ "title": "local" }),
        )
        .await,
    )
    .await;
    let t = body["data"]["thread"]["id"].as_str().unwrap().to_owned();
    let send = || async {
        app.http
            .post(app.url(&format!("/api/threads/{t}/models/sim-pull/messages")))
            .header("cookie", who.header())
            .json(&json!({ "content": "hello" }))
            .send()
            .await
            .unwrap()
    };
    // 120 MB at 10 MB/s: far longer than the 2 s the send may wait.
    app.sim.set_ollama_pull_speed(10_000_000);
    let r = send().await;
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let (code, body) = envelope(r).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["error"]["code"], "SERVICE_UNAVAILABLE");
    assert!(retry_after >= 1, "{retry_after}");
    assert!(
        body["error"]["details"]["jobId"].as_str().is_some(),
        "{body}"
    );
    // Nothing was stored for the refused message.
    let (_, history) = envelope(
        app.get_with(&format!("/api/threads/{t}/models/sim-pull/messages"), &who)
            .await,
    )
    .await;
    assert_eq!(history["data"]["messages"], json!([]), "{history}");
    // Once the pull is fast the same message waits and is answered.
    app.sim.set_ollama_pull_speed(400_000_000);
    let (code, body) = envelope(send().await).await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body["data"]["assistantMessage"]["content"]
            .as_str()
            .unwrap()
            .contains("tok0")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_local_model_reports_loaded() {
    let Some(url) = std::env::var("POLYLOGUE_TEST_LLAMA_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "POLYLOGUE_TEST_LLAMA_URL must be set in CI (scripts/test.sh starts the model server)"
        );
        return;
    };
    let app = cluster().await;
    let who = user(&app, "real").await;
    let s = status_until(
        &app,
        &who,
        "smollm2-135m-local",
        Duration::from_secs(10),
        |s| s["status"] != "unavailable",
    )
    .await;
    assert_eq!(s["status"], "loaded", "{s} (server {url})");
    assert_eq!(s["loadProgress"], 100.0);
}
