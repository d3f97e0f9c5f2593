//! The thread port's contract.

use super::{check, e};
use crate::now_ms;
use crate::threads::{
    AppendOutcome, Direction, MessageRecord, MessageUpdate, SortField, SummaryOutcome,
    SummaryRecord, ThreadKey, ThreadRecord, ThreadStore,
};
use std::collections::HashSet;
use std::sync::Arc;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

fn thread(owner: Uuid, title: &str, at: OffsetDateTime) -> ThreadRecord {
    ThreadRecord {
        id: Uuid::now_v7(),
        owner_id: owner,
        title: title.to_owned(),
        created_at: at,
        updated_at: at,
        message_count: 0,
        last_message: None,
    }
}

fn message(thread: Uuid, model: &str, role: &str, content: &str) -> MessageRecord {
    let now = now_ms();
    MessageRecord {
        id: Uuid::now_v7(),
        thread_id: thread,
        model_id: model.to_owned(),
        role: role.to_owned(),
        content: content.to_owned(),
        tokens: Some(3),
        temperature: None,
        status: "complete".to_owned(),
        created_at: now,
        updated_at: now,
        idempotency_key: None,
        context: None,
    }
}

fn key(t: &ThreadRecord, sort: SortField) -> ThreadKey {
    ThreadKey {
        at: match sort {
            SortField::CreatedAt => t.created_at,
            SortField::UpdatedAt => t.updated_at,
        },
        id: t.id,
    }
}

pub async fn threads_round_trip(store: &dyn ThreadStore) -> Result<(), String> {
    store.ping().await.map_err(e)?;
    let owner = Uuid::now_v7();
    let stranger = Uuid::now_v7();
    let t = thread(owner, "Architecture talk", now_ms());
    store.create_thread(&t).await.map_err(e)?;
    check(
        store.thread(owner, t.id).await.map_err(e)?.as_ref() == Some(&t),
        "thread read back differs",
    )?;
    check(
        store.thread(stranger, t.id).await.map_err(e)?.is_none(),
        "another owner can read the thread",
    )?;
    let u = thread(owner, "Second", now_ms());
    store.create_thread(&u).await.map_err(e)?;
    let theirs = thread(stranger, "Not yours", now_ms());
    store.create_thread(&theirs).await.map_err(e)?;
    let got = store
        .threads_by_ids(owner, &[u.id, theirs.id, t.id, Uuid::now_v7()])
        .await
        .map_err(e)?;
    check(
        got.iter().map(|x| x.id).collect::<Vec<_>>() == vec![u.id, t.id],
        "threads_by_ids must keep the given order and drop others' threads",
    )?;
    check(
        store.count_threads(owner).await.map_err(e)? == 2,
        "count_threads",
    )?;
    check(
        store.count_threads(stranger).await.map_err(e)? == 1,
        "count_threads of another owner",
    )
}

/// Every order, walked page by page, yields every thread exactly once and in order — including
/// threads that share a timestamp.
pub async fn listings_page_in_every_order(store: &dyn ThreadStore) -> Result<(), String> {
    let owner = Uuid::now_v7();
    let base = now_ms() - Duration::days(1);
    let mut made = Vec::new();
    for i in 0..23i64 {
        // Pairs of threads share a timestamp so the id tie-break is exercised.
        let mut t = thread(owner, &format!("t{i}"), base + Duration::seconds(i / 2));
        t.updated_at = base + Duration::seconds(100 - i / 3);
        store.create_thread(&t).await.map_err(e)?;
        made.push(t);
    }
    for sort in [SortField::CreatedAt, SortField::UpdatedAt] {
        for direction in [Direction::Asc, Direction::Desc] {
            let mut expected = made.clone();
            expected.sort_by_key(|t| (key(t, sort).at, t.id));
            if direction == Direction::Desc {
                expected.reverse();
            }
            let mut seen = Vec::new();
            let mut after = None;
            loop {
                let page = store
                    .list_threads(owner, sort, direction, after, 5)
                    .await
                    .map_err(e)?;
                if page.is_empty() {
                    break;
                }
                after = page.last().map(|t| key(t, sort));
                seen.extend(page.into_iter().map(|t| t.id));
            }
            check(
                seen == expected.iter().map(|t| t.id).collect::<Vec<_>>(),
                &format!("paging {sort:?} {direction:?} is not complete and ordered"),
            )?;
        }
    }
    Ok(())
}

