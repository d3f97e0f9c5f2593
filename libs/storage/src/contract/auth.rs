//! The auth port's contract.

use super::{check, e};
use crate::{
    ApiKeyRecord, AuthStore, ConsumeOutcome, ProfilePatch, ProfileSettings, RefreshTokenRecord,
    SessionRecord, StoreError, UserRecord, now_ms,
};
use std::sync::Arc;
use time::Duration;
use uuid::Uuid;

fn user(name: &str) -> UserRecord {
    UserRecord {
        id: Uuid::now_v7(),
        username: name.to_owned(),
        display_name: format!("Display {name}"),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA".into(),
        created_at: now_ms(),
        settings: ProfileSettings::default(),
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}@example.test", Uuid::new_v4().simple())
}

pub async fn users_round_trip(store: &dyn AuthStore) -> Result<(), String> {
    store.ping().await.map_err(e)?;
    let u = user(&unique("alice"));
    store.create_user(&u).await.map_err(e)?;
    let by_name = store.user_by_username(&u.username).await.map_err(e)?;
    check(
        by_name.as_ref() == Some(&u),
        "user read by username differs from the one written",
    )?;
    let by_id = store.user_by_id(u.id).await.map_err(e)?;
    check(
        by_id.as_ref() == Some(&u),
        "user read by id differs from the one written",
    )?;
    check(
        store
            .user_by_username(&unique("nobody"))
            .await
            .map_err(e)?
            .is_none(),
        "an unknown username was found",
    )?;
    check(
        store.user_by_id(Uuid::now_v7()).await.map_err(e)?.is_none(),
        "an unknown id was found",
    )
}

pub async fn usernames_are_unique(store: &dyn AuthStore) -> Result<(), String> {
    let first = user(&unique("bob"));
    store.create_user(&first).await.map_err(e)?;
    let mut second = user(&first.username);
    second.display_name = "Impostor".into();
    match store.create_user(&second).await {
        Err(StoreError::Conflict(_)) => {}
        other => return Err(format!("second user with a taken name gave {other:?}")),
    }
    let kept = store.user_by_username(&first.username).await.map_err(e)?;
    check(
        kept.as_ref() == Some(&first),
        "the first owner of the name was overwritten",
    )?;
    check(
        store.user_by_id(second.id).await.map_err(e)?.is_none(),
        "the refused user is readable by id",
    )
}

