//! HTTP-level tests against a tiny in-process axum server: status mapping, retries, cut-off and
//! idle streams, redirects, and which key header goes out.
#![expect(
    clippy::unwrap_used,
    reason = "test fixtures: a broken fixture must stop the test at once"
)]

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use polylogue_providers::{
    ChatMessage, CompletionRequest, HttpSettings, Provider, ProviderError, ProviderKind,
    RetryPolicy, Role, SecretString, StreamEvent, generate_with_retry, http_client, provider,
    stream_with_retry, validate_base_url,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const KEY: &str = "sk-test-key-0123456789";

const ANTHROPIC_SSE: &str = "event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" there\"}}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":2}}\n\n\
event: message_stop\n\
data: {\"type\":\"message_stop\"}\n\n";

const OPENAI_SSE: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"finish_reason\":null}]}\n\n\
data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n\
data: [DONE]\n\n";

const GEMINI_SSE: &str = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Yo\"}],\"role\":\"model\"},\"finishReason\":\"STOP\"}],\"usageMetadata\":{\"promptTokenCount\":2,\"candidatesTokenCount\":1}}\r\n\r\n";

const OLLAMA_NDJSON: &str = "{\"message\":{\"role\":\"assistant\",\"content\":\"Moin\"},\"done\":false}\n\
{\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\",\"prompt_eval_count\":4,\"eval_count\":1}\n";

/// What the server saw: path with query, and headers, per request.
#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<(String, HeaderMap, Bytes)>>,
}

impl Seen {
    fn hits(&self, prefix: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _, _)| p.starts_with(prefix))
            .count()
    }

    fn last(&self, prefix: &str) -> (String, HeaderMap, Bytes) {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(p, _, _)| p.starts_with(prefix))
            .cloned()
            .unwrap()
    }
}

fn sse(body: &'static str) -> Response {
    ([("content-type", "text/event-stream")], body).into_response()
}

async fn handle(
    State(seen): State<Arc<Seen>>,
    _method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    seen.requests
        .lock()
        .unwrap()
        .push((path.clone(), headers, body));
    let scenario = path.trim_start_matches('/').split('/').next().unwrap_or("");
    match scenario {
        "anthropic" => sse(ANTHROPIC_SSE),
        "openai" if path.ends_with("/models") => (StatusCode::OK, "{\"data\":[]}").into_response(),
        "openai" if path.contains("nostream") => (
            StatusCode::OK,
            [("content-type", "application/json")],
            r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"Whole"},"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":1}}"#,
        )
            .into_response(),
        "openai" => sse(OPENAI_SSE),
        "gemini" => sse(GEMINI_SSE),
        "ollama" if path.ends_with("/api/tags") => {
            (StatusCode::OK, "{\"models\":[]}").into_response()
        }
        "ollama" => (
            [("content-type", "application/x-ndjson")],
            OLLAMA_NDJSON,
        )
            .into_response(),
        "s401" => (
            StatusCode::UNAUTHORIZED,
            format!(
                r#"{{"type":"error","error":{{"type":"authentication_error","message":"invalid x-api-key {KEY}"}}}}"#
            ),
        )
            .into_response(),
        "s429" => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "7")],
            r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#,
        )
            .into_response(),
        "s400" => (
            StatusCode::BAD_REQUEST,
            r#"{"error":{"message":"max_tokens is too large","type":"invalid_request_error"}}"#,
        )
            .into_response(),
        "s500" => (StatusCode::INTERNAL_SERVER_ERROR, "upstream exploded").into_response(),
        "flaky" => {
            if seen.hits("/flaky") == 1 {
                (StatusCode::SERVICE_UNAVAILABLE, "try again").into_response()
            } else {
                sse(OPENAI_SSE)
            }
        }
        "cut" => sse(&ANTHROPIC_SSE[..ANTHROPIC_SSE.find("event: message_delta").unwrap()]),
        "redirect" => (
            StatusCode::TEMPORARY_REDIRECT,
            [("location", "/target/v1/messages")],
        )
            .into_response(),
        "target" => sse(ANTHROPIC_SSE),
        "idle" => {
            let first = futures::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from(
                "data: {\"choices\":[{\"delta\":{\"content\":\"one\"}}]}\n\n",
            ))]);
            let stall = futures::stream::once(async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                Ok(Bytes::from("data: [DONE]\n\n"))
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(first.chain(stall)))
                .unwrap()
        }
        "slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            sse(OPENAI_SSE)
        }
        _ => (StatusCode::NOT_FOUND, "no such scenario").into_response(),
    }
}

