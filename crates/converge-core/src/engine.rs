//! The engine: registered agents, their grants, policies, invariants and budgets.
//!
//! [`Engine::start`] and [`Engine::resume_run`] hand out the sans-I/O [`Run`]; [`Engine::run`]
//! and [`Engine::resume`] drive it sequentially in the calling thread and deliver every event
//! to the registered observers. The engine is the only place an [`AuthorityGrant`] is minted.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::agent::{Agent, execute_isolated};
use crate::agent_set::AgentSet;
use crate::approval::Decision;
use crate::authority::{AuthorityGrant, AuthorityScope};
use crate::budget::Budget;
use crate::context::Context;
use crate::event::Observer;
use crate::gate::{GateLimits, PromotionGate, ValidationPolicy};
use crate::id::AgentId;
use crate::intent::{CriterionInvariant, IntentAgent, RootIntent};
use crate::invariant::Invariant;
use crate::key::ContextKey;
use crate::result::{ConvergeResult, StopReason};
use crate::retry::{Retry, RetryRefusal};
use crate::run::{Run, Step};

/// What happens to an agent that panics or fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Record the failure, never consider the agent again, and go on.
    Quarantine,
    /// Record the failure and stop the run with [`StopReason::AgentFailed`].
    StopRun,
}

/// Named limits and policies of an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Largest canonical content of one proposal, in bytes.
    pub content_bytes_max: usize,
    /// Most proposals taken from one agent execution; the rest are rejected and recorded.
    pub proposals_per_effect_max: usize,
    /// What a failing agent does to the run.
    pub failure_policy: FailurePolicy,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            content_bytes_max: 64 * 1024,
            proposals_per_effect_max: 1024,
            failure_policy: FailurePolicy::Quarantine,
        }
    }
}

/// An agent with its grant.
pub(crate) struct Registered {
    pub(crate) agent: Box<dyn Agent>,
    pub(crate) name: Arc<str>,
    pub(crate) dependencies: Vec<ContextKey>,
    pub(crate) grant: AuthorityGrant,
}

/// Everything a run reads from its engine.
pub(crate) struct Setup {
    pub(crate) agents: Vec<Registered>,
    /// Agents without dependencies: woken whenever anything is promoted.
    pub(crate) independents: AgentSet,
    /// For each key, the agents that depend on it.
    pub(crate) dependents: BTreeMap<ContextKey, AgentSet>,
    pub(crate) policies: BTreeMap<ContextKey, ValidationPolicy>,
    pub(crate) invariants: Vec<Box<dyn Invariant>>,
    pub(crate) budget: Budget,
    pub(crate) config: EngineConfig,
}

impl Setup {
    pub(crate) fn gate(&self) -> PromotionGate<'_> {
        PromotionGate::new(
            &self.policies,
            GateLimits {
                content_bytes_max: self.config.content_bytes_max,
            },
        )
    }
}

/// Why a run could not start or resume. Nothing was executed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// Two agents share a name; names identify agents in journals and approvals.
    #[error("two agents are named {name:?}; agent names must be unique")]
    DuplicateAgentName {
        /// The repeated name.
        name: String,
    },
    /// An agent's name is empty or blank.
    #[error("agent {agent} has a blank name")]
    BlankAgentName {
        /// The agent.
        agent: AgentId,
    },
    /// The result cannot be resumed by this engine; it is handed back untouched.
    #[error("cannot resume: {problem}")]
    NotResumable {
        /// What is wrong.
        problem: &'static str,
        /// The result, unchanged.
        result: Box<ConvergeResult>,
    },
    /// A retry of failed agents was refused; the result is handed back untouched.
    #[error("cannot retry: {refusal}")]
    NotRetryable {
        /// Why.
        refusal: RetryRefusal,
        /// The result, unchanged.
        result: Box<ConvergeResult>,
    },
}

/// The convergence engine.
///
/// ```
/// use converge_core::{Engine, Context, ContextKey};
/// use converge_core::agents::{SeedAgent, ReactOnceAgent};
///
/// let mut engine = Engine::new();
/// engine.register(SeedAgent::new("seed-1", "initial data"));
/// engine.register(ReactOnceAgent::new("hyp-1", "derived insight"));
/// let result = engine.run(Context::new()).expect("should converge");
/// assert!(result.converged);
/// assert_eq!(result.context.count(ContextKey::Hypotheses), 1);
/// ```
pub struct Engine {
    setup: Setup,
    /// The root intent last applied, as given (its agent and invariants are in `setup`).
    intent: Option<RootIntent>,
    observers: Vec<Box<dyn Observer + Send>>,
}

impl Engine {
    /// An engine with no agents, default budgets and the default configuration.
    pub fn new() -> Engine {
        Engine::with_config(EngineConfig::default())
    }

