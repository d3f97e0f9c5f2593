use crate::envelope;
use polylogue_tests::TestCluster;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_allows_five_a_minute_per_address_then_429_with_retry_after() {
    let app = TestCluster::start().await;
    let body = json!({ "username": "x@example.com", "password": "whatever1" });
    let attempt = || app.post_json("/api/login", &body);
    for i in 0..5 {
        let r = attempt().await;
        assert_eq!(r.headers()["x-ratelimit-limit"], "5");
        assert_eq!(r.headers()["x-ratelimit-window"], "60");
        assert_eq!(
            r.headers()["x-ratelimit-remaining"].to_str().unwrap(),
            (4 - i).to_string()
        );
        let reset: u64 = r.headers()["x-ratelimit-reset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(reset > now && reset <= now + 60, "reset {reset} now {now}");
        assert_eq!(envelope(r).await.0, 401);
    }
    let r = attempt().await;
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after));
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
    let (status, body) = envelope(r).await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "RATE_LIMITED");
    // Other routes keep their own budget.
    assert_eq!(
        app.http
            .get(app.url("/api/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_limited_per_account_too() {
    let app = TestCluster::start_with(|s| {
        s.edge.rate_limits.overrides.insert("login".into(), 100);
        s.edge.rate_limits.login_per_account = 3;
    })
    .await;
    assert_eq!(
        app.register("target@example.com", "the real password")
            .await
            .status(),
        201
    );
    for _ in 0..3 {
        let r = app
            .post_json(
                "/api/login",
                &json!({ "username": "target@example.com", "password": "guess-guess" }),
            )
            .await;
        assert_eq!(r.status(), 401);
    }
    // Even the right password waits now; another account is unaffected.
    let r = app
        .post_json(
            "/api/login",
            &json!({ "username": "TARGET@example.com", "password": "the real password" }),
        )
        .await;
    assert!(r.headers().contains_key("retry-after"));
    let (status, body) = envelope(r).await;
    assert_eq!(status, 429, "{body}");
    let r = app
        .post_json(
            "/api/login",
            &json!({ "username": "other@example.com", "password": "guess-guess" }),
        )
        .await;
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_routes_count_per_user_and_limits_are_configurable() {
    let app = TestCluster::start_with(|s| {
        s.edge.rate_limits.overrides.insert("version".into(), 2);
    })
    .await;
    let a = app.signed_in("ua@example.com", "password-a").await;
    let b = app.signed_in("ub@example.com", "password-b").await;
    assert_eq!(app.get_with("/api/version", &a).await.status(), 200);
    assert_eq!(app.get_with("/api/version", &a).await.status(), 200);
    assert_eq!(app.get_with("/api/version", &a).await.status(), 429);
    // Same address, another user: its own budget.
    let r = app.get_with("/api/version", &b).await;
    assert_eq!(r.headers()["x-ratelimit-limit"], "2");
    assert_eq!(r.status(), 200);
}
