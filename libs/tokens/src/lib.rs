//! Access tokens: HS256 JWTs with a `kid` header and a key ring. The auth service signs with the
//! newest key; every edge replica verifies locally (no NATS hop per request) with any key still
//! in the ring, so keys rotate without logging anyone out.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use polylogue_config::JwtSettings;
use polylogue_contracts::auth::{AccessClaims, JWT_AUDIENCE, JWT_ISSUER};
use secrecy::ExposeSecret;
use std::collections::HashMap;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token is not signed with HS256")]
    WrongAlgorithm,
    #[error("the token names an unknown key")]
    UnknownKey,
    #[error("the token signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not meant for this API")]
    WrongAudience,
    #[error("the key ring is empty")]
    NoSigningKey,
}

pub struct KeyRing {
    signing_kid: String,
    signing: EncodingKey,
    verifying: HashMap<String, DecodingKey>,
    validation: Validation,
}

impl KeyRing {
    pub fn new(settings: &JwtSettings) -> Result<Self, TokenError> {
        let first = settings.keys.first().ok_or(TokenError::NoSigningKey)?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[JWT_AUDIENCE]);
        validation.set_issuer(&[JWT_ISSUER]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        validation.leeway = 5;
        Ok(Self {
            signing_kid: first.kid.clone(),
            signing: EncodingKey::from_secret(first.secret.expose_secret().as_bytes()),
            verifying: settings
                .keys
                .iter()
                .map(|k| {
                    (
                        k.kid.clone(),
                        DecodingKey::from_secret(k.secret.expose_secret().as_bytes()),
                    )
                })
                .collect(),
            validation,
        })
    }

    pub fn sign(&self, claims: &AccessClaims) -> Result<String, TokenError> {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.signing_kid.clone());
        jsonwebtoken::encode(&header, claims, &self.signing).map_err(|_| TokenError::Malformed)
    }

    /// Checks algorithm (HS256 only: `none`, HS512 and RS256 are refused), key id, signature,
    /// expiry, audience and issuer.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::HS256 {
            return Err(TokenError::WrongAlgorithm);
        }
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let key = self.verifying.get(&kid).ok_or(TokenError::UnknownKey)?;
        jsonwebtoken::decode::<AccessClaims>(token, key, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::InvalidSignature => TokenError::BadSignature,
                    ErrorKind::ExpiredSignature => TokenError::Expired,
                    ErrorKind::InvalidAudience | ErrorKind::InvalidIssuer => {
                        TokenError::WrongAudience
                    }
                    ErrorKind::InvalidAlgorithm => TokenError::WrongAlgorithm,
                    _ => TokenError::Malformed,
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polylogue_config::JwtKey;

    fn settings(keys: &[(&str, &str)]) -> JwtSettings {
        JwtSettings {
            keys: keys
                .iter()
                .map(|(kid, secret)| JwtKey {
                    kid: (*kid).into(),
                    secret: (*secret).to_owned().into(),
                })
                .collect(),
            ..JwtSettings::default()
        }
    }

    fn claims(exp_from_now: i64) -> AccessClaims {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        AccessClaims {
            sub: "u1".into(),
            username: "a@b.c".into(),
            iat: now,
            exp: now.saturating_add_signed(exp_from_now),
            scope: vec!["read".into(), "write".into()],
            aud: JWT_AUDIENCE.into(),
            iss: JWT_ISSUER.into(),
            jti: "j1".into(),
            sid: "s1".into(),
        }
    }

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn a_token_verifies_after_its_key_stops_signing_and_fails_once_retired() {
        let old = KeyRing::new(&settings(&[("k1", A)])).unwrap();
        let token = old.sign(&claims(60)).unwrap();
        let rotated = KeyRing::new(&settings(&[("k2", B), ("k1", A)])).unwrap();
        assert_eq!(rotated.verify(&token).unwrap(), claims(60));
        let new_token = rotated.sign(&claims(60)).unwrap();
        assert_eq!(
            jsonwebtoken::decode_header(&new_token)
                .unwrap()
                .kid
                .as_deref(),
            Some("k2")
        );
        let retired = KeyRing::new(&settings(&[("k2", B)])).unwrap();
        assert_eq!(retired.verify(&token), Err(TokenError::UnknownKey));
    }

    #[test]
    fn expired_and_foreign_tokens_are_refused() {
        let ring = KeyRing::new(&settings(&[("k1", A)])).unwrap();
        let expired = ring.sign(&claims(-60)).unwrap();
        assert_eq!(ring.verify(&expired), Err(TokenError::Expired));
        let mut foreign = claims(60);
        foreign.aud = "someone-else".into();
        let token = ring.sign(&foreign).unwrap();
        assert_eq!(ring.verify(&token), Err(TokenError::WrongAudience));
        let other = KeyRing::new(&settings(&[("k1", B)])).unwrap();
        let forged = other.sign(&claims(60)).unwrap();
        assert_eq!(ring.verify(&forged), Err(TokenError::BadSignature));
    }
}
