//! The runtimes' HTTP APIs as the loader uses them: Ollama's model management (`/api/ps`,
//! `/api/tags`, `/api/pull`, and `/api/generate` with only `keep_alive` to load or unload) and the
//! model list of OpenAI-compatible servers (`<baseUrl>/models`).
//!
//! Errors are short strings fit for a status record: the runtime's own `error` text when it sent
//! one, else what went wrong on the wire. They never contain a URL.

use bytes::Bytes;
use futures::StreamExt;
use polylogue_providers::ndjson::NdjsonSplitter;
use serde::Deserialize;
use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

/// Largest body read from a non-streaming answer.
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// A model in memory (`/api/ps`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Loaded {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub model: String,
    /// Memory the model takes (RAM and VRAM).
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub size_vram: u64,
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// A model on disk (`/api/tags`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Installed {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub model: String,
    /// On-disk size of every layer.
    #[serde(default)]
    pub size: u64,
}

#[derive(Debug, Deserialize)]
struct Models<T> {
    #[serde(default = "Vec::new")]
    models: Vec<T>,
}

/// What one Ollama host has: in memory and on disk.
#[derive(Debug, Clone, Default)]
pub struct HostView {
    pub loaded: Vec<Loaded>,
    pub installed: Vec<Installed>,
}

impl HostView {
    /// The loaded model named `name` (Ollama's name matching: case-insensitive, `latest` when
    /// untagged).
    pub fn loaded(&self, name: &str) -> Option<&Loaded> {
        let key = model_key(name);
        self.loaded
            .iter()
            .find(|m| model_key(&m.name) == key || model_key(&m.model) == key)
    }

    /// The installed model named `name`.
    pub fn installed(&self, name: &str) -> Option<&Installed> {
        let key = model_key(name);
        self.installed
            .iter()
            .find(|m| model_key(&m.name) == key || model_key(&m.model) == key)
    }
}

/// One line of a `/api/pull` stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct PullLine {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub digest: Option<String>,
    #[serde(default)]
    pub total: Option<u64>,
    #[serde(default)]
    pub completed: Option<u64>,
    #[serde(default)]
    pub error: Option<String>,
}

/// The loader's HTTP client for the runtimes.
#[derive(Clone)]
pub struct Runtimes {
    http: reqwest::Client,
    /// Bound on `/api/ps`, `/api/tags`, `/models` and unloads.
    probe_timeout: Duration,
    /// Longest silence of a pull stream.
    idle_timeout: Duration,
}

impl Runtimes {
    pub fn new(http: reqwest::Client, probe_timeout: Duration, idle_timeout: Duration) -> Self {
        Self {
            http,
            probe_timeout,
            idle_timeout,
        }
    }

    /// `/api/ps` and `/api/tags` of `host`, together.
    pub async fn view(&self, host: &str) -> Result<HostView, String> {
        let (loaded, installed) = futures::try_join!(self.ps(host), self.tags(host))?;
        Ok(HostView { loaded, installed })
    }

    /// `GET /api/ps`: the models in memory.
    pub async fn ps(&self, host: &str) -> Result<Vec<Loaded>, String> {
        let rb = self.http.get(join(host, "api/ps"));
        let models: Models<Loaded> = self.json(rb, self.probe_timeout).await?;
        Ok(models.models)
    }

    /// `GET /api/tags`: the models on disk.
    pub async fn tags(&self, host: &str) -> Result<Vec<Installed>, String> {
        let rb = self.http.get(join(host, "api/tags"));
        let models: Models<Installed> = self.json(rb, self.probe_timeout).await?;
        Ok(models.models)
    }

    /// `POST /api/pull` (streamed); the lines follow from [`Pull::next`]. Dropping the stream
    /// leaves the pull: Ollama stops a download nobody waits for and resumes it next time.
    pub async fn pull(&self, host: &str, model: &str) -> Result<Pull, String> {
        let rb = self
            .http
            .post(join(host, "api/pull"))
            .json(&serde_json::json!({"model": model, "stream": true}));
        let resp = self.send(rb, self.idle_timeout).await?;
        Ok(Pull {
            body: Box::pin(resp.bytes_stream()),
            splitter: NdjsonSplitter::new(),
            pending: VecDeque::new(),
            idle: self.idle_timeout,
            ended: false,
        })
    }

