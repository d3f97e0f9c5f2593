//! End-to-end tests of the simulator over real HTTP.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers outside #[test] fns fail loudly"
)]

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use polylogue_provider_sim::{RecordedRequest, SimConfig, SimOptions, SimServer};
use serde_json::{Value, json};

async fn sim() -> SimServer {
    SimServer::start(SimConfig::default()).await.unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

fn expected(n: u32) -> String {
    (0..n).map(|i| format!("tok{i} ")).collect()
}

/// Splits an SSE body into `(event name, data)` pairs.
fn sse(text: &str) -> Vec<(Option<String>, String)> {
    text.replace("\r\n", "\n")
        .split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|block| {
            let mut name = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    name = Some(e.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            (name, data)
        })
        .collect()
}

fn json_of(data: &str) -> Value {
    serde_json::from_str(data).unwrap_or_else(|e| panic!("bad json {data:?}: {e}"))
}

// ---------- Anthropic ----------

async fn anthropic(sim: &SimServer, key: Option<&str>, body: Value) -> reqwest::Response {
    let mut req = client()
        .post(format!("{}/v1/messages", sim.base_url()))
        .header("anthropic-version", "2023-06-01")
        .json(&body);
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    req.send().await.unwrap()
}

fn anthropic_body(text: &str, stream: bool) -> Value {
    json!({
        "model": "claude-sonnet-4-20250514",
        "max_tokens": 1024,
        "stream": stream,
        "system": "be brief",
        "messages": [{"role": "user", "content": text}],
    })
}

#[tokio::test]
async fn anthropic_non_stream_shape() {
    let sim = sim().await;
    let resp = anthropic(&sim, Some("sk-ant"), anthropic_body("hello world!", false)).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("request-id"));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert!(v["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(v["model"], "claude-sonnet-4-20250514");
    assert_eq!(v["content"][0]["type"], "text");
    assert_eq!(v["content"][0]["text"], expected(12));
    assert_eq!(v["stop_reason"], "end_turn");
    // "be brief" (8) + "hello world!" (12) = 20 bytes -> 5 tokens.
    assert_eq!(v["usage"]["input_tokens"], 5);
    assert_eq!(v["usage"]["output_tokens"], 12);
}

#[tokio::test]
async fn anthropic_stream_sequence() {
    let sim = sim().await;
    let resp = anthropic(&sim, Some("sk-ant"), anthropic_body("hi", true)).await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = sse(&resp.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
    let mut want = vec!["message_start", "content_block_start", "ping"];
    want.extend(std::iter::repeat_n("content_block_delta", 12));
    want.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, want);
    let mut text = String::new();
    for (name, data) in &events {
        let v = json_of(data);
        assert_eq!(
            v["type"],
            name.as_deref().unwrap(),
            "type matches event name"
        );
        if v["type"] == "content_block_delta" {
            assert_eq!(v["index"], 0);
            assert_eq!(v["delta"]["type"], "text_delta");
            text.push_str(v["delta"]["text"].as_str().unwrap());
        }
    }
    assert_eq!(text, expected(12));
    let start = json_of(&events[0].1);
    assert!(start["message"]["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(start["message"]["model"], "claude-sonnet-4-20250514");
    assert_eq!(start["message"]["usage"]["input_tokens"], 3); // 10 bytes
    let delta = json_of(&events[events.len() - 2].1);
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], 12);
}

#[tokio::test]
async fn anthropic_auth_errors() {
    let sim = sim().await;
    for key in [None, Some("sk-invalid-1")] {
        let resp = anthropic(&sim, key, anthropic_body("hi", true)).await;
        assert_eq!(resp.status(), 401);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "authentication_error");
        assert!(v["error"]["message"].is_string());
    }
    let resp = anthropic(&sim, Some("k"), json!({"model": "m", "messages": []})).await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn anthropic_max_tokens_and_block_directives() {
    let sim = sim().await;
    let mut body = anthropic_body("", true);
    body["max_tokens"] = json!(5);
    body["messages"] = json!([
        {"role": "user", "content": "first [sim tokens=99]"},
        {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
        {"role": "user", "content": [
            {"type": "text", "text": "second"},
            {"type": "text", "text": "[sim tokens=8 text=w]"}
        ]},
    ]);
    let events = sse(&anthropic(&sim, Some("k"), body.clone())
        .await
        .text()
        .await
        .unwrap());
    let text: String = events
        .iter()
        .filter(|(n, _)| n.as_deref() == Some("content_block_delta"))
        .map(|(_, d)| json_of(d)["delta"]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(text, "w0 w1 w2 w3 w4 ");
    let delta = events
        .iter()
        .find(|(n, _)| n.as_deref() == Some("message_delta"))
        .unwrap();
    assert_eq!(json_of(&delta.1)["delta"]["stop_reason"], "max_tokens");
    assert_eq!(json_of(&delta.1)["usage"]["output_tokens"], 5);

    body["stream"] = json!(false);
    let v: Value = anthropic(&sim, Some("k"), body).await.json().await.unwrap();
    assert_eq!(v["stop_reason"], "max_tokens");
    assert_eq!(v["usage"]["output_tokens"], 5);
}

#[tokio::test]
async fn anthropic_failures() {
    let sim = sim().await;
    let resp = anthropic(&sim, Some("k"), anthropic_body("[sim fail=429]", true)).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");

    let resp = anthropic(
        &sim,
        Some("k"),
        anthropic_body("[sim fail=429 retry_after=7]", false),
    )
    .await;
    assert_eq!(resp.headers()["retry-after"], "7");

    for (status, kind) in [
        (529, "overloaded_error"),
        (500, "api_error"),
        (503, "api_error"),
        (400, "invalid_request_error"),
        (401, "authentication_error"),
    ] {
        let resp = anthropic(
            &sim,
            Some("k"),
            anthropic_body(&format!("[sim fail={status}]"), true),
        )
        .await;
        assert_eq!(resp.status().as_u16(), status);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["type"], kind);
    }
}

#[tokio::test]
async fn anthropic_cut_and_malformed() {
    let sim = sim().await;
    let body = anthropic(&sim, Some("k"), anthropic_body("[sim cut_after=3]", true))
        .await
        .text()
        .await
        .expect("cut ends the body cleanly");
    let events = sse(&body);
    let deltas = events
        .iter()
        .filter(|(n, _)| n.as_deref() == Some("content_block_delta"))
        .count();
    assert_eq!(deltas, 3);
    assert!(!body.contains("message_stop"));
    assert!(!body.contains("message_delta"));

    let body = anthropic(
        &sim,
        Some("k"),
        anthropic_body("[sim malformed_after=2]", true),
    )
    .await
    .text()
    .await
    .unwrap();
    let events = sse(&body);
    let bad: Vec<_> = events
        .iter()
        .filter(|(_, d)| serde_json::from_str::<Value>(d).is_err())
        .collect();
    assert_eq!(bad.len(), 1);
    assert_eq!(events.last().unwrap().0.as_deref(), Some("message_stop"));
    // The bad chunk comes after exactly two deltas.
    let pos = events
        .iter()
        .position(|(_, d)| serde_json::from_str::<Value>(d).is_err())
        .unwrap();
    assert_eq!(pos, 3 + 2);

    // Non-stream: the body is not valid JSON.
    let resp = anthropic(&sim, Some("k"), anthropic_body("[sim cut_after=1]", false)).await;
    assert_eq!(resp.status(), 200);
    assert!(serde_json::from_str::<Value>(&resp.text().await.unwrap()).is_err());
}

#[tokio::test]
async fn abort_after_errors_the_body() {
    let sim = sim().await;
    let resp = anthropic(&sim, Some("k"), anthropic_body("[sim abort_after=2]", true)).await;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut got = Vec::new();
    let mut errored = false;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(b) => got.extend_from_slice(&b),
            Err(_) => {
                errored = true;
                break;
            }
        }
    }
    assert!(errored, "body must end with an error");
    let got = String::from_utf8_lossy(&got);
    assert!(got.contains("message_start"));
    assert!(!got.contains("message_stop"));
}

#[tokio::test]
async fn anthropic_models() {
    let sim = sim().await;
    let resp = client()
        .get(format!("{}/v1/models", sim.base_url()))
        .header("x-api-key", "k")
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["data"][0]["type"], "model");
    assert_eq!(v["has_more"], false);
}

