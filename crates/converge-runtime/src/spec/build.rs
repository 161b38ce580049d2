//! From a checked spec to a [`Runtime`]: registration, grants, policies, budgets.
//!
//! Building reads nothing but the spec, so the same source text and base directory always
//! give the same engine: agents registered in the same order with the same grants, the
//! same policies, invariants and budgets. That is what lets another process rebuild the
//! runtime of a journaled run from the spec text stored in the journal. The `llm` kind is an
//! extension point: this crate parses it, and an [`LlmFactory`] (the LLM crate's) makes the
//! agent.

use converge_core::{AuthorityScope, Context, ContextKey, Engine, EngineConfig, ValidationPolicy};

use super::error::{Problem, SpecError};
use super::llm::LlmAgentSpec;
use super::schema::SchemaValidator;
use super::{AgentEntry, JobSpec};
use crate::agent::{AgentFuture, AsyncAgent};
use crate::driver::Runtime;

/// Makes the agent of an `llm` entry. The LLM crate implements it; [`Builder::llm`] plugs
/// it in. Without one, a spec with an `llm` agent does not build.
///
/// ```
/// use converge_core::{AgentEffect, AuthorityScope, Context, ContextKey};
/// use converge_runtime::spec::{JobSpec, LlmAgentSpec, LlmFactory};
/// use converge_runtime::{AgentFuture, AsyncAgent};
///
/// /// A stand-in model that never proposes anything.
/// struct Silent;
///
/// impl AsyncAgent for Silent {
///     fn name(&self) -> &str { "silent" }
///     fn dependencies(&self) -> &[ContextKey] { &[] }
///     fn requested_scope(&self) -> AuthorityScope { AuthorityScope::none() }
///     fn accepts(&self, _: &Context) -> bool { false }
///     fn execute<'a>(&'a self, _: &'a Context) -> AgentFuture<'a> {
///         Box::pin(async { AgentEffect::empty() })
///     }
/// }
///
/// struct Models;
///
/// impl LlmFactory for Models {
///     fn create(&self, spec: &LlmAgentSpec) -> Result<Box<dyn AsyncAgent>, String> {
///         match spec.model() {
///             "silent" => Ok(Box::new(Silent)),
///             other => Err(format!("unknown model {other:?}")),
///         }
///     }
/// }
///
/// let source = r#"
/// version: 1
/// intent: {objective: "summarise"}
/// agents:
///   - name: writer
///     kind: llm
///     reads: [seeds]
///     writes: [hypotheses]
///     model: silent
///     prompt: "Summarise {{ facts.seeds | tojson }}"
/// "#;
/// let spec = JobSpec::parse(source, "job.yaml").unwrap().spec;
/// let Err(error) = spec.build() else { panic!("an llm agent needs a factory") };
/// assert!(error.to_string().starts_with("job.yaml:6:11: agent `writer` is of kind `llm`"), "{error}");
/// let runtime = spec.builder().llm(&Models).build().unwrap();
/// assert_eq!(runtime.engine().agent_names().collect::<Vec<_>>(), ["intent", "writer"]);
/// ```
pub trait LlmFactory {
    /// The agent for `spec`, or why it cannot be made (reported at the agent's line).
    ///
    /// The runtime registers the agent under the spec's name, dependencies (`reads`) and
    /// grant (`writes`), whatever the agent itself declares.
    fn create(&self, spec: &LlmAgentSpec) -> Result<Box<dyn AsyncAgent>, String>;
}

/// Builds a [`Runtime`] from a spec, with optional extensions.
pub struct Builder<'s> {
    spec: &'s JobSpec,
    llm: Option<&'s dyn LlmFactory>,
}

