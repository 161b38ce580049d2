//! Job specs: a whole job — intent, keys, agents, grants, validation, approvals, seeds,
//! invariants, budgets — declared in one YAML file and built into a [`Runtime`].
//!
//! [`JobSpec::parse`] refuses a bad spec before anything runs, naming the file, line and
//! column of every problem and what was expected: unknown fields and agent kinds, keys no
//! agent may write, malformed CEL expressions and templates, expressions and templates that
//! use an undeclared key, a key outside the agent's `reads`, a field the key's schema does not
//! have, an unknown function or variable, a condition that cannot be a boolean, invalid JSON
//! Schemas, bad budgets. It warns (without refusing) about agents that read keys nobody produces.
//! [`JobSpec::build`] then makes the runtime; building is a pure function of the spec's
//! source text and its base directory, so a process that stored the text (in a journal
//! header, say) can rebuild the identical runtime.
//!
//! Agent kinds: `seed` (facts from the spec), `rule` (a CEL condition and MiniJinja
//! templates), `command` (an external program speaking JSON; see `docs/command-agents.md`)
//! and `llm` (parsed here, made by an [`LlmFactory`] from the LLM crate). The format is
//! described in `docs/job-specs.md`.
//!
//! ```
//! use converge_core::{Context, ContextKey};
//! use converge_runtime::spec::JobSpec;
//!
//! let source = r#"
//! version: 1
//! intent:
//!   objective: "Flag severe risks"
//!   success: [{key_not_empty: evaluations}]
//! keys:
//!   - name: risks
//!     schema: {type: object, required: [severity]}
//! seeds:
//!   - {key: risks, id: outage, content: {severity: 5}}
//!   - {key: risks, id: typo, content: {severity: 1}}
//! agents:
//!   - name: flag-severe
//!     kind: rule
//!     reads: [risks]
//!     writes: [evaluations]
//!     for_each: risks
//!     when: "fact.content.severity >= 4"
//!     propose:
//!       key: evaluations
//!       id: "flag-{{ fact.id }}"
//!       content: {risk: "{{ fact.id }}", action: escalate}
//! "#;
//! let loaded = JobSpec::parse(source, "risks.yaml").unwrap();
//! assert!(loaded.warnings.is_empty());
//! let mut runtime = loaded.spec.build().unwrap();
//! let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//! let result = tokio.block_on(runtime.run(Context::new())).unwrap();
//! assert!(result.converged);
//! assert!(result.context.contains(ContextKey::Evaluations, "flag-outage"));
//! assert!(!result.context.contains(ContextKey::Evaluations, "flag-typo"));
//! ```
//!
//! Command agents start processes through tokio, so the tokio runtime that drives a spec
//! with command agents needs its I/O and time drivers (`enable_all`).

mod build;
mod check;
mod command;
mod cost;
mod error;
mod expr;
mod invariant;
mod llm;
mod numbers;
mod process;
mod raw;
mod render;
mod rule;
mod schema;
mod seed;
mod template;
mod view;
mod wake;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use converge_core::{ContextKey, FailurePolicy, RootIntent};
use converge_journal::RunHeader;

pub use build::{Builder, LlmFactory};
pub use check::{AGENT_NAME_LEN_MAX, SPEC_VERSION};
pub use command::{
    COMMAND_EXIT_GRACE_MS, COMMAND_OUTPUT_BYTES_CAP, COMMAND_OUTPUT_BYTES_MAX_DEFAULT,
    COMMAND_PROTOCOL, COMMAND_STDERR_BYTES_MAX, COMMAND_TIMEOUT_MS_DEFAULT,
};
pub(crate) use cost::with_deadline;
pub use cost::{EXPRESSION_COST_DEFAULT, EXPRESSION_COST_MAX};
pub use error::{Problem, SpecError};
pub(crate) use expr::EVAL_STACK_BYTES;
pub use expr::{EXPRESSION_BYTES_MAX, EXPRESSION_DEPTH_MAX};
pub use llm::{
    LLM_ERROR_KINDS, LlmAgentSpec, LlmPrompt, LlmRetry, StructuredOutput, check_base_url,
};
pub use process::{
    AGENT_ENV_INHERITED, AGENT_LAUNCHER_ARG, LAUNCH_EXIT_NOT_STARTED, LAUNCH_EXIT_ORPHANED,
    LAUNCH_EXIT_USAGE, LAUNCHER_PARENT_POLL_MS, launch_agent, set_agent_launcher,
};
pub use render::{
    TEMPLATE_BUILT_BYTES_MAX, TEMPLATE_OUTPUT_BYTES_MAX, TEMPLATE_VALUE_BYTES_MAX,
    TEMPLATE_VALUE_ITEMS_MAX,
};
pub use template::{TEMPLATE_BYTES_MAX, TEMPLATE_FUEL};
pub use view::facts_view;

