//! Through the edge over real HTTP, with real NATS and real SQLite behind it.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers: a failed unwrap is a failed test"
)]

mod auth;
mod envelope;
mod health;
mod inference;
mod lifecycle;
mod models;
mod profile;
mod rate_limits;
mod summarizer;
mod threads;
mod tokens;

use serde_json::Value;

/// Reads the body as the spec's envelope and checks its common fields.
pub async fn envelope(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let request_id = r
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned())
        .expect("X-Request-Id on every response");
    for h in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "x-ratelimit-window",
    ] {
        assert!(r.headers().contains_key(h), "{h} missing on a {status}");
    }
    let body: Value = r.json().await.expect("a JSON body");
    assert_eq!(
        body["requestId"], request_id,
        "requestId matches the header"
    );
    assert!(
        body["timestamp"].as_str().is_some_and(|t| t.contains('T')),
        "timestamp: {body}"
    );
    let success = status < 400;
    assert_eq!(body["success"], success, "{body}");
    if success {
        assert!(body.get("data").is_some(), "{body}");
    } else {
        assert!(
            body["error"]["code"].is_string() && body["error"]["message"].is_string(),
            "{body}"
        );
    }
    (status, body)
}
