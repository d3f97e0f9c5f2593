//! Profiles and stored provider keys: validation of profile patches against the model catalog,
//! the masked view of keys, storing envelopes sealed by the edge, handing an envelope to the
//! services that call providers, re-wrapping every data key after a KMS rotation, and `lastUsed`
//! from the key-use audit events (coalesced: one write per key per flush interval).

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use polylogue_bus::Bus;
use polylogue_catalog::Catalog;
use polylogue_contracts::keys::{KeyEnvelope, PROVIDERS};
use polylogue_contracts::profile::{
    ApiKeyStatus, DISPLAY_NAME_MAX, EnvelopeReply, EnvelopeRequest, KeyUsed, KeysChanged,
    KeysDeleteReply, KeysDeleteRequest, KeysPutRequest, ProfileGetRequest, ProfileSettingsView,
    ProfileUpdateRequest, ProfileView, RewrapReply, RewrapRequest, SYSTEM_PROMPT_MAX,
};
use polylogue_contracts::subjects::{audit, auth as verbs, service};
use polylogue_contracts::{ApiError, ErrorCode};
use polylogue_crypto::Kms;
use polylogue_storage::{ApiKeyRecord, AuthStore, ProfilePatch, StoreError, UserRecord, now_ms};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub struct Profiles {
    store: Arc<dyn AuthStore>,
    catalog: Arc<Catalog>,
    kms: Arc<dyn Kms>,
    bus: Bus,
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn store_error(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "auth store failed");
    ApiError::new(
        ErrorCode::ServiceUnavailable,
        "the user store is unavailable",
    )
}

fn user_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::new(ErrorCode::NotFound, "no such user"))
}

fn known_provider(provider: &str) -> Result<(), ApiError> {
    if PROVIDERS.contains(&provider) {
        Ok(())
    } else {
        Err(ApiError::validation(
            "provider",
            format!("provider must be one of {}", PROVIDERS.join(", ")),
        ))
    }
}

/// The masked view: per provider whether a key is stored, its hint and when it was last used.
fn key_statuses(keys: &[ApiKeyRecord]) -> BTreeMap<String, ApiKeyStatus> {
    PROVIDERS
        .iter()
        .map(|p| {
            let status = keys
                .iter()
                .find(|k| k.provider == *p)
                .map(|k| ApiKeyStatus {
                    configured: true,
                    last_used: k.last_used.map(rfc3339),
                    hint: Some(k.hint.clone()),
                    updated_at: Some(rfc3339(k.created_at)),
                })
                .unwrap_or_default();
            ((*p).to_owned(), status)
        })
        .collect()
}

fn view(user: &UserRecord, keys: &[ApiKeyRecord]) -> ProfileView {
    ProfileView {
        id: user.id.to_string(),
        username: user.username.clone(),
        display_name: user.display_name.clone(),
        created_at: rfc3339(user.created_at),
        settings: ProfileSettingsView {
            default_model: user.settings.default_model.clone(),
            default_temperature: user.settings.default_temperature,
            system_prompt: user.settings.system_prompt.clone(),
        },
        api_keys: key_statuses(keys),
    }
}

impl Profiles {
    pub fn new(
        store: Arc<dyn AuthStore>,
        catalog: Arc<Catalog>,
        kms: Arc<dyn Kms>,
        bus: Bus,
    ) -> Self {
        Self {
            store,
            catalog,
            kms,
            bus,
        }
    }

