//! `GET /api/health` and `GET /api/version`.

use super::User;
use crate::envelope::{EdgeError, Reply};
use crate::middleware::{RequestMeta, bus_context};
use crate::state::{BUILD, EdgeState};
use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use polylogue_contracts::health::DependencyHealth;
use polylogue_contracts::subjects::service;
use polylogue_contracts::{ApiError, ErrorCode};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Services whose NATS presence health reports, and which of them own a database (asked through
/// their `health` verb). Grows as services land.
const SERVICES: &[&str] = &[service::AUTH, service::THREAD];

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Reports NATS, every service (NATS service-API ping) and the database (asked of its owner), with
/// latencies. Anything down → `degraded` (NATS itself down → `unhealthy`), answered with 503 so
/// that balancers and humans see the same truth.
pub async fn health(
    State(state): State<Arc<EdgeState>>,
    Extension(meta): Extension<RequestMeta>,
    headers: HeaderMap,
) -> Result<Reply, EdgeError> {
    let probe = Duration::from_millis(800);
    let nats = state.bus.ping_server().await;
    let nats_ok = nats.is_ok();
    let mut services = serde_json::Map::new();
    services.insert(
        "nats".into(),
        match &nats {
            Ok(rtt) => json!({ "status": "healthy", "latency": millis(*rtt) }),
            Err(e) => json!({ "status": "unhealthy", "error": e.message }),
        },
    );
    let mut all_ok = nats_ok;
    for name in SERVICES {
        let ping = if nats_ok {
            state.bus.ping_service(name, probe).await
        } else {
            Err(ApiError::new(ErrorCode::ServiceUnavailable, "NATS is down"))
        };
        all_ok &= ping.is_ok();
        services.insert(
            (*name).into(),
            match ping {
                Ok(rtt) => json!({ "status": "healthy", "latency": millis(rtt) }),
                Err(e) => json!({ "status": "unhealthy", "error": e.message }),
            },
        );
    }
    // Each owner reports its own store; `database` is their combination (healthy only if all are).
    let mut owners = serde_json::Map::new();
    let mut db_ok = true;
    let mut db_latency = 0;
    let mut providers = Vec::new();
    for name in SERVICES {
        let h = if nats_ok {
            let ctx = bus_context(&meta, &headers);
            match tokio::time::timeout(
                probe,
                state
                    .bus
                    .request::<_, DependencyHealth>(name, "health", &ctx, &json!({})),
            )
            .await
            {
                Ok(Ok(h)) => h,
                Ok(Err(e)) => unknown_db(&e.message),
                Err(_) => unknown_db("the owning service did not answer in time"),
            }
        } else {
            unknown_db("NATS is down")
        };
        db_ok &= h.status == "healthy";
        db_latency = db_latency.max(h.latency);
        if !providers.contains(&h.provider) {
            providers.push(h.provider.clone());
        }
        owners.insert((*name).into(), json!(h));
    }
    all_ok &= db_ok;
    services.insert(
        "database".into(),
        json!({
            "status": if db_ok { "healthy" } else { "unhealthy" },
            "provider": providers.join(","),
            "latency": db_latency,
            "owners": owners,
        }),
    );
    let status = match (nats_ok, all_ok) {
        (_, true) => "healthy",
        (true, false) => "degraded",
        (false, _) => "unhealthy",
    };
    let doc = json!({
        "status": status,
        "uptime": state.started.elapsed().as_secs(),
        "services": services,
        "version": BUILD.version,
        "environment": state.environment,
    });
    if all_ok {
        Ok(Reply::ok(doc))
    } else {
        Err(ApiError::new(
            ErrorCode::ServiceUnavailable,
            format!("the system is {status}"),
        )
        .with_details(doc)
        .into())
    }
}

fn unknown_db(reason: &str) -> DependencyHealth {
    DependencyHealth {
        status: "unhealthy".into(),
        provider: "unknown".into(),
        latency: 0,
        error: Some(reason.to_owned()),
    }
}

pub async fn version(State(state): State<Arc<EdgeState>>, _user: User) -> Reply {
    Reply::ok(json!({
        "version": BUILD.version,
        "buildTime": BUILD.build_time,
        "commit": BUILD.commit,
        "environment": state.environment,
    }))
}
