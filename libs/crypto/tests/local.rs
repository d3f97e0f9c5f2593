//! The envelope through the local KEK: round trips, binding, tampering, rotation, and several
//! processes (instances) sharing one key file.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns: a broken fixture must stop the test at once"
)]

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use polylogue_crypto::{
    CryptoError, KeyContext, KeyEnvelope, Kms, KmsError, LocalKek, WrappedKey, open, seal,
};
use secrecy::ExposeSecret as _;

const SECRET: &str = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789";

const CTX: KeyContext<'static> = KeyContext {
    user_id: "0195f3a2-user",
    provider: "openai",
    key_version: 1,
};

fn kek_in(dir: &Path) -> LocalKek {
    LocalKek::open(dir.join("keys").join("kek.json")).unwrap()
}

/// Flips one bit of byte `at` of a base64 field.
fn flip_b64(field: &str, at: usize) -> String {
    let mut bytes = STANDARD.decode(field).unwrap();
    bytes[at] ^= 0x01;
    STANDARD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_and_file_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let kek = kek_in(dir.path());
    assert_eq!(kek.name(), "local");
    kek.health().await.unwrap();
    assert_eq!(kek.current_version().await.unwrap(), 1);

    let env = seal(&kek, SECRET, &CTX).await.unwrap();
    assert_eq!(env.key_version, 1);
    assert_eq!(env.wrapped_key.kms, "local");
    assert_eq!(env.wrapped_key.version, 1);
    assert!(env.wrapped_key.ciphertext.starts_with("local:v1:"));
    assert!(!env.ciphertext.contains(SECRET));
    assert_eq!(
        open(&kek, &env, &CTX).await.unwrap().expose_secret(),
        SECRET
    );

    // The envelope survives JSON (it is what gets stored).
    let stored: KeyEnvelope = serde_json::from_str(&serde_json::to_string(&env).unwrap()).unwrap();
    assert_eq!(
        open(&kek, &stored, &CTX).await.unwrap().expose_secret(),
        SECRET
    );

    let mode = std::fs::metadata(kek.path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "KEK file mode {mode:o}");
    assert_eq!(mode & 0o007, 0, "world readable");
    let dir_mode = std::fs::metadata(kek.path().parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o077, 0, "created directory mode {dir_mode:o}");

    // Reopening reads the same keys.
    let again = kek_in(dir.path());
    assert_eq!(
        open(&again, &env, &CTX).await.unwrap().expose_secret(),
        SECRET
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_is_bound_to_user_provider_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let kek = kek_in(dir.path());
    let env = seal(&kek, SECRET, &CTX).await.unwrap();
    let others = [
        KeyContext {
            user_id: "another-user",
            ..CTX
        },
        KeyContext {
            provider: "claude",
            ..CTX
        },
        KeyContext {
            key_version: 2,
            ..CTX
        },
    ];
    for ctx in &others {
        assert_eq!(
            open(&kek, &env, ctx).await.unwrap_err(),
            CryptoError::Tampered,
            "{ctx:?}"
        );
    }
    // Relabelling the envelope's version does not help: the version is in the associated data.
    let relabelled = KeyEnvelope {
        key_version: 2,
        ..env.clone()
    };
    assert_eq!(
        open(&kek, &relabelled, &others[2]).await.unwrap_err(),
        CryptoError::Tampered
    );
    // A user id that is a prefix of another does not collide.
    let env_u1 = seal(
        &kek,
        SECRET,
        &KeyContext {
            user_id: "u1",
            ..CTX
        },
    )
    .await
    .unwrap();
    assert_eq!(
        open(
            &kek,
            &env_u1,
            &KeyContext {
                user_id: "u10",
                ..CTX
            }
        )
        .await
        .unwrap_err(),
        CryptoError::Tampered
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_flipped_byte_fails() {
    let dir = tempfile::tempdir().unwrap();
    let kek = kek_in(dir.path());
    let env = seal(&kek, SECRET, &CTX).await.unwrap();

    let ct_len = STANDARD.decode(&env.ciphertext).unwrap().len();
    for at in [0, ct_len / 2, ct_len - 1] {
        let bad = KeyEnvelope {
            ciphertext: flip_b64(&env.ciphertext, at),
            ..env.clone()
        };
        assert_eq!(
            open(&kek, &bad, &CTX).await.unwrap_err(),
            CryptoError::Tampered
        );
    }
    for at in [0, 11] {
        let bad = KeyEnvelope {
            nonce: flip_b64(&env.nonce, at),
            ..env.clone()
        };
        assert_eq!(
            open(&kek, &bad, &CTX).await.unwrap_err(),
            CryptoError::Tampered
        );
    }
    // The wrapped data key: nonce, body and tag of the KEK encryption.
    let (prefix, payload) = env.wrapped_key.ciphertext.rsplit_once(':').unwrap();
    for at in [0, 20, 59] {
        let mut bad = env.clone();
        bad.wrapped_key.ciphertext = format!("{prefix}:{}", flip_b64(payload, at));
        let err = open(&kek, &bad, &CTX).await.unwrap_err();
        assert!(
            matches!(err, CryptoError::Kms(KmsError::Invalid(_))),
            "{err:?}"
        );
    }
    // Truncated, or claiming another version.
    let mut bad = env.clone();
    bad.wrapped_key
        .ciphertext
        .truncate(bad.wrapped_key.ciphertext.len() - 4);
    assert!(matches!(
        open(&kek, &bad, &CTX).await.unwrap_err(),
        CryptoError::Kms(KmsError::Invalid(_))
    ));
    let mut bad = env.clone();
    bad.wrapped_key.version = 2;
    assert!(matches!(
        open(&kek, &bad, &CTX).await.unwrap_err(),
        CryptoError::Kms(KmsError::Invalid(_))
    ));
    let mut bad = env.clone();
    bad.wrapped_key.version = 7;
    bad.wrapped_key.ciphertext = env
        .wrapped_key
        .ciphertext
        .replacen("local:v1:", "local:v7:", 1);
    let err = open(&kek, &bad, &CTX).await.unwrap_err();
    assert!(
        matches!(err, CryptoError::Kms(KmsError::Invalid(_))),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_wrapped_keys_are_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let kek = kek_in(dir.path());
    let env = seal(&kek, SECRET, &CTX).await.unwrap();
    let vault_like = WrappedKey {
        kms: "vault".into(),
        version: 1,
        ciphertext: "vault:v1:AAAA".into(),
    };
    for wrapped in [
        vault_like.clone(),
        // A local ciphertext relabelled as another KMS's.
        WrappedKey {
            kms: "vault".into(),
            ..env.wrapped_key.clone()
        },
        // Another KMS's ciphertext labelled local.
        WrappedKey {
            kms: "local".into(),
            ..vault_like
        },
    ] {
        assert!(
            matches!(kek.unwrap_key(&wrapped).await, Err(KmsError::Invalid(_))),
            "{wrapped:?}"
        );
        assert!(
            matches!(kek.rewrap(&wrapped).await, Err(KmsError::Invalid(_))),
            "{wrapped:?}"
        );
    }
    // A key file of its own is another KEK: the envelope does not open there.
    let other_dir = tempfile::tempdir().unwrap();
    let other = kek_in(other_dir.path());
    let err = open(&other, &env, &CTX).await.unwrap_err();
    assert!(
        matches!(err, CryptoError::Kms(KmsError::Invalid(_))),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seals_use_fresh_data_keys_and_nonces() {
    let dir = tempfile::tempdir().unwrap();
    let kek = kek_in(dir.path());
    let mut nonces = HashSet::new();
    let mut wrapped = HashSet::new();
    let mut data_keys = HashSet::new();
    for _ in 0..2_000 {
        let env = seal(&kek, SECRET, &CTX).await.unwrap();
        assert!(nonces.insert(env.nonce.clone()), "repeated nonce");
        assert!(
            wrapped.insert(env.wrapped_key.ciphertext.clone()),
            "repeated wrapped key"
        );
        let key = kek.unwrap_key(&env.wrapped_key).await.unwrap();
        assert!(data_keys.insert(*key), "repeated data key");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_old_envelopes_and_rewrap_moves_them() {
    let dir = tempfile::tempdir().unwrap();
    let kek = kek_in(dir.path());
    let old = seal(&kek, SECRET, &CTX).await.unwrap();
    assert_eq!(old.wrapped_key.version, 1);

    assert_eq!(kek.rotate().await.unwrap(), 2);
    assert_eq!(kek.current_version().await.unwrap(), 2);
    assert_eq!(
        open(&kek, &old, &CTX).await.unwrap().expose_secret(),
        SECRET
    );

    let rewrapped = kek.rewrap(&old.wrapped_key).await.unwrap();
    assert_eq!(rewrapped.version, 2);
    assert!(rewrapped.ciphertext.starts_with("local:v2:"));
    assert_eq!(
        *kek.unwrap_key(&rewrapped).await.unwrap(),
        *kek.unwrap_key(&old.wrapped_key).await.unwrap()
    );
    let moved = KeyEnvelope {
        wrapped_key: rewrapped,
        ..old.clone()
    };
    assert_eq!(
        open(&kek, &moved, &CTX).await.unwrap().expose_secret(),
        SECRET
    );

    let new = seal(&kek, SECRET, &CTX).await.unwrap();
    assert_eq!(new.wrapped_key.version, 2);
    assert_eq!(kek.rotate().await.unwrap(), 3);
    assert_eq!(
        open(&kek, &new, &CTX).await.unwrap().expose_secret(),
        SECRET
    );
    assert_eq!(
        open(&kek, &old, &CTX).await.unwrap().expose_secret(),
        SECRET
    );

    let mode = std::fs::metadata(kek.path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "rotated KEK file mode {mode:o}");
    // No temp files left behind.
    let mut names: Vec<String> = std::fs::read_dir(kek.path().parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["kek.json", "kek.json.lock"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_instance_sees_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let first = kek_in(dir.path());
    let second = kek_in(dir.path());
    assert_eq!(second.current_version().await.unwrap(), 1);

    assert_eq!(first.rotate().await.unwrap(), 2);
    let v2 = seal(&first, SECRET, &CTX).await.unwrap();
    assert_eq!(v2.wrapped_key.version, 2);
    // Unknown version: the second instance reloads the file on the spot.
    assert_eq!(
        open(&second, &v2, &CTX).await.unwrap().expose_secret(),
        SECRET
    );

    // Wrapping: a third instance loaded before a rotation picks it up after the once-a-second
    // check of the file.
    let third = kek_in(dir.path());
    assert_eq!(first.rotate().await.unwrap(), 3);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(third.current_version().await.unwrap(), 3);
    let env = seal(&third, SECRET, &CTX).await.unwrap();
    assert_eq!(env.wrapped_key.version, 3);
    assert_eq!(
        open(&first, &env, &CTX).await.unwrap().expose_secret(),
        SECRET
    );

    // Or at once, when asked to.
    let fourth = kek_in(dir.path());
    assert_eq!(second.rotate().await.unwrap(), 4);
    fourth.reload().unwrap();
    assert_eq!(
        seal(&fourth, SECRET, &CTX)
            .await
            .unwrap()
            .wrapped_key
            .version,
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rotations_do_not_lose_versions() {
    let dir = tempfile::tempdir().unwrap();
    let a = std::sync::Arc::new(kek_in(dir.path()));
    let b = std::sync::Arc::new(kek_in(dir.path()));
    let env = seal(a.as_ref(), SECRET, &CTX).await.unwrap();
    let mut tasks = Vec::new();
    for kek in [a.clone(), b.clone(), a.clone(), b.clone()] {
        tasks.push(tokio::spawn(async move { kek.rotate().await.unwrap() }));
    }
    let mut versions = Vec::new();
    for task in tasks {
        versions.push(task.await.unwrap());
    }
    versions.sort_unstable();
    assert_eq!(versions, [2, 3, 4, 5]);
    let fresh = kek_in(dir.path());
    assert_eq!(fresh.current_version().await.unwrap(), 5);
    // Every version wraps and unwraps everywhere, and v1 still opens.
    for kek in [a.as_ref(), b.as_ref(), &fresh] {
        assert_eq!(open(kek, &env, &CTX).await.unwrap().expose_secret(), SECRET);
        let sealed = seal(kek, SECRET, &CTX).await.unwrap();
        for other in [a.as_ref(), b.as_ref(), &fresh] {
            assert_eq!(
                open(other, &sealed, &CTX).await.unwrap().expose_secret(),
                SECRET
            );
        }
    }
}

#[test]
fn racing_first_opens_agree_on_one_file() {
    for _ in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek.json");
        let keks: Vec<LocalKek> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| LocalKek::open(&path).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let env = seal(&keks[0], SECRET, &CTX).await.unwrap();
            for kek in &keks {
                assert_eq!(open(kek, &env, &CTX).await.unwrap().expose_secret(), SECRET);
            }
        });
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temp files left"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_secret_in_debug_or_errors() {
    let dir = tempfile::tempdir().unwrap();
    let kek = kek_in(dir.path());
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(kek.path()).unwrap()).unwrap();
    let kek_b64 = file["keys"]["1"].as_str().unwrap().to_owned();
    assert_eq!(STANDARD.decode(&kek_b64).unwrap().len(), 32);

    let data_key = kek.generate_data_key().await.unwrap();
    let plain = *data_key.plaintext();
    let debug = format!("{data_key:?}");
    let needles = [
        STANDARD.encode(plain),
        format!("{plain:?}"),
        format!("{}", plain[0]) + ", " + &plain[1].to_string(),
        kek_b64.clone(),
    ];
    for needle in &needles {
        assert!(!debug.contains(needle.as_str()), "{debug}");
    }
    assert!(!format!("{kek:?}").contains(&kek_b64));

    let env = seal(&kek, SECRET, &CTX).await.unwrap();
    let mut bad = env.clone();
    bad.wrapped_key.ciphertext = format!(
        "local:v1:{}",
        flip_b64(
            env.wrapped_key.ciphertext.trim_start_matches("local:v1:"),
            30,
        )
    );
    let errors = [
        open(
            &kek,
            &env,
            &KeyContext {
                provider: "google",
                ..CTX
            },
        )
        .await
        .unwrap_err(),
        open(&kek, &bad, &CTX).await.unwrap_err(),
    ];
    for err in errors {
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(
                !text.contains(SECRET) && !text.contains(&SECRET[10..]),
                "{text}"
            );
            assert!(!text.contains(&kek_b64), "{text}");
            assert!(!text.contains(&env.ciphertext), "{text}");
        }
    }
}
