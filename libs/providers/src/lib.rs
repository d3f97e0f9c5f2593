//! LLM provider clients (Anthropic, OpenAI, Google Gemini, Ollama, OpenAI-compatible servers):
//! one request/response model, streaming parsers that survive any chunking, error
//! classification, retries before the first token, base-URL validation and token counting.
//!
//! API keys travel as [`SecretString`] and are only ever exposed into request headers (marked
//! sensitive); errors carry neither keys nor URLs.

mod anthropic;
mod error;
mod gemini;
mod http;
pub mod ndjson;
mod ollama;
mod openai;
mod parse;
pub mod registry;
mod retry;
pub mod sse;
pub mod tokens;
mod url_check;

pub use error::ProviderError;
pub use http::{HttpSettings, http_client};
pub use parse::StreamParser;
pub use polylogue_contracts::error::{ApiError, ErrorCode};
pub use registry::{KeyResolver, Registry, UserKeySource, key_verifiers};
pub use retry::{RetryPolicy, generate_with_retry, stream_with_retry};
pub use secrecy::SecretString;
pub use url_check::validate_base_url;

use reqwest::header::HeaderValue;
use secrecy::ExposeSecret;
use std::sync::Arc;
use std::time::Duration;

/// Timeout of `status` and `verify_key` calls.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The provider APIs Polylogue speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    /// Anthropic Messages API.
    Anthropic,
    /// OpenAI Chat Completions.
    OpenAi,
    /// Google Gemini API.
    Google,
    /// Ollama's native `/api/chat`.
    Ollama,
    /// Any server speaking OpenAI Chat Completions (vLLM, llama.cpp, LM Studio, ...).
    OpenAiCompatible,
}

impl ProviderKind {
    /// Parses the config/API spelling: `anthropic`, `openai`, `google`, `ollama`,
    /// `openai-compatible`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "anthropic" => Some(Self::Anthropic),
            "openai" => Some(Self::OpenAi),
            "google" => Some(Self::Google),
            "ollama" => Some(Self::Ollama),
            "openai-compatible" => Some(Self::OpenAiCompatible),
            _ => None,
        }
    }

    /// The config/API spelling, inverse of [`ProviderKind::parse`].
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Anthropic => "anthropic",
            Self::OpenAi => "openai",
            Self::Google => "google",
            Self::Ollama => "ollama",
            Self::OpenAiCompatible => "openai-compatible",
        }
    }

    /// Default base URL: `https://api.anthropic.com`, `https://api.openai.com/v1`,
    /// `https://generativelanguage.googleapis.com`, `http://127.0.0.1:11434`, and `None` for
    /// OpenAI-compatible servers, which must be configured.
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            Self::Anthropic => Some("https://api.anthropic.com"),
            Self::OpenAi => Some("https://api.openai.com/v1"),
            Self::Google => Some("https://generativelanguage.googleapis.com"),
            Self::Ollama => Some("http://127.0.0.1:11434"),
            Self::OpenAiCompatible => None,
        }
    }

    /// The name used in user-facing messages.
    pub(crate) fn display_name(self) -> &'static str {
        match self {
            Self::Anthropic => "Anthropic",
            Self::OpenAi => "OpenAI",
            Self::Google => "Google Gemini",
            Self::Ollama => "Ollama",
            Self::OpenAiCompatible => "OpenAI-compatible",
        }
    }
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The person.
    User,
    /// The model.
    Assistant,
}

/// One turn of the conversation.
#[derive(Debug, Clone)]
pub struct ChatMessage {
    /// Who wrote it.
    pub role: Role,
    /// Its text.
    pub content: String,
}

/// One completion request, provider-neutral.
#[derive(Debug, Clone)]
pub struct CompletionRequest {
    /// The provider's own model name.
    pub model: String,
    /// System prompt; an empty one is not sent.
    pub system: Option<String>,
    /// The conversation, oldest first.
    pub messages: Vec<ChatMessage>,
    /// Sampling temperature, when set.
    pub temperature: Option<f64>,
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// Ollama only: context window, sent as `options.num_ctx`.
    pub num_ctx: Option<u32>,
}

