//! Shutdown, metrics and log correlation.

use futures::StreamExt;
use polylogue_tests::{TestCluster, captured_logs};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_open_requests_finish_and_refuses_new_ones() {
    let mut app = TestCluster::start_with(|s| {
        s.edge.rate_limits.overrides.insert("login".into(), 100);
    })
    .await;
    // A login responder that takes 600 ms, so requests are certainly open when shutdown starts.
    app.stop_auth().await;
    let bus = app.bus().await;
    let mut slow = bus
        .client()
        .subscribe("polylogue.auth.login")
        .await
        .unwrap();
    let client = bus.client().clone();
    tokio::spawn(async move {
        while let Some(msg) = slow.next().await {
            let client = client.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(600)).await;
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Service-Error-Code", "401");
                headers.insert(
                    polylogue_bus::ERROR_HEADER,
                    r#"{"code":"INVALID_CREDENTIALS","message":"invalid username or password"}"#,
                );
                if let Some(reply) = msg.reply {
                    let _ = client.publish_with_headers(reply, headers, "".into()).await;
                }
            });
        }
    });
    bus.client().flush().await.unwrap();
    let app = Arc::new(app);
    let mut inflight = Vec::new();
    for _ in 0..3 {
        let app = Arc::clone(&app);
        inflight.push(tokio::spawn(async move {
            app.http
                .post(app.url("/api/login"))
                .json(&json!({ "username": "slow@example.com", "password": "password-slow" }))
                .send()
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    app.shutdown_edges();
    for task in inflight {
        let r = task
            .await
            .unwrap()
            .expect("an open request is answered, not cut");
        assert_eq!(r.status(), 401, "the open request got its real answer");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "answered before the responder did"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fresh = polylogue_tests::client()
        .get(app.url("/api/health"))
        .send()
        .await;
    assert!(
        fresh.is_err(),
        "the edge still accepts connections after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ops_port_serves_prometheus_metrics_and_a_probe() {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    let ops = polylogue_telemetry::serve_ops(
        "127.0.0.1:0",
        Arc::new(|| Box::pin(async { true })),
        shutdown.clone(),
        &tracker,
    )
    .await
    .unwrap();
    let app = TestCluster::start().await;
    let _ = app
        .register("metrics@example.com", "password-metrics")
        .await;
    let _ = app
        .post_json(
            "/api/login",
            &json!({ "username": "metrics@example.com", "password": "password-metrics" }),
        )
        .await;
    let client = polylogue_tests::client();
    let text = client
        .get(format!("http://{ops}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for metric in [
        "polylogue_http_request_seconds",
        "polylogue_bus_request_seconds",
        "polylogue_auth_logins_total",
    ] {
        assert!(text.contains(metric), "{metric} missing from /metrics");
    }
    let probe = client
        .get(format!("http://{ops}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(probe.status(), 200);
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_id_correlates_the_edge_and_auth_logs() {
    let logs = captured_logs();
    let app = TestCluster::start().await;
    let id = format!("corr-{}", uuid::Uuid::new_v4().simple());
    let r = app
        .http
        .post(app.url("/api/login"))
        .header("x-request-id", &id)
        .json(&json!({ "username": "ghost@example.com", "password": "not-a-password" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let line = logs
        .contents()
        .lines()
        .find(|l| l.contains("login refused") && l.contains(&id))
        .map(str::to_owned);
    assert!(
        line.is_some(),
        "the auth service's log line does not carry the edge's request id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_caller_gave_up_is_not_worked_on() {
    let app = TestCluster::start().await;
    let bus = app.bus().await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("X-Request-Id", "expired-1");
    headers.insert(
        polylogue_bus::DEADLINE_HEADER,
        (polylogue_bus::unix_ms() - 10).to_string().as_str(),
    );
    let body =
        serde_json::to_vec(&json!({ "username": "x@example.com", "password": "whatever-pw" }))
            .unwrap();
    let reply = bus
        .client()
        .request_with_headers("polylogue.auth.login", headers, body.into())
        .await
        .unwrap();
    let h = reply.headers.expect("an error reply has headers");
    assert_eq!(
        h.get("Nats-Service-Error-Code").map(|v| v.as_str()),
        Some("504")
    );
    let error: serde_json::Value =
        serde_json::from_str(h.get(polylogue_bus::ERROR_HEADER).unwrap().as_str()).unwrap();
    assert_eq!(error["code"], "GATEWAY_TIMEOUT");
}