/// New threads created while a client walks the pages never make it see an item twice or miss one
/// that existed when it started.
pub async fn paging_survives_concurrent_inserts(store: Arc<dyn ThreadStore>) -> Result<(), String> {
    let owner = Uuid::now_v7();
    let mut originals = HashSet::new();
    for i in 0..30 {
        let t = thread(
            owner,
            &format!("o{i}"),
            now_ms() - Duration::minutes(60 - i),
        );
        store.create_thread(&t).await.map_err(e)?;
        originals.insert(t.id);
    }
    let writer = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            for i in 0..30 {
                let t = thread(owner, &format!("n{i}"), now_ms());
                store.create_thread(&t).await?;
                tokio::task::yield_now().await;
            }
            Ok::<_, crate::StoreError>(())
        })
    };
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_threads(owner, SortField::CreatedAt, Direction::Desc, after, 4)
            .await
            .map_err(e)?;
        if page.is_empty() {
            break;
        }
        after = page.last().map(|t| key(t, SortField::CreatedAt));
        seen.extend(page.into_iter().map(|t| t.id));
        tokio::task::yield_now().await;
    }
    writer.await.map_err(|x| x.to_string())?.map_err(e)?;
    let unique: HashSet<_> = seen.iter().copied().collect();
    check(unique.len() == seen.len(), "a thread was listed twice")?;
    check(
        originals.is_subset(&unique),
        "a thread that existed all along was missed",
    )
}

pub async fn rename_is_owner_only_and_moves_updated_at(
    store: &dyn ThreadStore,
) -> Result<(), String> {
    let owner = Uuid::now_v7();
    let t = thread(owner, "Old", now_ms() - Duration::hours(1));
    store.create_thread(&t).await.map_err(e)?;
    check(
        store
            .rename_thread(Uuid::now_v7(), t.id, "Hijack", now_ms())
            .await
            .map_err(e)?
            .is_none(),
        "another owner renamed the thread",
    )?;
    let at = now_ms();
    let renamed = store
        .rename_thread(owner, t.id, "New", at)
        .await
        .map_err(e)?
        .ok_or("owner could not rename")?;
    check(
        renamed.title == "New" && renamed.updated_at == at,
        "rename did not apply",
    )?;
    check(
        renamed.created_at == t.created_at,
        "rename moved created_at",
    )?;
    let unknown = store
        .rename_thread(owner, Uuid::now_v7(), "x", at)
        .await
        .map_err(e)?;
    check(unknown.is_none(), "renaming an unknown thread returned one")
}

