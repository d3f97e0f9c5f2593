//! Which client reaches each catalog model, and with which key: built once from the catalog and
//! the `[inference]` settings, shared by the inference router and the summarizer so that both
//! reach a model the same way.

use crate::{HttpSettings, Provider, ProviderKind, RetryPolicy, http_client, provider};
use polylogue_catalog::{Catalog, ModelEntry};
use polylogue_config::{InferenceSettings, OperatorKeys};
use polylogue_contracts::{ApiError, ErrorCode};
use secrecy::SecretString;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How a model is reached: its provider client, or why it cannot be.
type Route = Result<Arc<dyn Provider>, String>;

/// The provider client of every catalog model, and the key resolver.
pub struct Registry {
    routes: HashMap<String, Route>,
    keys: KeyResolver,
    retry: RetryPolicy,
}

impl Registry {
    /// One HTTP client for every provider (timeouts from `settings`), one provider client per
    /// (kind, base URL). Models whose URL is invalid are logged and answer 503 when used.
    pub fn new(catalog: &Catalog, settings: &InferenceSettings) -> Result<Self, String> {
        let http_settings = HttpSettings {
            connect_timeout: Duration::from_millis(settings.connect_timeout_ms),
            header_timeout: Duration::from_millis(settings.header_timeout_ms),
            idle_timeout: Duration::from_millis(settings.idle_timeout_ms),
            request_timeout: Duration::from_millis(settings.request_timeout_ms),
            ..HttpSettings::default()
        };
        let http = http_client(&http_settings).map_err(|e| e.to_string())?;
        Ok(Self {
            routes: routes(catalog, settings, &http, &http_settings),
            keys: KeyResolver::new(settings.keys.clone()),
            retry: RetryPolicy {
                max_attempts: settings.retry_attempts,
                base_delay: Duration::from_millis(settings.retry_base_delay_ms),
                max_delay: Duration::from_millis(settings.retry_max_delay_ms),
            },
        })
    }

    /// The client of `model_id`; 503 when this installation cannot reach it.
    pub fn provider(&self, model_id: &str) -> Result<Arc<dyn Provider>, ApiError> {
        match self.routes.get(model_id) {
            Some(Ok(p)) => Ok(Arc::clone(p)),
            _ => Err(ApiError::new(
                ErrorCode::ServiceUnavailable,
                format!("model {model_id} is not reachable from this installation"),
            )),
        }
    }

    /// The key a call to `model` for `user_id` uses: the user's own key, else the operator's;
    /// 422 `API_KEY_REQUIRED` when it needs one nobody has.
    pub async fn key(
        &self,
        model: &ModelEntry,
        user_id: &str,
    ) -> Result<Option<SecretString>, ApiError> {
        self.keys.resolve(model, user_id).await
    }

    /// Looks users' own keys up in `source` before the operator's.
    pub fn with_user_keys(mut self, source: Arc<dyn UserKeySource>) -> Self {
        self.keys.users = Some(source);
        self
    }

    /// Retries before the first token (`inference.retry_*`).
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }
}

/// The clients that check a user's key when it is added, by the API's provider names
/// (`claude`, `openai`, `google`), at the configured base URLs. A provider whose URL is invalid
/// is left out (its keys are stored unverified, with the reason).
pub fn key_verifiers(
    settings: &InferenceSettings,
) -> Result<HashMap<String, Arc<dyn Provider>>, String> {
    let http_settings = HttpSettings {
        connect_timeout: Duration::from_millis(settings.connect_timeout_ms),
        header_timeout: Duration::from_millis(settings.header_timeout_ms),
        idle_timeout: Duration::from_millis(settings.idle_timeout_ms),
        request_timeout: Duration::from_millis(settings.request_timeout_ms),
        ..HttpSettings::default()
    };
    let http = http_client(&http_settings).map_err(|e| e.to_string())?;
    let mut out = HashMap::new();
    for (name, kind, raw) in [
        ("claude", ProviderKind::Anthropic, &settings.anthropic_url),
        ("openai", ProviderKind::OpenAi, &settings.openai_url),
        ("google", ProviderKind::Google, &settings.google_url),
    ] {
        let Some(raw) = raw
            .clone()
            .or_else(|| kind.default_base_url().map(str::to_owned))
        else {
            continue;
        };
        match crate::validate_base_url(&raw, settings.allow_private_base_urls) {
            Ok(url) => {
                out.insert(
                    name.to_owned(),
                    provider(kind, url, http.clone(), &http_settings),
                );
            }
            Err(problem) => tracing::error!(provider = name, %problem, "key verification disabled"),
        }
    }
    Ok(out)
}