    /// An engine with this configuration.
    pub fn with_config(config: EngineConfig) -> Engine {
        let setup = Setup {
            agents: Vec::new(),
            independents: AgentSet::default(),
            dependents: BTreeMap::new(),
            policies: BTreeMap::new(),
            invariants: Vec::new(),
            budget: Budget::default(),
            config,
        };
        Engine {
            setup,
            intent: None,
            observers: Vec::new(),
        }
    }

    /// Registers an agent and grants it exactly the scope it requests.
    pub fn register(&mut self, agent: impl Agent + 'static) -> AgentId {
        let scope = agent.requested_scope();
        self.register_with_scope(agent, scope)
    }

    /// Registers an agent and grants it `scope`, whatever it requests.
    pub fn register_with_scope(
        &mut self,
        agent: impl Agent + 'static,
        scope: AuthorityScope,
    ) -> AgentId {
        let id = AgentId(u32::try_from(self.setup.agents.len()).unwrap_or(u32::MAX));
        let mut dependencies = agent.dependencies().to_vec();
        dependencies.sort_unstable();
        dependencies.dedup();
        if dependencies.is_empty() {
            self.setup.independents.insert(id);
        }
        for key in &dependencies {
            self.setup.dependents.entry(*key).or_default().insert(id);
        }
        let name = Arc::from(agent.name());
        let grant = AuthorityGrant::mint(id, scope);
        self.setup.agents.push(Registered {
            agent: Box::new(agent),
            name,
            dependencies,
            grant,
        });
        id
    }

    /// The grant of a registered agent.
    pub fn grant(&self, agent: AgentId) -> Option<&AuthorityGrant> {
        self.setup
            .agents
            .get(agent.index())
            .map(|registered| &registered.grant)
    }

    /// The registered agents' names, in `AgentId` order.
    pub fn agent_names(&self) -> impl ExactSizeIterator<Item = &str> {
        self.setup.agents.iter().map(|agent| &*agent.name)
    }

    /// Sets the validation policy of a key (replacing any earlier one).
    pub fn set_policy(&mut self, key: ContextKey, policy: ValidationPolicy) {
        self.setup.policies.insert(key, policy);
    }

    /// Adds an invariant.
    pub fn add_invariant(&mut self, invariant: impl Invariant + 'static) {
        self.setup.invariants.push(Box::new(invariant));
    }

    /// Sets the budgets.
    pub fn set_budget(&mut self, budget: Budget) {
        self.setup.budget = budget;
    }

    /// Applies a root intent: an `intent` agent proposes its objective and constraints, its
    /// success criteria become acceptance invariants, and its budget (if any) applies.
    pub fn set_intent(&mut self, intent: RootIntent) -> AgentId {
        for criterion in &intent.success_criteria {
            self.add_invariant(CriterionInvariant::new(criterion.clone()));
        }
        if let Some(budget) = intent.budget {
            self.set_budget(budget);
        }
        self.intent = Some(intent.clone());
        self.register(IntentAgent::new(intent))
    }

    /// The root intent applied with [`Engine::set_intent`], if any: what the job is for.
    pub fn intent(&self) -> Option<&RootIntent> {
        self.intent.as_ref()
    }

    /// Adds an observer that receives every event of every run of this engine.
    pub fn observe(&mut self, observer: impl Observer + Send + 'static) {
        self.observers.push(Box::new(observer));
    }