impl<'s> Builder<'s> {
    pub(crate) fn new(spec: &'s JobSpec) -> Builder<'s> {
        Builder { spec, llm: None }
    }

    /// Uses `factory` to make the spec's `llm` agents.
    pub fn llm(mut self, factory: &'s dyn LlmFactory) -> Builder<'s> {
        self.llm = Some(factory);
        self
    }

    /// The runtime: the intent's agent first, then the `seeds` agent, then the spec's agents in
    /// spec order, each granted exactly its `writes`; a validation policy per configured key;
    /// the invariants, budgets and driver settings. Refuses the spec, with nothing built, if an
    /// `llm` agent cannot be made.
    pub fn build(self) -> Result<Runtime, SpecError> {
        let llm_agents = self.llm_agents()?;
        let parts = &self.spec.parts;
        let config = EngineConfig {
            failure_policy: parts.failure_policy,
            ..EngineConfig::default()
        };
        let mut engine = Engine::with_config(config);
        for policy in &parts.policies {
            engine.set_policy(policy.key, policy.to_policy());
        }
        let intent = engine.set_intent(parts.intent.clone());
        for invariant in &parts.invariants {
            engine.add_invariant(invariant.clone());
        }
        let mut runtime = Runtime::new(engine).with_config(parts.driver);
        runtime.declare_pure(intent);
        if let Some(seeds) = &parts.seeds {
            let scope = scope(&seeds.writes);
            let id = runtime
                .engine_mut()
                .register_with_scope(seeds.clone(), scope);
            runtime.declare_pure(id);
        }
        let mut llm_agents = llm_agents.into_iter();
        for entry in &parts.agents {
            register(&mut runtime, entry, &mut llm_agents);
        }
        Ok(runtime)
    }

    /// Makes every `llm` agent first, so a refusal leaves nothing half-built.
    fn llm_agents(&self) -> Result<Vec<SpecBound>, SpecError> {
        let mut agents = Vec::new();
        let mut problems = Vec::new();
        for entry in &self.spec.parts.agents {
            let AgentEntry::Llm(spec) = entry else {
                continue;
            };
            let made = match self.llm {
                None => Err(format!(
                    "agent `{}` is of kind `llm`, but no LLM factory was given to the builder \
                     (the llm kind is provided by the LLM crate)",
                    spec.name()
                )),
                Some(factory) => factory
                    .create(spec)
                    .map_err(|reason| format!("agent `{}`: {reason}", spec.name())),
            };
            match made {
                Ok(inner) => agents.push(SpecBound {
                    spec: spec.clone(),
                    inner,
                }),
                Err(message) => problems.push(Problem::new(&spec.origin, spec.at, message)),
            }
        }
        if problems.is_empty() {
            Ok(agents)
        } else {
            Err(SpecError::invalid(problems))
        }
    }
}

fn register(
    runtime: &mut Runtime,
    entry: &AgentEntry,
    llm_agents: &mut impl Iterator<Item = SpecBound>,
) {
    match entry {
        // Seeds and rules read the context and propose; they act on nothing outside the run.
        AgentEntry::Seed(agent) => {
            let scope = scope(&agent.writes);
            let id = runtime
                .engine_mut()
                .register_with_scope(agent.clone(), scope);
            runtime.declare_pure(id);
        }
        AgentEntry::Rule(agent) => {
            let scope = scope(&agent.writes);
            let id = runtime
                .engine_mut()
                .register_with_scope(agent.clone(), scope);
            runtime.declare_pure(id);
        }
        AgentEntry::Command(agent) => {
            let scope = scope(&agent.wake.writes);
            runtime.register_async_with_scope(agent.clone(), scope);
        }
        AgentEntry::Llm(_) => {
            // Made in spec order by `llm_agents`, so the next one is this entry's.
            if let Some(agent) = llm_agents.next() {
                let scope = scope(&agent.spec.wake.writes);
                runtime.register_async_with_scope(agent, scope);
            }
        }
    }
}

fn scope(keys: &[ContextKey]) -> AuthorityScope {
    AuthorityScope::keys(keys.iter().copied())
}

impl super::KeyPolicy {
    fn to_policy(&self) -> ValidationPolicy {
        let mut policy = ValidationPolicy::new();
        if let Some(schema) = &self.schema {
            policy = policy.with_validator(SchemaValidator::new(schema.clone()));
        }
        if self.approval {
            policy = policy.requiring_approval();
        }
        policy
    }
}

/// A factory-made agent, held to the spec's name, dependencies, grant and wake rule.
struct SpecBound {
    spec: LlmAgentSpec,
    inner: Box<dyn AsyncAgent>,
}

impl AsyncAgent for SpecBound {
    fn name(&self) -> &str {
        &self.spec.wake.name
    }

    fn dependencies(&self) -> &[ContextKey] {
        &self.spec.wake.reads
    }

    fn requested_scope(&self) -> AuthorityScope {
        scope(&self.spec.wake.writes)
    }

    /// The spec's wake rule (see [`LlmAgentSpec::accepts`]), then the agent's own.
    fn accepts(&self, ctx: &Context) -> bool {
        self.spec.accepts(ctx) && self.inner.accepts(ctx)
    }

    fn execute<'a>(&'a self, ctx: &'a Context) -> AgentFuture<'a> {
        self.inner.execute(ctx)
    }
}