impl CompletionRequest {
    fn system_prompt(&self) -> Option<&str> {
        self.system.as_deref().filter(|s| !s.is_empty())
    }
}

/// Token counts as the provider reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub input_tokens: Option<u32>,
    /// Generated tokens.
    pub output_tokens: Option<u32>,
}

/// A whole (non-streamed) reply.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The generated text.
    pub content: String,
    /// Token counts.
    pub usage: Usage,
    /// The provider's own stop/finish reason (e.g. `end_turn`, `stop`, `STOP`).
    pub finish_reason: Option<String>,
}

/// One item of a streamed reply. A stream yields Tokens, at most one Usage, then Done (or an
/// error item) last.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// A non-empty piece of generated text.
    Token(String),
    /// Token counts, sent just before `Done` when the provider reported any.
    Usage(Usage),
    /// The reply is complete, with the provider's own finish reason.
    Done {
        /// e.g. `end_turn`, `stop`, `STOP`, `length`.
        finish_reason: Option<String>,
    },
}

/// A streamed reply.
pub type TokenStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<StreamEvent, ProviderError>> + Send>>;

/// A provider client. Implementations hold the shared HTTP client, not the key.
#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    /// Which API this client speaks.
    fn kind(&self) -> ProviderKind;

    /// One whole completion, bounded by `request_timeout`.
    async fn generate(
        &self,
        key: Option<&SecretString>,
        req: &CompletionRequest,
    ) -> Result<Completion, ProviderError>;

    /// Returns once the response headers arrived with a 2xx; errors before that are returned
    /// here. Chunk errors come through the stream.
    async fn stream(
        &self,
        key: Option<&SecretString>,
        req: &CompletionRequest,
    ) -> Result<TokenStream, ProviderError>;

    /// Reachability: one cheap GET (models list / Ollama `/api/tags` / OpenAI-compatible
    /// `/models`); `Ok(())` on 2xx, or on 401/403 when no key was given.
    async fn status(&self, key: Option<&SecretString>) -> Result<(), ProviderError>;

    /// One cheap authenticated call (list models) within 5 s: `Ok(())` valid, `InvalidKey`
    /// rejected, any other error means it could not be verified.
    async fn verify_key(&self, key: &SecretString) -> Result<(), ProviderError>;
}

/// Builds the client for a provider kind at a base URL (already validated).
pub fn provider(
    kind: ProviderKind,
    base_url: url::Url,
    http: reqwest::Client,
    settings: &HttpSettings,
) -> Arc<dyn Provider> {
    let ep = Endpoint {
        kind,
        base: base_url,
        http,
        settings: settings.clone(),
    };
    match kind {
        ProviderKind::Anthropic => Arc::new(anthropic::Anthropic { ep }),
        ProviderKind::OpenAi | ProviderKind::OpenAiCompatible => Arc::new(openai::OpenAi { ep }),
        ProviderKind::Google => Arc::new(gemini::Gemini { ep }),
        ProviderKind::Ollama => Arc::new(ollama::Ollama { ep }),
    }
}

/// Where and how a provider client sends its requests.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub kind: ProviderKind,
    pub base: url::Url,
    pub http: reqwest::Client,
    pub settings: HttpSettings,
}

impl Endpoint {
    /// The base URL with `segments` appended to its path (each percent-encoded).
    pub fn url(&self, segments: &[&str]) -> Result<url::Url, ProviderError> {
        let mut u = self.base.clone();
        u.set_query(None);
        u.set_fragment(None);
        u.path_segments_mut()
            .map_err(|()| ProviderError::protocol("the base URL cannot take a path"))?
            .pop_if_empty()
            .extend(segments);
        Ok(u)
    }

