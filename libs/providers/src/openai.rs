//! OpenAI Chat Completions (`POST {base}/chat/completions`), also used for OpenAI-compatible
//! servers; SSE streaming ending in `data: [DONE]`.

use crate::parse::{Item, Step, Tail, as_u32, json, non_empty_str};
use crate::sse::SseDecoder;
use crate::{
    Completion, CompletionRequest, Endpoint, Provider, ProviderError, ProviderKind, Role,
    StreamEvent, TokenStream, Usage, key_header, require_key,
};
use secrecy::SecretString;
use serde::Serialize;
use serde_json::Value;

pub(crate) struct OpenAi {
    pub ep: Endpoint,
}

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    messages: Vec<Message<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// The request body; `compatible` servers get `max_tokens`, OpenAI `max_completion_tokens`.
fn body(req: &CompletionRequest, stream: bool, compatible: bool) -> Body<'_> {
    let mut messages = Vec::with_capacity(req.messages.len() + 1);
    if let Some(system) = req.system_prompt() {
        messages.push(Message {
            role: "system",
            content: system,
        });
    }
    messages.extend(req.messages.iter().map(|m| Message {
        role: match m.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        },
        content: &m.content,
    }));
    Body {
        model: &req.model,
        messages,
        temperature: req.temperature,
        max_tokens: compatible.then_some(req.max_tokens),
        max_completion_tokens: (!compatible).then_some(req.max_tokens),
        stream,
        stream_options: stream.then_some(StreamOptions {
            include_usage: true,
        }),
    }
}

impl OpenAi {
    fn compatible(&self) -> bool {
        self.ep.kind == ProviderKind::OpenAiCompatible
    }

    /// Attaches `Authorization: Bearer` when there is a key; OpenAI itself requires one.
    fn key<'a>(
        &self,
        key: Option<&'a SecretString>,
    ) -> Result<Option<&'a SecretString>, ProviderError> {
        if self.compatible() {
            Ok(key)
        } else {
            require_key(key).map(Some)
        }
    }

    fn request(
        &self,
        method: reqwest::Method,
        key: Option<&SecretString>,
        path: &[&str],
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        let mut rb = self.ep.http.request(method, self.ep.url(path)?);
        if let Some(k) = key {
            rb = rb.header("authorization", key_header("Bearer ", k)?);
        }
        Ok(rb)
    }
}

#[async_trait::async_trait]
impl Provider for OpenAi {
    fn kind(&self) -> ProviderKind {
        self.ep.kind
    }

    async fn generate(
        &self,
        key: Option<&SecretString>,
        req: &CompletionRequest,
    ) -> Result<Completion, ProviderError> {
        let key = self.key(key)?;
        let rb = self
            .request(reqwest::Method::POST, key, &["chat", "completions"])?
            .json(&body(req, false, self.compatible()));
        let v = self.ep.call_json(rb, key).await?;
        parse_response(&v)
    }

    async fn stream(
        &self,
        key: Option<&SecretString>,
        req: &CompletionRequest,
    ) -> Result<TokenStream, ProviderError> {
        let key = self.key(key)?;
        let rb = self
            .request(reqwest::Method::POST, key, &["chat", "completions"])?
            .header("accept", "text/event-stream")
            .json(&body(req, true, self.compatible()));
        self.ep.open_stream(rb, key).await
    }

    async fn status(&self, key: Option<&SecretString>) -> Result<(), ProviderError> {
        let rb = self.request(reqwest::Method::GET, key, &["models"])?;
        self.ep.probe(rb, key, key.is_none()).await
    }

    async fn verify_key(&self, key: &SecretString) -> Result<(), ProviderError> {
        let rb = self.request(reqwest::Method::GET, Some(key), &["models"])?;
        self.ep.probe(rb, Some(key), false).await
    }
}

