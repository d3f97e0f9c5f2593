//! `provider-sim`: serves the simulated provider APIs until SIGTERM or ctrl-c.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use polylogue_provider_sim::{
    OllamaModel, OllamaOptions, SimConfig, SimOptions, SimServer, default_ollama_models,
};

/// Simulates the Anthropic, OpenAI, Gemini and Ollama HTTP APIs on one port.
#[derive(Debug, Parser)]
#[command(name = "provider-sim", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "SIM_LISTEN", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Delay before the first token, after the headers (ms).
    #[arg(long, env = "SIM_TTFT_MS", default_value_t = 0)]
    ttft_ms: u64,
    /// Delay between tokens (ms).
    #[arg(long, env = "SIM_GAP_MS", default_value_t = 0)]
    gap_ms: u64,
    /// Tokens in a default reply.
    #[arg(long, env = "SIM_REPLY_TOKENS", default_value_t = 12)]
    reply_tokens: u32,
    /// Delay before the response headers (ms).
    #[arg(long, env = "SIM_HEADER_DELAY_MS", default_value_t = 0)]
    header_delay_ms: u64,
    /// Words in a summary-mode reply.
    #[arg(long, env = "SIM_SUMMARY_WORDS", default_value_t = 400)]
    summary_words: u32,
    /// Number of requests kept for `GET /_sim/requests`.
    #[arg(long, env = "SIM_RECORD", default_value_t = 1000)]
    record: usize,
    /// Reject OpenAI requests that carry no key.
    #[arg(long, env = "SIM_REQUIRE_AUTH_OPENAI")]
    require_auth_openai: bool,
    /// Ollama models installed at start, comma-separated (`name[:tag]`); empty for none
    /// [default: llama3.2:latest,qwen2.5:7b,mistral:latest].
    #[arg(long, env = "SIM_OLLAMA_INSTALLED")]
    ollama_installed: Option<String>,
    /// Ollama models loaded at start, comma-separated (installed too when missing).
    #[arg(long, env = "SIM_OLLAMA_LOADED", default_value = "")]
    ollama_loaded: String,
    /// Simulated download speed of Ollama `/api/pull` (bytes per second; 0 stalls pulls).
    #[arg(
        long,
        env = "SIM_OLLAMA_PULL_BYTES_PER_SEC",
        default_value_t = 200_000_000
    )]
    ollama_pull_bytes_per_sec: u64,
    /// Weights-layer size of Ollama models that are pulled or installed by name (bytes).
    #[arg(long, env = "SIM_OLLAMA_MODEL_BYTES", default_value_t = 120_000_000)]
    ollama_model_bytes: u64,
    /// Interval between Ollama pull progress lines (ms).
    #[arg(long, env = "SIM_OLLAMA_PROGRESS_MS", default_value_t = 60)]
    ollama_progress_ms: u64,
    /// Time to load an Ollama model into memory (ms).
    #[arg(long, env = "SIM_OLLAMA_LOAD_MS", default_value_t = 300)]
    ollama_load_ms: u64,
    /// Default `keep_alive` of loaded Ollama models (s).
    #[arg(long, env = "SIM_OLLAMA_KEEP_ALIVE_SECS", default_value_t = 300)]
    ollama_keep_alive_secs: u64,
    /// Answer Ollama chats and generations only for installed models (404 otherwise, as
    /// Ollama does) instead of for any model name.
    #[arg(long, env = "SIM_OLLAMA_STRICT_MODELS")]
    ollama_strict_models: bool,
}

/// Comma-separated names, without blanks.
fn names(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|n| !n.is_empty())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = SimConfig {
        ttft: Duration::from_millis(args.ttft_ms),
        gap: Duration::from_millis(args.gap_ms),
        reply_tokens: args.reply_tokens,
        header_delay: Duration::from_millis(args.header_delay_ms),
        summary_words: args.summary_words,
        record: args.record,
    };
    let defaults = default_ollama_models();
    let installed = match &args.ollama_installed {
        None => defaults,
        Some(list) => names(list)
            .map(|name| {
                defaults
                    .iter()
                    .find(|m| m.is_named(name))
                    .cloned()
                    .unwrap_or_else(|| OllamaModel::new(name, args.ollama_model_bytes))
            })
            .collect(),
    };
    let options = SimOptions {
        require_auth_openai: args.require_auth_openai,
        ollama: OllamaOptions {
            installed,
            loaded: names(&args.ollama_loaded).map(str::to_owned).collect(),
            pull_bytes_per_sec: args.ollama_pull_bytes_per_sec,
            pull_weights_bytes: args.ollama_model_bytes,
            progress_interval: Duration::from_millis(args.ollama_progress_ms),
            load_time: Duration::from_millis(args.ollama_load_ms),
            keep_alive: Duration::from_secs(args.ollama_keep_alive_secs),
            strict_models: args.ollama_strict_models,
        },
    };
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let server = SimServer::start_with(config, options, listener).await?;
    {
        let mut err = std::io::stderr().lock();
        writeln!(err, "provider-sim listening on {}", server.base_url())?;
        err.flush()?;
    }
    shutdown_signal().await;
    server.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
