//! `ValidJson<T>`: the JSON body extractor. Every way a body can be wrong becomes a 400
//! `VALIDATION_ERROR` naming the field (or 413 past the body limit), never axum's plain-text rejection.

use crate::envelope::EdgeError;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use bytes::Bytes;
use polylogue_contracts::{ApiError, ErrorCode};
use serde::de::DeserializeOwned;

pub struct ValidJson<T>(pub T);

impl<S, T> FromRequest<S> for ValidJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = EdgeError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim();
                mime.eq_ignore_ascii_case("application/json")
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            });
        if !is_json {
            return Err(ApiError::validation(
                "Content-Type",
                "the body must be JSON (Content-Type: application/json)",
            )
            .into());
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                EdgeError::new(ErrorCode::PayloadTooLarge, "the request body is too large")
            } else {
                ApiError::validation("body", "the request body could not be read").into()
            }
        })?;
        parse(&bytes).map(ValidJson).map_err(EdgeError::from)
    }
}

/// Deserialises `bytes`, naming the failing field as the spec's `details.field`.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let message = inner.to_string();
        // The path ends at the failing value, except for a missing field, where it names the
        // object that lacks it.
        let field = match backticked(&message).filter(|_| message.starts_with("missing field")) {
            Some(name) if path == "." => name.to_owned(),
            Some(name) => format!("{path}.{name}"),
            None if path == "." => "body".to_owned(),
            None => path,
        };
        let reason = if inner.is_syntax() || inner.is_eof() {
            "the body is not valid JSON".to_owned()
        } else if message.starts_with("invalid ") {
            // serde quotes the offending value ("invalid type: string \"…\""); it may be a
            // secret sent in the wrong place, so only the expectation is repeated.
            let expected = message
                .split(", expected ")
                .nth(1)
                .and_then(|rest| rest.split(" at line ").next())
                .unwrap_or("another type");
            format!("wrong type or value, expected {expected}")
        } else {
            // serde's message without the " at line L column C" suffix.
            message
                .split(" at line ")
                .next()
                .unwrap_or(&message)
                .to_owned()
        };
        ApiError::new(
            ErrorCode::ValidationError,
            format!("invalid request body: {reason}"),
        )
        .with_details(serde_json::json!({ "field": field, "reason": reason }))
    })
}

fn backticked(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[expect(dead_code, reason = "fields are only deserialised")]
    struct Login {
        username: String,
        password: String,
    }

    fn field(body: &str) -> String {
        let err = parse::<Login>(body.as_bytes()).unwrap_err();
        assert_eq!(err.code, ErrorCode::ValidationError);
        err.details.unwrap()["field"].as_str().unwrap().to_owned()
    }

    #[test]
    fn every_bad_body_names_its_field() {
        assert_eq!(field(r#"{"username":"a"}"#), "password");
        assert_eq!(
            field(r#"{"username":"a","password":"b","admin":true}"#),
            "admin"
        );
        assert_eq!(field(r#"{"username":5,"password":"b"}"#), "username");
        assert_eq!(field(r#"{"username":"a","password":"#), "password");
        assert_eq!(field("[]"), "body");
    }

    #[derive(Debug, Deserialize)]
    #[expect(dead_code, reason = "fields are only deserialised")]
    struct Numbers {
        count: u32,
    }

    #[test]
    fn a_wrongly_typed_value_is_not_echoed_back() {
        let err = parse::<Numbers>(br#"{"count":"sk-secret-canary"}"#).unwrap_err();
        let text = serde_json::to_string(&err).unwrap();
        assert!(!text.contains("canary"), "{text}");
        assert!(text.contains("expected u32"), "{text}");
    }
}
