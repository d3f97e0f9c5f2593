//! Deterministic reply content, timing plan and the token stream state machine.

use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use tokio::time::{Instant, Sleep};

use crate::SimConfig;
use crate::directives::Directives;

/// Words of one summary sentence; `#` is replaced by the sentence number.
const SENTENCE: [&str; 8] = [
    "Sentence", "#", "covers", "the", "topic", "with", "clear", "detail.",
];

/// What the reply is made of.
#[derive(Debug, Clone)]
pub(crate) enum Reply {
    /// `"{prefix}{i} "` for each token `i`.
    Tokens { prefix: String },
    /// Deterministic sentences, one word per token; `words` is the natural length.
    Summary { words: u32 },
}

impl Reply {
    /// Appends the raw (unescaped) text of token `i` to `out`.
    pub(crate) fn write_token(&self, i: u32, out: &mut String) {
        match self {
            Self::Tokens { prefix } => {
                out.push_str(prefix);
                let _ = write!(out, "{i} ");
            }
            Self::Summary { words } => {
                let word = SENTENCE[(i % 8) as usize];
                if word == "#" {
                    let _ = write!(out, "{}", i / 8 + 1);
                } else {
                    out.push_str(word);
                }
                if i + 1 == *words && !word.ends_with('.') {
                    out.push('.');
                }
                out.push(' ');
            }
        }
    }

    /// The concatenated text of the first `count` tokens.
    pub(crate) fn text(&self, count: u32) -> String {
        let mut out = String::with_capacity(count as usize * 8);
        for i in 0..count {
            self.write_token(i, &mut out);
        }
        out
    }
}

/// How a streamed reply ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// Terminal events are sent.
    Normal,
    /// The body ends cleanly after `limit` tokens without terminal events.
    Cut,
    /// The body errors after `limit` tokens, so the connection is aborted.
    Abort,
}

/// Everything needed to produce one successful reply.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub ttft: Duration,
    pub gap: Duration,
    pub reply: Reply,
    /// Tokens to emit when the stream is not cut.
    pub count: u32,
    /// True when `count` was limited by the request's max tokens.
    pub hit_max: bool,
    pub end: End,
    /// Tokens emitted before a cut or abort.
    pub limit: u32,
    pub malformed_after: Option<u32>,
    pub input_tokens: u32,
}

/// Prompt facts extracted from a request body.
#[derive(Debug, Default)]
pub(crate) struct Prompt {
    /// Total bytes of all prompt text.
    pub bytes: usize,
    /// Text of the last user message.
    pub last_user: String,
    /// System prompt text.
    pub system: String,
}

impl Prompt {
    pub(crate) fn add(&mut self, text: &str) {
        self.bytes += text.len();
    }

    fn summarize(&self) -> bool {
        contains_ci(&self.system, "summarize") || contains_ci(&self.last_user, "summarize")
    }
}

fn contains_ci(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

impl Plan {
    pub(crate) fn new(
        config: &SimConfig,
        d: &Directives,
        prompt: &Prompt,
        max_tokens: Option<u64>,
    ) -> Self {
        let (reply, natural) = if prompt.summarize() {
            let words = d.summary_words.unwrap_or(config.summary_words);
            (Reply::Summary { words }, words)
        } else {
            let prefix = d.text.clone().unwrap_or_else(|| "tok".to_owned());
            (
                Reply::Tokens { prefix },
                d.tokens.unwrap_or(config.reply_tokens),
            )
        };
        let max = max_tokens.map_or(u32::MAX, |m| u32::try_from(m).unwrap_or(u32::MAX));
        let count = natural.min(max);
        let (end, limit) = match (d.cut_after, d.abort_after) {
            (_, Some(n)) => (End::Abort, n.min(count)),
            (Some(n), None) => (End::Cut, n.min(count)),
            (None, None) => (End::Normal, count),
        };
        Self {
            ttft: d.ttft.unwrap_or(config.ttft),
            gap: d.gap.unwrap_or(config.gap),
            reply,
            count,
            hit_max: count < natural,
            end,
            limit,
            malformed_after: d.malformed_after,
            input_tokens: u32::try_from(prompt.bytes.div_ceil(4)).unwrap_or(u32::MAX),
        }
    }

    /// Time a non-streamed reply takes to generate.
    pub(crate) fn generation_time(&self) -> Duration {
        let gaps = self.gap.saturating_mul(self.count.saturating_sub(1));
        if self.count == 0 {
            Duration::ZERO
        } else {
            self.ttft.saturating_add(gaps)
        }
    }

    /// True when a non-streamed reply must be broken (cut, abort or malformed).
    pub(crate) fn broken(&self) -> bool {
        self.end != End::Normal || self.malformed_after.is_some()
    }
}

/// Provider-specific wire framing of a streamed reply.
pub(crate) trait Frames: Send + Unpin + 'static {
    /// Events sent with the headers, before the time to first token.
    fn head(&mut self, out: &mut Vec<u8>);
    /// One token; `last` is true on the final token of a stream that ends normally.
    fn token(&mut self, index: u32, text: &str, last: bool, out: &mut Vec<u8>);
    /// One chunk that is not valid JSON.
    fn malformed(&mut self, out: &mut Vec<u8>);
    /// Terminal events after `emitted` tokens.
    fn tail(&mut self, emitted: u32, hit_max: bool, out: &mut Vec<u8>);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Head,
    Tokens,
    Tail,
    Done,
}