// ---------- OpenAI ----------

async fn openai(sim: &SimServer, key: Option<&str>, body: Value) -> reqwest::Response {
    let mut req = client()
        .post(format!("{}/v1/chat/completions", sim.base_url()))
        .json(&body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    req.send().await.unwrap()
}

fn openai_body(text: &str, stream: bool) -> Value {
    json!({
        "model": "gpt-4o",
        "stream": stream,
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": text},
        ],
    })
}

#[tokio::test]
async fn openai_non_stream_shape() {
    let sim = sim().await;
    let resp = openai(&sim, Some("sk-1"), openai_body("hello", false)).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["model"], "gpt-4o");
    assert_eq!(v["choices"][0]["index"], 0);
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], expected(12));
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 2); // 8 bytes
    assert_eq!(v["usage"]["completion_tokens"], 12);
    assert_eq!(v["usage"]["total_tokens"], 14);
}

#[tokio::test]
async fn openai_stream_sequence_with_usage() {
    let sim = sim().await;
    let mut body = openai_body("hello", true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = openai(&sim, Some("sk-1"), body).await;
    assert_eq!(resp.status(), 200);
    let events = sse(&resp.text().await.unwrap());
    assert_eq!(events.len(), 1 + 12 + 1 + 1 + 1);
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|(_, d)| json_of(d))
        .collect();
    let id = chunks[0]["id"].clone();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], id);
        assert_eq!(c["model"], "gpt-4o");
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[0]["choices"][0]["delta"]["content"], "");
    let text: String = chunks[1..13]
        .iter()
        .map(|c| {
            assert!(c["choices"][0]["finish_reason"].is_null());
            assert!(c["usage"].is_null());
            c["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(text, expected(12));
    assert_eq!(chunks[13]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[13]["choices"][0]["delta"], json!({}));
    assert_eq!(chunks[14]["choices"], json!([]));
    assert_eq!(chunks[14]["usage"]["completion_tokens"], 12);
    assert_eq!(chunks[14]["usage"]["prompt_tokens"], 2);
    assert_eq!(chunks[14]["usage"]["total_tokens"], 14);
}

#[tokio::test]
async fn openai_stream_without_usage_and_max_tokens() {
    let sim = sim().await;
    let mut body = openai_body("x", true);
    body["max_completion_tokens"] = json!(4);
    let text = openai(&sim, None, body).await.text().await.unwrap();
    assert!(!text.contains("usage"));
    let events = sse(&text);
    assert_eq!(events.len(), 1 + 4 + 1 + 1);
    assert_eq!(
        json_of(&events[5].1)["choices"][0]["finish_reason"],
        "length"
    );

    let mut body = openai_body("x", false);
    body["max_tokens"] = json!(3);
    let v: Value = openai(&sim, None, body).await.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "tok0 tok1 tok2 ");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn openai_auth() {
    let sim = sim().await;
    // Missing key is accepted by default.
    assert_eq!(
        openai(&sim, None, openai_body("x", false)).await.status(),
        200
    );
    let resp = openai(&sim, Some("sk-invalid"), openai_body("x", false)).await;
    assert_eq!(resp.status(), 401);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key");
    assert!(v["error"]["message"].is_string());
    assert!(v["error"]["type"].is_string());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let strict = SimServer::start_with(
        SimConfig::default(),
        SimOptions {
            require_auth_openai: true,
            ..SimOptions::default()
        },
        listener,
    )
    .await
    .unwrap();
    assert_eq!(
        openai(&strict, None, openai_body("x", false))
            .await
            .status(),
        401
    );
    assert_eq!(
        openai(&strict, Some("sk"), openai_body("x", false))
            .await
            .status(),
        200
    );
    strict.shutdown().await;
}

#[tokio::test]
async fn openai_failures_and_fail_times() {
    let sim = sim().await;
    let resp = openai(&sim, Some("k"), openai_body("[sim fail=429]", true)).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");

    let text = "[sim fail=503 fail_times=2 id=oa]";
    let statuses = [
        openai(&sim, Some("k"), openai_body(text, false))
            .await
            .status(),
        openai(&sim, Some("k"), openai_body(text, false))
            .await
            .status(),
        openai(&sim, Some("k"), openai_body(text, false))
            .await
            .status(),
        openai(&sim, Some("k"), openai_body(text, false))
            .await
            .status(),
    ];
    assert_eq!(statuses.map(|s| s.as_u16()), [503, 503, 200, 200]);
    // A different id has its own counter.
    let other = "[sim fail=500 fail_times=1 id=other]";
    assert_eq!(
        openai(&sim, Some("k"), openai_body(other, false))
            .await
            .status(),
        500
    );
    assert_eq!(
        openai(&sim, Some("k"), openai_body(other, false))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn openai_parts_cut_and_malformed() {
    let sim = sim().await;
    let body = json!({
        "model": "gpt-4o",
        "stream": true,
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "q [sim tokens=6 cut_after=2]"}
        ]}],
    });
    let text = openai(&sim, None, body).await.text().await.unwrap();
    assert!(!text.contains("[DONE]"));
    assert!(!text.contains("finish_reason\":\"stop"));
    let events = sse(&text);
    assert_eq!(events.len(), 1 + 2);

    let text = openai(
        &sim,
        None,
        openai_body("[sim tokens=4 malformed_after=1]", true),
    )
    .await
    .text()
    .await
    .unwrap();
    let events = sse(&text);
    let bad = events
        .iter()
        .filter(|(_, d)| d != "[DONE]" && serde_json::from_str::<Value>(d).is_err())
        .count();
    assert_eq!(bad, 1);
    assert_eq!(events.last().unwrap().1, "[DONE]");
}

