//! Context assembly for one (thread, model): the system prompt, the model's summary of the
//! history, then the newest messages of that history that fit, newest kept first, within the
//! model's context length minus the reply budget. Never more than the window: when even the new
//! message does not fit, the send is refused before anything is stored.

use polylogue_contracts::threads::{MessageView, SummaryView};
use polylogue_providers::tokens::TokenCounter;
use polylogue_providers::{ChatMessage, Role};
use serde::Serialize;

/// What a reply was given, stored with the assistant message.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContextReceipt {
    pub summary_version: Option<u64>,
    /// History messages sent, oldest first (the new user message is not among them).
    pub message_ids: Vec<String>,
    pub tokens: TokenParts,
    /// `exact` (BPE) or `estimate`.
    pub counter: &'static str,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenParts {
    pub system: u32,
    pub summary: u32,
    pub history: u32,
    pub user_message: u32,
    pub total: u32,
    /// The window minus the reply budget.
    pub budget: u32,
    pub reply_budget: u32,
}

#[derive(Debug, Clone)]
pub struct Assembled {
    pub system: Option<String>,
    pub messages: Vec<ChatMessage>,
    pub receipt: ContextReceipt,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TooLarge {
    pub needed: u32,
    pub budget: u32,
}

pub struct Inputs<'a> {
    pub system_prompt: &'a str,
    pub summary: Option<&'a SummaryView>,
    /// Oldest first, only what comes after the summary's covered range.
    pub history: &'a [MessageView],
    pub user_content: &'a str,
    pub context_length: u32,
    pub reply_budget: u32,
}

const SUMMARY_HEADER: &str = "\n\nSummary of the earlier conversation:\n";

/// The reply budget for a request (shared with the summarizer's trigger).
pub use polylogue_providers::tokens::reply_budget;

pub fn assemble(input: &Inputs<'_>, counter: &TokenCounter) -> Result<Assembled, TooLarge> {
    // The window minus the reply budget, with a margin when counts are estimated.
    let budget = counter.prompt_budget(input.context_length, input.reply_budget);
    let system_tokens = if input.system_prompt.is_empty() {
        0
    } else {
        counter.count_message(input.system_prompt)
    };
    let user_tokens = counter.count_message(input.user_content);
    let fixed = system_tokens
        .saturating_add(user_tokens)
        .saturating_add(counter.reply_priming());
    if fixed > budget {
        return Err(TooLarge {
            needed: fixed,
            budget,
        });
    }
    let mut used = fixed;
    // The summary goes with the system prompt when it fits; without it the newest messages
    // still do.
    let mut summary_tokens = 0;
    let mut summary_version = None;
    let mut system = input.system_prompt.to_owned();
    if let Some(summary) = input.summary.filter(|s| !s.content.is_empty()) {
        let cost = counter.count_text(SUMMARY_HEADER) + counter.count_text(&summary.content);
        if used.saturating_add(cost) <= budget {
            used += cost;
            summary_tokens = cost;
            summary_version = Some(summary.version);
            system.push_str(SUMMARY_HEADER);
            system.push_str(&summary.content);
        }
    }
    let mut kept: Vec<&MessageView> = Vec::new();
    let mut history_tokens = 0u32;
    for m in input.history.iter().rev() {
        if !usable(m) {
            continue;
        }
        let cost = counter.count_message(&m.content);
        if used.saturating_add(cost) > budget {
            break;
        }
        used += cost;
        history_tokens += cost;
        kept.push(m);
    }
    kept.reverse();
    // Providers want the conversation to open with a user turn.
    while kept.first().is_some_and(|m| m.role != "user") {
        if let Some(m) = kept.first() {
            let cost = counter.count_message(&m.content);
            used -= cost;
            history_tokens -= cost;
        }
        kept.remove(0);
    }
    let mut messages: Vec<ChatMessage> = kept
        .iter()
        .map(|m| ChatMessage {
            role: if m.role == "assistant" {
                Role::Assistant
            } else {
                Role::User
            },
            content: m.content.clone(),
        })
        .collect();
    messages.push(ChatMessage {
        role: Role::User,
        content: input.user_content.to_owned(),
    });
    Ok(Assembled {
        system: (!system.is_empty()).then_some(system),
        messages,
        receipt: ContextReceipt {
            summary_version,
            message_ids: kept.iter().map(|m| m.id.clone()).collect(),
            tokens: TokenParts {
                system: system_tokens,
                summary: summary_tokens,
                history: history_tokens,
                user_message: user_tokens,
                total: used,
                budget,
                reply_budget: input.reply_budget,
            },
            counter: if counter.is_exact() {
                "exact"
            } else {
                "estimate"
            },
        },
    })
}