pub async fn histories_append_idempotently_and_page(store: &dyn ThreadStore) -> Result<(), String> {
    let owner = Uuid::now_v7();
    let t = thread(owner, "Chat", now_ms() - Duration::hours(1));
    store.create_thread(&t).await.map_err(e)?;
    let mut first = message(t.id, "claude-opus", "user", "hello there");
    first.idempotency_key = Some("key-1".into());
    match store.append_message(owner, &first).await.map_err(e)? {
        AppendOutcome::Inserted(m) => check(m == first, "inserted message differs")?,
        other => return Err(format!("first append gave {other:?}")),
    }
    // Same id again, and another id with the same idempotency key: both are no-ops.
    match store.append_message(owner, &first).await.map_err(e)? {
        AppendOutcome::Duplicate(m) => check(m == first, "duplicate by id returns the stored one")?,
        other => return Err(format!("repeated id gave {other:?}")),
    }
    let mut retry = message(t.id, "claude-opus", "user", "hello there");
    retry.idempotency_key = Some("key-1".into());
    match store.append_message(owner, &retry).await.map_err(e)? {
        AppendOutcome::Duplicate(m) => {
            check(m.id == first.id, "duplicate by key returns the first")?
        }
        other => return Err(format!("repeated idempotency key gave {other:?}")),
    }
    match store
        .append_message(Uuid::now_v7(), &message(t.id, "claude-opus", "user", "x"))
        .await
        .map_err(e)?
    {
        AppendOutcome::NoThread => {}
        other => return Err(format!("a stranger appended: {other:?}")),
    }
    let mut ids = vec![first.id];
    for i in 0..6 {
        let m = message(
            t.id,
            "claude-opus",
            if i % 2 == 0 { "assistant" } else { "user" },
            &format!("m{i}"),
        );
        store.append_message(owner, &m).await.map_err(e)?;
        ids.push(m.id);
    }
    let other_model = message(t.id, "gpt-4", "user", "to gpt");
    store.append_message(owner, &other_model).await.map_err(e)?;

    let thread_now = store
        .thread(owner, t.id)
        .await
        .map_err(e)?
        .ok_or("thread vanished")?;
    check(
        thread_now.message_count == 8,
        &format!("thread count {}", thread_now.message_count),
    )?;
    check(
        thread_now.updated_at >= other_model.created_at,
        "append did not move updated_at",
    )?;
    let last = thread_now.last_message.ok_or("no last message")?;
    check(
        last.content == "to gpt" && last.model_id == "gpt-4",
        "last message is not the newest",
    )?;

    let models = store.models(owner, t.id).await.map_err(e)?;
    let counts: Vec<_> = models
        .iter()
        .map(|m| (m.model_id.as_str(), m.message_count))
        .collect();
    check(
        counts == vec![("claude-opus", 7), ("gpt-4", 1)],
        &format!("per-model counts {counts:?}"),
    )?;
    check(
        store
            .models(Uuid::now_v7(), t.id)
            .await
            .map_err(e)?
            .is_empty(),
        "a stranger sees models",
    )?;

    // Paging by id, both directions.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_messages(owner, t.id, "claude-opus", Direction::Asc, after, 3)
            .await
            .map_err(e)?
            .ok_or("owner cannot list")?;
        if page.is_empty() {
            break;
        }
        after = page.last().map(|m| m.id);
        seen.extend(page.into_iter().map(|m| m.id));
    }
    check(
        seen == ids,
        "ascending message pages are not complete and ordered",
    )?;
    let desc = store
        .list_messages(owner, t.id, "claude-opus", Direction::Desc, None, 2)
        .await
        .map_err(e)?
        .ok_or("owner cannot list")?;
    check(
        desc.iter().map(|m| m.id).collect::<Vec<_>>() == vec![ids[6], ids[5]],
        "descending page",
    )?;
    check(
        store
            .list_messages(
                Uuid::now_v7(),
                t.id,
                "claude-opus",
                Direction::Asc,
                None,
                10,
            )
            .await
            .map_err(e)?
            .is_none(),
        "a stranger can list messages",
    )?;
    let recent = store
        .recent_messages(owner, t.id, "claude-opus", Some(ids[3]), 10)
        .await
        .map_err(e)?
        .ok_or("recent")?;
    check(
        recent.iter().map(|m| m.id).collect::<Vec<_>>() == ids[4..].to_vec(),
        "recent after",
    )?;
    let newest = store
        .recent_messages(owner, t.id, "claude-opus", None, 2)
        .await
        .map_err(e)?
        .ok_or("recent")?;
    check(
        newest.iter().map(|m| m.id).collect::<Vec<_>>() == ids[5..].to_vec(),
        "recent newest, oldest first",
    )
}

pub async fn messages_update_in_place(store: &dyn ThreadStore) -> Result<(), String> {
    let owner = Uuid::now_v7();
    let t = thread(owner, "Updates", now_ms());
    store.create_thread(&t).await.map_err(e)?;
    let mut m = message(t.id, "m1", "assistant", "");
    m.status = "streaming".into();
    store.append_message(owner, &m).await.map_err(e)?;
    let update = MessageUpdate {
        content: Some("full reply".into()),
        status: Some("complete".into()),
        tokens: Some(42),
        temperature: Some(0.5),
        context: Some("{\"messages\":[]}".into()),
    };
    check(
        store
            .update_message(Uuid::now_v7(), t.id, "m1", m.id, &update, now_ms())
            .await
            .map_err(e)?
            .is_none(),
        "a stranger updated a message",
    )?;
    let at = now_ms();
    let done = store
        .update_message(owner, t.id, "m1", m.id, &update, at)
        .await
        .map_err(e)?
        .ok_or("update found nothing")?;
    check(
        done.content == "full reply"
            && done.status == "complete"
            && done.tokens == Some(42)
            && done.temperature == Some(0.5)
            && done.context.as_deref() == Some("{\"messages\":[]}")
            && done.updated_at == at
            && done.created_at == m.created_at,
        &format!("update not applied: {done:?}"),
    )?;
    let read = store.message(owner, t.id, "m1", m.id).await.map_err(e)?;
    check(read.as_ref() == Some(&done), "message read back differs")?;
    let listed = store
        .thread(owner, t.id)
        .await
        .map_err(e)?
        .and_then(|t| t.last_message);
    check(
        listed.map(|l| l.content).as_deref() == Some("full reply"),
        "the listing preview did not follow the update",
    )
}

