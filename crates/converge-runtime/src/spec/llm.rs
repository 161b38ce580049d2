//! The `llm` agent as a spec declares it: what this crate checks and renders, and what an
//! [`super::LlmFactory`] (the LLM crate's) turns into an agent.
//!
//! The spec side owns everything that must not depend on a model: which keys the agent reads
//! and writes, when it runs (the same rule as a command agent's), and how its prompts render
//! from the facts it reads. The LLM crate owns the exchange with the model.

use std::path::Path;
use std::sync::Arc;

use converge_core::{Context, ContextKey};

use super::error::At;
use super::template::{Templates, template_value, variables};
use super::view::{facts_read, facts_view};
use super::wake::Wake;

/// The names of the failures a retry policy may name in `retry.on`, in spec order.
pub const LLM_ERROR_KINDS: [&str; 8] = [
    "unauthorized",
    "rate_limited",
    "server_error",
    "client_error",
    "timeout",
    "connection",
    "malformed_response",
    "invalid_answer",
];

/// What `retry.on` is when a spec sets `attempts` but not `on`: failures that a later attempt
/// may not repeat.
pub(crate) const LLM_RETRY_ON_DEFAULT: [&str; 4] =
    ["rate_limited", "server_error", "timeout", "connection"];

/// The most attempts a retry policy may make.
pub(crate) const LLM_ATTEMPTS_MAX: u32 = 10;

/// The longest a spec may make one call wait, in milliseconds (ten minutes).
pub(crate) const LLM_TIMEOUT_MS_MAX: u64 = 600_000;

/// How long one call may take when the spec does not say.
pub(crate) const LLM_TIMEOUT_MS_DEFAULT: u64 = 60_000;

/// Checks a provider base URL: http or https, with a host and without credentials (which
/// would end up in records). `Err` completes "`base_url` …".
///
/// ```
/// use converge_runtime::spec::check_base_url;
///
/// assert!(check_base_url("http://127.0.0.1:11434/v1").is_ok());
/// assert_eq!(check_base_url("ftp://x").unwrap_err(), "must start with http:// or https://");
/// assert!(check_base_url("https://user:pw@host/v1").unwrap_err().starts_with("must not hold credentials"));
/// ```
pub fn check_base_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| "must start with http:// or https://".to_owned())?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err("has no host".to_owned());
    }
    if authority.contains('@') {
        return Err(
            "must not hold credentials; keys come from the environment or the \
                    provider configuration"
                .to_owned(),
        );
    }
    Ok(())
}

/// How an `llm` agent asks its provider for JSON (`structured_output:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StructuredOutput {
    /// The provider's structured output with the answer's JSON Schema (the default).
    Schema,
    /// JSON mode only, for servers without schema support.
    JsonObject,
    /// Nothing asked of the provider; the prompt describes the answer.
    Prompt,
}

/// An `llm` agent's retry policy (`retry:`). Without one, each call is attempted once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmRetry {
    /// Attempts in all, the first included (1 to 10).
    pub attempts: u32,
    /// Wait before the second attempt, in milliseconds; it doubles for each further one.
    pub backoff_ms: u64,
    /// The longest wait between attempts, in milliseconds, whatever the server asks.
    pub backoff_max_ms: u64,
    /// The failures that are retried, by name (see [`LLM_ERROR_KINDS`]); others fail at once.
    pub on: Vec<String>,
}

impl Default for LlmRetry {
    fn default() -> Self {
        LlmRetry {
            attempts: 1,
            backoff_ms: 1_000,
            backoff_max_ms: 30_000,
            on: LLM_RETRY_ON_DEFAULT.map(str::to_owned).to_vec(),
        }
    }
}

/// The prompts of one call, rendered from the facts the agent reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmPrompt {
    /// The rendered `system`, if the spec has one.
    pub system: Option<String>,
    /// The rendered `prompt`.
    pub prompt: String,
}

/// An `llm` agent as the spec declares it; the LLM crate turns it into an agent.
#[derive(Clone)]
pub struct LlmAgentSpec {
    pub(crate) wake: Wake,
    pub(crate) description: Option<String>,
    pub(crate) provider: Option<String>,
    pub(crate) base_url: Option<String>,
    pub(crate) model: String,
    pub(crate) max_tokens: Option<u32>,
    pub(crate) temperature: Option<f64>,
    pub(crate) timeout_ms: u64,
    pub(crate) structured_output: StructuredOutput,
    pub(crate) retry: LlmRetry,
    /// `prompt`, and `system` if set, compiled.
    pub(crate) templates: Arc<Templates>,
    pub(crate) has_system: bool,
    pub(crate) origin: Arc<Path>,
    pub(crate) at: At,
}