/// User messages, and assistant replies that completed with content. Failed, cancelled and
/// interrupted replies are not context.
fn usable(m: &MessageView) -> bool {
    !m.content.is_empty()
        && match m.role.as_str() {
            "user" => true,
            "assistant" => m.status == "complete",
            _ => false,
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polylogue_providers::ProviderKind;

    fn msg(i: usize, role: &str, content: &str, status: &str) -> MessageView {
        MessageView {
            id: format!("m{i}"),
            thread_id: "t".into(),
            model_id: "x".into(),
            role: role.into(),
            content: content.into(),
            tokens: None,
            temperature: None,
            created_at: String::new(),
            status: status.into(),
        }
    }

    fn history(n: usize) -> Vec<MessageView> {
        (0..n)
            .map(|i| {
                let role = if i % 2 == 0 { "user" } else { "assistant" };
                msg(
                    i,
                    role,
                    &format!("message number {i} {}", "word ".repeat(20)),
                    "complete",
                )
            })
            .collect()
    }

    fn counter() -> TokenCounter {
        TokenCounter::for_model(ProviderKind::Anthropic, "claude")
    }

    #[test]
    fn keeps_the_newest_messages_within_the_budget() {
        let h = history(200);
        let c = counter();
        for window in [200u32, 500, 1000, 4000] {
            let a = assemble(
                &Inputs {
                    system_prompt: "be brief",
                    summary: None,
                    history: &h,
                    user_content: "hello",
                    context_length: window,
                    reply_budget: window / 4,
                },
                &c,
            )
            .unwrap();
            let sent: u32 = c.count_message("be brief")
                + a.messages
                    .iter()
                    .map(|m| c.count_message(&m.content))
                    .sum::<u32>()
                + c.reply_priming();
            assert!(sent <= a.receipt.tokens.budget, "window {window}: {sent}");
            assert!(a.receipt.tokens.budget <= window - window / 4);
            assert_eq!(sent, a.receipt.tokens.total);
            // Newest first: the kept ids are a suffix of the history.
            if let Some(first) = a.receipt.message_ids.first() {
                let pos = h.iter().position(|m| &m.id == first).unwrap();
                let suffix: Vec<String> = h[pos..].iter().map(|m| m.id.clone()).collect();
                assert_eq!(suffix, a.receipt.message_ids);
                assert_eq!(h[pos].role, "user");
            }
            assert_eq!(a.messages.last().unwrap().content, "hello");
        }
    }

    #[test]
    fn a_message_that_cannot_fit_is_refused() {
        let big = "word ".repeat(5000);
        let err = assemble(
            &Inputs {
                system_prompt: "",
                summary: None,
                history: &[],
                user_content: &big,
                context_length: 2048,
                reply_budget: 512,
            },
            &counter(),
        )
        .unwrap_err();
        assert!(err.needed > err.budget && err.budget <= 1536);
    }

    #[test]
    fn summary_goes_first_and_unfinished_replies_are_skipped() {
        let summary = SummaryView {
            version: 3,
            content: "We talked about trains.".into(),
            tokens: 6,
            covers_until: "m0".into(),
            model_used: "x".into(),
            generated_at: String::new(),
        };
        let h = vec![
            msg(1, "user", "first", "complete"),
            msg(2, "assistant", "partial", "cancelled"),
            msg(3, "assistant", "", "error"),
            msg(4, "user", "second", "complete"),
            msg(5, "assistant", "answer", "complete"),
        ];
        let a = assemble(
            &Inputs {
                system_prompt: "sys",
                summary: Some(&summary),
                history: &h,
                user_content: "third",
                context_length: 100_000,
                reply_budget: 1000,
            },
            &counter(),
        )
        .unwrap();
        let system = a.system.unwrap();
        assert!(system.starts_with("sys") && system.ends_with("We talked about trains."));
        assert_eq!(a.receipt.summary_version, Some(3));
        assert_eq!(a.receipt.message_ids, ["m1", "m4", "m5"]);
        let contents: Vec<&str> = a.messages.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(contents, ["first", "second", "answer", "third"]);
    }

    #[test]
    fn reply_budget_is_capped_by_the_window() {
        assert_eq!(reply_budget(None, 1024, 2048), 512);
        assert_eq!(reply_budget(Some(16), 1024, 2048), 16);
        assert_eq!(reply_budget(Some(0), 1024, 2048), 1);
    }
}
