//! Vault / OpenBao transit as the KMS: data keys come from `datakey/plaintext`, are unwrapped by
//! `decrypt` and moved to the newest key version by `rewrap`, so the key-encryption key never
//! leaves Vault.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use polylogue_contracts::keys::WrappedKey;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use vaultrs::api::transit::KeyType;
use vaultrs::api::transit::requests::{CreateKeyRequest, DataKeyType, GenerateDataKeyRequest};
use vaultrs::api::transit::responses::ReadKeyData;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use zeroize::Zeroizing;

use crate::kms::{DATA_KEY_LEN, DataKey, Kms, KmsError, check_kms_name, parse_versioned};

const NAME: &str = "vault";

/// How to reach the transit key.
///
/// TLS settings not given here (CA bundle, client certificate, skipping verification) come from
/// the usual `VAULT_CACERT`, `VAULT_CAPATH`, `VAULT_CLIENT_CERT`/`VAULT_CLIENT_KEY` and
/// `VAULT_SKIP_VERIFY` variables.
#[derive(Debug, Clone)]
pub struct VaultConfig {
    /// Base URL, e.g. `https://vault.internal:8200`.
    pub address: String,
    /// Token with `update` on `<mount>/datakey/plaintext/<key>`, `<mount>/decrypt/<key>` and
    /// `<mount>/rewrap/<key>`, `read` on `<mount>/keys/<key>` (and `update` on
    /// `<mount>/keys/<key>/rotate` to rotate).
    pub token: SecretString,
    /// Transit engine mount path (default `transit`).
    pub mount: String,
    /// Transit key name (default `polylogue-provider-keys`).
    pub key_name: String,
    /// Per-request timeout (default 2 s).
    pub timeout: Duration,
    /// Vault Enterprise / OpenBao namespace, if any.
    pub namespace: Option<String>,
}

impl VaultConfig {
    /// A config with the default mount, key name and timeout.
    pub fn new(address: impl Into<String>, token: SecretString) -> Self {
        Self {
            address: address.into(),
            token,
            mount: "transit".to_owned(),
            key_name: "polylogue-provider-keys".to_owned(),
            timeout: Duration::from_secs(2),
            namespace: None,
        }
    }
}

/// The Vault / OpenBao transit KMS.
pub struct VaultTransit {
    client: VaultClient,
    address: String,
    mount: String,
    key_name: String,
    timeout: Duration,
}

impl fmt::Debug for VaultTransit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultTransit")
            .field("address", &self.address)
            .field("mount", &self.mount)
            .field("key_name", &self.key_name)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The operation being done, for error messages and error classification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    DataKey,
    Decrypt,
    Rewrap,
    Rotate,
    ReadKey,
    CreateKey,
}

impl Op {
    fn what(self) -> &'static str {
        match self {
            Self::DataKey => "generating a data key",
            Self::Decrypt => "unwrapping a data key",
            Self::Rewrap => "rewrapping a data key",
            Self::Rotate => "rotating the transit key",
            Self::ReadKey => "reading the transit key",
            Self::CreateKey => "creating the transit key",
        }
    }
}

impl VaultTransit {
    /// Builds the client; no request is made yet.
    pub fn connect(config: VaultConfig) -> Result<Self, KmsError> {
        let address = config.address.trim_end_matches('/').to_owned();
        let url_ok = url::Url::parse(&address)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
        if !url_ok {
            return Err(KmsError::Config(
                "the vault address is not an http(s) URL".into(),
            ));
        }
        if config.mount.trim_matches('/').is_empty() || config.key_name.is_empty() {
            return Err(KmsError::Config(
                "the vault transit mount and key name must not be empty".into(),
            ));
        }
        if config.key_name.contains('/') {
            return Err(KmsError::Config(
                "the vault transit key name must not contain '/'".into(),
            ));
        }
        if config.timeout.is_zero() {
            return Err(KmsError::Config(
                "the vault timeout must be positive".into(),
            ));
        }
        install_crypto_provider();
        let mut builder = VaultClientSettingsBuilder::default();
        builder
            .address(&address)
            .token(config.token.expose_secret())
            .timeout(Some(config.timeout))
            .namespace(config.namespace.clone());
        let settings = builder
            .build()
            .map_err(|_| KmsError::Config("invalid vault client settings".into()))?;
        let client = VaultClient::new(settings)
            .map_err(|_| KmsError::Config("the vault client could not be built".into()))?;
        Ok(Self {
            client,
            address,
            mount: config.mount.trim_matches('/').to_owned(),
            key_name: config.key_name,
            timeout: config.timeout,
        })
    }

