//! OpenAI Chat Completions API (`POST /v1/chat/completions`, `GET /v1/models`).

use axum::extract::State as AxState;
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::RecordedRequest;
use crate::common::{
    Key, St, bearer, broken_json_response, content_text, delay, header_delay, injected_failure,
    json_response, next_id, parse_body, stream_response, u64_field, unix_now, with_header,
    with_retry_after,
};
use crate::directives::Directives;
use crate::reply::{Frames, Plan, Prompt, json_bytes, write_json_str};

const MODELS: [&str; 4] = ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "o3-mini"];

/// An OpenAI error response.
pub(crate) fn error(
    status: u16,
    message: &str,
    kind: &str,
    code: Option<&str>,
    retry_after: Option<u64>,
) -> Response {
    let body = json!({
        "error": {"message": message, "type": kind, "param": null, "code": code},
    });
    with_retry_after(json_response(status, &body), retry_after)
}

fn failure(status: u16, retry_after: Option<u64>) -> Response {
    let (message, kind, code) = match status {
        400 => (
            "Invalid request (simulated).",
            "invalid_request_error",
            None,
        ),
        401 => (
            "Incorrect API key provided.",
            "invalid_request_error",
            Some("invalid_api_key"),
        ),
        429 => (
            "Rate limit reached for requests (simulated).",
            "requests",
            Some("rate_limit_exceeded"),
        ),
        503 | 529 => (
            "The engine is currently overloaded, please try again later.",
            "server_error",
            None,
        ),
        _ => (
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
        ),
    };
    error(status, message, kind, code, retry_after)
}

fn auth_error(key: Key) -> Response {
    if key == Key::Missing {
        error(
            401,
            "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            "invalid_request_error",
            None,
            None,
        )
    } else {
        error(
            401,
            "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            Some("invalid_api_key"),
            None,
        )
    }
}

fn prompt(body: &Value) -> Prompt {
    let mut p = Prompt::default();
    let mut text = String::new();
    if let Some(Value::Array(messages)) = body.get("messages") {
        for m in messages {
            text.clear();
            if let Some(c) = m.get("content") {
                content_text(c, &mut text);
            }
            p.add(&text);
            match m.get("role").and_then(Value::as_str) {
                Some("user") => p.last_user.clone_from(&text),
                Some("system" | "developer") => p.system.push_str(&text),
                _ => {}
            }
        }
    }
    p
}

fn validate(body: &Value) -> Option<&'static str> {
    if !body.is_object() {
        return Some(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly.)",
        );
    }
    if !body.get("model").is_some_and(Value::is_string) {
        return Some("you must provide a model parameter");
    }
    match body.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => None,
        Some(Value::Array(_)) => Some("[] is too short - 'messages'"),
        _ => Some("Missing required parameter: 'messages'."),
    }
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(
    AxState(state): St,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let key = Key::classify(bearer(&headers));
    let body = parse_body(&raw);
    let prompt = prompt(&body);
    let d = Directives::parse(&prompt.last_user);
    let model = body.get("model").and_then(Value::as_str).map(str::to_owned);
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let max_tokens =
        u64_field(&body, "max_completion_tokens").or_else(|| u64_field(&body, "max_tokens"));
    let invalid = validate(&body);
    state.record(RecordedRequest {
        provider: "openai".into(),
        path: "/v1/chat/completions".into(),
        model: model.clone(),
        stream,
        has_key: key.present(),
        body,
    });
    delay(header_delay(&state, &d)).await;
    let request_id = format!("req_sim{:020}", next_id(&state));
    let auth_failed =
        key == Key::Invalid || (key == Key::Missing && state.options.require_auth_openai);
    let resp = if auth_failed {
        Some(auth_error(key))
    } else if let Some(msg) = invalid {
        Some(error(400, msg, "invalid_request_error", None, None))
    } else {
        injected_failure(&state, &d).map(|f| failure(f.status, f.retry_after))
    };
    if let Some(resp) = resp {
        return with_header(resp, "x-request-id", &request_id);
    }

    let plan = Plan::new(&state.config, &d, &prompt, max_tokens);
    let id = format!("chatcmpl-sim{:020}", next_id(&state));
    let model = model.unwrap_or_default();
    let created = unix_now();
    let resp = if stream {
        let frames = OpenAiFrames::new(&id, &model, created, include_usage, plan.input_tokens);
        stream_response(frames, plan, "text/event-stream; charset=utf-8")
    } else {
        delay(plan.generation_time()).await;
        let body = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": plan.reply.text(plan.count),
                    "refusal": null,
                    "annotations": [],
                },
                "logprobs": null,
                "finish_reason": finish_reason(plan.hit_max),
            }],
            "usage": usage(plan.input_tokens, plan.count),
            "service_tier": "default",
            "system_fingerprint": "fp_sim",
        });
        if plan.broken() {
            broken_json_response(&body)
        } else {
            json_response(200, &body)
        }
    };
    with_header(resp, "x-request-id", &request_id)
}

