//! Which provider key a generation uses. Today: the operator's keys from configuration
//! (`inference.keys.*`); per-user keys (profiles) take precedence once the auth service stores
//! them. A model that needs a key nobody has is refused before anything is stored.

use polylogue_catalog::ModelEntry;
use polylogue_config::OperatorKeys;
use polylogue_contracts::{ApiError, ErrorCode};
use secrecy::SecretString;

pub struct KeyResolver {
    operator: OperatorKeys,
}

impl KeyResolver {
    pub fn new(operator: OperatorKeys) -> Self {
        Self { operator }
    }

    pub fn resolve(&self, model: &ModelEntry) -> Result<Option<SecretString>, ApiError> {
        let Some(name) = model.api_key_required.as_deref() else {
            return Ok(None);
        };
        match self.operator.get(name) {
            Some(key) => Ok(Some(key.clone())),
            None => Err(ApiError::new(
                ErrorCode::ApiKeyRequired,
                format!(
                    "model {} needs a {name} API key: add one to your profile or ask the operator to configure one",
                    model.id
                ),
            )
            .with_details(serde_json::json!({ "apiKey": name, "modelId": model.id }))),
        }
    }
}
