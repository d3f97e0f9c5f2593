//! The summary prompt and the length rules, on plain values.
//!
//! The prompt is the previous summary plus the newly covered messages, fitted to the summarizing
//! model's prompt budget (oldest first; what does not fit waits for the next round). A summary
//! is measured with the summarizing model's token counter — the one context assembly uses — and
//! kept within `[min, max]`: one corrective retry, then a trim at the last sentence boundary
//! under `max`; a summary still under `min` after the retry is kept (small models can be terse).

use polylogue_contracts::threads::MessageView;
use polylogue_providers::tokens::TokenCounter;

/// Length bounds of a summary, in tokens of the summarizing model's counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub min: u32,
    pub max: u32,
}

impl Bounds {
    /// The same range in words, for the instruction: BPE tokenizers average ~0.75 English words
    /// per token; the byte estimate (bytes / 3) counts about two tokens per word.
    fn words(&self, counter: &TokenCounter) -> (u32, u32) {
        if counter.is_exact() {
            (self.min * 3 / 4, self.max * 3 / 4)
        } else {
            (self.min / 2, self.max / 2)
        }
    }

    fn range(&self, counter: &TokenCounter) -> String {
        let (lo, hi) = self.words(counter);
        format!(
            "{} to {} tokens, that is about {lo} to {hi} words",
            self.min, self.max
        )
    }
}

/// Messages that are context: user messages, and assistant replies that completed with content.
pub fn usable(m: &MessageView) -> bool {
    !m.content.trim().is_empty()
        && match m.role.as_str() {
            "user" => true,
            "assistant" => m.status == "complete",
            _ => false,
        }
}

/// The system prompt of every summary request.
pub fn system_prompt() -> String {
    "You summarize conversations between a user and an AI assistant. The summary replaces the \
     messages it covers, so keep everything later turns may need: the user's goals and \
     preferences, facts, names, numbers, decisions, code identifiers and open questions. Write \
     plain prose in the third person (\"The user asked…\", \"The assistant explained…\"), without \
     a preamble, and never add anything that was not said."
        .to_owned()
}

fn instruction(bounds: &Bounds, counter: &TokenCounter, previous: bool) -> String {
    let what = if previous {
        "the earlier summary and the messages above"
    } else {
        "the messages above"
    };
    format!(
        "Summarize the conversation so far ({what}) in {}. Reply with the summary only.",
        bounds.range(counter)
    )
}

/// The follow-up when the first summary missed the bounds.
pub fn correction(tokens: u32, bounds: &Bounds, counter: &TokenCounter) -> String {
    if tokens > bounds.max {
        format!(
            "That summary is {tokens} tokens long; the limit is {}. Summarize the conversation \
             again in {}: shorter, keeping only the most important facts. Reply with the summary \
             only.",
            bounds.max,
            bounds.range(counter)
        )
    } else {
        format!(
            "That summary is only {tokens} tokens long. Summarize the conversation again in {}, \
             with more of its details. Reply with the summary only.",
            bounds.range(counter)
        )
    }
}

/// A summary request fitted to the budget.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub system: String,
    pub user: String,
    /// How many of the candidate messages (a prefix) the summary covers. Messages that are not
    /// context (failed or cancelled replies) are covered without being shown.
    pub covered: usize,
    /// Whether one message had to be cut to fit at all.
    pub truncated: bool,
    /// Prompt tokens, as the counter sees them.
    pub tokens: u32,
}

fn speaker(m: &MessageView) -> &'static str {
    if m.role == "assistant" {
        "Assistant"
    } else {
        "User"
    }
}

fn render(previous: Option<&str>, shown: &[String], closing: &str) -> String {
    let mut user = String::new();
    if let Some(p) = previous {
        user.push_str("Summary of the earlier conversation:\n");
        user.push_str(p);
        user.push_str("\n\nMessages since then:\n\n");
    } else {
        user.push_str("Conversation:\n\n");
    }
    for s in shown {
        user.push_str(s);
    }
    user.push_str(closing);
    user
}

/// The prompt tokens of a request with these parts.
pub fn prompt_tokens(counter: &TokenCounter, system: &str, turns: &[&str]) -> u32 {
    counter
        .count_message(system)
        .saturating_add(turns.iter().map(|t| counter.count_message(t)).sum::<u32>())
        .saturating_add(counter.reply_priming())
}

