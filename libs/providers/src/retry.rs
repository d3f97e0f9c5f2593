//! Retries before the first token, with exponential backoff and full jitter.

use crate::{
    Completion, CompletionRequest, Provider, ProviderError, SecretString, StreamEvent, TokenStream,
};
use futures::StreamExt;
use rand::Rng;
use std::time::Duration;

/// Retries: exponential backoff with full jitter.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in total, including the first (values below 1 count as 1).
    pub max_attempts: u32,
    /// Backoff cap after the first failure.
    pub base_delay: Duration,
    /// Largest backoff cap.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(4),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (1-based): uniformly random in
    /// `[0, min(max_delay, base_delay * 2^(attempt-1))]` ("full jitter").
    pub fn delay(&self, attempt: u32) -> Duration {
        let cap = self.cap(attempt);
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }

    /// The upper bound of [`RetryPolicy::delay`] for `attempt`.
    fn cap(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(31);
        self.base_delay
            .checked_mul(1u32 << exp)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }
}

/// Calls `provider.stream` and pulls events until the first Token (or Done), buffering those
/// before it; when the call or the stream fails with a retryable error before the first token,
/// waits `policy.delay(n)` and tries again, up to `max_attempts`. Returns a stream replaying the
/// buffered events and then the rest, plus the number of attempts made. A Done before any token
/// (empty reply) is a success. Nothing is retried after the first token.
pub async fn stream_with_retry(
    provider: &dyn Provider,
    key: Option<&SecretString>,
    req: &CompletionRequest,
    policy: &RetryPolicy,
) -> Result<(TokenStream, u32), ProviderError> {
    let max = policy.max_attempts.max(1);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match first_events(provider, key, req).await {
            Ok((head, rest)) => {
                let head = futures::stream::iter(head.into_iter().map(Ok));
                return Ok((Box::pin(head.chain(rest)), attempt));
            }
            Err(e) if e.retryable() && attempt < max => {
                tracing::debug!(
                    provider = provider.kind().as_str(),
                    attempt,
                    error = %e,
                    "retrying before the first token"
                );
                tokio::time::sleep(policy.delay(attempt)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Opens the stream and reads up to the first Token or Done.
async fn first_events(
    provider: &dyn Provider,
    key: Option<&SecretString>,
    req: &CompletionRequest,
) -> Result<(Vec<StreamEvent>, TokenStream), ProviderError> {
    let mut stream = provider.stream(key, req).await?;
    let mut head = Vec::new();
    loop {
        match stream.next().await {
            Some(Ok(ev)) => {
                let first = matches!(ev, StreamEvent::Token(_) | StreamEvent::Done { .. });
                head.push(ev);
                if first {
                    return Ok((head, stream));
                }
            }
            Some(Err(e)) => return Err(e),
            None => {
                return Err(ProviderError::protocol("the stream ended before any token"));
            }
        }
    }
}

/// [`stream_with_retry`] for `generate`: retryable errors are retried up to `max_attempts`.
pub async fn generate_with_retry(
    provider: &dyn Provider,
    key: Option<&SecretString>,
    req: &CompletionRequest,
    policy: &RetryPolicy,
) -> Result<(Completion, u32), ProviderError> {
    let max = policy.max_attempts.max(1);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match provider.generate(key, req).await {
            Ok(c) => return Ok((c, attempt)),
            Err(e) if e.retryable() && attempt < max => {
                tracing::debug!(
                    provider = provider.kind().as_str(),
                    attempt,
                    error = %e,
                    "retrying generate"
                );
                tokio::time::sleep(policy.delay(attempt)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ProviderKind, Usage};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn delay_is_bounded_by_the_exponential_cap() {
        let p = RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(350),
        };
        assert_eq!(p.cap(1), Duration::from_millis(100));
        assert_eq!(p.cap(2), Duration::from_millis(200));
        assert_eq!(p.cap(3), Duration::from_millis(350));
        assert_eq!(p.cap(100), Duration::from_millis(350));
        for attempt in 0..40 {
            assert!(p.delay(attempt) <= p.cap(attempt));
        }
        let spread: std::collections::HashSet<Duration> = (0..50).map(|_| p.delay(3)).collect();
        assert!(spread.len() > 1, "full jitter should vary");
        let zero = RetryPolicy {
            base_delay: Duration::ZERO,
            ..p
        };
        assert_eq!(zero.delay(3), Duration::ZERO);
    }

    /// One call's outcome: a call error, or the items of the stream.
    type Script = Result<Vec<Result<StreamEvent, ProviderError>>, ProviderError>;

    /// A scripted provider: each call pops the next script.
    struct Scripted {
        calls: AtomicU32,
        scripts: Mutex<Vec<Script>>,
    }

    #[async_trait::async_trait]
    impl Provider for Scripted {
        fn kind(&self) -> ProviderKind {
            ProviderKind::Ollama
        }
        async fn generate(
            &self,
            _: Option<&SecretString>,
            _: &CompletionRequest,
        ) -> Result<Completion, ProviderError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            match self.scripts.lock().unwrap().remove(0) {
                Ok(_) => Ok(Completion {
                    content: "ok".into(),
                    usage: Usage::default(),
                    finish_reason: None,
                }),
                Err(e) => Err(e),
            }
        }
        async fn stream(
            &self,
            _: Option<&SecretString>,
            _: &CompletionRequest,
        ) -> Result<TokenStream, ProviderError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let items = self.scripts.lock().unwrap().remove(0)?;
            Ok(Box::pin(futures::stream::iter(items)))
        }
        async fn status(&self, _: Option<&SecretString>) -> Result<(), ProviderError> {
            Ok(())
        }
        async fn verify_key(&self, _: &SecretString) -> Result<(), ProviderError> {
            Ok(())
        }
    }

    fn req() -> CompletionRequest {
        CompletionRequest {
            model: "m".into(),
            system: None,
            messages: Vec::new(),
            temperature: None,
            max_tokens: 1,
            num_ctx: None,
        }
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        }
    }

    fn unavailable() -> ProviderError {
        ProviderError::Unavailable {
            status: Some(503),
            message: "down".into(),
        }
    }

    async fn collect(s: TokenStream) -> Vec<Result<StreamEvent, ProviderError>> {
        s.collect().await
    }

    #[tokio::test]
    async fn retries_errors_before_the_first_token_and_replays_buffered_events() {
        let usage = StreamEvent::Usage(Usage {
            input_tokens: Some(1),
            output_tokens: None,
        });
        let p = Scripted {
            calls: AtomicU32::new(0),
            scripts: Mutex::new(vec![
                Err(unavailable()),
                Ok(vec![Ok(usage.clone()), Err(ProviderError::protocol("cut"))]),
                Ok(vec![
                    Ok(usage.clone()),
                    Ok(StreamEvent::Token("a".into())),
                    Ok(StreamEvent::Token("b".into())),
                    Ok(StreamEvent::Done {
                        finish_reason: None,
                    }),
                ]),
            ]),
        };
        let (s, attempts) = stream_with_retry(&p, None, &req(), &fast()).await.unwrap();
        assert_eq!(attempts, 3);
        let items: Vec<StreamEvent> = collect(s).await.into_iter().map(Result::unwrap).collect();
        assert_eq!(
            items,
            vec![
                usage,
                StreamEvent::Token("a".into()),
                StreamEvent::Token("b".into()),
                StreamEvent::Done {
                    finish_reason: None
                }
            ]
        );
    }

    #[tokio::test]
    async fn no_retry_after_the_first_token_nor_for_rate_limits() {
        let p = Scripted {
            calls: AtomicU32::new(0),
            scripts: Mutex::new(vec![Ok(vec![
                Ok(StreamEvent::Token("a".into())),
                Err(unavailable()),
            ])]),
        };
        let (s, attempts) = stream_with_retry(&p, None, &req(), &fast()).await.unwrap();
        assert_eq!(attempts, 1);
        let items = collect(s).await;
        assert!(matches!(
            items.as_slice(),
            [
                Ok(StreamEvent::Token(_)),
                Err(ProviderError::Unavailable { .. })
            ]
        ));

        let p = Scripted {
            calls: AtomicU32::new(0),
            scripts: Mutex::new(vec![Err(ProviderError::RateLimited {
                retry_after: None,
                message: "x".into(),
            })]),
        };
        assert!(matches!(
            stream_with_retry(&p, None, &req(), &fast()).await,
            Err(ProviderError::RateLimited { .. })
        ));
        assert_eq!(p.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn empty_reply_is_success_and_attempts_are_capped() {
        let p = Scripted {
            calls: AtomicU32::new(0),
            scripts: Mutex::new(vec![Ok(vec![Ok(StreamEvent::Done {
                finish_reason: Some("stop".into()),
            })])]),
        };
        let (s, attempts) = stream_with_retry(&p, None, &req(), &fast()).await.unwrap();
        assert_eq!(attempts, 1);
        assert_eq!(collect(s).await.len(), 1);

        let p = Scripted {
            calls: AtomicU32::new(0),
            scripts: Mutex::new(vec![
                Err(unavailable()),
                Ok(vec![]),
                Err(unavailable()),
                Err(unavailable()),
            ]),
        };
        assert!(matches!(
            stream_with_retry(&p, None, &req(), &fast()).await,
            Err(ProviderError::Unavailable { .. })
        ));
        assert_eq!(p.calls.load(Ordering::SeqCst), 3);

        let p = Scripted {
            calls: AtomicU32::new(0),
            scripts: Mutex::new(vec![Err(unavailable()), Ok(vec![])]),
        };
        let (c, attempts) = generate_with_retry(&p, None, &req(), &fast())
            .await
            .unwrap();
        assert_eq!((c.content.as_str(), attempts), ("ok", 2));
    }
}
