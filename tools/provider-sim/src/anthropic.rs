//! Anthropic Messages API (`POST /v1/messages`, `GET /v1/models`).

use axum::extract::State as AxState;
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::RecordedRequest;
use crate::common::{
    Key, St, broken_json_response, content_text, delay, header_delay, header_str, injected_failure,
    json_response, next_id, parse_body, stream_response, u64_field, with_header, with_retry_after,
};
use crate::directives::Directives;
use crate::reply::{Frames, Plan, Prompt, write_json_str, write_u64};

const MODELS: [(&str, &str, &str); 3] = [
    (
        "claude-sonnet-4-20250514",
        "Claude Sonnet 4",
        "2025-05-22T00:00:00Z",
    ),
    (
        "claude-opus-4-20250514",
        "Claude Opus 4",
        "2025-05-22T00:00:00Z",
    ),
    (
        "claude-3-5-haiku-20241022",
        "Claude Haiku 3.5",
        "2024-10-22T00:00:00Z",
    ),
];

/// An Anthropic error response.
pub(crate) fn error(status: u16, message: &str, retry_after: Option<u64>) -> Response {
    let kind = match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    let body = json!({
        "type": "error",
        "error": {"type": kind, "message": message},
    });
    with_retry_after(json_response(status, &body), retry_after)
}

fn failure_message(status: u16) -> &'static str {
    match status {
        429 => "Number of request tokens has exceeded your per-minute rate limit (simulated)",
        529 => "Overloaded",
        400 => "Invalid request (simulated)",
        401 => "invalid x-api-key",
        _ => "Internal server error",
    }
}

fn prompt(body: &Value) -> Prompt {
    let mut p = Prompt::default();
    if let Some(system) = body.get("system") {
        content_text(system, &mut p.system);
        p.bytes += p.system.len();
    }
    let mut text = String::new();
    if let Some(Value::Array(messages)) = body.get("messages") {
        for m in messages {
            text.clear();
            if let Some(c) = m.get("content") {
                content_text(c, &mut text);
            }
            p.add(&text);
            if m.get("role").and_then(Value::as_str) == Some("user") {
                p.last_user.clone_from(&text);
            }
        }
    }
    p
}

fn validate(body: &Value) -> Option<&'static str> {
    if !body.is_object() {
        return Some("There was an issue with the format of your request: invalid JSON body");
    }
    if !body.get("model").is_some_and(Value::is_string) {
        return Some("model: Field required");
    }
    if !body.get("messages").is_some_and(Value::is_array) {
        return Some("messages: Field required");
    }
    if u64_field(body, "max_tokens").is_none() {
        return Some("max_tokens: Field required");
    }
    None
}

/// `POST /v1/messages`.
pub(crate) async fn messages(AxState(state): St, headers: HeaderMap, raw: Bytes) -> Response {
    let key = Key::classify(header_str(&headers, "x-api-key"));
    let body = parse_body(&raw);
    let prompt = prompt(&body);
    let d = Directives::parse(&prompt.last_user);
    let model = body.get("model").and_then(Value::as_str).map(str::to_owned);
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let max_tokens = u64_field(&body, "max_tokens");
    let invalid = validate(&body);
    state.record(RecordedRequest {
        provider: "anthropic".into(),
        path: "/v1/messages".into(),
        model: model.clone(),
        stream,
        has_key: key.present(),
        body,
    });
    delay(header_delay(&state, &d)).await;
    let request_id = format!("req_sim{:020}", next_id(&state));
    let resp = match key {
        Key::Missing => Some(error(401, "x-api-key header is required", None)),
        Key::Invalid => Some(error(401, "invalid x-api-key", None)),
        Key::Valid => invalid.map(|msg| error(400, msg, None)),
    }
    .or_else(|| {
        injected_failure(&state, &d)
            .map(|f| error(f.status, failure_message(f.status), f.retry_after))
    });
    if let Some(resp) = resp {
        return with_header(resp, "request-id", &request_id);
    }

    let plan = Plan::new(&state.config, &d, &prompt, max_tokens);
    let id = format!("msg_sim{:020}", next_id(&state));
    let model = model.unwrap_or_default();
    let resp = if stream {
        let frames = AnthropicFrames {
            id,
            model,
            input_tokens: plan.input_tokens,
        };
        stream_response(frames, plan, "text/event-stream; charset=utf-8")
    } else {
        delay(plan.generation_time()).await;
        let body = json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": plan.reply.text(plan.count)}],
            "stop_reason": stop_reason(plan.hit_max),
            "stop_sequence": null,
            "usage": {
                "input_tokens": plan.input_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": plan.count,
            },
        });
        if plan.broken() {
            broken_json_response(&body)
        } else {
            json_response(200, &body)
        }
    };
    with_header(resp, "request-id", &request_id)
}

fn stop_reason(hit_max: bool) -> &'static str {
    if hit_max { "max_tokens" } else { "end_turn" }
}

struct AnthropicFrames {
    id: String,
    model: String,
    input_tokens: u32,
}

impl Frames for AnthropicFrames {
    fn head(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(
            b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":",
        );
        write_json_str(out, &self.id);
        out.extend_from_slice(b",\"type\":\"message\",\"role\":\"assistant\",\"model\":");
        write_json_str(out, &self.model);
        out.extend_from_slice(
            b",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":",
        );
        write_u64(out, u64::from(self.input_tokens));
        out.extend_from_slice(
            b",\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":1}}}\n\n",
        );
        out.extend_from_slice(
            b"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        );
        out.extend_from_slice(b"event: ping\ndata: {\"type\":\"ping\"}\n\n");
    }

    fn token(&mut self, _index: u32, text: &str, _last: bool, out: &mut Vec<u8>) {
        out.extend_from_slice(
            b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":",
        );
        write_json_str(out, text);
        out.extend_from_slice(b"}}\n\n");
    }

    fn malformed(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"event: content_block_delta\ndata: {\"oops\n\n");
    }

    fn tail(&mut self, emitted: u32, hit_max: bool, out: &mut Vec<u8>) {
        out.extend_from_slice(
            b"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        );
        out.extend_from_slice(
            b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"",
        );
        out.extend_from_slice(stop_reason(hit_max).as_bytes());
        out.extend_from_slice(b"\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":");
        write_u64(out, u64::from(emitted));
        out.extend_from_slice(b"}}\n\n");
        out.extend_from_slice(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    }
}

/// `GET /v1/models` (Anthropic flavour).
pub(crate) async fn list_models(_state: St, headers: HeaderMap) -> Response {
    match Key::classify(header_str(&headers, "x-api-key")) {
        Key::Missing => return error(401, "x-api-key header is required", None),
        Key::Invalid => return error(401, "invalid x-api-key", None),
        Key::Valid => {}
    }
    let data: Vec<Value> = MODELS
        .iter()
        .map(|(id, name, created)| {
            json!({"type": "model", "id": id, "display_name": name, "created_at": created})
        })
        .collect();
    json_response(
        200,
        &json!({
            "data": data,
            "has_more": false,
            "first_id": MODELS[0].0,
            "last_id": MODELS[MODELS.len() - 1].0,
        }),
    )
}
