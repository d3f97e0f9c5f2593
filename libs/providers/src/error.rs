//! Provider failures, their mapping to API errors, and the HTTP status / transport
//! classification shared by every provider.

use crate::ProviderKind;
use polylogue_contracts::error::{ApiError, ErrorCode};
use reqwest::header::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use std::time::{Duration, SystemTime};

/// Longest provider message kept in an error, in characters.
pub(crate) const MAX_MESSAGE_CHARS: usize = 300;

/// Why a provider call failed. Messages never contain API keys or request URLs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The provider rejected the key (HTTP 401/403, or Gemini's 400 for a bad key).
    #[error("the API key was rejected: {message}")]
    InvalidKey {
        /// The provider's explanation.
        message: String,
    },
    /// HTTP 429.
    #[error("rate limited by the provider: {message}")]
    RateLimited {
        /// How long the provider asked to wait, when it said.
        retry_after: Option<Duration>,
        /// The provider's explanation.
        message: String,
    },
    /// 5xx, 529, a refused or reset connection, or an error event in the stream.
    #[error("the provider is unavailable: {message}")]
    Unavailable {
        /// The HTTP status, when there was one.
        status: Option<u16>,
        /// What happened.
        message: String,
    },
    /// Connect, response-header, idle or whole-request timeout (or HTTP 408).
    #[error("the provider timed out: {message}")]
    Timeout {
        /// Which timeout fired.
        message: String,
    },
    /// Any other non-success status (other 4xx, or a redirect, which is never followed).
    #[error("the provider refused the request (HTTP {status}): {message}")]
    BadRequest {
        /// The HTTP status.
        status: u16,
        /// The provider's explanation, at most 300 characters.
        message: String,
    },
    /// A malformed body or chunk, or a stream that ended before its terminal event.
    #[error("unexpected response from the provider: {message}")]
    Protocol {
        /// What was wrong.
        message: String,
    },
}

impl ProviderError {
    /// Whether trying again may help: `Unavailable`, `Timeout` and `Protocol` (callers retry
    /// only before the first token). `RateLimited` is passed through, not retried.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            Self::Unavailable { .. } | Self::Timeout { .. } | Self::Protocol { .. }
        )
    }

    /// The API error a client sees for this failure with `provider`.
    pub fn to_api_error(&self, provider: ProviderKind) -> ApiError {
        let name = provider.display_name();
        match self {
            Self::InvalidKey { message } => ApiError::new(
                ErrorCode::UnprocessableEntity,
                format!("The {name} API key was rejected: {message}"),
            )
            .with_details(serde_json::json!({
                "reason": "invalid_api_key",
                "provider": provider.as_str(),
            })),
            Self::RateLimited {
                retry_after,
                message,
            } => {
                let err = ApiError::new(
                    ErrorCode::RateLimited,
                    format!("The {name} API is rate limiting requests: {message}"),
                );
                match retry_after {
                    Some(d) => err.with_details(serde_json::json!({
                        "retryAfter": ceil_secs(*d),
                    })),
                    None => err,
                }
            }
            Self::Unavailable { message, .. } => ApiError::new(
                ErrorCode::ServiceUnavailable,
                format!("The {name} API is unavailable: {message}"),
            ),
            Self::Protocol { message } => ApiError::new(
                ErrorCode::ServiceUnavailable,
                format!("The {name} API sent an unexpected response: {message}"),
            ),
            Self::Timeout { message } => ApiError::new(
                ErrorCode::GatewayTimeout,
                format!("The {name} API did not answer in time: {message}"),
            ),
            Self::BadRequest { status, message } => ApiError::new(
                ErrorCode::UnprocessableEntity,
                format!("The {name} API refused the request (HTTP {status}): {message}"),
            )
            .with_details(serde_json::json!({ "providerStatus": status })),
        }
    }

    pub(crate) fn protocol(message: impl Into<String>) -> Self {
        Self::Protocol {
            message: message.into(),
        }
    }

    pub(crate) fn is_invalid_key(&self) -> bool {
        matches!(self, Self::InvalidKey { .. })
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Trims and cuts a provider message to [`MAX_MESSAGE_CHARS`].
pub(crate) fn trim_message(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Replaces any verbatim occurrence of the key in a provider message.
pub(crate) fn redact(message: String, key: Option<&SecretString>) -> String {
    match key.map(ExposeSecret::expose_secret) {
        Some(k) if k.len() >= 6 && message.contains(k) => message.replace(k, "[redacted]"),
        _ => message,
    }
}

/// The error for a non-success HTTP status. `message` is the provider's, already extracted.
pub(crate) fn classify_status(status: u16, headers: &HeaderMap, message: String) -> ProviderError {
    match status {
        401 | 403 => ProviderError::InvalidKey { message },
        429 => ProviderError::RateLimited {
            retry_after: retry_after(headers, SystemTime::now()),
            message,
        },
        408 => ProviderError::Timeout { message },
        500..=599 => ProviderError::Unavailable {
            status: Some(status),
            message,
        },
        300..=399 => ProviderError::BadRequest {
            status,
            message: format!(
                "the server answered with a redirect (HTTP {status}), which is not followed; check the base URL"
            ),
        },
        _ => ProviderError::BadRequest { status, message },
    }
}

/// The provider's message from an error body: `error.message` (Anthropic, OpenAI, Gemini,
/// also inside Gemini's one-element array), `error` as a string (Ollama), `message`,
/// `detail`, or else the raw text; trimmed to 300 characters.
pub(crate) fn body_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
        let v = if v.is_array() { &v[0] } else { &v };
        let candidates = [
            &v["error"]["message"],
            &v["error"],
            &v["message"],
            &v["detail"],
        ];
        if let Some(m) = candidates.iter().find_map(|c| c.as_str()) {
            return trim_message(m);
        }
    }
    trim_message(&text)
}

