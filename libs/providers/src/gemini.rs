//! Google Gemini API: `POST {base}/v1beta/models/{model}:generateContent` and
//! `:streamGenerateContent?alt=sse`, key in the `x-goog-api-key` header (never the query).

use crate::parse::{Item, Step, Tail, as_u32, json};
use crate::sse::SseDecoder;
use crate::{
    Completion, CompletionRequest, Endpoint, Provider, ProviderError, ProviderKind, Role,
    StreamEvent, TokenStream, Usage, key_header, require_key,
};
use secrecy::SecretString;
use serde::Serialize;
use serde_json::Value;

pub(crate) struct Gemini {
    pub ep: Endpoint,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    contents: Vec<Content<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<Instruction<'a>>,
    generation_config: GenerationConfig,
}

#[derive(Serialize)]
struct Content<'a> {
    role: &'static str,
    parts: [Part<'a>; 1],
}

#[derive(Serialize)]
struct Instruction<'a> {
    parts: [Part<'a>; 1],
}

#[derive(Serialize)]
struct Part<'a> {
    text: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    max_output_tokens: u32,
}

fn body(req: &CompletionRequest) -> Body<'_> {
    Body {
        contents: req
            .messages
            .iter()
            .map(|m| Content {
                role: match m.role {
                    Role::User => "user",
                    Role::Assistant => "model",
                },
                parts: [Part { text: &m.content }],
            })
            .collect(),
        system_instruction: req.system_prompt().map(|text| Instruction {
            parts: [Part { text }],
        }),
        generation_config: GenerationConfig {
            temperature: req.temperature,
            max_output_tokens: req.max_tokens,
        },
    }
}

impl Gemini {
    /// `{base}/v1beta/models/{model}:{method}`; a model given as `models/x` or
    /// `tunedModels/x` keeps its own collection.
    fn model_url(&self, model: &str, method: &str) -> Result<url::Url, ProviderError> {
        let (collection, name) = match model.split_once('/') {
            Some((c @ ("models" | "tunedModels"), name)) => (c, name),
            _ => ("models", model),
        };
        self.ep
            .url(&["v1beta", collection, &format!("{name}:{method}")])
    }

    fn post(
        &self,
        url: url::Url,
        key: &SecretString,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        Ok(self
            .ep
            .http
            .post(url)
            .header("x-goog-api-key", key_header("", key)?))
    }

    fn models(&self, key: Option<&SecretString>) -> Result<reqwest::RequestBuilder, ProviderError> {
        let mut rb = self.ep.http.get(self.ep.url(&["v1beta", "models"])?);
        if let Some(k) = key {
            rb = rb.header("x-goog-api-key", key_header("", k)?);
        }
        Ok(rb)
    }
}

#[async_trait::async_trait]
impl Provider for Gemini {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Google
    }

    async fn generate(
        &self,
        key: Option<&SecretString>,
        req: &CompletionRequest,
    ) -> Result<Completion, ProviderError> {
        let key = require_key(key)?;
        let url = self.model_url(&req.model, "generateContent")?;
        let rb = self.post(url, key)?.json(&body(req));
        let v = self.ep.call_json(rb, Some(key)).await?;
        parse_response(&v)
    }

    async fn stream(
        &self,
        key: Option<&SecretString>,
        req: &CompletionRequest,
    ) -> Result<TokenStream, ProviderError> {
        let key = require_key(key)?;
        let mut url = self.model_url(&req.model, "streamGenerateContent")?;
        url.set_query(Some("alt=sse"));
        let rb = self
            .post(url, key)?
            .header("accept", "text/event-stream")
            .json(&body(req));
        self.ep.open_stream(rb, Some(key)).await
    }

    async fn status(&self, key: Option<&SecretString>) -> Result<(), ProviderError> {
        let rb = self.models(key)?;
        self.ep.probe(rb, key, key.is_none()).await
    }

    async fn verify_key(&self, key: &SecretString) -> Result<(), ProviderError> {
        let rb = self.models(Some(key))?;
        self.ep.probe(rb, Some(key), false).await
    }
}

