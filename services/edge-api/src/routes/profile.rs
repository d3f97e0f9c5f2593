//! `GET`/`PATCH /api/profile`, `POST /api/profile/api-keys`, `DELETE /api/profile/api-keys/:provider`.
//!
//! A provider key is plaintext only here, for the length of the request: its shape is checked,
//! the provider is asked once whether it accepts it, and it is sealed (envelope encryption: a
//! fresh data key from the KMS, AES-256-GCM, associated data = user + provider + key version)
//! before anything crosses NATS. The auth service stores the envelope; only the inference router
//! and summarizer open it again.

use super::User;
use crate::envelope::{EdgeError, Reply};
use crate::json::ValidJson;
use crate::middleware::{RequestMeta, bus_context};
use crate::state::EdgeState;
use axum::Extension;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use polylogue_contracts::keys::PROVIDERS;
use polylogue_contracts::profile::{
    ApiKeysBody, ApiKeysReply, KeysDeleteReply, KeysDeleteRequest, KeysPutRequest,
    ProfileGetRequest, ProfilePatchBody, ProfileUpdateRequest, ProfileView, SealedKey,
};
use polylogue_contracts::subjects::{auth as verbs, service};
use polylogue_contracts::{ApiError, ErrorCode, Secret};
use polylogue_crypto::KeyContext;
use secrecy::SecretString;
use serde_json::json;
use std::sync::Arc;

/// Longest key accepted, in bytes.
const KEY_MAX: usize = 512;

pub async fn get(
    State(state): State<Arc<EdgeState>>,
    Extension(meta): Extension<RequestMeta>,
    headers: HeaderMap,
    User(user): User,
) -> Result<Reply, EdgeError> {
    let profile: ProfileView = state
        .bus
        .request(
            service::AUTH,
            verbs::PROFILE_GET,
            &bus_context(&meta, &headers),
            &ProfileGetRequest {
                user_id: user.sub.clone(),
            },
        )
        .await?;
    Ok(Reply::ok(json!({ "user": profile })))
}

pub async fn update(
    State(state): State<Arc<EdgeState>>,
    Extension(meta): Extension<RequestMeta>,
    headers: HeaderMap,
    User(user): User,
    ValidJson(patch): ValidJson<ProfilePatchBody>,
) -> Result<Reply, EdgeError> {
    let profile: ProfileView = state
        .bus
        .request(
            service::AUTH,
            verbs::PROFILE_UPDATE,
            &bus_context(&meta, &headers),
            &ProfileUpdateRequest {
                user_id: user.sub.clone(),
                patch,
            },
        )
        .await?;
    Ok(Reply::ok(json!({ "user": profile })))
}

/// The documented shape of each provider's keys; never echoes the key.
pub fn check_shape(provider: &str, key: &str) -> Result<(), ApiError> {
    let (prefix, min) = match provider {
        "claude" => ("sk-ant-", 20),
        "openai" => ("sk-", 20),
        _ => ("AIza", 30),
    };
    let ok = key.len() >= min
        && key.len() <= KEY_MAX
        && key.starts_with(prefix)
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::ValidationError,
            format!(
                "this does not look like a {provider} API key: expected {prefix}… followed by letters, digits, '-' or '_' ({min}-{KEY_MAX} characters in all)"
            ),
        )
        .with_details(json!({ "field": provider, "expected": format!("{prefix}…") })))
    }
}

/// What asking the provider said.
enum Verdict {
    Accepted,
    Rejected(String),
    Unverified(String),
}

async fn verify(state: &EdgeState, provider: &str, key: &Secret) -> Verdict {
    let Some(client) = state.key_verifiers.get(provider) else {
        return Verdict::Unverified(format!(
            "{provider} is not reachable from this installation"
        ));
    };
    let secret = SecretString::from(key.expose().to_owned());
    match tokio::time::timeout(state.key_verify_timeout, client.verify_key(&secret)).await {
        Ok(Ok(())) => Verdict::Accepted,
        Ok(Err(polylogue_providers::ProviderError::InvalidKey { .. })) => {
            Verdict::Rejected(format!("{provider} rejected this key"))
        }
        Ok(Err(e)) => Verdict::Unverified(format!("could not verify with {provider}: {e}")),
        Err(_) => Verdict::Unverified(format!(
            "could not verify with {provider}: no answer within {} ms",
            state.key_verify_timeout.as_millis()
        )),
    }
}

