//! The `llm` agent: renders its prompt from the facts it reads, asks its model, records every
//! attempt, and proposes what the model answered.
//!
//! Each attempt — the request's hash and parameters, the rendered prompts, the answer or the
//! error, the tokens, the model that answered and how long the call took — is an observation
//! with a `RemoteRef` trace link naming the model that answered, recorded whether the call
//! succeeds or not, so the journal shows every exchange with the model and replay never makes
//! one again. The latency is measured here, on the driver's side, and is recorded data like
//! the answer: nothing re-derived from the journal reads a clock.
//! Attempts after the first are made only under the spec's retry policy, for the failures it
//! names, after a backoff the observation records. The calls of one run share a concurrency
//! limit, and each is bounded by the agent's timeout. Tokens the provider reports count
//! against the run's token budget, failed attempts included.

use std::sync::Arc;
use std::time::Duration;

use converge_core::{AgentEffect, AuthorityScope, Context, ContextKey, Digest, Observation};
use converge_runtime::spec::LlmAgentSpec;
use converge_runtime::{AgentFuture, AsyncAgent};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::answer;
use crate::provider::{CallError, ChatAnswer, ChatRequest, ErrorKind, Provider};

/// The observation kind of one exchange with a model.
pub const EXCHANGE_KIND: &str = "llm.exchange";

/// An `llm` agent, ready to register (the spec side holds it to its name, reads and grant).
pub(crate) struct LlmAgent {
    pub(crate) spec: LlmAgentSpec,
    /// `<provider>:<model>`, the system its observations name.
    pub(crate) system: String,
    pub(crate) provider_name: String,
    /// `None` where calls are not allowed (re-deriving a recorded run needs none).
    pub(crate) provider: Option<Arc<dyn Provider>>,
    pub(crate) request: RequestTemplate,
    pub(crate) limiter: Arc<Semaphore>,
}

/// What every request of the agent shares.
pub(crate) struct RequestTemplate {
    pub(crate) max_tokens: u32,
    pub(crate) schema: Value,
    pub(crate) structured: crate::provider::Structured,
    /// The contract's instructions, appended to the spec's system prompt.
    pub(crate) instructions: String,
}

/// How one attempt ended.
enum Attempt {
    /// The model answered with drafts that keep the contract.
    Answered(
        ChatAnswer,
        Vec<converge_core::Proposal<converge_core::Draft>>,
    ),
    /// No usable answer; the answer is kept when one came.
    Failed(Option<ChatAnswer>, CallError),
}

impl LlmAgent {
    fn request(&self, ctx: &Context) -> Result<ChatRequest, String> {
        let rendered = self.spec.render(ctx)?;
        let system = match rendered.system {
            Some(system) => format!("{system}\n\n{}", self.request.instructions),
            None => self.request.instructions.clone(),
        };
        Ok(ChatRequest {
            model: self.spec.model().to_owned(),
            system,
            prompt: rendered.prompt,
            max_tokens: self.request.max_tokens,
            temperature: self.spec.temperature(),
            schema: self.request.schema.clone(),
            structured: self.request.structured,
        })
    }

    async fn run(&self, ctx: &Context) -> AgentEffect {
        match self.spec.condition(ctx) {
            Ok(true) => {}
            Ok(false) => return AgentEffect::empty(),
            Err(error) => return AgentEffect::failed(error),
        }
        let request = match self.request(ctx) {
            Ok(request) => request,
            Err(error) => return AgentEffect::failed(error),
        };
        let Some(provider) = &self.provider else {
            return AgentEffect::failed(format!(
                "the model {} would be called, but calls are off here (a recorded run is \
                 re-derived from its recorded answers only)",
                self.system
            ));
        };
        let prompt_hash = Digest::of_json(&serde_json::to_value(&request).unwrap_or_default());
        let retry = self.spec.retry();
        let mut effect = AgentEffect::empty();
        let mut errors = Vec::new();
        let mut waited = Duration::ZERO;
        for attempt in 1..=retry.attempts {
            let (outcome, latency) = self.attempt(provider.as_ref(), &request).await;
            let (answer, error) = match &outcome {
                Attempt::Answered(answer, _) => (Some(answer), None),
                Attempt::Failed(answer, error) => (answer.as_ref(), Some(error)),
            };
            let usage = answer.map_or_else(
                || error.map(|error| error.usage).unwrap_or_default(),
                |answer| answer.usage,
            );
            let record = Exchange {
                attempt,
                waited,
                latency,
                request: &request,
                prompt_hash,
                answer,
                error,
            };
            let observed = effect.observe(self.observation(provider.as_ref(), &record));
            effect = effect.with_usage(usage);
            let error = match outcome {
                Attempt::Answered(_, drafts) => {
                    let read = self.spec.facts_read(ctx);
                    for mut draft in drafts {
                        for (key, id) in &read {
                            draft = draft.derived_from(*key, id.clone());
                        }
                        effect.propose(draft.citing(observed));
                    }
                    return effect;
                }
                Attempt::Failed(_, error) => error,
            };
            errors.push(format!("attempt {attempt}: {error}"));
            let retried = retry.on.iter().any(|name| name == error.kind.name());
            if attempt == retry.attempts || !retried {
                break;
            }
            waited = backoff(retry, attempt, error.retry_after);
            tokio::time::sleep(waited).await;
        }
        let message = format!(
            "the model {} gave no usable answer in {} attempt{}: {}",
            self.system,
            errors.len(),
            if errors.len() == 1 { "" } else { "s" },
            errors.join("; ")
        );
        effect.into_failed(message)
    }