    /// `POST /api/generate` with no prompt, only the model, `keep_alive` and `options.num_ctx`:
    /// loads the model into memory (or keeps it there longer), within `timeout`. `num_ctx` is the
    /// catalog's context length, the one every chat sends: a runner loaded with another context
    /// size would be reloaded by the first chat.
    pub async fn load(
        &self,
        host: &str,
        model: &str,
        num_ctx: u32,
        keep_alive: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let rb = self
            .http
            .post(join(host, "api/generate"))
            .json(&serde_json::json!({
                "model": model,
                "keep_alive": keep_alive_value(keep_alive),
                "options": {"num_ctx": num_ctx},
            }));
        let reply: serde_json::Value = self.json(rb, timeout).await?;
        match reply.get("error").and_then(serde_json::Value::as_str) {
            Some(e) => Err(e.to_owned()),
            None => Ok(()),
        }
    }

    /// `POST /api/generate` with `keep_alive: 0`: unloads the model.
    pub async fn unload(&self, host: &str, model: &str) -> Result<(), String> {
        let rb = self
            .http
            .post(join(host, "api/generate"))
            .json(&serde_json::json!({"model": model, "keep_alive": 0}));
        self.json::<serde_json::Value>(rb, self.probe_timeout)
            .await
            .map(drop)
    }