use crate::driver::{DriverConfig, Runtime};
use command::CommandAgent;
use error::At;
use invariant::CelInvariant;
use rule::RuleAgent;
use schema::Schema;
use seed::SeedFactsAgent;

/// Largest accepted spec, in bytes.
pub const SPEC_BYTES_MAX: usize = 1024 * 1024;

/// A checked job spec, with its exact source text.
///
/// Built only by [`JobSpec::parse`] or [`JobSpec::load`], so every spec in hand has passed
/// every check.
pub struct JobSpec {
    source: Arc<str>,
    origin: Arc<Path>,
    base_dir: PathBuf,
    parts: Parts,
}

/// A spec that passed every check, and what it was warned about.
#[derive(Debug)]
pub struct Loaded {
    /// The spec.
    pub spec: JobSpec,
    /// Problems that do not refuse the spec (an agent reading a key nobody produces, a
    /// command program that does not exist yet), in source order.
    pub warnings: Vec<Problem>,
}

/// Everything a runtime is built from.
pub(crate) struct Parts {
    pub(crate) intent: RootIntent,
    pub(crate) policies: Vec<KeyPolicy>,
    pub(crate) seeds: Option<SeedFactsAgent>,
    pub(crate) agents: Vec<AgentEntry>,
    pub(crate) invariants: Vec<CelInvariant>,
    pub(crate) driver: DriverConfig,
    pub(crate) failure_policy: FailurePolicy,
    pub(crate) llm_concurrency_max: usize,
}

/// How many model calls a run has in flight at once when its spec does not say.
pub const LLM_CONCURRENCY_MAX_DEFAULT: usize = 4;

/// How proposals into one configured key are validated.
pub(crate) struct KeyPolicy {
    pub(crate) key: ContextKey,
    pub(crate) schema: Option<Schema>,
    pub(crate) approval: bool,
}

/// One agent of the spec, ready to register.
pub(crate) enum AgentEntry {
    Seed(SeedFactsAgent),
    Rule(RuleAgent),
    Command(CommandAgent),
    Llm(LlmAgentSpec),
}

impl AgentEntry {
    fn name(&self) -> &str {
        match self {
            AgentEntry::Seed(agent) => &agent.name,
            AgentEntry::Rule(agent) => &agent.name,
            AgentEntry::Command(agent) => &agent.wake.name,
            AgentEntry::Llm(spec) => spec.name(),
        }
    }
}

impl JobSpec {
    /// Parses and checks `source`. `origin` names the file in messages, and its directory is
    /// the base for the relative program paths of command agents (made absolute against the
    /// current directory if `origin` is relative).
    ///
    /// ```
    /// use converge_runtime::spec::JobSpec;
    ///
    /// let source = "version: 1\nintent: {objective: x}\nagents:\n  - name: a\n    kind: oracle\n    writes: [seeds]\n";
    /// let error = JobSpec::parse(source, "job.yaml").unwrap_err();
    /// assert_eq!(
    ///     error.to_string(),
    ///     "job.yaml:5:11: unknown variant `oracle`, expected one of seed, rule, command, llm"
    /// );
    /// ```
    pub fn parse(source: &str, origin: impl AsRef<Path>) -> Result<Loaded, SpecError> {
        JobSpec::parse_checked(source, origin.as_ref(), true)
    }

    /// Parses a spec that a run was already started with (kept in its journal), to rebuild
    /// that run's runtime: like [`JobSpec::parse`], but without the static checks of
    /// expressions and templates against the declared keys, `reads` and schemas. Those checks
    /// only refuse, never change, what is built, and a run journaled by an earlier version
    /// whose spec they would now refuse must still resume, take decisions and replay.
    ///
    /// ```
    /// use converge_runtime::spec::JobSpec;
    ///
    /// let source = "version: 1\nintent: {objective: x}\ninvariants:\n  - {name: i, class: semantic, check: facts.nokey.size() > 0}\n";
    /// assert!(JobSpec::parse(source, "job.yaml").is_err());
    /// assert!(JobSpec::parse_recorded(source, "job.yaml").is_ok());
    /// ```
    pub fn parse_recorded(source: &str, origin: impl AsRef<Path>) -> Result<Loaded, SpecError> {
        JobSpec::parse_checked(source, origin.as_ref(), false)
    }