/// Gemini answers a bad key with 400 `INVALID_ARGUMENT` ("API key not valid"): that is
/// `InvalidKey`, not `BadRequest`.
pub(crate) fn refine_error(err: ProviderError, body: &[u8]) -> ProviderError {
    match err {
        ProviderError::BadRequest {
            status: 400,
            message,
        } => {
            let v: Value = serde_json::from_slice(body).unwrap_or_default();
            let v = if v.is_array() { &v[0] } else { &v };
            let status = v["error"]["status"].as_str();
            let key_problem = message.contains("API key")
                || String::from_utf8_lossy(body).contains("API_KEY_INVALID");
            if key_problem && status.is_none_or(|s| s == "INVALID_ARGUMENT") {
                ProviderError::InvalidKey { message }
            } else {
                ProviderError::BadRequest {
                    status: 400,
                    message,
                }
            }
        }
        other => other,
    }
}

/// The text of `candidates[0]`, skipping thought parts.
fn candidate_text(v: &Value) -> String {
    v["candidates"][0]["content"]["parts"]
        .as_array()
        .map(|parts| {
            parts
                .iter()
                .filter(|p| p["thought"] != true)
                .filter_map(|p| p["text"].as_str())
                .collect()
        })
        .unwrap_or_default()
}

fn finish_reason(v: &Value) -> Option<&str> {
    v["candidates"][0]["finishReason"]
        .as_str()
        .or(v["promptFeedback"]["blockReason"].as_str())
}

fn usage(v: &Value) -> Usage {
    let m = &v["usageMetadata"];
    let candidates = as_u32(&m["candidatesTokenCount"]);
    let thoughts = as_u32(&m["thoughtsTokenCount"]);
    Usage {
        input_tokens: as_u32(&m["promptTokenCount"]),
        output_tokens: match (candidates, thoughts) {
            (None, None) => None,
            (c, t) => Some(c.unwrap_or(0).saturating_add(t.unwrap_or(0))),
        },
    }
}

/// Parses a non-streaming GenerateContentResponse.
pub(crate) fn parse_response(v: &Value) -> Result<Completion, ProviderError> {
    if v["candidates"].get(0).is_none() && v["promptFeedback"].is_null() {
        return Err(ProviderError::protocol(
            "the Gemini response has no candidates",
        ));
    }
    Ok(Completion {
        content: candidate_text(v),
        usage: usage(v),
        finish_reason: finish_reason(v).map(str::to_owned),
    })
}

/// Gemini SSE state machine. Every `data:` is a whole GenerateContentResponse; there is no
/// sentinel, so a clean end of body after a chunk with a `finishReason` (or a prompt
/// `blockReason`) is done, and an end of body without one is a cut-off.
#[derive(Debug, Default)]
pub(crate) struct Parser {
    sse: SseDecoder,
    tail: Tail,
    finished: bool,
}

