//! Incremental splitter for newline-delimited JSON (one JSON value per line, as Ollama streams).
//!
//! Lines end in `\n`; a `\r` before it is trimmed with the other surrounding whitespace, so
//! `\r\n` split across chunks is handled too. Blank lines are skipped. Lines are decoded as
//! UTF-8 lossily (a character split across chunks is reassembled first). The JSON itself is not
//! parsed here.

/// Default bound on one buffered line.
pub const DEFAULT_MAX_LINE_BYTES: usize = 1024 * 1024;

/// A line grew beyond the configured bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a JSON line exceeded {max_bytes} bytes")]
pub struct NdjsonError {
    /// The bound that was exceeded.
    pub max_bytes: usize,
}

/// Incremental line splitter; see the module docs.
#[derive(Debug)]
pub struct NdjsonSplitter {
    line: Vec<u8>,
    max_bytes: usize,
    failed: bool,
}

impl Default for NdjsonSplitter {
    fn default() -> Self {
        Self::new()
    }
}

impl NdjsonSplitter {
    /// A splitter bounded at [`DEFAULT_MAX_LINE_BYTES`].
    pub fn new() -> Self {
        Self::with_max_line_bytes(DEFAULT_MAX_LINE_BYTES)
    }

    /// A splitter that errors once one line needs more than `max_bytes` of buffer.
    pub fn with_max_line_bytes(max_bytes: usize) -> Self {
        Self {
            line: Vec::new(),
            max_bytes,
            failed: false,
        }
    }

    /// Feeds the next chunk; returns the non-blank lines it completed, trimmed. After an error
    /// the splitter stays failed.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<String>, NdjsonError> {
        if self.failed {
            return Err(self.error());
        }
        let mut out = Vec::new();
        let mut rest = chunk;
        while let Some(i) = rest.iter().position(|b| *b == b'\n') {
            if self.line.len() + i > self.max_bytes {
                return Err(self.fail());
            }
            if self.line.is_empty() {
                emit(&rest[..i], &mut out);
            } else {
                self.line.extend_from_slice(&rest[..i]);
                emit(&self.line, &mut out);
                self.line.clear();
            }
            rest = &rest[i + 1..];
        }
        self.line.extend_from_slice(rest);
        if self.line.len() > self.max_bytes {
            return Err(self.fail());
        }
        Ok(out)
    }

    /// Ends the stream: returns the last line if it was not newline-terminated and not blank.
    pub fn finish(&mut self) -> Result<Vec<String>, NdjsonError> {
        if self.failed {
            return Err(self.error());
        }
        let mut out = Vec::new();
        emit(&self.line, &mut out);
        self.line.clear();
        Ok(out)
    }

    fn error(&self) -> NdjsonError {
        NdjsonError {
            max_bytes: self.max_bytes,
        }
    }

    fn fail(&mut self) -> NdjsonError {
        self.failed = true;
        self.line = Vec::new();
        self.error()
    }
}

fn emit(line: &[u8], out: &mut Vec<String>) {
    let text = String::from_utf8_lossy(line);
    let trimmed = text.trim();
    if !trimmed.is_empty() {
        out.push(trimmed.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn split(chunks: &[&[u8]]) -> Vec<String> {
        let mut s = NdjsonSplitter::new();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(s.push(c).unwrap());
        }
        out.extend(s.finish().unwrap());
        out
    }

    const FIXTURE: &str = "{\"a\":1}\n\r\n  \n{\"b\":\"\u{e9}\u{1f600}\"}\r\n{\"c\":3}";

    #[test]
    fn splits_lines_at_every_boundary() {
        let expected = vec![
            "{\"a\":1}".to_owned(),
            "{\"b\":\"\u{e9}\u{1f600}\"}".to_owned(),
            "{\"c\":3}".to_owned(),
        ];
        let bytes = FIXTURE.as_bytes();
        for i in 0..=bytes.len() {
            assert_eq!(split(&[&bytes[..i], &bytes[i..]]), expected, "split at {i}");
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(split(&singles), expected);
    }

    #[test]
    fn long_lines_are_refused() {
        let mut s = NdjsonSplitter::with_max_line_bytes(8);
        assert!(s.push(b"12345").is_ok());
        assert!(s.push(b"6789").is_err());
        assert!(s.push(b"\n").is_err());
        let mut s = NdjsonSplitter::with_max_line_bytes(8);
        assert!(s.push(b"0123456789\n").is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_stay_bounded(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..32)
        ) {
            let mut s = NdjsonSplitter::with_max_line_bytes(100);
            let total: usize = chunks.iter().map(Vec::len).sum();
            let mut n = 0;
            for c in &chunks {
                match s.push(c) {
                    Ok(lines) => {
                        for l in &lines { prop_assert!(l.len() <= 300); }
                        n += lines.len();
                    }
                    Err(_) => break,
                }
            }
            if let Ok(lines) = s.finish() { n += lines.len(); }
            prop_assert!(n <= total / 2 + 1);
        }

        #[test]
        fn rechunking_never_changes_the_lines(
            lines in proptest::collection::vec("[^\n]{0,30}", 0..8),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let text = lines.iter().map(|l| format!("{l}\n")).collect::<String>();
            let bytes = text.as_bytes();
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks = Vec::new();
            let mut last = 0;
            for p in points { chunks.push(&bytes[last..p]); last = p; }
            chunks.push(&bytes[last..]);
            prop_assert_eq!(split(&chunks), split(&[bytes]));
        }
    }
}