/// `retry-after-ms` (OpenAI) if present, else `retry-after` as seconds or an HTTP-date.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && let Ok(d) = Duration::try_from_secs_f64(ms / 1000.0)
    {
        return Some(d);
    }
    let v = get("retry-after")?;
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(d) = v.parse::<f64>().map(Duration::try_from_secs_f64) {
        return d.ok();
    }
    let when = parse_http_date(v)?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form servers must send.
pub(crate) fn parse_http_date(s: &str) -> Option<SystemTime> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (_, rest) = s.trim().split_once(',')?;
    let parts: Vec<&str> = rest.split_ascii_whitespace().collect();
    let [day, month, year, time, zone] = parts.as_slice() else {
        return None;
    };
    if *zone != "GMT" && *zone != "UTC" {
        return None;
    }
    let day: i64 = day.parse().ok()?;
    let month =
        i64::try_from(MONTHS.iter().position(|m| m.eq_ignore_ascii_case(month))? + 1).ok()?;
    let year: i64 = year.parse().ok()?;
    let mut hms = time.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    if hms.next().is_some() || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = u64::try_from(days * 86_400 + h * 3600 + m * 60 + sec).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Maps a transport error; the URL is stripped so no endpoint detail leaks.
pub(crate) fn from_reqwest(e: reqwest::Error) -> ProviderError {
    let e = e.without_url();
    let message = error_chain(&e);
    if e.is_timeout() {
        ProviderError::Timeout { message }
    } else if e.is_decode() {
        ProviderError::Protocol { message }
    } else {
        // Connect errors, resets, broken bodies: the provider could not be reached properly.
        ProviderError::Unavailable {
            status: None,
            message,
        }
    }
}