    /// One call and how long it took, from sending the request to its answer or failure
    /// (the wait for a turn under the run's concurrency limit is not counted).
    async fn attempt(&self, provider: &dyn Provider, request: &ChatRequest) -> (Attempt, Duration) {
        let timeout = Duration::from_millis(self.spec.timeout_ms());
        let (answer, latency) = {
            // Closed only when the run is dropped, so acquiring cannot fail while it runs.
            let Ok(_permit) = self.limiter.acquire().await else {
                let error = CallError::new(ErrorKind::Connection, "the run is shutting down");
                return (Attempt::Failed(None, error), Duration::ZERO);
            };
            let started = tokio::time::Instant::now();
            let answer = tokio::time::timeout(timeout, provider.call(request)).await;
            (answer, started.elapsed())
        };
        (self.judge(request, answer), latency)
    }

    /// Whether what came back is a usable answer.
    fn judge(
        &self,
        request: &ChatRequest,
        answer: Result<Result<ChatAnswer, CallError>, tokio::time::error::Elapsed>,
    ) -> Attempt {
        let answer = match answer {
            Err(_) => {
                let message = format!("no answer within {} ms", self.spec.timeout_ms());
                return Attempt::Failed(None, CallError::new(ErrorKind::Timeout, message));
            }
            Ok(Err(error)) => return Attempt::Failed(None, error),
            Ok(Ok(answer)) => answer,
        };
        let invalid = |message: String| CallError {
            usage: answer.usage,
            ..CallError::new(ErrorKind::InvalidAnswer, message)
        };
        if matches!(answer.finish.as_deref(), Some("length" | "max_tokens")) {
            let message = format!(
                "the answer was cut off at max_tokens ({})",
                request.max_tokens
            );
            return Attempt::Failed(Some(answer.clone()), invalid(message));
        }
        match answer::drafts(&answer.text) {
            Ok(drafts) => Attempt::Answered(answer, drafts),
            Err(message) => Attempt::Failed(Some(answer.clone()), invalid(message)),
        }
    }

    fn observation(&self, provider: &dyn Provider, exchange: &Exchange<'_>) -> Observation {
        let request = exchange.request;
        let served = exchange.answer.and_then(|answer| answer.model.as_deref());
        let payload = json!({
            "attempt": exchange.attempt,
            "waited_ms": millis(exchange.waited),
            "latency_ms": millis(exchange.latency),
            "provider": self.provider_name,
            "wire": provider.wire(),
            "base_url": provider.base_url(),
            "model": request.model,
            "served_model": served,
            "parameters": {
                "max_tokens": request.max_tokens,
                "temperature": request.temperature,
                "structured_output": request.structured,
                "timeout_ms": self.spec.timeout_ms(),
            },
            "prompt_hash": exchange.prompt_hash.to_string(),
            "system": request.system,
            "prompt": request.prompt,
            "answer": exchange.answer,
            "error": exchange.error,
        });
        let reference = exchange
            .answer
            .and_then(|answer| answer.id.clone())
            .unwrap_or_else(|| format!("prompt:{}", exchange.prompt_hash));
        // The origin of what the model said is the model that said it.
        let system = match served {
            Some(model) => format!("{}:{model}", self.provider_name),
            None => self.system.clone(),
        };
        Observation::remote(EXCHANGE_KIND, system, reference, payload)
    }
}

/// A duration in whole milliseconds, for a record.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// One attempt, as its observation records it.
struct Exchange<'a> {
    attempt: u32,
    waited: Duration,
    /// How long the call took (see [`LlmAgent::attempt`]).
    latency: Duration,
    request: &'a ChatRequest,
    prompt_hash: Digest,
    answer: Option<&'a ChatAnswer>,
    error: Option<&'a CallError>,
}

/// The wait before the attempt after `attempt`: `backoff_ms` doubled for each attempt made
/// after the first, at least what the server asked for, at most `backoff_max_ms`.
fn backoff(
    retry: &converge_runtime::spec::LlmRetry,
    attempt: u32,
    asked: Option<Duration>,
) -> Duration {
    let doubled = retry
        .backoff_ms
        .saturating_mul(1u64.checked_shl(attempt - 1).unwrap_or(u64::MAX));
    let wait = Duration::from_millis(doubled).max(asked.unwrap_or_default());
    wait.min(Duration::from_millis(retry.backoff_max_ms))
}

impl AsyncAgent for LlmAgent {
    fn name(&self) -> &str {
        self.spec.name()
    }

    fn dependencies(&self) -> &[ContextKey] {
        self.spec.reads()
    }

    fn requested_scope(&self) -> AuthorityScope {
        AuthorityScope::keys(self.spec.writes().iter().copied())
    }

    /// The spec's wake rule is applied by the runtime around this agent.
    fn accepts(&self, _ctx: &Context) -> bool {
        true
    }

    fn execute<'a>(&'a self, ctx: &'a Context) -> AgentFuture<'a> {
        Box::pin(self.run(ctx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use converge_runtime::spec::LlmRetry;

    #[test]
    fn backoff_doubles_honours_the_server_and_is_capped() {
        let retry = LlmRetry {
            attempts: 5,
            backoff_ms: 100,
            backoff_max_ms: 1_000,
            on: vec![],
        };
        let ms = |attempt, asked: Option<u64>| {
            backoff(&retry, attempt, asked.map(Duration::from_millis)).as_millis()
        };
        assert_eq!(ms(1, None), 100);
        assert_eq!(ms(2, None), 200);
        assert_eq!(ms(3, Some(700)), 700);
        assert_eq!(ms(4, None), 800);
        assert_eq!(ms(5, None), 1_000);
        assert_eq!(ms(70, Some(5_000)), 1_000);
    }
}
