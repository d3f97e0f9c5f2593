//! The spec's envelope on every response, and 400s that name the field.

use crate::envelope;
use polylogue_tests::TestCluster;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_wrong_methods_answer_in_the_envelope() {
    let app = TestCluster::start().await;
    let (status, body) = envelope(app.http.get(app.url("/api/nope")).send().await.unwrap()).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "NOT_FOUND");
    let (status, body) = envelope(app.http.get(app.url("/api/login")).send().await.unwrap()).await;
    assert_eq!(status, 405);
    assert_eq!(body["error"]["code"], "METHOD_NOT_ALLOWED");
    let (status, _) = envelope(
        app.http
            .delete(app.url("/api/version"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_is_echoed_when_sane_and_generated_otherwise() {
    let app = TestCluster::start().await;
    let r = app
        .http
        .get(app.url("/api/nope"))
        .header("x-request-id", "client-abc_123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "client-abc_123");
    let (_, body) = envelope(r).await;
    assert_eq!(body["requestId"], "client-abc_123");
    let r = app
        .http
        .get(app.url("/api/nope"))
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    let generated = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(generated.starts_with("req_"), "{generated}");
    let r = app.http.get(app.url("/api/nope")).send().await.unwrap();
    let other = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(generated, other, "fresh ids per request");
}

async fn login_raw(app: &TestCluster, body: &str) -> (u16, serde_json::Value) {
    envelope(
        app.http
            .post(app.url("/api/login"))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_json_bodies_are_400_validation_errors_naming_the_field() {
    let app = TestCluster::start_with(|s| {
        s.edge.rate_limits.overrides.insert("login".into(), 100);
    })
    .await;
    let cases = [
        (r#"{"username":"a@b.c","password":"#, "password"),
        (r#"not json at all"#, "body"),
        (r#"{"username":"a@b.c"}"#, "password"),
        (r#"{"password":"secret123"}"#, "username"),
        (
            r#"{"username":"a@b.c","password":"secret123","admin":true}"#,
            "admin",
        ),
        (r#"{"username":42,"password":"secret123"}"#, "username"),
        (r#"{"username":"a@b.c","password":["x"]}"#, "password"),
        (r#"{"username":"","password":"secret123"}"#, "username"),
        (r#"{"username":"a@b.c","password":""}"#, "password"),
        (r#"[]"#, "body"),
    ];
    for (raw, field) in cases {
        let (status, body) = login_raw(&app, raw).await;
        assert_eq!(status, 400, "{raw} → {body}");
        assert_eq!(body["error"]["code"], "VALIDATION_ERROR", "{raw}");
        assert_eq!(body["error"]["details"]["field"], field, "{raw} → {body}");
    }
    // Not JSON at all by content type.
    let (status, body) = envelope(
        app.http
            .post(app.url("/api/login"))
            .header("content-type", "text/plain")
            .body("x")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["details"]["field"], "Content-Type");
    let (status, _) = envelope(app.http.post(app.url("/api/login")).send().await.unwrap()).await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_is_a_413_and_the_edge_keeps_serving() {
    let app = TestCluster::start_with(|s| s.edge.body_limit_bytes = 4096).await;
    let big = json!({ "username": "a@b.c", "password": "p".repeat(10_000) });
    let (status, body) = envelope(app.post_json("/api/register", &big).await).await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "PAYLOAD_TOO_LARGE");
    assert_eq!(
        app.register("after@example.com", "long enough pw")
            .await
            .status(),
        201
    );
}
