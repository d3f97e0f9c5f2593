//! The KMS a service uses, from `[kms]`.

use crate::{Kms, LocalKek, VaultConfig, VaultTransit};
use polylogue_config::Settings;
use secrecy::SecretString;
use std::sync::Arc;
use std::time::Duration;

/// Opens the configured KMS: the local key-encryption-key file (created on first run) or Vault
/// transit. A Vault that is sealed or unreachable at start is not fatal: key operations answer
/// 503 until it is back, everything else works.
pub async fn kms_from_settings(settings: &Settings) -> anyhow::Result<Arc<dyn Kms>> {
    match settings.kms.engine.as_str() {
        "vault" => {
            let v = &settings.kms.vault;
            let token = match &v.token_file {
                Some(path) => SecretString::from(
                    std::fs::read_to_string(path)
                        .map_err(|e| {
                            anyhow::anyhow!("reading kms.vault.token_file {}: {e}", path.display())
                        })?
                        .trim()
                        .to_owned(),
                ),
                None => v
                    .token
                    .clone()
                    .ok_or_else(|| anyhow::anyhow!("kms.vault.token is not set"))?,
            };
            let kms = VaultTransit::connect(VaultConfig {
                address: v.address.clone(),
                token,
                mount: v.mount.clone(),
                key_name: v.key_name.clone(),
                timeout: Duration::from_millis(v.timeout_ms),
                namespace: v.namespace.clone(),
            })
            .map_err(|e| anyhow::anyhow!("Vault transit: {e}"))?;
            if let Err(error) = kms.ensure_key().await {
                tracing::warn!(%error, "Vault transit key not checked; key operations answer 503 until Vault is reachable");
            }
            Ok(Arc::new(kms))
        }
        _ => {
            let path = settings.kek_file();
            let kms = LocalKek::open(&path)
                .map_err(|e| anyhow::anyhow!("key-encryption-key file {}: {e}", path.display()))?;
            Ok(Arc::new(kms))
        }
    }
}
