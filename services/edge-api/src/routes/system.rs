//! `GET /api/health` and `GET /api/version`.

use super::User;
use crate::envelope::{EdgeError, Reply};
use crate::middleware::{RequestMeta, bus_context};
use crate::state::{BUILD, EdgeState};
use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use polylogue_contracts::health::DependencyHealth;
use polylogue_contracts::models::status;
use polylogue_contracts::subjects::service;
use polylogue_contracts::{ApiError, ErrorCode};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// Services that own a database: their store is asked through their `health` verb, and one down
/// makes the system `degraded`.
const SERVICES: &[&str] = &[service::AUTH, service::THREAD];

/// Services pinged through the NATS service API, and whether one missing makes the system
/// `degraded`: the database owners and the inference router are on the request path; the
/// ollama-loader is reported but counts only for local models (`services.ollama`), chats to cloud
/// models do not need it.
const PINGED: &[(&str, bool)] = &[
    (service::AUTH, true),
    (service::THREAD, true),
    (service::INFERENCE, true),
    (service::LOADER, false),
];

/// The catalog's provider ids as `externalApis` names them (the spec's names for the keys).
const EXTERNAL_APIS: &[(&str, &str)] = &[
    ("anthropic", "claude"),
    ("openai", "openai"),
    ("google", "google"),
];

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
    // All pinged at once: a missing service answers "no responders" at once, a hung one costs
    // one probe, not one per service.
    let bus = &state.bus;
    let pings = futures::future::join_all(PINGED.iter().map(|(name, _)| async move {
        if nats_ok {
            bus.ping_service(name, probe).await
        } else {
            Err(ApiError::new(ErrorCode::ServiceUnavailable, "NATS is down"))
        }
    }))
    .await;
    for ((name, required), ping) in PINGED.iter().zip(pings) {
        if *required {
            all_ok &= ping.is_ok();
        }
        services.insert(
            (*name).into(),
            match ping {
                Ok(rtt) => json!({ "status": "healthy", "latency": millis(rtt) }),
                Err(e) => json!({ "status": "unhealthy", "error": e.message }),
            },
        );
    }
    if nats_ok {
        let (ollama, external) = models_health(&state).await;
        services.insert("ollama".into(), ollama);
        services.insert("externalApis".into(), external);
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

/// `services.ollama` and `services.externalApis` from the status every edge replica shares
/// (the ollama-loader's bucket, no provider round trip). `ollama` names one local model — the
/// first loaded one, else the catalog's first local model — and lists them all under `models`;
/// an API is `reachable` when the loader's last check of it succeeded, `unreachable` when it
/// failed, `unknown` when no loader is reporting. Neither changes the overall status.
async fn models_health(state: &EdgeState) -> (Value, Value) {
    let models = state.catalog.models();
    let records = futures::future::join_all(
        models
            .iter()
            .map(|m| super::models::reported_status(state, &m.id)),
    )
    .await;
    let mut local = Vec::new();
    let mut external = serde_json::Map::new();
    for (provider, name) in EXTERNAL_APIS {
        if models.iter().any(|m| m.provider == *provider) {
            external.insert((*name).into(), json!("unknown"));
        }
    }
    for (m, r) in models.iter().zip(&records) {
        if let Some((_, name)) = EXTERNAL_APIS.iter().find(|(p, _)| *p == m.provider) {
            let seen = match r {
                Ok(r) if r.status == status::LOADED => "reachable",
                Ok(_) => "unreachable",
                Err(_) => "unknown",
            };
            // One reachable model makes the API reachable; a check beats no check.
            let rank = |v: &str| match v {
                "reachable" => 2,
                "unreachable" => 1,
                _ => 0,
            };
            let entry = external.entry(*name).or_insert(json!("unknown"));
            if rank(seen) > rank(entry.as_str().unwrap_or_default()) {
                *entry = json!(seen);
            }
        } else {
            let (st, memory) = match r {
                Ok(r) => (r.status.clone(), r.memory_usage.clone()),
                Err(_) => (status::UNAVAILABLE.to_owned(), None),
            };
            local.push(json!({ "modelId": m.id, "status": st, "memory": memory }));
        }
    }
    let shown = local
        .iter()
        .find(|m| m["status"] == status::LOADED)
        .or_else(|| local.first());
    let ollama = match shown {
        Some(m) => json!({
            "status": m["status"],
            "model": m["modelId"],
            "memory": m["memory"],
            "models": local,
        }),
        None => json!({
            "status": status::UNAVAILABLE,
            "model": null,
            "memory": null,
            "models": [],
        }),
    };
    (ollama, Value::Object(external))
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