struct Server {
    base: String,
    seen: Arc<Seen>,
}

async fn server() -> Server {
    let seen = Arc::new(Seen::default());
    let app = Router::new().fallback(handle).with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Server {
        base: format!("http://{addr}"),
        seen,
    }
}

fn settings() -> HttpSettings {
    HttpSettings {
        connect_timeout: Duration::from_secs(1),
        header_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_secs(2),
        pool_idle_per_host: 4,
    }
}

fn client(kind: ProviderKind, base: &str) -> Arc<dyn Provider> {
    let s = settings();
    let url = validate_base_url(base, true).unwrap();
    provider(kind, url, http_client(&s).unwrap(), &s)
}

fn req() -> CompletionRequest {
    CompletionRequest {
        model: "test-model".into(),
        system: Some("be nice".into()),
        messages: vec![ChatMessage {
            role: Role::User,
            content: "hello".into(),
        }],
        temperature: Some(0.3),
        max_tokens: 16,
        num_ctx: Some(2048),
    }
}

fn key() -> SecretString {
    SecretString::from(KEY)
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
    }
}

async fn collect(
    p: &dyn Provider,
    key: Option<&SecretString>,
) -> Vec<Result<StreamEvent, ProviderError>> {
    p.stream(key, &req()).await.unwrap().collect().await
}

fn tokens(items: &[Result<StreamEvent, ProviderError>]) -> String {
    items
        .iter()
        .filter_map(|i| match i {
            Ok(StreamEvent::Token(t)) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

fn assert_no_key(err: &ProviderError, kind: ProviderKind) {
    assert!(!format!("{err:?}").contains(KEY));
    assert!(!err.to_string().contains(KEY));
    assert!(!err.to_api_error(kind).message.contains(KEY));
}

#[tokio::test]
async fn anthropic_stream_sends_its_headers_and_body() {
    let s = server().await;
    let p = client(ProviderKind::Anthropic, &format!("{}/anthropic", s.base));
    let k = key();
    let items = collect(p.as_ref(), Some(&k)).await;
    assert_eq!(tokens(&items), "Hi there");
    assert!(
        matches!(items.last(), Some(Ok(StreamEvent::Done { finish_reason: Some(r) })) if r == "end_turn")
    );
    let (path, headers, body) = s.seen.last("/anthropic");
    assert_eq!(path, "/anthropic/v1/messages");
    assert_eq!(headers["x-api-key"], KEY);
    assert_eq!(headers["anthropic-version"], "2023-06-01");
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["system"], "be nice");
    assert_eq!(body["stream"], true);
    assert_eq!(body["max_tokens"], 16);
}

#[tokio::test]
async fn gemini_key_goes_in_the_header_never_the_query() {
    let s = server().await;
    let p = client(ProviderKind::Google, &format!("{}/gemini", s.base));
    let k = key();
    let items = collect(p.as_ref(), Some(&k)).await;
    assert_eq!(tokens(&items), "Yo");
    let (path, headers, _) = s.seen.last("/gemini");
    assert_eq!(
        path,
        "/gemini/v1beta/models/test-model:streamGenerateContent?alt=sse"
    );
    assert!(!path.contains(KEY));
    assert_eq!(headers["x-goog-api-key"], KEY);
}

#[tokio::test]
async fn openai_bearer_and_compatible_without_key() {
    let s = server().await;
    let k = key();
    let p = client(ProviderKind::OpenAi, &format!("{}/openai/v1", s.base));
    let items = collect(p.as_ref(), Some(&k)).await;
    assert_eq!(tokens(&items), "Hello");
    let (path, headers, body) = s.seen.last("/openai");
    assert_eq!(path, "/openai/v1/chat/completions");
    assert_eq!(headers["authorization"], format!("Bearer {KEY}"));
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["stream_options"]["include_usage"], true);
    assert_eq!(body["max_completion_tokens"], 16);

    // OpenAI itself needs a key; no request is made without one.
    let before = s.seen.hits("/openai");
    assert!(matches!(
        p.stream(None, &req()).await,
        Err(ProviderError::InvalidKey { .. })
    ));
    assert_eq!(s.seen.hits("/openai"), before);

    let p = client(
        ProviderKind::OpenAiCompatible,
        &format!("{}/openai/v1", s.base),
    );
    let items = collect(p.as_ref(), None).await;
    assert_eq!(tokens(&items), "Hello");
    let (_, headers, body) = s.seen.last("/openai");
    assert!(headers.get("authorization").is_none());
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["max_tokens"], 16);

    let p = client(ProviderKind::OpenAi, &format!("{}/openai/nostream", s.base));
    let (c, attempts) = generate_with_retry(p.as_ref(), Some(&k), &req(), &fast_retry())
        .await
        .unwrap();
    assert_eq!((c.content.as_str(), attempts), ("Whole", 1));
    assert_eq!(c.usage.input_tokens, Some(7));
}

