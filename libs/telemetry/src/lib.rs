//! Telemetry for every service: JSON logs through `tracing`, a process-wide Prometheus recorder,
//! and the small ops HTTP port each service exposes (`/metrics`, `/healthz`).

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing_subscriber::EnvFilter;

/// Installs the global `tracing` subscriber. Call once, from `main`.
pub fn init_logs(service: &str, filter: &str, format: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if format == "pretty" {
        builder.try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    };
    if result.is_ok() {
        tracing::info!(service, "logging started");
    }
}

/// The process-wide Prometheus recorder (several services may share a process in tests).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ])
                .and_then(|b| {
                    // A ratio around 1, not a latency.
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full(
                            "polylogue_token_estimate_ratio".into(),
                        ),
                        &[0.5, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.5, 2.0, 3.0],
                    )
                })
                .and_then(|b| {
                    // Summary lengths in tokens, around the 300-700 bounds.
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full(
                            "polylogue_summary_tokens".into(),
                        ),
                        &[
                            50.0, 100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0, 800.0, 1000.0,
                        ],
                    )
                })
                .and_then(|b| {
                    // A summary is a whole model call: seconds to minutes.
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full(
                            "polylogue_summary_seconds".into(),
                        ),
                        &[0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0],
                    )
                })
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; metrics then go there.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// A readiness check: `true` when the service can do its work.
pub type HealthCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync + 'static>;

/// Serves `/metrics` and `/healthz` on `addr` until `shutdown`. Returns the bound address.
pub async fn serve_ops(
    addr: &str,
    health: HealthCheck,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> std::io::Result<SocketAddr> {
    let handle = metrics_handle();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                async move { handle.render() }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let health = Arc::clone(&health);
                async move {
                    if health().await {
                        (StatusCode::OK, "ok")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tracker.spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::warn!(%error, "ops server stopped");
        }
    });
    Ok(bound)
}

/// Resolves on SIGTERM or ctrl-c.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