/// Parses a non-streaming chat completion.
pub(crate) fn parse_response(v: &Value) -> Result<Completion, ProviderError> {
    let choice = v["choices"]
        .get(0)
        .ok_or_else(|| ProviderError::protocol("the OpenAI response has no choices"))?;
    Ok(Completion {
        content: choice["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        usage: usage(&v["usage"]),
        finish_reason: choice["finish_reason"].as_str().map(str::to_owned),
    })
}

fn usage(u: &Value) -> Usage {
    Usage {
        input_tokens: as_u32(&u["prompt_tokens"]),
        output_tokens: as_u32(&u["completion_tokens"]),
    }
}

/// OpenAI SSE state machine. OpenAI must end with `[DONE]`; an OpenAI-compatible server that
/// closes the body after a chunk with a `finish_reason` is accepted as done too.
#[derive(Debug)]
pub(crate) struct Parser {
    sse: SseDecoder,
    tail: Tail,
    compatible: bool,
}

impl Parser {
    pub fn new(compatible: bool) -> Self {
        Self {
            sse: SseDecoder::new(),
            tail: Tail::default(),
            compatible,
        }
    }

    fn on_data(&mut self, data: &str, out: &mut Vec<Item>) {
        if data.trim() == "[DONE]" {
            return self.tail.done(out);
        }
        let v = match json(data, "OpenAI") {
            Ok(v) => v,
            Err(e) => return out.push(Err(e)),
        };
        if !v["error"].is_null() {
            let message = v["error"]["message"]
                .as_str()
                .or(v["error"].as_str())
                .unwrap_or("error chunk");
            return out.push(Err(ProviderError::Unavailable {
                status: None,
                message: crate::error::trim_message(message),
            }));
        }
        let choice = &v["choices"][0];
        if let Some(t) = non_empty_str(&choice["delta"]["content"]) {
            out.push(Ok(StreamEvent::Token(t.to_owned())));
        }
        if let Some(r) = choice["finish_reason"].as_str() {
            self.tail.finish_reason = Some(r.to_owned());
        }
        if v["usage"].is_object() {
            let u = usage(&v["usage"]);
            if u != Usage::default() {
                self.tail.usage = u;
            }
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
        if self.compatible && self.tail.finish_reason.is_some() {
            return self.tail.done(out);
        }
        out.push(Err(ProviderError::protocol(
            "the stream ended before [DONE]",
        )));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ChatMessage;
    use crate::parse::testing::*;
    use proptest::prelude::*;

    const K: ProviderKind = ProviderKind::OpenAi;

    /// Shaped after OpenAI's chat completion chunk docs, with `stream_options.include_usage`.
    const STREAM: &str = "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n\
data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n\
data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":null},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n\
data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" w\u{f6}rld \u{1f30d}\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n\
data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null}\n\n\
data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":12,\"total_tokens\":21}}\n\n\
data: [DONE]\n\n";

    fn expected() -> Vec<Item> {
        vec![
            tok("Hello"),
            tok(" w\u{f6}rld \u{1f30d}"),
            usage_ev(Some(9), Some(12)),
            done(Some("stop")),
        ]
    }

    #[test]
    fn parses_the_documented_stream_at_every_split() {
        assert_all_splits(K, STREAM.as_bytes(), &expected());
        assert_all_splits(
            ProviderKind::OpenAiCompatible,
            STREAM.as_bytes(),
            &expected(),
        );
        let crlf = STREAM.replace('\n', "\r\n");
        assert_all_splits(K, crlf.as_bytes(), &expected());
    }

    #[test]
    fn missing_done_is_a_cut_off_for_openai_but_fine_after_finish_reason_for_compatible() {
        let cut = STREAM.find("data: [DONE]").unwrap();
        let body = &STREAM.as_bytes()[..cut];
        let out = run(K, &[body]);
        assert!(
            matches!(out.last(), Some(Err(ProviderError::Protocol { message })) if message.contains("[DONE]"))
        );
        assert_eq!(run(ProviderKind::OpenAiCompatible, &[body]), expected());
        let early = STREAM.find("data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{},").unwrap();
        let out = run(
            ProviderKind::OpenAiCompatible,
            &[&STREAM.as_bytes()[..early]],
        );
        assert!(matches!(
            out.last(),
            Some(Err(ProviderError::Protocol { .. }))
        ));
    }

    #[test]
    fn error_chunk_and_malformed_chunk() {
        let out = run(K, &[b"data: {\"error\":{\"message\":\"The server had an error\",\"type\":\"server_error\"}}\n\n"]);
        assert!(
            matches!(out.as_slice(), [Err(ProviderError::Unavailable { message, .. })] if message == "The server had an error")
        );
        let out = run(
            K,
            &[b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"choi\n\n"],
        );
        assert!(matches!(
            out.as_slice(),
            [
                Ok(StreamEvent::Token(_)),
                Err(ProviderError::Protocol { .. })
            ]
        ));
    }

    #[test]
    fn non_streaming_response() {
        let v: Value = serde_json::from_str(
            r#"{"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion","created":1741570283,
            "model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant",
            "content":"The image shows a wooden boardwalk.","refusal":null,"annotations":[]},
            "logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":1117,
            "completion_tokens":46,"total_tokens":1163}}"#,
        )
        .unwrap();
        let c = parse_response(&v).unwrap();
        assert_eq!(c.content, "The image shows a wooden boardwalk.");
        assert_eq!(c.finish_reason.as_deref(), Some("stop"));
        assert_eq!(
            c.usage,
            Usage {
                input_tokens: Some(1117),
                output_tokens: Some(46)
            }
        );
        assert!(parse_response(&serde_json::json!({"choices": []})).is_err());
    }

    #[test]
    fn request_body_shape() {
        let req = CompletionRequest {
            model: "gpt-4o".into(),
            system: Some("sys".into()),
            messages: vec![ChatMessage {
                role: Role::User,
                content: "hi".into(),
            }],
            temperature: None,
            max_tokens: 100,
            num_ctx: None,
        };
        let v = serde_json::to_value(body(&req, true, false)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "model": "gpt-4o",
                "messages": [{"role":"system","content":"sys"},{"role":"user","content":"hi"}],
                "max_completion_tokens": 100, "stream": true,
                "stream_options": {"include_usage": true}
            })
        );
        let v = serde_json::to_value(body(&req, false, true)).unwrap();
        assert_eq!(v["max_tokens"], 100);
        assert!(v.get("max_completion_tokens").is_none() && v.get("stream_options").is_none());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..24),
            compatible in any::<bool>(),
        ) {
            let kind = if compatible { ProviderKind::OpenAiCompatible } else { K };
            check_arbitrary(kind, &chunks);
        }

        #[test]
        fn rechunking_never_changes_the_events(cuts in proptest::collection::vec(any::<usize>(), 0..16)) {
            prop_assert_eq!(run(K, &rechunk(STREAM.as_bytes(), &cuts)), expected());
        }
    }
}