/// The provider client of every catalog model. Cloud providers use the configured base URL
/// (validated against private addresses unless allowed); OpenAI-compatible servers use the
/// catalog's `baseUrl`; Ollama uses `inference.ollama_url` when set, else the catalog's.
fn routes(
    catalog: &Catalog,
    s: &InferenceSettings,
    http: &reqwest::Client,
    http_settings: &HttpSettings,
) -> HashMap<String, Route> {
    let mut cache: HashMap<(ProviderKind, String), Arc<dyn Provider>> = HashMap::new();
    let mut routes = HashMap::new();
    for model in catalog.models() {
        let route = (|| {
            let kind = ProviderKind::parse(&model.provider)
                .ok_or_else(|| format!("unknown provider {:?}", model.provider))?;
            let (raw, allow_private) = match kind {
                ProviderKind::Anthropic => (s.anthropic_url.clone(), s.allow_private_base_urls),
                ProviderKind::OpenAi => (s.openai_url.clone(), s.allow_private_base_urls),
                ProviderKind::Google => (s.google_url.clone(), s.allow_private_base_urls),
                // An operator's `inference.ollama_url` wins over the catalog's default host.
                ProviderKind::Ollama => (s.ollama_url.clone().or(model.base_url.clone()), true),
                ProviderKind::OpenAiCompatible => (model.base_url.clone(), true),
            };
            let raw = raw
                .or_else(|| kind.default_base_url().map(str::to_owned))
                .ok_or_else(|| format!("model {} has no baseUrl", model.id))?;
            let url = crate::validate_base_url(&raw, allow_private)
                .map_err(|e| format!("base URL of model {}: {e}", model.id))?;
            let client = cache
                .entry((kind, url.to_string()))
                .or_insert_with(|| provider(kind, url.clone(), http.clone(), http_settings))
                .clone();
            Ok(client)
        })();
        if let Err(problem) = &route {
            tracing::error!(model = %model.id, %problem, "model unavailable");
        }
        routes.insert(model.id.clone(), route);
    }
    routes
}

/// Where users' own provider keys come from (the auth service's sealed keys, opened in memory).
#[async_trait::async_trait]
pub trait UserKeySource: Send + Sync {
    /// `user_id`'s key for `provider` (`claude`, `openai`, `google`) for a call to `model_id`, or
    /// `None` when the user keeps none. 503 when the KMS is unavailable; 422 `INVALID_API_KEY`
    /// when the stored key does not decrypt.
    async fn user_key(
        &self,
        user_id: &str,
        provider: &str,
        model_id: &str,
    ) -> Result<Option<SecretString>, ApiError>;
}

/// Which provider key a call uses: the user's own key (profile) first, then the operator's
/// (`inference.keys.*`). A model that needs a key nobody has is refused before anything is
/// stored.
pub struct KeyResolver {
    operator: OperatorKeys,
    users: Option<Arc<dyn UserKeySource>>,
}

impl KeyResolver {
    pub fn new(operator: OperatorKeys) -> Self {
        Self {
            operator,
            users: None,
        }
    }

    pub async fn resolve(
        &self,
        model: &ModelEntry,
        user_id: &str,
    ) -> Result<Option<SecretString>, ApiError> {
        let Some(name) = model.api_key_required.as_deref() else {
            return Ok(None);
        };
        if let Some(users) = &self.users
            && let Some(key) = users.user_key(user_id, name, &model.id).await?
        {
            return Ok(Some(key));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    const CATALOG: &str = r#"
[[models]]
id = "c"
name = "C"
provider = "anthropic"
providerModel = "claude-x"
apiKeyRequired = "claude"
capabilities = ["text"]
contextLength = 1000
temperatureRange = { min = 0.0, max = 1.0, step = 0.1, default = 0.5 }

[[models]]
id = "local"
name = "L"
provider = "openai-compatible"
providerModel = "l"
capabilities = ["text"]
contextLength = 1000
temperatureRange = { min = 0.0, max = 1.0, step = 0.1, default = 0.5 }
"#;

    struct OneUser;

    #[async_trait::async_trait]
    impl UserKeySource for OneUser {
        async fn user_key(
            &self,
            user_id: &str,
            provider: &str,
            _model_id: &str,
        ) -> Result<Option<SecretString>, ApiError> {
            Ok((user_id == "u1" && provider == "claude").then(|| "sk-user".into()))
        }
    }

    #[tokio::test]
    async fn a_users_own_key_wins_over_the_operators() {
        use secrecy::ExposeSecret;
        let catalog = Catalog::parse(CATALOG).unwrap();
        let mut settings = InferenceSettings::default();
        settings.keys.claude = Some("sk-operator".into());
        let r = Registry::new(&catalog, &settings)
            .unwrap()
            .with_user_keys(Arc::new(OneUser));
        let claude = catalog.get("c").unwrap();
        let own = r.key(claude, "u1").await.unwrap().unwrap();
        assert_eq!(own.expose_secret(), "sk-user");
        let other = r.key(claude, "u2").await.unwrap().unwrap();
        assert_eq!(other.expose_secret(), "sk-operator");
    }

    #[tokio::test]
    async fn routes_and_keys_follow_the_catalog_and_settings() {
        let catalog = Catalog::parse(CATALOG).unwrap();
        let settings = InferenceSettings::default();
        let r = Registry::new(&catalog, &settings).unwrap();
        assert_eq!(r.provider("c").unwrap().kind(), ProviderKind::Anthropic);
        // An OpenAI-compatible model without a baseUrl cannot be reached.
        assert_eq!(
            r.provider("local").err().unwrap().code,
            ErrorCode::ServiceUnavailable
        );
        assert_eq!(
            r.provider("nope").err().unwrap().code,
            ErrorCode::ServiceUnavailable
        );
        let claude = catalog.get("c").unwrap();
        assert_eq!(
            r.key(claude, "u").await.unwrap_err().code,
            ErrorCode::ApiKeyRequired
        );
        let mut settings = InferenceSettings::default();
        settings.keys.claude = Some("sk-x".into());
        let r = Registry::new(&catalog, &settings).unwrap();
        assert!(r.key(claude, "u").await.unwrap().is_some());
        assert!(
            r.key(catalog.get("local").unwrap(), "u")
                .await
                .unwrap()
                .is_none()
        );
    }
}
