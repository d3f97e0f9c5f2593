//! The thread-search port's contract. Engines that index asynchronously must make writes visible
//! before the next call when run under this suite (see the Meilisearch adapter's config).

use super::{check, e};
use crate::now_ms;
use crate::search::{SearchDoc, ThreadSearch};
use crate::threads::{Direction, SortField, ThreadKey};
use time::Duration;
use uuid::Uuid;

fn doc(owner: Uuid, title: &str, summary: Option<&str>, minutes_ago: i64) -> SearchDoc {
    let at = now_ms() - Duration::minutes(minutes_ago);
    SearchDoc {
        thread_id: Uuid::now_v7(),
        owner_id: owner,
        title: title.to_owned(),
        summary: summary.map(str::to_owned),
        created_at: at,
        updated_at: at,
    }
}

pub async fn finds_by_title_and_summary_for_the_owner_only(
    s: &dyn ThreadSearch,
) -> Result<(), String> {
    let alice = Uuid::now_v7();
    let bob = Uuid::now_v7();
    let a1 = doc(alice, "Microservice architecture", None, 3);
    let a2 = doc(
        alice,
        "Cooking",
        Some("pasta and microservices in the kitchen"),
        2,
    );
    let a3 = doc(alice, "Gardening", Some("tomatoes"), 1);
    let b1 = doc(bob, "Microservice architecture", Some("microservices"), 1);
    for d in [&a1, &a2, &a3, &b1] {
        s.upsert(d).await.map_err(e)?;
    }
    let found = s
        .search(
            alice,
            "microservice",
            SortField::UpdatedAt,
            Direction::Desc,
            None,
            10,
        )
        .await
        .map_err(e)?;
    check(
        found == vec![a2.thread_id, a1.thread_id],
        &format!("alice's matches, newest first: {found:?}"),
    )?;
    check(
        s.count(alice, "microservice").await.map_err(e)? == 2,
        "alice's count",
    )?;
    let bobs = s
        .search(
            bob,
            "microservice architecture",
            SortField::UpdatedAt,
            Direction::Desc,
            None,
            10,
        )
        .await
        .map_err(e)?;
    check(
        bobs == vec![b1.thread_id],
        "bob sees exactly his own thread",
    )?;
    let none = s
        .search(
            Uuid::now_v7(),
            "microservice",
            SortField::UpdatedAt,
            Direction::Desc,
            None,
            10,
        )
        .await
        .map_err(e)?;
    check(none.is_empty(), "a third user sees others' threads")?;
    // Every term must match.
    let both = s
        .search(
            alice,
            "microservice pasta",
            SortField::UpdatedAt,
            Direction::Desc,
            None,
            10,
        )
        .await
        .map_err(e)?;
    check(both == vec![a2.thread_id], "all terms must match")?;
    // Query syntax in user input is inert and never an error.
    for q in [r#"owner:* OR "x"#, "NEAR(a b)", "-- ; DROP", "*", "\"", ""] {
        s.search(alice, q, SortField::UpdatedAt, Direction::Desc, None, 10)
            .await
            .map_err(|err| format!("query {q:?}: {err}"))?;
    }
    check(
        s.search(alice, "", SortField::UpdatedAt, Direction::Desc, None, 10)
            .await
            .map_err(e)?
            .is_empty(),
        "an empty query matches nothing",
    )
}

pub async fn upserts_replace_and_deletes_remove(s: &dyn ThreadSearch) -> Result<(), String> {
    let owner = Uuid::now_v7();
    let mut d = doc(owner, "Quantum physics", None, 1);
    s.upsert(&d).await.map_err(e)?;
    s.upsert(&d).await.map_err(e)?; // idempotent
    check(
        s.count(owner, "quantum").await.map_err(e)? == 1,
        "double upsert must leave one doc",
    )?;
    d.title = "Classical mechanics".into();
    d.updated_at = now_ms();
    s.upsert(&d).await.map_err(e)?;
    check(
        s.count(owner, "quantum").await.map_err(e)? == 0,
        "the old title still matches",
    )?;
    check(
        s.count(owner, "classical").await.map_err(e)? == 1,
        "the new title does not match",
    )?;
    d.summary = Some("orbits and pendulums".into());
    s.upsert(&d).await.map_err(e)?;
    check(
        s.count(owner, "pendulum").await.map_err(e)? == 1,
        "summary is searchable (prefix)",
    )?;
    s.delete(d.thread_id).await.map_err(e)?;
    s.delete(d.thread_id).await.map_err(e)?; // idempotent
    check(
        s.count(owner, "classical").await.map_err(e)? == 0,
        "deleted doc still found",
    )
}

pub async fn results_page_in_order(s: &dyn ThreadSearch) -> Result<(), String> {
    let owner = Uuid::now_v7();
    let mut docs = Vec::new();
    for i in 0..12 {
        let d = doc(owner, &format!("Rust notes {i}"), None, 100 - i);
        s.upsert(&d).await.map_err(e)?;
        docs.push(d);
    }
    for direction in [Direction::Asc, Direction::Desc] {
        let mut expected: Vec<_> = docs.iter().map(|d| (d.created_at, d.thread_id)).collect();
        expected.sort();
        if direction == Direction::Desc {
            expected.reverse();
        }
        let mut seen = Vec::new();
        let mut after: Option<ThreadKey> = None;
        loop {
            let page = s
                .search(owner, "rust", SortField::CreatedAt, direction, after, 5)
                .await
                .map_err(e)?;
            if page.is_empty() {
                break;
            }
            let last = page.last().copied();
            seen.extend(page);
            after = last.and_then(|id| {
                docs.iter().find(|d| d.thread_id == id).map(|d| ThreadKey {
                    at: d.created_at,
                    id,
                })
            });
        }
        check(
            seen == expected.iter().map(|(_, id)| *id).collect::<Vec<_>>(),
            &format!("search pages {direction:?} are not complete and ordered"),
        )?;
    }
    Ok(())
}

pub async fn run_all(s: &dyn ThreadSearch) -> Result<(), String> {
    finds_by_title_and_summary_for_the_owner_only(s)
        .await
        .map_err(|m| format!("finds_by_title_and_summary_for_the_owner_only: {m}"))?;
    upserts_replace_and_deletes_remove(s)
        .await
        .map_err(|m| format!("upserts_replace_and_deletes_remove: {m}"))?;
    results_page_in_order(s)
        .await
        .map_err(|m| format!("results_page_in_order: {m}"))
}