/// A body stream that writes each token as its own chunk.
pub(crate) struct TokenStream<F> {
    frames: F,
    plan: Plan,
    phase: Phase,
    next: u32,
    malformed_done: bool,
    abort_yielded: bool,
    sleep: Option<Pin<Box<Sleep>>>,
    sleeping: bool,
    text: String,
}

impl<F: Frames> TokenStream<F> {
    pub(crate) fn new(frames: F, plan: Plan) -> Self {
        Self {
            frames,
            plan,
            phase: Phase::Head,
            next: 0,
            malformed_done: false,
            abort_yielded: false,
            sleep: None,
            sleeping: false,
            text: String::with_capacity(32),
        }
    }

    fn start_sleep(&mut self, d: Duration) {
        if d.is_zero() {
            return;
        }
        let deadline = Instant::now() + d;
        match &mut self.sleep {
            Some(s) => s.as_mut().reset(deadline),
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        self.sleeping = true;
    }

    fn buffer(&self) -> Vec<u8> {
        Vec::with_capacity(self.text.capacity() + 192)
    }
}

impl<F: Frames> Stream for TokenStream<F> {
    type Item = Result<Bytes, io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.sleeping {
                if let Some(s) = &mut this.sleep
                    && s.as_mut().poll(cx).is_pending()
                {
                    return Poll::Pending;
                }
                this.sleeping = false;
            }
            match this.phase {
                Phase::Head => {
                    this.phase = Phase::Tokens;
                    let mut out = Vec::with_capacity(1024);
                    this.frames.head(&mut out);
                    this.start_sleep(this.plan.ttft);
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Bytes::from(out))));
                    }
                }
                Phase::Tokens => {
                    if !this.malformed_done && this.plan.malformed_after == Some(this.next) {
                        this.malformed_done = true;
                        let mut out = Vec::with_capacity(64);
                        this.frames.malformed(&mut out);
                        return Poll::Ready(Some(Ok(Bytes::from(out))));
                    }
                    if this.next >= this.plan.limit {
                        match this.plan.end {
                            End::Normal => this.phase = Phase::Tail,
                            End::Cut => this.phase = Phase::Done,
                            End::Abort if !this.abort_yielded => {
                                // Yield once so what was written so far is flushed first.
                                this.abort_yielded = true;
                                cx.waker().wake_by_ref();
                                return Poll::Pending;
                            }
                            End::Abort => {
                                this.phase = Phase::Done;
                                return Poll::Ready(Some(Err(io::Error::new(
                                    io::ErrorKind::ConnectionAborted,
                                    "provider-sim: abort_after reached",
                                ))));
                            }
                        }
                        continue;
                    }
                    let i = this.next;
                    this.text.clear();
                    this.plan.reply.write_token(i, &mut this.text);
                    let last = this.plan.end == End::Normal && i + 1 == this.plan.count;
                    let mut out = this.buffer();
                    this.frames.token(i, &this.text, last, &mut out);
                    this.next += 1;
                    if this.next < this.plan.limit {
                        this.start_sleep(this.plan.gap);
                    }
                    return Poll::Ready(Some(Ok(Bytes::from(out))));
                }
                Phase::Tail => {
                    this.phase = Phase::Done;
                    let mut out = Vec::with_capacity(1024);
                    this.frames.tail(this.next, this.plan.hit_max, &mut out);
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Bytes::from(out))));
                    }
                }
                Phase::Done => return Poll::Ready(None),
            }
        }
    }
}

/// Appends `s` as a JSON string literal (with quotes).
pub(crate) fn write_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Appends the decimal form of `n`.
pub(crate) fn write_u64(out: &mut Vec<u8>, n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Serializes `value` as JSON into a byte vector.
pub(crate) fn json_bytes(value: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_text_is_deterministic() {
        let r = Reply::Tokens {
            prefix: "tok".into(),
        };
        assert_eq!(r.text(3), "tok0 tok1 tok2 ");
    }

    #[test]
    fn summary_has_eight_word_sentences() {
        let r = Reply::Summary { words: 20 };
        let text = r.text(20);
        assert_eq!(text.split_whitespace().count(), 20);
        assert!(text.starts_with("Sentence 1 covers the topic with clear detail. Sentence 2 "));
        assert!(text.trim_end().ends_with('.'));
        let words = r.text(16);
        assert_eq!(words.matches('.').count(), 2);
    }

    #[test]
    fn json_escape() {
        let mut out = Vec::new();
        write_json_str(&mut out, "a\"b\\c\nd\u{1}é");
        let s = String::from_utf8(out).unwrap();
        assert_eq!(s, r#""a\"b\\c\nd\u0001é""#);
        let back: String = serde_json::from_str(&s).unwrap();
        assert_eq!(back, "a\"b\\c\nd\u{1}é");
        let mut n = Vec::new();
        write_u64(&mut n, 0);
        write_u64(&mut n, 1234567890);
        assert_eq!(n, b"01234567890");
    }

    #[test]
    fn case_insensitive_contains() {
        assert!(contains_ci("Please SUMMARIZE this", "summarize"));
        assert!(!contains_ci("sum", "summarize"));
    }
}
