//! `polylogue-thread`: configuration → telemetry → NATS → serve until SIGTERM/ctrl-c → drain.

use anyhow::Context;
use polylogue_config::Settings;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env().context("loading configuration")?;
    polylogue_telemetry::init_logs(
        "thread",
        &settings.telemetry.log_level,
        &settings.telemetry.log_format,
    );
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let bus = polylogue_bus::Bus::connect(&settings.nats, "thread").await?;
    let store = polylogue_thread::open_store(&settings).await?;
    let search = polylogue_thread::open_search(&settings).await?;
    let running = polylogue_thread::start(
        &settings,
        &bus,
        Arc::clone(&store),
        search,
        shutdown.clone(),
        tracker.clone(),
    )
    .await?;
    let health_bus = bus.clone();
    let ops = polylogue_telemetry::serve_ops(
        &settings.thread.ops_listen,
        Arc::new(move || {
            let store = Arc::clone(&store);
            let bus = health_bus.clone();
            Box::pin(async move { store.ping().await.is_ok() && bus.ping_server().await.is_ok() })
        }),
        shutdown.clone(),
        &tracker,
    )
    .await
    .context("binding the ops port")?;
    tracing::info!(ops = %ops, "thread service ready");
    polylogue_telemetry::shutdown_signal().await;
    tracing::info!("shutting down");
    shutdown.cancel();
    running.stop().await;
    tracker.close();
    tracker.wait().await;
    let _ = bus.client().flush().await;
    Ok(())
}
