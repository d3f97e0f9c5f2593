//! Generations through the edge: the catalog, both response modes for every provider against the
//! simulator, SSE order and content, persistence and statuses, idempotent retries, resume, cancel,
//! a router killed mid-stream, provider error mapping, the context budget and ownership.

use crate::envelope;
use polylogue_provider_sim::SimConfig;
use polylogue_tests::{Cookies, Ev, SseReader, TestCluster};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

async fn cluster_with(
    sim: SimConfig,
    configure: impl FnOnce(&mut polylogue_config::Settings),
) -> TestCluster {
    TestCluster::start_with_sim(sim, |s| {
        for route in [
            "models",
            "threads_create",
            "messages_list",
            "messages_send",
            "messages_stream",
            "messages_cancel",
            "default",
        ] {
            s.edge.rate_limits.overrides.insert(route.into(), 100_000);
        }
        configure(s);
    })
    .await
}

async fn cluster() -> TestCluster {
    cluster_with(SimConfig::default(), |_| {}).await
}

async fn thread(app: &TestCluster, who: &Cookies) -> String {
    let (status, body) = envelope(
        app.send_json(
            Method::POST,
            "/api/threads",
            who,
            &json!({ "title": "chat" }),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["data"]["thread"]["id"].as_str().unwrap().to_owned()
}

fn expected_reply(n: usize) -> String {
    (0..n).map(|i| format!("tok{i} ")).collect()
}

fn tokens_of(events: &[Ev]) -> String {
    events
        .iter()
        .filter(|e| e.event == "token")
        .map(|e| e.data["token"].as_str().unwrap().to_owned())
        .collect()
}

fn names(events: &[Ev]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for e in events {
        if out.last() != Some(&e.event.as_str()) || e.event != "token" {
            out.push(&e.event);
        }
    }
    out
}

async fn post(
    app: &TestCluster,
    who: &Cookies,
    thread: &str,
    model: &str,
    body: Value,
    idempotency: Option<&str>,
) -> reqwest::Response {
    let mut r = app
        .http
        .post(app.url(&format!("/api/threads/{thread}/models/{model}/messages")))
        .header("cookie", who.header())
        .json(&body);
    if let Some(k) = idempotency {
        r = r.header("idempotency-key", k);
    }
    r.send().await.unwrap()
}

async fn history(app: &TestCluster, who: &Cookies, thread: &str, model: &str) -> Vec<Value> {
    let (status, body) = envelope(
        app.get_with(
            &format!("/api/threads/{thread}/models/{model}/messages?order=asc"),
            who,
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["data"]["messages"].as_array().unwrap().clone()
}

async fn wait_status(
    app: &TestCluster,
    who: &Cookies,
    thread: &str,
    model: &str,
    id: &str,
    want: &str,
) -> Value {
    for _ in 0..100 {
        let h = history(app, who, thread, model).await;
        if let Some(m) = h.iter().find(|m| m["id"] == id)
            && m["status"] == want
        {
            return m.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "message {id} never reached {want}: {:?}",
        history(app, who, thread, model).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_is_served_as_the_spec_shows() {
    let app = cluster().await;
    let who = app
        .signed_in("cat@example.com", "correct horse battery")
        .await;
    let (status, body) = envelope(app.get_with("/api/models", &who).await).await;
    assert_eq!(status, 200);
    let models = body["data"]["models"].as_array().unwrap();
    let opus = models.iter().find(|m| m["id"] == "claude-opus").unwrap();
    assert_eq!(opus["provider"], "anthropic");
    assert_eq!(opus["apiKeyRequired"], "claude");
    assert!(opus["contextLength"].as_u64().unwrap() >= 100_000);
    assert!(opus["pricing"]["input"].is_number());
    assert!(opus["temperatureRange"]["max"].is_number());
    assert!(opus.get("providerModel").is_none() && opus.get("baseUrl").is_none());
    let local = models.iter().find(|m| m["id"] == "gemma-2b-local").unwrap();
    assert_eq!(local["requiresLoading"], true);
    assert_eq!(local["apiKeyRequired"], Value::Null);
    assert!(models.iter().any(|m| m["id"] == "smollm2-135m-local"));
    let r = app.http.get(app.url("/api/models")).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_provider_answers_in_both_modes_and_both_replies_are_stored() {
    let app = cluster().await;
    let who = app
        .signed_in("modes@example.com", "correct horse battery")
        .await;
    let t = thread(&app, &who).await;
    for (model, provider) in [
        ("claude-sonnet", "anthropic"),
        ("gpt-4o", "openai"),
        ("gemini-flash", "google"),
        ("sim-ollama", "ollama"),
        ("sim-compatible", "openai"),
    ] {
        app.sim.clear_requests();
        // JSON reply.
        let (status, body) = envelope(
            post(
                &app,
                &who,
                &t,
                model,
                json!({ "content": "hello there", "temperature": 0.3 }),
                None,
            )
            .await,
        )
        .await;
        assert_eq!(status, 200, "{model}: {body}");
        let data = &body["data"];
        assert_eq!(data["userMessage"]["content"], "hello there");
        assert!(data["userMessage"]["createdAt"].is_string());
        assert_eq!(
            data["assistantMessage"]["content"],
            expected_reply(12),
            "{model}"
        );
        assert_eq!(
            data["assistantMessage"]["tokens"], 12,
            "{model}: provider usage"
        );
        assert_eq!(data["assistantMessage"]["temperature"], 0.3);
        // SSE reply.
        let events = SseReader::open(
            post(
                &app,
                &who,
                &t,
                model,
                json!({ "content": "again", "stream": true }),
                None,
            )
            .await,
        )
        .await
        .all()
        .await;
        assert_eq!(
            names(&events),
            ["message_start", "token", "message_complete", "close"],
            "{model}: {events:?}"
        );
        assert_eq!(tokens_of(&events), expected_reply(12), "{model}");
        let id = events[0].data["messageId"].as_str().unwrap().to_owned();
        assert!(
            events
                .iter()
                .all(|e| e.event == "close" || e.data["messageId"] == id.as_str())
        );
        assert_eq!(events[events.len() - 2].data["totalTokens"], 12);
        let ids: Vec<u64> = events
            .iter()
            .map(|e| e.id.as_ref().unwrap().parse().unwrap())
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
        // Stored: user, assistant, user, assistant — all complete.
        let h = history(&app, &who, &t, model).await;
        let roles: Vec<&str> = h.iter().map(|m| m["role"].as_str().unwrap()).collect();
        assert_eq!(roles, ["user", "assistant", "user", "assistant"], "{model}");
        assert!(h.iter().all(|m| m["status"] == "complete"));
        assert_eq!(h[3]["id"], id.as_str());
        assert_eq!(h[3]["content"], expected_reply(12));
        assert_eq!(h[3]["temperature"], 0.7, "the model's default temperature");
        // The provider got the key (cloud) and, the second time, the first exchange as context.
        let requests = app.sim.requests();
        assert_eq!(requests.len(), 2, "{model}");
        assert!(
            requests.iter().all(|r| r.provider == provider),
            "{model}: {requests:?}"
        );
        let cloud = !model.starts_with("sim-");
        assert!(requests.iter().all(|r| r.has_key == cloud), "{model}");
        let second = requests[1].body.to_string();
        assert!(
            second.contains("hello there") && second.contains("tok11"),
            "{model}: {second}"
        );
    }
    let sent = app.sim.requests();
    let ollama = &sent.last().unwrap().body;
    assert!(ollama.to_string().contains("again"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_requests_carry_the_catalog_context_length() {
    let app = cluster().await;
    let who = app
        .signed_in("numctx@example.com", "correct horse battery")
        .await;
    let t = thread(&app, &who).await;
    let (status, _) = envelope(
        post(
            &app,
            &who,
            &t,
            "sim-ollama",
            json!({ "content": "hi" }),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    let r = app.sim.requests();
    assert_eq!(r[0].body["options"]["num_ctx"], 4096, "{:?}", r[0].body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sends_are_refused_before_anything_is_stored() {
    let app = cluster_with(SimConfig::default(), |s| s.inference.keys.openai = None).await;
    let who = app
        .signed_in("bad@example.com", "correct horse battery")
        .await;
    let t = thread(&app, &who).await;
    let cases = [
        (
            "claude-opus",
            json!({ "content": "x", "temperature": 1.5 }),
            400,
            "VALIDATION_ERROR",
        ),
        (
            "claude-opus",
            json!({ "content": "   " }),
            400,
            "VALIDATION_ERROR",
        ),
        (
            "claude-opus",
            json!({ "content": "x", "temperature": "hot" }),
            400,
            "VALIDATION_ERROR",
        ),
        (
            "claude-opus",
            json!({ "content": "x", "colour": "red" }),
            400,
            "VALIDATION_ERROR",
        ),
        ("no-such-model", json!({ "content": "x" }), 404, "NOT_FOUND"),
        ("gpt-4o", json!({ "content": "x" }), 422, "API_KEY_REQUIRED"),
        (
            "sim-small",
            json!({ "content": "word ".repeat(2000) }),
            422,
            "CONTEXT_TOO_LARGE",
        ),
    ];
    for (model, body, want, code) in cases {
        let (status, doc) = envelope(post(&app, &who, &t, model, body.clone(), None).await).await;
        assert_eq!(
            (status, doc["error"]["code"].as_str().unwrap()),
            (want, code),
            "{model} {body}: {doc}"
        );
        if body.get("temperature") == Some(&json!(1.5)) {
            assert_eq!(doc["error"]["details"]["field"], "temperature");
            assert_eq!(
                doc["error"]["details"]["expected"],
                "number between 0 and 1"
            );
        }
        if code == "API_KEY_REQUIRED" {
            assert_eq!(doc["error"]["details"]["apiKey"], "openai");
        }
    }
    for model in ["claude-opus", "gpt-4o", "sim-small"] {
        assert!(
            history(&app, &who, &t, model).await.is_empty(),
            "{model}: nothing stored"
        );
    }
    assert!(app.sim.requests().is_empty(), "no provider was called");
    // Bad Idempotency-Key.
    let (status, _) = envelope(
        post(
            &app,
            &who,
            &t,
            "claude-opus",
            json!({ "content": "x" }),
            Some(""),
        )
        .await,
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_failures_map_to_the_spec_codes() {
    let app = cluster().await;
    let who = app
        .signed_in("fail@example.com", "correct horse battery")
        .await;
    let t = thread(&app, &who).await;
    // 429 passes through with its Retry-After, not retried.
    app.sim.clear_requests();
    let r = post(
        &app,
        &who,
        &t,
        "gpt-4o",
        json!({ "content": "[sim fail=429 retry_after=7]" }),
        None,
    )
    .await;
    assert_eq!(
        r.headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned()),
        Some("7".into())
    );
    let (status, doc) = envelope(r).await;
    assert_eq!(
        (status, doc["error"]["code"].as_str().unwrap()),
        (429, "RATE_LIMITED"),
        "{doc}"
    );
    assert_eq!(app.sim.requests().len(), 1);
    // A rejected key is a 422 naming the key problem.
    let (status, doc) = envelope(
        post(
            &app,
            &who,
            &t,
            "claude-haiku",
            json!({ "content": "[sim fail=401]" }),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, doc["error"]["code"].as_str().unwrap()),
        (422, "INVALID_API_KEY"),
        "{doc}"
    );
    // 500s are retried before the first token: twice failing then fine → 200 after 3 calls.
    app.sim.clear_requests();
    let (status, doc) = envelope(
        post(
            &app,
            &who,
            &t,
            "gemini-flash",
            json!({ "content": "[sim fail=500 fail_times=2 id=flaky]" }),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(app.sim.requests().len(), 3);
    // Always failing → 503 after the configured attempts.
    app.sim.clear_requests();
    let (status, doc) = envelope(
        post(
            &app,
            &who,
            &t,
            "claude-haiku",
            json!({ "content": "[sim fail=503]" }),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, doc["error"]["code"].as_str().unwrap()),
        (503, "SERVICE_UNAVAILABLE"),
        "{doc}"
    );
    assert_eq!(app.sim.requests().len(), 3);
    // Cut off mid-stream: tokens so far, then an error event; stored as `error` with the partial text.
    let events = SseReader::open(
        post(
            &app,
            &who,
            &t,
            "gpt-4o",
            json!({ "content": "[sim cut_after=3]", "stream": true }),
            None,
        )
        .await,
    )
    .await
    .all()
    .await;
    assert_eq!(
        names(&events),
        ["message_start", "token", "error", "close"],
        "{events:?}"
    );
    assert_eq!(tokens_of(&events), expected_reply(3));
    let id = events[0].data["messageId"].as_str().unwrap().to_owned();
    let m = wait_status(&app, &who, &t, "gpt-4o", &id, "error").await;
    assert_eq!(m["content"], expected_reply(3));
    // A malformed chunk is an error too, never a panic.
    let events = SseReader::open(
        post(
            &app,
            &who,
            &t,
            "claude-haiku",
            json!({ "content": "[sim malformed_after=2]", "stream": true }),
            None,
        )
        .await,
    )
    .await
    .all()
    .await;
    assert_eq!(
        events.iter().rev().nth(1).unwrap().event,
        "error",
        "{events:?}"
    );
    // Failures before the first token are stored as an `error` reply with no content.
    let h = history(&app, &who, &t, "claude-haiku").await;
    assert!(
        h.iter()
            .any(|m| m["role"] == "assistant" && m["status"] == "error" && m["content"] == ""),
        "{h:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_post_with_the_same_idempotency_key_returns_the_same_messages() {
    let app = cluster().await;
    let who = app
        .signed_in("idem@example.com", "correct horse battery")
        .await;
    let t = thread(&app, &who).await;
    let (s1, first) = envelope(
        post(
            &app,
            &who,
            &t,
            "claude-sonnet",
            json!({ "content": "once" }),
            Some("key-1"),
        )
        .await,
    )
    .await;
    let (s2, second) = envelope(
        post(
            &app,
            &who,
            &t,
            "claude-sonnet",
            json!({ "content": "once" }),
            Some("key-1"),
        )
        .await,
    )
    .await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(
        first["data"]["userMessage"]["id"],
        second["data"]["userMessage"]["id"]
    );
    assert_eq!(
        first["data"]["assistantMessage"]["id"],
        second["data"]["assistantMessage"]["id"]
    );
    assert_eq!(
        second["data"]["assistantMessage"]["content"],
        expected_reply(12)
    );
    assert_eq!(app.sim.requests().len(), 1, "the model was asked once");
    assert_eq!(history(&app, &who, &t, "claude-sonnet").await.len(), 2);
    // A streaming retry replays the same events.
    let events = SseReader::open(
        post(
            &app,
            &who,
            &t,
            "claude-sonnet",
            json!({ "content": "once", "stream": true }),
            Some("key-1"),
        )
        .await,
    )
    .await
    .all()
    .await;
    assert_eq!(tokens_of(&events), expected_reply(12));
    assert_eq!(
        events[0].data["messageId"],
        first["data"]["assistantMessage"]["id"]
    );
    assert_eq!(app.sim.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_resumes_on_another_replica_without_loss_or_duplicates() {
    let app = cluster_with(
        SimConfig {
            gap: Duration::from_millis(20),
            reply_tokens: 40,
            ..SimConfig::default()
        },
        |_| {},
    )
    .await;
    let other = app.start_edge_replica().await;
    let who = app
        .signed_in("resume@example.com", "correct horse battery")
        .await;
    let t = thread(&app, &who).await;
    let mut reader = SseReader::open(
        post(
            &app,
            &who,
            &t,
            "gemini-pro",
            json!({ "content": "long one", "stream": true }),
            None,
        )
        .await,
    )
    .await;
    let mut seen = Vec::new();
    while seen.iter().filter(|e: &&Ev| e.event == "token").count() < 5 {
        seen.push(reader.next().await.unwrap());
    }
    drop(reader); // the client goes away; the generation goes on
    let message_id = seen[0].data["messageId"].as_str().unwrap().to_owned();
    let last_id = seen.last().unwrap().id.clone().unwrap();
    let resumed = SseReader::open(
        app.http
            .get(format!(
                "{other}/api/threads/{t}/models/gemini-pro/messages/{message_id}/stream"
            ))
            .header("cookie", who.header())
            .header("last-event-id", &last_id)
            .send()
            .await
            .unwrap(),
    )
    .await
    .all()
    .await;
    let mut all = seen.clone();
    all.extend(resumed.iter().cloned());
    assert_eq!(
        tokens_of(&all),
        expected_reply(40),
        "no token lost or repeated"
    );
    assert_eq!(
        names(&all),
        ["message_start", "token", "message_complete", "close"]
    );
    // A finished message replays from the start while retained.
    let replay = SseReader::open(
        app.get_with(
            &format!("/api/threads/{t}/models/gemini-pro/messages/{message_id}/stream"),
            &who,
        )
        .await,
    )
    .await
    .all()
    .await;
    assert_eq!(tokens_of(&replay), expected_reply(40));
    assert_eq!(app.sim.requests().len(), 1);
    // A bad Last-Event-ID is a 400.
    let r = app
        .http
        .get(app.url(&format!(
            "/api/threads/{t}/models/gemini-pro/messages/{message_id}/stream"
        )))
        .header("cookie", who.header())
        .header("last-event-id", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(envelope(r).await.0, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_generation_and_keeps_the_partial_reply() {
    let app = cluster_with(
        SimConfig {
            gap: Duration::from_millis(40),
            reply_tokens: 200,
            ..SimConfig::default()
        },
        |_| {},
    )
    .await;
    let who = app
        .signed_in("cancel@example.com", "correct horse battery")
        .await;
    let t = thread(&app, &who).await;
    let mut reader = SseReader::open(
        post(
            &app,
            &who,
            &t,
            "gpt-4o-mini",
            json!({ "content": "go on", "stream": true }),
            None,
        )
        .await,
    )
    .await;
    let mut events = Vec::new();
    while events.iter().filter(|e: &&Ev| e.event == "token").count() < 3 {
        events.push(reader.next().await.unwrap());
    }
    let id = events[0].data["messageId"].as_str().unwrap().to_owned();
    let path = format!("/api/threads/{t}/models/gpt-4o-mini/messages/{id}/cancel");
    let (status, body) = envelope(app.post_with(&path, &who).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["status"], "cancelled");
    while let Some(e) = reader.next().await {
        let close = e.event == "close";
        events.push(e);
        if close {
            break;
        }
    }
    let end = &events[events.len() - 2];
    assert_eq!(end.event, "error");
    assert_eq!(end.data["error"]["code"], "GENERATION_CANCELLED");
    let stored = wait_status(&app, &who, &t, "gpt-4o-mini", &id, "cancelled").await;
    let partial = stored["content"].as_str().unwrap();
    assert!(
        !partial.is_empty() && expected_reply(200).starts_with(partial),
        "{partial}"
    );
    assert!(partial.len() < expected_reply(200).len(), "stopped early");
    assert_eq!(
        tokens_of(&events),
        partial,
        "what was streamed is what was stored"
    );
    // Again: still cancelled. A finished reply cannot be cancelled.
    let (status, _) = envelope(app.post_with(&path, &who).await).await;
    assert_eq!(status, 200);
    let (status, done) = envelope(
        post(
            &app,
            &who,
            &t,
            "gpt-4o-mini",
            json!({ "content": "[sim tokens=2]" }),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    let done_id = done["data"]["assistantMessage"]["id"].as_str().unwrap();
    let (status, body) = envelope(
        app.post_with(
            &format!("/api/threads/{t}/models/gpt-4o-mini/messages/{done_id}/cancel"),
            &who,
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str().unwrap()),
        (409, "CONFLICT")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_killed_mid_stream_ends_the_message_interrupted() {
    let mut app = cluster_with(
        SimConfig {
            gap: Duration::from_millis(40),
            reply_tokens: 400,
            ..SimConfig::default()
        },
        |_| {},
    )
    .await;
    app.start_router().await;
    let who = app
        .signed_in("kill@example.com", "correct horse battery")
        .await;
    let t = thread(&app, &who).await;
    let mut reader = SseReader::open(
        post(
            &app,
            &who,
            &t,
            "claude-opus",
            json!({ "content": "tell me", "stream": true }),
            None,
        )
        .await,
    )
    .await;
    let mut events = Vec::new();
    while events.iter().filter(|e: &&Ev| e.event == "token").count() < 5 {
        events.push(reader.next().await.unwrap());
    }
    let id = events[0].data["messageId"].as_str().unwrap().to_owned();
    // Let a checkpoint land, then kill the router that runs it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let index = app.router_running(&id).expect("some router runs it");
    app.kill_router(index).await;
    while let Some(e) = reader.next().await {
        let close = e.event == "close";
        events.push(e);
        if close {
            break;
        }
    }
    let end = &events[events.len() - 2];
    assert_eq!(end.event, "error", "{events:?}");
    assert_eq!(end.data["error"]["code"], "GENERATION_INTERRUPTED");
    let stored = wait_status(&app, &who, &t, "claude-opus", &id, "interrupted").await;
    let content = stored["content"].as_str().unwrap();
    assert!(
        !content.is_empty() && expected_reply(400).starts_with(content),
        "checkpointed text kept: {content}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_router_left_the_client_gets_an_error_not_a_hang() {
    let mut app = cluster_with(
        SimConfig {
            gap: Duration::from_millis(40),
            reply_tokens: 400,
            ..SimConfig::default()
        },
        |_| {},
    )
    .await;
    let who = app
        .signed_in("alone@example.com", "correct horse battery")
        .await;
    let t = thread(&app, &who).await;
    let mut reader = SseReader::open(
        post(
            &app,
            &who,
            &t,
            "claude-opus",
            json!({ "content": "tell me", "stream": true }),
            None,
        )
        .await,
    )
    .await;
    let mut events = Vec::new();
    while events.iter().filter(|e: &&Ev| e.event == "token").count() < 3 {
        events.push(reader.next().await.unwrap());
    }
    app.kill_router(0).await;
    while let Some(e) = reader.next().await {
        let close = e.event == "close";
        events.push(e);
        if close {
            break;
        }
    }
    let end = &events[events.len() - 2];
    assert_eq!(
        end.data["error"]["code"], "GENERATION_INTERRUPTED",
        "{events:?}"
    );
    // A router that comes back sweeps it and stores `interrupted`.
    app.start_router().await;
    let id = events[0].data["messageId"].as_str().unwrap().to_owned();
    wait_status(&app, &who, &t, "claude-opus", &id, "interrupted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_history_never_goes_over_the_context_budget() {
    let app = cluster().await;
    let who = app
        .signed_in("budget@example.com", "correct horse battery")
        .await;
    let t = thread(&app, &who).await;
    // sim-small: 400-token window, reply budget 100 → 300 for the prompt.
    for i in 0..25 {
        let (status, body) = envelope(
            post(&app, &who, &t, "sim-small", json!({ "content": format!("message {i}: {}", "some words here ".repeat(4)), "maxTokens": 50 }), None).await,
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let requests = app.sim.requests();
    assert_eq!(requests.len(), 25);
    let estimate = |s: &str| s.len().div_ceil(3) + 4;
    for (i, r) in requests.iter().enumerate() {
        let messages = r.body["messages"].as_array().unwrap();
        let system = r.body["system"].as_str().unwrap_or_default();
        let total: usize = estimate(system)
            + messages
                .iter()
                .map(|m| estimate(m["content"].as_str().unwrap()))
                .sum::<usize>()
            + 3;
        assert!(total <= 400 - 50, "request {i}: {total} tokens");
        assert_eq!(messages.first().unwrap()["role"], "user");
        let newest = messages.last().unwrap()["content"].as_str().unwrap();
        assert!(
            newest.starts_with(&format!("message {i}:")),
            "the new message is last"
        );
    }
    let last = requests.last().unwrap().body["messages"]
        .as_array()
        .unwrap()
        .len();
    assert!(last < 49, "older messages were left out ({last} sent)");
    assert!(last >= 3, "the newest history was kept ({last} sent)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_thread_and_messages_are_not_found() {
    let app = cluster().await;
    let alice = app
        .signed_in("alice@example.com", "correct horse battery")
        .await;
    let mallory = app
        .signed_in("mallory@example.com", "correct horse battery")
        .await;
    let t = thread(&app, &alice).await;
    let (status, body) = envelope(
        post(
            &app,
            &alice,
            &t,
            "claude-sonnet",
            json!({ "content": "mine" }),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    let id = body["data"]["assistantMessage"]["id"].as_str().unwrap();
    let (status, _) = envelope(
        post(
            &app,
            &mallory,
            &t,
            "claude-sonnet",
            json!({ "content": "x" }),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(status, 404);
    let stream = format!("/api/threads/{t}/models/claude-sonnet/messages/{id}/stream");
    assert_eq!(envelope(app.get_with(&stream, &mallory).await).await.0, 404);
    let cancel = format!("/api/threads/{t}/models/claude-sonnet/messages/{id}/cancel");
    assert_eq!(
        envelope(app.post_with(&cancel, &mallory).await).await.0,
        404
    );
    // Right owner, wrong model: not found either.
    let wrong = format!("/api/threads/{t}/models/gpt-4o/messages/{id}/stream");
    assert_eq!(envelope(app.get_with(&wrong, &alice).await).await.0, 404);
    assert_eq!(app.sim.requests().len(), 1);
}

/// The real path: llama.cpp serving SmolLM2-135M, started by `scripts/test.sh`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_local_model_answers() {
    let Ok(url) = std::env::var("POLYLOGUE_TEST_LLAMA_URL") else {
        eprintln!("POLYLOGUE_TEST_LLAMA_URL not set (scripts/test.sh sets it): skipped");
        return;
    };
    let app = cluster_with(SimConfig::default(), |s| {
        s.inference.idle_timeout_ms = 120_000
    })
    .await;
    let who = app
        .signed_in("real@example.com", "correct horse battery")
        .await;
    let t = thread(&app, &who).await;
    let events = SseReader::open(
        post(
            &app,
            &who,
            &t,
            "smollm2-135m-local",
            json!({ "content": "Say hello.", "stream": true, "maxTokens": 8, "temperature": 0.0 }),
            None,
        )
        .await,
    )
    .await
    .all()
    .await;
    assert_eq!(
        names(&events).first(),
        Some(&"message_start"),
        "{url}: {events:?}"
    );
    assert_eq!(
        events[events.len() - 2].event,
        "message_complete",
        "{events:?}"
    );
    let text = tokens_of(&events);
    assert!(!text.trim().is_empty(), "the model said something");
    let id = events[0].data["messageId"].as_str().unwrap();
    let stored = wait_status(&app, &who, &t, "smollm2-135m-local", id, "complete").await;
    assert_eq!(stored["content"], text.as_str());
    let tokens = stored["tokens"].as_u64().unwrap();
    assert!(
        (1..=8).contains(&tokens),
        "llama.cpp reported usage: {tokens}"
    );
    assert!(app.sim.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_key_never_reaches_a_response_or_a_log() {
    const CANARY: &str = "sk-invalid-canary-7f3a9c1e5b";
    let app = cluster_with(SimConfig::default(), |s| {
        s.inference.keys.claude = Some(CANARY.into());
        s.inference.keys.openai = Some(CANARY.into());
    })
    .await;
    let who = app
        .signed_in("canary@example.com", "correct horse battery")
        .await;
    let t = thread(&app, &who).await;
    for model in ["claude-sonnet", "gpt-4o"] {
        let r = post(&app, &who, &t, model, json!({ "content": "hi" }), None).await;
        let (status, doc) = envelope(r).await;
        assert_eq!(
            (status, doc["error"]["code"].as_str().unwrap()),
            (422, "INVALID_API_KEY"),
            "{doc}"
        );
        assert!(!doc.to_string().contains(CANARY), "{doc}");
        let events = SseReader::open(
            post(
                &app,
                &who,
                &t,
                model,
                json!({ "content": "hi", "stream": true }),
                None,
            )
            .await,
        )
        .await
        .all()
        .await;
        assert!(events.iter().all(|e| !e.data.to_string().contains(CANARY)));
        assert_eq!(
            events[events.len() - 2].data["error"]["code"],
            "INVALID_API_KEY"
        );
    }
    // The simulator saw a key on every call; nothing the system wrote shows it.
    assert!(app.sim.requests().iter().all(|r| r.has_key));
    let h = history(&app, &who, &t, "claude-sonnet").await;
    assert!(!serde_json::to_string(&h).unwrap().contains(CANARY));
    let logs = polylogue_tests::captured_logs().contents();
    assert!(
        logs.contains("generation ended"),
        "the generations were logged"
    );
    assert!(!logs.contains(CANARY), "a provider key reached the logs");
}

/// A hundred long generations at once, each with more stream events than one writer's ack
/// pipeline: every one completes, in order, with nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_long_generations_at_once_all_complete() {
    let app = cluster_with(
        SimConfig {
            gap: Duration::from_millis(5),
            reply_tokens: 80,
            ..SimConfig::default()
        },
        |_| {},
    )
    .await;
    let who = app
        .signed_in("many@example.com", "correct horse battery")
        .await;
    let mut threads = Vec::new();
    for _ in 0..10 {
        threads.push(thread(&app, &who).await);
    }
    let mut readers = Vec::new();
    for i in 0..100 {
        let t = threads[i % threads.len()].clone();
        readers.push(
            SseReader::open(
                post(
                    &app,
                    &who,
                    &t,
                    "gpt-4o-mini",
                    json!({ "content": format!("go {i}"), "stream": true }),
                    None,
                )
                .await,
            )
            .await,
        );
    }
    let all = futures::future::join_all(readers.into_iter().map(SseReader::all)).await;
    for events in &all {
        assert_eq!(
            names(events),
            ["message_start", "token", "message_complete", "close"]
        );
        assert_eq!(tokens_of(events), expected_reply(80));
    }
}

/// nats-server caps a stream without a positive consumer limit at 1,000 consumers; every SSE
/// reader is one (lingering ~30 s), so the tokens stream must carry its own, higher limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tokens_stream_allows_many_more_readers_than_the_server_default() {
    let app = cluster().await;
    let js = async_nats::jetstream::new(app.bus().await.client().clone());
    let mut stream = js.get_stream("polylogue-tokens").await.unwrap();
    let info = stream.info().await.unwrap();
    assert!(
        info.config.max_consumers >= 10_000,
        "max_consumers = {}",
        info.config.max_consumers
    );
}
