//! Profiles and per-user provider keys through the edge, with real NATS, SQLite and (for the
//! Vault adapter) a real OpenBao: profile validation and partial updates, the masked key view,
//! keys verified with the provider (simulator) and sealed before they cross NATS, a user's own
//! key used for their generations (and `lastUsed` kept), deletion taking effect at once, an
//! envelope moved to another user or tampered with failing to open, Vault sealed → 503 while
//! other routes keep working, rotation + rewrap, and the canary key never in a response body or
//! log line.

use crate::envelope;
use polylogue_bus::{Bus, RequestContext};
use polylogue_contracts::profile::{RewrapReply, RewrapRequest};
use polylogue_contracts::subjects::{auth as verbs, service};
use polylogue_tests::{CANARY, Cookies, OpenBao, TestCluster, captured_logs};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A key the simulator accepts, carrying the canary so any leak is found by grep.
fn canary_key(provider: &str) -> String {
    match provider {
        "claude" => format!("sk-ant-api03-{CANARY}-claude0000"),
        "openai" => format!("sk-proj-{CANARY}-openai00000000"),
        _ => format!("AIzaSy{CANARY}-google0000000000000"),
    }
}

/// A cluster with no operator keys (so a generation needs the user's own), rate limits out of
/// the way except where a test checks them.
async fn cluster_with(configure: impl FnOnce(&mut polylogue_config::Settings)) -> TestCluster {
    TestCluster::start_with(|s| {
        for route in [
            "profile_get",
            "profile_update",
            "api_keys",
            "api_keys_delete",
            "threads_create",
            "messages_send",
            "default",
        ] {
            s.edge.rate_limits.overrides.insert(route.into(), 100_000);
        }
        s.inference.keys = Default::default();
        s.keys.last_used_flush_ms = 100;
        configure(s);
    })
    .await
}

async fn cluster() -> TestCluster {
    cluster_with(|_| {}).await
}

async fn user(app: &TestCluster, name: &str) -> Cookies {
    app.signed_in(&format!("{name}@example.test"), "correct horse battery")
        .await
}

fn user_id(who: &Cookies) -> String {
    use base64::Engine;
    let token = who.access.as_deref().unwrap();
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    claims["sub"].as_str().unwrap().to_owned()
}

async fn profile(app: &TestCluster, who: &Cookies) -> Value {
    let (status, body) = envelope(app.get_with("/api/profile", who).await).await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.to_string().contains(CANARY), "canary in {body}");
    body["data"]["user"].clone()
}

async fn patch(app: &TestCluster, who: &Cookies, body: Value) -> (u16, Value) {
    envelope(
        app.send_json(Method::PATCH, "/api/profile", who, &body)
            .await,
    )
    .await
}

async fn put_keys(app: &TestCluster, who: &Cookies, body: Value) -> (u16, Value) {
    let (status, body) = envelope(
        app.send_json(Method::POST, "/api/profile/api-keys", who, &body)
            .await,
    )
    .await;
    assert!(!body.to_string().contains(CANARY), "canary in {body}");
    (status, body)
}