#[tokio::test]
async fn openai_models() {
    let sim = sim().await;
    let v: Value = client()
        .get(format!("{}/v1/models", sim.base_url()))
        .bearer_auth("k")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["object"], "model");
}

// ---------- Gemini ----------

async fn gemini(
    sim: &SimServer,
    key: Option<&str>,
    model_method: &str,
    body: Value,
) -> reqwest::Response {
    let mut req = client()
        .post(format!("{}/v1beta/models/{model_method}", sim.base_url()))
        .json(&body);
    if let Some(k) = key {
        req = req.header("x-goog-api-key", k);
    }
    req.send().await.unwrap()
}

fn gemini_body(text: &str) -> Value {
    json!({
        "systemInstruction": {"parts": [{"text": "sys"}]},
        "contents": [
            {"role": "user", "parts": [{"text": "earlier [sim tokens=1]"}]},
            {"role": "model", "parts": [{"text": "reply"}]},
            {"role": "user", "parts": [{"text": text}]},
        ],
    })
}

const G_STREAM: &str = "gemini-2.5-flash:streamGenerateContent?alt=sse";
const G_UNARY: &str = "gemini-2.5-flash:generateContent";

#[tokio::test]
async fn gemini_non_stream_shape() {
    let sim = sim().await;
    let resp = gemini(&sim, Some("g"), G_UNARY, gemini_body("hi")).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    let cand = &v["candidates"][0];
    assert_eq!(cand["content"]["role"], "model");
    assert_eq!(cand["content"]["parts"][0]["text"], expected(12));
    assert_eq!(cand["finishReason"], "STOP");
    assert_eq!(cand["index"], 0);
    // sys(3) + earlier [sim tokens=1](22) + reply(5) + hi(2) = 32 -> 8
    assert_eq!(v["usageMetadata"]["promptTokenCount"], 8);
    assert_eq!(v["usageMetadata"]["candidatesTokenCount"], 12);
    assert_eq!(v["usageMetadata"]["totalTokenCount"], 20);
}