impl LlmAgentSpec {
    /// The agent's name.
    pub fn name(&self) -> &str {
        &self.wake.name
    }

    /// What the agent is for, in words, if the spec says.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// The keys it reads: its dependencies, and what its prompts may see.
    pub fn reads(&self) -> &[ContextKey] {
        &self.wake.reads
    }

    /// The keys it may write: its grant.
    pub fn writes(&self) -> &[ContextKey] {
        &self.wake.writes
    }

    /// The provider, if named (for example `openai`, `anthropic` or `ollama`).
    pub fn provider(&self) -> Option<&str> {
        self.provider.as_deref()
    }

    /// The provider's base URL, if the spec sets one.
    pub fn base_url(&self) -> Option<&str> {
        self.base_url.as_deref()
    }

    /// The model.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The most tokens one answer may use, if set.
    pub fn max_tokens(&self) -> Option<u32> {
        self.max_tokens
    }

    /// The sampling temperature (0 to 2), if set.
    pub fn temperature(&self) -> Option<f64> {
        self.temperature
    }

    /// How long one call may take, in milliseconds (60 s unless the spec says).
    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms
    }

    /// How JSON is asked of the provider.
    pub fn structured_output(&self) -> StructuredOutput {
        self.structured_output
    }

    /// The retry policy (one attempt unless the spec says).
    pub fn retry(&self) -> &LlmRetry {
        &self.retry
    }

    /// Whether the agent should run on `ctx`: when a key it reads has facts (or, reading
    /// nothing, until it has produced a fact), and while its `when` holds.
    pub fn accepts(&self, ctx: &Context) -> bool {
        self.wake.accepts(ctx)
    }

    /// Whether `when` holds on `ctx` (true without one); `Err` says why it cannot be told.
    pub fn condition(&self, ctx: &Context) -> Result<bool, String> {
        self.wake.condition(ctx)
    }

    /// Renders `system` and `prompt` (MiniJinja templates) with `facts`, the
    /// [`super::facts_view`] of the keys the agent reads. `Err` says what does not render.
    ///
    /// ```
    /// use converge_core::Context;
    /// use converge_runtime::spec::{JobSpec, LlmPrompt};
    ///
    /// let source = r#"
    /// version: 1
    /// intent: {objective: "summarise"}
    /// seeds: [{key: signals, id: churn, content: "churn is up 4%"}]
    /// agents:
    ///   - name: writer
    ///     kind: llm
    ///     reads: [signals]
    ///     writes: [hypotheses]
    ///     model: llama3.2
    ///     system: "You explain signals."
    ///     prompt: "{{ facts.signals | length }} signals: {{ facts.signals | tojson }}"
    /// "#;
    /// let spec = JobSpec::parse(source, "job.yaml").unwrap().spec;
    /// let writer = spec.llm_agents().next().unwrap();
    /// assert_eq!(
    ///     writer.render(&Context::new()).unwrap(),
    ///     LlmPrompt { system: Some("You explain signals.".into()), prompt: "0 signals: []".into() }
    /// );
    /// ```
    pub fn render(&self, ctx: &Context) -> Result<LlmPrompt, String> {
        let facts = template_value(&facts_view(ctx, self.wake.reads.iter().copied()));
        let variables = variables(&[("facts", &facts)]);
        let system = if self.has_system {
            let system = self.templates.render("system", &variables);
            Some(system.map_err(|error| format!("system: {error}"))?)
        } else {
            None
        };
        let prompt = self
            .templates
            .render("prompt", &variables)
            .map_err(|error| format!("prompt: {error}"))?;
        Ok(LlmPrompt { system, prompt })
    }

    /// Every current fact of the keys the agent reads, in the view's order: what a call on
    /// `ctx` saw, for its proposals' derivations.
    pub fn facts_read(&self, ctx: &Context) -> Vec<(ContextKey, String)> {
        facts_read(ctx, self.wake.reads.iter().copied())
    }
}

impl std::fmt::Debug for LlmAgentSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmAgentSpec")
            .field("name", &self.name())
            .field("provider", &self.provider)
            .field("model", &self.model)
            .field("reads", &self.wake.reads)
            .field("writes", &self.wake.writes)
            .finish_non_exhaustive()
    }
}