    async fn user(&self, id: Uuid) -> Result<UserRecord, ApiError> {
        self.store
            .user_by_id(id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such user"))
    }

    pub async fn get(&self, req: ProfileGetRequest) -> Result<ProfileView, ApiError> {
        let id = user_id(&req.user_id)?;
        let user = self.user(id).await?;
        let keys = self.store.api_keys(id).await.map_err(store_error)?;
        Ok(view(&user, &keys))
    }

    /// The settings alone (no key statuses): one user read, for each generation.
    pub async fn settings(&self, req: ProfileGetRequest) -> Result<ProfileSettingsView, ApiError> {
        let user = self.user(user_id(&req.user_id)?).await?;
        Ok(ProfileSettingsView {
            default_model: user.settings.default_model,
            default_temperature: user.settings.default_temperature,
            system_prompt: user.settings.system_prompt,
        })
    }

    pub async fn update(&self, req: ProfileUpdateRequest) -> Result<ProfileView, ApiError> {
        let id = user_id(&req.user_id)?;
        let current = self.user(id).await?;
        let patch = self.validate(&current, req.patch)?;
        let user = self
            .store
            .update_profile(id, &patch)
            .await
            .map_err(store_error)?
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such user"))?;
        let keys = self.store.api_keys(id).await.map_err(store_error)?;
        tracing::info!(user_id = %id, "profile updated");
        Ok(view(&user, &keys))
    }

    /// Checks a patch against the rules in `docs/api.md`; returns what the store applies.
    fn validate(
        &self,
        current: &UserRecord,
        body: polylogue_contracts::profile::ProfilePatchBody,
    ) -> Result<ProfilePatch, ApiError> {
        let mut patch = ProfilePatch::default();
        if let Some(name) = body.display_name {
            let Some(name) = name else {
                return Err(ApiError::validation(
                    "displayName",
                    "displayName cannot be null",
                ));
            };
            let name = name.trim().to_owned();
            let n = name.chars().count();
            if n == 0 || n > DISPLAY_NAME_MAX {
                return Err(ApiError::validation(
                    "displayName",
                    format!("displayName must be 1-{DISPLAY_NAME_MAX} characters"),
                ));
            }
            if name.chars().any(char::is_control) {
                return Err(ApiError::validation(
                    "displayName",
                    "displayName cannot contain control characters",
                ));
            }
            patch.display_name = Some(name);
        }
        let Some(settings) = body.settings else {
            return Ok(patch);
        };
        if let Some(Some(model)) = &settings.default_model
            && !self.catalog.contains(model)
        {
            return Err(ApiError::validation(
                "settings.defaultModel",
                format!("{model:?} is not a model of this installation (see GET /api/models)"),
            ));
        }
        // The model the temperature must suit: the one being set, else the stored one.
        let model_id = match &settings.default_model {
            Some(m) => m.clone(),
            None => current.settings.default_model.clone(),
        };
        let temperature = match settings.default_temperature {
            Some(t) => t,
            None => current.settings.default_temperature,
        };
        if let Some(t) = temperature {
            let (min, max, whose) = match model_id.as_deref().and_then(|m| self.catalog.get(m)) {
                Some(m) => (
                    m.temperature_range.min,
                    m.temperature_range.max,
                    format!("{}'s range", m.id),
                ),
                None => {
                    let (min, max) = self.catalog.models().iter().fold(
                        (f64::INFINITY, f64::NEG_INFINITY),
                        |(lo, hi), m| {
                            (
                                lo.min(m.temperature_range.min),
                                hi.max(m.temperature_range.max),
                            )
                        },
                    );
                    (min, max, "the range of the catalog's models".to_owned())
                }
            };
            if !t.is_finite() || t < min || t > max {
                let message = if settings.default_temperature.is_some() {
                    format!("defaultTemperature must be within {whose} ({min}-{max})")
                } else {
                    format!(
                        "the stored defaultTemperature {t} is outside {whose} ({min}-{max}); send a new defaultTemperature with the model"
                    )
                };
                return Err(
                    ApiError::new(ErrorCode::ValidationError, message).with_details(
                        serde_json::json!({
                            "field": "settings.defaultTemperature",
                            "expected": format!("a number from {min} to {max}"),
                        }),
                    ),
                );
            }
        }
        if let Some(Some(prompt)) = &settings.system_prompt
            && prompt.chars().count() > SYSTEM_PROMPT_MAX
        {
            return Err(ApiError::validation(
                "settings.systemPrompt",
                format!("systemPrompt must be at most {SYSTEM_PROMPT_MAX} characters"),
            ));
        }
        patch.default_model = settings.default_model;
        patch.default_temperature = settings.default_temperature;
        // A blank prompt means "back to the installation's default".
        patch.system_prompt = settings
            .system_prompt
            .map(|p| p.filter(|p| !p.trim().is_empty()));
        Ok(patch)
    }

    async fn changed(&self, user_id: &str, provider: &str) {
        let event = KeysChanged {
            user_id: user_id.to_owned(),
            provider: provider.to_owned(),
        };
        let subject = self.bus.subject(service::AUTH, verbs::KEYS_CHANGED);
        match serde_json::to_vec(&event) {
            Ok(payload) => {
                if let Err(error) = self.bus.client().publish(subject, payload.into()).await {
                    tracing::warn!(%error, "keys.changed not published; caches expire by TTL");
                }
            }
            Err(error) => tracing::error!(%error, "keys.changed not encoded"),
        }
    }

    pub async fn put_keys(&self, req: KeysPutRequest) -> Result<Vec<String>, ApiError> {
        let id = user_id(&req.user_id)?;
        self.user(id).await?;
        for key in &req.keys {
            known_provider(&key.provider)?;
            if key.envelope.key_version == 0 {
                return Err(ApiError::validation(
                    "envelope.key_version",
                    "key_version must be positive",
                ));
            }
        }
        let mut updated = Vec::new();
        for key in req.keys {
            let envelope =
                serde_json::to_string(&key.envelope).map_err(|_| ApiError::internal())?;
            self.store
                .put_api_key(&ApiKeyRecord {
                    user_id: id,
                    provider: key.provider.clone(),
                    key_version: key.envelope.key_version,
                    envelope,
                    hint: key.hint,
                    created_at: now_ms(),
                    last_used: None,
                })
                .await
                .map_err(store_error)?;
            self.changed(&req.user_id, &key.provider).await;
            tracing::info!(user_id = %id, provider = %key.provider, key_version = key.envelope.key_version, kms = %key.envelope.wrapped_key.kms, "provider key stored");
            metrics::counter!("polylogue_auth_keys_stored_total", "provider" => key.provider.clone())
                .increment(1);
            updated.push(key.provider);
        }
        Ok(updated)
    }

    pub async fn delete_key(&self, req: KeysDeleteRequest) -> Result<KeysDeleteReply, ApiError> {
        let id = user_id(&req.user_id)?;
        known_provider(&req.provider)?;
        let deleted = self
            .store
            .delete_api_key(id, &req.provider)
            .await
            .map_err(store_error)?;
        if deleted {
            self.changed(&req.user_id, &req.provider).await;
            tracing::info!(user_id = %id, provider = %req.provider, "provider key deleted");
        }
        Ok(KeysDeleteReply { deleted })
    }

    pub async fn envelope(&self, req: EnvelopeRequest) -> Result<EnvelopeReply, ApiError> {
        let id = user_id(&req.user_id)?;
        known_provider(&req.provider)?;
        let Some(record) = self
            .store
            .api_key(id, &req.provider)
            .await
            .map_err(store_error)?
        else {
            return Ok(EnvelopeReply { envelope: None });
        };
        let envelope: KeyEnvelope = serde_json::from_str(&record.envelope).map_err(|_| {
            tracing::error!(user_id = %id, provider = %req.provider, "stored key envelope is not readable");
            ApiError::new(
                ErrorCode::InvalidApiKey,
                format!("your stored {} key is damaged; add it again in your profile", req.provider),
            )
        })?;
        if envelope.key_version != record.key_version {
            tracing::error!(user_id = %id, provider = %req.provider, "stored key envelope does not match its row");
            return Err(ApiError::new(
                ErrorCode::InvalidApiKey,
                format!(
                    "your stored {} key is damaged; add it again in your profile",
                    req.provider
                ),
            ));
        }
        Ok(EnvelopeReply {
            envelope: Some(envelope),
        })
    }

    /// Re-wraps every stored data key under the KMS's newest version. Secrets stay sealed: only
    /// the wrapped data key changes (Vault rewraps without revealing it).
    pub async fn rewrap(&self, req: RewrapRequest) -> Result<RewrapReply, ApiError> {
        let unavailable = |e: polylogue_crypto::KmsError| {
            tracing::error!(error = %e, "rewrap stopped: key management unavailable");
            ApiError::new(
                ErrorCode::ServiceUnavailable,
                "key management is unavailable; rewrap stopped (run it again, it resumes safely)",
            )
        };
        let version = self.kms.current_version().await.map_err(unavailable)?;
        let page_size = req.page_size.unwrap_or(100).clamp(1, 1000);
        let mut reply = RewrapReply {
            version,
            ..RewrapReply::default()
        };
        let mut after: Option<(Uuid, String)> = None;
        loop {
            let page = self
                .store
                .api_keys_page(after.clone(), page_size)
                .await
                .map_err(store_error)?;
            let Some(last) = page.last() else { break };
            after = Some((last.user_id, last.provider.clone()));
            for record in &page {
                reply.scanned += 1;
                let Ok(mut envelope) = serde_json::from_str::<KeyEnvelope>(&record.envelope) else {
                    reply.failed += 1;
                    tracing::error!(user_id = %record.user_id, provider = %record.provider, "stored key envelope is not readable");
                    continue;
                };
                if envelope.wrapped_key.kms == self.kms.name()
                    && envelope.wrapped_key.version >= version
                {
                    reply.current += 1;
                    continue;
                }
                let rewrapped = match self.kms.rewrap(&envelope.wrapped_key).await {
                    Ok(w) => w,
                    Err(e) if e.is_unavailable() => return Err(unavailable(e)),
                    Err(e) => {
                        reply.failed += 1;
                        tracing::error!(user_id = %record.user_id, provider = %record.provider, error = %e, "data key did not rewrap");
                        continue;
                    }
                };
                envelope.wrapped_key = rewrapped;
                let new = serde_json::to_string(&envelope).map_err(|_| ApiError::internal())?;
                let replaced = self
                    .store
                    .replace_envelope(
                        record.user_id,
                        &record.provider,
                        record.key_version,
                        &record.envelope,
                        &new,
                    )
                    .await
                    .map_err(store_error)?;
                if replaced {
                    reply.rewrapped += 1;
                } else {
                    reply.skipped += 1;
                }
            }
            tracing::info!(
                scanned = reply.scanned,
                rewrapped = reply.rewrapped,
                "rewrap progress"
            );
        }
        tracing::info!(?reply, "rewrap finished");
        Ok(reply)
    }
}

/// Reads key-use events from the audit stream and writes `lastUsed`, at most once per key per
/// `flush` interval. Events are acknowledged only after their write, so a restart loses none.
pub async fn keep_last_used(
    bus: Bus,
    store: Arc<dyn AuthStore>,
    flush: Duration,
    retention: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let js = jetstream::new(bus.client().clone());
    polylogue_bus::audit::open_stream(&js, bus.prefix(), retention)
        .await
        .map_err(|e| anyhow::anyhow!("opening the audit stream: {e}"))?;
    let stream = js
        .get_stream(audit::stream(bus.prefix()))
        .await
        .map_err(|e| anyhow::anyhow!("opening the audit stream: {e}"))?;
    let consumer = stream
        .get_or_create_consumer(
            "auth-last-used",
            consumer::pull::Config {
                durable_name: Some("auth-last-used".into()),
                filter_subject: audit::key_used(bus.prefix()),
                ack_policy: consumer::AckPolicy::All,
                ack_wait: flush * 4 + Duration::from_secs(30),
                max_ack_pending: 100_000,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("creating the last-used consumer: {e}"))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("reading the audit stream: {e}"))?;
    tokio::spawn(async move {
        let mut pending: HashMap<(Uuid, String), (u64, OffsetDateTime)> = HashMap::new();
        let mut last: Option<jetstream::Message> = None;
        let mut tick = tokio::time::interval(flush);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    if pending.is_empty() {
                        continue;
                    }
                    if flush_last_used(store.as_ref(), &mut pending).await {
                        // AckPolicy::All: acknowledging the newest acknowledges every earlier one.
                        if let Some(msg) = last.take()
                            && let Err(error) = msg.ack().await
                        {
                            tracing::warn!(%error, "last-used events not acknowledged");
                        }
                    }
                }
                msg = messages.next() => {
                    let Some(msg) = msg else { break };
                    let msg = match msg {
                        Ok(m) => m,
                        Err(error) => {
                            tracing::warn!(%error, "audit stream read failed");
                            continue;
                        }
                    };
                    match serde_json::from_slice::<KeyUsed>(&msg.payload) {
                        Ok(used) => {
                            if let (Ok(id), Ok(at)) = (
                                Uuid::parse_str(&used.user_id),
                                OffsetDateTime::parse(&used.at, &Rfc3339),
                            ) {
                                let entry = pending
                                    .entry((id, used.provider))
                                    .or_insert((used.key_version, at));
                                if at > entry.1 {
                                    *entry = (used.key_version, at);
                                }
                            }
                        }
                        Err(error) => tracing::warn!(%error, "undecodable key-use event"),
                    }
                    last = Some(msg);
                }
            }
        }
        if !pending.is_empty()
            && flush_last_used(store.as_ref(), &mut pending).await
            && let Some(msg) = last.take()
        {
            let _ = msg.ack().await;
        }
    });
    Ok(())
}

/// Writes every pending `lastUsed`; false (and keeps them) when the store failed.
async fn flush_last_used(
    store: &dyn AuthStore,
    pending: &mut HashMap<(Uuid, String), (u64, OffsetDateTime)>,
) -> bool {
    let mut ok = true;
    let entries: Vec<_> = pending.drain().collect();
    for ((user, provider), (version, at)) in entries {
        if let Err(error) = store.touch_api_key(user, &provider, version, at).await {
            tracing::warn!(%error, "lastUsed not written; will retry");
            pending.insert((user, provider), (version, at));
            ok = false;
        }
    }
    metrics::counter!("polylogue_auth_last_used_flushes_total").increment(1);
    ok
}