#[tokio::test]
async fn gemini_stream_sse() {
    let sim = sim().await;
    let resp = gemini(&sim, Some("g"), G_STREAM, gemini_body("hi")).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(!text.contains("[DONE]"));
    let events = sse(&text);
    assert_eq!(events.len(), 12);
    let mut out = String::new();
    for (i, (_, data)) in events.iter().enumerate() {
        let v = json_of(data);
        let cand = &v["candidates"][0];
        assert_eq!(cand["content"]["role"], "model");
        out.push_str(cand["content"]["parts"][0]["text"].as_str().unwrap());
        if i == 11 {
            assert_eq!(cand["finishReason"], "STOP");
            assert_eq!(v["usageMetadata"]["candidatesTokenCount"], 12);
        } else {
            assert!(cand.get("finishReason").is_none());
        }
        assert_eq!(v["usageMetadata"]["promptTokenCount"], 8);
    }
    assert_eq!(out, expected(12));
}

#[tokio::test]
async fn gemini_stream_json_array_without_alt() {
    let sim = sim().await;
    let resp = gemini(
        &sim,
        Some("g"),
        "gemini-2.5-flash:streamGenerateContent",
        gemini_body("[sim tokens=3]"),
    )
    .await;
    let v: Value = resp.json().await.unwrap();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 3);
    assert_eq!(arr[2]["candidates"][0]["finishReason"], "STOP");
}

