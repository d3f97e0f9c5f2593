//! Ollama's native chat API: `POST {base}/api/chat`, NDJSON streaming. Ollama needs no key;
//! one given anyway is sent as `Authorization: Bearer` (for servers behind an auth proxy).

use crate::ndjson::NdjsonSplitter;
use crate::parse::{Item, Step, Tail, as_u32, json, non_empty_str};
use crate::{
    Completion, CompletionRequest, Endpoint, Provider, ProviderError, ProviderKind, Role,
    StreamEvent, TokenStream, Usage, key_header,
};
use secrecy::SecretString;
use serde::Serialize;
use serde_json::Value;

pub(crate) struct Ollama {
    pub ep: Endpoint,
}

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    messages: Vec<Message<'a>>,
    stream: bool,
    options: Options,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct Options {
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    num_predict: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    num_ctx: Option<u32>,
}

fn body(req: &CompletionRequest, stream: bool) -> Body<'_> {
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
        stream,
        options: Options {
            temperature: req.temperature,
            num_predict: req.max_tokens,
            num_ctx: req.num_ctx,
        },
    }
}

impl Ollama {
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
impl Provider for Ollama {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Ollama
    }

    async fn generate(
        &self,
        key: Option<&SecretString>,
        req: &CompletionRequest,
    ) -> Result<Completion, ProviderError> {
        let rb = self
            .request(reqwest::Method::POST, key, &["api", "chat"])?
            .json(&body(req, false));
        let v = self.ep.call_json(rb, key).await?;
        parse_response(&v)
    }

    async fn stream(
        &self,
        key: Option<&SecretString>,
        req: &CompletionRequest,
    ) -> Result<TokenStream, ProviderError> {
        let rb = self
            .request(reqwest::Method::POST, key, &["api", "chat"])?
            .json(&body(req, true));
        self.ep.open_stream(rb, key).await
    }

    async fn status(&self, key: Option<&SecretString>) -> Result<(), ProviderError> {
        let rb = self.request(reqwest::Method::GET, key, &["api", "tags"])?;
        self.ep.probe(rb, key, key.is_none()).await
    }

    async fn verify_key(&self, key: &SecretString) -> Result<(), ProviderError> {
        let rb = self.request(reqwest::Method::GET, Some(key), &["api", "tags"])?;
        self.ep.probe(rb, Some(key), false).await
    }
}

fn usage(v: &Value) -> Usage {
    Usage {
        input_tokens: as_u32(&v["prompt_eval_count"]),
        output_tokens: as_u32(&v["eval_count"]),
    }
}

/// Parses a non-streaming `/api/chat` response.
pub(crate) fn parse_response(v: &Value) -> Result<Completion, ProviderError> {
    if let Some(e) = v["error"].as_str() {
        return Err(ProviderError::Unavailable {
            status: None,
            message: crate::error::trim_message(e),
        });
    }
    let content = v["message"]["content"]
        .as_str()
        .ok_or_else(|| ProviderError::protocol("the Ollama response has no message content"))?;
    Ok(Completion {
        content: content.to_owned(),
        usage: usage(v),
        finish_reason: v["done_reason"].as_str().map(str::to_owned),
    })
}

/// Ollama NDJSON state machine: message lines until the one with `"done": true`.
#[derive(Debug, Default)]
pub(crate) struct Parser {
    lines: NdjsonSplitter,
    tail: Tail,
}

impl Parser {
    fn on_line(&mut self, line: &str, out: &mut Vec<Item>) {
        let v = match json(line, "Ollama") {
            Ok(v) => v,
            Err(e) => return out.push(Err(e)),
        };
        if !v["error"].is_null() {
            let message = v["error"].as_str().unwrap_or("error line");
            return out.push(Err(ProviderError::Unavailable {
                status: None,
                message: crate::error::trim_message(message),
            }));
        }
        if let Some(t) = non_empty_str(&v["message"]["content"]) {
            out.push(Ok(StreamEvent::Token(t.to_owned())));
        }
        if v["done"] == true {
            self.tail.usage = usage(&v);
            self.tail.finish_reason = v["done_reason"].as_str().map(str::to_owned);
            self.tail.done(out);
        }
    }
}

impl Step for Parser {
    fn push(&mut self, chunk: &[u8], out: &mut Vec<Item>) {
        match self.lines.push(chunk) {
            Ok(lines) => {
                for line in lines {
                    self.on_line(&line, out);
                }
            }
            Err(e) => out.push(Err(ProviderError::protocol(e.to_string()))),
        }
    }