    /// Creates the transit key (`aes256-gcm96`) if it does not exist. A token not allowed to
    /// read or create keys only gets a warning: the key may have been made by an operator.
    pub async fn ensure_key(&self) -> Result<(), KmsError> {
        match vaultrs::transit::key::read(&self.client, &self.mount, &self.key_name).await {
            Ok(key) => {
                if !matches!(key.key_type, KeyType::Aes256Gcm96) {
                    tracing::warn!(key = %self.key_name, "the vault transit key is not aes256-gcm96");
                }
                return Ok(());
            }
            Err(ClientError::APIError { code: 404, .. }) => {}
            Err(e) => {
                let e = map_error(Op::ReadKey, e);
                if matches!(e, KmsError::Denied(_)) {
                    // Expected under least privilege (edge, router and summarizer only seal or open).
                    tracing::info!(key = %self.key_name, "the token may not read the vault transit key (least privilege); assuming it exists");
                    return Ok(());
                }
                return Err(e);
            }
        }
        let mut opts = CreateKeyRequest::builder();
        opts.key_type(KeyType::Aes256Gcm96);
        match vaultrs::transit::key::create(
            &self.client,
            &self.mount,
            &self.key_name,
            Some(&mut opts),
        )
        .await
        {
            Ok(()) => {
                tracing::info!(key = %self.key_name, mount = %self.mount, "created the vault transit key");
                Ok(())
            }
            Err(e) => match map_error(Op::CreateKey, e) {
                KmsError::Denied(_) => {
                    tracing::warn!(key = %self.key_name, "not allowed to create the vault transit key");
                    Ok(())
                }
                e => Err(e),
            },
        }
    }

    fn wrapped(&self, ciphertext: String, op: Op) -> Result<WrappedKey, KmsError> {
        let (version, _) = parse_versioned(NAME, &ciphertext).ok_or_else(|| {
            KmsError::Unavailable(format!(
                "vault answered {} with an unexpected ciphertext",
                op.what()
            ))
        })?;
        Ok(WrappedKey {
            kms: NAME.to_owned(),
            version,
            ciphertext,
        })
    }

    /// Checks a wrapped key before sending it to Vault.
    fn check(wrapped: &WrappedKey) -> Result<(), KmsError> {
        check_kms_name(NAME, wrapped)?;
        match parse_versioned(NAME, &wrapped.ciphertext) {
            Some((version, _)) if version == wrapped.version => Ok(()),
            Some(_) => Err(KmsError::Invalid(
                "the wrapped key's version does not match its ciphertext".into(),
            )),
            None => Err(KmsError::Invalid(
                "the wrapped key is not a vault ciphertext".into(),
            )),
        }
    }
}

#[async_trait]
impl Kms for VaultTransit {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn generate_data_key(&self) -> Result<DataKey, KmsError> {
        let mut opts = GenerateDataKeyRequest::builder();
        opts.bits(256u16);
        let response = vaultrs::transit::generate::data_key(
            &self.client,
            &self.mount,
            &self.key_name,
            DataKeyType::Plaintext,
            Some(&mut opts),
        )
        .await
        .map_err(|e| map_error(Op::DataKey, e))?;
        let plaintext = Zeroizing::new(response.plaintext.unwrap_or_default());
        let key = decode_key(&plaintext)
            .ok_or_else(|| KmsError::Config("vault did not return a 256-bit data key".into()))?;
        let wrapped = self.wrapped(response.ciphertext, Op::DataKey)?;
        Ok(DataKey::new(key, wrapped))
    }

    async fn unwrap_key(
        &self,
        wrapped: &WrappedKey,
    ) -> Result<Zeroizing<[u8; DATA_KEY_LEN]>, KmsError> {
        Self::check(wrapped)?;
        let response = vaultrs::transit::data::decrypt(
            &self.client,
            &self.mount,
            &self.key_name,
            &wrapped.ciphertext,
            None,
        )
        .await
        .map_err(|e| map_error(Op::Decrypt, e))?;
        let plaintext = Zeroizing::new(response.plaintext);
        decode_key(&plaintext).ok_or_else(|| {
            KmsError::Invalid("the wrapped key does not hold a 256-bit data key".into())
        })
    }