    /// `GET <baseUrl>/models` of an OpenAI-compatible server: `Ok` with the model's size when the
    /// server reports one (llama.cpp: `data[].meta.size`).
    pub async fn compatible(&self, base_url: &str, model: &str) -> Result<Option<u64>, String> {
        let rb = self.http.get(join(base_url, "models"));
        let list: serde_json::Value = self.json(rb, self.probe_timeout).await?;
        let data = list
            .get("data")
            .and_then(serde_json::Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let size = |m: &serde_json::Value| m.pointer("/meta/size").and_then(|s| s.as_u64());
        let own = data
            .iter()
            .find(|m| m.get("id").and_then(serde_json::Value::as_str) == Some(model));
        Ok(own.and_then(size).or_else(|| match data {
            [only] => size(only),
            _ => None,
        }))
    }

    async fn send(
        &self,
        rb: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<reqwest::Response, String> {
        let resp = match tokio::time::timeout(timeout, rb.send()).await {
            Err(_) => return Err(format!("no answer within {}", secs(timeout))),
            Ok(Err(e)) => return Err(describe(&e)),
            Ok(Ok(resp)) => resp,
        };
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body = read_body(resp).await.unwrap_or_default();
        Err(error_text(&body).unwrap_or_else(|| format!("HTTP {status}")))
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        rb: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<T, String> {
        let call = async {
            let resp = self.send(rb, timeout).await?;
            let body = read_body(resp).await?;
            serde_json::from_slice(&body).map_err(|e| format!("unexpected answer: {e}"))
        };
        tokio::time::timeout(timeout, call)
            .await
            .unwrap_or_else(|_| Err(format!("no complete answer within {}", secs(timeout))))
    }
}

type ByteStream = Pin<Box<dyn futures::Stream<Item = Result<Bytes, reqwest::Error>> + Send>>;

/// A pull in progress: its NDJSON lines, one at a time.
pub struct Pull {
    body: ByteStream,
    splitter: NdjsonSplitter,
    pending: VecDeque<String>,
    idle: Duration,
    ended: bool,
}

impl Pull {
    /// The next line; `None` when the stream ended. A line that is not JSON, a silence longer
    /// than the idle timeout or a broken connection is an error.
    pub async fn next(&mut self) -> Option<Result<PullLine, String>> {
        loop {
            if let Some(line) = self.pending.pop_front() {
                return Some(
                    serde_json::from_str(&line)
                        .map_err(|e| format!("unexpected pull progress line: {e}")),
                );
            }
            if self.ended {
                return None;
            }
            let lines = match tokio::time::timeout(self.idle, self.body.next()).await {
                Err(_) => {
                    self.ended = true;
                    return Some(Err(format!(
                        "Ollama reported no progress for {}",
                        secs(self.idle)
                    )));
                }
                Ok(None) => {
                    self.ended = true;
                    self.splitter.finish()
                }
                Ok(Some(Err(e))) => {
                    self.ended = true;
                    return Some(Err(describe(&e)));
                }
                Ok(Some(Ok(chunk))) => self.splitter.push(&chunk),
            };
            match lines {
                Ok(lines) => self.pending.extend(lines),
                Err(e) => {
                    self.ended = true;
                    return Some(Err(e.to_string()));
                }
            }
        }
    }
}

/// `keep_alive` as Ollama wants it: a number of seconds (negative = forever) or a Go duration.
fn keep_alive_value(keep_alive: &str) -> serde_json::Value {
    let trimmed = keep_alive.trim();
    if let Ok(n) = trimmed.parse::<i64>() {
        serde_json::Value::from(n)
    } else {
        serde_json::Value::from(trimmed)
    }
}

/// `base` and a relative path, one slash between them.
fn join(base: &str, path: &str) -> String {
    format!("{}/{path}", base.trim_end_matches('/'))
}

/// Ollama's identity of a model name: lower case, without the default registry, `:latest` when
/// untagged (`gemma` ≡ `gemma:latest` ≡ `registry.ollama.ai/library/gemma:latest`).
pub fn model_key(name: &str) -> String {
    let mut n = name.trim().to_ascii_lowercase();
    for prefix in ["registry.ollama.ai/library/", "registry.ollama.ai/"] {
        if let Some(rest) = n.strip_prefix(prefix) {
            n = rest.to_owned();
            break;
        }
    }
    let last = n.rsplit_once('/').map_or(n.as_str(), |(_, l)| l);
    if last.contains(':') {
        n
    } else {
        format!("{n}:latest")
    }
}

/// The `error` of a JSON error body.
fn error_text(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let e = v.get("error")?;
    let text = e
        .as_str()
        .map(str::to_owned)
        .or_else(|| e.get("message").and_then(|m| m.as_str()).map(str::to_owned))?;
    Some(text.chars().take(300).collect())
}

async fn read_body(mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| describe(&e))? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(format!("the answer is larger than {MAX_BODY_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A transport error in a few words, without its URL.
fn describe(e: &reqwest::Error) -> String {
    let root = {
        let mut source: &dyn std::error::Error = e;
        while let Some(next) = source.source() {
            source = next;
        }
        source.to_string()
    };
    if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        format!("cannot connect ({root})")
    } else {
        root
    }
}

fn secs(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_like_ollama() {
        assert_eq!(model_key("Gemma"), "gemma:latest");
        assert_eq!(model_key("gemma:2b"), "gemma:2b");
        assert_eq!(
            model_key("registry.ollama.ai/library/qwen2:0.5b"),
            "qwen2:0.5b"
        );
        assert_eq!(model_key("host:5000/me/m"), "host:5000/me/m:latest");
        let view = HostView {
            loaded: vec![],
            installed: vec![Installed {
                name: "llama3.2:latest".into(),
                model: "llama3.2:latest".into(),
                size: 7,
            }],
        };
        assert_eq!(view.installed("llama3.2").map(|m| m.size), Some(7));
        assert!(view.loaded("llama3.2").is_none());
    }

    #[test]
    fn keep_alive_numbers_are_sent_as_numbers() {
        assert_eq!(keep_alive_value("-1"), serde_json::json!(-1));
        assert_eq!(keep_alive_value("30m"), serde_json::json!("30m"));
        assert_eq!(keep_alive_value("0"), serde_json::json!(0));
    }

    #[test]
    fn error_bodies_give_their_text() {
        assert_eq!(
            error_text(br#"{"error":"model not found"}"#).as_deref(),
            Some("model not found")
        );
        assert_eq!(
            error_text(br#"{"error":{"message":"nope"}}"#).as_deref(),
            Some("nope")
        );
        assert_eq!(error_text(b"<html>"), None);
        assert_eq!(join("http://h:1/", "api/ps"), "http://h:1/api/ps");
    }
}