    /// Starts a run over `ctx`, to be driven by the caller.
    pub fn start(&self, ctx: Context) -> Result<Run<'_>, EngineError> {
        self.setup.check_agents()?;
        Ok(Run::start(&self.setup, ctx))
    }

    /// Resumes a run that stopped awaiting approval, applying `decisions` first.
    pub fn resume_run(
        &self,
        previous: ConvergeResult,
        decisions: Vec<Decision>,
    ) -> Result<Run<'_>, EngineError> {
        resumed(&self.setup, previous, decisions)
    }

    /// Continues a run its failed agents stopped: lifts the quarantine of the agents `retry`
    /// names and hands back the run, to be driven by the caller. A refused retry changes
    /// nothing and hands the result back ([`EngineError::NotRetryable`]).
    ///
    /// ```
    /// use converge_core::{Actor, AgentEffect, AuthorityScope, Context, ContextKey, Engine, Retry};
    /// # use converge_core::{Agent, Proposal, Draft};
    /// # struct Flaky;
    /// # impl Agent for Flaky {
    /// #     fn name(&self) -> &str { "flaky" }
    /// #     fn dependencies(&self) -> &[ContextKey] { &[] }
    /// #     fn requested_scope(&self) -> AuthorityScope { AuthorityScope::keys([ContextKey::Seeds]) }
    /// #     fn accepts(&self, ctx: &Context) -> bool { !ctx.has(ContextKey::Seeds) }
    /// #     fn execute(&self, _: &Context) -> AgentEffect { AgentEffect::failed("server down") }
    /// # }
    /// let mut engine = Engine::new();
    /// engine.register(Flaky);
    /// let stopped = engine.run(Context::new()).unwrap();
    /// assert_eq!(stopped.failures.len(), 1);
    ///
    /// let retry = Retry::new(Actor::human("alice").unwrap(), ["flaky"], "server is back");
    /// let result = engine.retry(stopped, &retry).unwrap();
    /// assert_eq!(result.failures.len(), 2); // it ran again (and failed again)
    /// ```
    pub fn retry_run(
        &self,
        previous: ConvergeResult,
        retry: &Retry,
    ) -> Result<Run<'_>, EngineError> {
        retried(&self.setup, previous, retry)
    }

    /// Retries failed agents of a stopped run ([`Engine::retry_run`]) and runs it to its
    /// next stop in this thread.
    pub fn retry(
        &mut self,
        previous: ConvergeResult,
        retry: &Retry,
    ) -> Result<ConvergeResult, EngineError> {
        let run = retried(&self.setup, previous, retry)?;
        Ok(drive(run, &mut self.observers))
    }

    /// Runs to a stop, executing agents one after another in this thread.
    pub fn run(&mut self, ctx: Context) -> Result<ConvergeResult, EngineError> {
        self.setup.check_agents()?;
        let run = Run::start(&self.setup, ctx);
        Ok(drive(run, &mut self.observers))
    }

    /// Resumes a run that stopped awaiting approval and runs it to its next stop. Agents that
    /// already ran are not executed again unless new facts wake them.
    pub fn resume(
        &mut self,
        previous: ConvergeResult,
        decisions: Vec<Decision>,
    ) -> Result<ConvergeResult, EngineError> {
        let run = resumed(&self.setup, previous, decisions)?;
        Ok(drive(run, &mut self.observers))
    }
}

impl Setup {
    /// Agent names must be non-blank and unique: journals and approvals refer to them.
    fn check_agents(&self) -> Result<(), EngineError> {
        // Looked up only, never iterated: no hash order reaches an output.
        let mut names = rustc_hash::FxHashSet::default();
        names.reserve(self.agents.len());
        for (index, registered) in self.agents.iter().enumerate() {
            if registered.name.trim().is_empty() {
                return Err(EngineError::BlankAgentName {
                    agent: AgentId(index as u32),
                });
            }
            if !names.insert(&*registered.name) {
                return Err(EngineError::DuplicateAgentName {
                    name: registered.name.to_string(),
                });
            }
        }
        Ok(())
    }
}

fn resumed<'e>(
    setup: &'e Setup,
    previous: ConvergeResult,
    decisions: Vec<Decision>,
) -> Result<Run<'e>, EngineError> {
    setup.check_agents()?;
    let (ctx, state) =
        Run::suspended(setup, previous).map_err(|(result, problem)| EngineError::NotResumable {
            problem,
            result: Box::new(result),
        })?;
    Ok(Run::resume(setup, ctx, state, decisions))
}

fn retried<'e>(
    setup: &'e Setup,
    previous: ConvergeResult,
    retry: &Retry,
) -> Result<Run<'e>, EngineError> {
    setup.check_agents()?;
    let (result, agents) =
        crate::retry::check(setup, previous, retry).map_err(|(result, refusal)| {
            EngineError::NotRetryable {
                refusal,
                result: Box::new(result),
            }
        })?;
    let (ctx, state) =
        Run::kept_state(setup, result).map_err(|(result, problem)| EngineError::NotResumable {
            problem,
            result: Box::new(result),
        })?;
    Ok(Run::retried(setup, ctx, state, retry, agents))
}

impl Default for Engine {
    fn default() -> Self {
        Engine::new()
    }
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.setup.agents.iter().map(|agent| &*agent.name).collect();
        f.debug_struct("Engine")
            .field("agents", &names)
            .field("policies", &self.setup.policies)
            .field("invariants", &self.setup.invariants.len())
            .field("budget", &self.setup.budget)
            .field("config", &self.setup.config)
            .finish()
    }
}

/// The sequential driver.
fn drive(mut run: Run<'_>, observers: &mut [Box<dyn Observer + Send>]) -> ConvergeResult {
    loop {
        let step = run.next_step();
        deliver(&mut run, observers);
        let Step::Execute(batch) = step else { break };
        let outcomes = batch
            .agents()
            .iter()
            .map(|&agent| (agent, execute_isolated(run.agent(agent), run.context())))
            .collect();
        if let Err(error) = run.submit(outcomes) {
            // Cannot happen for a complete batch; stop honestly rather than loop.
            let _ = run.halt(StopReason::Halted {
                reason: error.to_string(),
            });
        }
        deliver(&mut run, observers);
    }
    deliver(&mut run, observers);
    run.into_result()
}

fn deliver(run: &mut Run<'_>, observers: &mut [Box<dyn Observer + Send>]) {
    while let Some(record) = run.poll_event() {
        for observer in observers.iter_mut() {
            observer.on_event(&record);
        }
    }
}
