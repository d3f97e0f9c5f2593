//! The summarizer against the provider simulator on real NATS: the automatic trigger (message
//! count and share of the prompt budget), the token bounds (too long and too short summaries are
//! corrected once, then trimmed or kept), context assembly sending the summary and only what it
//! does not cover, the manual endpoint and its owner check, two replicas racing for one history,
//! redelivered events, a provider that is down (previous summary kept, stale marker, dead letter
//! after the last delivery, recovery), and one summary by the real local model.

use crate::envelope;
use async_nats::jetstream;
use futures::StreamExt;
use polylogue_bus::{Bus, RequestContext};
use polylogue_contracts::summaries::DeadLetter;
use polylogue_contracts::threads::{
    AppendMessageReply, AppendMessageRequest, DomainEvent, HistoryReply, HistoryRequest,
    SummaryView,
};
use polylogue_provider_sim::{RecordedRequest, SimConfig};
use polylogue_summarizer::{History, Mode, Outcome};
use polylogue_tests::{Cookies, TestCluster};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A cluster whose simulator writes `summary_words`-word summaries, with a summarizer that
/// triggers at 6 messages and keeps the newest 2 verbatim (before `configure`), and no rate
/// limits in the way.
async fn cluster(
    summary_words: u32,
    configure: impl FnOnce(&mut polylogue_config::Settings),
) -> TestCluster {
    TestCluster::start_with_sim(
        SimConfig {
            summary_words,
            ..SimConfig::default()
        },
        |s| {
            for route in ["threads_create", "messages_send", "summarize", "default"] {
                s.edge.rate_limits.overrides.insert(route.into(), 100_000);
            }
            s.summarizer.trigger_messages = 6;
            s.summarizer.keep_recent = 2;
            configure(s);
        },
    )
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

async fn thread(app: &TestCluster, who: &Cookies) -> String {
    let (status, body) = envelope(
        app.send_json(
            Method::POST,
            "/api/threads",
            who,
            &json!({ "title": "long talk" }),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["data"]["thread"]["id"].as_str().unwrap().to_owned()
}

/// Appends a complete message straight through the thread service (as the router does); the
/// thread service publishes its `message.created` event.
async fn append(
    bus: &Bus,
    uid: &str,
    thread: &str,
    model: &str,
    i: usize,
    content: &str,
) -> String {
    let reply: AppendMessageReply = bus
        .request(
            "thread",
            "messages.append",
            &RequestContext::internal(),
            &AppendMessageRequest {
                user_id: uid.to_owned(),
                thread_id: thread.to_owned(),
                model_id: model.to_owned(),
                message_id: None,
                idempotency_key: None,
                role: if i.is_multiple_of(2) {
                    "user"
                } else {
                    "assistant"
                }
                .into(),
                content: content.to_owned(),
                status: Some("complete".into()),
                tokens: None,
                temperature: None,
                context: None,
            },
        )
        .await
        .unwrap();
    reply.message.id
}

async fn summary(bus: &Bus, uid: &str, thread: &str, model: &str) -> Option<SummaryView> {
    let reply: HistoryReply = bus
        .request(
            "thread",
            "history",
            &RequestContext::internal(),
            &HistoryRequest {
                user_id: uid.to_owned(),
                thread_id: thread.to_owned(),
                model_id: model.to_owned(),
                limit: 1,
                oldest_first: false,
            },
        )
        .await
        .unwrap();
    reply.summary
}

/// Waits for a summary of at least `version`.
async fn wait_summary(
    bus: &Bus,
    uid: &str,
    thread: &str,
    model: &str,
    version: u64,
) -> SummaryView {
    let started = Instant::now();
    loop {
        if let Some(s) = summary(bus, uid, thread, model).await
            && s.version >= version
        {
            return s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no summary v{version} of {thread}/{model}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn is_summary_request(r: &RecordedRequest) -> bool {
    r.body.to_string().contains("You summarize conversations")
}

fn summary_requests(app: &TestCluster) -> Vec<RecordedRequest> {
    app.sim
        .requests()
        .into_iter()
        .filter(is_summary_request)
        .collect()
}

/// The text of every message of a recorded Anthropic or OpenAI-style request.
fn contents(r: &RecordedRequest) -> Vec<String> {
    r.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match &m["content"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}

/// The simulator's estimate-counted models (Anthropic, OpenAI-compatible): ceil(bytes / 3).
fn estimate(text: &str) -> u32 {
    u32::try_from(text.len().div_ceil(3)).unwrap()
}

/// Waits until the summarizer's consumer has acknowledged every event it was given.
async fn wait_consumer_idle(app: &TestCluster) {
    let js = jetstream::new(app.bus().await.client().clone());
    let started = Instant::now();
    loop {
        // The summarizer creates its consumer just after it starts.
        let consumer: Option<jetstream::consumer::PullConsumer> = js
            .get_stream("polylogue-events")
            .await
            .unwrap()
            .get_consumer("summarizer")
            .await
            .ok();
        let backlog = match consumer {
            Some(mut c) => {
                let info = c.info().await.unwrap();
                Some((info.num_pending, info.num_ack_pending))
            }
            None => None,
        };
        if backlog == Some((0, 0)) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the summarizer's consumer never caught up: (pending, unacked) = {backlog:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn summarize(app: &TestCluster, who: &Cookies, thread: &str, model: &str) -> (u16, Value) {
    envelope(
        app.post_with(
            &format!("/api/threads/{thread}/models/{model}/summarize"),
            who,
        )
        .await,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_summary_is_written_once_the_history_passes_the_threshold() {
    let mut app = cluster(250, |_| {}).await;
    app.start_summarizer().await;
    let who = app
        .signed_in("auto@example.com", "correct horse battery")
        .await;
    let uid = user_id(&who);
    let t = thread(&app, &who).await;
    let bus = app.bus().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            append(
                &bus,
                &uid,
                &t,
                "claude-sonnet",
                i,
                &format!("note-{i} about trains"),
            )
            .await,
        );
    }
    wait_consumer_idle(&app).await;
    assert!(
        summary(&bus, &uid, &t, "claude-sonnet").await.is_none(),
        "5 < 6 messages"
    );
    assert!(summary_requests(&app).is_empty());

    ids.push(append(&bus, &uid, &t, "claude-sonnet", 5, "note-5 about trains").await);
    let s = wait_summary(&bus, &uid, &t, "claude-sonnet", 1).await;
    assert_eq!(s.version, 1);
    // The newest two stay verbatim: the summary covers up to the one before them.
    assert_eq!(s.covers_until, ids[3]);
    assert_eq!(s.model_used, "claude-sonnet");
    assert_eq!(s.tokens, estimate(&s.content), "tokens are measured");
    assert!((300..=700).contains(&s.tokens), "{}", s.tokens);
    let requests = summary_requests(&app);
    assert_eq!(requests.len(), 1);
    let prompt = contents(&requests[0]).join("\n");
    for i in 0..4 {
        assert!(
            prompt.contains(&format!("note-{i} about")),
            "note-{i} is summarized"
        );
    }
    for i in 4..6 {
        assert!(
            !prompt.contains(&format!("note-{i} about")),
            "note-{i} is kept back"
        );
    }
    assert!(prompt.contains("300 to 700 tokens"));

    // The thread shows it per model and as the thread's summary.
    let (_, body) = envelope(app.get_with(&format!("/api/threads/{t}"), &who).await).await;
    let m = &body["data"]["thread"]["models"]["claude-sonnet"];
    assert_eq!(m["summary"], s.content.as_str());
    assert_eq!(m["summaryUpdatedAt"], s.generated_at.as_str());
    let (_, body) = envelope(app.get_with("/api/threads", &who).await).await;
    assert_eq!(body["data"]["threads"][0]["summary"], s.content.as_str());

    // Below the threshold again: more messages write nothing until it is passed again.
    append(&bus, &uid, &t, "claude-sonnet", 6, "note-6").await;
    wait_consumer_idle(&app).await;
    assert_eq!(
        summary(&bus, &uid, &t, "claude-sonnet")
            .await
            .unwrap()
            .version,
        1
    );
    assert_eq!(summary_requests(&app).len(), 1);
    assert!(app.summarizer(0).stale(&t, "claude-sonnet").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chats_through_the_edge_trigger_a_summary_at_the_sixth_message() {
    let mut app = cluster(250, |_| {}).await;
    app.start_summarizer().await;
    let who = app
        .signed_in("chat@example.com", "correct horse battery")
        .await;
    let uid = user_id(&who);
    let t = thread(&app, &who).await;
    let bus = app.bus().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let (status, body) = envelope(
            app.send_json(
                Method::POST,
                &format!("/api/threads/{t}/models/claude-opus/messages"),
                &who,
                &json!({ "content": format!("question {i}") }),
            )
            .await,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        ids.push(
            body["data"]["userMessage"]["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
        ids.push(
            body["data"]["assistantMessage"]["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    // The sixth message is the last reply, created streaming: it counts toward the threshold
    // (its completion brings no event of its own) but is never summarized half-written.
    let s = wait_summary(&bus, &uid, &t, "claude-opus", 1).await;
    assert_eq!(s.covers_until, ids[3], "all but the newest two");
    assert_eq!(summary_requests(&app).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_of_the_prompt_budget_triggers_a_summary_too() {
    let mut app = cluster(250, |s| {
        s.summarizer.trigger_messages = 40;
        s.summarizer.keep_recent = 1;
    })
    .await;
    app.start_summarizer().await;
    let who = app
        .signed_in("share@example.com", "correct horse battery")
        .await;
    let uid = user_id(&who);
    let t = thread(&app, &who).await;
    let bus = app.bus().await;
    // sim-compatible: 4096-token window, reply budget 1024, estimated counts (90 % of the rest)
    // → 2764 prompt tokens; half is 1382. Each message is ~604 tokens.
    let long = |i: usize| format!("part-{i} {}", "the quick brown fox. ".repeat(90));
    let a = append(&bus, &uid, &t, "sim-compatible", 0, &long(0)).await;
    let b = append(&bus, &uid, &t, "sim-compatible", 1, &long(1)).await;
    wait_consumer_idle(&app).await;
    assert!(
        summary(&bus, &uid, &t, "sim-compatible").await.is_none(),
        "~1208 tokens < 1382"
    );
    append(&bus, &uid, &t, "sim-compatible", 2, &long(2)).await;
    let s = wait_summary(&bus, &uid, &t, "sim-compatible", 1).await;
    assert_eq!(s.covers_until, b, "all but the newest");
    assert_ne!(s.covers_until, a);
    let requests = summary_requests(&app);
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].path, "/v1/chat/completions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_long_and_too_short_summaries_are_corrected_once() {
    let mut app = cluster(250, |s| s.summarizer.trigger_messages = 40).await;
    app.start_summarizer().await;
    let who = app
        .signed_in("bounds@example.com", "correct horse battery")
        .await;
    let uid = user_id(&who);
    let bus = app.bus().await;
    // The simulator reads `[sim summary_words=N]` from the last user message it is sent: in the
    // first request that is the transcript, in the corrective one the correction (default 250).
    for (words, hint) in [(1000, "the limit is 700"), (40, "only")] {
        let t = thread(&app, &who).await;
        append(
            &bus,
            &uid,
            &t,
            "claude-haiku",
            0,
            &format!("Tell me about canals. [sim summary_words={words}]"),
        )
        .await;
        append(
            &bus,
            &uid,
            &t,
            "claude-haiku",
            1,
            "Canals are artificial waterways.",
        )
        .await;
        let before = summary_requests(&app).len();
        let (status, body) = summarize(&app, &who, &t, "claude-haiku").await;
        assert_eq!(status, 200, "{body}");
        let text = body["data"]["summary"].as_str().unwrap();
        let tokens = u32::try_from(body["data"]["tokens"].as_u64().unwrap()).unwrap();
        assert_eq!(tokens, estimate(text));
        assert!(
            (300..=700).contains(&tokens),
            "{words} words → {tokens} tokens"
        );
        // 250 words of the simulator's sentences: the corrected summary, not a trimmed one.
        assert_eq!(text.split_whitespace().count(), 250, "{words}");
        let requests = summary_requests(&app);
        assert_eq!(requests.len(), before + 2, "one corrective retry");
        let retry = contents(&requests[before + 1]);
        assert_eq!(
            retry.len(),
            3,
            "transcript, the first attempt, the correction"
        );
        assert!(retry[2].contains(hint), "{}", retry[2]);
        let first = &retry[1];
        assert_eq!(first.split_whitespace().count(), words as usize);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_summary_still_too_long_is_trimmed_at_a_sentence() {
    let mut app = cluster(1000, |s| s.summarizer.trigger_messages = 40).await;
    app.start_summarizer().await;
    let who = app
        .signed_in("trim@example.com", "correct horse battery")
        .await;
    let uid = user_id(&who);
    let bus = app.bus().await;
    let t = thread(&app, &who).await;
    append(
        &bus,
        &uid,
        &t,
        "claude-haiku",
        0,
        "Tell me everything about rivers.",
    )
    .await;
    let (status, body) = summarize(&app, &who, &t, "claude-haiku").await;
    assert_eq!(status, 200, "{body}");
    let text = body["data"]["summary"].as_str().unwrap();
    let tokens = u32::try_from(body["data"]["tokens"].as_u64().unwrap()).unwrap();
    assert_eq!(tokens, estimate(text));
    assert!(
        (600..=700).contains(&tokens),
        "trimmed close under the bound: {tokens}"
    );
    assert!(
        text.ends_with("detail."),
        "ends at a sentence: …{}",
        &text[text.len() - 30..]
    );
    assert_eq!(
        summary_requests(&app).len(),
        2,
        "asked, corrected once, then trimmed"
    );
    // What is stored is what was answered.
    let s = summary(&bus, &uid, &t, "claude-haiku").await.unwrap();
    assert_eq!((s.content.as_str(), s.tokens), (text, tokens));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_summary_still_too_short_is_kept_and_logged() {
    let mut app = cluster(40, |s| s.summarizer.trigger_messages = 40).await;
    app.start_summarizer().await;
    let who = app
        .signed_in("short@example.com", "correct horse battery")
        .await;
    let uid = user_id(&who);
    let bus = app.bus().await;
    let t = thread(&app, &who).await;
    append(&bus, &uid, &t, "claude-haiku", 0, "Hi.").await;
    let (status, body) = summarize(&app, &who, &t, "claude-haiku").await;
    assert_eq!(status, 200, "{body}");
    let text = body["data"]["summary"].as_str().unwrap();
    let tokens = u32::try_from(body["data"]["tokens"].as_u64().unwrap()).unwrap();
    assert_eq!(tokens, estimate(text));
    assert!(tokens < 300, "{tokens}");
    assert_eq!(text.split_whitespace().count(), 40);
    assert_eq!(summary_requests(&app).len(), 2);
    let logs = polylogue_tests::captured_logs().contents();
    assert!(logs.contains("summary shorter than the bound after a corrective retry"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_assembly_sends_the_summary_and_only_the_messages_after_it() {
    let mut app = cluster(250, |_| {}).await;
    app.start_summarizer().await;
    let who = app
        .signed_in("context@example.com", "correct horse battery")
        .await;
    let uid = user_id(&who);
    let t = thread(&app, &who).await;
    let bus = app.bus().await;
    for i in 0..6 {
        append(&bus, &uid, &t, "claude-sonnet", i, &format!("note-{i}")).await;
    }
    let s = wait_summary(&bus, &uid, &t, "claude-sonnet", 1).await;
    let (status, body) = envelope(
        app.send_json(
            Method::POST,
            &format!("/api/threads/{t}/models/claude-sonnet/messages"),
            &who,
            &json!({ "content": "what next?" }),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let chat = app
        .sim
        .requests()
        .into_iter()
        .rfind(|r| !is_summary_request(r))
        .unwrap();
    let system = chat.body["system"].as_str().unwrap();
    assert!(
        system.contains("Summary of the earlier conversation") && system.contains(&s.content),
        "the summary goes with the system prompt"
    );
    // Covered up to note-3: only note-4, note-5 and the new message are sent.
    assert_eq!(contents(&chat), ["note-4", "note-5", "what next?"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manual_endpoint_summarizes_the_whole_history_for_its_owner_only() {
    let mut app = cluster(250, |s| s.summarizer.trigger_messages = 40).await;
    app.start_summarizer().await;
    let alice = app
        .signed_in("alice@example.com", "correct horse battery")
        .await;
    let mallory = app
        .signed_in("mallory@example.com", "correct horse battery")
        .await;
    let uid = user_id(&alice);
    let bus = app.bus().await;
    let t = thread(&app, &alice).await;

    // Nothing yet: 422 with its own code.
    let (status, body) = summarize(&app, &alice, &t, "claude-opus").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("NOTHING_TO_SUMMARIZE")),
        "{body}"
    );

    let mut last = String::new();
    for i in 0..3 {
        last = append(
            &bus,
            &uid,
            &t,
            "claude-opus",
            i,
            &format!("canal-{i} locks and weirs"),
        )
        .await;
    }
    // Not yours, unknown model, not signed in: nothing reaches the model.
    let (status, body) = summarize(&app, &mallory, &t, "claude-opus").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("NOT_FOUND")),
        "{body}"
    );
    let (status, _) = summarize(&app, &alice, &t, "no-such-model").await;
    assert_eq!(status, 404);
    let r = app
        .http
        .post(app.url(&format!("/api/threads/{t}/models/claude-opus/summarize")))
        .send()
        .await
        .unwrap();
    assert_eq!(envelope(r).await.0, 401);
    assert!(summary_requests(&app).is_empty());

    let (status, body) = summarize(&app, &alice, &t, "claude-opus").await;
    assert_eq!(status, 200, "{body}");
    let data = body["data"].as_object().unwrap();
    let mut keys: Vec<&str> = data.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["generatedAt", "modelUsed", "summary", "tokens"]);
    assert_eq!(data["modelUsed"], "claude-opus");
    let text = data["summary"].as_str().unwrap().to_owned();
    assert_eq!(data["tokens"].as_u64().unwrap(), u64::from(estimate(&text)));
    // Every message is covered (the manual endpoint keeps nothing back).
    let s = summary(&bus, &uid, &t, "claude-opus").await.unwrap();
    assert_eq!(
        (s.version, s.covers_until.as_str(), s.content.as_str()),
        (1, last.as_str(), text.as_str())
    );
    let (_, body) = envelope(app.get_with(&format!("/api/threads/{t}"), &alice).await).await;
    let m = &body["data"]["thread"]["models"]["claude-opus"];
    assert_eq!(m["summary"], text.as_str());
    assert_eq!(m["summaryUpdatedAt"], data["generatedAt"]);
    // Thread search finds it by a word of the summary.
    let started = Instant::now();
    loop {
        let (_, body) = envelope(app.get_with("/api/threads?q=covers", &alice).await).await;
        if body["data"]["threads"][0]["id"] == t.as_str() {
            assert_eq!(body["data"]["threads"][0]["summary"], text.as_str());
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "not found by its summary: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Covered already: 422 again.
    let (status, body) = summarize(&app, &alice, &t, "claude-opus").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("NOTHING_TO_SUMMARIZE"))
    );
    // A new message: version 2 from the previous summary and that message only.
    append(&bus, &uid, &t, "claude-opus", 3, "canal-3 aqueducts").await;
    let (status, body) = summarize(&app, &alice, &t, "claude-opus").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        summary(&bus, &uid, &t, "claude-opus")
            .await
            .unwrap()
            .version,
        2
    );
    let requests = summary_requests(&app);
    assert_eq!(requests.len(), 2);
    let prompt = contents(&requests[1]).join("\n");
    assert!(prompt.contains("Summary of the earlier conversation:") && prompt.contains(&text));
    assert!(prompt.contains("canal-3") && !prompt.contains("canal-2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summarize_route_allows_five_requests_a_minute() {
    let mut app = TestCluster::start().await;
    app.start_summarizer().await;
    let who = app
        .signed_in("limit@example.com", "correct horse battery")
        .await;
    let t = thread(&app, &who).await;
    for i in 0..5 {
        let r = app
            .post_with(
                &format!("/api/threads/{t}/models/claude-opus/summarize"),
                &who,
            )
            .await;
        assert_eq!(r.headers()["x-ratelimit-limit"], "5");
        assert_eq!(envelope(r).await.0, 422, "request {i}");
    }
    let r = app
        .post_with(
            &format!("/api/threads/{t}/models/claude-opus/summarize"),
            &who,
        )
        .await;
    assert!(r.headers().contains_key("retry-after"));
    let (status, body) = envelope(r).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("RATE_LIMITED"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_racing_for_one_history_write_one_version() {
    // Slow summaries, so the replicas' work overlaps; every event sees the threshold passed.
    let mut app = TestCluster::start_with_sim(
        SimConfig {
            summary_words: 250,
            ttft: Duration::from_millis(400),
            ..SimConfig::default()
        },
        |s| {
            s.summarizer.trigger_messages = 6;
            s.summarizer.keep_recent = 0;
        },
    )
    .await;
    let who = app
        .signed_in("race@example.com", "correct horse battery")
        .await;
    let uid = user_id(&who);
    let t = thread(&app, &who).await;
    let bus = app.bus().await;
    let mut last = String::new();
    for i in 0..10 {
        last = append(&bus, &uid, &t, "claude-opus", i, &format!("race-{i}")).await;
    }
    // Ten events wait in the stream; two replicas take them at once.
    app.start_summarizer().await;
    app.start_summarizer().await;
    let s = wait_summary(&bus, &uid, &t, "claude-opus", 1).await;
    wait_consumer_idle(&app).await;
    let s_after = summary(&bus, &uid, &t, "claude-opus").await.unwrap();
    assert_eq!(
        (s_after.version, s.covers_until.as_str()),
        (1, last.as_str())
    );
    assert_eq!(
        summary_requests(&app).len(),
        1,
        "one model call for one history"
    );
    let busy = app.summarizer(0).busy_count() + app.summarizer(1).busy_count();
    assert!(busy > 0, "the other triggers found the history locked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_event_changes_nothing() {
    let mut app = cluster(250, |_| {}).await;
    app.start_summarizer().await;
    let who = app
        .signed_in("redelivery@example.com", "correct horse battery")
        .await;
    let uid = user_id(&who);
    let t = thread(&app, &who).await;
    let bus = app.bus().await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(append(&bus, &uid, &t, "claude-sonnet", i, &format!("m-{i}")).await);
    }
    let s = wait_summary(&bus, &uid, &t, "claude-sonnet", 1).await;
    wait_consumer_idle(&app).await;
    // The same events again (as a redelivery or a replayed stream would bring them).
    let js = jetstream::new(bus.client().clone());
    for (n, id) in ids.iter().enumerate() {
        let event = DomainEvent {
            id: format!("message.created:{id}"),
            kind: "message.created".into(),
            owner_id: uid.clone(),
            thread_id: t.clone(),
            model_id: Some("claude-sonnet".into()),
            message_id: Some(id.clone()),
            at: s.generated_at.clone(),
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("replay-{n}").as_str());
        js.publish_with_headers(
            "polylogue.events.message.created",
            headers,
            serde_json::to_vec(&event).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    wait_consumer_idle(&app).await;
    let again = summary(&bus, &uid, &t, "claude-sonnet").await.unwrap();
    assert_eq!(again, s, "same version, same content");
    assert_eq!(summary_requests(&app).len(), 1);
    // And the work itself, run again for that history, finds nothing due.
    let outcome = app
        .summarizer(0)
        .run(
            &RequestContext::internal(),
            &History {
                user_id: uid.clone(),
                thread_id: t.clone(),
                model_id: "claude-sonnet".into(),
            },
            Mode::Auto,
            None,
        )
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::UpToDate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_down_keeps_the_previous_summary_and_dead_letters_the_work() {
    let mut app = cluster(250, |s| {
        s.summarizer.max_deliver = 3;
    })
    .await;
    let healthy = app.start_summarizer().await;
    let who = app
        .signed_in("down@example.com", "correct horse battery")
        .await;
    let uid = user_id(&who);
    let t = thread(&app, &who).await;
    let bus = app.bus().await;
    for i in 0..6 {
        append(&bus, &uid, &t, "claude-sonnet", i, &format!("first-{i}")).await;
    }
    let v1 = wait_summary(&bus, &uid, &t, "claude-sonnet", 1).await;
    wait_consumer_idle(&app).await;

    // The provider goes away: connections are refused.
    app.stop_summarizer(healthy).await;
    let broken = app
        .start_summarizer_with(|s| s.inference.anthropic_url = Some("http://127.0.0.1:9".into()))
        .await;
    let js = jetstream::new(bus.client().clone());
    let mut dead = js
        .get_stream("polylogue-summarizer-dead")
        .await
        .unwrap()
        .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap()
        .messages()
        .await
        .unwrap();
    let requests_before = summary_requests(&app).len();
    for i in 0..6 {
        append(&bus, &uid, &t, "claude-sonnet", i, &format!("second-{i}")).await;
    }
    let letter = tokio::time::timeout(Duration::from_secs(15), dead.next())
        .await
        .expect("a dead letter")
        .unwrap()
        .unwrap();
    let letter: DeadLetter = serde_json::from_slice(&letter.payload).unwrap();
    assert_eq!(letter.event.thread_id, t);
    assert_eq!(letter.event.model_id.as_deref(), Some("claude-sonnet"));
    assert_eq!(letter.deliveries, 3);
    assert!(
        letter.reason.starts_with("SERVICE_UNAVAILABLE"),
        "{}",
        letter.reason
    );

    // The previous summary is still the one in use, marked stale internally.
    assert_eq!(summary(&bus, &uid, &t, "claude-sonnet").await.unwrap(), v1);
    let (_, body) = envelope(app.get_with(&format!("/api/threads/{t}"), &who).await).await;
    assert_eq!(
        body["data"]["thread"]["models"]["claude-sonnet"]["summary"],
        v1.content.as_str()
    );
    let stale = app
        .summarizer(broken)
        .stale(&t, "claude-sonnet")
        .await
        .unwrap();
    assert!(stale.failures >= 3, "{stale:?}");
    assert_eq!(stale.summary_version, Some(1));
    assert_eq!(
        summary_requests(&app).len(),
        requests_before,
        "nothing reached the simulator"
    );
    let logs = polylogue_tests::captured_logs().contents();
    assert!(
        logs.lines()
            .any(|l| l.contains("summary work dead-lettered") && l.contains(&t)),
        "an advisory log line names the history"
    );
    // The chat path does not wait on any of it.
    let (status, _) = envelope(
        app.send_json(
            Method::POST,
            &format!("/api/threads/{t}/models/claude-sonnet/messages"),
            &who,
            &json!({ "content": "still there?" }),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);

    // The provider is back: the next event brings the summary up to date and clears the marker.
    app.stop_summarizer(broken).await;
    let healthy = app.start_summarizer().await;
    append(&bus, &uid, &t, "claude-sonnet", 0, "third-0").await;
    let v2 = wait_summary(&bus, &uid, &t, "claude-sonnet", 2).await;
    assert_eq!(v2.version, 2);
    wait_consumer_idle(&app).await;
    assert!(
        app.summarizer(healthy)
            .stale(&t, "claude-sonnet")
            .await
            .is_none()
    );
}

/// The real path: llama.cpp serving SmolLM2-135M (2048-token window), started by
/// `scripts/test.sh`. The tiny model's summary is not judged, only that one is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_local_model_summarizes_a_short_conversation() {
    let Ok(url) = std::env::var("POLYLOGUE_TEST_LLAMA_URL") else {
        eprintln!("POLYLOGUE_TEST_LLAMA_URL not set (scripts/test.sh sets it): skipped");
        return;
    };
    let mut app = cluster(250, |s| {
        s.summarizer.trigger_messages = 40;
        s.summarizer.request_timeout_secs = 600;
        s.inference.idle_timeout_ms = 300_000;
    })
    .await;
    app.start_summarizer().await;
    let who = app
        .signed_in("real-summary@example.com", "correct horse battery")
        .await;
    let uid = user_id(&who);
    let bus = app.bus().await;
    let t = thread(&app, &who).await;
    let model = "smollm2-135m-local";
    for (i, text) in [
        "I am planning a trip to Lisbon in May. What should I see?",
        "Lisbon has the Belem Tower, the Alfama district and tram 28. May is warm and sunny.",
        "I like food. Where should I eat?",
        "Try the pasteis de nata in Belem and grilled sardines in Alfama.",
    ]
    .into_iter()
    .enumerate()
    {
        append(&bus, &uid, &t, model, i, text).await;
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    let started = Instant::now();
    let r = http
        .post(app.url(&format!("/api/threads/{t}/models/{model}/summarize")))
        .header("cookie", who.header())
        .send()
        .await
        .unwrap();
    let (status, body) = envelope(r).await;
    assert_eq!(status, 200, "{url}: {body}");
    let text = body["data"]["summary"].as_str().unwrap();
    let tokens = body["data"]["tokens"].as_u64().unwrap();
    assert!(!text.trim().is_empty(), "the model wrote something");
    assert_eq!(body["data"]["modelUsed"], model);
    eprintln!(
        "smollm2 summary in {:?}: {tokens} tokens (bounds 300-700, not enforced on this model's \
         quality): {text:?}",
        started.elapsed()
    );
    assert!(app.sim.requests().is_empty());
}
