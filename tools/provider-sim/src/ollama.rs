//! Ollama API (`POST /api/chat` NDJSON, `GET /api/tags`, `GET /api/version`).

use std::time::Instant;

use axum::extract::State as AxState;
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::RecordedRequest;
use crate::common::{
    Key, St, bearer, broken_json_response, content_text, delay, header_delay, injected_failure,
    json_response, parse_body, stream_response, with_retry_after,
};
use crate::directives::Directives;
use crate::reply::{Frames, Plan, Prompt, write_json_str, write_u64};

/// `(name, family, parameter size, size in bytes)`.
const MODELS: [(&str, &str, &str, u64); 3] = [
    ("llama3.2:latest", "llama", "3.2B", 2_019_393_189),
    ("qwen2.5:7b", "qwen2", "7.6B", 4_683_087_332),
    ("mistral:latest", "llama", "7.2B", 4_113_301_824),
];

const LOAD_NS: u64 = 1_000_000;

/// An Ollama error response.
pub(crate) fn error(status: u16, message: &str, retry_after: Option<u64>) -> Response {
    with_retry_after(
        json_response(status, &json!({"error": message})),
        retry_after,
    )
}

fn failure_message(status: u16) -> &'static str {
    match status {
        400 => "invalid request (simulated)",
        401 => "unauthorized",
        429 => "too many requests (simulated)",
        503 => "server busy, please try again.  maximum pending requests exceeded",
        _ => "an error was encountered while running the model (simulated)",
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
                Some("system") => p.system.push_str(&text),
                _ => {}
            }
        }
    }
    p
}

fn num_predict(body: &Value) -> Option<u64> {
    // Negative values mean "no limit".
    body.pointer("/options/num_predict").and_then(Value::as_u64)
}

fn write_timestamp(out: &mut Vec<u8>) {
    out.push(b'"');
    if OffsetDateTime::now_utc()
        .format_into(out, &Rfc3339)
        .is_err()
    {
        out.extend_from_slice(b"1970-01-01T00:00:00Z");
    }
    out.push(b'"');
}

fn done_reason(hit_max: bool) -> &'static str {
    if hit_max { "length" } else { "stop" }
}

/// `POST /api/chat`.
pub(crate) async fn chat(AxState(state): St, headers: HeaderMap, raw: Bytes) -> Response {
    let started = Instant::now();
    let key = Key::classify(bearer(&headers));
    let body = parse_body(&raw);
    let prompt = prompt(&body);
    let d = Directives::parse(&prompt.last_user);
    let model = body.get("model").and_then(Value::as_str).map(str::to_owned);
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(true);
    let max_tokens = num_predict(&body);
    let has_messages = body
        .get("messages")
        .and_then(Value::as_array)
        .is_some_and(|m| !m.is_empty());
    let invalid = if !body.is_object() {
        Some("invalid JSON request body")
    } else if model.as_deref().is_none_or(str::is_empty) {
        Some("model is required")
    } else {
        None
    };
    state.record(RecordedRequest {
        provider: "ollama".into(),
        path: "/api/chat".into(),
        model: model.clone(),
        stream,
        has_key: key.present(),
        body,
    });
    delay(header_delay(&state, &d)).await;
    if key == Key::Invalid {
        return error(401, "unauthorized", None);
    }
    if let Some(msg) = invalid {
        return error(400, msg, None);
    }
    if let Some(f) = injected_failure(&state, &d) {
        return error(f.status, failure_message(f.status), f.retry_after);
    }
    let model = model.unwrap_or_default();

    if !has_messages {
        // An empty chat only loads the model.
        let mut out = Vec::with_capacity(160);
        out.extend_from_slice(b"{\"model\":");
        write_json_str(&mut out, &model);
        out.extend_from_slice(b",\"created_at\":");
        write_timestamp(&mut out);
        out.extend_from_slice(
            b",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done_reason\":\"load\",\"done\":true}",
        );
        let value: Value = serde_json::from_slice(&out).unwrap_or(Value::Null);
        return json_response(200, &value);
    }

    let plan = Plan::new(&state.config, &d, &prompt, max_tokens);
    let mut frames = OllamaFrames {
        model,
        prompt_tokens: plan.input_tokens,
        started,
        first_token: None,
    };
    if stream {
        return stream_response(frames, plan, "application/x-ndjson");
    }
    delay(plan.generation_time()).await;
    frames.first_token = Some(started + header_delay(&state, &d) + plan.ttft);
    let mut out = Vec::new();
    frames.final_line(
        &mut out,
        &plan.reply.text(plan.count),
        plan.count,
        plan.hit_max,
    );
    let value: Value = serde_json::from_slice(&out).unwrap_or(Value::Null);
    if plan.broken() {
        broken_json_response(&value)
    } else {
        json_response(200, &value)
    }
}

