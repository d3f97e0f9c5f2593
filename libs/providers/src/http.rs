//! The shared HTTP client, the timeouts around each call, and the body-to-event stream driver.

use crate::error::{body_message, classify_status, from_reqwest, redact};
use crate::parse::StreamParser;
use crate::{ProviderError, ProviderKind, StreamEvent, TokenStream};
use futures::StreamExt;
use secrecy::SecretString;
use std::collections::VecDeque;
use std::time::Duration;

/// Largest success body read by a non-streaming call.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Largest error body read to find the provider's message.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// Timeouts and pool size of the provider HTTP client.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// TCP (and TLS) connect timeout.
    pub connect_timeout: Duration,
    /// Time from sending a streaming request until the response headers arrive.
    pub header_timeout: Duration,
    /// Longest gap between two body chunks while streaming.
    pub idle_timeout: Duration,
    /// Whole non-streaming call, headers and body.
    pub request_timeout: Duration,
    /// Idle keep-alive connections kept per host.
    pub pool_idle_per_host: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            header_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(300),
            pool_idle_per_host: 64,
        }
    }
}

/// One shared client pool: keep-alive, TCP_NODELAY, connect timeout, no redirects, bounded idle
/// pool per host; HTTP/1.1 and HTTP/2 negotiated by ALPN. No cookie store.
pub fn http_client(settings: &HttpSettings) -> Result<reqwest::Client, ProviderError> {
    reqwest::Client::builder()
        .connect_timeout(settings.connect_timeout)
        .tcp_nodelay(true)
        .tcp_keepalive(Some(Duration::from_secs(30)))
        .pool_idle_timeout(Some(Duration::from_secs(90)))
        .pool_max_idle_per_host(settings.pool_idle_per_host)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("polylogue/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ProviderError::Unavailable {
            status: None,
            message: format!(
                "could not build the HTTP client: {}",
                crate::error::error_chain(&e.without_url())
            ),
        })
}

/// Sends `rb` and waits at most `header_timeout` for the headers; a non-2xx answer becomes the
/// matching error (its body is read, bounded, for the provider's message).
pub(crate) async fn send(
    rb: reqwest::RequestBuilder,
    header_timeout: Duration,
    kind: ProviderKind,
    key: Option<&SecretString>,
) -> Result<reqwest::Response, ProviderError> {
    let resp = match tokio::time::timeout(header_timeout, rb.send()).await {
        Err(_) => {
            return Err(ProviderError::Timeout {
                message: format!(
                    "no response headers within {}",
                    human_duration(header_timeout)
                ),
            });
        }
        Ok(Err(e)) => return Err(from_reqwest(e)),
        Ok(Ok(resp)) => resp,
    };
    if resp.status().is_success() {
        return Ok(resp);
    }
    Err(error_from_response(resp, kind, key, header_timeout).await)
}

async fn error_from_response(
    resp: reqwest::Response,
    kind: ProviderKind,
    key: Option<&SecretString>,
    read_timeout: Duration,
) -> ProviderError {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = if (300..400).contains(&status) {
        Vec::new()
    } else {
        tokio::time::timeout(
            read_timeout.min(Duration::from_secs(10)),
            read_body(resp, MAX_ERROR_BODY_BYTES, true),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default()
    };
    let mut message = redact(body_message(&body), key);
    if message.is_empty() {
        message = format!("HTTP {status}");
    }
    let err = classify_status(status, &headers, message);
    if kind == ProviderKind::Google {
        crate::gemini::refine_error(err, &body)
    } else {
        err
    }
}

/// Reads a body up to `limit` bytes: past it, either stops there (`truncate`) or errors.
pub(crate) async fn read_body(
    mut resp: reqwest::Response,
    limit: usize,
    truncate: bool,
) -> Result<Vec<u8>, ProviderError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(from_reqwest)? {
        if body.len() + chunk.len() > limit {
            if truncate {
                let room = limit - body.len();
                body.extend_from_slice(&chunk[..room]);
                return Ok(body);
            }
            return Err(ProviderError::protocol(format!(
                "the response body is larger than {limit} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A whole non-streaming JSON call, bounded by `request_timeout`.
pub(crate) async fn call_json(
    rb: reqwest::RequestBuilder,
    request_timeout: Duration,
    kind: ProviderKind,
    key: Option<&SecretString>,
) -> Result<serde_json::Value, ProviderError> {
    let call = async {
        let resp = send(rb, request_timeout, kind, key).await?;
        let body = read_body(resp, MAX_BODY_BYTES, false).await?;
        serde_json::from_slice::<serde_json::Value>(&body)
            .map_err(|e| ProviderError::protocol(format!("the response is not valid JSON: {e}")))
    };
    match tokio::time::timeout(request_timeout, call).await {
        Ok(result) => result,
        Err(_) => Err(ProviderError::Timeout {
            message: format!(
                "no complete response within {}",
                human_duration(request_timeout)
            ),
        }),
    }
}

/// A cheap GET answered with 2xx. With `no_key_ok`, 401/403 count as reachable too.
pub(crate) async fn probe(
    rb: reqwest::RequestBuilder,
    timeout: Duration,
    kind: ProviderKind,
    key: Option<&SecretString>,
    no_key_ok: bool,
) -> Result<(), ProviderError> {
    let call = async {
        match send(rb, timeout, kind, key).await {
            Ok(_) => Ok(()),
            Err(e) if no_key_ok && e.is_invalid_key() => Ok(()),
            Err(e) => Err(e),
        }
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result,
        Err(_) => Err(ProviderError::Timeout {
            message: format!("no answer within {}", human_duration(timeout)),
        }),
    }
}

fn human_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

type ByteStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<bytes::Bytes, reqwest::Error>> + Send>>;

struct Drive {
    body: Option<ByteStream>,
    parser: StreamParser,
    pending: VecDeque<Result<StreamEvent, ProviderError>>,
    idle: Duration,
    ended: bool,
}

/// Turns a 2xx streaming response into events: body chunks go through `parser`; a gap longer
/// than `idle` yields a Timeout item; the stream stops after its Done or first error.
pub(crate) fn drive(resp: reqwest::Response, parser: StreamParser, idle: Duration) -> TokenStream {
    let state = Drive {
        body: Some(Box::pin(resp.bytes_stream())),
        parser,
        pending: VecDeque::new(),
        idle,
        ended: false,
    };
    Box::pin(futures::stream::unfold(state, |mut st| async move {
        loop {
            if st.ended {
                return None;
            }
            if let Some(item) = st.pending.pop_front() {
                if matches!(item, Ok(StreamEvent::Done { .. }) | Err(_)) {
                    st.ended = true;
                    st.pending.clear();
                    // Release the connection now rather than when the consumer drops us.
                    st.body = None;
                }
                return Some((item, st));
            }
            let body = st.body.as_mut()?;
            match tokio::time::timeout(st.idle, body.next()).await {
                Err(_) => {
                    st.body = None;
                    st.pending.push_back(Err(ProviderError::Timeout {
                        message: format!(
                            "the stream was idle for more than {}",
                            human_duration(st.idle)
                        ),
                    }));
                }
                Ok(None) => {
                    st.body = None;
                    st.pending.extend(st.parser.finish());
                }
                Ok(Some(Err(e))) => {
                    st.body = None;
                    st.pending.push_back(Err(from_reqwest(e)));
                }
                Ok(Some(Ok(chunk))) => st.pending.extend(st.parser.push(&chunk)),
            }
        }
    }))
}