    fn finish(&mut self, out: &mut Vec<Item>) {
        match self.lines.finish() {
            Ok(lines) => {
                for line in lines {
                    self.on_line(&line, out);
                }
            }
            Err(e) => out.push(Err(ProviderError::protocol(e.to_string()))),
        }
        out.push(Err(ProviderError::protocol(
            "the stream ended before the final done message",
        )));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ChatMessage;
    use crate::parse::testing::*;
    use proptest::prelude::*;

    const K: ProviderKind = ProviderKind::Ollama;

    /// Shaped after the streaming `/api/chat` example in Ollama's API docs.
    const STREAM: &str = "{\"model\":\"llama3.2\",\"created_at\":\"2023-08-04T08:52:19.385406455-07:00\",\"message\":{\"role\":\"assistant\",\"content\":\"The\",\"images\":null},\"done\":false}\n\
{\"model\":\"llama3.2\",\"created_at\":\"2023-08-04T08:52:19.385406455-07:00\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":false}\n\
{\"model\":\"llama3.2\",\"created_at\":\"2023-08-04T08:52:19.385406455-07:00\",\"message\":{\"role\":\"assistant\",\"content\":\" sky \u{2601}\u{fe0f}\"},\"done\":false}\n\
{\"model\":\"llama3.2\",\"created_at\":\"2023-08-04T19:22:45.499127Z\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\",\"total_duration\":4883583458,\"load_duration\":1334875,\"prompt_eval_count\":26,\"prompt_eval_duration\":342546000,\"eval_count\":282,\"eval_duration\":4535599000}\n";

    fn expected() -> Vec<Item> {
        vec![
            tok("The"),
            tok(" sky \u{2601}\u{fe0f}"),
            usage_ev(Some(26), Some(282)),
            done(Some("stop")),
        ]
    }

    #[test]
    fn parses_the_documented_stream_at_every_split() {
        assert_all_splits(K, STREAM.as_bytes(), &expected());
    }

    #[test]
    fn cut_off_and_error_lines() {
        let cut = STREAM.rfind("{\"model\"").unwrap();
        let out = run(K, &[&STREAM.as_bytes()[..cut]]);
        assert!(
            matches!(out.last(), Some(Err(ProviderError::Protocol { message })) if message.contains("done"))
        );
        let out = run(K, &[b"{\"message\":{\"content\":\"a\"},\"done\":false}\n{\"error\":\"model runner crashed\"}\n"]);
        assert_eq!(out[0], tok("a"));
        assert!(
            matches!(&out[1], Err(ProviderError::Unavailable { message, .. }) if message == "model runner crashed")
        );
        // A final line without its newline still counts.
        let trimmed = STREAM.trim_end();
        assert_eq!(run(K, &[trimmed.as_bytes()]), expected());
    }

    #[test]
    fn non_streaming_response() {
        let v: Value = serde_json::from_str(
            r#"{"model":"llama3.2","created_at":"2023-12-12T14:13:43.416799Z","message":{"role":"assistant",
            "content":"Hello! How are you today?"},"done":true,"done_reason":"stop","total_duration":5191566416,
            "prompt_eval_count":26,"eval_count":298}"#,
        )
        .unwrap();
        let c = parse_response(&v).unwrap();
        assert_eq!(c.content, "Hello! How are you today?");
        assert_eq!(
            c.usage,
            Usage {
                input_tokens: Some(26),
                output_tokens: Some(298)
            }
        );
        assert_eq!(c.finish_reason.as_deref(), Some("stop"));
        assert!(parse_response(&serde_json::json!({"error": "boom"})).is_err());
    }

    #[test]
    fn request_body_shape() {
        let req = CompletionRequest {
            model: "llama3.2".into(),
            system: Some("sys".into()),
            messages: vec![ChatMessage {
                role: Role::User,
                content: "hi".into(),
            }],
            temperature: Some(0.2),
            max_tokens: 32,
            num_ctx: Some(8192),
        };
        assert_eq!(
            serde_json::to_value(body(&req, true)).unwrap(),
            serde_json::json!({
                "model": "llama3.2",
                "messages": [{"role":"system","content":"sys"},{"role":"user","content":"hi"}],
                "stream": true,
                "options": {"temperature": 0.2, "num_predict": 32, "num_ctx": 8192}
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