impl Parser {
    fn on_data(&mut self, data: &str, out: &mut Vec<Item>) {
        let v = match json(data, "Gemini") {
            Ok(v) => v,
            Err(e) => return out.push(Err(e)),
        };
        if !v["error"].is_null() {
            let message =
                crate::error::trim_message(v["error"]["message"].as_str().unwrap_or("error chunk"));
            let err = match v["error"]["code"]
                .as_u64()
                .and_then(|c| u16::try_from(c).ok())
            {
                Some(code) => {
                    crate::error::classify_status(code, &reqwest::header::HeaderMap::new(), message)
                }
                None => ProviderError::Unavailable {
                    status: None,
                    message,
                },
            };
            return out.push(Err(err));
        }
        let text = candidate_text(&v);
        if !text.is_empty() {
            out.push(Ok(StreamEvent::Token(text)));
        }
        if let Some(r) = finish_reason(&v)
            && r != "FINISH_REASON_UNSPECIFIED"
        {
            self.tail.finish_reason = Some(r.to_owned());
            self.finished = true;
        }
        let u = usage(&v);
        if u.input_tokens.is_some() {
            self.tail.usage.input_tokens = u.input_tokens;
        }
        if u.output_tokens.is_some() {
            self.tail.usage.output_tokens = u.output_tokens;
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
        if self.finished {
            self.tail.done(out);
        } else {
            out.push(Err(ProviderError::protocol(
                "the stream ended before a chunk with a finishReason",
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ChatMessage;
    use crate::parse::testing::*;
    use proptest::prelude::*;

    const K: ProviderKind = ProviderKind::Google;

    /// Shaped after the `streamGenerateContent?alt=sse` output in Google's docs (CRLF framing).
    const STREAM: &str = "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"The\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 8,\"totalTokenCount\": 8},\"modelVersion\": \"gemini-2.0-flash\"}\r\n\r\n\
data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \" opposite of \\\"hello\\\" is \\\"goodbye\\\" \u{1f44b}\\n\"}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 8,\"candidatesTokenCount\": 12,\"totalTokenCount\": 20,\"promptTokensDetails\": [{\"modality\": \"TEXT\",\"tokenCount\": 8}],\"candidatesTokensDetails\": [{\"modality\": \"TEXT\",\"tokenCount\": 12}]},\"modelVersion\": \"gemini-2.0-flash\"}\r\n\r\n";

    fn expected() -> Vec<Item> {
        vec![
            tok("The"),
            tok(" opposite of \"hello\" is \"goodbye\" \u{1f44b}\n"),
            usage_ev(Some(8), Some(12)),
            done(Some("STOP")),
        ]
    }

    #[test]
    fn parses_the_documented_stream_at_every_split() {
        assert_all_splits(K, STREAM.as_bytes(), &expected());
    }

    #[test]
    fn end_without_finish_reason_is_a_cut_off() {
        let cut = STREAM.find("\r\n\r\n").unwrap() + 4;
        let out = run(K, &[&STREAM.as_bytes()[..cut]]);
        assert_eq!(out[0], tok("The"));
        assert!(
            matches!(out.last(), Some(Err(ProviderError::Protocol { message })) if message.contains("finishReason"))
        );
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn blocked_prompt_and_error_chunks() {
        let out = run(
            K,
            &[b"data: {\"promptFeedback\": {\"blockReason\": \"SAFETY\"}}\r\n\r\n"],
        );
        assert_eq!(out, vec![done(Some("SAFETY"))]);
        let out = run(K, &[b"data: {\"error\": {\"code\": 503, \"message\": \"The model is overloaded.\", \"status\": \"UNAVAILABLE\"}}\r\n\r\n"]);
        assert!(matches!(
            out.as_slice(),
            [Err(ProviderError::Unavailable {
                status: Some(503),
                ..
            })]
        ));
    }

    #[test]
    fn thought_parts_are_skipped_and_counted() {
        let v: Value = serde_json::from_str(
            r#"{"candidates":[{"content":{"parts":[{"text":"hmm","thought":true},{"text":"Answer"}],"role":"model"},"finishReason":"MAX_TOKENS"}],
            "usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":2,"thoughtsTokenCount":30}}"#,
        )
        .unwrap();
        let c = parse_response(&v).unwrap();
        assert_eq!(c.content, "Answer");
        assert_eq!(c.finish_reason.as_deref(), Some("MAX_TOKENS"));
        assert_eq!(
            c.usage,
            Usage {
                input_tokens: Some(4),
                output_tokens: Some(32)
            }
        );
        assert!(parse_response(&serde_json::json!({})).is_err());
    }

    #[test]
    fn bad_key_400_becomes_invalid_key() {
        let body = br#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID"}]}}"#;
        let err = ProviderError::BadRequest {
            status: 400,
            message: crate::error::body_message(body),
        };
        assert!(matches!(
            refine_error(err, body),
            ProviderError::InvalidKey { .. }
        ));
        let body = br#"{"error":{"code":400,"message":"* GenerateContentRequest.contents: contents is not specified","status":"INVALID_ARGUMENT"}}"#;
        let err = ProviderError::BadRequest {
            status: 400,
            message: crate::error::body_message(body),
        };
        assert!(matches!(
            refine_error(err, body),
            ProviderError::BadRequest { status: 400, .. }
        ));
    }

    #[test]
    fn request_body_shape() {
        let req = CompletionRequest {
            model: "gemini-2.0-flash".into(),
            system: Some("sys".into()),
            messages: vec![
                ChatMessage {
                    role: Role::User,
                    content: "hi".into(),
                },
                ChatMessage {
                    role: Role::Assistant,
                    content: "yo".into(),
                },
            ],
            temperature: Some(1.0),
            max_tokens: 50,
            num_ctx: None,
        };
        assert_eq!(
            serde_json::to_value(body(&req)).unwrap(),
            serde_json::json!({
                "contents": [{"role":"user","parts":[{"text":"hi"}]},{"role":"model","parts":[{"text":"yo"}]}],
                "systemInstruction": {"parts":[{"text":"sys"}]},
                "generationConfig": {"temperature": 1.0, "maxOutputTokens": 50}
            })
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..24)
        ) {
            check_arbitrary(K, &chunks);
        }

        #[test]
        fn rechunking_never_changes_the_events(cuts in proptest::collection::vec(any::<usize>(), 0..16)) {
            prop_assert_eq!(run(K, &rechunk(STREAM.as_bytes(), &cuts)), expected());
        }
    }
}
