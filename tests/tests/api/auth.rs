use crate::envelope;
use polylogue_tests::{Cookies, TestCluster, captured_logs};
use serde_json::json;
use std::time::{Duration, Instant};

const PW: &str = "correct horse battery staple";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_returns_the_user_and_sets_http_only_secure_same_site_cookies() {
    let app = TestCluster::start().await;
    let r = app.register("Alice@Example.com", PW).await;
    let (status, body) = envelope(r).await;
    assert_eq!(status, 201);
    assert_eq!(body["data"]["user"]["username"], "alice@example.com");
    assert_eq!(body["data"]["user"]["displayName"], "alice");

    let r = app
        .post_json(
            "/api/login",
            &json!({ "username": "alice@example.com", "password": PW }),
        )
        .await;
    let cookies = Cookies::from_response(&r);
    let (status, body) = envelope(r).await;
    assert_eq!(status, 200, "{body}");
    let user = &body["data"]["user"];
    assert_eq!(user["username"], "alice@example.com");
    assert!(user["id"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(user["createdAt"].as_str().is_some_and(|s| s.contains('T')));
    assert_eq!(body["data"]["expiresIn"], 900);
    assert!(
        cookies.access.is_some() && cookies.refresh.is_some(),
        "{:?}",
        cookies.raw
    );
    for line in &cookies.raw {
        assert!(line.contains("HttpOnly"), "{line}");
        assert!(line.contains("Secure"), "{line}");
        assert!(line.contains("SameSite=Strict"), "{line}");
    }
    // No token in the body.
    let text = body.to_string();
    assert!(!text.contains(cookies.access.as_deref().unwrap()));
    assert!(!text.contains(cookies.refresh.as_deref().unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_cookies_can_be_switched_on_for_local_runs() {
    let app = TestCluster::start_with(|s| s.edge.cookie_secure = false).await;
    let cookies = app.signed_in("local@example.com", PW).await;
    assert!(
        cookies.raw.iter().all(|l| !l.contains("Secure")),
        "{:?}",
        cookies.raw
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_username_is_a_conflict_whatever_its_case() {
    let app = TestCluster::start().await;
    assert_eq!(app.register("bob@example.com", PW).await.status(), 201);
    let (status, body) = envelope(app.register("  BOB@example.com ", PW).await).await;
    assert_eq!(status, 409);
    assert_eq!(body["error"]["code"], "CONFLICT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_must_be_8_to_128_characters_and_are_never_truncated() {
    let app = TestCluster::start().await;
    let (status, body) = envelope(app.register("short@example.com", "1234567").await).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["details"]["field"], "password");
    let (status, _) = envelope(app.register("long@example.com", &"x".repeat(129)).await).await;
    assert_eq!(status, 400);
    // 128 multi-byte characters are fine: the limit counts characters, not bytes.
    let max = "é".repeat(128);
    assert_eq!(app.register("max@example.com", &max).await.status(), 201);
    // No truncation: a password differing only in its last character does not match.
    let mut other = "é".repeat(127);
    other.push('e');
    let r = app
        .post_json(
            "/api/login",
            &json!({ "username": "max@example.com", "password": other }),
        )
        .await;
    assert_eq!(r.status(), 401);
    let r = app
        .post_json(
            "/api/login",
            &json!({ "username": "max@example.com", "password": max }),
        )
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_user_and_wrong_password_look_the_same() {
    let app = TestCluster::start_with(|s| {
        s.edge.rate_limits.overrides.insert("login".into(), 100);
    })
    .await;
    assert_eq!(app.register("carol@example.com", PW).await.status(), 201);
    let attempt = |username: &'static str| {
        let app = &app;
        async move {
            let started = Instant::now();
            let r = app
                .post_json(
                    "/api/login",
                    &json!({ "username": username, "password": "not the password" }),
                )
                .await;
            let elapsed = started.elapsed();
            let (status, body) = envelope(r).await;
            (status, body["error"].clone(), elapsed)
        }
    };
    let mut wrong = Vec::new();
    let mut unknown = Vec::new();
    for _ in 0..5 {
        let (s1, e1, t1) = attempt("carol@example.com").await;
        let (s2, e2, t2) = attempt("nobody@example.com").await;
        assert_eq!((s1, s2), (401, 401));
        assert_eq!(e1, e2, "same error body");
        assert_eq!(e1["code"], "INVALID_CREDENTIALS");
        wrong.push(t1);
        unknown.push(t2);
    }
    wrong.sort();
    unknown.sort();
    // Both paths run one argon2id verification; an unknown user that skipped it would answer in
    // well under half the time of a wrong password.
    assert!(
        unknown[2] * 2 > wrong[2],
        "unknown user median {:?} vs wrong password median {:?}",
        unknown[2],
        wrong[2]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_needs_a_session_and_reports_the_build() {
    let app = TestCluster::start().await;
    let (status, body) =
        envelope(app.http.get(app.url("/api/version")).send().await.unwrap()).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "UNAUTHORIZED");

    let cookies = app.signed_in("dave@example.com", PW).await;
    let (status, body) = envelope(app.get_with("/api/version", &cookies).await).await;
    assert_eq!(status, 200, "{body}");
    let data = &body["data"];
    assert_eq!(data["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        data["buildTime"].as_str().is_some_and(|t| t.len() >= 10),
        "{data}"
    );
    assert!(
        data["commit"].as_str().is_some_and(|c| !c.is_empty()),
        "{data}"
    );
    assert_eq!(data["environment"], "test");

    // Bearer works too, for non-browser clients.
    let r = app
        .http
        .get(app.url("/api/version"))
        .bearer_auth(cookies.access.as_deref().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_the_token_and_reuse_revokes_the_whole_session() {
    let app = TestCluster::start().await;
    let first = app.signed_in("erin@example.com", PW).await;

    let r = app.post_with("/api/auth/refresh", &first).await;
    let second = Cookies::from_response(&r);
    let (status, body) = envelope(r).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["user"]["username"], "erin@example.com");
    assert_ne!(second.refresh, first.refresh, "rotated");
    assert_ne!(second.access, first.access);
    assert_eq!(app.get_with("/api/version", &second).await.status(), 200);

    // The spent token comes back: reuse detected, the family is revoked.
    let r = app.post_with("/api/auth/refresh", &first).await;
    let cleared = Cookies::from_response(&r);
    let (status, body) = envelope(r).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "TOKEN_REUSED");
    assert!(
        cleared.raw.iter().any(|l| l.contains("Max-Age=0")),
        "cookies cleared"
    );
    // The newest refresh token of the family is dead too, and so is its access token.
    let (status, _) = envelope(app.post_with("/api/auth/refresh", &second).await).await;
    assert_eq!(status, 401);
    assert_eq!(
        app.get_with("/api/version", &second.access_only())
            .await
            .status(),
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_without_a_token_or_with_a_forged_one_is_refused() {
    let app = TestCluster::start().await;
    let (status, _) = envelope(
        app.http
            .post(app.url("/api/auth/refresh"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    let forged = Cookies {
        refresh: Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()),
        ..Cookies::default()
    };
    let (status, body) = envelope(app.post_with("/api/auth/refresh", &forged).await).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "UNAUTHORIZED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_the_old_access_token_at_every_edge_replica() {
    let app = TestCluster::start().await;
    let other_edge = app.start_edge_replica().await;
    let cookies = app.signed_in("frank@example.com", PW).await;
    let on_other = |cookies: &Cookies| {
        app.http
            .get(format!("{other_edge}/api/version"))
            .header("cookie", cookies.header())
            .send()
    };
    assert_eq!(on_other(&cookies).await.unwrap().status(), 200);

    let r = app.post_with("/api/logout", &cookies).await;
    let cleared = Cookies::from_response(&r);
    let (status, body) = envelope(r).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["message"], "Successfully logged out");
    assert!(cleared.access.is_none() && cleared.raw.iter().all(|l| l.contains("Max-Age=0")));

    // The same edge refuses at once; the other learns through NATS KV within a second.
    let (status, body) = envelope(app.get_with("/api/version", &cookies).await).await;
    assert_eq!(status, 401);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("logged out")
    );
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let status = on_other(&cookies).await.unwrap().status();
        if status == 401 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the other replica still accepts the token"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The refresh token of the logged-out session is dead as well.
    assert_eq!(
        app.post_with("/api/auth/refresh", &cookies).await.status(),
        401
    );
    // Logging out again, or without any session, is harmless.
    assert_eq!(app.post_with("/api/logout", &cookies).await.status(), 200);
    assert_eq!(
        app.http
            .post(app.url("/api/logout"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_after_a_logout_also_refuses_the_token() {
    let app = TestCluster::start().await;
    let cookies = app.signed_in("gina@example.com", PW).await;
    assert_eq!(app.post_with("/api/logout", &cookies).await.status(), 200);
    let late = app.start_edge_replica().await;
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let r = app
            .http
            .get(format!("{late}/api/version"))
            .header("cookie", cookies.header())
            .send()
            .await
            .unwrap();
        if r.status() == 401 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "late replica accepted a revoked token"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_is_closed_in_production_unless_switched_on() {
    let app = TestCluster::start_with(|s| {
        s.environment = "production".into();
        s.auth.registration_enabled = None;
    })
    .await;
    let (status, body) = envelope(app.register("henry@example.com", PW).await).await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "FORBIDDEN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_and_tokens_never_reach_the_logs_or_error_bodies() {
    let logs = captured_logs();
    let app = TestCluster::start().await;
    let canary = "Canary-Pa55word-7f3a9c";
    let cookies = app.signed_in("ivy@example.com", canary).await;
    let r = app
        .post_json(
            "/api/login",
            &json!({ "username": "ivy@example.com", "password": format!("{canary}-wrong") }),
        )
        .await;
    let text = r.text().await.unwrap();
    assert!(!text.contains(canary), "{text}");
    let r = app
        .post_json("/api/login", &json!({ "username": 7, "password": canary }))
        .await;
    let text = r.text().await.unwrap();
    assert!(!text.contains(canary), "{text}");
    let _ = app.post_with("/api/auth/refresh", &cookies).await;
    let _ = app.post_with("/api/auth/refresh", &cookies).await; // reuse: logged as a warning
    let _ = app.post_with("/api/logout", &cookies).await;
    let captured = logs.contents();
    assert!(
        captured.contains("login"),
        "the capture works: {captured:.200}"
    );
    assert!(!captured.contains(canary), "password in logs");
    assert!(
        !captured.contains(cookies.refresh.as_deref().unwrap()),
        "refresh token in logs"
    );
    assert!(
        !captured.contains(cookies.access.as_deref().unwrap()),
        "access token in logs"
    );
}