#[tokio::test]
async fn ollama_stream_and_status() {
    let s = server().await;
    let p = client(ProviderKind::Ollama, &format!("{}/ollama", s.base));
    let items = collect(p.as_ref(), None).await;
    assert_eq!(tokens(&items), "Moin");
    assert!(matches!(items.last(), Some(Ok(StreamEvent::Done { .. }))));
    let (path, _, body) = s.seen.last("/ollama");
    assert_eq!(path, "/ollama/api/chat");
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["options"]["num_ctx"], 2048);
    assert_eq!(body["messages"][0]["role"], "system");
    p.status(None).await.unwrap();
    assert_eq!(s.seen.last("/ollama").0, "/ollama/api/tags");
}

#[tokio::test]
async fn status_401_is_invalid_key_and_never_echoes_it() {
    let s = server().await;
    let k = key();
    let p = client(ProviderKind::Anthropic, &format!("{}/s401", s.base));
    let err = p.generate(Some(&k), &req()).await.unwrap_err();
    assert!(
        matches!(&err, ProviderError::InvalidKey { message } if message.contains("invalid x-api-key"))
    );
    assert_no_key(&err, ProviderKind::Anthropic);
    let err = p.stream(Some(&k), &req()).await.err().unwrap();
    assert!(matches!(err, ProviderError::InvalidKey { .. }));
    let api = err.to_api_error(ProviderKind::Anthropic);
    assert_eq!(api.code.http_status(), 422);
    assert!(matches!(
        p.verify_key(&k).await,
        Err(ProviderError::InvalidKey { .. })
    ));
    // Without a key a 401 from the models list still proves the server is reachable.
    p.status(None).await.unwrap();
    assert!(p.status(Some(&k)).await.is_err());
}

#[tokio::test]
async fn status_429_carries_retry_after_and_is_not_retried() {
    let s = server().await;
    let k = key();
    let p = client(ProviderKind::OpenAi, &format!("{}/s429", s.base));
    let err = stream_with_retry(p.as_ref(), Some(&k), &req(), &fast_retry())
        .await
        .err()
        .unwrap();
    assert!(matches!(
        &err,
        ProviderError::RateLimited { retry_after: Some(d), message } if *d == Duration::from_secs(7) && message == "Rate limit reached"
    ));
    assert_eq!(s.seen.hits("/s429"), 1);
    let api = err.to_api_error(ProviderKind::OpenAi);
    assert_eq!(api.details, Some(serde_json::json!({"retryAfter": 7})));
}

#[tokio::test]
async fn status_400_is_bad_request_with_the_provider_message() {
    let s = server().await;
    let k = key();
    let p = client(ProviderKind::OpenAi, &format!("{}/s400", s.base));
    let err = p.generate(Some(&k), &req()).await.unwrap_err();
    assert_eq!(
        err,
        ProviderError::BadRequest {
            status: 400,
            message: "max_tokens is too large".into()
        }
    );
}

