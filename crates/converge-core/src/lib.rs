//! Converge core: the pure heart of a correctness-first, context-driven multi-agent runtime.
//!
//! Agents never call each other. They read a shared, typed, append-only [`Context`] and return
//! [`AgentEffect`]s holding draft [`Proposal`]s. The [`Engine`] runs them in cycles until a
//! fixed point, promoting proposals to [`Fact`]s only through the [`PromotionGate`] — and,
//! where a key's [`ValidationPolicy`] says so, only after a named human approves that exact
//! proposal. Budgets guarantee termination; every step is a hash-chained [`Event`].
//!
//! This crate does no I/O: no clock, no randomness, no threads, no network, no storage. The
//! [`Run`] state machine says what to execute and accepts results; drivers execute.
//!
//! # Quick Start
//!
//! ```
//! use converge_core::{Engine, Context, ContextKey};
//! use converge_core::agents::{SeedAgent, ReactOnceAgent};
//!
//! // Create engine and register agents
//! let mut engine = Engine::new();
//! engine.register(SeedAgent::new("seed-1", "initial data"));
//! engine.register(ReactOnceAgent::new("hyp-1", "derived insight"));
//!
//! // Run until convergence
//! let result = engine.run(Context::new()).expect("should converge");
//!
//! // Inspect results
//! assert!(result.converged);
//! assert!(result.context.has(ContextKey::Seeds));
//! assert!(result.context.has(ContextKey::Hypotheses));
//! println!("Converged in {} cycles", result.cycles);
//! ```

mod agent;
mod agent_set;
pub mod agents;
mod approval;
mod authority;
mod budget;
mod context;
mod digest;
mod effect;
mod engine;
mod event;
mod fact;
mod gate;
mod id;
mod intent;
mod invariant;
mod key;
mod observation;
mod proposal;
mod result;
mod retry;
mod run;

pub use agent::{Agent, execute_isolated};
pub use approval::{Decision, DecisionRefusal, PendingApproval, Verdict};
pub use authority::{
    ACTOR_NAME_LEN_MAX, Actor, ActorError, ActorKind, AuthorityGrant, AuthorityScope,
};
pub use budget::{Budget, BudgetError, CycleBudget, Exhausted, FactBudget, TokenBudget};
pub use context::Context;
pub use digest::{Digest, DigestError, write_canonical};
pub use effect::{AgentEffect, AgentOutcome, TokenUsage};
pub use engine::{Engine, EngineConfig, EngineError, FailurePolicy};
pub use event::{AgentInfo, EncodingSink, Encodings, Event, EventBatch, EventRecord, Observer};
pub use fact::{CorrectionEvent, Fact, PromotionRecord};
pub use gate::{
    Candidate, PromotionGate, Rejection, STRUCTURAL_CHECKS, ValidationPolicy, ValidationReport,
    Validator,
};
pub use id::{AgentId, FACT_ID_LEN_MAX, FactId, IdError, ObservationId, ProposalId};
pub use intent::{Frame, RootIntent, SuccessCriterion};
pub use invariant::{FnInvariant, Invariant, InvariantClass, InvariantFailure};
pub use key::{ContextKey, CustomKey, KEY_NAME_LEN_MAX, KeyError};
pub use observation::{Observation, Replayability, TraceLink};
pub use proposal::{Confidence, ConfidenceError, Draft, FactRef, KeyRef, Proposal, Validated};
pub use result::{AgentFailure, ConvergeResult, RejectedProposal, RunStats, StopReason};
pub use retry::{Retry, RetryRefusal};
pub use run::{Batch, Run, Step, SubmitError};