/// An error and its sources, joined with `: `, trimmed to 300 characters.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    trim_message(&s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn status_classes() {
        let h = HeaderMap::new();
        let m = || "m".to_owned();
        assert!(matches!(
            classify_status(401, &h, m()),
            ProviderError::InvalidKey { .. }
        ));
        assert!(matches!(
            classify_status(403, &h, m()),
            ProviderError::InvalidKey { .. }
        ));
        assert!(matches!(
            classify_status(429, &headers(&[("retry-after", "7")]), m()),
            ProviderError::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(7)
        ));
        assert!(matches!(
            classify_status(408, &h, m()),
            ProviderError::Timeout { .. }
        ));
        assert!(matches!(
            classify_status(529, &h, m()),
            ProviderError::Unavailable {
                status: Some(529),
                ..
            }
        ));
        assert!(matches!(
            classify_status(502, &h, m()),
            ProviderError::Unavailable {
                status: Some(502),
                ..
            }
        ));
        assert!(matches!(
            classify_status(404, &h, m()),
            ProviderError::BadRequest { status: 404, .. }
        ));
        assert!(matches!(
            classify_status(307, &h, m()),
            ProviderError::BadRequest { status: 307, .. }
        ));
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(
            retry_after(
                &headers(&[("retry-after", "Sun, 06 Nov 1994 08:50:07 GMT")]),
                now
            ),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            retry_after(
                &headers(&[("retry-after", "Sun, 06 Nov 1994 08:00:00 GMT")]),
                now
            ),
            Some(Duration::ZERO)
        );
        assert_eq!(
            retry_after(
                &headers(&[("retry-after", "2"), ("retry-after-ms", "1500")]),
                now
            ),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "12")]), now),
            Some(Duration::from_secs(12))
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")]), now), None);
        assert_eq!(retry_after(&headers(&[("retry-after", "-1")]), now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
        assert_eq!(parse_http_date("Sun, 06 Foo 1994 08:49:37 GMT"), None);
    }

    #[test]
    fn body_messages_of_each_provider() {
        let anthropic = br#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#;
        assert_eq!(body_message(anthropic), "invalid x-api-key");
        let gemini = br#"[{"error":{"code":400,"message":"API key not valid.","status":"INVALID_ARGUMENT"}}]"#;
        assert_eq!(body_message(gemini), "API key not valid.");
        assert_eq!(
            body_message(br#"{"error":"model 'x' not found"}"#),
            "model 'x' not found"
        );
        assert_eq!(body_message(b"  plain text  "), "plain text");
        let long = "é".repeat(400);
        assert_eq!(body_message(long.as_bytes()).chars().count(), 301);
    }

    #[test]
    fn keys_are_redacted_from_messages() {
        let key = SecretString::from("sk-secret-123");
        assert_eq!(
            redact("bad key sk-secret-123 given".into(), Some(&key)),
            "bad key [redacted] given"
        );
    }

    #[test]
    fn api_error_mapping() {
        let e = ProviderError::InvalidKey {
            message: "nope".into(),
        }
        .to_api_error(ProviderKind::Anthropic);
        assert_eq!(e.code, ErrorCode::UnprocessableEntity);
        assert!(
            e.message
                .starts_with("The Anthropic API key was rejected: nope")
        );
        assert_eq!(
            e.details,
            Some(serde_json::json!({"reason": "invalid_api_key", "provider": "anthropic"}))
        );
        let e = ProviderError::RateLimited {
            retry_after: Some(Duration::from_millis(1500)),
            message: "slow".into(),
        }
        .to_api_error(ProviderKind::OpenAi);
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert_eq!(e.details, Some(serde_json::json!({"retryAfter": 2})));
        let e = ProviderError::BadRequest {
            status: 400,
            message: "x".into(),
        }
        .to_api_error(ProviderKind::Google);
        assert_eq!(e.code, ErrorCode::UnprocessableEntity);
        assert_eq!(e.details, Some(serde_json::json!({"providerStatus": 400})));
        let e = ProviderError::Timeout {
            message: "t".into(),
        }
        .to_api_error(ProviderKind::Ollama);
        assert_eq!(e.code, ErrorCode::GatewayTimeout);
        let e = ProviderError::protocol("cut").to_api_error(ProviderKind::Ollama);
        assert_eq!(e.code, ErrorCode::ServiceUnavailable);
        let e = ProviderError::Unavailable {
            status: Some(503),
            message: "down".into(),
        }
        .to_api_error(ProviderKind::OpenAiCompatible);
        assert_eq!(e.code, ErrorCode::ServiceUnavailable);
    }

    #[test]
    fn retryable_classes() {
        assert!(
            ProviderError::Unavailable {
                status: None,
                message: String::new()
            }
            .retryable()
        );
        assert!(
            ProviderError::Timeout {
                message: String::new()
            }
            .retryable()
        );
        assert!(ProviderError::protocol("x").retryable());
        assert!(
            !ProviderError::RateLimited {
                retry_after: None,
                message: String::new()
            }
            .retryable()
        );
        assert!(
            !ProviderError::InvalidKey {
                message: String::new()
            }
            .retryable()
        );
        assert!(
            !ProviderError::BadRequest {
                status: 400,
                message: String::new()
            }
            .retryable()
        );
    }
}
