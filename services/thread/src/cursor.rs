//! Opaque, signed pagination cursors. A cursor names its owner and the exact listing it belongs to
//! (sort, direction, query or thread/model) and carries an HMAC, so a cursor of another user,
//! another listing or a forged value is refused with 400 instead of leaking anything.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use polylogue_contracts::ApiError;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// What a cursor is bound to, and where it points.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Owner.
    pub u: String,
    /// Listing: e.g. `threads:updated_at:desc:<query>` or `messages:<thread>:<model>:asc`.
    pub l: String,
    /// Sort timestamp (ms), threads only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub a: Option<i64>,
    /// Last id.
    pub i: String,
}

pub struct CursorKey(Vec<u8>);

impl CursorKey {
    /// Derived from a secret the service already has (the newest JWT key), so replicas agree and
    /// nothing new must be provisioned. Rotating that key invalidates cursors, which is harmless.
    pub fn derive(secret: &[u8]) -> Self {
        use sha2::Digest;
        let mut h = Sha256::new();
        h.update(b"polylogue/pagination-cursor/v1\0");
        h.update(secret);
        Self(h.finalize().to_vec())
    }

    /// A 128-bit tag. HMAC takes keys of any length, so `None` cannot happen; if it did, every
    /// cursor would fail to verify rather than pass.
    fn mac(&self, data: &[u8]) -> Option<[u8; 16]> {
        let mut mac = HmacSha256::new_from_slice(&self.0).ok()?;
        mac.update(data);
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; 16];
        out.copy_from_slice(full.get(..16)?);
        Some(out)
    }

    pub fn encode(&self, position: &Position) -> String {
        let body = serde_json::to_vec(position).unwrap_or_default();
        let tag = self.mac(&body).unwrap_or_default();
        format!("{}.{}", B64.encode(&body), B64.encode(tag))
    }

    /// Checks the signature and that the cursor belongs to `owner` and `listing`.
    pub fn decode(&self, cursor: &str, owner: &str, listing: &str) -> Result<Position, ApiError> {
        let invalid = || ApiError::validation("cursor", "the cursor is invalid for this listing");
        let (body, tag) = cursor.split_once('.').ok_or_else(invalid)?;
        let body = B64.decode(body).map_err(|_| invalid())?;
        let tag = B64.decode(tag).map_err(|_| invalid())?;
        let expected = self.mac(&body).ok_or_else(invalid)?;
        if tag.len() != expected.len() || !constant_time_eq(&tag, &expected) {
            return Err(invalid());
        }
        let position: Position = serde_json::from_slice(&body).map_err(|_| invalid())?;
        if position.u != owner || position.l != listing {
            return Err(invalid());
        }
        Ok(position)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos() -> Position {
        Position {
            u: "alice".into(),
            l: "threads:updated_at:desc:".into(),
            a: Some(5),
            i: "x".into(),
        }
    }

    #[test]
    fn a_cursor_round_trips_only_for_its_owner_and_listing() {
        let key = CursorKey::derive(b"secret-secret-secret-secret-secret");
        let c = key.encode(&pos());
        assert_eq!(
            key.decode(&c, "alice", "threads:updated_at:desc:").unwrap(),
            pos()
        );
        assert!(key.decode(&c, "bob", "threads:updated_at:desc:").is_err());
        assert!(key.decode(&c, "alice", "threads:created_at:desc:").is_err());
        let other = CursorKey::derive(b"another-secret-another-secret-xx");
        assert!(
            other
                .decode(&c, "alice", "threads:updated_at:desc:")
                .is_err()
        );
        // A flipped character anywhere is refused.
        let mut bytes = c.into_bytes();
        bytes[3] = if bytes[3] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(bytes).unwrap();
        assert!(
            key.decode(&forged, "alice", "threads:updated_at:desc:")
                .is_err()
        );
        assert!(key.decode("garbage", "alice", "x").is_err());
    }
}
