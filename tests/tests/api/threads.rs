//! Threads, histories and search through the edge; the internal NATS API the router and summarizer use.

use crate::envelope;
use futures::StreamExt;
use polylogue_bus::RequestContext;
use polylogue_contracts::threads::{
    AppendMessageReply, AppendMessageRequest, HistoryReply, HistoryRequest, PutSummaryReply,
    PutSummaryRequest, SummaryView,
};
use polylogue_tests::{Cookies, TestCluster};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// Limits high enough never to interfere (rate limiting has its own tests).
async fn cluster() -> TestCluster {
    TestCluster::start_with(|s| {
        for route in [
            "threads_list",
            "threads_create",
            "thread_get",
            "thread_delete",
            "thread_title",
            "messages_list",
            "default",
        ] {
            s.edge.rate_limits.overrides.insert(route.into(), 100_000);
        }
    })
    .await
}

async fn create(app: &TestCluster, who: &Cookies, title: &str) -> Value {
    let (status, body) = envelope(
        app.send_json(
            Method::POST,
            "/api/threads",
            who,
            &json!({ "title": title }),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["data"]["thread"].clone()
}

async fn append(
    app: &TestCluster,
    user_id: &str,
    thread: &str,
    model: &str,
    role: &str,
    content: &str,
) -> AppendMessageReply {
    app.bus()
        .await
        .request(
            "thread",
            "messages.append",
            &RequestContext::internal(),
            &AppendMessageRequest {
                user_id: user_id.into(),
                thread_id: thread.into(),
                model_id: model.into(),
                message_id: None,
                idempotency_key: None,
                role: role.into(),
                content: content.into(),
                status: None,
                tokens: Some(5),
                temperature: if role == "assistant" { Some(0.7) } else { None },
                context: None,
            },
        )
        .await
        .unwrap()
}

async fn user_id(app: &TestCluster, who: &Cookies) -> String {
    let _ = app;
    let token = who.access.as_deref().unwrap();
    let payload = token.split('.').nth(1).unwrap();
    use base64::Engine;
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    claims["sub"].as_str().unwrap().to_owned()
}

async fn search_ids(app: &TestCluster, who: &Cookies, q: &str) -> Vec<String> {
    let (status, body) = envelope(app.get_with(&format!("/api/threads?q={q}"), who).await).await;
    assert_eq!(status, 200, "{body}");
    body["data"]["threads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Polls search until `pred` holds (the index is fed asynchronously); fails after a second.
async fn eventually(
    app: &TestCluster,
    who: &Cookies,
    q: &str,
    pred: impl Fn(&[String]) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let ids = search_ids(app, who, q).await;
        if pred(&ids) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "search for {q:?} did not converge: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_is_created_listed_read_renamed_and_deleted_as_the_spec_shows() {
    let app = cluster().await;
    let alice = app.signed_in("alice@example.com", "password-alice").await;
    let t = create(&app, &alice, "  New Discussion Topic  ").await;
    assert_eq!(t["title"], "New Discussion Topic", "trimmed");
    assert_eq!(t["messageCount"], 0);
    assert_eq!(t["activeModels"], json!([]));
    assert_eq!(t["summary"], Value::Null);
    assert_eq!(t["createdAt"], t["updatedAt"]);
    let id = t["id"].as_str().unwrap().to_owned();

    let uid = user_id(&app, &alice).await;
    append(
        &app,
        &uid,
        &id,
        "claude-opus",
        "user",
        "What are microservices?",
    )
    .await;
    append(
        &app,
        &uid,
        &id,
        "claude-opus",
        "assistant",
        "Small services.",
    )
    .await;
    append(&app, &uid, &id, "gpt-4", "user", "And you?").await;

    let (status, body) = envelope(app.get_with("/api/threads", &alice).await).await;
    assert_eq!(status, 200);
    let listed = &body["data"]["threads"][0];
    assert_eq!(listed["id"], id.as_str());
    assert_eq!(listed["messageCount"], 3);
    assert_eq!(listed["activeModels"], json!(["claude-opus", "gpt-4"]));
    assert_eq!(listed["lastMessage"]["content"], "And you?");
    assert_eq!(listed["lastMessage"]["role"], "user");
    assert_eq!(listed["lastMessage"]["model"], "gpt-4");
    assert!(listed["lastMessage"]["timestamp"].is_string());
    let p = &body["pagination"];
    assert_eq!(
        (
            p["limit"].as_u64(),
            p["hasMore"].as_bool(),
            p["totalCount"].as_u64()
        ),
        (Some(20), Some(false), Some(1))
    );
    assert_eq!(p["cursor"], Value::Null);

    let (status, body) = envelope(app.get_with(&format!("/api/threads/{id}"), &alice).await).await;
    assert_eq!(status, 200);
    let detail = &body["data"]["thread"];
    assert_eq!(detail["messageCount"], 3);
    assert_eq!(detail["models"]["claude-opus"]["messageCount"], 2);
    assert_eq!(detail["models"]["gpt-4"]["messageCount"], 1);
    assert!(detail["models"]["gpt-4"]["lastMessageAt"].is_string());
    assert_eq!(detail["models"]["gpt-4"]["summary"], Value::Null);

    let (status, body) = envelope(
        app.send_json(
            Method::PATCH,
            &format!("/api/threads/{id}/title"),
            &alice,
            &json!({ "title": "Updated Thread Title" }),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["thread"]["title"], "Updated Thread Title");
    assert_eq!(body["data"]["thread"]["id"], id.as_str());
    assert!(body["data"]["thread"]["updatedAt"].is_string());

    let (status, body) =
        envelope(app.delete_with(&format!("/api/threads/{id}"), &alice).await).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["data"],
        json!({ "deletedThread": id, "deletedMessages": 3 })
    );
    // Cascade: the thread, its histories and its messages are gone.
    assert_eq!(
        app.get_with(&format!("/api/threads/{id}"), &alice)
            .await
            .status(),
        404
    );
    assert_eq!(
        app.get_with(
            &format!("/api/threads/{id}/models/claude-opus/messages"),
            &alice
        )
        .await
        .status(),
        404
    );
    assert_eq!(
        app.delete_with(&format!("/api/threads/{id}"), &alice)
            .await
            .status(),
        404
    );
    let (_, body) = envelope(app.get_with("/api/threads", &alice).await).await;
    assert_eq!(body["pagination"]["totalCount"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_titles_queries_and_ids_get_the_right_4xx() {
    let app = cluster().await;
    let u = app.signed_in("val@example.com", "password-val").await;
    for title in ["", "   ", &"x".repeat(201)] {
        let (status, body) = envelope(
            app.send_json(Method::POST, "/api/threads", &u, &json!({ "title": title }))
                .await,
        )
        .await;
        assert_eq!(status, 400);
        assert_eq!(body["error"]["details"]["field"], "title", "{body}");
    }
    assert_eq!(
        create(&app, &u, &"é".repeat(200)).await["title"]
            .as_str()
            .unwrap()
            .chars()
            .count(),
        200
    );
    let (status, body) = envelope(
        app.send_json(Method::POST, "/api/threads", &u, &json!({ "title": 5 }))
            .await,
    )
    .await;
    assert_eq!(
        (status, body["error"]["details"]["field"].as_str()),
        (400, Some("title"))
    );
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=abc", "limit"),
        ("limit=-1", "limit"),
        ("orderBy=title", "orderBy"),
        ("order=sideways", "order"),
        ("cursor=not-a-cursor", "cursor"),
    ] {
        let (status, body) =
            envelope(app.get_with(&format!("/api/threads?{query}"), &u).await).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "VALIDATION_ERROR");
        assert_eq!(body["error"]["details"]["field"], field, "{query}: {body}");
    }
    let (status, _) = envelope(app.get_with("/api/threads?limit=100", &u).await).await;
    assert_eq!(status, 200);
    let t = create(&app, &u, "Valid").await;
    let id = t["id"].as_str().unwrap();
    for (query, field) in [("limit=201", "limit"), ("order=up", "order")] {
        let (status, body) = envelope(
            app.get_with(
                &format!("/api/threads/{id}/models/claude-opus/messages?{query}"),
                &u,
            )
            .await,
        )
        .await;
        assert_eq!(
            (status, body["error"]["details"]["field"].as_str()),
            (400, Some(field)),
            "{body}"
        );
    }
    let (status, body) = envelope(
        app.get_with(
            &format!("/api/threads/{id}/models/no-such-model/messages"),
            &u,
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("NOT_FOUND"))
    );
    for bad in ["not-a-uuid", "00000000-0000-0000-0000-000000000000"] {
        let (status, _) = envelope(app.get_with(&format!("/api/threads/{bad}"), &u).await).await;
        assert_eq!(status, 404);
    }
    // No session at all.
    let (status, _) = envelope(app.http.get(app.url("/api/threads")).send().await.unwrap()).await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_thread_answers_exactly_like_a_missing_one_on_every_route() {
    let app = cluster().await;
    let a = app.signed_in("owner@example.com", "password-owner").await;
    let b = app
        .signed_in("intruder@example.com", "password-intruder")
        .await;
    let t = create(&app, &a, "Private plans").await;
    let id = t["id"].as_str().unwrap();
    let missing = "01936b2e-0000-7000-8000-000000000000";
    append(
        &app,
        &user_id(&app, &a).await,
        id,
        "claude-opus",
        "user",
        "secret content",
    )
    .await;

    let routes = |tid: &str| {
        vec![
            (Method::GET, format!("/api/threads/{tid}"), None),
            (Method::DELETE, format!("/api/threads/{tid}"), None),
            (
                Method::PATCH,
                format!("/api/threads/{tid}/title"),
                Some(json!({ "title": "mine now" })),
            ),
            (
                Method::GET,
                format!("/api/threads/{tid}/models/claude-opus/messages"),
                None,
            ),
        ]
    };
    for ((method, theirs, body), (_, nothing, _)) in routes(id).into_iter().zip(routes(missing)) {
        let send = |path: String| {
            let req = app
                .http
                .request(method.clone(), app.url(&path))
                .header("cookie", b.header());
            match &body {
                Some(b) => req.json(b),
                None => req,
            }
            .send()
        };
        let (s1, e1) = envelope(send(theirs.clone()).await.unwrap()).await;
        let (s2, e2) = envelope(send(nothing).await.unwrap()).await;
        assert_eq!((s1, s2), (404, 404), "{method} {theirs}");
        assert_eq!(
            e1["error"], e2["error"],
            "{method}: the bodies must not differ"
        );
    }
    // B's listing and search show nothing of A's; A's thread is intact.
    let (_, body) = envelope(app.get_with("/api/threads", &b).await).await;
    assert_eq!(body["data"]["threads"], json!([]));
    eventually(&app, &a, "private", |ids| ids.len() == 1).await;
    assert!(
        search_ids(&app, &b, "private").await.is_empty(),
        "search leaked another user's thread"
    );
    let (status, body) = envelope(app.get_with(&format!("/api/threads/{id}"), &a).await).await;
    assert_eq!(
        (status, body["data"]["thread"]["title"].as_str()),
        (200, Some("Private plans"))
    );

    // A cursor of A's listing is refused for B (400, not B's or A's data).
    for i in 0..3 {
        create(&app, &a, &format!("more {i}")).await;
    }
    let (_, body) = envelope(app.get_with("/api/threads?limit=2", &a).await).await;
    let cursor = body["pagination"]["cursor"].as_str().unwrap().to_owned();
    let (status, body) = envelope(
        app.get_with(&format!("/api/threads?limit=2&cursor={cursor}"), &b)
            .await,
    )
    .await;
    assert_eq!(
        (status, body["error"]["details"]["field"].as_str()),
        (400, Some("cursor"))
    );
    // ... and for another listing of A's own.
    let (status, _) = envelope(
        app.get_with(
            &format!("/api/threads?limit=2&orderBy=created_at&cursor={cursor}"),
            &a,
        )
        .await,
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = envelope(
        app.get_with(
            &format!("/api/threads/{id}/models/claude-opus/messages?cursor={cursor}"),
            &a,
        )
        .await,
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walking_all_pages_returns_every_thread_once_while_others_are_created() {
    let app = cluster().await;
    let u = app.signed_in("pager@example.com", "password-pager").await;
    let mut originals = HashSet::new();
    for i in 0..45 {
        originals.insert(
            create(&app, &u, &format!("thread {i}")).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    for (order_by, order) in [
        ("updated_at", "desc"),
        ("created_at", "asc"),
        ("created_at", "desc"),
    ] {
        let writer = {
            let http = app.http.clone();
            let url = app.url("/api/threads");
            let cookie = u.header();
            tokio::spawn(async move {
                for i in 0..15 {
                    let r = http
                        .post(&url)
                        .header("cookie", &cookie)
                        .json(&json!({ "title": format!("late {i}") }))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 201);
                }
            })
        };
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let path = match &cursor {
                Some(c) => {
                    format!("/api/threads?limit=10&orderBy={order_by}&order={order}&cursor={c}")
                }
                None => format!("/api/threads?limit=10&orderBy={order_by}&order={order}"),
            };
            let (status, body) = envelope(app.get_with(&path, &u).await).await;
            assert_eq!(status, 200, "{body}");
            pages += 1;
            for t in body["data"]["threads"].as_array().unwrap() {
                seen.push(t["id"].as_str().unwrap().to_owned());
            }
            match body["pagination"]["cursor"].as_str() {
                Some(c) => {
                    assert_eq!(body["pagination"]["hasMore"], true);
                    cursor = Some(c.to_owned());
                }
                None => {
                    assert_eq!(body["pagination"]["hasMore"], false);
                    break;
                }
            }
        }
        writer.await.unwrap();
        let unique: HashSet<_> = seen.iter().cloned().collect();
        assert_eq!(
            unique.len(),
            seen.len(),
            "{order_by} {order}: a thread was listed twice"
        );
        assert!(
            originals.is_subset(&unique),
            "{order_by} {order}: a thread was missed"
        );
        assert!(pages >= 5);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_is_findable_by_search_within_a_second_of_creation_or_rename() {
    let app = cluster().await;
    let u = app.signed_in("seeker@example.com", "password-seeker").await;
    let other = app.signed_in("other@example.com", "password-other").await;
    let t = create(&app, &u, "Kubernetes autoscaling notes").await;
    let id = t["id"].as_str().unwrap().to_owned();
    create(&app, &other, "Kubernetes for someone else").await;
    let took = eventually(&app, &u, "kubernetes", |ids| ids == [id.clone()]).await;
    eprintln!("findable after creation in {took:?}");
    // Prefix terms work; every term must match; the other user's thread never shows.
    assert_eq!(
        search_ids(&app, &u, "kube%20autosc").await,
        vec![id.clone()]
    );
    assert!(
        search_ids(&app, &u, "kubernetes%20cooking")
            .await
            .is_empty()
    );

    let r = app
        .send_json(
            Method::PATCH,
            &format!("/api/threads/{id}/title"),
            &u,
            &json!({ "title": "Pasta recipes" }),
        )
        .await;
    assert_eq!(r.status(), 200);
    let took = eventually(&app, &u, "pasta", |ids| ids == [id.clone()]).await;
    eprintln!("findable after rename in {took:?}");
    eventually(&app, &u, "kubernetes", <[String]>::is_empty).await;
    let (_, body) = envelope(app.get_with("/api/threads?q=pasta", &u).await).await;
    assert_eq!(body["pagination"]["totalCount"], 1);
    assert_eq!(body["data"]["threads"][0]["title"], "Pasta recipes");

    assert_eq!(
        app.delete_with(&format!("/api/threads/{id}"), &u)
            .await
            .status(),
        200
    );
    eventually(&app, &u, "pasta", <[String]>::is_empty).await;
    // Query syntax from users is inert.
    let (status, _) = envelope(app.get_with("/api/threads?q=%22owner%3A*%20OR", &u).await).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_histories_page_per_model_newest_first_by_default() {
    let app = cluster().await;
    let u = app.signed_in("hist@example.com", "password-hist").await;
    let uid = user_id(&app, &u).await;
    let t = create(&app, &u, "History").await;
    let id = t["id"].as_str().unwrap();
    let mut ids = Vec::new();
    for i in 0..7 {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        ids.push(
            append(&app, &uid, id, "claude-opus", role, &format!("m{i}"))
                .await
                .message
                .id,
        );
    }
    append(&app, &uid, id, "gpt-4", "user", "elsewhere").await;
    let (status, body) = envelope(
        app.get_with(
            &format!("/api/threads/{id}/models/claude-opus/messages?limit=3"),
            &u,
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    let first: Vec<_> = body["data"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(first, vec![ids[6].clone(), ids[5].clone(), ids[4].clone()]);
    let m = &body["data"]["messages"][0];
    assert_eq!(
        (
            m["threadId"].as_str(),
            m["modelId"].as_str(),
            m["role"].as_str()
        ),
        (Some(id), Some("claude-opus"), Some("user"))
    );
    assert_eq!(
        (
            m["content"].as_str(),
            m["tokens"].as_u64(),
            m["status"].as_str()
        ),
        (Some("m6"), Some(5), Some("complete"))
    );
    assert_eq!(body["data"]["messages"][1]["temperature"], 0.7);
    assert_eq!(body["pagination"]["hasMore"], true);
    assert!(body["pagination"].get("totalCount").is_none());
    let cursor = body["pagination"]["cursor"].as_str().unwrap();
    let (_, body) = envelope(
        app.get_with(
            &format!("/api/threads/{id}/models/claude-opus/messages?limit=3&cursor={cursor}"),
            &u,
        )
        .await,
    )
    .await;
    let second: Vec<_> = body["data"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(second, vec![ids[3].clone(), ids[2].clone(), ids[1].clone()]);
    let (_, body) = envelope(
        app.get_with(
            &format!("/api/threads/{id}/models/claude-opus/messages?order=asc&limit=200"),
            &u,
        )
        .await,
    )
    .await;
    assert_eq!(body["data"]["messages"].as_array().unwrap().len(), 7);
    assert_eq!(body["data"]["messages"][0]["content"], "m0");
    // A model of the catalog with no history yet is an empty list, not an error.
    let (status, body) = envelope(
        app.get_with(&format!("/api/threads/{id}/models/gemini-pro/messages"), &u)
            .await,
    )
    .await;
    assert_eq!(
        (status, body["data"]["messages"].as_array().map(Vec::len)),
        (200, Some(0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_internal_api_appends_idempotently_keeps_summaries_ordered_and_publishes_events() {
    let app = cluster().await;
    let u = app
        .signed_in("internal@example.com", "password-internal")
        .await;
    let uid = user_id(&app, &u).await;
    let bus = app.bus().await;
    let mut events = bus.client().subscribe("polylogue.events.>").await.unwrap();
    let t = create(&app, &u, "Internal").await;
    let id = t["id"].as_str().unwrap().to_owned();
    let ctx = RequestContext::internal();

    let request = AppendMessageRequest {
        user_id: uid.clone(),
        thread_id: id.clone(),
        model_id: "claude-opus".into(),
        message_id: None,
        idempotency_key: Some("client-retry-1".into()),
        role: "user".into(),
        content: "hello".into(),
        status: None,
        tokens: None,
        temperature: None,
        context: None,
    };
    let first: AppendMessageReply = bus
        .request("thread", "messages.append", &ctx, &request)
        .await
        .unwrap();
    let again: AppendMessageReply = bus
        .request("thread", "messages.append", &ctx, &request)
        .await
        .unwrap();
    assert!(!first.duplicate && again.duplicate);
    assert_eq!(first.message.id, again.message.id);
    let (_, body) = envelope(app.get_with(&format!("/api/threads/{id}"), &u).await).await;
    assert_eq!(
        body["data"]["thread"]["messageCount"], 1,
        "the retry stored nothing"
    );

    // A stranger's append is refused as not found.
    let mut foreign = request.clone();
    foreign.user_id = uuid::Uuid::now_v7().to_string();
    foreign.idempotency_key = None;
    let err = bus
        .request::<_, AppendMessageReply>("thread", "messages.append", &ctx, &foreign)
        .await
        .unwrap_err();
    assert_eq!(err.code.as_str(), "NOT_FOUND");

    let m2 = append(&app, &uid, &id, "claude-opus", "assistant", "hi!")
        .await
        .message
        .id;
    let m3 = append(&app, &uid, &id, "claude-opus", "user", "more")
        .await
        .message
        .id;
    let summary = |version: u64, covers: &str| PutSummaryRequest {
        user_id: uid.clone(),
        thread_id: id.clone(),
        model_id: "claude-opus".into(),
        summary: SummaryView {
            version,
            content: format!("Summary v{version}: greetings exchanged"),
            tokens: 320,
            covers_until: covers.to_owned(),
            model_used: "claude-opus".into(),
            generated_at: String::new(),
        },
    };
    let stored: PutSummaryReply = bus
        .request("thread", "summary.put", &ctx, &summary(1, &m2))
        .await
        .unwrap();
    assert!(stored.stored);
    let stale: PutSummaryReply = bus
        .request(
            "thread",
            "summary.put",
            &ctx,
            &summary(1, &first.message.id),
        )
        .await
        .unwrap();
    assert_eq!((stale.stored, stale.current_version), (false, 1));
    let history: HistoryReply = bus
        .request(
            "thread",
            "history",
            &ctx,
            &HistoryRequest {
                user_id: uid.clone(),
                thread_id: id.clone(),
                model_id: "claude-opus".into(),
                limit: 50,
                oldest_first: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(history.summary.as_ref().map(|s| s.version), Some(1));
    assert_eq!(
        history
            .messages
            .iter()
            .map(|m| m.id.clone())
            .collect::<Vec<_>>(),
        vec![m3.clone()],
        "only what the summary does not cover"
    );

    // The thread shows its summary; search finds the thread by it.
    let (_, body) = envelope(app.get_with(&format!("/api/threads/{id}"), &u).await).await;
    assert_eq!(
        body["data"]["thread"]["models"]["claude-opus"]["summary"],
        "Summary v1: greetings exchanged"
    );
    assert!(body["data"]["thread"]["models"]["claude-opus"]["summaryUpdatedAt"].is_string());
    eventually(&app, &u, "greetings", |ids| ids == [id.clone()]).await;
    let (_, body) = envelope(app.get_with("/api/threads", &u).await).await;
    assert_eq!(
        body["data"]["threads"][0]["summary"],
        "Summary v1: greetings exchanged"
    );

    // Events: created, message.created ×3, summary.updated — each with a Nats-Msg-Id.
    let mut kinds = Vec::new();
    let deadline = tokio::time::sleep(Duration::from_secs(2));
    tokio::pin!(deadline);
    while kinds.len() < 5 {
        tokio::select! {
            () = &mut deadline => break,
            Some(msg) = events.next() => {
                let id_header = msg.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).map(|v| v.to_string());
                assert!(id_header.is_some(), "event without Nats-Msg-Id");
                kinds.push(msg.subject.to_string());
            }
        }
    }
    assert_eq!(
        kinds,
        vec![
            "polylogue.events.thread.created",
            "polylogue.events.message.created",
            "polylogue.events.message.created",
            "polylogue.events.message.created",
            "polylogue.events.summary.updated",
        ]
    );
}