/// Fits the previous summary and the oldest candidates into `budget` prompt tokens. `None` when
/// not one context message fits (or there is none).
pub fn fit(
    previous: Option<&str>,
    candidates: &[MessageView],
    counter: &TokenCounter,
    budget: u32,
    bounds: &Bounds,
) -> Option<Prompt> {
    let system = system_prompt();
    let closing = instruction(bounds, counter, previous.is_some());
    let fixed = prompt_tokens(counter, &system, &[&render(previous, &[], &closing)]);
    if fixed >= budget {
        return None;
    }
    let mut used = fixed;
    let mut shown: Vec<String> = Vec::new();
    let mut covered = 0;
    let mut truncated = false;
    for (i, m) in candidates.iter().enumerate() {
        if !usable(m) {
            covered = i + 1;
            continue;
        }
        let piece = format!("{}: {}\n\n", speaker(m), m.content.trim());
        let cost = counter.count_text(&piece);
        if used.saturating_add(cost) <= budget {
            used += cost;
            shown.push(piece);
            covered = i + 1;
            continue;
        }
        if shown.is_empty() {
            // One message larger than the whole budget: cover it with its beginning rather than
            // never getting past it.
            let room = budget - used;
            if let Some(piece) = cut_to(speaker(m), m.content.trim(), room, counter) {
                shown.push(piece);
                covered = i + 1;
                truncated = true;
            }
        }
        break;
    }
    // Pieces counted apart can differ from the whole by a token at each seam (BPE): check the
    // real thing and give back messages from the end until it fits.
    loop {
        if shown.is_empty() {
            return None;
        }
        let user = render(previous, &shown, &closing);
        let tokens = prompt_tokens(counter, &system, &[&user]);
        if tokens <= budget {
            return Some(Prompt {
                system,
                user,
                covered,
                truncated,
                tokens,
            });
        }
        shown.pop();
        // Re-cover up to the last message still shown.
        let mut seen = 0;
        covered = 0;
        for (i, m) in candidates.iter().enumerate() {
            if usable(m) {
                if seen == shown.len() {
                    break;
                }
                seen += 1;
            }
            covered = i + 1;
        }
    }
}

/// `"<speaker>: <start of content> […]\n\n"` within `room` tokens, cut at a character boundary.
fn cut_to(speaker: &str, content: &str, room: u32, counter: &TokenCounter) -> Option<String> {
    let mut len = content.len().min(room as usize * 3);
    loop {
        while len > 0 && !content.is_char_boundary(len) {
            len -= 1;
        }
        if len == 0 {
            return None;
        }
        let piece = format!("{speaker}: {} […]\n\n", &content[..len]);
        if counter.count_text(&piece) <= room {
            return Some(piece);
        }
        len = len * 9 / 10;
    }
}

/// Ends of sentences in `text`: after `.`, `!` or `?` (and any closing quotes or brackets) that
/// are followed by whitespace or the end, and before each line break.
fn sentence_ends(text: &str) -> Vec<usize> {
    let bytes = text.as_bytes();
    let mut ends = Vec::new();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'.' | b'!' | b'?' => {
                let mut end = i + 1;
                while end < bytes.len() && matches!(bytes[end], b'"' | b'\'' | b')' | b']') {
                    end += 1;
                }
                if end == bytes.len() || bytes[end].is_ascii_whitespace() {
                    ends.push(end);
                }
            }
            b'\n' if i > 0 => ends.push(i),
            _ => {}
        }
    }
    ends.dedup();
    ends
}

/// The longest prefix of `text` that ends a sentence and is at most `max` tokens; without any
/// sentence end in reach, the longest whole-word prefix with an ellipsis.
pub fn trim(text: &str, max: u32, counter: &TokenCounter) -> String {
    let text = text.trim();
    if counter.count_text(text) <= max {
        return text.to_owned();
    }
    let fits = |end: usize| counter.count_text(text[..end].trim_end()) <= max;
    if let Some(end) = last_fitting(&sentence_ends(text), fits) {
        return text[..end].trim_end().to_owned();
    }
    let spaces: Vec<usize> = text
        .char_indices()
        .filter(|(_, c)| c.is_whitespace())
        .map(|(i, _)| i)
        .collect();
    let with_ellipsis = |end: usize| counter.count_text(&format!("{}…", text[..end].trim_end()));
    match last_fitting(&spaces, |end| with_ellipsis(end) <= max) {
        Some(end) => format!("{}…", text[..end].trim_end()),
        None => String::new(),
    }
}

/// The last of the sorted `positions` for which `fits` holds, assuming it holds for a prefix of
/// them (token counts grow with the text).
fn last_fitting(positions: &[usize], fits: impl Fn(usize) -> bool) -> Option<usize> {
    let n = positions.partition_point(|&p| fits(p));
    n.checked_sub(1).map(|i| positions[i])
}

#[cfg(test)]
mod tests {
    use super::*;
    use polylogue_providers::ProviderKind;

    fn estimate() -> TokenCounter {
        TokenCounter::for_model(ProviderKind::Anthropic, "claude")
    }

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

