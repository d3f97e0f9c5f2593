//! Incremental Server-Sent Events decoder following the WHATWG `text/event-stream` rules.
//!
//! Bytes go in as they arrive, in chunks of any size; complete events come out. Lines end in
//! `\n`, `\r\n` or `\r` (a `\r` ending one chunk may be followed by the `\n` that starts the
//! next), lines starting with `:` are comments, `data` lines are joined with `\n`, a blank line
//! dispatches the event, a field without a colon has an empty value, and one space after the
//! colon is stripped. Each line is decoded as UTF-8 lossily (a multi-byte character split
//! across chunks is reassembled first, since line breaks never fall inside one).

/// Default bound on one buffered event (its pending line plus its data so far).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1024 * 1024;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event` field, when the event had one.
    pub event: Option<String>,
    /// The `data` lines joined with `\n`.
    pub data: String,
    /// The `id` field, when this event had one (not carried over to later events).
    pub id: Option<String>,
}

/// The decoder refused to buffer more: one event grew beyond the configured bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a server-sent event exceeded {max_bytes} bytes")]
pub struct SseError {
    /// The bound that was exceeded.
    pub max_bytes: usize,
}

/// Incremental decoder state; see the module docs.
#[derive(Debug)]
pub struct SseDecoder {
    line: Vec<u8>,
    data: String,
    has_data: bool,
    event: Option<String>,
    id: Option<String>,
    skip_lf: bool,
    bom_checked: bool,
    max_bytes: usize,
    failed: bool,
}

impl Default for SseDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl SseDecoder {
    /// A decoder bounded at [`DEFAULT_MAX_EVENT_BYTES`].
    pub fn new() -> Self {
        Self::with_max_event_bytes(DEFAULT_MAX_EVENT_BYTES)
    }

    /// A decoder that errors once one event needs more than `max_bytes` of buffer.
    pub fn with_max_event_bytes(max_bytes: usize) -> Self {
        Self {
            line: Vec::new(),
            data: String::new(),
            has_data: false,
            event: None,
            id: None,
            skip_lf: false,
            bom_checked: false,
            max_bytes,
            failed: false,
        }
    }

