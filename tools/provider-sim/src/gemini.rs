//! Gemini API (`POST /v1beta/models/{model}:generateContent`, `:streamGenerateContent`,
//! `:countTokens`, `GET /v1beta/models`).

use std::collections::HashMap;

use axum::extract::{Path, Query, State as AxState};
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::RecordedRequest;
use crate::common::{
    Key, St, broken_json_response, delay, header_delay, header_str, injected_failure,
    json_response, next_id, parse_body, stream_response, with_retry_after,
};
use crate::directives::Directives;
use crate::reply::{Frames, Plan, Prompt, write_json_str, write_u64};

const MODELS: [(&str, &str); 3] = [
    ("gemini-2.5-flash", "Gemini 2.5 Flash"),
    ("gemini-2.5-pro", "Gemini 2.5 Pro"),
    ("gemini-2.0-flash", "Gemini 2.0 Flash"),
];

fn status_name(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 | 529 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

/// A Google API error response.
pub(crate) fn error(
    status: u16,
    message: &str,
    details: Option<Value>,
    retry_after: Option<u64>,
) -> Response {
    let mut err = json!({"code": status, "message": message, "status": status_name(status)});
    if let (Some(details), Some(obj)) = (details, err.as_object_mut()) {
        obj.insert("details".into(), details);
    }
    with_retry_after(json_response(status, &json!({"error": err})), retry_after)
}

fn failure(status: u16, retry_after: Option<u64>) -> Response {
    let message = match status {
        400 => "Request contains an invalid argument. (simulated)",
        401 => "Request had invalid authentication credentials. (simulated)",
        429 => "Resource has been exhausted (e.g. check quota).",
        503 | 529 => "The model is overloaded. Please try again later.",
        _ => {
            "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting"
        }
    };
    let details = (status == 429).then(|| {
        json!([{
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": format!("{}s", retry_after.unwrap_or(1)),
        }])
    });
    error(status, message, details, retry_after)
}

fn auth_error(key: Key) -> Option<Response> {
    match key {
        Key::Valid => None,
        Key::Missing => Some(error(
            403,
            "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
            None,
            None,
        )),
        Key::Invalid => Some(error(
            400,
            "API key not valid. Please pass a valid API key.",
            Some(json!([{
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }])),
            None,
        )),
    }
}

fn parts_text(content: &Value, out: &mut String) {
    if let Some(Value::Array(parts)) = content.get("parts") {
        for part in parts {
            if let Some(t) = part.get("text").and_then(Value::as_str) {
                out.push_str(t);
            }
        }
    }
}

fn prompt(body: &Value) -> Prompt {
    let mut p = Prompt::default();
    if let Some(sys) = body
        .get("systemInstruction")
        .or_else(|| body.get("system_instruction"))
    {
        parts_text(sys, &mut p.system);
        p.bytes += p.system.len();
    }
    let mut text = String::new();
    if let Some(Value::Array(contents)) = body.get("contents") {
        for c in contents {
            text.clear();
            parts_text(c, &mut text);
            p.add(&text);
            if c.get("role").and_then(Value::as_str).unwrap_or("user") == "user" {
                p.last_user.clone_from(&text);
            }
        }
    }
    p
}

fn max_output_tokens(body: &Value) -> Option<u64> {
    let cfg = body
        .get("generationConfig")
        .or_else(|| body.get("generation_config"))?;
    cfg.get("maxOutputTokens")
        .or_else(|| cfg.get("max_output_tokens"))
        .and_then(Value::as_u64)
}

fn validate(body: &Value) -> Option<&'static str> {
    if !body.is_object() {
        return Some("Invalid JSON payload received.");
    }
    match body.get("contents") {
        Some(Value::Array(c)) if !c.is_empty() => None,
        _ => Some("* GenerateContentRequest.contents: contents is not specified\n"),
    }
}

fn finish_reason(hit_max: bool) -> &'static str {
    if hit_max { "MAX_TOKENS" } else { "STOP" }
}

/// `POST /v1beta/models/{model}:{method}`.
pub(crate) async fn generate(
    AxState(state): St,
    Path(model_and_method): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let Some((model, method)) = model_and_method.split_once(':') else {
        return error(
            404,
            &format!("models/{model_and_method} is not found for API version v1beta"),
            None,
            None,
        );
    };
    let stream = match method {
        "generateContent" | "countTokens" => false,
        "streamGenerateContent" => true,
        _ => {
            return error(
                404,
                &format!("Method {method} is not found for API version v1beta"),
                None,
                None,
            );
        }
    };
    let sse = query.get("alt").is_some_and(|a| a == "sse");
    let key = Key::classify(
        header_str(&headers, "x-goog-api-key").or_else(|| query.get("key").map(String::as_str)),
    );
    let body = parse_body(&raw);
    let prompt = prompt(&body);
    let d = Directives::parse(&prompt.last_user);
    let max_tokens = max_output_tokens(&body);
    let invalid = validate(&body);
    state.record(RecordedRequest {
        provider: "google".into(),
        path: format!("/v1beta/models/{model_and_method}"),
        model: Some(model.to_owned()),
        stream,
        has_key: key.present(),
        body,
    });
    delay(header_delay(&state, &d)).await;
    if let Some(resp) = auth_error(key) {
        return resp;
    }
    if let Some(msg) = invalid {
        return error(400, msg, None, None);
    }
    if method == "countTokens" {
        let plan = Plan::new(&state.config, &d, &prompt, None);
        return json_response(200, &json!({"totalTokens": plan.input_tokens}));
    }
    if let Some(f) = injected_failure(&state, &d) {
        return failure(f.status, f.retry_after);
    }

    let plan = Plan::new(&state.config, &d, &prompt, max_tokens);
    let frames = GeminiFrames {
        model_version: model.to_owned(),
        response_id: format!("sim{:020}", next_id(&state)),
        prompt_tokens: plan.input_tokens,
        hit_max: plan.hit_max,
        sse,
        first: true,
    };
    if stream {
        let content_type = if sse {
            "text/event-stream"
        } else {
            "application/json; charset=UTF-8"
        };
        return stream_response(frames, plan, content_type);
    }
    delay(plan.generation_time()).await;
    let mut out = Vec::new();
    frames.candidate(&mut out, &plan.reply.text(plan.count), true, plan.count);
    let body: Value = serde_json::from_slice(&out).unwrap_or(Value::Null);
    if plan.broken() {
        broken_json_response(&body)
    } else {
        json_response(200, &body)
    }
}