    const BOUNDS: Bounds = Bounds { min: 300, max: 700 };

    #[test]
    fn the_prompt_shows_context_messages_and_asks_for_the_bounds() {
        let c = estimate();
        let candidates = vec![
            msg(0, "user", "How do trains brake?", "complete"),
            msg(1, "assistant", "partial", "cancelled"),
            msg(2, "assistant", "With air brakes.", "complete"),
        ];
        let p = fit(Some("Earlier: trains."), &candidates, &c, 10_000, &BOUNDS).unwrap();
        assert_eq!(p.covered, 3);
        assert!(!p.truncated);
        assert!(
            p.user
                .starts_with("Summary of the earlier conversation:\nEarlier: trains.")
        );
        assert!(
            p.user
                .contains("User: How do trains brake?\n\nAssistant: With air brakes.")
        );
        assert!(!p.user.contains("partial"));
        assert!(p.user.contains("Summarize the conversation so far"));
        assert!(
            p.user
                .contains("300 to 700 tokens, that is about 150 to 350 words")
        );
        assert_eq!(p.tokens, prompt_tokens(&c, &p.system, &[&p.user]));
        let exact = TokenCounter::for_model(ProviderKind::OpenAi, "gpt-4o");
        let p = fit(None, &candidates, &exact, 10_000, &BOUNDS).unwrap();
        assert!(p.user.starts_with("Conversation:"));
        assert!(p.user.contains("about 225 to 525 words"));
    }

    #[test]
    fn what_does_not_fit_waits_for_the_next_round() {
        let c = estimate();
        let candidates: Vec<MessageView> = (0..50)
            .map(|i| {
                msg(
                    i,
                    "user",
                    &format!("message {i} {}", "word ".repeat(40)),
                    "complete",
                )
            })
            .collect();
        for budget in [300u32, 600, 1000, 2000] {
            match fit(None, &candidates, &c, budget, &BOUNDS) {
                Some(p) => {
                    assert!(p.tokens <= budget, "{budget}: {}", p.tokens);
                    assert!(p.covered >= 1 && p.covered < 50);
                    // Exactly the covered prefix is shown, oldest first.
                    assert!(p.user.contains(&format!("message {} ", p.covered - 1)));
                    assert!(!p.user.contains(&format!("message {} ", p.covered)));
                }
                None => assert!(budget <= 300, "nothing fitted in {budget}"),
            }
        }
    }

    #[test]
    fn a_message_larger_than_the_budget_is_covered_by_its_beginning() {
        let c = estimate();
        let big = "All work and no play. ".repeat(500);
        let candidates = vec![
            msg(0, "user", &big, "complete"),
            msg(1, "user", "next", "complete"),
        ];
        let p = fit(None, &candidates, &c, 1000, &BOUNDS).unwrap();
        assert_eq!(p.covered, 1);
        assert!(p.truncated && p.tokens <= 1000);
        assert!(p.user.contains("[…]"));
    }

    #[test]
    fn nothing_to_show_is_no_prompt() {
        let c = estimate();
        let failed = vec![msg(0, "assistant", "", "error")];
        assert_eq!(fit(None, &failed, &c, 10_000, &BOUNDS), None);
        assert_eq!(fit(None, &[], &c, 10_000, &BOUNDS), None);
        let one = vec![msg(0, "user", "hi", "complete")];
        assert_eq!(fit(None, &one, &c, 10, &BOUNDS), None);
    }

    #[test]
    fn trimming_ends_at_a_sentence_within_the_limit() {
        let c = estimate();
        let text = (1..=200)
            .map(|i| format!("Sentence {i} covers the topic with clear detail."))
            .collect::<Vec<_>>()
            .join(" ");
        for max in [50u32, 300, 700] {
            let t = trim(&text, max, &c);
            assert!(c.count_text(&t) <= max, "{max}");
            assert!(t.ends_with("detail."), "{t}");
            // The next sentence would not have fitted.
            let next = text[..text.len().min(t.len() + 60)].to_owned();
            assert!(c.count_text(&next) > max || next.len() == text.len());
        }
        assert_eq!(trim("Short. Fine.", 700, &c), "Short. Fine.");
        let t = trim("one two three four five six seven eight", 5, &c);
        assert!(t.ends_with('…') && c.count_text(&t) <= 5, "{t}");
        assert!(trim("Line one\nline two that goes on and on", 4, &c).starts_with("Line one"));
    }

    #[test]
    fn corrections_say_which_way_to_go() {
        let c = estimate();
        assert!(correction(900, &BOUNDS, &c).contains("900 tokens long; the limit is 700"));
        assert!(correction(100, &BOUNDS, &c).contains("only 100 tokens"));
        assert!(correction(100, &BOUNDS, &c).contains("Summarize"));
    }
}
