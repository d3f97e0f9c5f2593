//! Token counting for context assembly.
//!
//! OpenAI models are counted exactly with their BPE (`tiktoken-rs`; encoders built once per
//! process): `gpt-4o*`, `gpt-4.1*`, `gpt-5*`, `o1*`, `o3*`, `o4*` and other non-`gpt-` names
//! use `o200k_base`, older `gpt-*` models `cl100k_base`. A chat message adds OpenAI's
//! documented framing overhead (3 tokens, plus 1 for the role name), and the reply is primed
//! with 3 more.
//!
//! Every other provider gets a conservative estimate: `ceil(utf8_bytes / 3)` per text plus 4 per
//! message. Basis: the BPE tokenizers these models use average about 4 bytes of English per
//! token (OpenAI's o200k/cl100k measure ~4.0-4.5; Anthropic, Gemini and Llama tokenizers give
//! similar figures against provider-reported usage), so bytes/3 overestimates English prose by
//! roughly 25-35%; CJK text (3 bytes per character, about one token per character or more)
//! is overestimated too. Punctuation-dense source code can reach ~2.5 bytes per token, where
//! the estimate may undercount by up to ~20%: callers should keep a safety margin. Overestimating
//! only trims history a little early; underestimating could overflow the context window.

use crate::ProviderKind;
use tiktoken_rs::CoreBPE;

/// Framing tokens per chat message for OpenAI models, excluding the role name.
const OPENAI_PER_MESSAGE: u32 = 3;
/// Tokens of a role name (`system`, `user`, `assistant` are one token in both encodings).
const OPENAI_ROLE: u32 = 1;
/// Tokens priming the assistant's reply (`<|start|>assistant<|message|>`).
const REPLY_PRIMING: u32 = 3;
/// Per-message overhead of the estimate.
const ESTIMATE_PER_MESSAGE: u32 = 4;
/// Share of the window an estimating counter may fill: the byte-based estimate overcounts prose
/// but can undercount dense code by up to ~20%, so a tenth of the window is kept in reserve.
const ESTIMATE_MARGIN: f64 = 0.9;

/// The reply budget of a request: what it asked for (or the configured default), at most a
/// quarter of the window, at least 1.
pub fn reply_budget(requested: Option<u32>, default: u32, context_length: u32) -> u32 {
    requested.unwrap_or(default).min(context_length / 4).max(1)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    O200k,
    Cl100k,
    Estimate,
}

/// Counts tokens for one provider model; cheap to create and copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenCounter {
    method: Method,
}

impl TokenCounter {
    /// The counter for `provider_model` at `kind`: exact for OpenAI, estimated otherwise.
    pub fn for_model(kind: ProviderKind, provider_model: &str) -> Self {
        let method = if kind == ProviderKind::OpenAi {
            let m = provider_model.to_ascii_lowercase();
            let o200k = ["gpt-4o", "gpt-4.1", "gpt-5", "o1", "o3", "o4", "chatgpt-4o"];
            if o200k.iter().any(|p| m.starts_with(p)) || !m.starts_with("gpt-") {
                Method::O200k
            } else {
                Method::Cl100k
            }
        } else {
            Method::Estimate
        };
        Self { method }
    }

    /// Tokens of `text` alone.
    pub fn count_text(&self, text: &str) -> u32 {
        match self.bpe() {
            Some(bpe) => saturate(bpe.encode_ordinary(text).len()),
            None => saturate(text.len().div_ceil(3)),
        }
    }

    /// Tokens of one chat message: its text plus the per-message overhead.
    pub fn count_message(&self, content: &str) -> u32 {
        let overhead = match self.method {
            Method::Estimate => ESTIMATE_PER_MESSAGE,
            Method::O200k | Method::Cl100k => OPENAI_PER_MESSAGE + OPENAI_ROLE,
        };
        self.count_text(content).saturating_add(overhead)
    }

    /// Tokens added once per request to prime the reply.
    pub fn reply_priming(&self) -> u32 {
        REPLY_PRIMING
    }

    /// Whether counts are exact (OpenAI BPE) rather than estimated.
    pub fn is_exact(&self) -> bool {
        self.method != Method::Estimate
    }

    /// Tokens a prompt may take: the window minus the reply budget, less the estimate's
    /// safety margin when counts are estimated. Context assembly and the summarizer's trigger
    /// both use it, so they agree on what "fits".
    pub fn prompt_budget(&self, context_length: u32, reply_budget: u32) -> u32 {
        let window = context_length.saturating_sub(reply_budget);
        if self.is_exact() {
            return window;
        }
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a whole number of tokens below the margin, bounded by window"
        )]
        let reduced = (f64::from(window) * ESTIMATE_MARGIN) as u32;
        reduced
    }

    fn bpe(&self) -> Option<&'static CoreBPE> {
        match self.method {
            Method::O200k => Some(tiktoken_rs::o200k_base_singleton()),
            Method::Cl100k => Some(tiktoken_rs::cl100k_base_singleton()),
            Method::Estimate => None,
        }
    }
}

fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLES: &[&str] = &[
        "hello world",
        "The quick brown fox jumps over the lazy dog.",
        "Polylogue keeps every conversation in one place, whichever model answered it. \
         Switch providers mid-thread and the context comes along.",
        "In 1869, the transcontinental railroad was completed at Promontory Summit, Utah, \
         cutting the journey across the United States from months to about a week.",
        "Could you summarize the attached meeting notes and list the three most important \
         action items, with owners and due dates where they are mentioned?",
    ];

    #[test]
    fn exact_counts_with_o200k() {
        let c = TokenCounter::for_model(ProviderKind::OpenAi, "gpt-4o-mini");
        assert!(c.is_exact());
        assert_eq!(c.count_text("hello world"), 2);
        assert_eq!(c.count_text(""), 0);
        assert_eq!(c.count_message("hello world"), 6);
        assert_eq!(c.reply_priming(), 3);
        // Special-token text is counted as plain text, not as one special token.
        assert!(c.count_text("<|endoftext|>") > 1);
    }

    #[test]
    fn encoding_choice() {
        let m = |kind, model| TokenCounter::for_model(kind, model).method;
        assert_eq!(m(ProviderKind::OpenAi, "gpt-4o"), Method::O200k);
        assert_eq!(m(ProviderKind::OpenAi, "gpt-4.1-mini"), Method::O200k);
        assert_eq!(m(ProviderKind::OpenAi, "gpt-5"), Method::O200k);
        assert_eq!(m(ProviderKind::OpenAi, "o3-mini"), Method::O200k);
        assert_eq!(m(ProviderKind::OpenAi, "gpt-4-turbo"), Method::Cl100k);
        assert_eq!(m(ProviderKind::OpenAi, "gpt-3.5-turbo"), Method::Cl100k);
        assert_eq!(
            m(ProviderKind::OpenAiCompatible, "gpt-4o"),
            Method::Estimate
        );
        assert_eq!(
            m(ProviderKind::Anthropic, "claude-sonnet-4-5"),
            Method::Estimate
        );
        let c = TokenCounter::for_model(ProviderKind::OpenAi, "gpt-4");
        // "hello world" is also 2 tokens in cl100k.
        assert_eq!(c.count_text("hello world"), 2);
    }

    #[test]
    fn prompt_budget_keeps_a_margin_only_when_estimating() {
        let exact = TokenCounter::for_model(ProviderKind::OpenAi, "gpt-4o");
        let est = TokenCounter::for_model(ProviderKind::Anthropic, "claude");
        assert_eq!(exact.prompt_budget(2048, 512), 1536);
        assert_eq!(est.prompt_budget(2048, 512), 1382);
        assert_eq!(est.prompt_budget(100, 200), 0);
        assert_eq!(reply_budget(None, 1024, 2048), 512);
        assert_eq!(reply_budget(Some(0), 1024, 2048), 1);
    }

    #[test]
    fn estimate_is_bytes_over_three_plus_overhead() {
        let c = TokenCounter::for_model(ProviderKind::Google, "gemini-2.0-flash");
        assert!(!c.is_exact());
        assert_eq!(c.count_text(""), 0);
        assert_eq!(c.count_text("abcd"), 2);
        assert_eq!(c.count_text("é"), 1);
        assert_eq!(c.count_message("abc"), 5);
    }

    #[test]
    fn estimate_undercounts_dense_code_by_at_most_a_fifth() {
        let code = "fn main() { let xs: Vec<u32> = (0..10).map(|x| x * x).collect(); println!(\"{xs:?}\"); }";
        let est = TokenCounter::for_model(ProviderKind::Anthropic, "claude").count_text(code);
        let exact = TokenCounter::for_model(ProviderKind::OpenAi, "gpt-4o").count_text(code);
        assert!(f64::from(est) >= 0.8 * f64::from(exact), "{est} vs {exact}");
        let cjk = "\u{4eca}\u{5929}\u{5929}\u{6c14}\u{5f88}\u{597d}\u{ff0c}\u{6211}\u{4eec}\u{53bb}\u{516c}\u{56ed}\u{6563}\u{6b65}\u{5427}\u{3002}";
        let est = TokenCounter::for_model(ProviderKind::Anthropic, "claude").count_text(cjk);
        assert!(est >= TokenCounter::for_model(ProviderKind::OpenAi, "gpt-4o").count_text(cjk));
    }

    #[test]
    fn estimate_is_never_below_the_exact_count_for_english() {
        let est = TokenCounter::for_model(ProviderKind::Ollama, "llama3.2");
        for model in ["gpt-4o", "gpt-4"] {
            let exact = TokenCounter::for_model(ProviderKind::OpenAi, model);
            for s in SAMPLES {
                assert!(
                    est.count_text(s) >= exact.count_text(s),
                    "{model}: {s:?} estimated {} < exact {}",
                    est.count_text(s),
                    exact.count_text(s)
                );
                assert!(est.count_message(s) >= exact.count_message(s));
            }
        }
    }
}

/// Builds the BPE tables now (they take a moment), so the first request does not pay for them.
pub fn warm_up() {
    let _ = tiktoken_rs::o200k_base_singleton();
    let _ = tiktoken_rs::cl100k_base_singleton();
}

#[cfg(test)]
mod warm_up_tests {
    #[test]
    fn warm_up_builds_both_tables() {
        let started = std::time::Instant::now();
        super::warm_up();
        eprintln!("tokenizer warm-up took {:?}", started.elapsed());
        let c = super::TokenCounter::for_model(crate::ProviderKind::OpenAi, "gpt-4o");
        assert_eq!(c.count_text("hello world"), 2);
    }
}
