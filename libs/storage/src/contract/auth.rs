//! The auth port's contract.

use super::{check, e};
use crate::{
    AuthStore, ConsumeOutcome, RefreshTokenRecord, SessionRecord, StoreError, UserRecord, now_ms,
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
        .map_err(|m| format!("revoked_or_expired_sessions_refuse_refresh: {m}"))
}