/// Many writers race for one name: exactly one wins.
pub async fn concurrent_registrations_have_one_winner(
    store: Arc<dyn AuthStore>,
) -> Result<(), String> {
    let name = unique("race");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = Arc::clone(&store);
        let u = user(&name);
        tasks.push(tokio::spawn(async move { store.create_user(&u).await }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.map_err(|err| err.to_string())? {
            Ok(()) => wins += 1,
            Err(StoreError::Conflict(_)) => {}
            Err(other) => return Err(e(other)),
        }
    }
    check(wins == 1, &format!("{wins} writers won the same username"))
}

async fn session_with_token(
    store: &dyn AuthStore,
) -> Result<(UserRecord, SessionRecord, RefreshTokenRecord), String> {
    let u = user(&unique("carol"));
    store.create_user(&u).await.map_err(e)?;
    let now = now_ms();
    let session = SessionRecord {
        id: Uuid::now_v7(),
        user_id: u.id,
        created_at: now,
        expires_at: now + Duration::days(30),
        revoked_at: None,
    };
    store.create_session(&session).await.map_err(e)?;
    let token = RefreshTokenRecord {
        token_hash: format!("{:x}", Uuid::new_v4().as_u128()),
        session_id: session.id,
        user_id: u.id,
        issued_at: now,
        expires_at: now + Duration::days(30),
    };
    store.insert_refresh_token(&token).await.map_err(e)?;
    Ok((u, session, token))
}

pub async fn refresh_tokens_are_spent_once(store: &dyn AuthStore) -> Result<(), String> {
    let (_, session, token) = session_with_token(store).await?;
    check(
        store.session(session.id).await.map_err(e)?.as_ref() == Some(&session),
        "session read back differs",
    )?;
    check(
        store
            .refresh_token(&token.token_hash)
            .await
            .map_err(e)?
            .as_ref()
            == Some(&token),
        "refresh token read back differs",
    )?;
    match store
        .consume_refresh_token(&token.token_hash, now_ms())
        .await
        .map_err(e)?
    {
        ConsumeOutcome::Fresh {
            token: t,
            session: s,
        } => {
            check(
                t == token && s == session,
                "fresh outcome carries other records",
            )?;
        }
        other => return Err(format!("first use gave {other:?}")),
    }
    match store
        .consume_refresh_token(&token.token_hash, now_ms())
        .await
        .map_err(e)?
    {
        ConsumeOutcome::Reused { token: t, .. } => check(t == token, "reuse names another token")?,
        other => return Err(format!("second use gave {other:?}")),
    }
    match store
        .consume_refresh_token("0000-not-a-token", now_ms())
        .await
        .map_err(e)?
    {
        ConsumeOutcome::Unknown => Ok(()),
        other => Err(format!("unknown token gave {other:?}")),
    }
}

pub async fn concurrent_refreshes_have_one_winner(store: Arc<dyn AuthStore>) -> Result<(), String> {
    let (_, _, token) = session_with_token(store.as_ref()).await?;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = Arc::clone(&store);
        let hash = token.token_hash.clone();
        tasks.push(tokio::spawn(async move {
            store.consume_refresh_token(&hash, now_ms()).await
        }));
    }
    let mut fresh = 0;
    for t in tasks {
        match t.await.map_err(|err| err.to_string())?.map_err(e)? {
            ConsumeOutcome::Fresh { .. } => fresh += 1,
            ConsumeOutcome::Reused { .. } => {}
            other => return Err(format!("racing refresh gave {other:?}")),
        }
    }
    check(
        fresh == 1,
        &format!("{fresh} racers spent the same refresh token"),
    )
}

pub async fn revoked_or_expired_sessions_refuse_refresh(
    store: &dyn AuthStore,
) -> Result<(), String> {
    let (_, session, token) = session_with_token(store).await?;
    let at = now_ms();
    let revoked = store.revoke_session(session.id, at).await.map_err(e)?;
    check(
        revoked.as_ref().and_then(|s| s.revoked_at) == Some(at),
        "revoked session does not carry its revocation time",
    )?;
    // Revoking twice keeps the first time.
    let again = store
        .revoke_session(session.id, at + Duration::seconds(5))
        .await
        .map_err(e)?;
    check(
        again.and_then(|s| s.revoked_at) == Some(at),
        "a second revocation moved the revocation time",
    )?;
    match store
        .consume_refresh_token(&token.token_hash, now_ms())
        .await
        .map_err(e)?
    {
        ConsumeOutcome::Dead => {}
        other => return Err(format!("token of a revoked session gave {other:?}")),
    }
    check(
        store
            .revoke_session(Uuid::now_v7(), at)
            .await
            .map_err(e)?
            .is_none(),
        "revoking an unknown session returned a session",
    )?;

    let (_, _, expiring) = session_with_token(store).await?;
    let later = expiring.expires_at + Duration::seconds(1);
    match store
        .consume_refresh_token(&expiring.token_hash, later)
        .await
        .map_err(e)?
    {
        ConsumeOutcome::Dead => Ok(()),
        other => Err(format!("an expired token gave {other:?}")),
    }
}

async fn registered(store: &dyn AuthStore, prefix: &str) -> Result<UserRecord, String> {
    let u = user(&unique(prefix));
    store.create_user(&u).await.map_err(e)?;
    Ok(u)
}

async fn patch(
    store: &dyn AuthStore,
    id: Uuid,
    patch: &ProfilePatch,
) -> Result<UserRecord, String> {
    store
        .update_profile(id, patch)
        .await
        .map_err(e)?
        .ok_or_else(|| format!("patching user {id} found no user"))
}

