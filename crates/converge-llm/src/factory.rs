//! [`Models`]: the [`LlmFactory`] that turns a spec's `llm` agents into agents.
//!
//! One `Models` is made per built runtime, so the concurrency limit it holds is per run. In
//! [`Models::live`] it resolves each agent's provider profile and key when the runtime is
//! built, so a missing key is reported before anything runs. [`Models::offline`] makes agents
//! that never call a model: what re-deriving a recorded run (replay, verify, inspect) needs,
//! with no configuration and no key.

use std::collections::BTreeMap;
use std::sync::Arc;

use converge_core::ContextKey;
use converge_runtime::AsyncAgent;
use converge_runtime::spec::{JobSpec, LlmAgentSpec, LlmFactory, StructuredOutput};
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::agent::{LlmAgent, RequestTemplate};
use crate::answer;
use crate::anthropic::AnthropicProvider;
use crate::config::{DEFAULT_PROVIDER, Providers, WireFormat};
use crate::openai::OpenAiProvider;
use crate::provider::{Provider, Structured};

/// Reads an environment variable.
type Env = dyn Fn(&str) -> Option<String> + Send + Sync;

/// The most tokens an answer may use when the spec does not say.
pub const MAX_TOKENS_DEFAULT: u32 = 2048;

/// Makes the `llm` agents of one run.
///
/// ```
/// use converge_llm::{Models, Providers};
/// use converge_runtime::spec::JobSpec;
///
/// let source = r#"
/// version: 1
/// intent: {objective: "explain the signals"}
/// seeds: [{key: signals, id: churn, content: "churn is up 4%"}]
/// agents:
///   - name: explainer
///     kind: llm
///     provider: ollama
///     model: llama3.2
///     reads: [signals]
///     writes: [hypotheses]
///     prompt: "Explain: {{ facts.signals | tojson }}"
/// "#;
/// let spec = JobSpec::parse(source, "job.yaml").unwrap().spec;
/// let models = Models::live(&spec, Providers::builtin(), |_| None);
/// let runtime = spec.builder().llm(&models).build().unwrap();
/// assert_eq!(runtime.engine().agent_names().last(), Some("explainer"));
/// ```
pub struct Models {
    providers: Option<Providers>,
    env: Box<Env>,
    key_schemas: BTreeMap<ContextKey, Value>,
    limiter: Arc<Semaphore>,
}

impl Models {
    /// Agents that call their models, with `providers` for profiles and `env` to read the
    /// environment variables that hold keys (`|name| std::env::var(name).ok()` in a program).
    pub fn live(
        spec: &JobSpec,
        providers: Providers,
        env: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Models {
        Models {
            providers: Some(providers),
            env: Box::new(env),
            ..Models::offline(spec)
        }
    }

    /// Agents that never call a model; executing one is a recorded failure. Re-deriving a
    /// recorded run feeds recorded answers and executes no agent, so it needs nothing more.
    pub fn offline(spec: &JobSpec) -> Models {
        let key_schemas = spec
            .llm_agents()
            .flat_map(|agent| agent.writes().iter().copied())
            .filter_map(|key| Some((key, spec.key_schema(key)?.clone())))
            .collect();
        Models {
            providers: None,
            env: Box::new(|_| None),
            key_schemas,
            limiter: Arc::new(Semaphore::new(spec.llm_concurrency_max())),
        }
    }

    fn provider(
        &self,
        providers: &Providers,
        name: &str,
        spec: &LlmAgentSpec,
    ) -> Result<Arc<dyn Provider>, String> {
        let Some(profile) = providers.profile(name) else {
            let known: Vec<&str> = providers.names().collect();
            let file = providers
                .origin()
                .map(|path| format!(" (with {})", path.display()))
                .unwrap_or_default();
            return Err(format!(
                "unknown provider `{name}`; the known ones{file} are {}",
                known.join(", ")
            ));
        };
        let key = profile.key(name, &self.env)?;
        let base_url = spec.base_url().unwrap_or(&profile.base_url);
        Ok(match profile.wire {
            WireFormat::Openai => {
                Arc::new(OpenAiProvider::new(base_url, key, profile.max_tokens_field))
            }
            WireFormat::Anthropic => Arc::new(AnthropicProvider::new(base_url, key)),
        })
    }
}

impl LlmFactory for Models {
    fn create(&self, spec: &LlmAgentSpec) -> Result<Box<dyn AsyncAgent>, String> {
        let provider_name = spec.provider().unwrap_or(DEFAULT_PROVIDER).to_owned();
        let provider = match &self.providers {
            Some(providers) => Some(self.provider(providers, &provider_name, spec)?),
            None => None,
        };
        let schema =
            answer::requested_schema(spec.writes(), |key| self.key_schemas.get(&key).cloned());
        let request = RequestTemplate {
            max_tokens: spec.max_tokens().unwrap_or(MAX_TOKENS_DEFAULT),
            instructions: answer::instructions(spec.writes(), &schema),
            schema,
            structured: match spec.structured_output() {
                StructuredOutput::Schema => Structured::Schema,
                StructuredOutput::JsonObject => Structured::JsonObject,
                StructuredOutput::Prompt => Structured::Prompt,
            },
        };
        Ok(Box::new(LlmAgent {
            system: format!("{provider_name}:{}", spec.model()),
            provider_name,
            provider,
            request,
            limiter: self.limiter.clone(),
            spec: spec.clone(),
        }))
    }
}