async fn thread(app: &TestCluster, who: &Cookies) -> String {
    let (status, body) = envelope(
        app.send_json(
            Method::POST,
            "/api/threads",
            who,
            &json!({ "title": "keys" }),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["data"]["thread"]["id"].as_str().unwrap().to_owned()
}

/// A non-streaming message to `model`; returns status and body (checked for the canary).
async fn send(app: &TestCluster, who: &Cookies, thread: &str, model: &str) -> (u16, Value) {
    let (status, body) = envelope(
        app.send_json(
            Method::POST,
            &format!("/api/threads/{thread}/models/{model}/messages"),
            who,
            &json!({ "content": "hello" }),
        )
        .await,
    )
    .await;
    assert!(!body.to_string().contains(CANARY), "canary in {body}");
    (status, body)
}

/// The auth service's SQLite file of this cluster.
fn auth_db(app: &TestCluster) -> rusqlite::Connection {
    let path = app.settings.sqlite_file(None, "auth");
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn
}

fn assert_no_canary_in_logs() {
    let logs = captured_logs().contents();
    assert!(!logs.contains(CANARY), "the canary key reached a log line");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_profile_has_default_settings_and_no_keys() {
    let app = cluster().await;
    let who = user(&app, "fresh").await;
    let p = profile(&app, &who).await;
    assert_eq!(p["username"], "fresh@example.test");
    assert_eq!(p["displayName"], "fresh");
    assert!(p["createdAt"].as_str().unwrap().contains('T'));
    assert_eq!(
        p["settings"],
        json!({ "defaultModel": null, "defaultTemperature": null, "systemPrompt": null })
    );
    for provider in ["claude", "openai", "google"] {
        assert_eq!(p["apiKeys"][provider], json!({ "configured": false }));
    }
    let anonymous = app.http.get(app.url("/api/profile")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_updates_are_partial_and_validated() {
    let app = cluster().await;
    let who = user(&app, "patcher").await;

    let (status, body) = patch(&app, &who, json!({ "displayName": "  John Smith " })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["user"]["displayName"], "John Smith");

    let (status, body) = patch(
        &app,
        &who,
        json!({ "settings": { "defaultModel": "gpt-4o", "defaultTemperature": 0.8,
                              "systemPrompt": "You are an expert coding assistant." } }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // One field at a time leaves the others as they were.
    let (status, _) = patch(
        &app,
        &who,
        json!({ "settings": { "defaultTemperature": 1.1 } }),
    )
    .await;
    assert_eq!(status, 200);
    let p = profile(&app, &who).await;
    assert_eq!(p["displayName"], "John Smith");
    assert_eq!(
        p["settings"],
        json!({ "defaultModel": "gpt-4o", "defaultTemperature": 1.1,
                "systemPrompt": "You are an expert coding assistant." })
    );

    // Refused, each with the field named, and nothing changed.
    let long_name = "n".repeat(101);
    let long_prompt = "p".repeat(8_001);
    for (body, field) in [
        (json!({ "displayName": "" }), "displayName"),
        (json!({ "displayName": "   " }), "displayName"),
        (json!({ "displayName": long_name }), "displayName"),
        (json!({ "displayName": null }), "displayName"),
        (
            json!({ "settings": { "defaultModel": "no-such-model" } }),
            "settings.defaultModel",
        ),
        (
            json!({ "settings": { "defaultTemperature": 2.5 } }),
            "settings.defaultTemperature",
        ),
        (
            json!({ "settings": { "defaultTemperature": -0.1 } }),
            "settings.defaultTemperature",
        ),
        (
            json!({ "settings": { "defaultTemperature": "hot" } }),
            "settings.defaultTemperature",
        ),
        (
            json!({ "settings": { "systemPrompt": long_prompt } }),
            "settings.systemPrompt",
        ),
        (json!({ "settings": { "colour": "blue" } }), "settings"),
        (json!({ "email": "x@example.test" }), "email"),
        // gpt-4o allows up to 2.0; Claude models only up to 1.0, so the stored 1.1 does not fit.
        (
            json!({ "settings": { "defaultModel": "claude-sonnet" } }),
            "settings.defaultTemperature",
        ),
    ] {
        let (status, resp) = patch(&app, &who, body.clone()).await;
        assert_eq!(status, 400, "{body} → {resp}");
        assert_eq!(resp["error"]["code"], "VALIDATION_ERROR");
        let named = resp["error"]["details"]["field"]
            .as_str()
            .unwrap_or_default();
        assert!(
            named.contains(field) || field.contains(named) && !named.is_empty(),
            "{body}: field {named:?}, expected {field:?}"
        );
    }
    assert_eq!(
        profile(&app, &who).await["settings"]["defaultTemperature"],
        1.1
    );

    // Model and temperature together pass; null clears a setting.
    let (status, body) = patch(
        &app,
        &who,
        json!({ "settings": { "defaultModel": "claude-sonnet", "defaultTemperature": 0.3,
                              "systemPrompt": null } }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"]["user"]["settings"],
        json!({ "defaultModel": "claude-sonnet", "defaultTemperature": 0.3, "systemPrompt": null })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_key_is_verified_sealed_masked_and_used_for_their_generations() {
    let app = cluster().await;
    let who = user(&app, "keyed").await;
    let t = thread(&app, &who).await;
    // No operator key and none of the user's: refused before anything is stored.
    let (status, body) = send(&app, &who, &t, "claude-haiku").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "API_KEY_REQUIRED");

    let key = canary_key("claude");
    let (status, body) = put_keys(&app, &who, json!({ "claude": key })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["updated"], json!(["claude"]));
    assert_eq!(body["data"]["verified"], json!({ "claude": true }));

    let p = profile(&app, &who).await;
    let claude = &p["apiKeys"]["claude"];
    assert_eq!(claude["configured"], true);
    assert_eq!(claude["hint"], format!("…{}", &key[key.len() - 4..]));
    assert!(claude.get("lastUsed").is_none(), "{claude}");
    assert_eq!(p["apiKeys"]["openai"], json!({ "configured": false }));

    // At rest: an envelope, never the key.
    let stored: String = auth_db(&app)
        .query_row("SELECT envelope FROM api_keys", [], |r| r.get(0))
        .unwrap();
    assert!(!stored.contains(CANARY), "plaintext at rest");
    let envelope: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(envelope["wrapped_key"]["kms"], "local");

    // The user's key reaches the provider (the simulator saw a keyed request) and lastUsed follows.
    app.sim.clear_requests();
    let (status, body) = send(&app, &who, &t, "claude-haiku").await;
    assert_eq!(status, 200, "{body}");
    let seen = app.sim.requests();
    assert!(
        seen.iter().any(|r| r.provider == "anthropic" && r.has_key),
        "{seen:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let p = profile(&app, &who).await;
        if let Some(at) = p["apiKeys"]["claude"]["lastUsed"].as_str() {
            assert!(at.contains('T'));
            break;
        }
        assert!(Instant::now() < deadline, "lastUsed never set: {p}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Another user does not get this key.
    let other = user(&app, "keyless").await;
    let t2 = thread(&app, &other).await;
    let (status, _) = send(&app, &other, &t2, "claude-haiku").await;
    assert_eq!(status, 422);
    assert_no_canary_in_logs();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_keys_are_not_stored_and_unreachable_providers_store_unverified() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let app = cluster_with(|s| {
        s.inference.google_url = Some(format!("http://127.0.0.1:{closed}"));
        s.keys.verify_timeout_ms = 1_000;
    })
    .await;
    let who = user(&app, "verifier").await;
    let rejected = format!("sk-proj-invalid-{CANARY}-0000");
    let (status, body) = put_keys(
        &app,
        &who,
        json!({ "openai": rejected, "google": canary_key("google"), "claude": canary_key("claude") }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let data = &body["data"];
    assert_eq!(data["updated"], json!(["claude", "google"]));
    assert_eq!(
        data["verified"],
        json!({ "claude": true, "google": false, "openai": false })
    );
    assert!(
        data["reasons"]["openai"]
            .as_str()
            .unwrap()
            .contains("rejected"),
        "{data}"
    );
    assert!(
        data["reasons"]["google"]
            .as_str()
            .unwrap()
            .contains("could not verify"),
        "{data}"
    );
    let p = profile(&app, &who).await;
    assert_eq!(p["apiKeys"]["openai"]["configured"], false);
    assert_eq!(p["apiKeys"]["google"]["configured"], true);
    assert_no_canary_in_logs();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_key_requests_are_refused_whole() {
    let app = cluster().await;
    let who = user(&app, "shapes").await;
    for body in [
        json!({}),
        json!({ "claude": format!("sk-proj-{CANARY}-wrong-prefix") }),
        json!({ "openai": "sk-short" }),
        json!({ "google": format!("AIza {CANARY} with spaces 000000") }),
        json!({ "claude": canary_key("claude"), "openai": "not-a-key" }),
        json!({ "mistral": canary_key("openai") }),
        json!({ "claude": 42 }),
    ] {
        let (status, resp) = put_keys(&app, &who, body.clone()).await;
        assert_eq!(status, 400, "{body} → {resp}");
        assert_eq!(resp["error"]["code"], "VALIDATION_ERROR");
    }
    let p = profile(&app, &who).await;
    assert_eq!(
        p["apiKeys"]["claude"]["configured"], false,
        "a partly bad request stored a key"
    );
    let (status, _) = envelope(app.delete_with("/api/profile/api-keys/mistral", &who).await).await;
    assert_eq!(status, 404);
    assert_no_canary_in_logs();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_key_stops_working_at_once() {
    let app = cluster().await;
    let who = user(&app, "deleter").await;
    let t = thread(&app, &who).await;
    let (status, _) = put_keys(&app, &who, json!({ "claude": canary_key("claude") })).await;
    assert_eq!(status, 200);
    let (status, body) = send(&app, &who, &t, "claude-haiku").await;
    assert_eq!(status, 200, "{body}");
    // The router now holds the key in its cache; deleting it must reach that cache.
    let (status, body) =
        envelope(app.delete_with("/api/profile/api-keys/claude", &who).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"],
        json!({ "provider": "claude", "deleted": true })
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let (status, body) = send(&app, &who, &t, "claude-haiku").await;
        if status == 422 {
            assert_eq!(body["error"]["code"], "API_KEY_REQUIRED");
            break;
        }
        assert!(Instant::now() < deadline, "the deleted key kept working");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) =
        envelope(app.delete_with("/api/profile/api-keys/claude", &who).await).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["deleted"], false);
    assert_eq!(
        profile(&app, &who).await["apiKeys"]["claude"]["configured"],
        false
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_moved_to_another_user_or_tampered_with_never_opens() {
    // No cache, so every send opens the stored envelope.
    let app = cluster_with(|s| s.keys.cache_capacity = 0).await;
    let alice = user(&app, "alice").await;
    let mallory = user(&app, "mallory").await;
    let (status, _) = put_keys(&app, &alice, json!({ "claude": canary_key("claude") })).await;
    assert_eq!(status, 200);
    let (status, _) = put_keys(&app, &mallory, json!({ "openai": canary_key("openai") })).await;
    assert_eq!(status, 200);
    let (alice_id, mallory_id) = (user_id(&alice), user_id(&mallory));
    {
        let db = auth_db(&app);
        // Copy alice's claude row to mallory, and alice's envelope into mallory's openai row.
        db.execute(
            "INSERT INTO api_keys (user_id, provider, key_version, envelope, hint, created_at, last_used)
             SELECT ?1, provider, key_version, envelope, hint, created_at, last_used
             FROM api_keys WHERE user_id = ?2 AND provider = 'claude'",
            [&mallory_id, &alice_id],
        )
        .unwrap();
        db.execute(
            "UPDATE api_keys SET envelope = (SELECT envelope FROM api_keys WHERE user_id = ?2 AND provider = 'claude'),
                                 key_version = (SELECT key_version FROM api_keys WHERE user_id = ?2 AND provider = 'claude')
             WHERE user_id = ?1 AND provider = 'openai'",
            [&mallory_id, &alice_id],
        )
        .unwrap();
    }
    let t = thread(&app, &mallory).await;
    for model in ["claude-haiku", "gpt-4o-mini"] {
        let (status, body) = send(&app, &mallory, &t, model).await;
        assert_eq!(status, 422, "{model}: {body}");
        assert_eq!(body["error"]["code"], "INVALID_API_KEY", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("could not be decrypted")
        );
    }
    // Tampering with alice's own ciphertext (one character) is caught too.
    {
        let db = auth_db(&app);
        let stored: String = db
            .query_row(
                "SELECT envelope FROM api_keys WHERE user_id = ?1 AND provider = 'claude'",
                [&alice_id],
                |r| r.get(0),
            )
            .unwrap();
        let mut env: Value = serde_json::from_str(&stored).unwrap();
        let ct = env["ciphertext"].as_str().unwrap().to_owned();
        let mut chars: Vec<char> = ct.chars().collect();
        let mid = chars.len() / 2;
        chars[mid] = if chars[mid] == 'A' { 'B' } else { 'A' };
        let flipped: String = chars.into_iter().collect();
        env["ciphertext"] = json!(flipped);
        db.execute(
            "UPDATE api_keys SET envelope = ?1 WHERE user_id = ?2 AND provider = 'claude'",
            [&env.to_string(), &alice_id],
        )
        .unwrap();
    }
    let t = thread(&app, &alice).await;
    let (status, body) = send(&app, &alice, &t, "claude-haiku").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "INVALID_API_KEY");
    // Each failure is on the audit stream.
    let failures = audit_events(&app, "keys.failed").await;
    assert!(failures.len() >= 3, "{failures:?}");
    assert!(failures.iter().any(|f| f["user_id"] == mallory_id.as_str()));
    assert_no_canary_in_logs();
}

/// The events on `<prefix>.audit.<suffix>` so far.
async fn audit_events(app: &TestCluster, suffix: &str) -> Vec<Value> {
    use futures::StreamExt;
    let bus = app.bus().await;
    let js = async_nats::jetstream::new(bus.client().clone());
    let stream = js
        .get_stream(format!("{}-audit", bus.prefix()))
        .await
        .unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            filter_subject: format!("{}.audit.{suffix}", bus.prefix()),
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut batch = consumer
        .fetch()
        .max_messages(1000)
        .expires(Duration::from_millis(500))
        .messages()
        .await
        .unwrap();
    while let Some(Ok(m)) = batch.next().await {
        out.push(serde_json::from_slice(&m.payload).unwrap());
        if Instant::now() > deadline {
            break;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_keys_is_limited_to_five_a_minute() {
    let app = TestCluster::start().await;
    let who = user(&app, "limited").await;
    for i in 0..5 {
        let (status, body) = put_keys(&app, &who, json!({ "claude": canary_key("claude") })).await;
        assert_eq!(status, 200, "request {i}: {body}");
    }
    let (status, body) = put_keys(&app, &who, json!({ "claude": canary_key("claude") })).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "RATE_LIMITED");
}

/// A cluster whose KMS is Vault transit on a real OpenBao.
async fn vault_cluster(bao: &OpenBao) -> TestCluster {
    let (address, token) = (bao.address.clone(), bao.token.clone());
    cluster_with(move |s| {
        s.kms.engine = "vault".into();
        s.kms.vault.address = address;
        s.kms.vault.token = Some(token.into());
        s.kms.vault.timeout_ms = 1_000;
        s.keys.cache_capacity = 0;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_transit_seals_keys_and_a_sealed_vault_fails_closed_with_503() {
    let Some(bao) = OpenBao::start_or_skip().await else {
        return;
    };
    let app = vault_cluster(&bao).await;
    let who = user(&app, "vaulted").await;
    let t = thread(&app, &who).await;
    let (status, body) = put_keys(&app, &who, json!({ "claude": canary_key("claude") })).await;
    assert_eq!(status, 200, "{body}");
    let stored: String = auth_db(&app)
        .query_row("SELECT envelope FROM api_keys", [], |r| r.get(0))
        .unwrap();
    let env: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(env["wrapped_key"]["kms"], "vault");
    assert!(
        env["wrapped_key"]["ciphertext"]
            .as_str()
            .unwrap()
            .starts_with("vault:v1:")
    );
    let (status, body) = send(&app, &who, &t, "claude-haiku").await;
    assert_eq!(status, 200, "{body}");

    bao.seal().await;
    let started = Instant::now();
    let (status, body) = put_keys(&app, &who, json!({ "openai": canary_key("openai") })).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "SERVICE_UNAVAILABLE");
    let (status, body) = send(&app, &who, &t, "claude-haiku").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "SERVICE_UNAVAILABLE");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "fail closed, but fast"
    );
    // Everything that needs no key keeps working.
    let p = profile(&app, &who).await;
    assert_eq!(p["apiKeys"]["claude"]["configured"], true);
    assert_eq!(
        p["apiKeys"]["openai"]["configured"], false,
        "nothing stored while sealed"
    );
    let (status, _) = send(&app, &who, &t, "sim-compatible").await;
    assert_eq!(status, 200);
    let (status, _) = envelope(app.get_with("/api/threads", &who).await).await;
    assert_eq!(status, 200);

    bao.unseal().await;
    let (status, body) = send(&app, &who, &t, "claude-haiku").await;
    assert_eq!(status, 200, "after unseal: {body}");
    assert_no_canary_in_logs();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_rotation_then_rewrap_keeps_every_key_opening() {
    let Some(bao) = OpenBao::start_or_skip().await else {
        return;
    };
    let app = vault_cluster(&bao).await;
    let who = user(&app, "rotator").await;
    let t = thread(&app, &who).await;
    let (status, _) = put_keys(
        &app,
        &who,
        json!({ "claude": canary_key("claude"), "openai": canary_key("openai") }),
    )
    .await;
    assert_eq!(status, 200);
    bao.rotate("polylogue-provider-keys").await;
    // Old versions keep decrypting until rewrapped.
    let (status, body) = send(&app, &who, &t, "claude-haiku").await;
    assert_eq!(status, 200, "{body}");
    let reply = rewrap(&app).await;
    assert_eq!(
        (reply.scanned, reply.rewrapped, reply.failed),
        (2, 2, 0),
        "{reply:?}"
    );
    assert_eq!(reply.version, 2);
    let versions: Vec<String> = {
        let db = auth_db(&app);
        let mut q = db
            .prepare("SELECT envelope FROM api_keys ORDER BY provider")
            .unwrap();
        q.query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .map(|e| {
                let v: Value = serde_json::from_str(&e.unwrap()).unwrap();
                v["wrapped_key"]["ciphertext"].as_str().unwrap()[..9].to_owned()
            })
            .collect()
    };
    assert_eq!(versions, ["vault:v2:", "vault:v2:"]);
    for model in ["claude-haiku", "gpt-4o-mini"] {
        let (status, body) = send(&app, &who, &t, model).await;
        assert_eq!(status, 200, "{model} after rewrap: {body}");
    }
    // A second run finds nothing to do.
    let again = rewrap(&app).await;
    assert_eq!((again.scanned, again.rewrapped, again.current), (2, 0, 2));
}

async fn rewrap(app: &TestCluster) -> RewrapReply {
    let bus: Bus = app.bus().await;
    bus.request_with_timeout(
        service::AUTH,
        verbs::KEYS_REWRAP,
        &RequestContext::new("rewrap-test"),
        &RewrapRequest::default(),
        Duration::from_secs(30),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_kek_rotation_then_rewrap_keeps_every_key_opening() {
    let app = cluster_with(|s| s.keys.cache_capacity = 0).await;
    let who = user(&app, "localrot").await;
    let t = thread(&app, &who).await;
    let (status, _) = put_keys(&app, &who, json!({ "claude": canary_key("claude") })).await;
    assert_eq!(status, 200);
    // Rotate the key file the way `polylogue keys rotate` does.
    let kek = polylogue_crypto::LocalKek::open(app.settings.kek_file()).unwrap();
    use polylogue_crypto::Kms;
    assert_eq!(kek.rotate().await.unwrap(), 2);
    let (status, body) = send(&app, &who, &t, "claude-haiku").await;
    assert_eq!(status, 200, "old version still opens: {body}");
    let reply = rewrap(&app).await;
    assert_eq!(
        (reply.scanned, reply.rewrapped, reply.version),
        (1, 1, 2),
        "{reply:?}"
    );
    let stored: String = auth_db(&app)
        .query_row("SELECT envelope FROM api_keys", [], |r| r.get(0))
        .unwrap();
    let env: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(env["wrapped_key"]["version"], 2);
    let (status, body) = send(&app, &who, &t, "claude-haiku").await;
    assert_eq!(status, 200, "after rewrap: {body}");
    let mode = std::fs::metadata(app.settings.kek_file()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_system_prompt_and_default_temperature_shape_their_generations() {
    let app = cluster().await;
    let who = user(&app, "styled").await;
    let t = thread(&app, &who).await;
    let (status, body) = patch(
        &app,
        &who,
        json!({ "settings": { "systemPrompt": "You are Polly, a parrot.", "defaultTemperature": 0.2 } }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    app.sim.clear_requests();
    // An OpenAI-compatible model with no key needed: the system message and temperature show.
    let (status, body) = send(&app, &who, &t, "sim-compatible").await;
    assert_eq!(status, 200, "{body}");
    let seen = app.sim.requests();
    let request = &seen.last().unwrap().body;
    assert_eq!(request["messages"][0]["role"], "system", "{request}");
    assert_eq!(
        request["messages"][0]["content"],
        "You are Polly, a parrot."
    );
    assert_eq!(request["temperature"], 0.2, "{request}");
    // A temperature in the request wins; another user gets the installation's defaults.
    app.sim.clear_requests();
    let (status, _) = envelope(
        app.send_json(
            Method::POST,
            &format!("/api/threads/{t}/models/sim-compatible/messages"),
            &who,
            &json!({ "content": "again", "temperature": 1.5 }),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(app.sim.requests().last().unwrap().body["temperature"], 1.5);
    let other = user(&app, "plain").await;
    let t2 = thread(&app, &other).await;
    app.sim.clear_requests();
    let (status, _) = send(&app, &other, &t2, "sim-compatible").await;
    assert_eq!(status, 200);
    let request = app.sim.requests().last().unwrap().body.clone();
    assert_eq!(
        request["messages"][0]["content"],
        app.settings.inference.default_system_prompt.as_str()
    );
    assert_eq!(request["temperature"], 0.7, "the model's default");
}
