//! One typed configuration for every Polylogue service.
//! Sources, later ones winning: built-in defaults → a TOML file → `POLYLOGUE__SECTION__KEY`
//! environment variables. Validated once at start; secrets are `SecretString`s whose `Debug` is redacted.

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("configuration could not be read: {0}")]
    Load(String),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Reported by `/api/version` and `/api/health`; `production` switches on the strict defaults
    /// documented in `docs/configuration.md`.
    pub environment: String,
    /// Where embedded engines keep their files (SQLite databases, key files).
    pub data_dir: PathBuf,
    pub nats: NatsSettings,
    pub telemetry: TelemetrySettings,
    pub jwt: JwtSettings,
    pub edge: EdgeSettings,
    pub auth: AuthSettings,
    pub thread: ThreadSettings,
    pub inference: InferenceSettings,
    pub summarizer: SummarizerSettings,
    pub catalog: CatalogSettings,
    pub kms: KmsSettings,
    pub keys: KeySettings,
    pub loader: LoaderSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            environment: "development".into(),
            data_dir: PathBuf::from(".data"),
            nats: NatsSettings::default(),
            telemetry: TelemetrySettings::default(),
            jwt: JwtSettings::default(),
            edge: EdgeSettings::default(),
            auth: AuthSettings::default(),
            thread: ThreadSettings::default(),
            inference: InferenceSettings::default(),
            summarizer: SummarizerSettings::default(),
            catalog: CatalogSettings::default(),
            kms: KmsSettings::default(),
            keys: KeySettings::default(),
            loader: LoaderSettings::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsSettings {
    pub url: String,
    /// First token of every subject; lets several installations share one NATS.
    pub subject_prefix: String,
    /// Bound on every request/reply; past it the edge answers 504.
    pub request_timeout_ms: u64,
    pub credentials_file: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<SecretString>,
}