    fn parse_checked(
        source: &str,
        origin: &Path,
        static_checks: bool,
    ) -> Result<Loaded, SpecError> {
        let origin: Arc<Path> = Arc::from(origin);
        let base_dir = base_dir_of(&origin);
        if source.len() > SPEC_BYTES_MAX {
            let message = format!(
                "the spec is {} bytes long; the limit is {SPEC_BYTES_MAX}",
                source.len()
            );
            return Err(SpecError::invalid(vec![Problem::new(
                &origin,
                At::default(),
                message,
            )]));
        }
        let raw = serde_saphyr::from_str_with_options(source, yaml_options())
            .map_err(|error| SpecError::invalid(vec![yaml_problem(&origin, &error)]))?;
        let (parts, warnings) = check::Checker::new(&origin, &base_dir, source)
            .with_static_checks(static_checks)
            .check(raw)
            .map_err(SpecError::invalid)?;
        let mut warnings = warnings;
        warnings.sort_by_key(|warning| (warning.line(), warning.column()));
        let spec = JobSpec {
            source: Arc::from(source),
            origin,
            base_dir,
            parts,
        };
        Ok(Loaded { spec, warnings })
    }

    /// The objective a spec's text states (`intent.objective`), read without checking the
    /// rest: what listings show beside a run. `None` for text that is not a readable spec.
    ///
    /// ```
    /// use converge_runtime::spec::JobSpec;
    ///
    /// let source = "version: 1\nintent: {objective: Ship 2.4.0}\n";
    /// assert_eq!(JobSpec::objective_of(source).as_deref(), Some("Ship 2.4.0"));
    /// assert_eq!(JobSpec::objective_of("[not a spec"), None);
    /// ```
    pub fn objective_of(source: &str) -> Option<String> {
        if source.len() > SPEC_BYTES_MAX {
            return None;
        }
        let value: serde_json::Value =
            serde_saphyr::from_str_with_options(source, yaml_options()).ok()?;
        value
            .get("intent")?
            .get("objective")?
            .as_str()
            .map(str::to_owned)
    }

    /// What a recorded run is for: the objective its header records, or, for a run recorded
    /// before headers kept the intent, its job spec's.
    pub fn objective_of_run(header: &RunHeader) -> Option<String> {
        match header.objective() {
            Some(objective) => Some(objective.to_owned()),
            None => JobSpec::objective_of(&header.job.as_ref()?.source),
        }
    }

    /// The name a recorded run's job goes by: the file name of its spec
    /// (`release-approval.yaml`), when the run was built from one.
    pub fn name_of_run(header: &RunHeader) -> Option<String> {
        let job = header.job.as_ref()?;
        Path::new(&job.path)
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
    }