    async fn rewrap(&self, wrapped: &WrappedKey) -> Result<WrappedKey, KmsError> {
        Self::check(wrapped)?;
        let response = vaultrs::transit::data::rewrap(
            &self.client,
            &self.mount,
            &self.key_name,
            &wrapped.ciphertext,
            None,
        )
        .await
        .map_err(|e| map_error(Op::Rewrap, e))?;
        self.wrapped(response.ciphertext, Op::Rewrap)
    }

    async fn rotate(&self) -> Result<u32, KmsError> {
        vaultrs::transit::key::rotate(&self.client, &self.mount, &self.key_name)
            .await
            .map_err(|e| map_error(Op::Rotate, e))?;
        let version = self.current_version().await?;
        tracing::info!(key = %self.key_name, version, "rotated the vault transit key");
        Ok(version)
    }

    async fn current_version(&self) -> Result<u32, KmsError> {
        let key = vaultrs::transit::key::read(&self.client, &self.mount, &self.key_name)
            .await
            .map_err(|e| map_error(Op::ReadKey, e))?;
        let ReadKeyData::Symmetric(versions) = key.keys else {
            return Err(KmsError::Config(
                "the vault transit key is not symmetric".into(),
            ));
        };
        versions
            .keys()
            .filter_map(|v| v.parse::<u32>().ok())
            .max()
            .ok_or_else(|| {
                KmsError::Unavailable("vault listed no versions of the transit key".into())
            })
    }

    async fn health(&self) -> Result<(), KmsError> {
        #[derive(Deserialize)]
        struct Health {
            #[serde(default)]
            initialized: bool,
            #[serde(default)]
            sealed: bool,
        }
        // Standby nodes forward requests, so they count as healthy; sealed and uninitialised
        // answer 200 too, and are told apart by the body.
        let url = format!(
            "{}/v1/sys/health?standbyok=true&perfstandbyok=true&sealedcode=200&uninitcode=200",
            self.address
        );
        let unreachable = || KmsError::Unavailable("vault is unreachable or timed out".into());
        let response = self
            .client
            .http
            .http
            .get(url)
            .send()
            .await
            .map_err(|_| unreachable())?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|_| unreachable())?;
        if status != 200 {
            return Err(KmsError::Unavailable(format!(
                "vault health check answered HTTP {status}"
            )));
        }
        let health: Health = serde_json::from_slice(&body).map_err(|_| {
            KmsError::Unavailable("vault health check answered an unexpected body".into())
        })?;
        if !health.initialized {
            return Err(KmsError::Unavailable("vault is not initialized".into()));
        }
        if health.sealed {
            return Err(KmsError::Unavailable("vault is sealed".into()));
        }
        Ok(())
    }
}

/// reqwest 0.13 (under vaultrs) is built without a built-in rustls provider; use ring, as the
/// rest of the workspace does, unless the process already chose one.
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another installer is fine: a provider is then installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// Decodes base64 of exactly 32 bytes.
fn decode_key(b64: &str) -> Option<Zeroizing<[u8; DATA_KEY_LEN]>> {
    let mut scratch = Zeroizing::new([0u8; 48]);
    let len = STANDARD
        .decode_slice(b64.trim().as_bytes(), scratch.as_mut_slice())
        .ok()?;
    if len != DATA_KEY_LEN {
        return None;
    }
    let mut key = Zeroizing::new([0u8; DATA_KEY_LEN]);
    key.copy_from_slice(&scratch[..DATA_KEY_LEN]);
    Some(key)
}

