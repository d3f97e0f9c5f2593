use crate::{ERROR_HEADER, RequestContext, service_name};
use async_nats::service::ServiceExt;
use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use polylogue_contracts::{ApiError, ErrorCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// An endpoint's handler on raw bytes; build one with [`handler`].
pub type Handler =
    Arc<dyn Fn(RequestContext, Bytes) -> BoxFuture<'static, Result<Bytes, ApiError>> + Send + Sync>;

/// Wraps a typed async function as a [`Handler`]: JSON in, JSON out; an undecodable request is a
/// `VALIDATION_ERROR`, never a panic.
pub fn handler<Q, R, F, Fut>(f: F) -> Handler
where
    Q: DeserializeOwned + Send + 'static,
    R: Serialize + Send + 'static,
    F: Fn(RequestContext, Q) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, ApiError>> + Send + 'static,
{
    let f = Arc::new(f);
    Arc::new(move |ctx, payload: Bytes| {
        let f = Arc::clone(&f);
        Box::pin(async move {
            let request: Q = serde_json::from_slice(&payload).map_err(|e| {
                ApiError::new(
                    ErrorCode::ValidationError,
                    format!("malformed request: {e}"),
                )
            })?;
            let reply = f(ctx, request).await?;
            serde_json::to_vec(&reply)
                .map(Bytes::from)
                .map_err(|_| ApiError::internal())
        })
    })
}

/// A service registered with the NATS service API: endpoints `<prefix>.<service>.<verb>` in the
/// default queue group, so replicas share the load.
pub struct ServiceHost {
    service: async_nats::service::Service,
    group: async_nats::service::Group,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    /// The receive loops only, so `stop` can wait for every endpoint to unsubscribe.
    loops: TaskTracker,
    in_flight: Arc<Semaphore>,
    service_label: String,
    client: async_nats::Client,
}

impl ServiceHost {
    pub async fn start(
        bus: &crate::Bus,
        service: &str,
        version: &str,
        description: &str,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Result<Self, async_nats::Error> {
        let svc = bus
            .client()
            .service_builder()
            .description(description)
            .start(service_name(bus.prefix(), service), version)
            .await?;
        let group = svc.group(format!("{}.{service}", bus.prefix()));
        Ok(Self {
            service: svc,
            group,
            shutdown: shutdown.child_token(),
            tracker,
            loops: TaskTracker::new(),
            client: bus.client().clone(),
            in_flight: Arc::new(Semaphore::new(1024)),
            service_label: service.to_owned(),
        })
    }

    /// Adds an endpoint; requests are handled concurrently (bounded) until shutdown.
    pub async fn endpoint(&self, verb: &str, handler: Handler) -> Result<(), async_nats::Error> {
        let mut endpoint = self.group.endpoint(verb).await?;
        let shutdown = self.shutdown.clone();
        let tracker = self.tracker.clone();
        let in_flight = Arc::clone(&self.in_flight);
        let verb = verb.to_owned();
        let service = self.service_label.clone();
        self.loops.spawn(async move {
            loop {
                let request = tokio::select! {
                    () = shutdown.cancelled() => break,
                    next = endpoint.next() => match next {
                        Some(request) => request,
                        None => break,
                    },
                };
                let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
                    break;
                };
                let handler = Arc::clone(&handler);
                let verb = verb.clone();
                let service = service.clone();
                tracker.spawn(async move {
                    let _permit = permit;
                    let ctx = RequestContext::from_headers(request.message.headers.as_ref());
                    let payload = request.message.payload.clone();
                    let span = tracing::info_span!("request", request_id = %ctx.request_id, service = %service, verb = %verb);
                    // Waited in line past the caller's deadline: nobody will read the answer.
                    let result = if ctx.expired() {
                        Err(ApiError::new(ErrorCode::GatewayTimeout, "the request expired before it was handled"))
                    } else {
                        tracing::Instrument::instrument(handler(ctx.clone(), payload), span).await
                    };
                    let outcome = match &result {
                        Ok(_) => "ok",
                        Err(e) => e.code.as_str(),
                    };
                    metrics::counter!("polylogue_bus_handled_total", "service" => service, "verb" => verb.clone(), "outcome" => outcome).increment(1);
                    let sent = match result {
                        Ok(body) => request.respond(Ok(body)).await,
                        Err(error) => {
                            if error.code == ErrorCode::InternalError {
                                tracing::error!(request_id = %ctx.request_id, verb = %verb, message = %error.message, "request failed");
                            }
                            let mut headers = async_nats::HeaderMap::new();
                            let json = serde_json::to_string(&error).unwrap_or_default();
                            headers.insert(ERROR_HEADER, json.as_str());
                            let status = async_nats::service::error::Error {
                                status: error.code.as_str().to_owned(),
                                code: usize::from(error.code.http_status()),
                            };
                            request.respond_with_headers(Err(status), headers).await
                        }
                    };
                    if let Err(error) = sent {
                        tracing::warn!(request_id = %ctx.request_id, %error, "reply could not be sent");
                    }
                });
            }
            // Unsubscribe explicitly so NATS stops routing here before we say we are gone.
            if let Err(error) = endpoint.stop().await {
                tracing::warn!(%error, "endpoint unsubscribe failed");
            }
        });
        Ok(())
    }

    /// Stops taking requests: every endpoint unsubscribes, the service stops answering pings,
    /// and the server has seen both before this returns, so callers get "no responders" at once.
    /// Requests already taken finish on the caller's tracker.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.loops.close();
        self.loops.wait().await;
        if let Err(error) = self.service.stop().await {
            tracing::warn!(%error, "service stop failed");
        }
        if let Err(error) = self.client.flush().await {
            tracing::warn!(%error, "flush after stop failed");
        }
    }
}
