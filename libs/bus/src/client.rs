use crate::{ERROR_HEADER, RequestContext, service_name};
use async_nats::client::RequestErrorKind;
use async_nats::service::NATS_SERVICE_ERROR_CODE;
use bytes::Bytes;
use polylogue_contracts::{ApiError, ErrorCode, subjects};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Error)]
#[error("cannot connect to NATS at {url}: {reason}")]
pub struct BusConnectError {
    pub url: String,
    pub reason: String,
}

/// A NATS connection plus the installation's subject prefix and request bound.
#[derive(Clone)]
pub struct Bus {
    client: async_nats::Client,
    prefix: Arc<str>,
    timeout: Duration,
}

impl Bus {
    pub async fn connect(
        settings: &polylogue_config::NatsSettings,
        client_name: &str,
    ) -> Result<Self, BusConnectError> {
        use secrecy::ExposeSecret;
        let fail = |reason: String| BusConnectError {
            url: settings.url.clone(),
            reason,
        };
        let mut options = async_nats::ConnectOptions::new()
            .name(client_name)
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(Duration::from_millis(settings.request_timeout_ms)));
        if let Some(path) = &settings.credentials_file {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| fail(format!("credentials file: {e}")))?;
        } else if let (Some(user), Some(password)) = (&settings.user, &settings.password) {
            options = options.user_and_password(user.clone(), password.expose_secret().to_owned());
        }
        // retry_on_initial_connect makes connect return at once; wait (bounded) for the first
        // connection so a misconfigured URL fails start-up instead of every request.
        let client = options
            .connect(settings.url.as_str())
            .await
            .map_err(|e| fail(e.to_string()))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while client.connection_state() != async_nats::connection::State::Connected {
            if Instant::now() > deadline {
                return Err(fail("no connection within 10 s".into()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self::from_client(
            client,
            &settings.subject_prefix,
            Duration::from_millis(settings.request_timeout_ms),
        ))
    }

    pub fn from_client(client: async_nats::Client, prefix: &str, timeout: Duration) -> Self {
        Self {
            client,
            prefix: Arc::from(prefix),
            timeout,
        }
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn subject(&self, service: &str, verb: &str) -> String {
        subjects::subject(&self.prefix, service, verb)
    }

    /// Sends `request` to `<prefix>.<service>.<verb>` and decodes the reply.
    /// No responder → `SERVICE_UNAVAILABLE` at once; no reply in time → `GATEWAY_TIMEOUT`.
    pub async fn request<Q, R>(
        &self,
        service: &str,
        verb: &str,
        ctx: &RequestContext,
        request: &Q,
    ) -> Result<R, ApiError>
    where
        Q: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        self.request_with_timeout(service, verb, ctx, request, self.timeout)
            .await
    }

    /// [`Bus::request`] with its own bound instead of `nats.request_timeout_ms`, for verbs that
    /// take seconds by nature (a summary is a whole model call).
    pub async fn request_with_timeout<Q, R>(
        &self,
        service: &str,
        verb: &str,
        ctx: &RequestContext,
        request: &Q,
        timeout: Duration,
    ) -> Result<R, ApiError>
    where
        Q: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let payload = serde_json::to_vec(request).map_err(|_| ApiError::internal())?;
        let subject = self.subject(service, verb);
        let started = Instant::now();
        let reply = self
            .raw_request(subject, ctx, Bytes::from(payload), service, timeout)
            .await;
        metrics::histogram!("polylogue_bus_request_seconds", "service" => service.to_owned(), "verb" => verb.to_owned())
            .record(started.elapsed().as_secs_f64());
        let message = reply?;
        if let Some(headers) = &message.headers
            && headers.get(NATS_SERVICE_ERROR_CODE).is_some()
        {
            return Err(decode_error(headers));
        }
        serde_json::from_slice(&message.payload).map_err(|error| {
            tracing::error!(%error, service, verb, "undecodable reply");
            ApiError::internal()
        })
    }

    async fn raw_request(
        &self,
        subject: String,
        ctx: &RequestContext,
        payload: Bytes,
        service: &str,
        timeout: Duration,
    ) -> Result<async_nats::Message, ApiError> {
        let request = async_nats::Request::new()
            .payload(payload)
            .headers(ctx.to_headers(timeout))
            .timeout(Some(timeout));
        self.client
            .send_request(subject, request)
            .await
            .map_err(|e| map_request_error(e.kind(), service))
    }

    /// Pings a service through the NATS service API; returns the round-trip time.
    pub async fn ping_service(
        &self,
        service: &str,
        timeout: Duration,
    ) -> Result<Duration, ApiError> {
        let subject = format!("$SRV.PING.{}", service_name(&self.prefix, service));
        let started = Instant::now();
        let request = async_nats::Request::new()
            .payload(Bytes::new())
            .timeout(Some(timeout));
        self.client
            .send_request(subject, request)
            .await
            .map_err(|e| map_request_error(e.kind(), service))?;
        Ok(started.elapsed())
    }

    /// Round trip to the NATS server itself.
    pub async fn ping_server(&self) -> Result<Duration, ApiError> {
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(2), self.client.flush())
            .await
            .map_err(|_| ApiError::new(ErrorCode::ServiceUnavailable, "NATS did not answer"))?
            .map_err(|_| ApiError::new(ErrorCode::ServiceUnavailable, "NATS is unreachable"))?;
        Ok(started.elapsed())
    }
}

fn map_request_error(kind: RequestErrorKind, service: &str) -> ApiError {
    match kind {
        RequestErrorKind::NoResponders => ApiError::new(
            ErrorCode::ServiceUnavailable,
            format!("the {service} service is unavailable"),
        ),
        RequestErrorKind::TimedOut => ApiError::new(
            ErrorCode::GatewayTimeout,
            format!("the {service} service did not answer in time"),
        ),
        RequestErrorKind::MaxPayloadExceeded => {
            ApiError::new(ErrorCode::PayloadTooLarge, "the request is too large")
        }
        RequestErrorKind::InvalidSubject | RequestErrorKind::Other => ApiError::new(
            ErrorCode::ServiceUnavailable,
            "the message bus is unavailable",
        ),
    }
}

fn decode_error(headers: &async_nats::HeaderMap) -> ApiError {
    headers
        .get(ERROR_HEADER)
        .and_then(|v| serde_json::from_str::<ApiError>(v.as_str()).ok())
        .unwrap_or_else(ApiError::internal)
}
