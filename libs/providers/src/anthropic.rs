//! Anthropic Messages API: `POST {base}/v1/messages`, SSE streaming.

use crate::parse::{Item, Step, Tail, as_u32, json, non_empty_str};
use crate::sse::SseDecoder;
use crate::{
    ChatMessage, Completion, CompletionRequest, Endpoint, Provider, ProviderError, ProviderKind,
    Role, StreamEvent, TokenStream, Usage, key_header, require_key,
};
use secrecy::SecretString;
use serde::Serialize;
use serde_json::Value;

const VERSION: &str = "2023-06-01";

pub(crate) struct Anthropic {
    pub ep: Endpoint,
}

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<&'a str>,
    messages: Vec<Message<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    stream: bool,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: &'a str,
}

fn body(req: &CompletionRequest, stream: bool) -> Body<'_> {
    Body {
        model: &req.model,
        max_tokens: req.max_tokens,
        system: req.system_prompt(),
        messages: req.messages.iter().map(message).collect(),
        temperature: req.temperature,
        stream,
    }
}

fn message(m: &ChatMessage) -> Message<'_> {
    Message {
        role: match m.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        },
        content: &m.content,
    }
}

impl Anthropic {
    fn request(
        &self,
        method: reqwest::Method,
        key: Option<&SecretString>,
        path: &[&str],
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        let mut rb = self
            .ep
            .http
            .request(method, self.ep.url(path)?)
            .header("anthropic-version", VERSION);
        if let Some(k) = key {
            rb = rb.header("x-api-key", key_header("", k)?);
        }
        Ok(rb)
    }
}

#[async_trait::async_trait]
impl Provider for Anthropic {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Anthropic
    }

    async fn generate(
        &self,
        key: Option<&SecretString>,
        req: &CompletionRequest,
    ) -> Result<Completion, ProviderError> {
        let key = require_key(key)?;
        let rb = self
            .request(reqwest::Method::POST, Some(key), &["v1", "messages"])?
            .json(&body(req, false));
        let v = self.ep.call_json(rb, Some(key)).await?;
        parse_response(&v)
    }

    async fn stream(
        &self,
        key: Option<&SecretString>,
        req: &CompletionRequest,
    ) -> Result<TokenStream, ProviderError> {
        let key = require_key(key)?;
        let rb = self
            .request(reqwest::Method::POST, Some(key), &["v1", "messages"])?
            .header("accept", "text/event-stream")
            .json(&body(req, true));
        self.ep.open_stream(rb, Some(key)).await
    }

    async fn status(&self, key: Option<&SecretString>) -> Result<(), ProviderError> {
        let rb = self.request(reqwest::Method::GET, key, &["v1", "models"])?;
        self.ep.probe(rb, key, key.is_none()).await
    }

    async fn verify_key(&self, key: &SecretString) -> Result<(), ProviderError> {
        let rb = self.request(reqwest::Method::GET, Some(key), &["v1", "models"])?;
        self.ep.probe(rb, Some(key), false).await
    }
}

/// Parses a non-streaming Messages response.
pub(crate) fn parse_response(v: &Value) -> Result<Completion, ProviderError> {
    let blocks = v["content"]
        .as_array()
        .ok_or_else(|| ProviderError::protocol("the Anthropic response has no content array"))?;
    let content = blocks
        .iter()
        .filter(|b| b["type"] == "text")
        .filter_map(|b| b["text"].as_str())
        .collect();
    Ok(Completion {
        content,
        usage: Usage {
            input_tokens: as_u32(&v["usage"]["input_tokens"]),
            output_tokens: as_u32(&v["usage"]["output_tokens"]),
        },
        finish_reason: v["stop_reason"].as_str().map(str::to_owned),
    })
}

/// The error an in-stream `error` event stands for.
fn stream_error(v: &Value) -> ProviderError {
    let message =
        crate::error::trim_message(v["error"]["message"].as_str().unwrap_or("error event"));
    match v["error"]["type"].as_str().unwrap_or("") {
        "overloaded_error" => ProviderError::Unavailable {
            status: Some(529),
            message,
        },
        "api_error" => ProviderError::Unavailable {
            status: Some(500),
            message,
        },
        "rate_limit_error" => ProviderError::RateLimited {
            retry_after: None,
            message,
        },
        "authentication_error" | "permission_error" => ProviderError::InvalidKey { message },
        "invalid_request_error" => ProviderError::BadRequest {
            status: 400,
            message,
        },
        "request_too_large" => ProviderError::BadRequest {
            status: 413,
            message,
        },
        _ => ProviderError::Unavailable {
            status: None,
            message,
        },
    }
}

/// Anthropic SSE state machine: `message_start` → deltas → `message_delta` → `message_stop`.
#[derive(Debug, Default)]
pub(crate) struct Parser {
    sse: SseDecoder,
    tail: Tail,
}

impl Parser {
    fn on_data(&mut self, data: &str, out: &mut Vec<Item>) {
        let v = match json(data, "Anthropic") {
            Ok(v) => v,
            Err(e) => return out.push(Err(e)),
        };
        match v["type"].as_str().unwrap_or("") {
            "message_start" => {
                let usage = &v["message"]["usage"];
                if let Some(n) = as_u32(&usage["input_tokens"]) {
                    self.tail.usage.input_tokens = Some(n);
                }
                if let Some(n) = as_u32(&usage["output_tokens"]) {
                    self.tail.usage.output_tokens = Some(n);
                }
            }
            "content_block_delta" if v["delta"]["type"] == "text_delta" => {
                if let Some(t) = non_empty_str(&v["delta"]["text"]) {
                    out.push(Ok(StreamEvent::Token(t.to_owned())));
                }
            }
            "message_delta" => {
                if let Some(r) = v["delta"]["stop_reason"].as_str() {
                    self.tail.finish_reason = Some(r.to_owned());
                }
                if let Some(n) = as_u32(&v["usage"]["output_tokens"]) {
                    self.tail.usage.output_tokens = Some(n);
                }
                if let Some(n) = as_u32(&v["usage"]["input_tokens"]) {
                    self.tail.usage.input_tokens = Some(n);
                }
            }
            "message_stop" => self.tail.done(out),
            "error" => out.push(Err(stream_error(&v))),
            // ping, content_block_start/stop, and event types added later.
            _ => {}
        }
    }
}