/// The user as every read path sees it must equal `expected`.
async fn reads_as(store: &dyn AuthStore, expected: &UserRecord, what: &str) -> Result<(), String> {
    let by_id = store.user_by_id(expected.id).await.map_err(e)?;
    check(
        by_id.as_ref() == Some(expected),
        &format!("{what}: read by id gave {by_id:?}, want {expected:?}"),
    )?;
    let by_name = store
        .user_by_username(&expected.username)
        .await
        .map_err(e)?;
    check(
        by_name.as_ref() == Some(expected),
        &format!("{what}: read by username gave {by_name:?}"),
    )
}

pub async fn profile_settings_round_trip(store: &dyn AuthStore) -> Result<(), String> {
    // Registered with no settings: all unset.
    let plain = registered(store, "dora").await?;
    reads_as(store, &plain, "a new user").await?;
    check(
        store
            .user_by_id(plain.id)
            .await
            .map_err(e)?
            .is_some_and(|u| u.settings == ProfileSettings::default()),
        "a new user has settings",
    )?;

    // Settings given at creation are kept.
    let mut set = user(&unique("erin"));
    set.settings = ProfileSettings {
        default_model: Some("claude-sonnet".into()),
        default_temperature: Some(0.25),
        system_prompt: Some("Be brief.\nAnswer in French.".into()),
    };
    store.create_user(&set).await.map_err(e)?;
    reads_as(store, &set, "a user created with settings").await?;

    // An empty patch changes nothing and returns the user.
    let same = patch(store, set.id, &ProfilePatch::default()).await?;
    check(same == set, "an empty patch changed the user")?;

    // The display name alone leaves the settings.
    let mut want = set.clone();
    want.display_name = "Erin E.".into();
    let got = patch(
        store,
        set.id,
        &ProfilePatch {
            display_name: Some(want.display_name.clone()),
            ..ProfilePatch::default()
        },
    )
    .await?;
    check(got == want, &format!("display name patch gave {got:?}"))?;
    reads_as(store, &want, "after a display name patch").await?;

    // One setting leaves the others (and the name).
    want.settings.default_model = Some("gpt-4o".into());
    let got = patch(
        store,
        set.id,
        &ProfilePatch {
            default_model: Some(Some("gpt-4o".into())),
            ..ProfilePatch::default()
        },
    )
    .await?;
    check(got == want, &format!("model patch gave {got:?}"))?;
    want.settings.default_temperature = Some(1.5);
    let got = patch(
        store,
        set.id,
        &ProfilePatch {
            default_temperature: Some(Some(1.5)),
            ..ProfilePatch::default()
        },
    )
    .await?;
    check(got == want, &format!("temperature patch gave {got:?}"))?;

    // `Some(None)` clears; several fields in one patch.
    want.settings.system_prompt = None;
    want.settings.default_temperature = None;
    let got = patch(
        store,
        set.id,
        &ProfilePatch {
            system_prompt: Some(None),
            default_temperature: Some(None),
            ..ProfilePatch::default()
        },
    )
    .await?;
    check(got == want, &format!("clearing patch gave {got:?}"))?;
    reads_as(store, &want, "after clearing").await?;

    // Settings on a user that had none.
    let mut plain_want = plain.clone();
    plain_want.settings.system_prompt = Some("Hello".into());
    plain_want.display_name = "Dora D.".into();
    let got = patch(
        store,
        plain.id,
        &ProfilePatch {
            display_name: Some("Dora D.".into()),
            system_prompt: Some(Some("Hello".into())),
            ..ProfilePatch::default()
        },
    )
    .await?;
    check(
        got == plain_want,
        &format!("patching a plain user gave {got:?}"),
    )?;

    // An unknown user: `None`, and no user appears.
    let nobody = Uuid::now_v7();
    for p in [
        ProfilePatch::default(),
        ProfilePatch {
            display_name: Some("Ghost".into()),
            default_model: Some(Some("m".into())),
            ..ProfilePatch::default()
        },
    ] {
        let got = store.update_profile(nobody, &p).await.map_err(e)?;
        check(got.is_none(), "patching an unknown user returned a user")?;
    }
    check(
        store.user_by_id(nobody).await.map_err(e)?.is_none(),
        "patching an unknown user created it",
    )
}

