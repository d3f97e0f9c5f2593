//! Ollama inference API: `POST /api/chat` and `POST /api/generate` (NDJSON, or one object with
//! `"stream": false`; an empty request loads or, with `keep_alive: 0`, unloads the model) and
//! `GET /api/version`. Model management is in `ollama_models.rs`.

use std::time::{Duration, Instant};

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
use crate::ollama_models::rfc3339;
use crate::reply::{Frames, Plan, Prompt, write_json_str, write_u64};

/// `load_duration` reported when the model was already loaded.
const LOAD_NS: u64 = 1_000_000;

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    /// `/api/chat`: content in `message.content`.
    Chat,
    /// `/api/generate`: content in `response`.
    Generate,
}

impl Api {
    fn path(self) -> &'static str {
        match self {
            Self::Chat => "/api/chat",
            Self::Generate => "/api/generate",
        }
    }
}

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

fn chat_prompt(body: &Value) -> Prompt {
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

fn generate_prompt(body: &Value) -> Prompt {
    let mut p = Prompt::default();
    if let Some(system) = body.get("system").and_then(Value::as_str) {
        p.add(system);
        p.system.push_str(system);
    }
    if let Some(prompt) = body.get("prompt").and_then(Value::as_str) {
        p.add(prompt);
        p.last_user.push_str(prompt);
    }
    p
}

/// Whether the request has something to answer (otherwise it only loads or unloads).
fn has_input(api: Api, body: &Value) -> bool {
    match api {
        Api::Chat => body
            .get("messages")
            .and_then(Value::as_array)
            .is_some_and(|m| !m.is_empty()),
        Api::Generate => body
            .get("prompt")
            .and_then(Value::as_str)
            .is_some_and(|p| !p.is_empty()),
    }
}

/// The request's `keep_alive` as Ollama reads it: seconds as a number, or a Go duration
/// string (`"5m"`, `"1h30m"`, `"0"`); negative means forever (`Ok(None)`); absent or `null`
/// means `default`.
pub(crate) fn keep_alive(body: &Value, default: Duration) -> Result<Option<Duration>, String> {
    match body.get("keep_alive") {
        None | Some(Value::Null) => Ok(Some(default)),
        Some(Value::Number(n)) => {
            let secs = n.as_f64().unwrap_or(0.0);
            if secs < 0.0 {
                Ok(None)
            } else {
                Ok(Some(
                    Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX),
                ))
            }
        }
        Some(Value::String(s)) => {
            let ns = parse_go_duration(s)?;
            if ns < 0.0 {
                Ok(None)
            } else {
                // Saturating float-to-int conversion.
                Ok(Some(Duration::from_nanos(ns as u64)))
            }
        }
        Some(other) => Err(format!(
            "json: cannot unmarshal {} into Go struct field .keep_alive of type api.Duration",
            match other {
                Value::Bool(_) => "bool",
                Value::Array(_) => "array",
                _ => "object",
            }
        )),
    }
}