    /// Sends a streaming request and wraps its body in the provider's parser.
    pub async fn open_stream(
        &self,
        rb: reqwest::RequestBuilder,
        key: Option<&SecretString>,
    ) -> Result<TokenStream, ProviderError> {
        let resp = http::send(rb, self.settings.header_timeout, self.kind, key).await?;
        Ok(http::drive(
            resp,
            StreamParser::new(self.kind),
            self.settings.idle_timeout,
        ))
    }

    /// A whole JSON call bounded by `request_timeout`.
    pub async fn call_json(
        &self,
        rb: reqwest::RequestBuilder,
        key: Option<&SecretString>,
    ) -> Result<serde_json::Value, ProviderError> {
        http::call_json(rb, self.settings.request_timeout, self.kind, key).await
    }

    /// A reachability or key probe within [`PROBE_TIMEOUT`].
    pub async fn probe(
        &self,
        rb: reqwest::RequestBuilder,
        key: Option<&SecretString>,
        no_key_ok: bool,
    ) -> Result<(), ProviderError> {
        http::probe(rb, PROBE_TIMEOUT, self.kind, key, no_key_ok).await
    }
}

/// The key, or the error for a provider that needs one.
pub(crate) fn require_key(key: Option<&SecretString>) -> Result<&SecretString, ProviderError> {
    key.ok_or_else(|| ProviderError::InvalidKey {
        message: "no API key is configured".into(),
    })
}

/// A header value carrying the key, marked sensitive so it never shows in debug output.
pub(crate) fn key_header(prefix: &str, key: &SecretString) -> Result<HeaderValue, ProviderError> {
    let mut v =
        HeaderValue::from_str(&format!("{prefix}{}", key.expose_secret())).map_err(|_| {
            ProviderError::InvalidKey {
                message: "the API key contains characters that cannot be sent in an HTTP header"
                    .into(),
            }
        })?;
    v.set_sensitive(true);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for k in [
            ProviderKind::Anthropic,
            ProviderKind::OpenAi,
            ProviderKind::Google,
            ProviderKind::Ollama,
            ProviderKind::OpenAiCompatible,
        ] {
            assert_eq!(ProviderKind::parse(k.as_str()), Some(k));
            if let Some(u) = k.default_base_url() {
                assert!(validate_base_url(u, true).is_ok(), "{u}");
            }
        }
        assert_eq!(ProviderKind::parse("OpenAI"), None);
        assert_eq!(ProviderKind::OpenAiCompatible.default_base_url(), None);
    }

    #[test]
    fn endpoint_urls_keep_the_base_path() {
        let ep = |base: &str| Endpoint {
            kind: ProviderKind::OpenAi,
            base: url::Url::parse(base).unwrap(),
            http: reqwest::Client::new(),
            settings: HttpSettings::default(),
        };
        assert_eq!(
            ep("https://api.openai.com/v1")
                .url(&["chat", "completions"])
                .unwrap()
                .as_str(),
            "https://api.openai.com/v1/chat/completions"
        );
        assert_eq!(
            ep("http://h:8080/").url(&["api", "chat"]).unwrap().as_str(),
            "http://h:8080/api/chat"
        );
        assert_eq!(
            ep("http://h/proxy/v1/").url(&["models"]).unwrap().as_str(),
            "http://h/proxy/v1/models"
        );
        assert_eq!(
            ep("http://h")
                .url(&["v1beta", "models", "a/b c:streamGenerateContent"])
                .unwrap()
                .as_str(),
            "http://h/v1beta/models/a%2Fb%20c:streamGenerateContent"
        );
    }

    #[test]
    fn key_headers_are_sensitive_and_never_debugged() {
        let key = SecretString::from("sk-very-secret");
        let v = key_header("Bearer ", &key).unwrap();
        assert!(v.is_sensitive());
        assert!(!format!("{v:?}").contains("very-secret"));
        assert!(key_header("", &SecretString::from("bad\nkey")).is_err());
    }
}