/// Two patches of different fields racing each other must both survive.
pub async fn concurrent_profile_patches_both_survive(
    store: Arc<dyn AuthStore>,
) -> Result<(), String> {
    let u = registered(store.as_ref(), "frank").await?;
    for round in 0..20_u32 {
        let model = format!("model-{round}");
        let temperature = f64::from(round) / 10.0;
        let name = format!("Frank {round}");
        let patches = [
            ProfilePatch {
                default_model: Some(Some(model.clone())),
                ..ProfilePatch::default()
            },
            ProfilePatch {
                default_temperature: Some(Some(temperature)),
                ..ProfilePatch::default()
            },
            ProfilePatch {
                display_name: Some(name.clone()),
                system_prompt: Some((round % 2 == 0).then(|| format!("prompt {round}"))),
                ..ProfilePatch::default()
            },
        ];
        let tasks: Vec<_> = patches
            .into_iter()
            .map(|p| {
                let store = Arc::clone(&store);
                tokio::spawn(async move { store.update_profile(u.id, &p).await })
            })
            .collect();
        for t in tasks {
            let got = t.await.map_err(|err| err.to_string())?.map_err(e)?;
            check(got.is_some(), "a racing patch found no user")?;
        }
        let got = store
            .user_by_id(u.id)
            .await
            .map_err(e)?
            .ok_or("the patched user is gone")?;
        let want = UserRecord {
            display_name: name,
            settings: ProfileSettings {
                default_model: Some(model),
                default_temperature: Some(temperature),
                system_prompt: (round % 2 == 0).then(|| format!("prompt {round}")),
            },
            ..u.clone()
        };
        check(
            got == want,
            &format!("round {round}: racing patches left {got:?}, want {want:?}"),
        )?;
    }
    Ok(())
}

fn key(user_id: Uuid, provider: &str, version: u64) -> ApiKeyRecord {
    ApiKeyRecord {
        user_id,
        provider: provider.to_owned(),
        key_version: version,
        envelope: format!(
            r#"{{"key_version":{version},"wrapped_key":{{"kms":"local","version":1,"ciphertext":"local:v1:{}"}},"nonce":"AAAAAAAAAAAAAAAA","ciphertext":"{}"}}"#,
            Uuid::new_v4().simple(),
            Uuid::new_v4().simple()
        ),
        hint: format!("…{}", provider.chars().take(2).collect::<String>()),
        created_at: now_ms(),
        last_used: None,
    }
}

async fn stored_key(
    store: &dyn AuthStore,
    user_id: Uuid,
    provider: &str,
) -> Result<Option<ApiKeyRecord>, String> {
    store.api_key(user_id, provider).await.map_err(e)
}

