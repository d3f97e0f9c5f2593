//! The per-provider stream parsers behind one type that can be driven without HTTP.

use crate::{ProviderError, ProviderKind, StreamEvent, Usage};

/// One parsed stream item.
pub(crate) type Item = Result<StreamEvent, ProviderError>;

/// A provider's body-to-events state machine.
pub(crate) trait Step {
    /// Consumes a body chunk.
    fn push(&mut self, chunk: &[u8], out: &mut Vec<Item>);
    /// End of body: emits the terminal event, or the cut-off error.
    fn finish(&mut self, out: &mut Vec<Item>);
}

#[derive(Debug)]
enum Inner {
    Anthropic(crate::anthropic::Parser),
    OpenAi(crate::openai::Parser),
    Gemini(crate::gemini::Parser),
    Ollama(crate::ollama::Parser),
}

/// Parses a provider's streaming response body, fed in chunks of any size, into
/// [`StreamEvent`]s. The output ends with exactly one terminal item, `Done` or an error, after
/// which further input is ignored; a body that ends before the provider's terminal event gives a
/// `Protocol` error.
#[derive(Debug)]
pub struct StreamParser {
    inner: Inner,
    ended: bool,
}

impl StreamParser {
    /// A parser for `kind`'s streaming format (OpenAI-compatible servers use OpenAI's).
    pub fn new(kind: ProviderKind) -> Self {
        let inner = match kind {
            ProviderKind::Anthropic => Inner::Anthropic(crate::anthropic::Parser::default()),
            ProviderKind::OpenAi => Inner::OpenAi(crate::openai::Parser::new(false)),
            ProviderKind::OpenAiCompatible => Inner::OpenAi(crate::openai::Parser::new(true)),
            ProviderKind::Google => Inner::Gemini(crate::gemini::Parser::default()),
            ProviderKind::Ollama => Inner::Ollama(crate::ollama::Parser::default()),
        };
        Self {
            inner,
            ended: false,
        }
    }

    /// Feeds the next body chunk; returns the items it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Result<StreamEvent, ProviderError>> {
        if self.ended {
            return Vec::new();
        }
        let mut out = Vec::new();
        self.step().push(chunk, &mut out);
        self.settle(out)
    }

    /// Ends the body; returns the remaining items, always ending in a terminal one unless the
    /// stream had already ended.
    pub fn finish(&mut self) -> Vec<Result<StreamEvent, ProviderError>> {
        if self.ended {
            return Vec::new();
        }
        let mut out = Vec::new();
        self.step().finish(&mut out);
        let mut out = self.settle(out);
        if !self.ended {
            out.push(Err(ProviderError::protocol(
                "the stream ended before its terminal event",
            )));
            self.ended = true;
        }
        out
    }

    fn step(&mut self) -> &mut dyn Step {
        match &mut self.inner {
            Inner::Anthropic(p) => p,
            Inner::OpenAi(p) => p,
            Inner::Gemini(p) => p,
            Inner::Ollama(p) => p,
        }
    }

    fn settle(&mut self, mut out: Vec<Item>) -> Vec<Item> {
        if let Some(i) = out
            .iter()
            .position(|item| matches!(item, Ok(StreamEvent::Done { .. }) | Err(_)))
        {
            out.truncate(i + 1);
            self.ended = true;
        }
        out
    }
}

/// Usage and finish reason gathered along a stream, emitted just before `Done`.
#[derive(Debug, Default)]
pub(crate) struct Tail {
    pub usage: Usage,
    pub finish_reason: Option<String>,
}

impl Tail {
    /// Pushes `Usage` (when any count is known) and `Done`.
    pub fn done(&mut self, out: &mut Vec<Item>) {
        if self.usage != Usage::default() {
            out.push(Ok(StreamEvent::Usage(self.usage)));
        }
        out.push(Ok(StreamEvent::Done {
            finish_reason: self.finish_reason.take(),
        }));
    }
}

/// A JSON number as `u32`, if it is one that fits.
pub(crate) fn as_u32(v: &serde_json::Value) -> Option<u32> {
    v.as_u64().and_then(|n| u32::try_from(n).ok())
}

/// A JSON string that is not empty.
pub(crate) fn non_empty_str(v: &serde_json::Value) -> Option<&str> {
    v.as_str().filter(|s| !s.is_empty())
}

/// Parses one event's JSON; a failure becomes a `Protocol` item.
pub(crate) fn json(data: &str, what: &str) -> Result<serde_json::Value, ProviderError> {
    serde_json::from_str(data)
        .map_err(|e| ProviderError::protocol(format!("malformed {what} chunk: {e}")))
}

#[cfg(test)]
pub(crate) mod testing {
    //! Helpers shared by the provider parser tests.
    use super::*;

    /// Runs `chunks` through a fresh parser for `kind`.
    pub fn run(kind: ProviderKind, chunks: &[&[u8]]) -> Vec<Item> {
        let mut p = StreamParser::new(kind);
        let mut out = Vec::new();
        for c in chunks {
            out.extend(p.push(c));
        }
        out.extend(p.finish());
        out
    }

    /// Asserts that every two-way split and the 1-byte chunking give `expected`.
    pub fn assert_all_splits(kind: ProviderKind, body: &[u8], expected: &[Item]) {
        assert_eq!(run(kind, &[body]), expected, "whole body");
        for i in 0..=body.len() {
            assert_eq!(
                run(kind, &[&body[..i], &body[i..]]),
                expected,
                "split at byte {i}"
            );
        }
        let singles: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(run(kind, &singles), expected, "1-byte chunks");
    }

    /// Concatenated tokens of a parse.
    pub fn text(items: &[Item]) -> String {
        items
            .iter()
            .filter_map(|i| match i {
                Ok(StreamEvent::Token(t)) => Some(t.as_str()),
                _ => None,
            })
            .collect()
    }

    pub fn tok(s: &str) -> Item {
        Ok(StreamEvent::Token(s.to_owned()))
    }

    pub fn usage_ev(i: Option<u32>, o: Option<u32>) -> Item {
        Ok(StreamEvent::Usage(Usage {
            input_tokens: i,
            output_tokens: o,
        }))
    }

    pub fn done(reason: Option<&str>) -> Item {
        Ok(StreamEvent::Done {
            finish_reason: reason.map(str::to_owned),
        })
    }

    /// Property checks shared by every provider: arbitrary bytes never panic, the output is
    /// bounded and ends in exactly one terminal item.
    pub fn check_arbitrary(kind: ProviderKind, chunks: &[Vec<u8>]) {
        let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        let out = run(kind, &refs);
        let total: usize = chunks.iter().map(Vec::len).sum();
        assert!(
            out.len() <= total + 2,
            "{} items from {total} bytes",
            out.len()
        );
        let terminals = out
            .iter()
            .filter(|i| matches!(i, Ok(StreamEvent::Done { .. }) | Err(_)))
            .count();
        assert_eq!(terminals, 1);
        assert!(matches!(
            out.last(),
            Some(Ok(StreamEvent::Done { .. }) | Err(_))
        ));
        assert!(
            !out.iter()
                .any(|i| matches!(i, Ok(StreamEvent::Token(t)) if t.is_empty()))
        );
    }

    /// Splits `body` at the given cut points (taken modulo its length).
    pub fn rechunk<'a>(body: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut last = 0;
        for p in points {
            chunks.push(&body[last..p]);
            last = p;
        }
        chunks.push(&body[last..]);
        chunks
    }
}
