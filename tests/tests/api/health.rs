use crate::envelope;
use polylogue_tests::TestCluster;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_nats_each_service_and_the_database_with_latencies() {
    let app = TestCluster::start().await;
    let (status, body) = envelope(app.http.get(app.url("/api/health")).send().await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    let data = &body["data"];
    assert_eq!(data["status"], "healthy");
    assert_eq!(data["environment"], "test");
    assert!(data["uptime"].is_u64());
    for part in ["nats", "auth", "database"] {
        assert_eq!(
            data["services"][part]["status"], "healthy",
            "{part}: {data}"
        );
        assert!(data["services"][part]["latency"].is_u64(), "{part}");
    }
    assert_eq!(data["services"]["database"]["provider"], "sqlite");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_service_is_a_503_within_a_second_not_a_hang() {
    let mut app = TestCluster::start().await;
    assert_eq!(
        app.register("kim@example.com", "password-kim")
            .await
            .status(),
        201
    );
    app.stop_auth().await;

    let started = Instant::now();
    let r = app
        .post_json(
            "/api/login",
            &json!({ "username": "kim@example.com", "password": "password-kim" }),
        )
        .await;
    let (status, body) = envelope(r).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "SERVICE_UNAVAILABLE");

    let started = Instant::now();
    let (status, body) = envelope(app.http.get(app.url("/api/health")).send().await.unwrap()).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(status, 503);
    let doc = &body["error"]["details"];
    assert_eq!(doc["status"], "degraded", "{body}");
    assert_eq!(doc["services"]["nats"]["status"], "healthy");
    assert_eq!(doc["services"]["auth"]["status"], "unhealthy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_makes_health_unhealthy_and_requests_fail_fast() {
    let mut app = TestCluster::start().await;
    // Kill NATS under the running cluster.
    app.nats.kill();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let (status, body) = envelope(app.http.get(app.url("/api/health")).send().await.unwrap()).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(status, 503);
    assert_eq!(body["error"]["details"]["status"], "unhealthy", "{body}");
    let started = Instant::now();
    let r = app
        .post_json(
            "/api/login",
            &json!({ "username": "x@example.com", "password": "whatever1" }),
        )
        .await;
    let (status, _) = envelope(r).await;
    assert!(matches!(status, 503 | 504), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
}

async fn health(app: &TestCluster) -> (u16, serde_json::Value) {
    let (status, body) = envelope(app.http.get(app.url("/api/health")).send().await.unwrap()).await;
    let doc = if status == 200 {
        body["data"].clone()
    } else {
        body["error"]["details"].clone()
    };
    (status, doc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_local_models_and_cloud_apis_from_the_loader_and_a_dead_router_degrades() {
    let mut app = TestCluster::start().await;
    // No loader: reported, but chats to cloud models still work, so still healthy.
    let (status, doc) = health(&app).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["services"]["inference"]["status"], "healthy", "{doc}");
    assert_eq!(doc["services"]["ollama-loader"]["status"], "unhealthy");
    assert_eq!(doc["services"]["externalApis"]["claude"], "unknown");
    assert_eq!(doc["services"]["ollama"]["status"], "unavailable");

    app.start_loader().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let doc = loop {
        let (status, doc) = health(&app).await;
        assert_eq!(status, 200, "{doc}");
        let apis = &doc["services"]["externalApis"];
        if ["claude", "openai", "google"]
            .iter()
            .all(|p| apis[p] == "reachable")
            && doc["services"]["ollama"]["status"] == "loaded"
        {
            break doc;
        }
        assert!(Instant::now() < deadline, "never all reported: {doc}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(doc["services"]["ollama-loader"]["status"], "healthy");
    let ollama = &doc["services"]["ollama"];
    let models = ollama["models"].as_array().expect("local models listed");
    let of = |id: &str| {
        models
            .iter()
            .find(|m| m["modelId"] == id)
            .unwrap_or_else(|| panic!("{id} listed: {ollama}"))
            .clone()
    };
    // The model named is a loaded one; a model nobody pulled is not.
    let named = ollama["model"].as_str().expect("a model named");
    assert_eq!(of(named)["status"], "loaded", "{ollama}");
    assert_eq!(of("sim-pull")["status"], "not_loaded", "{ollama}");
    assert!(models.iter().all(|m| m["modelId"] != "gpt-4o"), "{ollama}");

    // Without a router no chat can be answered: degraded, 503.
    app.kill_router(0).await;
    let (status, doc) = health(&app).await;
    assert_eq!(status, 503, "{doc}");
    assert_eq!(doc["status"], "degraded");
    assert_eq!(doc["services"]["inference"]["status"], "unhealthy");
}
