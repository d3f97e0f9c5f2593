//! `polylogue-ollama-loader`: configuration → telemetry → NATS → serve until SIGTERM/ctrl-c →
//! drain. Jobs still running at shutdown are handed back to the other replicas (or to this one
//! after its restart).

use anyhow::Context;
use polylogue_config::Settings;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env().context("loading configuration")?;
    polylogue_telemetry::init_logs(
        "ollama-loader",
        &settings.telemetry.log_level,
        &settings.telemetry.log_format,
    );
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let bus = polylogue_bus::Bus::connect(&settings.nats, "ollama-loader").await?;
    let running =
        polylogue_ollama_loader::start(&settings, &bus, shutdown.clone(), tracker.clone()).await?;
    let health_bus = bus.clone();
    let ops = polylogue_telemetry::serve_ops(
        &settings.loader.ops_listen,
        Arc::new(move || {
            let bus = health_bus.clone();
            Box::pin(async move { bus.ping_server().await.is_ok() })
        }),
        shutdown.clone(),
        &tracker,
    )
    .await
    .context("binding the ops port")?;
    tracing::info!(ops = %ops, "ollama-loader ready");
    polylogue_telemetry::shutdown_signal().await;
    tracing::info!("shutting down");
    running.stop().await;
    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
    let _ = bus.client().flush().await;
    Ok(())
}
