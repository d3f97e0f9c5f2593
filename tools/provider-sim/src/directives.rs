//! Per-request `[sim key=value ...]` directives.

use std::time::Duration;

/// Overrides parsed from the last user message.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Directives {
    pub ttft: Option<Duration>,
    pub gap: Option<Duration>,
    pub tokens: Option<u32>,
    pub header_delay: Option<Duration>,
    pub fail: Option<u16>,
    pub retry_after: Option<u64>,
    pub fail_times: Option<u32>,
    pub id: Option<String>,
    pub cut_after: Option<u32>,
    pub abort_after: Option<u32>,
    pub malformed_after: Option<u32>,
    pub summary_words: Option<u32>,
    pub text: Option<String>,
}

impl Directives {
    /// Parses every `[sim ...]` block in `text`; later values win.
    pub(crate) fn parse(text: &str) -> Self {
        let mut out = Self::default();
        let mut rest = text;
        while let Some(start) = rest.find("[sim") {
            let after = &rest[start + 4..];
            if !(after.starts_with(char::is_whitespace) || after.starts_with(']')) {
                rest = after;
                continue;
            }
            let end = after.find(']').unwrap_or(after.len());
            for pair in after[..end].split_whitespace() {
                if let Some((key, value)) = pair.split_once('=') {
                    out.set(key, value);
                }
            }
            rest = &after[end..];
        }
        out
    }

    fn set(&mut self, key: &str, value: &str) {
        let ms = || value.parse::<u64>().ok().map(Duration::from_millis);
        let num = || value.parse::<u32>().ok();
        match key {
            "ttft" => self.ttft = ms(),
            "gap" => self.gap = ms(),
            "tokens" => self.tokens = num(),
            "header_delay" => self.header_delay = ms(),
            "fail" => {
                self.fail = value
                    .parse::<u16>()
                    .ok()
                    .filter(|s| (400..=599).contains(s));
            }
            "retry_after" => self.retry_after = value.parse().ok(),
            "fail_times" => self.fail_times = num(),
            "id" => self.id = Some(value.to_owned()),
            "cut_after" => self.cut_after = num(),
            "abort_after" => self.abort_after = num(),
            "malformed_after" => self.malformed_after = num(),
            "summary_words" => self.summary_words = num(),
            "text" if !value.is_empty() => self.text = Some(value.to_owned()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keys_and_ignores_unknown() {
        let d = Directives::parse(
            "hello [sim ttft=5 gap=2 tokens=3 fail=429 retry_after=7 id=a fail_times=2 bogus=1 cut_after=1 malformed_after=0 summary_words=9 text=w header_delay=4 abort_after=2] bye",
        );
        assert_eq!(d.ttft, Some(Duration::from_millis(5)));
        assert_eq!(d.gap, Some(Duration::from_millis(2)));
        assert_eq!(d.tokens, Some(3));
        assert_eq!(d.fail, Some(429));
        assert_eq!(d.retry_after, Some(7));
        assert_eq!(d.id.as_deref(), Some("a"));
        assert_eq!(d.fail_times, Some(2));
        assert_eq!(d.cut_after, Some(1));
        assert_eq!(d.abort_after, Some(2));
        assert_eq!(d.malformed_after, Some(0));
        assert_eq!(d.summary_words, Some(9));
        assert_eq!(d.text.as_deref(), Some("w"));
        assert_eq!(d.header_delay, Some(Duration::from_millis(4)));
    }

    #[test]
    fn ignores_lookalikes_and_handles_unterminated() {
        assert_eq!(
            Directives::parse("[simple tokens=3]"),
            Directives::default()
        );
        assert_eq!(Directives::parse("[sim tokens=3").tokens, Some(3));
        assert_eq!(Directives::parse("[sim]").tokens, None);
        let d = Directives::parse("[sim tokens=3] and [sim tokens=4 fail=999]");
        assert_eq!(d.tokens, Some(4));
        assert_eq!(d.fail, None);
    }
}