pub async fn summaries_never_go_backwards(store: &dyn ThreadStore) -> Result<(), String> {
    let owner = Uuid::now_v7();
    let t = thread(owner, "Summaries", now_ms());
    store.create_thread(&t).await.map_err(e)?;
    let m = message(t.id, "m1", "user", "hi");
    store.append_message(owner, &m).await.map_err(e)?;
    let summary = |version: u64, content: &str| SummaryRecord {
        version,
        content: content.to_owned(),
        tokens: 300,
        covers_until: m.id,
        model_used: "m1".into(),
        generated_at: now_ms(),
    };
    let v1 = summary(1, "first");
    check(
        store.put_summary(owner, t.id, "m1", &v1).await.map_err(e)? == SummaryOutcome::Stored,
        "v1",
    )?;
    match store
        .put_summary(owner, t.id, "m1", &summary(1, "again"))
        .await
        .map_err(e)?
    {
        SummaryOutcome::Stale { current_version: 1 } => {}
        other => return Err(format!("same version again gave {other:?}")),
    }
    let v2 = summary(2, "second");
    check(
        store.put_summary(owner, t.id, "m1", &v2).await.map_err(e)? == SummaryOutcome::Stored,
        "v2",
    )?;
    match store.put_summary(owner, t.id, "m1", &v1).await.map_err(e)? {
        SummaryOutcome::Stale { current_version: 2 } => {}
        other => return Err(format!("older version gave {other:?}")),
    }
    check(
        store.summary(owner, t.id, "m1").await.map_err(e)?.as_ref() == Some(&v2),
        "the newest summary is not the one kept",
    )?;
    check(
        store
            .put_summary(Uuid::now_v7(), t.id, "m1", &summary(9, "x"))
            .await
            .map_err(e)?
            == SummaryOutcome::NoThread,
        "a stranger stored a summary",
    )?;
    let models = store.models(owner, t.id).await.map_err(e)?;
    check(
        models.first().and_then(|m| m.summary.as_ref()) == Some(&v2),
        "models() does not show the summary",
    )
}

pub async fn deletes_cascade_and_are_owner_only(store: &dyn ThreadStore) -> Result<(), String> {
    let owner = Uuid::now_v7();
    let t = thread(owner, "Doomed", now_ms());
    store.create_thread(&t).await.map_err(e)?;
    for model in ["a", "b", "b"] {
        store
            .append_message(owner, &message(t.id, model, "user", "x"))
            .await
            .map_err(e)?;
    }
    check(
        store
            .delete_thread(Uuid::now_v7(), t.id)
            .await
            .map_err(e)?
            .is_none(),
        "a stranger deleted the thread",
    )?;
    check(
        store.thread(owner, t.id).await.map_err(e)?.is_some(),
        "the thread is gone after a refused delete",
    )?;
    check(
        store.delete_thread(owner, t.id).await.map_err(e)? == Some(3),
        "delete must report 3 messages",
    )?;
    check(
        store.thread(owner, t.id).await.map_err(e)?.is_none(),
        "thread still readable",
    )?;
    check(
        store.models(owner, t.id).await.map_err(e)?.is_empty(),
        "models survive the delete",
    )?;
    check(
        store
            .list_messages(owner, t.id, "b", Direction::Asc, None, 10)
            .await
            .map_err(e)?
            .is_none(),
        "messages survive the delete",
    )?;
    check(
        store.delete_thread(owner, t.id).await.map_err(e)?.is_none(),
        "second delete found it",
    )?;
    check(
        store.count_threads(owner).await.map_err(e)? == 0,
        "count after delete",
    )
}

pub async fn run_all(store: Arc<dyn ThreadStore>) -> Result<(), String> {
    let s = store.as_ref();
    threads_round_trip(s)
        .await
        .map_err(|m| format!("threads_round_trip: {m}"))?;
    listings_page_in_every_order(s)
        .await
        .map_err(|m| format!("listings_page_in_every_order: {m}"))?;
    paging_survives_concurrent_inserts(Arc::clone(&store))
        .await
        .map_err(|m| format!("paging_survives_concurrent_inserts: {m}"))?;
    rename_is_owner_only_and_moves_updated_at(s)
        .await
        .map_err(|m| format!("rename_is_owner_only_and_moves_updated_at: {m}"))?;
    histories_append_idempotently_and_page(s)
        .await
        .map_err(|m| format!("histories_append_idempotently_and_page: {m}"))?;
    messages_update_in_place(s)
        .await
        .map_err(|m| format!("messages_update_in_place: {m}"))?;
    summaries_never_go_backwards(s)
        .await
        .map_err(|m| format!("summaries_never_go_backwards: {m}"))?;
    deletes_cascade_and_are_owner_only(s)
        .await
        .map_err(|m| format!("deletes_cascade_and_are_owner_only: {m}"))
}