/// Go's `time.ParseDuration`, in nanoseconds.
fn parse_go_duration(s: &str) -> Result<f64, String> {
    let invalid = || format!("time: invalid duration {s:?}");
    let (negative, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Ok(0.0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        if number.is_empty() || number == "." {
            return Err(invalid());
        }
        let value: f64 = number.parse().map_err(|_| invalid())?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let scale = match unit {
            "" => return Err(format!("time: missing unit in duration {s:?}")),
            "ns" => 1.0,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(format!("time: unknown unit {unit:?} in duration {s:?}")),
        };
        total += value * scale;
        rest = next;
    }
    Ok(if negative { -total } else { total })
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

/// The single object answering a load or unload request.
fn done_only(api: Api, model: &str, reason: &str) -> Value {
    let created_at = rfc3339(OffsetDateTime::now_utc());
    match api {
        Api::Chat => json!({
            "model": model,
            "created_at": created_at,
            "message": {"role": "assistant", "content": ""},
            "done_reason": reason,
            "done": true,
        }),
        Api::Generate => json!({
            "model": model,
            "created_at": created_at,
            "response": "",
            "done": true,
            "done_reason": reason,
        }),
    }
}

/// 404 for a model that is not installed.
fn model_not_found(model: &str) -> Response {
    error(
        404,
        &format!("model {model:?} not found, try pulling it first"),
        None,
    )
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `POST /api/chat`.
pub(crate) async fn chat(state: St, headers: HeaderMap, raw: Bytes) -> Response {
    complete(state, headers, raw, Api::Chat).await
}

/// `POST /api/generate`.
pub(crate) async fn generate(state: St, headers: HeaderMap, raw: Bytes) -> Response {
    complete(state, headers, raw, Api::Generate).await
}

async fn complete(AxState(state): St, headers: HeaderMap, raw: Bytes, api: Api) -> Response {
    let key = Key::classify(bearer(&headers));
    let body = parse_body(&raw);
    let prompt = match api {
        Api::Chat => chat_prompt(&body),
        Api::Generate => generate_prompt(&body),
    };
    let d = Directives::parse(&prompt.last_user);
    let model = body.get("model").and_then(Value::as_str).map(str::to_owned);
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(true);
    let max_tokens = num_predict(&body);
    let has_input = has_input(api, &body);
    let keep_alive = keep_alive(&body, state.ollama.default_keep_alive());
    let invalid = if !body.is_object() {
        Some("invalid JSON request body".to_owned())
    } else if model.as_deref().is_none_or(str::is_empty) {
        Some("model is required".to_owned())
    } else {
        keep_alive.as_ref().err().cloned()
    };
    state.record(RecordedRequest {
        provider: "ollama".into(),
        path: api.path().into(),
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
        return error(400, &msg, None);
    }
    if let Some(f) = injected_failure(&state, &d) {
        return error(f.status, failure_message(f.status), f.retry_after);
    }
    let model = model.unwrap_or_default();
    let keep_alive = keep_alive.unwrap_or(None);

    if !has_input {
        // An empty request only loads the model, or unloads it with `keep_alive: 0`.
        if keep_alive == Some(Duration::ZERO) {
            if !state.ollama.unload(&model) {
                return model_not_found(&model);
            }
            return json_response(200, &done_only(api, &model, "unload"));
        }
        let Some(wait) = state.ollama.acquire(&model, keep_alive) else {
            return model_not_found(&model);
        };
        delay(wait).await;
        return json_response(200, &done_only(api, &model, "load"));
    }

    // Uses (and if needed first loads) an installed model. Other models are answered
    // without being loaded, unless the simulator is strict about models as Ollama is.
    let load = match state.ollama.acquire(&model, keep_alive) {
        Some(wait) => wait,
        None if state.ollama.strict_models() => return model_not_found(&model),
        None => Duration::ZERO,
    };
    delay(load).await;
    let started = Instant::now();

    let plan = Plan::new(&state.config, &d, &prompt, max_tokens);
    let mut frames = OllamaFrames {
        api,
        model,
        prompt_tokens: plan.input_tokens,
        load_ns: nanos(load).max(LOAD_NS),
        started,
        first_token: None,
    };
    if stream {
        return stream_response(frames, plan, "application/x-ndjson");
    }
    delay(plan.generation_time()).await;
    frames.first_token = Some(started + plan.ttft);
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
    api: Api,
    model: String,
    prompt_tokens: u32,
    load_ns: u64,
    started: Instant,
    first_token: Option<Instant>,
}

impl OllamaFrames {
    /// Everything up to the content string.
    fn line_start(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"model\":");
        write_json_str(out, &self.model);
        out.extend_from_slice(b",\"created_at\":");
        write_timestamp(out);
        match self.api {
            Api::Chat => {
                out.extend_from_slice(b",\"message\":{\"role\":\"assistant\",\"content\":")
            }
            Api::Generate => out.extend_from_slice(b",\"response\":"),
        }
    }

    /// Closes what [`Self::line_start`] opened around the content.
    fn content_end(&self, out: &mut Vec<u8>) {
        if self.api == Api::Chat {
            out.push(b'}');
        }
    }

    /// The final object (without trailing newline).
    fn final_line(&self, out: &mut Vec<u8>, content: &str, eval_count: u32, hit_max: bool) {
        let now = Instant::now();
        let first = self.first_token.unwrap_or(now);
        let prompt_eval = nanos(first.saturating_duration_since(self.started)).max(1);
        let eval = nanos(now.saturating_duration_since(first)).max(1);
        let total = self.load_ns + prompt_eval + eval;
        self.line_start(out);
        write_json_str(out, content);
        self.content_end(out);
        out.extend_from_slice(b",\"done_reason\":\"");
        out.extend_from_slice(done_reason(hit_max).as_bytes());
        out.extend_from_slice(b"\",\"done\":true,\"total_duration\":");
        write_u64(out, total);
        out.extend_from_slice(b",\"load_duration\":");
        write_u64(out, self.load_ns);
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
        self.content_end(out);
        out.extend_from_slice(b",\"done\":false}\n");
    }

    fn malformed(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"oops\n");
    }

    fn tail(&mut self, emitted: u32, hit_max: bool, out: &mut Vec<u8>) {
        self.final_line(out, "", emitted, hit_max);
        out.push(b'\n');
    }
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

    #[test]
    fn keep_alive_like_ollama() {
        let default = Duration::from_secs(300);
        let ka = |v: Value| keep_alive(&json!({ "keep_alive": v }), default);
        assert_eq!(keep_alive(&json!({}), default), Ok(Some(default)));
        assert_eq!(ka(Value::Null), Ok(Some(default)));
        assert_eq!(ka(json!(0)), Ok(Some(Duration::ZERO)));
        assert_eq!(ka(json!(1.5)), Ok(Some(Duration::from_millis(1500))));
        assert_eq!(ka(json!(-1)), Ok(None));
        assert_eq!(ka(json!("0")), Ok(Some(Duration::ZERO)));
        assert_eq!(ka(json!("10m")), Ok(Some(Duration::from_secs(600))));
        assert_eq!(ka(json!("1h30m")), Ok(Some(Duration::from_secs(5400))));
        assert_eq!(ka(json!("1.5s")), Ok(Some(Duration::from_millis(1500))));
        assert_eq!(ka(json!("250ms")), Ok(Some(Duration::from_millis(250))));
        assert_eq!(ka(json!("-1m")), Ok(None));
        assert_eq!(
            ka(json!("300")),
            Err("time: missing unit in duration \"300\"".to_owned())
        );
        assert!(ka(json!("5x")).is_err());
        assert!(ka(json!("")).is_err());
        assert!(ka(json!(true)).is_err());
    }
}