pub async fn put_keys(
    State(state): State<Arc<EdgeState>>,
    Extension(meta): Extension<RequestMeta>,
    headers: HeaderMap,
    User(user): User,
    ValidJson(body): ValidJson<ApiKeysBody>,
) -> Result<Reply, EdgeError> {
    let entries = body.entries();
    if entries.is_empty() {
        return Err(ApiError::validation(
            "body",
            format!("name at least one of {}", PROVIDERS.join(", ")),
        )
        .into());
    }
    let entries: Vec<(&'static str, Secret)> = entries
        .into_iter()
        .map(|(p, k)| (p, Secret::new(k.expose().trim())))
        .collect();
    for (provider, key) in &entries {
        check_shape(provider, key.expose())?;
    }
    let verdicts =
        futures::future::join_all(entries.iter().map(|(p, k)| verify(&state, p, k))).await;
    let mut reply = ApiKeysReply::default();
    let mut sealed = Vec::new();
    // One version per request: later than any earlier one, so an envelope opens only as the
    // version it was sealed for.
    let key_version = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000)
        .unwrap_or(1)
        .max(1);
    for ((provider, key), verdict) in entries.iter().zip(verdicts) {
        match verdict {
            Verdict::Accepted => {
                reply.verified.insert((*provider).to_owned(), true);
            }
            Verdict::Rejected(reason) => {
                reply.verified.insert((*provider).to_owned(), false);
                reply.reasons.insert((*provider).to_owned(), reason);
                continue;
            }
            Verdict::Unverified(reason) => {
                reply.verified.insert((*provider).to_owned(), false);
                reply.reasons.insert((*provider).to_owned(), reason);
            }
        }
        let ctx = KeyContext {
            user_id: &user.sub,
            provider,
            key_version,
        };
        let envelope = polylogue_crypto::seal(state.kms.as_ref(), key.expose(), &ctx)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "provider key not sealed");
                if e.is_unavailable() {
                    EdgeError::new(
                        ErrorCode::ServiceUnavailable,
                        "key management is unavailable; no key was stored, try again shortly",
                    )
                } else {
                    EdgeError::from(ApiError::internal())
                }
            })?;
        sealed.push(SealedKey {
            provider: (*provider).to_owned(),
            envelope,
            hint: polylogue_crypto::hint(key.expose()),
        });
    }
    if !sealed.is_empty() {
        reply.updated = state
            .bus
            .request(
                service::AUTH,
                verbs::KEYS_PUT,
                &bus_context(&meta, &headers),
                &KeysPutRequest {
                    user_id: user.sub.clone(),
                    keys: sealed,
                },
            )
            .await?;
    }
    Ok(Reply::ok(reply))
}

pub async fn delete_key(
    State(state): State<Arc<EdgeState>>,
    Extension(meta): Extension<RequestMeta>,
    headers: HeaderMap,
    User(user): User,
    path: Result<Path<String>, PathRejection>,
) -> Result<Reply, EdgeError> {
    let Path(provider) =
        path.map_err(|_| EdgeError::new(ErrorCode::NotFound, "no such provider"))?;
    if !PROVIDERS.contains(&provider.as_str()) {
        return Err(EdgeError::new(
            ErrorCode::NotFound,
            format!("no such provider; one of {}", PROVIDERS.join(", ")),
        ));
    }
    let reply: KeysDeleteReply = state
        .bus
        .request(
            service::AUTH,
            verbs::KEYS_DELETE,
            &bus_context(&meta, &headers),
            &KeysDeleteRequest {
                user_id: user.sub.clone(),
                provider: provider.clone(),
            },
        )
        .await?;
    Ok(Reply::ok(
        json!({ "provider": provider, "deleted": reply.deleted }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_checked_without_echoing_the_key() {
        assert!(check_shape("claude", "sk-ant-api03-abcdefghijklmnop").is_ok());
        assert!(check_shape("openai", "sk-proj-abcdefghijklmnopqrst").is_ok());
        assert!(check_shape("google", "AIzaSyA1234567890abcdefghijklmnopqrs").is_ok());
        for (p, k) in [
            ("claude", "sk-proj-abcdefghijklmnopqrst"),
            ("openai", "sk-short"),
            ("google", "not-a-google-key-canary-000000000"),
            ("openai", "sk-has space in it canary 0000000"),
        ] {
            let e = check_shape(p, k).unwrap_err();
            assert_eq!(e.code, ErrorCode::ValidationError);
            assert!(!e.message.contains("canary") && !e.message.contains(k));
        }
    }
}