    /// Feeds the next chunk; returns the events it completed. After an error the decoder stays
    /// failed and every later call returns the same error.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        if self.failed {
            return Err(self.error());
        }
        let mut out = Vec::new();
        let mut rest = chunk;
        if !self.bom_checked {
            rest = self.strip_bom(rest);
        }
        while !rest.is_empty() {
            if self.skip_lf {
                self.skip_lf = false;
                if rest[0] == b'\n' {
                    rest = &rest[1..];
                    continue;
                }
            }
            match rest.iter().position(|b| *b == b'\n' || *b == b'\r') {
                Some(i) => {
                    if rest[i] == b'\r' {
                        self.skip_lf = true;
                    }
                    let end = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                        self.skip_lf = false;
                        i + 2
                    } else {
                        i + 1
                    };
                    let done = if self.line.is_empty() {
                        self.process_line(&rest[..i])
                    } else {
                        self.line.extend_from_slice(&rest[..i]);
                        let line = std::mem::take(&mut self.line);
                        let done = self.process_line(&line);
                        self.line = line;
                        self.line.clear();
                        done
                    };
                    if let Some(ev) = done {
                        out.push(ev);
                    }
                    self.check_size()?;
                    rest = &rest[end..];
                }
                None => {
                    self.line.extend_from_slice(rest);
                    self.check_size()?;
                    rest = &[];
                }
            }
        }
        Ok(out)
    }

    /// Ends the stream. WHATWG discards an event left without its closing blank line; this
    /// decoder still dispatches one whose lines were all complete (servers that omit the final
    /// blank line), but drops an unterminated last line, which is most likely cut off.
    pub fn finish(&mut self) -> Result<Vec<SseEvent>, SseError> {
        if self.failed {
            return Err(self.error());
        }
        self.line.clear();
        self.skip_lf = false;
        let mut out = Vec::new();
        if let Some(ev) = self.dispatch() {
            out.push(ev);
        }
        self.event = None;
        self.id = None;
        Ok(out)
    }

    fn error(&self) -> SseError {
        SseError {
            max_bytes: self.max_bytes,
        }
    }

    fn check_size(&mut self) -> Result<(), SseError> {
        if self.line.len() + self.data.len() > self.max_bytes {
            self.failed = true;
            self.line = Vec::new();
            self.data = String::new();
            return Err(self.error());
        }
        Ok(())
    }

    /// Strips a UTF-8 byte order mark at the very start of the stream, even when split.
    fn strip_bom<'a>(&mut self, chunk: &'a [u8]) -> &'a [u8] {
        const BOM: &[u8] = b"\xEF\xBB\xBF";
        // Bytes of a possible BOM seen in earlier chunks are parked in `self.line`.
        let seen = self.line.len();
        let want = BOM.len() - seen;
        let take = want.min(chunk.len());
        if chunk[..take] != BOM[seen..seen + take] {
            // Not a BOM: whatever was parked is ordinary line content.
            self.bom_checked = true;
            return chunk;
        }
        if take == want {
            self.bom_checked = true;
            self.line.clear();
            return &chunk[take..];
        }
        self.line.extend_from_slice(&chunk[..take]);
        &chunk[take..]
    }

    fn process_line(&mut self, line: &[u8]) -> Option<SseEvent> {
        // A line break settles the BOM question: anything parked was a plain prefix.
        self.bom_checked = true;
        if line.is_empty() {
            return self.dispatch();
        }
        if line[0] == b':' {
            return None;
        }
        let (field, value) = match line.iter().position(|b| *b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &line[line.len()..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&String::from_utf8_lossy(value));
                self.has_data = true;
            }
            b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
            b"id" if !value.contains(&0) => {
                self.id = Some(String::from_utf8_lossy(value).into_owned());
            }
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        if !self.has_data {
            self.event = None;
            self.id = None;
            return None;
        }
        self.has_data = false;
        Some(SseEvent {
            event: self.event.take(),
            data: std::mem::take(&mut self.data),
            id: self.id.take(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_chunks(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut d = SseDecoder::new();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(d.push(c).unwrap());
        }
        out.extend(d.finish().unwrap());
        out
    }

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.map(str::to_owned),
            data: data.to_owned(),
            id: None,
        }
    }

    const FIXTURE: &str = "\u{feff}: comment\nevent: message_start\ndata: {\"a\":1}\n\n\
        event:ping\r\ndata:{\"b\":2}\r\n\r\n\
        data: line one\rdata: line two\r\rid: 7\ndata\ndata:  two spaces\n\n\
        retry: 10\nunknown: x\n\ndata: caf\u{e9} \u{1f600}\n\n";

    fn fixture_events() -> Vec<SseEvent> {
        vec![
            ev(Some("message_start"), "{\"a\":1}"),
            ev(Some("ping"), "{\"b\":2}"),
            ev(None, "line one\nline two"),
            SseEvent {
                event: None,
                data: "\n two spaces".into(),
                id: Some("7".into()),
            },
            ev(None, "caf\u{e9} \u{1f600}"),
        ]
    }

    #[test]
    fn decodes_the_whatwg_cases() {
        assert_eq!(decode_chunks(&[FIXTURE.as_bytes()]), fixture_events());
    }

    #[test]
    fn every_split_point_and_single_bytes_give_the_same_events() {
        let bytes = FIXTURE.as_bytes();
        for i in 0..=bytes.len() {
            assert_eq!(
                decode_chunks(&[&bytes[..i], &bytes[i..]]),
                fixture_events(),
                "split at {i}"
            );
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(decode_chunks(&singles), fixture_events());
    }

    #[test]
    fn crlf_split_between_chunks_is_one_line_break() {
        let out = decode_chunks(&[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]);
        assert_eq!(out, vec![ev(None, "a\nb")]);
    }

    #[test]
    fn event_without_data_is_not_dispatched() {
        assert!(decode_chunks(&[b"event: x\n\n: hi\n\n"]).is_empty());
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let out = decode_chunks(&[b"data: a\xffb\n\n"]);
        assert_eq!(out, vec![ev(None, "a\u{fffd}b")]);
    }

    #[test]
    fn finish_keeps_complete_lines_and_drops_a_cut_line() {
        assert_eq!(
            decode_chunks(&[b"data: [DONE]\n"]),
            vec![ev(None, "[DONE]")]
        );
        assert!(decode_chunks(&[b"data: {\"cut"]).is_empty());
    }

    #[test]
    fn oversized_event_is_an_error_not_growth() {
        let mut d = SseDecoder::with_max_event_bytes(16);
        assert!(d.push(b"data: 0123456789").is_ok());
        assert_eq!(d.push(b"abcdefgh").unwrap_err(), SseError { max_bytes: 16 });
        assert!(d.push(b"\n\n").is_err());
        assert!(d.finish().is_err());
        // Many data lines of one event count too.
        let mut d = SseDecoder::with_max_event_bytes(16);
        assert!(d.push(b"data: 0123456\ndata: 0123456\ndata: 01\n").is_err());
    }

    fn arb_event() -> impl Strategy<Value = (Option<String>, Vec<String>)> {
        (
            proptest::option::of("[a-z_]{1,10}"),
            proptest::collection::vec("[^\r\n]{0,20}", 1..4),
        )
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_stay_bounded(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..32)
        ) {
            let mut d = SseDecoder::with_max_event_bytes(256);
            let total: usize = chunks.iter().map(Vec::len).sum();
            let mut n = 0usize;
            for c in &chunks {
                match d.push(c) {
                    Ok(evs) => {
                        for e in &evs {
                            prop_assert!(e.data.len() <= 256 * 3);
                        }
                        n += evs.len();
                    }
                    Err(_) => break,
                }
            }
            if let Ok(evs) = d.finish() { n += evs.len(); }
            prop_assert!(n <= total / 2 + 1);
        }

        #[test]
        fn rechunking_a_valid_stream_never_changes_the_events(
            events in proptest::collection::vec(arb_event(), 0..8),
            eol in prop_oneof![Just("\n"), Just("\r\n"), Just("\r")],
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let mut text = String::new();
            let mut expected = Vec::new();
            for (name, lines) in &events {
                if let Some(n) = name { text.push_str(&format!("event: {n}{eol}")); }
                for l in lines { text.push_str(&format!("data: {l}{eol}")); }
                text.push_str(eol);
                expected.push(SseEvent { event: name.clone(), data: lines.join("\n"), id: None });
            }
            let bytes = text.as_bytes();
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks = Vec::new();
            let mut last = 0;
            for p in points { chunks.push(&bytes[last..p]); last = p; }
            chunks.push(&bytes[last..]);
            prop_assert_eq!(decode_chunks(&chunks), expected.clone());
            prop_assert_eq!(decode_chunks(&[bytes]), expected);
        }
    }
}