#[tokio::test]
async fn status_500_is_retried_then_unavailable() {
    let s = server().await;
    let k = key();
    let p = client(ProviderKind::Anthropic, &format!("{}/s500", s.base));
    let policy = fast_retry();
    let err = stream_with_retry(p.as_ref(), Some(&k), &req(), &policy)
        .await
        .err()
        .unwrap();
    assert!(matches!(
        err,
        ProviderError::Unavailable {
            status: Some(500),
            ..
        }
    ));
    assert_eq!(s.seen.hits("/s500"), policy.max_attempts as usize);
    let err = generate_with_retry(p.as_ref(), Some(&k), &req(), &policy)
        .await
        .err()
        .unwrap();
    assert!(matches!(
        err,
        ProviderError::Unavailable {
            status: Some(500),
            ..
        }
    ));
    assert_eq!(s.seen.hits("/s500"), 2 * policy.max_attempts as usize);
}

#[tokio::test]
async fn one_503_then_success_takes_two_attempts() {
    let s = server().await;
    let k = key();
    let p = client(ProviderKind::OpenAi, &format!("{}/flaky", s.base));
    let (stream, attempts) = stream_with_retry(p.as_ref(), Some(&k), &req(), &fast_retry())
        .await
        .unwrap();
    assert_eq!(attempts, 2);
    let items: Vec<_> = stream.collect().await;
    assert_eq!(tokens(&items), "Hello");
    assert!(matches!(items.last(), Some(Ok(StreamEvent::Done { .. }))));
}

#[tokio::test]
async fn cut_off_stream_ends_with_a_protocol_error() {
    let s = server().await;
    let k = key();
    let p = client(ProviderKind::Anthropic, &format!("{}/cut", s.base));
    let items = collect(p.as_ref(), Some(&k)).await;
    assert_eq!(tokens(&items), "Hi there");
    assert!(matches!(
        items.last(),
        Some(Err(ProviderError::Protocol { .. }))
    ));
    // After the first token nothing is retried: the error reaches the caller in the stream.
    let (stream, attempts) = stream_with_retry(p.as_ref(), Some(&k), &req(), &fast_retry())
        .await
        .unwrap();
    assert_eq!(attempts, 1);
    let items: Vec<_> = stream.collect().await;
    assert!(matches!(
        items.last(),
        Some(Err(ProviderError::Protocol { .. }))
    ));
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let s = server().await;
    let k = key();
    let p = client(ProviderKind::Anthropic, &format!("{}/redirect", s.base));
    let err = p.stream(Some(&k), &req()).await.err().unwrap();
    assert!(matches!(err, ProviderError::BadRequest { status: 307, .. }));
    assert!(!err.retryable());
    assert_eq!(s.seen.hits("/target"), 0);
}

#[tokio::test]
async fn idle_stream_times_out() {
    let s = server().await;
    let k = key();
    let p = client(ProviderKind::OpenAi, &format!("{}/idle", s.base));
    let started = std::time::Instant::now();
    let items = collect(p.as_ref(), Some(&k)).await;
    assert_eq!(tokens(&items), "one");
    assert!(matches!(
        items.last(),
        Some(Err(ProviderError::Timeout { .. }))
    ));
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn slow_headers_time_out() {
    let s = server().await;
    let k = key();
    let p = client(ProviderKind::OpenAi, &format!("{}/slow", s.base));
    let started = std::time::Instant::now();
    let err = p.stream(Some(&k), &req()).await.err().unwrap();
    assert!(matches!(err, ProviderError::Timeout { .. }));
    assert!(err.retryable());
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn connection_refused_is_unavailable_without_the_url() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let k = key();
    let p = client(ProviderKind::Google, &format!("http://{addr}/refused"));
    let err = p.stream(Some(&k), &req()).await.err().unwrap();
    assert!(
        matches!(err, ProviderError::Unavailable { status: None, .. }),
        "{err:?}"
    );
    let text = format!("{err:?} {err}");
    assert!(
        !text.contains("/refused") && !text.contains(&addr.to_string()),
        "{text}"
    );
    assert_no_key(&err, ProviderKind::Google);
    assert!(matches!(
        p.status(None).await,
        Err(ProviderError::Unavailable { .. })
    ));
}
