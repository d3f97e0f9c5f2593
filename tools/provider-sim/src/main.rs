//! `provider-sim`: serves the simulated provider APIs until SIGTERM or ctrl-c.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use polylogue_provider_sim::{SimConfig, SimOptions, SimServer};

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
    let options = SimOptions {
        require_auth_openai: args.require_auth_openai,
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
