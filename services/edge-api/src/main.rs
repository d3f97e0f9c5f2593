//! `polylogue-edge-api`: configuration → telemetry → NATS → serve until SIGTERM/ctrl-c → drain.

use anyhow::Context;
use polylogue_config::Settings;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env().context("loading configuration")?;
    polylogue_telemetry::init_logs(
        "edge-api",
        &settings.telemetry.log_level,
        &settings.telemetry.log_format,
    );
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let bus = polylogue_bus::Bus::connect(&settings.nats, "edge-api").await?;
    let running =
        polylogue_edge_api::start(&settings, bus.clone(), shutdown.clone(), &tracker).await?;
    let health_bus = bus.clone();
    let ops = polylogue_telemetry::serve_ops(
        &settings.edge.ops_listen,
        Arc::new(move || {
            let bus = health_bus.clone();
            Box::pin(async move { bus.ping_server().await.is_ok() })
        }),
        shutdown.clone(),
        &tracker,
    )
    .await
    .context("binding the ops port")?;
    tracing::info!(http = %running.addr, ops = %ops, "edge-api ready");
    polylogue_telemetry::shutdown_signal().await;
    tracing::info!("shutting down; letting open requests finish");
    shutdown.cancel();
    tracker.close();
    let grace = Duration::from_secs(settings.edge.shutdown_grace_secs);
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!("open requests did not finish within the grace period");
    }
    let _ = bus.client().flush().await;
    Ok(())
}
