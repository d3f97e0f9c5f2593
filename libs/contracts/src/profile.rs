//! Profiles and per-user provider keys: the bodies of `/api/profile*` and the NATS messages of
//! the auth service behind them. No plaintext key ever appears in a reply type here.

use crate::Secret;
use crate::keys::KeyEnvelope;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;

/// Longest `displayName`, in characters.
pub const DISPLAY_NAME_MAX: usize = 100;
/// Longest `settings.systemPrompt`, in characters.
pub const SYSTEM_PROMPT_MAX: usize = 8_000;

/// `settings` of a profile; `null` = the installation's default applies.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProfileSettingsView {
    pub default_model: Option<String>,
    pub default_temperature: Option<f64>,
    pub system_prompt: Option<String>,
}

/// One provider of `apiKeys`: whether a key is stored, when it was last used, and its masked
/// hint (`…last4`). Never the key or its ciphertext.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyStatus {
    pub configured: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// When the key was added (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

/// `data.user` of `GET /api/profile` and `PATCH /api/profile`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProfileView {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub created_at: String,
    pub settings: ProfileSettingsView,
    /// Keyed by provider (`claude`, `openai`, `google`); every provider is present.
    pub api_keys: BTreeMap<String, ApiKeyStatus>,
}

/// Deserialises a field that may be absent (outer `None`), `null` (`Some(None)`) or a value.
fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// `settings` of `PATCH /api/profile`: absent = unchanged, `null` = back to the default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SettingsPatch {
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    pub default_model: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    pub default_temperature: Option<Option<f64>>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    pub system_prompt: Option<Option<String>>,
}

/// `PATCH /api/profile` body; unknown fields are refused (400).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProfilePatchBody {
    /// `null` is refused (a name cannot be cleared), so it is told apart from absent.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    pub display_name: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<SettingsPatch>,
}

/// NATS `auth.profile.get`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProfileGetRequest {
    pub user_id: String,
}

/// NATS `auth.profile.update`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProfileUpdateRequest {
    pub user_id: String,
    pub patch: ProfilePatchBody,
}

/// `POST /api/profile/api-keys` body: any subset of the providers. Unknown fields → 400.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysBody {
    #[serde(default)]
    pub claude: Option<Secret>,
    #[serde(default)]
    pub openai: Option<Secret>,
    #[serde(default)]
    pub google: Option<Secret>,
}

impl ApiKeysBody {
    /// The keys given, in the order of [`crate::keys::PROVIDERS`].
    pub fn entries(&self) -> Vec<(&'static str, &Secret)> {
        [
            ("claude", self.claude.as_ref()),
            ("openai", self.openai.as_ref()),
            ("google", self.google.as_ref()),
        ]
        .into_iter()
        .filter_map(|(p, k)| k.map(|k| (p, k)))
        .collect()
    }
}

/// `data` of `POST /api/profile/api-keys`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeysReply {
    /// Providers whose key was stored by this call.
    pub updated: Vec<String>,
    /// Per provider named in the request: whether the provider accepted the key just now.
    pub verified: BTreeMap<String, bool>,
    /// Why a key is not verified (provider unreachable, key refused), per provider.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reasons: BTreeMap<String, String>,
}

/// One sealed key for `auth.keys.put`: sealed by the edge, stored as is by auth.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SealedKey {
    pub provider: String,
    pub envelope: KeyEnvelope,
    /// Masked hint (`…last4`).
    pub hint: String,
}

/// NATS `auth.keys.put`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeysPutRequest {
    pub user_id: String,
    pub keys: Vec<SealedKey>,
}

/// NATS `auth.keys.delete`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeysDeleteRequest {
    pub user_id: String,
    pub provider: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeysDeleteReply {
    pub deleted: bool,
}

/// NATS `auth.keys.envelope`: the inference router asks for a user's sealed key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvelopeRequest {
    pub user_id: String,
    pub provider: String,
}

/// The sealed key, or `None` when the user has none for that provider.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvelopeReply {
    pub envelope: Option<KeyEnvelope>,
}

/// Core-NATS `auth.keys.changed`: a key was added, replaced or deleted; caches drop it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeysChanged {
    pub user_id: String,
    pub provider: String,
}

/// NATS `auth.keys.rewrap`: re-wrap every stored data key under the KMS's newest version.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RewrapRequest {
    /// Keys per page (default 100).
    #[serde(default)]
    pub page_size: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RewrapReply {
    /// Keys looked at.
    pub scanned: u64,
    /// Keys re-wrapped (their wrapped data key changed version).
    pub rewrapped: u64,
    /// Keys already under the newest version.
    pub current: u64,
    /// Keys changed concurrently (their owner replaced them); nothing to do.
    pub skipped: u64,
    /// Keys whose data key did not unwrap (reported, left as they are).
    pub failed: u64,
    /// The KMS version every re-wrapped key is now under.
    pub version: u32,
}

/// One use of a stored key, on the audit stream (`<prefix>.audit.keys.used`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyUsed {
    pub user_id: String,
    pub provider: String,
    pub key_version: u64,
    /// The catalog model the call went to.
    pub model: String,
    /// `inference-router` or `summarizer`.
    pub service: String,
    /// RFC 3339.
    pub at: String,
}

/// A stored key that failed to decrypt (tampered, or moved to another user), on the audit
/// stream (`<prefix>.audit.keys.failed`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyFailed {
    pub user_id: String,
    pub provider: String,
    pub key_version: u64,
    pub reason: String,
    pub service: String,
    pub at: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_tells_absent_from_null() -> Result<(), serde_json::Error> {
        let p: ProfilePatchBody =
            serde_json::from_str(r#"{"settings":{"systemPrompt":null,"defaultTemperature":0.5}}"#)?;
        let s = p.settings.unwrap_or_default();
        assert_eq!(s.system_prompt, Some(None));
        assert_eq!(s.default_temperature, Some(Some(0.5)));
        assert_eq!(s.default_model, None);
        assert!(serde_json::from_str::<ProfilePatchBody>(r#"{"settings":{"colour":1}}"#).is_err());
        assert!(serde_json::from_str::<ProfilePatchBody>(r#"{"email":"x"}"#).is_err());
        Ok(())
    }

    #[test]
    fn key_bodies_refuse_unknown_providers_and_never_debug_keys() -> Result<(), serde_json::Error> {
        assert!(serde_json::from_str::<ApiKeysBody>(r#"{"mistral":"k"}"#).is_err());
        let b: ApiKeysBody = serde_json::from_str(r#"{"openai":"sk-canary-123456"}"#)?;
        assert!(!format!("{b:?}").contains("canary"));
        assert_eq!(b.entries().len(), 1);
        Ok(())
    }
}
