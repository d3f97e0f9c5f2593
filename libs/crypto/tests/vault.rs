//! The Vault transit adapter against a real OpenBao dev server (`bao server -dev`).
//!
//! The binary is `$POLYLOGUE_BAO`, else `bao` on `PATH`. Without one the tests print why and pass,
//! unless `CI` is set, where they fail.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    clippy::print_stderr,
    reason = "test helpers outside #[test] fns fail loudly, and say why a test is skipped"
)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use polylogue_crypto::{
    CryptoError, KeyContext, KeyEnvelope, Kms, KmsError, LocalKek, VaultConfig, VaultTransit,
    WrappedKey, open, seal,
};
use secrecy::{ExposeSecret as _, SecretString};

const SECRET: &str = "sk-ant-api03-abcdefghijklmnopqrstuvwxyz";

const CTX: KeyContext<'static> = KeyContext {
    user_id: "0195f3a2-user",
    provider: "claude",
    key_version: 1,
};

/// A running dev server, killed on drop.
struct Bao {
    child: tokio::process::Child,
    address: String,
    token: String,
    _home: tempfile::TempDir,
}

fn bao_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("POLYLOGUE_BAO") {
        return Some(PathBuf::from(path));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("bao"))
        .find(|p| p.is_file())
}

/// A port `p` with `p + 1` free as well (the dev server also binds the cluster port `p + 1`).
fn free_port_pair() -> u16 {
    loop {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

impl Bao {
    /// Starts a dev server with the transit engine mounted, or `None` (skip) when there is no
    /// binary outside CI.
    async fn start() -> Option<Self> {
        let Some(binary) = bao_binary() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "no OpenBao binary: set POLYLOGUE_BAO or put `bao` on PATH"
            );
            eprintln!("skipped: no OpenBao binary (set POLYLOGUE_BAO or put `bao` on PATH)");
            return None;
        };
        for _ in 0..3 {
            if let Some(bao) = Self::try_start(&binary).await {
                return Some(bao);
            }
        }
        panic!("OpenBao dev server did not start ({})", binary.display());
    }

    async fn try_start(binary: &PathBuf) -> Option<Self> {
        let port = free_port_pair();
        let token = format!("root-{:032x}", rand::random::<u128>());
        let home = tempfile::tempdir().unwrap();
        let child = tokio::process::Command::new(binary)
            .args([
                "server",
                "-dev",
                &format!("-dev-root-token-id={token}"),
                &format!("-dev-listen-address=127.0.0.1:{port}"),
            ])
            .env("HOME", home.path())
            .env_remove("VAULT_ADDR")
            .env_remove("BAO_ADDR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut bao = Self {
            child,
            address: format!("http://127.0.0.1:{port}"),
            token,
            _home: home,
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(_)) = bao.child.try_wait() {
                return None; // exited: probably lost the port
            }
            let health = http
                .get(format!("{}/v1/sys/health", bao.address))
                .send()
                .await;
            if health.is_ok_and(|r| r.status() == 200) {
                break;
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mounted = http
            .post(format!("{}/v1/sys/mounts/transit", bao.address))
            .header("X-Vault-Token", &bao.token)
            .json(&serde_json::json!({"type": "transit"}))
            .send()
            .await
            .unwrap();
        assert!(
            mounted.status().is_success(),
            "mount transit: {}",
            mounted.status()
        );
        Some(bao)
    }

    fn config(&self) -> VaultConfig {
        VaultConfig::new(&self.address, SecretString::from(self.token.clone()))
    }

    async fn transit(&self) -> VaultTransit {
        let transit = VaultTransit::connect(self.config()).unwrap();
        transit.ensure_key().await.unwrap();
        transit
    }

    async fn seal_server(&self) {
        let sealed = reqwest::Client::new()
            .put(format!("{}/v1/sys/seal", self.address))
            .header("X-Vault-Token", &self.token)
            .send()
            .await
            .unwrap();
        assert!(sealed.status().is_success(), "seal: {}", sealed.status());
    }
}

/// Neither the token nor the secret shows in an error.
fn assert_clean(err: &dyn std::fmt::Debug, display: String, token: &str) {
    let debug = format!("{err:?}");
    for text in [display, debug] {
        assert!(!text.contains(token), "token in {text}");
        assert!(!text.contains(&token[5..]), "token in {text}");
        assert!(!text.contains(SECRET), "secret in {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_through_vault() {
    let Some(bao) = Bao::start().await else {
        return;
    };
    let vault = bao.transit().await;
    vault.ensure_key().await.unwrap(); // idempotent
    assert_eq!(vault.name(), "vault");
    vault.health().await.unwrap();
    assert_eq!(vault.current_version().await.unwrap(), 1);

    let env = seal(&vault, SECRET, &CTX).await.unwrap();
    assert_eq!(env.wrapped_key.kms, "vault");
    assert_eq!(env.wrapped_key.version, 1);
    assert!(env.wrapped_key.ciphertext.starts_with("vault:v1:"));
    assert_eq!(
        open(&vault, &env, &CTX).await.unwrap().expose_secret(),
        SECRET
    );

    // Fresh data keys per seal, and the data key Vault hands back is the one it unwraps.
    let a = vault.generate_data_key().await.unwrap();
    let b = vault.generate_data_key().await.unwrap();
    assert_ne!(a.plaintext(), b.plaintext());
    assert_eq!(
        *vault.unwrap_key(a.wrapped()).await.unwrap(),
        *a.plaintext()
    );

    // Bound to the context, and tampering is refused.
    let other = KeyContext {
        user_id: "someone-else",
        ..CTX
    };
    assert_eq!(
        open(&vault, &env, &other).await.unwrap_err(),
        CryptoError::Tampered
    );
    let mut bad = env.clone();
    let last = bad.wrapped_key.ciphertext.pop().unwrap();
    let prev = bad.wrapped_key.ciphertext.pop().unwrap();
    bad.wrapped_key
        .ciphertext
        .push(if prev == 'A' { 'B' } else { 'A' });
    bad.wrapped_key.ciphertext.push(last);
    let err = open(&vault, &bad, &CTX).await.unwrap_err();
    assert!(
        matches!(err, CryptoError::Kms(KmsError::Invalid(_))),
        "{err:?}"
    );
    assert_clean(&err, err.to_string(), &bao.token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_then_rewrap() {
    let Some(bao) = Bao::start().await else {
        return;
    };
    let vault = bao.transit().await;
    let old = seal(&vault, SECRET, &CTX).await.unwrap();
    assert_eq!(old.wrapped_key.version, 1);

    assert_eq!(vault.rotate().await.unwrap(), 2);
    assert_eq!(vault.current_version().await.unwrap(), 2);
    assert_eq!(
        open(&vault, &old, &CTX).await.unwrap().expose_secret(),
        SECRET
    );

    let rewrapped = vault.rewrap(&old.wrapped_key).await.unwrap();
    assert_eq!(rewrapped.kms, "vault");
    assert_eq!(rewrapped.version, 2);
    assert!(rewrapped.ciphertext.starts_with("vault:v2:"));
    let moved = KeyEnvelope {
        wrapped_key: rewrapped,
        ..old.clone()
    };
    assert_eq!(
        open(&vault, &moved, &CTX).await.unwrap().expose_secret(),
        SECRET
    );
    assert_eq!(
        seal(&vault, SECRET, &CTX)
            .await
            .unwrap()
            .wrapped_key
            .version,
        2
    );

    // A version number that does not match the ciphertext is refused before Vault is asked.
    let mut mislabelled = old.wrapped_key.clone();
    mislabelled.version = 2;
    assert!(matches!(
        vault.unwrap_key(&mislabelled).await,
        Err(KmsError::Invalid(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_one_kms_are_invalid_in_the_other() {
    let Some(bao) = Bao::start().await else {
        return;
    };
    let vault = bao.transit().await;
    let dir = tempfile::tempdir().unwrap();
    let local = LocalKek::open(dir.path().join("kek.json")).unwrap();

    let from_vault = seal(&vault, SECRET, &CTX).await.unwrap();
    let from_local = seal(&local, SECRET, &CTX).await.unwrap();
    let err = open(&local, &from_vault, &CTX).await.unwrap_err();
    assert!(
        matches!(err, CryptoError::Kms(KmsError::Invalid(_))),
        "{err:?}"
    );
    let err = open(&vault, &from_local, &CTX).await.unwrap_err();
    assert!(
        matches!(err, CryptoError::Kms(KmsError::Invalid(_))),
        "{err:?}"
    );

    // Relabelled: the kms name says vault but the ciphertext is local, and the reverse.
    let relabelled = WrappedKey {
        kms: "vault".into(),
        ..from_local.wrapped_key.clone()
    };
    assert!(matches!(
        vault.unwrap_key(&relabelled).await,
        Err(KmsError::Invalid(_))
    ));
    assert!(matches!(
        vault.rewrap(&relabelled).await,
        Err(KmsError::Invalid(_))
    ));
    let relabelled = WrappedKey {
        kms: "local".into(),
        ..from_vault.wrapped_key.clone()
    };
    assert!(matches!(
        local.unwrap_key(&relabelled).await,
        Err(KmsError::Invalid(_))
    ));

    // A ciphertext from another transit key is Invalid too (Vault refuses it with 400).
    let mut config = bao.config();
    config.key_name = "another-key".into();
    let other_key = VaultTransit::connect(config).unwrap();
    other_key.ensure_key().await.unwrap();
    let err = open(&other_key, &from_vault, &CTX).await.unwrap_err();
    assert!(
        matches!(err, CryptoError::Kms(KmsError::Invalid(_))),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_vault_is_unavailable_quickly() {
    let Some(bao) = Bao::start().await else {
        return;
    };
    let vault = bao.transit().await;
    let env = seal(&vault, SECRET, &CTX).await.unwrap();
    bao.seal_server().await;

    let timeout = bao.config().timeout;
    let started = Instant::now();
    let errors = [
        vault.generate_data_key().await.map(|_| ()).unwrap_err(),
        vault
            .unwrap_key(&env.wrapped_key)
            .await
            .map(|_| ())
            .unwrap_err(),
        vault.health().await.unwrap_err(),
        vault.current_version().await.unwrap_err(),
    ];
    assert!(started.elapsed() < timeout, "took {:?}", started.elapsed());
    for err in &errors {
        assert!(err.is_unavailable(), "{err:?}");
        assert_eq!(err, &KmsError::Unavailable("vault is sealed".into()));
        assert_clean(err, err.to_string(), &bao.token);
    }
    let err = open(&vault, &env, &CTX).await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    let err = seal(&vault, SECRET, &CTX).await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_vault_is_unavailable_quickly() {
    let Some(mut bao) = Bao::start().await else {
        return;
    };
    let vault = bao.transit().await;
    let env = seal(&vault, SECRET, &CTX).await.unwrap();
    bao.child.kill().await.unwrap();

    let timeout = bao.config().timeout;
    let started = Instant::now();
    let errors = [
        vault.generate_data_key().await.map(|_| ()).unwrap_err(),
        vault
            .unwrap_key(&env.wrapped_key)
            .await
            .map(|_| ())
            .unwrap_err(),
        vault
            .rewrap(&env.wrapped_key)
            .await
            .map(|_| ())
            .unwrap_err(),
        vault.health().await.unwrap_err(),
    ];
    assert!(started.elapsed() < timeout, "took {:?}", started.elapsed());
    for err in &errors {
        assert!(err.is_unavailable(), "{err:?}");
        assert_clean(err, err.to_string(), &bao.token);
    }
    assert!(open(&vault, &env, &CTX).await.unwrap_err().is_unavailable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_is_denied_and_never_shown() {
    let Some(bao) = Bao::start().await else {
        return;
    };
    let vault = bao.transit().await;
    let env = seal(&vault, SECRET, &CTX).await.unwrap();

    let wrong_token = format!("wrong-{:032x}", rand::random::<u128>());
    let mut config = bao.config();
    config.token = SecretString::from(wrong_token.clone());
    let denied = VaultTransit::connect(config).unwrap();
    assert!(!format!("{denied:?}").contains(&wrong_token));
    assert!(!format!("{vault:?}").contains(&bao.token));
    // Not allowed to read or create the key: only a warning.
    denied.ensure_key().await.unwrap();
    let errors = [
        denied.generate_data_key().await.map(|_| ()).unwrap_err(),
        denied
            .unwrap_key(&env.wrapped_key)
            .await
            .map(|_| ())
            .unwrap_err(),
        denied.rotate().await.map(|_| ()).unwrap_err(),
    ];
    for err in &errors {
        assert!(matches!(err, KmsError::Denied(_)), "{err:?}");
        assert!(!err.is_unavailable());
        assert_clean(err, err.to_string(), &wrong_token);
        assert_clean(err, err.to_string(), &bao.token);
    }
    // Health needs no token.
    denied.health().await.unwrap();
    let err = open(&denied, &env, &CTX).await.unwrap_err();
    assert_clean(&err, err.to_string(), &wrong_token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_transit_key_is_a_config_error() {
    let Some(bao) = Bao::start().await else {
        return;
    };
    let mut config = bao.config();
    config.key_name = "never-created".into();
    let vault = VaultTransit::connect(config).unwrap();
    let err = vault.generate_data_key().await.unwrap_err();
    assert!(matches!(err, KmsError::Config(_)), "{err:?}");
    let err = vault.current_version().await.unwrap_err();
    assert!(matches!(err, KmsError::Config(_)), "{err:?}");
}

/// A server that accepts connections and never answers: requests end at the configured timeout.
/// Needs no OpenBao.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_vault_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let token = "hvs.silent-token-value";
    let mut config = VaultConfig::new(address, SecretString::from(token));
    config.timeout = Duration::from_millis(300);
    let vault = VaultTransit::connect(config).unwrap();
    let wrapped = WrappedKey {
        kms: "vault".into(),
        version: 1,
        ciphertext: "vault:v1:AAAA".into(),
    };
    let started = Instant::now();
    let errors = [
        vault.generate_data_key().await.map(|_| ()).unwrap_err(),
        vault.unwrap_key(&wrapped).await.map(|_| ()).unwrap_err(),
        vault.health().await.unwrap_err(),
    ];
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(900), "took {elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    for err in &errors {
        assert!(err.is_unavailable(), "{err:?}");
        assert_clean(err, err.to_string(), token);
    }
    drop(listener);
}