pub async fn api_keys_round_trip(store: &dyn AuthStore) -> Result<(), String> {
    let u = registered(store, "gina").await?;
    let other = registered(store, "hal").await?;
    check(
        store.api_keys(u.id).await.map_err(e)?.is_empty(),
        "a new user has keys",
    )?;
    check(
        stored_key(store, u.id, "claude").await?.is_none(),
        "a new user has a claude key",
    )?;

    let openai = key(u.id, "openai", 1);
    let claude = key(u.id, "claude", 1);
    store.put_api_key(&openai).await.map_err(e)?;
    store.put_api_key(&claude).await.map_err(e)?;
    check(
        stored_key(store, u.id, "openai").await?.as_ref() == Some(&openai),
        "the openai key read back differs",
    )?;
    check(
        stored_key(store, u.id, "claude").await?.as_ref() == Some(&claude),
        "the claude key read back differs",
    )?;
    let mut google = key(u.id, "google", 7);
    google.last_used = Some(now_ms() - Duration::days(2));
    store.put_api_key(&google).await.map_err(e)?;
    let all = store.api_keys(u.id).await.map_err(e)?;
    check(
        all == vec![claude.clone(), google.clone(), openai.clone()],
        &format!("the user's keys, by provider, gave {all:?}"),
    )?;

    // Keys are per user.
    check(
        store.api_keys(other.id).await.map_err(e)?.is_empty(),
        "another user sees keys",
    )?;
    check(
        stored_key(store, other.id, "claude").await?.is_none(),
        "another user reads a claude key",
    )?;
    let others = key(other.id, "claude", 3);
    store.put_api_key(&others).await.map_err(e)?;
    check(
        stored_key(store, u.id, "claude").await?.as_ref() == Some(&claude),
        "another user's key replaced this user's",
    )?;

    // Putting again replaces the whole key and resets last_used to the record's.
    let used_at = now_ms();
    check(
        store
            .touch_api_key(u.id, "claude", 1, used_at)
            .await
            .map_err(e)?,
        "touching a fresh key did nothing",
    )?;
    check(
        stored_key(store, u.id, "claude")
            .await?
            .and_then(|k| k.last_used)
            == Some(used_at),
        "touch did not set last_used",
    )?;
    let mut replacement = key(u.id, "claude", 2);
    replacement.created_at = used_at + Duration::seconds(1);
    store.put_api_key(&replacement).await.map_err(e)?;
    check(
        stored_key(store, u.id, "claude").await?.as_ref() == Some(&replacement),
        "a replaced key reads back differently (last_used must be reset)",
    )?;
    let mut with_use = key(u.id, "google", 8);
    with_use.last_used = Some(used_at);
    store.put_api_key(&with_use).await.map_err(e)?;
    check(
        stored_key(store, u.id, "google").await?.as_ref() == Some(&with_use),
        "a key put with a last use reads back differently",
    )?;

    // Delete: true once, then false; the others stay.
    check(
        store.delete_api_key(u.id, "openai").await.map_err(e)?,
        "deleting a key reported none",
    )?;
    check(
        !store.delete_api_key(u.id, "openai").await.map_err(e)?,
        "deleting a deleted key reported one",
    )?;
    check(
        !store.delete_api_key(u.id, "nothing").await.map_err(e)?,
        "deleting an unknown provider reported one",
    )?;
    check(
        stored_key(store, u.id, "openai").await?.is_none(),
        "a deleted key is readable",
    )?;
    let all = store.api_keys(u.id).await.map_err(e)?;
    check(
        all == vec![replacement, with_use],
        &format!("after the delete the user's keys are {all:?}"),
    )?;
    check(
        store.api_keys(other.id).await.map_err(e)? == vec![others],
        "another user's keys changed",
    )
}

pub async fn touching_api_keys_only_moves_forward(store: &dyn AuthStore) -> Result<(), String> {
    let u = registered(store, "ivan").await?;
    let k = key(u.id, "openai", 4);
    store.put_api_key(&k).await.map_err(e)?;
    let last_used = |store, provider| async move {
        stored_key(store, u.id, provider)
            .await
            .map(|k| k.and_then(|k| k.last_used))
    };
    let t1 = now_ms();

    // A stale version does not touch, not even a never-used key.
    for stale in [3, 5] {
        check(
            !store
                .touch_api_key(u.id, "openai", stale, t1)
                .await
                .map_err(e)?,
            &format!("touching with stale version {stale} reported a change"),
        )?;
    }
    check(
        last_used(store, "openai").await?.is_none(),
        "a stale touch set last_used",
    )?;

    check(
        store
            .touch_api_key(u.id, "openai", 4, t1)
            .await
            .map_err(e)?,
        "the first touch did nothing",
    )?;
    check(
        last_used(store, "openai").await? == Some(t1),
        "the first touch did not store its time",
    )?;
    // Earlier or equal times never move it.
    for at in [t1 - Duration::seconds(30), t1] {
        check(
            !store
                .touch_api_key(u.id, "openai", 4, at)
                .await
                .map_err(e)?,
            &format!("touching at {at} after {t1} reported a change"),
        )?;
        check(
            last_used(store, "openai").await? == Some(t1),
            "last_used moved backwards",
        )?;
    }
    let t2 = t1 + Duration::milliseconds(1500);
    check(
        !store
            .touch_api_key(u.id, "openai", 5, t2)
            .await
            .map_err(e)?,
        "a later touch with a stale version reported a change",
    )?;
    check(
        store
            .touch_api_key(u.id, "openai", 4, t2)
            .await
            .map_err(e)?,
        "a later touch did nothing",
    )?;
    check(
        last_used(store, "openai").await? == Some(t2),
        "a later touch did not move last_used",
    )?;
    let after_touches = stored_key(store, u.id, "openai").await?;
    check(
        after_touches
            == Some(ApiKeyRecord {
                last_used: Some(t2),
                ..k.clone()
            }),
        "touching changed more than last_used",
    )?;

    // Never creates a row: not for a deleted key, not for one never stored.
    check(
        store.delete_api_key(u.id, "openai").await.map_err(e)?,
        "deleting the touched key reported none",
    )?;
    for provider in ["openai", "claude"] {
        check(
            !store
                .touch_api_key(u.id, provider, 4, t2 + Duration::seconds(1))
                .await
                .map_err(e)?,
            &format!("touching a missing {provider} key reported a change"),
        )?;
        check(
            stored_key(store, u.id, provider).await?.is_none(),
            &format!("touching a missing {provider} key created it"),
        )?;
    }
    check(
        store.api_keys(u.id).await.map_err(e)?.is_empty(),
        "touching missing keys left rows behind",
    )
}

