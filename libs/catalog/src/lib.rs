//! The model catalog: which models this installation offers, read from a TOML file (the one
//! shipped in `deploy/catalog/models.toml` unless `catalog.path` names another). Entries serialise
//! as `GET /api/models` shows them.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use thiserror::Error;

/// The catalog shipped with the project.
pub const DEFAULT_CATALOG: &str = include_str!("../../../deploy/catalog/models.toml");

#[derive(Debug, Error)]
pub enum CatalogError {
    #[error("the catalog could not be read: {0}")]
    Read(String),
    #[error("the catalog is invalid: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemperatureRange {
    pub min: f64,
    pub max: f64,
    pub step: f64,
    pub default: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pricing {
    /// USD per 1,000 input tokens.
    pub input: f64,
    /// USD per 1,000 output tokens.
    pub output: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelEntry {
    pub id: String,
    pub name: String,
    /// `anthropic`, `openai`, `google`, `ollama` or `openai-compatible`.
    pub provider: String,
    #[serde(skip_serializing)]
    pub provider_model: String,
    #[serde(default, skip_serializing)]
    pub base_url: Option<String>,
    /// Which user key the model needs (`claude`, `openai`, `google`), or none.
    #[serde(default)]
    pub api_key_required: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub requires_loading: bool,
    pub capabilities: Vec<String>,
    pub context_length: u32,
    #[serde(default)]
    pub pricing: Option<Pricing>,
    pub temperature_range: TemperatureRange,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    models: Vec<ModelEntry>,
}

#[derive(Debug, Clone)]
pub struct Catalog {
    models: Vec<ModelEntry>,
    by_id: HashMap<String, usize>,
}

const PROVIDERS: &[&str] = &[
    "anthropic",
    "openai",
    "google",
    "ollama",
    "openai-compatible",
];

impl Catalog {
    pub fn parse(text: &str) -> Result<Self, CatalogError> {
        let file: CatalogFile =
            toml::from_str(text).map_err(|e| CatalogError::Invalid(e.to_string()))?;
        let mut by_id = HashMap::new();
        for (i, m) in file.models.iter().enumerate() {
            if m.id.is_empty()
                || m.id.len() > 100
                || !m
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
            {
                return Err(CatalogError::Invalid(format!(
                    "model id {:?} must be 1-100 characters of [A-Za-z0-9._:-]",
                    m.id
                )));
            }
            if by_id.insert(m.id.clone(), i).is_some() {
                return Err(CatalogError::Invalid(format!(
                    "model id {:?} appears twice",
                    m.id
                )));
            }
            if !PROVIDERS.contains(&m.provider.as_str()) {
                return Err(CatalogError::Invalid(format!(
                    "model {:?} has unknown provider {:?}",
                    m.id, m.provider
                )));
            }
            let t = &m.temperature_range;
            if !(t.min <= t.default && t.default <= t.max && t.step > 0.0) {
                return Err(CatalogError::Invalid(format!(
                    "model {:?} has an inconsistent temperatureRange",
                    m.id
                )));
            }
            if m.context_length == 0 {
                return Err(CatalogError::Invalid(format!(
                    "model {:?} has contextLength 0",
                    m.id
                )));
            }
        }
        Ok(Self {
            models: file.models,
            by_id,
        })
    }

    /// The file at `path`, or the shipped catalog when `None`.
    pub fn load(path: Option<&Path>) -> Result<Self, CatalogError> {
        match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| CatalogError::Read(format!("{}: {e}", p.display())))?;
                Self::parse(&text)
            }
            None => Self::parse(DEFAULT_CATALOG),
        }
    }

    pub fn get(&self, id: &str) -> Option<&ModelEntry> {
        self.by_id.get(id).and_then(|&i| self.models.get(i))
    }

    pub fn contains(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    pub fn models(&self) -> &[ModelEntry] {
        &self.models
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_catalog_is_valid_and_serialises_like_the_spec() {
        let c = Catalog::load(None).unwrap();
        assert!(c.contains("claude-opus") && c.contains("gemma-2b-local"));
        let json = serde_json::to_value(c.get("gemma-2b-local").unwrap()).unwrap();
        assert_eq!(json["provider"], "ollama");
        assert_eq!(json["apiKeyRequired"], serde_json::Value::Null);
        assert_eq!(json["requiresLoading"], true);
        assert_eq!(json["contextLength"], 8192);
        assert!(
            json.get("providerModel").is_none(),
            "internal fields stay internal"
        );
        let opus = serde_json::to_value(c.get("claude-opus").unwrap()).unwrap();
        assert_eq!(opus["apiKeyRequired"], "claude");
        assert_eq!(opus["temperatureRange"]["default"], 0.7);
    }

    #[test]
    fn duplicate_ids_and_unknown_providers_are_refused() {
        let one = r#"[[models]]
id = "x"
name = "X"
provider = "openai"
providerModel = "x"
capabilities = []
contextLength = 10
temperatureRange = { min = 0.0, max = 1.0, step = 0.1, default = 0.5 }
"#;
        assert!(Catalog::parse(one).is_ok());
        assert!(Catalog::parse(&format!("{one}{one}")).is_err());
        assert!(Catalog::parse(&one.replace("openai", "acme")).is_err());
    }
}