impl Step for Parser {
    fn push(&mut self, chunk: &[u8], out: &mut Vec<Item>) {
        match self.sse.push(chunk) {
            Ok(events) => {
                for ev in events {
                    self.on_data(&ev.data, out);
                }
            }
            Err(e) => out.push(Err(ProviderError::protocol(e.to_string()))),
        }
    }

    fn finish(&mut self, out: &mut Vec<Item>) {
        match self.sse.finish() {
            Ok(events) => {
                for ev in events {
                    self.on_data(&ev.data, out);
                }
            }
            Err(e) => out.push(Err(ProviderError::protocol(e.to_string()))),
        }
        out.push(Err(ProviderError::protocol(
            "the stream ended before message_stop",
        )));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::testing::*;
    use proptest::prelude::*;

    const K: ProviderKind = ProviderKind::Anthropic;

    /// Shaped after the streaming example in Anthropic's Messages API docs.
    const STREAM: &str = "event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: ping\n\
data: {\"type\": \"ping\"}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"\"}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\", w\u{f6}rld \u{1f30d}!\"}}\n\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n\
event: message_stop\n\
data: {\"type\":\"message_stop\"}\n\n";

    fn expected() -> Vec<Item> {
        vec![
            tok("Hello"),
            tok(", w\u{f6}rld \u{1f30d}!"),
            usage_ev(Some(25), Some(15)),
            done(Some("end_turn")),
        ]
    }

    #[test]
    fn parses_the_documented_stream_at_every_split() {
        assert_all_splits(K, STREAM.as_bytes(), &expected());
    }

    #[test]
    fn cut_off_stream_is_a_protocol_error() {
        let cut = STREAM.find("event: message_stop").unwrap();
        let out = run(K, &[&STREAM.as_bytes()[..cut]]);
        assert_eq!(text(&out), "Hello, w\u{f6}rld \u{1f30d}!");
        assert!(
            matches!(out.last(), Some(Err(ProviderError::Protocol { message })) if message.contains("message_stop"))
        );
    }

    #[test]
    fn error_event_maps_overloaded_to_unavailable() {
        let body = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":3}}}\n\n\
event: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n";
        let out = run(K, &[body.as_bytes()]);
        assert_eq!(
            out,
            vec![Err(ProviderError::Unavailable {
                status: Some(529),
                message: "Overloaded".into()
            })]
        );
    }

    #[test]
    fn malformed_json_is_a_protocol_item() {
        let out = run(K, &[b"event: content_block_delta\ndata: {not json\n\n"]);
        assert!(matches!(
            out.as_slice(),
            [Err(ProviderError::Protocol { .. })]
        ));
    }

    #[test]
    fn non_streaming_response() {
        let v: Value = serde_json::from_str(
            r#"{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-5",
            "content":[{"type":"text","text":"Hi! "},{"type":"text","text":"There."}],
            "stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":2095,"output_tokens":503}}"#,
        )
        .unwrap();
        let c = parse_response(&v).unwrap();
        assert_eq!(c.content, "Hi! There.");
        assert_eq!(c.finish_reason.as_deref(), Some("end_turn"));
        assert_eq!(c.usage.input_tokens, Some(2095));
        assert_eq!(c.usage.output_tokens, Some(503));
        assert!(parse_response(&serde_json::json!({"type":"message"})).is_err());
    }

    #[test]
    fn request_body_shape() {
        let req = CompletionRequest {
            model: "claude-x".into(),
            system: Some("be brief".into()),
            messages: vec![
                ChatMessage {
                    role: Role::User,
                    content: "hi".into(),
                },
                ChatMessage {
                    role: Role::Assistant,
                    content: "hello".into(),
                },
            ],
            temperature: Some(0.5),
            max_tokens: 64,
            num_ctx: Some(4096),
        };
        let v = serde_json::to_value(body(&req, true)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "model": "claude-x", "max_tokens": 64, "system": "be brief",
                "messages": [{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}],
                "temperature": 0.5, "stream": true
            })
        );
        let req = CompletionRequest {
            system: Some(String::new()),
            temperature: None,
            ..req
        };
        let v = serde_json::to_value(body(&req, false)).unwrap();
        assert!(v.get("system").is_none() && v.get("temperature").is_none());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..24)
        ) {
            check_arbitrary(K, &chunks);
        }

        #[test]
        fn arbitrary_prefixes_of_a_valid_stream_never_panic(
            prefix in proptest::collection::vec(any::<u8>(), 0..40),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let mut body = prefix;
            body.extend_from_slice(STREAM.as_bytes());
            check_arbitrary(K, &rechunk(&body, &cuts).iter().map(|c| c.to_vec()).collect::<Vec<_>>());
        }

        #[test]
        fn rechunking_never_changes_the_events(cuts in proptest::collection::vec(any::<usize>(), 0..16)) {
            prop_assert_eq!(run(K, &rechunk(STREAM.as_bytes(), &cuts)), expected());
        }
    }
}