    /// Reads the file at `path` and parses it (see [`JobSpec::parse`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Loaded, SpecError> {
        let path = path.as_ref();
        let read_error = |source| SpecError::Read {
            path: path.to_path_buf(),
            source,
        };
        let bytes = std::fs::metadata(path).map_err(read_error)?.len();
        if bytes > SPEC_BYTES_MAX as u64 {
            let message = format!("the spec is {bytes} bytes long; the limit is {SPEC_BYTES_MAX}");
            let origin: Arc<Path> = Arc::from(path);
            return Err(SpecError::invalid(vec![Problem::new(
                &origin,
                At::default(),
                message,
            )]));
        }
        let source = std::fs::read_to_string(path).map_err(read_error)?;
        JobSpec::parse(&source, path)
    }

    /// The exact text the spec was parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The file the spec came from, as given.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// The absolute directory command agents run in and resolve relative programs from.
    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// The intent: objective, frame, success criteria and budgets.
    pub fn intent(&self) -> &RootIntent {
        &self.parts.intent
    }

    /// The wall-clock budget, enforced by the driver, if the spec sets one.
    pub fn time_budget_ms(&self) -> Option<u64> {
        self.parts.driver.time_budget_ms
    }

    /// The JSON Schema the spec gives for the content of `key`'s facts, if any.
    pub fn key_schema(&self, key: ContextKey) -> Option<&serde_json::Value> {
        let policy = self
            .parts
            .policies
            .iter()
            .find(|policy| policy.key == key)?;
        policy.schema.as_ref().map(Schema::source)
    }

    /// The names of the agents under `agents:`, in spec order.
    pub fn agent_names(&self) -> impl Iterator<Item = &str> {
        self.parts.agents.iter().map(AgentEntry::name)
    }

    /// The keys configured under `keys:` (declared, or given a schema or approval), in spec
    /// order.
    pub fn configured_keys(&self) -> impl Iterator<Item = ContextKey> {
        self.parts.policies.iter().map(|policy| policy.key)
    }

    /// The names of the invariants, in spec order.
    pub fn invariant_names(&self) -> impl Iterator<Item = &str> {
        self.parts
            .invariants
            .iter()
            .map(|invariant| &*invariant.name)
    }

    /// The spec's `llm` agents, in spec order.
    pub fn llm_agents(&self) -> impl Iterator<Item = &LlmAgentSpec> {
        self.parts.agents.iter().filter_map(|entry| match entry {
            AgentEntry::Llm(spec) => Some(spec),
            _ => None,
        })
    }

    /// The names of the spec's `command` agents (programs run on this machine), in spec order.
    /// A service that accepts specs from others refuses these unless it trusts them.
    pub fn command_agents(&self) -> impl Iterator<Item = &str> {
        self.parts.agents.iter().filter_map(|entry| match entry {
            AgentEntry::Command(agent) => Some(&*agent.wake.name),
            _ => None,
        })
    }

    /// The most model calls the run may have in flight at once, over all its `llm` agents
    /// (`runtime.llm_concurrency_max`, [`LLM_CONCURRENCY_MAX_DEFAULT`] unless set).
    pub fn llm_concurrency_max(&self) -> usize {
        self.parts.llm_concurrency_max
    }

    /// Builds the runtime (see [`Builder::build`]). A spec with `llm` agents needs
    /// [`JobSpec::builder`] and an [`LlmFactory`].
    pub fn build(&self) -> Result<Runtime, SpecError> {
        self.builder().build()
    }

    /// A builder, to plug in extensions before building.
    pub fn builder(&self) -> Builder<'_> {
        Builder::new(self)
    }
}

impl fmt::Debug for JobSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let agents: Vec<&str> = self.parts.agents.iter().map(AgentEntry::name).collect();
        f.debug_struct("JobSpec")
            .field("origin", &self.origin)
            .field("base_dir", &self.base_dir)
            .field("objective", &self.parts.intent.objective)
            .field("agents", &agents)
            .finish_non_exhaustive()
    }
}

fn base_dir_of(origin: &Path) -> PathBuf {
    let parent = match origin.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf())
}

/// YAML as a spec language: `true`/`false` only (so `no` stays a string), no duplicate keys,
/// the parser's default limits on depth, size and aliases, and plain messages.
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        strict_booleans: true,
        with_snippet: false,
    }
}

fn yaml_problem(origin: &Arc<Path>, error: &serde_saphyr::Error) -> Problem {
    use serde_saphyr::MessageFormatter;
    let at = error
        .location()
        .map(|location| At::of(&location))
        .unwrap_or_default();
    let message = serde_saphyr::UserMessageFormatter.format_message(error.without_snippet());
    let message: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    Problem::new(origin, at, plain_limits(&message))
}

/// serde-saphyr names a breached budget with Rust debug output (`limits breached: Depth {
/// depth: 65 }`); this says it in words, keeping the number.
fn plain_limits(message: &str) -> String {
    let Some((before, breached)) = message.split_once("limits breached: ") else {
        return message.to_owned();
    };
    let (name, rest) = breached.split_once(" {").unwrap_or((breached, ""));
    let number: String = rest
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    let what = match name.trim() {
        "Depth" => "it nests deeper than the YAML limit",
        "Aliases" | "AliasExpansion" | "AliasReplays" => "it expands aliases past the YAML limit",
        "Nodes" | "Documents" | "Events" => "it has more nodes than the YAML limit allows",
        _ => "it breaks a YAML size limit",
    };
    match number.is_empty() {
        true => format!("{before}{what}"),
        false => format!("{before}{what} (reached {number})"),
    }
}