struct OllamaFrames {
    model: String,
    prompt_tokens: u32,
    started: Instant,
    first_token: Option<Instant>,
}

impl OllamaFrames {
    fn line_start(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"model\":");
        write_json_str(out, &self.model);
        out.extend_from_slice(b",\"created_at\":");
        write_timestamp(out);
        out.extend_from_slice(b",\"message\":{\"role\":\"assistant\",\"content\":");
    }

    /// The final object (without trailing newline).
    fn final_line(&self, out: &mut Vec<u8>, content: &str, eval_count: u32, hit_max: bool) {
        let now = Instant::now();
        let ns = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let first = self.first_token.unwrap_or(now);
        let prompt_eval = ns(first.saturating_duration_since(self.started)).max(1);
        let eval = ns(now.saturating_duration_since(first)).max(1);
        let total = LOAD_NS + prompt_eval + eval;
        self.line_start(out);
        write_json_str(out, content);
        out.extend_from_slice(b"},\"done_reason\":\"");
        out.extend_from_slice(done_reason(hit_max).as_bytes());
        out.extend_from_slice(b"\",\"done\":true,\"total_duration\":");
        write_u64(out, total);
        out.extend_from_slice(b",\"load_duration\":");
        write_u64(out, LOAD_NS);
        out.extend_from_slice(b",\"prompt_eval_count\":");
        write_u64(out, u64::from(self.prompt_tokens));
        out.extend_from_slice(b",\"prompt_eval_duration\":");
        write_u64(out, prompt_eval);
        out.extend_from_slice(b",\"eval_count\":");
        write_u64(out, u64::from(eval_count));
        out.extend_from_slice(b",\"eval_duration\":");
        write_u64(out, eval);
        out.push(b'}');
    }
}

impl Frames for OllamaFrames {
    fn head(&mut self, _out: &mut Vec<u8>) {}

    fn token(&mut self, _index: u32, text: &str, _last: bool, out: &mut Vec<u8>) {
        if self.first_token.is_none() {
            self.first_token = Some(Instant::now());
        }
        self.line_start(out);
        write_json_str(out, text);
        out.extend_from_slice(b"},\"done\":false}\n");
    }

    fn malformed(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"oops\n");
    }

    fn tail(&mut self, emitted: u32, hit_max: bool, out: &mut Vec<u8>) {
        self.final_line(out, "", emitted, hit_max);
        out.push(b'\n');
    }
}

/// `GET /api/tags`.
pub(crate) async fn tags(_state: St) -> Response {
    let models: Vec<Value> = MODELS
        .iter()
        .enumerate()
        .map(|(i, (name, family, params, size))| {
            json!({
                "name": name,
                "model": name,
                "modified_at": "2025-01-01T00:00:00.000000000Z",
                "size": size,
                "digest": format!("{:064x}", 0x51u64 * 1_000_003 + i as u64),
                "details": {
                    "parent_model": "",
                    "format": "gguf",
                    "family": family,
                    "families": [family],
                    "parameter_size": params,
                    "quantization_level": "Q4_K_M",
                },
            })
        })
        .collect();
    json_response(200, &json!({"models": models}))
}

/// `GET /api/version`.
pub(crate) async fn version() -> Response {
    json_response(200, &json!({"version": "0.9.0"}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_is_rfc3339() {
        let mut out = Vec::new();
        write_timestamp(&mut out);
        let s: String = serde_json::from_slice(&out).unwrap();
        assert!(OffsetDateTime::parse(&s, &Rfc3339).is_ok());
    }
}
