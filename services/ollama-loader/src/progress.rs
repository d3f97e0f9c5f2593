//! A job's overall progress from Ollama's pull lines: the download is 0–90 % (bytes completed
//! over bytes announced, summed over the layers seen so far), loading into memory the rest.
//! Progress never goes back: new layers growing the total, or a resumed pull starting over,
//! leave it where it was.

use crate::ollama::PullLine;
use std::collections::HashMap;

/// Where the download ends and loading begins, in percent.
pub const DOWNLOADED: f64 = 90.0;
/// Done.
pub const COMPLETE: f64 = 100.0;

/// Phase of a `pulling <digest>` line.
pub const DOWNLOADING: &str = "downloading";

/// Byte counts of one pull, per layer.
#[derive(Debug, Clone, Default)]
pub struct PullProgress {
    /// digest → (total, completed).
    layers: HashMap<String, (u64, u64)>,
    /// The highest progress reported so far (at least the job's stored progress).
    floor: f64,
    /// Set once Ollama moved past the downloads (verifying, writing the manifest, success).
    downloaded: bool,
}

impl PullProgress {
    /// Progress starts at `floor`: what the job record already shows.
    pub fn new(floor: f64) -> Self {
        Self {
            floor: floor.clamp(0.0, COMPLETE),
            ..Self::default()
        }
    }

    /// Takes one line in; returns its phase (`None` for a line without a status).
    pub fn observe(&mut self, line: &PullLine) -> Option<String> {
        if let Some(digest) = &line.digest {
            let entry = self.layers.entry(digest.clone()).or_insert((0, 0));
            if let Some(total) = line.total {
                entry.0 = entry.0.max(total);
            }
            if let Some(completed) = line.completed {
                entry.1 = entry.1.max(completed);
            }
        }
        let status = line.status.as_deref()?;
        if status.starts_with("pulling ") && status != "pulling manifest" {
            return Some(DOWNLOADING.to_owned());
        }
        if matches!(
            status,
            "verifying sha256 digest"
                | "writing manifest"
                | "removing any unused layers"
                | "success"
        ) {
            self.downloaded = true;
        }
        Some(status.to_owned())
    }

    /// Bytes (completed, total) over the layers seen so far.
    pub fn bytes(&self) -> (u64, u64) {
        self.layers.values().fold((0, 0), |(c, t), (total, done)| {
            (
                c.saturating_add((*done).min(*total)),
                t.saturating_add(*total),
            )
        })
    }

    /// Overall percent, never below what was reported before.
    pub fn percent(&mut self) -> f64 {
        let (completed, total) = self.bytes();
        let now = if self.downloaded {
            DOWNLOADED
        } else if total == 0 {
            0.0
        } else {
            DOWNLOADED * completed as f64 / total as f64
        };
        let rounded = (now * 10.0).floor() / 10.0;
        self.floor = self.floor.max(rounded.min(DOWNLOADED));
        self.floor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(digest: &str, total: u64, completed: Option<u64>) -> PullLine {
        PullLine {
            status: Some(format!("pulling {digest}")),
            digest: Some(format!("sha256:{digest}")),
            total: Some(total),
            completed,
            error: None,
        }
    }

    fn status(s: &str) -> PullLine {
        PullLine {
            status: Some(s.to_owned()),
            ..PullLine::default()
        }
    }

    #[test]
    fn bytes_map_to_ninety_percent_and_never_go_back() {
        let mut p = PullProgress::new(0.0);
        assert_eq!(
            p.observe(&status("pulling manifest")).as_deref(),
            Some("pulling manifest")
        );
        assert_eq!(p.percent(), 0.0);
        assert_eq!(
            p.observe(&layer("a", 100, Some(50))).as_deref(),
            Some(DOWNLOADING)
        );
        assert_eq!(p.percent(), 45.0);
        // A second layer grows the total: the ratio drops, the progress does not.
        p.observe(&layer("b", 100, None));
        assert_eq!(p.percent(), 45.0);
        // Repeated or older lines never lower a layer's count.
        p.observe(&layer("a", 100, Some(20)));
        assert_eq!(p.bytes(), (50, 200));
        p.observe(&layer("a", 100, Some(100)));
        p.observe(&layer("b", 100, Some(100)));
        assert_eq!(p.percent(), 90.0);
        p.observe(&status("verifying sha256 digest"));
        p.observe(&status("success"));
        assert_eq!(p.percent(), 90.0);
    }

    #[test]
    fn a_resumed_pull_starts_at_the_stored_progress() {
        let mut p = PullProgress::new(60.0);
        p.observe(&layer("a", 1000, Some(100)));
        assert_eq!(p.percent(), 60.0);
        p.observe(&layer("a", 1000, Some(800)));
        assert_eq!(p.percent(), 72.0);
    }
}