#[tokio::test]
async fn gemini_auth_errors() {
    let sim = sim().await;
    let resp = gemini(&sim, Some("AIza-invalid"), G_STREAM, gemini_body("hi")).await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], 400);
    assert_eq!(v["error"]["status"], "INVALID_ARGUMENT");
    assert_eq!(
        v["error"]["message"],
        "API key not valid. Please pass a valid API key."
    );
    // Key in the query string.
    let resp = client()
        .post(format!(
            "{}/v1beta/models/{G_UNARY}?key=good",
            sim.base_url()
        ))
        .json(&gemini_body("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = gemini(&sim, None, G_UNARY, gemini_body("hi")).await;
    assert_eq!(resp.status(), 403);
}

#[tokio::test]
async fn gemini_max_tokens_failures_cut_malformed() {
    let sim = sim().await;
    let mut body = gemini_body("x");
    body["generationConfig"] = json!({"maxOutputTokens": 2});
    let events = sse(&gemini(&sim, Some("g"), G_STREAM, body.clone())
        .await
        .text()
        .await
        .unwrap());
    assert_eq!(events.len(), 2);
    assert_eq!(
        json_of(&events[1].1)["candidates"][0]["finishReason"],
        "MAX_TOKENS"
    );
    let v: Value = gemini(&sim, Some("g"), G_UNARY, body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["candidates"][0]["finishReason"], "MAX_TOKENS");

    let resp = gemini(&sim, Some("g"), G_STREAM, gemini_body("[sim fail=429]")).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED");
    assert_eq!(v["error"]["code"], 429);
    let resp = gemini(&sim, Some("g"), G_STREAM, gemini_body("[sim fail=503]")).await;
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["status"], "UNAVAILABLE");

    let text = gemini(&sim, Some("g"), G_STREAM, gemini_body("[sim cut_after=12]"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(sse(&text).len(), 12);
    assert!(!text.contains("finishReason"));

    let events = sse(&gemini(
        &sim,
        Some("g"),
        G_STREAM,
        gemini_body("[sim tokens=3 malformed_after=0]"),
    )
    .await
    .text()
    .await
    .unwrap());
    assert_eq!(events.len(), 4);
    assert!(serde_json::from_str::<Value>(&events[0].1).is_err());
    assert_eq!(
        json_of(&events[3].1)["candidates"][0]["finishReason"],
        "STOP"
    );
}

#[tokio::test]
async fn gemini_models() {
    let sim = sim().await;
    let v: Value = client()
        .get(format!("{}/v1beta/models", sim.base_url()))
        .header("x-goog-api-key", "g")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        v["models"][0]["name"]
            .as_str()
            .unwrap()
            .starts_with("models/")
    );
}

// ---------- Ollama ----------

async fn ollama(sim: &SimServer, body: Value) -> reqwest::Response {
    client()
        .post(format!("{}/api/chat", sim.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn ollama_body(text: &str) -> Value {
    json!({"model": "llama3.2", "messages": [{"role": "user", "content": text}]})
}

fn ndjson(text: &str) -> Vec<Value> {
    text.lines().map(json_of).collect()
}

#[tokio::test]
async fn ollama_stream_is_default() {
    let sim = sim().await;
    let resp = ollama(&sim, ollama_body("hello!")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let lines = ndjson(&resp.text().await.unwrap());
    assert_eq!(lines.len(), 13);
    let mut text = String::new();
    for l in &lines[..12] {
        assert_eq!(l["model"], "llama3.2");
        assert!(l["created_at"].is_string());
        assert_eq!(l["message"]["role"], "assistant");
        assert_eq!(l["done"], false);
        text.push_str(l["message"]["content"].as_str().unwrap());
    }
    assert_eq!(text, expected(12));
    let last = &lines[12];
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "stop");
    assert_eq!(last["message"]["content"], "");
    assert_eq!(last["eval_count"], 12);
    assert_eq!(last["prompt_eval_count"], 2);
    assert!(last["total_duration"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn ollama_non_stream_and_num_predict() {
    let sim = sim().await;
    let mut body = ollama_body("hi");
    body["stream"] = json!(false);
    body["options"] = json!({"num_predict": 3});
    let v: Value = ollama(&sim, body).await.json().await.unwrap();
    assert_eq!(v["done"], true);
    assert_eq!(v["done_reason"], "length");
    assert_eq!(v["message"]["content"], "tok0 tok1 tok2 ");
    assert_eq!(v["eval_count"], 3);
    assert_eq!(v["prompt_eval_count"], 1);
}

#[tokio::test]
async fn ollama_failures_cut_malformed_auth() {
    let sim = sim().await;
    let resp = ollama(&sim, ollama_body("[sim fail=500]")).await;
    assert_eq!(resp.status(), 500);
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"].is_string());

    let resp = ollama(&sim, ollama_body("[sim fail=429 retry_after=3]")).await;
    assert_eq!(resp.headers()["retry-after"], "3");

    let text = ollama(&sim, ollama_body("[sim cut_after=4]"))
        .await
        .text()
        .await
        .unwrap();
    let lines = ndjson(&text);
    assert_eq!(lines.len(), 4);
    assert!(lines.iter().all(|l| l["done"] == false));

    let text = ollama(&sim, ollama_body("[sim tokens=2 malformed_after=1]"))
        .await
        .text()
        .await
        .unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4);
    assert!(serde_json::from_str::<Value>(lines[1]).is_err());
    assert_eq!(json_of(lines[3])["done"], true);

    let resp = client()
        .post(format!("{}/api/chat", sim.base_url()))
        .bearer_auth("invalid-key")
        .json(&ollama_body("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"].is_string());

    let resp = ollama(&sim, json!({"messages": []})).await;
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn ollama_tags_and_version() {
    let sim = sim().await;
    let v: Value = client()
        .get(format!("{}/api/tags", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let m = &v["models"][0];
    for field in ["name", "model", "size", "digest", "details"] {
        assert!(!m[field].is_null(), "{field}");
    }
    let v: Value = client()
        .get(format!("{}/api/version", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(v["version"].is_string());
}

// ---------- Cross-cutting ----------

#[tokio::test]
async fn summary_mode() {
    let sim = sim().await;
    let v: Value = openai(
        &sim,
        None,
        openai_body("Please Summarize this thread", false),
    )
    .await
    .json()
    .await
    .unwrap();
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(text.split_whitespace().count(), 400);
    assert_eq!(v["usage"]["completion_tokens"], 400);
    assert!(text.starts_with("Sentence 1 covers the topic with clear detail. Sentence 2 "));
    assert!(text.trim_end().ends_with('.'));

    // System prompt trigger, streamed one word per token, with a directive.
    let body = json!({
        "model": "claude-sonnet-4-20250514",
        "max_tokens": 1000,
        "stream": true,
        "system": [{"type": "text", "text": "You SUMMARIZE conversations."}],
        "messages": [{"role": "user", "content": "thread... [sim summary_words=12]"}],
    });
    let events = sse(&anthropic(&sim, Some("k"), body).await.text().await.unwrap());
    let words: Vec<String> = events
        .iter()
        .filter(|(n, _)| n.as_deref() == Some("content_block_delta"))
        .map(|(_, d)| json_of(d)["delta"]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(words.len(), 12);
    assert!(words.iter().all(|w| w.trim().split(' ').count() == 1));
    assert_eq!(words[7], "detail. ");
    assert_eq!(words[11], "the. ");
}

#[tokio::test]
async fn recording_without_keys() {
    let sim = sim().await;
    anthropic(&sim, Some("secret-ant-key"), anthropic_body("a", true))
        .await
        .text()
        .await
        .unwrap();
    openai(&sim, None, openai_body("b", false)).await;
    gemini(&sim, Some("secret-goog-key"), G_STREAM, gemini_body("c"))
        .await
        .text()
        .await
        .unwrap();
    ollama(&sim, ollama_body("d")).await.text().await.unwrap();

    let recs = sim.requests();
    let summary: Vec<(&str, &str, Option<&str>, bool, bool)> = recs
        .iter()
        .map(|r| {
            (
                r.provider.as_str(),
                r.path.as_str(),
                r.model.as_deref(),
                r.stream,
                r.has_key,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "anthropic",
                "/v1/messages",
                Some("claude-sonnet-4-20250514"),
                true,
                true
            ),
            (
                "openai",
                "/v1/chat/completions",
                Some("gpt-4o"),
                false,
                false
            ),
            (
                "google",
                "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
                Some("gemini-2.5-flash"),
                true,
                true
            ),
            ("ollama", "/api/chat", Some("llama3.2"), true, false),
        ]
    );
    assert_eq!(recs[1].body["messages"][1]["content"], "b");

    let raw = client()
        .get(format!("{}/_sim/requests", sim.base_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!raw.contains("secret"));
    assert!(raw.contains("\"hasKey\":true"));
    let parsed: Vec<RecordedRequest> = serde_json::from_str(&raw).unwrap();
    assert_eq!(parsed.len(), 4);

    let resp = client()
        .delete(format!("{}/_sim/requests", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    assert!(sim.requests().is_empty());
    openai(&sim, None, openai_body("e", false)).await;
    assert_eq!(sim.requests().len(), 1);
    sim.clear_requests();
    assert!(sim.requests().is_empty());

    let health = client()
        .get(format!("{}/_sim/health", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    sim.shutdown().await;
}

#[tokio::test]
async fn record_ring_is_bounded() {
    let sim = SimServer::start(SimConfig {
        record: 2,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    for t in ["1", "2", "3"] {
        openai(&sim, None, openai_body(t, false)).await;
    }
    let recs = sim.requests();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0].body["messages"][1]["content"], "2");
    assert_eq!(recs[1].body["messages"][1]["content"], "3");
}

#[tokio::test]
async fn timing_knobs() {
    let sim = SimServer::start(SimConfig {
        ttft: Duration::from_millis(80),
        gap: Duration::from_millis(15),
        reply_tokens: 3,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let started = Instant::now();
    let resp = openai(&sim, None, openai_body("x", true)).await;
    let headers_at = started.elapsed();
    assert!(headers_at < Duration::from_millis(70), "{headers_at:?}");
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::new();
    let mut first_token_at = None;
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk.unwrap());
        if first_token_at.is_none() && String::from_utf8_lossy(&buf).contains("tok0") {
            first_token_at = Some(started.elapsed());
        }
    }
    let total = started.elapsed();
    assert!(first_token_at.unwrap() >= Duration::from_millis(80));
    assert!(total >= Duration::from_millis(80 + 2 * 15));

    // Per-request header delay.
    let started = Instant::now();
    let resp = ollama(&sim, ollama_body("[sim header_delay=60 ttft=0 gap=0]")).await;
    assert!(started.elapsed() >= Duration::from_millis(60));
    assert_eq!(ndjson(&resp.text().await.unwrap()).len(), 4);
    sim.shutdown().await;
}

#[tokio::test]
async fn many_concurrent_streams() {
    let sim = sim().await;
    let c = client();
    let url = format!("{}/v1/chat/completions", sim.base_url());
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let c = c.clone();
            let url = url.clone();
            tokio::spawn(async move {
                c.post(url)
                    .json(&openai_body("x", true))
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap()
            })
        })
        .collect();
    for t in tasks {
        let text = t.await.unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"));
    }
}

#[tokio::test]
async fn shutdown_is_prompt() {
    let sim = sim().await;
    let started = Instant::now();
    sim.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
}