pub async fn replacing_envelopes_is_compare_and_set(store: &dyn AuthStore) -> Result<(), String> {
    let u = registered(store, "judy").await?;
    let mut k = key(u.id, "google", 2);
    k.last_used = Some(now_ms());
    store.put_api_key(&k).await.map_err(e)?;
    let rewrapped = r#"{"rewrapped":true,"key_version":2}"#;

    // A stale expected envelope or a stale version refuses.
    check(
        !store
            .replace_envelope(u.id, "google", 2, "{\"stale\":1}", rewrapped)
            .await
            .map_err(e)?,
        "a stale expected envelope was replaced",
    )?;
    for stale in [1, 3] {
        check(
            !store
                .replace_envelope(u.id, "google", stale, &k.envelope, rewrapped)
                .await
                .map_err(e)?,
            &format!("an envelope was replaced under stale version {stale}"),
        )?;
    }
    check(
        stored_key(store, u.id, "google").await?.as_ref() == Some(&k),
        "a refused replacement changed the key",
    )?;

    // The right expectation replaces the envelope and nothing else.
    check(
        store
            .replace_envelope(u.id, "google", 2, &k.envelope, rewrapped)
            .await
            .map_err(e)?,
        "replacing with the right expectation refused",
    )?;
    let want = ApiKeyRecord {
        envelope: rewrapped.to_owned(),
        ..k.clone()
    };
    check(
        stored_key(store, u.id, "google").await?.as_ref() == Some(&want),
        "the replaced key reads back differently",
    )?;
    // The old envelope is now stale.
    check(
        !store
            .replace_envelope(u.id, "google", 2, &k.envelope, "{}")
            .await
            .map_err(e)?,
        "the superseded envelope was replaced again",
    )?;

    // A concurrent key update (new version) wins over a rewrap of the old one.
    let newer = key(u.id, "google", 3);
    store.put_api_key(&newer).await.map_err(e)?;
    check(
        !store
            .replace_envelope(u.id, "google", 2, rewrapped, "{}")
            .await
            .map_err(e)?,
        "a rewrap overwrote a newer key",
    )?;
    check(
        stored_key(store, u.id, "google").await?.as_ref() == Some(&newer),
        "the newer key changed",
    )?;

    // Never creates a row.
    check(
        !store
            .replace_envelope(u.id, "claude", 2, &k.envelope, rewrapped)
            .await
            .map_err(e)?,
        "replacing a missing key reported success",
    )?;
    check(
        stored_key(store, u.id, "claude").await?.is_none(),
        "replacing a missing key created it",
    )
}