fn finish_reason(hit_max: bool) -> &'static str {
    if hit_max { "length" } else { "stop" }
}

fn usage(prompt_tokens: u32, completion_tokens: u32) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": u64::from(prompt_tokens) + u64::from(completion_tokens),
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    })
}

struct OpenAiFrames {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    input_tokens: u32,
    /// `data: {...,"choices":[{"index":0,"delta":`
    prefix: Vec<u8>,
    /// `},"logprobs":null,"finish_reason":null}]...}\n\n`
    token_suffix: Vec<u8>,
}

impl OpenAiFrames {
    fn new(id: &str, model: &str, created: u64, include_usage: bool, input_tokens: u32) -> Self {
        let mut prefix = b"data: {\"id\":".to_vec();
        write_json_str(&mut prefix, id);
        prefix.extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
        crate::reply::write_u64(&mut prefix, created);
        prefix.extend_from_slice(b",\"model\":");
        write_json_str(&mut prefix, model);
        prefix.extend_from_slice(
            b",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_sim\",\"choices\":[{\"index\":0,\"delta\":",
        );
        let mut token_suffix = b",\"logprobs\":null,\"finish_reason\":null}]".to_vec();
        if include_usage {
            token_suffix.extend_from_slice(b",\"usage\":null");
        }
        token_suffix.extend_from_slice(b"}\n\n");
        Self {
            id: id.to_owned(),
            model: model.to_owned(),
            created,
            include_usage,
            input_tokens,
            prefix,
            token_suffix,
        }
    }
}

impl Frames for OpenAiFrames {
    fn head(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(b"{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null}");
        out.extend_from_slice(&self.token_suffix);
    }

    fn token(&mut self, _index: u32, text: &str, _last: bool, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(b"{\"content\":");
        write_json_str(out, text);
        out.push(b'}');
        out.extend_from_slice(&self.token_suffix);
    }

    fn malformed(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"data: {\"oops\n\n");
    }

    fn tail(&mut self, emitted: u32, hit_max: bool, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(b"{},\"logprobs\":null,\"finish_reason\":\"");
        out.extend_from_slice(finish_reason(hit_max).as_bytes());
        out.extend_from_slice(b"\"}]");
        if self.include_usage {
            out.extend_from_slice(b",\"usage\":null");
        }
        out.extend_from_slice(b"}\n\n");
        if self.include_usage {
            let chunk = json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "service_tier": "default",
                "system_fingerprint": "fp_sim",
                "choices": [],
                "usage": usage(self.input_tokens, emitted),
            });
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(&json_bytes(&chunk));
            out.extend_from_slice(b"\n\n");
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
    }
}

/// `GET /v1/models` (OpenAI flavour).
pub(crate) async fn list_models(AxState(state): St, headers: HeaderMap) -> Response {
    let key = Key::classify(bearer(&headers));
    if key == Key::Invalid || (key == Key::Missing && state.options.require_auth_openai) {
        return auth_error(key);
    }
    let data: Vec<Value> = MODELS
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 1_715_367_049, "owned_by": "openai"}))
        .collect();
    json_response(200, &json!({"object": "list", "data": data}))
}
