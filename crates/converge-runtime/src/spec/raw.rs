//! The job spec as written: serde types that mirror the YAML, with source locations.
//!
//! Every struct denies unknown fields, and every value a later check may refuse is wrapped in
//! [`Spanned`] so the refusal can name its line and column. Nothing here is validated beyond
//! its YAML shape; `check.rs` turns these into the typed spec. Agent kinds share one flat
//! struct (serde's internally tagged enums would lose the locations); `check.rs` refuses a
//! field that does not belong to the agent's kind.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use serde_saphyr::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSpec {
    pub(crate) version: Spanned<u32>,
    pub(crate) intent: RawIntent,
    #[serde(default)]
    pub(crate) keys: Vec<RawKey>,
    #[serde(default)]
    pub(crate) seeds: Vec<RawFact>,
    #[serde(default)]
    pub(crate) agents: Vec<Spanned<RawAgent>>,
    #[serde(default)]
    pub(crate) invariants: Vec<RawInvariant>,
    pub(crate) runtime: Option<RawRuntime>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIntent {
    pub(crate) objective: Spanned<String>,
    #[serde(default)]
    pub(crate) scope: Vec<String>,
    #[serde(default)]
    pub(crate) constraints: Vec<String>,
    #[serde(default)]
    pub(crate) success: Vec<RawSuccess>,
    pub(crate) budgets: Option<RawBudgets>,
}

/// Externally tagged, so locations survive: `- min_facts: {key: risks, count: 2}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum RawSuccess {
    KeyNotEmpty(Spanned<String>),
    MinFacts {
        key: Spanned<String>,
        count: Spanned<usize>,
    },
    FactPresent {
        key: Spanned<String>,
        id: Spanned<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBudgets {
    pub(crate) cycles: Option<Spanned<u32>>,
    pub(crate) facts: Option<Spanned<u64>>,
    pub(crate) tokens: Option<Spanned<u64>>,
    pub(crate) time_ms: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKey {
    pub(crate) name: Spanned<String>,
    /// Documentation for readers of the spec; the runtime ignores it.
    #[serde(default, rename = "description")]
    pub(crate) _description: Option<String>,
    pub(crate) schema: Option<Spanned<Value>>,
    #[serde(default)]
    pub(crate) approval: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFact {
    pub(crate) key: Spanned<String>,
    pub(crate) id: Spanned<String>,
    pub(crate) content: Spanned<Value>,
    pub(crate) confidence: Option<Spanned<f64>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawKind {
    Seed,
    Rule,
    Command,
    Llm,
}

impl RawKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            RawKind::Seed => "seed",
            RawKind::Rule => "rule",
            RawKind::Command => "command",
            RawKind::Llm => "llm",
        }
    }
}

/// Every field of every kind; `check.rs` refuses those that do not apply to `kind`. Even
/// the required fields are optional here, so that a missing one is reported at the agent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAgent {
    pub(crate) name: Option<Spanned<String>>,
    pub(crate) kind: Option<Spanned<RawKind>>,
    #[serde(default)]
    pub(crate) description: Option<String>,
    #[serde(default)]
    pub(crate) reads: Vec<Spanned<String>>,
    pub(crate) writes: Option<Spanned<Vec<Spanned<String>>>>,
    // seed
    pub(crate) facts: Option<Spanned<Vec<RawFact>>>,
    // rule, command and llm
    pub(crate) when: Option<Spanned<String>>,
    // rule
    pub(crate) for_each: Option<Spanned<String>>,
    pub(crate) propose: Option<Spanned<RawPropose>>,
    // command (and `timeout_ms` for llm)
    pub(crate) command: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) env: Option<Spanned<BTreeMap<String, String>>>,
    pub(crate) pass_env: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) timeout_ms: Option<Spanned<u64>>,
    pub(crate) output_bytes_max: Option<Spanned<u64>>,
    // llm
    pub(crate) provider: Option<Spanned<String>>,
    pub(crate) model: Option<Spanned<String>>,
    pub(crate) system: Option<Spanned<String>>,
    pub(crate) prompt: Option<Spanned<String>>,
    pub(crate) max_tokens: Option<Spanned<u32>>,
    pub(crate) temperature: Option<Spanned<f64>>,
    pub(crate) base_url: Option<Spanned<String>>,
    pub(crate) structured_output: Option<Spanned<RawStructured>>,
    pub(crate) retry: Option<Spanned<RawRetry>>,
}

/// How an `llm` agent asks for JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawStructured {
    Schema,
    JsonObject,
    Prompt,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetry {
    pub(crate) attempts: Spanned<u32>,
    pub(crate) backoff_ms: Option<Spanned<u64>>,
    pub(crate) backoff_max_ms: Option<Spanned<u64>>,
    pub(crate) on: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPropose {
    pub(crate) key: Spanned<String>,
    pub(crate) id: Spanned<String>,
    pub(crate) content: Spanned<Value>,
    pub(crate) confidence: Option<Spanned<f64>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawClass {
    Structural,
    Semantic,
    Acceptance,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawInvariant {
    pub(crate) name: Spanned<String>,
    /// Documentation for readers of the spec; the runtime ignores it.
    #[serde(default, rename = "description")]
    pub(crate) _description: Option<String>,
    pub(crate) class: RawClass,
    pub(crate) check: Spanned<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawFailurePolicy {
    Quarantine,
    StopRun,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRuntime {
    pub(crate) concurrency_max: Option<Spanned<usize>>,
    pub(crate) agent_timeout_ms: Option<Spanned<u64>>,
    pub(crate) on_agent_failure: Option<RawFailurePolicy>,
    pub(crate) llm_concurrency_max: Option<Spanned<usize>>,
    pub(crate) expression_cost_max: Option<Spanned<u64>>,
}

/// Which fields each kind accepts, besides `name`, `kind`, `description`, `reads`, `writes`.
pub(crate) fn kind_fields(kind: RawKind) -> &'static [&'static str] {
    match kind {
        RawKind::Seed => &["facts"],
        RawKind::Rule => &["when", "for_each", "propose"],
        RawKind::Command => &[
            "when",
            "command",
            "env",
            "pass_env",
            "timeout_ms",
            "output_bytes_max",
        ],
        RawKind::Llm => &[
            "when",
            "provider",
            "base_url",
            "model",
            "system",
            "prompt",
            "max_tokens",
            "temperature",
            "timeout_ms",
            "structured_output",
            "retry",
        ],
    }
}