/// Walks every stored key in pages of two: each of ours exactly once, unchanged, and the walk in
/// a strict order that keeps a user's keys together, by provider. Other tests share the store,
/// so only our own keys are counted.
pub async fn api_key_pages_visit_every_key_once(store: &dyn AuthStore) -> Result<(), String> {
    const PAGE: u32 = 2;
    let mut ours = std::collections::HashMap::new();
    for (i, providers) in [
        &["claude"][..],
        &["claude", "google", "openai"][..],
        &["google", "openai"][..],
        &["openai"][..],
        &["claude", "openai"][..],
    ]
    .into_iter()
    .enumerate()
    {
        let u = registered(store, &format!("pager{i}")).await?;
        for (n, provider) in providers.iter().enumerate() {
            let k = key(u.id, provider, u64::try_from(n).unwrap_or(0) + 1);
            store.put_api_key(&k).await.map_err(e)?;
            ours.insert((u.id, (*provider).to_owned()), k);
        }
    }
    check(
        store.api_keys_page(None, 0).await.map_err(e)?.is_empty(),
        "a page of zero keys is not empty",
    )?;

    let mut seen = std::collections::HashSet::new();
    let mut finished_users = std::collections::HashSet::new();
    let mut previous: Option<(Uuid, String)> = None;
    let mut visited_ours = 0;
    for _ in 0..100_000 {
        let page = store
            .api_keys_page(previous.clone(), PAGE)
            .await
            .map_err(e)?;
        check(
            page.len() <= PAGE as usize,
            &format!("a page of {PAGE} held {} keys", page.len()),
        )?;
        for k in &page {
            let id = (k.user_id, k.provider.clone());
            check(
                seen.insert(id.clone()),
                &format!("key {id:?} visited twice"),
            )?;
            if let Some((prev_user, prev_provider)) = &previous {
                if *prev_user == k.user_id {
                    check(
                        k.provider > *prev_provider,
                        &format!("{id:?} came after provider {prev_provider} of the same user"),
                    )?;
                } else {
                    finished_users.insert(*prev_user);
                    check(
                        !finished_users.contains(&k.user_id),
                        &format!("user {} came back after another user", k.user_id),
                    )?;
                }
            }
            if let Some(want) = ours.get(&id) {
                visited_ours += 1;
                check(want == k, &format!("paged key {id:?} differs"))?;
            }
            previous = Some(id);
        }
        if page.len() < PAGE as usize {
            return check(
                visited_ours == ours.len(),
                &format!("the walk visited {visited_ours} of our {} keys", ours.len()),
            );
        }
    }
    Err("the walk did not end".into())
}

/// Runs the whole suite, naming the first broken rule.
pub async fn run_all(store: Arc<dyn AuthStore>) -> Result<(), String> {
    users_round_trip(store.as_ref())
        .await
        .map_err(|m| format!("users_round_trip: {m}"))?;
    usernames_are_unique(store.as_ref())
        .await
        .map_err(|m| format!("usernames_are_unique: {m}"))?;
    concurrent_registrations_have_one_winner(Arc::clone(&store))
        .await
        .map_err(|m| format!("concurrent_registrations_have_one_winner: {m}"))?;
    refresh_tokens_are_spent_once(store.as_ref())
        .await
        .map_err(|m| format!("refresh_tokens_are_spent_once: {m}"))?;
    concurrent_refreshes_have_one_winner(Arc::clone(&store))
        .await
        .map_err(|m| format!("concurrent_refreshes_have_one_winner: {m}"))?;
    revoked_or_expired_sessions_refuse_refresh(store.as_ref())
        .await
        .map_err(|m| format!("revoked_or_expired_sessions_refuse_refresh: {m}"))?;
    profile_settings_round_trip(store.as_ref())
        .await
        .map_err(|m| format!("profile_settings_round_trip: {m}"))?;
    concurrent_profile_patches_both_survive(Arc::clone(&store))
        .await
        .map_err(|m| format!("concurrent_profile_patches_both_survive: {m}"))?;
    api_keys_round_trip(store.as_ref())
        .await
        .map_err(|m| format!("api_keys_round_trip: {m}"))?;
    touching_api_keys_only_moves_forward(store.as_ref())
        .await
        .map_err(|m| format!("touching_api_keys_only_moves_forward: {m}"))?;
    replacing_envelopes_is_compare_and_set(store.as_ref())
        .await
        .map_err(|m| format!("replacing_envelopes_is_compare_and_set: {m}"))?;
    api_key_pages_visit_every_key_once(store.as_ref())
        .await
        .map_err(|m| format!("api_key_pages_visit_every_key_once: {m}"))
}
