//! LLM agents for Converge: providers, recorded answers, token budgets, retry policies.
//!
//! An `llm` agent of a job spec renders its prompt from the facts it reads, asks a model for
//! JSON matching its output contract ([`answer`](crate#the-output-contract)), and proposes
//! what the model answered into the keys it was granted — where the answers meet the same
//! validation gates as any other agent's. Every attempt at a call is recorded as an
//! observation, so replay and resume use the recorded answer and never call the model again.
//!
//! - [`Provider`]: one small trait over the wire formats — [`OpenAiProvider`] (OpenAI's chat
//!   completions, which Ollama, vLLM, llama.cpp, LM Studio and OpenRouter also speak) and
//!   [`AnthropicProvider`] (Anthropic's Messages API).
//! - [`Providers`]: named provider profiles (base URL, wire format, where the key comes from),
//!   built in and from a provider file. Keys never come from a job spec.
//! - [`Models`]: the [`converge_runtime::spec::LlmFactory`] that makes a spec's `llm` agents.
//! - [`scripted`]: a loopback server speaking both wire formats with scripted answers, to test
//!   jobs without a model.
//!
//! # The output contract
//!
//! A model answers with `{"proposals": [{"key", "id", "content", "confidence"}]}`. The
//! schema sent to the provider lists only the agent's granted keys and their content schemas;
//! the answer's shape is checked in every case, and each proposal then passes the engine's
//! gate like any other agent's, so nothing a model says can widen its grant.

mod agent;
mod answer;
mod anthropic;
mod config;
mod factory;
mod http;
mod openai;
mod provider;
pub mod scripted;

pub use agent::EXCHANGE_KIND;
pub use answer::ANSWER_PROPOSALS_MAX;
pub use anthropic::AnthropicProvider;
pub use config::{ConfigError, DEFAULT_PROVIDER, PROVIDERS_ENV, Profile, Providers, WireFormat};
pub use factory::{MAX_TOKENS_DEFAULT, Models};
pub use openai::{MaxTokensField, OpenAiProvider};
pub use provider::{
    ApiKey, CachedTokens, CallError, ChatAnswer, ChatRequest, ErrorKind, Provider, Structured,
};