struct GeminiFrames {
    model_version: String,
    response_id: String,
    prompt_tokens: u32,
    hit_max: bool,
    /// `alt=sse` framing; otherwise one streamed JSON array.
    sse: bool,
    first: bool,
}

impl GeminiFrames {
    /// Writes one `GenerateContentResponse` JSON object.
    fn candidate(&self, out: &mut Vec<u8>, text: &str, finish: bool, candidates_tokens: u32) {
        out.extend_from_slice(b"{\"candidates\":[{\"content\":{\"parts\":[{\"text\":");
        write_json_str(out, text);
        out.extend_from_slice(b"}],\"role\":\"model\"},");
        if finish {
            out.extend_from_slice(b"\"finishReason\":\"");
            out.extend_from_slice(finish_reason(self.hit_max).as_bytes());
            out.extend_from_slice(b"\",");
        }
        out.extend_from_slice(b"\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":");
        write_u64(out, u64::from(self.prompt_tokens));
        out.extend_from_slice(b",\"candidatesTokenCount\":");
        write_u64(out, u64::from(candidates_tokens));
        out.extend_from_slice(b",\"totalTokenCount\":");
        write_u64(
            out,
            u64::from(self.prompt_tokens) + u64::from(candidates_tokens),
        );
        out.extend_from_slice(b",\"promptTokensDetails\":[{\"modality\":\"TEXT\",\"tokenCount\":");
        write_u64(out, u64::from(self.prompt_tokens));
        out.extend_from_slice(b"}]},\"modelVersion\":");
        write_json_str(out, &self.model_version);
        out.extend_from_slice(b",\"responseId\":");
        write_json_str(out, &self.response_id);
        out.push(b'}');
    }

    fn open(&mut self, out: &mut Vec<u8>) {
        if self.sse {
            out.extend_from_slice(b"data: ");
        } else if self.first {
            out.push(b'[');
        } else {
            out.extend_from_slice(b",\r\n");
        }
        self.first = false;
    }

    fn close(&self, out: &mut Vec<u8>) {
        if self.sse {
            out.extend_from_slice(b"\r\n\r\n");
        }
    }
}

impl Frames for GeminiFrames {
    fn head(&mut self, _out: &mut Vec<u8>) {}

    fn token(&mut self, index: u32, text: &str, last: bool, out: &mut Vec<u8>) {
        self.open(out);
        self.candidate(out, text, last, index + 1);
        self.close(out);
    }

    fn malformed(&mut self, out: &mut Vec<u8>) {
        self.open(out);
        out.extend_from_slice(b"{\"oops");
        self.close(out);
    }

    fn tail(&mut self, emitted: u32, _hit_max: bool, out: &mut Vec<u8>) {
        if emitted == 0 {
            self.open(out);
            self.candidate(out, "", true, 0);
            self.close(out);
        }
        if !self.sse {
            if self.first {
                out.push(b'[');
            }
            out.push(b']');
        }
    }
}

fn model_info(id: &str, name: &str) -> Value {
    json!({
        "name": format!("models/{id}"),
        "version": "001",
        "displayName": name,
        "description": "Simulated model",
        "inputTokenLimit": 1_048_576,
        "outputTokenLimit": 65_536,
        "supportedGenerationMethods": ["generateContent", "countTokens"],
        "temperature": 1.0,
        "topP": 0.95,
        "topK": 64,
    })
}

fn query_key(headers: &HeaderMap, query: &HashMap<String, String>) -> Key {
    Key::classify(
        header_str(headers, "x-goog-api-key").or_else(|| query.get("key").map(String::as_str)),
    )
}

/// `GET /v1beta/models`.
pub(crate) async fn list_models(
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(resp) = auth_error(query_key(&headers, &query)) {
        return resp;
    }
    let models: Vec<Value> = MODELS.iter().map(|(id, n)| model_info(id, n)).collect();
    json_response(200, &json!({"models": models}))
}

/// `GET /v1beta/models/{model}`.
pub(crate) async fn get_model(
    Path(model): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(resp) = auth_error(query_key(&headers, &query)) {
        return resp;
    }
    if model.contains(':') {
        return error(
            404,
            &format!("models/{model} is not found for API version v1beta"),
            None,
            None,
        );
    }
    let name = MODELS
        .iter()
        .find(|(id, _)| *id == model)
        .map_or(model.as_str(), |(_, n)| n);
    json_response(200, &model_info(&model, name))
}