impl Default for NatsSettings {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            subject_prefix: "polylogue".into(),
            request_timeout_ms: 5_000,
            credentials_file: None,
            user: None,
            password: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// `tracing` filter directive, e.g. `info` or `info,polylogue_auth=debug`.
    pub log_level: String,
    /// `json` (default) or `pretty`.
    pub log_format: String,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_level: "info".into(),
            log_format: "json".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKey {
    pub kid: String,
    pub secret: SecretString,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtSettings {
    /// Key ring: the first key signs, every key verifies. Rotate by putting a new key first and
    /// dropping the old one after `access_ttl_secs`.
    pub keys: Vec<JwtKey>,
    pub access_ttl_secs: u64,
    pub refresh_ttl_secs: u64,
}

impl Default for JwtSettings {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            access_ttl_secs: 900,
            refresh_ttl_secs: 30 * 24 * 3600,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeSettings {
    pub listen: String,
    /// `/metrics` and `/healthz` for Prometheus and Kubernetes probes.
    pub ops_listen: String,
    pub body_limit_bytes: usize,
    /// How long shutdown waits for open requests.
    pub shutdown_grace_secs: u64,
    /// `Secure` attribute on cookies; switch off only for plain-HTTP local runs.
    pub cookie_secure: bool,
    /// `Strict` or `Lax`.
    pub cookie_same_site: String,
    /// Take the client address from `X-Forwarded-For` (only behind a trusted proxy).
    pub trust_forwarded_for: bool,
    pub rate_limits: RateLimitSettings,
    /// Seconds between SSE keep-alive comments on an idle stream.
    pub sse_keepalive_secs: u64,
    /// How long a non-streaming `POST .../messages` waits for the reply before answering 504
    /// (the generation goes on and the reply is stored).
    pub reply_timeout_secs: u64,
}

impl Default for EdgeSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            ops_listen: "127.0.0.1:9180".into(),
            body_limit_bytes: 1024 * 1024,
            shutdown_grace_secs: 30,
            cookie_secure: true,
            cookie_same_site: "Strict".into(),
            trust_forwarded_for: false,
            rate_limits: RateLimitSettings::default(),
            sse_keepalive_secs: 15,
            reply_timeout_secs: 300,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSettings {
    pub enabled: bool,
    /// Window length in seconds (the spec's limits are per minute).
    pub window_secs: u64,
    /// Per-route overrides of the spec's limits, by route name (see `docs/api.md`), e.g.
    /// `login = 5`. A value of 0 disables that route's limit.
    pub overrides: BTreeMap<String, u32>,
    /// Failed-login attempts allowed per account per window, on top of the per-IP limit.
    pub login_per_account: u32,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            window_secs: 60,
            overrides: BTreeMap::new(),
            login_per_account: 10,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    pub ops_listen: String,
    /// Open self-service `POST /api/register`. Off in production unless set explicitly.
    pub registration_enabled: Option<bool>,
    pub store: StoreSettings,
    pub argon2: Argon2Settings,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            ops_listen: "127.0.0.1:9181".into(),
            registration_enabled: None,
            store: StoreSettings::default(),
            argon2: Argon2Settings::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThreadSettings {
    pub ops_listen: String,
    pub store: StoreSettings,
    pub search: SearchSettings,
}

impl Default for ThreadSettings {
    fn default() -> Self {
        Self {
            ops_listen: "127.0.0.1:9182".into(),
            store: StoreSettings::default(),
            search: SearchSettings::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchSettings {
    /// `sqlite` (FTS5, embedded default) or `meilisearch`.
    pub engine: String,
    /// FTS5 file; default `<data_dir>/thread-search.sqlite`.
    pub sqlite_path: Option<PathBuf>,
    pub meilisearch: MeiliSettings,
}

impl Default for SearchSettings {
    fn default() -> Self {
        Self {
            engine: "sqlite".into(),
            sqlite_path: None,
            meilisearch: MeiliSettings::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MeiliSettings {
    pub url: String,
    pub api_key: Option<SecretString>,
    pub index: String,
}

impl Default for MeiliSettings {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:7700".into(),
            api_key: None,
            index: "polylogue-threads".into(),
        }
    }
}

/// The inference router: provider endpoints, operator keys, context budget, streams and leases.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InferenceSettings {
    pub ops_listen: String,
    /// Base URLs of the cloud providers; `None` = the provider's public API. Local runtimes
    /// (`ollama`, `openai-compatible`) take theirs from the catalog entry (`baseUrl`).
    pub anthropic_url: Option<String>,
    pub openai_url: Option<String>,
    pub google_url: Option<String>,
    pub ollama_url: Option<String>,
    /// Let provider base URLs point at loopback, private or link-local addresses (a simulator,
    /// a proxy on the LAN). Catalog `baseUrl`s of local runtimes are always allowed.
    pub allow_private_base_urls: bool,
    /// Operator keys, used when the user has none for the provider.
    pub keys: OperatorKeys,
    /// System prompt used when the user's profile has none.
    pub default_system_prompt: String,
    /// Tokens reserved for the reply (the provider's max tokens) unless the request asks for
    /// fewer; capped at a quarter of the model's context length.
    pub reply_budget_tokens: u32,
    /// How many of the newest messages context assembly reads before trimming to the budget.
    pub history_window: u32,
    /// Largest user message, in bytes.
    pub max_content_bytes: usize,
    pub connect_timeout_ms: u64,
    /// Until the provider's response headers arrive.
    pub header_timeout_ms: u64,
    /// Largest gap between two chunks of a streamed reply.
    pub idle_timeout_ms: u64,
    /// A whole non-streaming provider call.
    pub request_timeout_ms: u64,
    /// Attempts (first + retries) before the first token, with exponential backoff and jitter.
    pub retry_attempts: u32,
    pub retry_base_delay_ms: u64,
    pub retry_max_delay_ms: u64,
    /// How long a generation's events stay replayable on the tokens stream.
    pub stream_retention_secs: u64,
    /// How often each router refreshes its heartbeat.
    pub heartbeat_ms: u64,
    /// A router whose heartbeat is older than this is dead; its generations end `interrupted`.
    pub lease_timeout_ms: u64,
    /// How often partial reply content is written to the store while streaming.
    pub checkpoint_ms: u64,
    /// Generations one router runs at once; more are refused with 503.
    pub max_concurrent: usize,
    /// Build the BPE tables (OpenAI token counting) at start rather than on first use.
    pub warm_up_tokenizers: bool,
    /// A non-streaming message to a local model that is not loaded waits this long for its load
    /// (started or joined on demand), then answers 503 with `Retry-After`.
    pub load_wait_secs: u64,
    /// A streaming message waits this long for its model's load (with `status` events) before
    /// it ends with an error.
    pub load_timeout_secs: u64,
}

impl Default for InferenceSettings {
    fn default() -> Self {
        Self {
            ops_listen: "127.0.0.1:9183".into(),
            anthropic_url: None,
            openai_url: None,
            google_url: None,
            ollama_url: None,
            allow_private_base_urls: false,
            keys: OperatorKeys::default(),
            default_system_prompt: "You are a helpful assistant.".into(),
            reply_budget_tokens: 1024,
            history_window: 200,
            max_content_bytes: 100_000,
            connect_timeout_ms: 5_000,
            header_timeout_ms: 60_000,
            idle_timeout_ms: 60_000,
            request_timeout_ms: 300_000,
            retry_attempts: 3,
            retry_base_delay_ms: 250,
            retry_max_delay_ms: 4_000,
            stream_retention_secs: 600,
            heartbeat_ms: 1_000,
            lease_timeout_ms: 5_000,
            checkpoint_ms: 1_000,
            max_concurrent: 2_000,
            warm_up_tokenizers: true,
            load_wait_secs: 20,
            load_timeout_secs: 1_800,
        }
    }
}

/// The summarizer: when a (thread, model) history gets a new summary, how long summaries are,
/// and how failed work is retried. Provider endpoints and keys are `[inference]`'s.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SummarizerSettings {
    pub ops_listen: String,
    /// Durable JetStream consumer of `message.created` events, shared by every replica.
    pub consumer: String,
    /// Summarize when the uncovered part of a history needs more than this share of the
    /// model's prompt budget (context length − reply budget, as context assembly computes it).
    pub trigger_share: f64,
    /// ... or when it has at least this many messages (user messages and complete replies).
    pub trigger_messages: u32,
    /// The automatic trigger leaves the newest messages verbatim; the summary covers up to the
    /// one before them. The manual endpoint covers every message.
    pub keep_recent: u32,
    /// Length bounds of a summary, in tokens of the summarizing model's counter.
    pub min_tokens: u32,
    pub max_tokens: u32,
    /// Catalog id of the model that writes every summary; default: the history's own model.
    pub model: Option<String>,
    /// Deliveries of one event before its work goes to the dead-letter subject.
    pub max_deliver: u64,
    /// Redelivery delays after failed attempts 1, 2, …; the last one repeats.
    pub backoff_ms: Vec<u64>,
    /// Redelivery delay of an event whose history is being summarized by someone else.
    pub busy_retry_ms: u64,
    /// Crash safety of the per-history lock: a lock not refreshed for this long is free again
    /// (the holder refreshes it every third of it).
    pub lock_ttl_secs: u64,
    /// Histories summarized at once per replica.
    pub max_concurrent: usize,
    /// How long the edge waits for a manual summary.
    pub request_timeout_secs: u64,
    /// How long dead letters are kept on their stream.
    pub dead_letter_retention_secs: u64,
}

impl Default for SummarizerSettings {
    fn default() -> Self {
        Self {
            ops_listen: "127.0.0.1:9185".into(),
            consumer: "summarizer".into(),
            trigger_share: 0.5,
            trigger_messages: 40,
            keep_recent: 4,
            min_tokens: 300,
            max_tokens: 700,
            model: None,
            max_deliver: 5,
            backoff_ms: vec![1_000, 5_000, 30_000, 120_000],
            busy_retry_ms: 1_000,
            lock_ttl_secs: 60,
            max_concurrent: 4,
            request_timeout_secs: 180,
            dead_letter_retention_secs: 30 * 24 * 3600,
        }
    }
}

/// Operator-wide provider keys (secrets; never logged).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OperatorKeys {
    pub claude: Option<SecretString>,
    pub openai: Option<SecretString>,
    pub google: Option<SecretString>,
}

impl OperatorKeys {
    /// The key for an `apiKeyRequired` name (`claude`, `openai`, `google`).
    /// An empty value (an unset variable in a compose file) counts as no key.
    pub fn get(&self, name: &str) -> Option<&SecretString> {
        let key = match name {
            "claude" => self.claude.as_ref(),
            "openai" => self.openai.as_ref(),
            "google" => self.google.as_ref(),
            _ => None,
        };
        key.filter(|k| !k.expose_secret().trim().is_empty())
    }
}

/// The key-management service that wraps the data keys of users' provider keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KmsSettings {
    /// `local` (a key-encryption-key file, the embedded default) or `vault` (Vault/OpenBao transit).
    pub engine: String,
    pub local: LocalKmsSettings,
    pub vault: VaultKmsSettings,
}

impl Default for KmsSettings {
    fn default() -> Self {
        Self {
            engine: "local".into(),
            local: LocalKmsSettings::default(),
            vault: VaultKmsSettings::default(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalKmsSettings {
    /// The key-encryption-key file (created on first run, mode 0600); default `<data_dir>/kek.json`.
    pub kek_path: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VaultKmsSettings {
    pub address: String,
    /// A Vault token (secret). Ignored when `token_file` is set.
    pub token: Option<SecretString>,
    /// A file holding the token (a Kubernetes Secret mount, a Vault agent sink); read at start.
    pub token_file: Option<PathBuf>,
    /// Mount path of the transit engine.
    pub mount: String,
    /// Transit key that wraps the data keys.
    pub key_name: String,
    pub namespace: Option<String>,
    /// Per-request timeout; past it the KMS counts as unavailable (503).
    pub timeout_ms: u64,
}

impl Default for VaultKmsSettings {
    fn default() -> Self {
        Self {
            address: "http://127.0.0.1:8200".into(),
            token: None,
            token_file: None,
            mount: "transit".into(),
            key_name: "polylogue-provider-keys".into(),
            namespace: None,
            timeout_ms: 2_000,
        }
    }
}

/// The ollama-loader: local models' status and load jobs.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoaderSettings {
    pub ops_listen: String,
    /// Ollama hosts to manage; empty = `inference.ollama_url`, else the catalog's Ollama `baseUrl`s.
    /// A model is served by the first host that has it.
    pub ollama_hosts: Vec<String>,
    /// How often the status of local models is refreshed (Ollama `/api/ps` + `/api/tags`, the
    /// OpenAI-compatible servers' `/v1/models`).
    pub poll_interval_ms: u64,
    /// How often cloud providers' reachability is checked.
    pub cloud_check_secs: u64,
    /// `keep_alive` sent when loading a model into Ollama's memory (Ollama duration, e.g. `30m`, or `-1` = forever).
    pub keep_alive: String,
    /// Jobs run at once per loader replica.
    pub max_concurrent_jobs: usize,
    /// Deliveries of a job (a loader dying mid-job counts one) before it ends `error`.
    pub max_attempts: u32,
    /// How long a job's work-queue message stays with a loader that stops reporting progress
    /// before another loader (or the restarted one) takes the job over.
    pub ack_wait_secs: u64,
    /// How often a running job's progress is written (and so reaches SSE readers).
    pub progress_interval_ms: u64,
    /// How long a whole job may take before it ends `error`.
    pub job_timeout_secs: u64,
    /// Retries of an Ollama pull that failed for a passing reason (connection lost, a stalled or
    /// cut-off download, Ollama's 5xx) within one run of a job; Ollama resumes the download.
    /// A model the registry does not have is not retried. 0 = no retry.
    pub pull_retries: u32,
    /// Wait before the first such retry; doubled for each next one (at most 60 s).
    pub pull_retry_backoff_ms: u64,
    /// How long ended jobs stay readable (KV TTL).
    pub job_retention_secs: u64,
    /// Download speed assumed for `estimatedTime` until one is measured, bytes per second.
    pub assumed_download_bytes_per_sec: u64,
    /// A status record older than this is answered `unavailable` (no loader is watching).
    pub status_stale_secs: u64,
}

impl Default for LoaderSettings {
    fn default() -> Self {
        Self {
            ops_listen: "127.0.0.1:9184".into(),
            ollama_hosts: Vec::new(),
            poll_interval_ms: 2_000,
            cloud_check_secs: 60,
            keep_alive: "30m".into(),
            max_concurrent_jobs: 2,
            max_attempts: 3,
            ack_wait_secs: 30,
            progress_interval_ms: 250,
            job_timeout_secs: 3_600,
            pull_retries: 3,
            pull_retry_backoff_ms: 1_000,
            job_retention_secs: 86_400,
            assumed_download_bytes_per_sec: 50_000_000,
            status_stale_secs: 30,
        }
    }
}

/// Users' provider keys: verification when added, the router's decrypted-key cache, `lastUsed`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeySettings {
    /// Timeout of the one verification call made to a provider when a key is added.
    pub verify_timeout_ms: u64,
    /// Decrypted keys an inference-router replica keeps in memory (0 = none).
    pub cache_capacity: usize,
    /// How long a decrypted key stays cached.
    pub cache_ttl_secs: u64,
    /// How often the auth service writes the coalesced `lastUsed` times.
    pub last_used_flush_ms: u64,
    /// Retention of the key-use audit events on JetStream.
    pub audit_retention_secs: u64,
}

impl Default for KeySettings {
    fn default() -> Self {
        Self {
            verify_timeout_ms: 5_000,
            cache_capacity: 10_000,
            cache_ttl_secs: 60,
            last_used_flush_ms: 2_000,
            audit_retention_secs: 30 * 24 * 3600,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CatalogSettings {
    /// A TOML model catalog; default: the one shipped in `deploy/catalog/models.toml`.
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// `sqlite` (embedded default) or `scylla`.
    pub engine: String,
    /// SQLite file; default `<data_dir>/<service>.sqlite`.
    pub sqlite_path: Option<PathBuf>,
    pub scylla: ScyllaSettings,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            engine: "sqlite".into(),
            sqlite_path: None,
            scylla: ScyllaSettings::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScyllaSettings {
    pub nodes: Vec<String>,
    pub keyspace: String,
    pub replication_factor: u32,
    pub username: Option<String>,
    pub password: Option<SecretString>,
}

impl Default for ScyllaSettings {
    fn default() -> Self {
        Self {
            nodes: vec!["127.0.0.1:9042".into()],
            keyspace: "polylogue".into(),
            replication_factor: 3,
            username: None,
            password: None,
        }
    }
}

/// argon2id cost. The defaults are OWASP's minimum for argon2id (19 MiB, 2 passes, 1 lane);
/// validation refuses anything cheaper.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Argon2Settings {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    /// Hashes computed at once; each holds `memory_kib` of RAM.
    pub max_concurrent: usize,
    /// Logins allowed to wait for a hashing slot; past it they get 503 at once (load shedding).
    pub max_queue: usize,
}

impl Default for Argon2Settings {
    fn default() -> Self {
        Self {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
            max_concurrent: 4,
            max_queue: 64,
        }
    }
}

impl Settings {
    /// Loads defaults, then `file` (if given and present), then the environment, and validates.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let settings = Self::load_unchecked(file)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Like [`Settings::load`] without validation, for tools that need only part of it (the CLI
    /// needs NATS, not signing keys).
    pub fn load_unchecked(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Load(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(Env::prefixed("POLYLOGUE__").split("__"));
        let settings: Settings = figment
            .extract()
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        Ok(settings)
    }

    /// Loads from the file named by `POLYLOGUE_CONFIG` if set.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::load(Self::env_file().as_deref())
    }

    pub fn env_file() -> Option<PathBuf> {
        std::env::var_os("POLYLOGUE_CONFIG").map(PathBuf::from)
    }

    pub fn is_production(&self) -> bool {
        self.environment == "production"
    }

    /// Registration is on in development and off in production unless set.
    pub fn registration_enabled(&self) -> bool {
        self.auth
            .registration_enabled
            .unwrap_or(!self.is_production())
    }

    /// The local key-encryption-key file: `kms.local.kek_path` or `<data_dir>/kek.json`.
    pub fn kek_file(&self) -> PathBuf {
        self.kms
            .local
            .kek_path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("kek.json"))
    }

    /// The SQLite file of a store: its configured path or `<data_dir>/<name>.sqlite`.
    pub fn sqlite_file(&self, configured: Option<&PathBuf>, name: &str) -> PathBuf {
        configured
            .cloned()
            .unwrap_or_else(|| self.data_dir.join(format!("{name}.sqlite")))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let p = &self.nats.subject_prefix;
        if p.is_empty()
            || !p
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return invalid(format!(
                "nats.subject_prefix must be non-empty and made of [A-Za-z0-9_-], got {p:?}"
            ));
        }
        if self.nats.request_timeout_ms == 0 {
            return invalid("nats.request_timeout_ms must be positive".into());
        }
        if self.jwt.keys.is_empty() {
            return invalid(
                "jwt.keys is empty: configure at least one signing key (see docs/configuration.md)"
                    .into(),
            );
        }
        let mut kids = std::collections::HashSet::new();
        for key in &self.jwt.keys {
            if key.kid.is_empty() || key.kid.len() > 64 {
                return invalid("jwt.keys[].kid must be 1-64 characters".into());
            }
            if !kids.insert(key.kid.as_str()) {
                return invalid(format!("jwt.keys has the kid {:?} twice", key.kid));
            }
            if key.secret.expose_secret().len() < 32 {
                return invalid(format!(
                    "jwt key {:?} is shorter than 32 bytes; HS256 needs at least 256 bits",
                    key.kid
                ));
            }
        }
        if self.jwt.access_ttl_secs == 0 || self.jwt.access_ttl_secs > 3600 {
            return invalid("jwt.access_ttl_secs must be 1-3600".into());
        }
        if self.jwt.refresh_ttl_secs < self.jwt.access_ttl_secs {
            return invalid("jwt.refresh_ttl_secs must be at least jwt.access_ttl_secs".into());
        }
        if !matches!(self.edge.cookie_same_site.as_str(), "Strict" | "Lax") {
            return invalid("edge.cookie_same_site must be Strict or Lax".into());
        }
        if self.is_production() && !self.edge.cookie_secure {
            return invalid("edge.cookie_secure cannot be off in production".into());
        }
        if self.edge.body_limit_bytes < 1024 {
            return invalid("edge.body_limit_bytes must be at least 1024".into());
        }
        let i = &self.inference;
        if i.retry_attempts == 0 {
            return invalid("inference.retry_attempts must be at least 1".into());
        }
        if i.heartbeat_ms == 0 || i.lease_timeout_ms < 2 * i.heartbeat_ms {
            return invalid(
                "inference.lease_timeout_ms must be at least twice inference.heartbeat_ms".into(),
            );
        }
        if i.reply_budget_tokens == 0 || i.history_window == 0 || i.max_concurrent == 0 {
            return invalid(
                "inference.reply_budget_tokens, history_window and max_concurrent must be positive"
                    .into(),
            );
        }
        if i.stream_retention_secs == 0 || self.edge.reply_timeout_secs == 0 {
            return invalid(
                "inference.stream_retention_secs and edge.reply_timeout_secs must be positive"
                    .into(),
            );
        }
        let z = &self.summarizer;
        if !(z.trigger_share > 0.0 && z.trigger_share <= 1.0) {
            return invalid("summarizer.trigger_share must be in (0, 1]".into());
        }
        if z.trigger_messages == 0 || z.trigger_messages > 1000 {
            return invalid("summarizer.trigger_messages must be 1-1000".into());
        }
        if z.min_tokens == 0 || z.min_tokens >= z.max_tokens {
            return invalid(
                "summarizer.min_tokens must be positive and below summarizer.max_tokens".into(),
            );
        }
        if z.max_deliver == 0 || z.max_concurrent == 0 || z.request_timeout_secs == 0 {
            return invalid(
                "summarizer.max_deliver, max_concurrent and request_timeout_secs must be positive"
                    .into(),
            );
        }
        if z.backoff_ms.is_empty() || z.busy_retry_ms == 0 {
            return invalid(
                "summarizer.backoff_ms must name at least one delay and busy_retry_ms be positive"
                    .into(),
            );
        }
        if z.lock_ttl_secs < 3 {
            return invalid("summarizer.lock_ttl_secs must be at least 3".into());
        }
        if z.dead_letter_retention_secs == 0 {
            return invalid("summarizer.dead_letter_retention_secs must be positive".into());
        }
        if z.consumer.is_empty()
            || !z
                .consumer
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return invalid("summarizer.consumer must be made of [A-Za-z0-9_-]".into());
        }
        match self.kms.engine.as_str() {
            "local" => {}
            "vault" => {
                let v = &self.kms.vault;
                if v.address.is_empty() || v.mount.is_empty() || v.key_name.is_empty() {
                    return invalid(
                        "kms.vault.address, mount and key_name must be set for kms.engine = vault"
                            .into(),
                    );
                }
                if v.token.is_none() && v.token_file.is_none() {
                    return invalid(
                        "kms.vault.token or kms.vault.token_file must be set for kms.engine = vault"
                            .into(),
                    );
                }
                if v.timeout_ms == 0 {
                    return invalid("kms.vault.timeout_ms must be positive".into());
                }
            }
            other => return invalid(format!("kms.engine must be local or vault, got {other:?}")),
        }
        let l = &self.loader;
        if l.poll_interval_ms == 0
            || l.cloud_check_secs == 0
            || l.max_concurrent_jobs == 0
            || l.max_attempts == 0
            || l.ack_wait_secs < 3
            || l.progress_interval_ms == 0
            || l.job_timeout_secs == 0
            || l.job_retention_secs == 0
            || l.assumed_download_bytes_per_sec == 0
            || l.status_stale_secs == 0
            || l.pull_retry_backoff_ms == 0
        {
            return invalid(
                "loader: intervals, limits and timeouts must be positive (ack_wait_secs at least 3)"
                    .into(),
            );
        }
        if l.keep_alive.trim().is_empty() {
            return invalid("loader.keep_alive must not be empty".into());
        }
        if l.pull_retries > 20 {
            return invalid(format!(
                "loader.pull_retries must be at most 20, got {}",
                l.pull_retries
            ));
        }
        let k = &self.keys;
        if k.verify_timeout_ms == 0 || k.last_used_flush_ms == 0 || k.audit_retention_secs == 0 {
            return invalid(
                "keys.verify_timeout_ms, last_used_flush_ms and audit_retention_secs must be positive"
                    .into(),
            );
        }
        if self.edge.rate_limits.window_secs == 0 {
            return invalid("edge.rate_limits.window_secs must be positive".into());
        }
        let a = &self.auth.argon2;
        if a.memory_kib < 19_456 || a.iterations < 2 || a.parallelism < 1 {
            return invalid(
                "auth.argon2 is below OWASP's minimum (memory_kib >= 19456, iterations >= 2, parallelism >= 1)"
                    .into(),
            );
        }
        if a.max_concurrent == 0 {
            return invalid("auth.argon2.max_concurrent must be positive".into());
        }
        for (section, store) in [("auth", &self.auth.store), ("thread", &self.thread.store)] {
            match store.engine.as_str() {
                "sqlite" => {}
                "scylla" if !store.scylla.nodes.is_empty() => {}
                "scylla" => return invalid(format!("{section}.store.scylla.nodes is empty")),
                other => {
                    return invalid(format!(
                        "{section}.store.engine must be sqlite or scylla, got {other:?}"
                    ));
                }
            }
        }
        match self.thread.search.engine.as_str() {
            "sqlite" | "meilisearch" => {}
            other => {
                return invalid(format!(
                    "thread.search.engine must be sqlite or meilisearch, got {other:?}"
                ));
            }
        }
        if !matches!(self.telemetry.log_format.as_str(), "json" | "pretty") {
            return invalid("telemetry.log_format must be json or pretty".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const KEY: &str = r#"[[jwt.keys]]
kid = "k1"
secret = "0123456789abcdef0123456789abcdef-secret"
"#;

    fn file(contents: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(contents.as_bytes()).unwrap();
        f
    }

    #[test]
    fn a_file_overrides_defaults_and_secrets_are_redacted() {
        let f = file(&format!(
            "environment = \"staging\"\n[edge]\nlisten = \"0.0.0.0:1\"\n{KEY}"
        ));
        let s = Settings::load(Some(f.path())).unwrap();
        assert_eq!(s.environment, "staging");
        assert_eq!(s.edge.listen, "0.0.0.0:1");
        assert_eq!(s.nats.subject_prefix, "polylogue");
        let debug = format!("{s:?}");
        assert!(
            !debug.contains("0123456789abcdef"),
            "secret leaked: {debug}"
        );
    }

    #[test]
    fn settings_without_a_signing_key_are_refused() {
        let f = file("environment = \"development\"\n");
        let err = Settings::load(Some(f.path())).unwrap_err();
        assert!(err.to_string().contains("jwt.keys"), "{err}");
    }

    #[test]
    fn weak_argon2_and_short_keys_are_refused() {
        let f = file(&format!("[auth.argon2]\nmemory_kib = 1024\n{KEY}"));
        assert!(Settings::load(Some(f.path())).is_err());
        let f = file("[[jwt.keys]]\nkid = \"k\"\nsecret = \"short\"\n");
        assert!(Settings::load(Some(f.path())).is_err());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let f = file(&format!("[edge]\nlisten_typo = \"x\"\n{KEY}"));
        assert!(Settings::load(Some(f.path())).is_err());
    }

    #[test]
    fn summarizer_settings_are_read_and_checked() {
        let f = file(&format!(
            "[summarizer]\ntrigger_messages = 6\nmodel = \"claude-haiku\"\nbackoff_ms = [10, 20]\n{KEY}"
        ));
        let s = Settings::load(Some(f.path())).unwrap();
        assert_eq!(s.summarizer.trigger_messages, 6);
        assert_eq!(s.summarizer.model.as_deref(), Some("claude-haiku"));
        assert_eq!(s.summarizer.backoff_ms, [10, 20]);
        assert_eq!(
            (s.summarizer.min_tokens, s.summarizer.max_tokens),
            (300, 700)
        );
        for bad in [
            "trigger_share = 0.0",
            "trigger_share = 1.5",
            "min_tokens = 800",
            "max_deliver = 0",
            "backoff_ms = []",
            "lock_ttl_secs = 1",
            "consumer = \"a.b\"",
        ] {
            let f = file(&format!("[summarizer]\n{bad}\n{KEY}"));
            assert!(Settings::load(Some(f.path())).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn production_closes_registration_by_default() {
        let f = file(&format!("environment = \"production\"\n{KEY}"));
        let s = Settings::load(Some(f.path())).unwrap();
        assert!(!s.registration_enabled());
        let f = file(&format!("environment = \"development\"\n{KEY}"));
        assert!(
            Settings::load(Some(f.path()))
                .unwrap()
                .registration_enabled()
        );
    }
}
