pub mod auth;
pub mod inference;
pub mod models;
pub mod profile;
pub mod summaries;
pub mod system;
pub mod threads;

use crate::envelope::EdgeError;
use crate::middleware::Auth;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use polylogue_contracts::ErrorCode;
use polylogue_contracts::auth::AccessClaims;
use std::sync::Arc;

/// Extractor for routes that require a signed-in user: 401 otherwise.
pub struct User(pub Arc<AccessClaims>);

impl<S: Send + Sync> FromRequestParts<S> for User {
    type Rejection = EdgeError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<Auth>() {
            Some(Auth::Valid(claims)) => Ok(User(Arc::clone(claims))),
            Some(Auth::Invalid(reason)) => Err(EdgeError::new(ErrorCode::Unauthorized, *reason)),
            _ => Err(EdgeError::new(
                ErrorCode::Unauthorized,
                "authentication required",
            )),
        }
    }
}