/// Classifies a vaultrs error. The message names the operation and, for API errors, Vault's own
/// first error string (which names causes, not values); never request or response bodies.
fn map_error(op: Op, error: ClientError) -> KmsError {
    use rustify::errors::ClientError as Http;
    let what = op.what();
    match error {
        ClientError::APIError { code, errors } => by_status(op, code, &errors),
        ClientError::RestClientError { source } => match source {
            Http::ServerResponseError { code, .. } => by_status(op, code, &[]),
            Http::RequestError { .. } | Http::ResponseError { .. } => {
                KmsError::Unavailable(format!("vault is unreachable or timed out ({what})"))
            }
            Http::ResponseParseError { .. } | Http::ResponseConversionError { .. } => {
                KmsError::Unavailable(format!("vault answered {what} with an unexpected body"))
            }
            _ => KmsError::Config(format!("the vault request could not be built ({what})")),
        },
        ClientError::ResponseEmptyError | ClientError::ResponseDataEmptyError => {
            KmsError::Unavailable(format!("vault answered {what} with an empty response"))
        }
        _ => KmsError::Config(format!("the vault client failed ({what})")),
    }
}

fn by_status(op: Op, code: u16, errors: &[String]) -> KmsError {
    let what = op.what();
    let detail = errors
        .first()
        .map(|e| {
            let clean: String = e.chars().filter(|c| !c.is_control()).take(120).collect();
            format!(": {clean}")
        })
        .unwrap_or_default();
    let mentions = |needle: &str| {
        errors
            .iter()
            .any(|e| e.to_ascii_lowercase().contains(needle))
    };
    match code {
        403 => KmsError::Denied(format!("vault denied {what} (HTTP 403){detail}")),
        503 if mentions("sealed") => KmsError::Unavailable("vault is sealed".into()),
        429 | 500..=599 => {
            KmsError::Unavailable(format!("vault failed {what} (HTTP {code}){detail}"))
        }
        400 if mentions("key not found") => {
            KmsError::Config(format!("the vault transit key does not exist ({what})"))
        }
        400 if matches!(op, Op::Decrypt | Op::Rewrap) => {
            KmsError::Invalid(format!("vault could not unwrap the key (HTTP 400){detail}"))
        }
        404 => KmsError::Config(format!(
            "vault has no such transit key or mount ({what}, HTTP 404)"
        )),
        _ => KmsError::Config(format!("vault rejected {what} (HTTP {code}){detail}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_redacted_debug() {
        let config = VaultConfig::new("http://127.0.0.1:8200", SecretString::from("s.tok-en-123"));
        assert_eq!(config.mount, "transit");
        assert_eq!(config.key_name, "polylogue-provider-keys");
        assert_eq!(config.timeout, Duration::from_secs(2));
        assert!(!format!("{config:?}").contains("tok-en-123"));
        let transit = VaultTransit::connect(config).unwrap();
        assert!(!format!("{transit:?}").contains("tok-en-123"));
    }

    #[test]
    fn connect_rejects_bad_config() {
        let token = || SecretString::from("t");
        for address in ["", "vault:8200", "ftp://vault", "not a url"] {
            let err = VaultTransit::connect(VaultConfig::new(address, token())).unwrap_err();
            assert!(matches!(err, KmsError::Config(_)), "{address}: {err}");
        }
        let mut config = VaultConfig::new("http://127.0.0.1:8200", token());
        config.key_name = "a/b".into();
        assert!(matches!(
            VaultTransit::connect(config),
            Err(KmsError::Config(_))
        ));
    }

    #[test]
    fn status_classification() {
        let sealed = vec!["Vault is sealed".to_owned()];
        assert_eq!(
            by_status(Op::Decrypt, 503, &sealed),
            KmsError::Unavailable("vault is sealed".into())
        );
        assert!(by_status(Op::DataKey, 502, &[]).is_unavailable());
        assert!(matches!(
            by_status(Op::DataKey, 403, &[]),
            KmsError::Denied(_)
        ));
        let auth = vec!["cipher: message authentication failed".to_owned()];
        assert!(matches!(
            by_status(Op::Decrypt, 400, &auth),
            KmsError::Invalid(_)
        ));
        assert!(matches!(
            by_status(Op::DataKey, 400, &auth),
            KmsError::Config(_)
        ));
        let missing = vec!["encryption key not found".to_owned()];
        assert!(matches!(
            by_status(Op::Decrypt, 400, &missing),
            KmsError::Config(_)
        ));
    }

    #[test]
    fn decode_key_wants_exactly_32_bytes() {
        assert!(decode_key(&STANDARD.encode([1u8; 32])).is_some());
        assert!(decode_key(&STANDARD.encode([1u8; 31])).is_none());
        assert!(decode_key(&STANDARD.encode([1u8; 33])).is_none());
        assert!(decode_key("***").is_none());
    }
}
