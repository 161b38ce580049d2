//! Records: the serde copies of a run's inputs that the journal stores.
//!
//! A journal keeps what went *into* a run — its header, every agent outcome of every cycle,
//! human decisions, driver halts — and re-derives everything else by replaying those inputs
//! through the core. The types here are deliberate copies of core values at the I/O boundary:
//! the core's types stay free of `Deserialize` (so nothing governed can be forged from a
//! file), and each record converts explicitly with `from_core` / `into_core`. The conversion
//! is exact: `into_core(from_core(x)) == x`, field for field, including raw values the gate
//! would refuse (a NaN confidence, an invalid key name), because replay must hand the gate the
//! very same drafts.
//!
//! This module deliberately does not record facts, validated proposals, grants or results —
//! those are never stored, only re-derived — and it does no I/O.

use converge_core::{
    Actor, AgentEffect, AgentId, AgentOutcome, Batch, ContextKey, Decision, Digest, KeyRef,
    Observation, Proposal, ProposalId, Replayability, Retry, TokenUsage, Verdict,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Why a record cannot be turned back into the core value it claims to be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// A confidence that is not the text of an `f64` (`"0.5"`, `"NaN"`, `"inf"`, `"-inf"`).
    #[error("proposal {proposal}: confidence {text:?} is not a number")]
    Confidence {
        /// The proposal's position in its effect.
        proposal: usize,
        /// The stored text.
        text: String,
    },
    /// A typed key whose name is not a valid key.
    #[error("proposal {proposal}: {detail}")]
    Key {
        /// The proposal's position in its effect.
        proposal: usize,
        /// What is wrong.
        detail: String,
    },
    /// An observation no core constructor can produce (for example a local observation that
    /// claims to be recorded, or an audit-only one that kept its payload).
    #[error("observation {observation}: {detail}")]
    Observation {
        /// The observation's position in its effect.
        observation: usize,
        /// What is wrong.
        detail: &'static str,
    },
    /// Outcomes were asked of a step that is not a cycle.
    #[error("the recorded step is {kind:?}, not a cycle")]
    NotACycle {
        /// The recorded step's kind.
        kind: &'static str,
    },
    /// The recorded cycle number differs from the run's.
    #[error("the journal recorded cycle {recorded} but the run is at cycle {actual}")]
    CycleMismatch {
        /// The recorded cycle.
        recorded: u32,
        /// The cycle the run asks for.
        actual: u32,
    },
    /// The recorded batch differs from the run's (replay diverged).
    #[error(
        "the journal recorded the batch of agents {} but the run asks for {}",
        indices(recorded),
        indices(actual)
    )]
    BatchMismatch {
        /// Agent indices recorded.
        recorded: Vec<u32>,
        /// Agent indices the run asks for.
        actual: Vec<u32>,
    },
    /// A recorded outcome names an agent outside the batch, or the batch misses one.
    #[error("the recorded outcome of agent index {agent} does not match the batch")]
    Outcome {
        /// The agent index.
        agent: u32,
    },
}

/// A proposal's key as the agent named it: typed, or a raw name the gate will parse.
///
/// Both spellings are kept apart so that a round trip returns the very same
/// [`KeyRef`] variant; the gate treats `Typed(k)` and `Raw(k.name())` alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum KeyRecord {
    /// [`KeyRef::Key`]: a valid key, stored by name.
    Typed(String),
    /// [`KeyRef::Name`]: the raw text, valid or not.
    Raw(String),
}

/// A fact a draft says it was derived from, as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DerivationRecord {
    /// The fact's key.
    pub key: ContextKey,
    /// The fact id, as written (unchecked).
    pub id: String,
}

/// A draft proposal exactly as an agent wrote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProposalRecord {
    /// The key.
    pub key: KeyRecord,
    /// The fact id, as written (unchecked).
    pub id: String,
    /// The content.
    pub content: Value,
    /// The raw confidence as `f64` `Display` text, so NaN and infinities survive JSON.
    pub confidence: String,
    /// The facts it says it was derived from, in order.
    pub derived_from: Vec<DerivationRecord>,
    /// The indices of the observations of the same effect it cites, in order.
    pub citations: Vec<u32>,
    /// The correction reason, if it is a correction.
    pub correction: Option<String>,
}

/// How an observation can be replayed (a copy of [`Replayability`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayabilityRecord {
    /// [`Replayability::Deterministic`].
    Deterministic,
    /// [`Replayability::Recorded`].
    Recorded,
    /// [`Replayability::AuditOnly`].
    AuditOnly,
}

/// The external system an observation came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteRecord {
    /// The system (`openai:gpt-4o`, `command:./score.py`…).
    pub system: String,
    /// The system's reference for the exchange.
    pub reference: String,
}

/// An observation exactly as an agent handed it over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservationRecord {
    /// Its kind.
    pub kind: String,
    /// Where it came from, when remote.
    pub remote: Option<RemoteRecord>,
    /// How it can be replayed.
    pub replayability: ReplayabilityRecord,
    /// The payload (`null` when audit-only).
    pub payload: Value,
}

/// An [`AgentEffect`]: proposals, observations and token usage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EffectRecord {
    /// The draft proposals, in the agent's order.
    pub proposals: Vec<ProposalRecord>,
    /// The observations, in the agent's order.
    pub observations: Vec<ObservationRecord>,
    /// Tokens spent.
    pub usage: TokenUsage,
    /// Why the agent failed, for an effect that says so ([`AgentEffect::failed`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

impl EffectRecord {
    /// Copies an effect.
    pub fn from_core(effect: &AgentEffect) -> EffectRecord {
        let proposals = effect
            .proposals()
            .iter()
            .map(|draft| ProposalRecord {
                key: match draft.key() {
                    KeyRef::Key(key) => KeyRecord::Typed(key.name().to_owned()),
                    KeyRef::Name(name) => KeyRecord::Raw(name.clone()),
                },
                id: draft.id().to_owned(),
                content: draft.content().clone(),
                confidence: draft.confidence().to_string(),
                derived_from: draft
                    .derivations()
                    .map(|(key, id)| DerivationRecord {
                        key,
                        id: id.to_owned(),
                    })
                    .collect(),
                citations: draft.citations().to_vec(),
                correction: draft.correction().map(str::to_owned),
            })
            .collect();
        let observations = effect
            .observations()
            .iter()
            .map(|observation| ObservationRecord {
                kind: observation.kind().to_owned(),
                remote: observation
                    .remote_ref()
                    .map(|(system, reference)| RemoteRecord {
                        system: system.to_owned(),
                        reference: reference.to_owned(),
                    }),
                replayability: match observation.replayability() {
                    Replayability::Deterministic => ReplayabilityRecord::Deterministic,
                    Replayability::Recorded => ReplayabilityRecord::Recorded,
                    Replayability::AuditOnly => ReplayabilityRecord::AuditOnly,
                },
                payload: observation.payload().clone(),
            })
            .collect();
        EffectRecord {
            proposals,
            observations,
            usage: effect.usage(),
            failure: effect.failure().map(str::to_owned),
        }
    }

    /// Rebuilds the exact effect.
    pub fn into_core(self) -> Result<AgentEffect, RecordError> {
        let mut effect = AgentEffect::empty().with_usage(self.usage);
        for (index, record) in self.observations.into_iter().enumerate() {
            effect.observe(observation_into_core(index, record)?);
        }
        for (index, record) in self.proposals.into_iter().enumerate() {
            effect.propose(proposal_into_core(index, record)?);
        }
        Ok(match self.failure {
            Some(message) => effect.into_failed(message),
            None => effect,
        })
    }
}

fn proposal_into_core(
    index: usize,
    record: ProposalRecord,
) -> Result<Proposal<converge_core::Draft>, RecordError> {
    let key = match record.key {
        KeyRecord::Typed(name) => {
            let key = name
                .parse::<ContextKey>()
                .map_err(|error| RecordError::Key {
                    proposal: index,
                    detail: error.to_string(),
                })?;
            KeyRef::Key(key)
        }
        KeyRecord::Raw(name) => KeyRef::Name(name),
    };
    let confidence = record
        .confidence
        .parse::<f64>()
        .map_err(|_| RecordError::Confidence {
            proposal: index,
            text: record.confidence.clone(),
        })?;
    let mut draft = Proposal::new(key, record.id, record.content).with_confidence(confidence);
    for derivation in record.derived_from {
        draft = draft.derived_from(derivation.key, derivation.id);
    }
    for citation in record.citations {
        draft = draft.citing(citation);
    }
    if let Some(reason) = record.correction {
        draft = draft.correcting(reason);
    }
    Ok(draft)
}

fn observation_into_core(
    index: usize,
    record: ObservationRecord,
) -> Result<Observation, RecordError> {
    let refuse = |detail| RecordError::Observation {
        observation: index,
        detail,
    };
    let observation = match (record.remote, record.replayability) {
        (None, ReplayabilityRecord::Deterministic) => {
            Observation::local(record.kind, record.payload)
        }
        (Some(remote), ReplayabilityRecord::Recorded) => {
            Observation::remote(record.kind, remote.system, remote.reference, record.payload)
        }
        (remote, ReplayabilityRecord::AuditOnly) => {
            if !record.payload.is_null() {
                return Err(refuse("an audit-only observation keeps no payload"));
            }
            let observation = match remote {
                None => Observation::local(record.kind, Value::Null),
                Some(remote) => {
                    Observation::remote(record.kind, remote.system, remote.reference, Value::Null)
                }
            };
            observation.audit_only()
        }
        (None, ReplayabilityRecord::Recorded) => {
            return Err(refuse("a local observation is deterministic, not recorded"));
        }
        (Some(_), ReplayabilityRecord::Deterministic) => {
            return Err(refuse(
                "a remote observation is recorded, not deterministic",
            ));
        }
    };
    Ok(observation)
}

/// How one execution of an agent ended ([`AgentOutcome`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum OutcomeRecord {
    /// [`AgentOutcome::Completed`].
    Completed(EffectRecord),
    /// [`AgentOutcome::Failed`].
    Failed {
        /// What happened.
        message: String,
    },
}

impl OutcomeRecord {
    /// Copies an outcome.
    pub fn from_core(outcome: &AgentOutcome) -> OutcomeRecord {
        match outcome {
            AgentOutcome::Completed(effect) => {
                OutcomeRecord::Completed(EffectRecord::from_core(effect))
            }
            AgentOutcome::Failed(message) => OutcomeRecord::Failed {
                message: message.clone(),
            },
        }
    }

    /// Rebuilds the exact outcome.
    pub fn into_core(self) -> Result<AgentOutcome, RecordError> {
        Ok(match self {
            OutcomeRecord::Completed(effect) => AgentOutcome::Completed(effect.into_core()?),
            OutcomeRecord::Failed { message } => AgentOutcome::Failed(message),
        })
    }
}

/// Approve or reject ([`Verdict`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum VerdictRecord {
    /// [`Verdict::Approve`].
    Approve,
    /// [`Verdict::Reject`].
    Reject {
        /// Why.
        reason: String,
    },
}

/// A human decision on one parked proposal ([`Decision`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionRecord {
    /// The proposal decided on (`c<cycle>.a<agent>.p<n>`).
    pub proposal: ProposalId,
    /// The proposal hash the decider saw (64 hex digits).
    pub hash: Digest,
    /// Who decided (name and kind; validated when read).
    pub actor: Actor,
    /// What they decided.
    pub verdict: VerdictRecord,
}

impl DecisionRecord {
    /// Copies a decision.
    pub fn from_core(decision: &Decision) -> DecisionRecord {
        DecisionRecord {
            proposal: decision.proposal(),
            hash: decision.hash(),
            actor: decision.actor().clone(),
            verdict: match decision.verdict() {
                Verdict::Approve => VerdictRecord::Approve,
                Verdict::Reject { reason } => VerdictRecord::Reject {
                    reason: reason.clone(),
                },
            },
        }
    }

    /// Rebuilds the exact decision.
    pub fn into_core(self) -> Decision {
        match self.verdict {
            VerdictRecord::Approve => Decision::approve(self.proposal, self.hash, self.actor),
            VerdictRecord::Reject { reason } => {
                Decision::reject(self.proposal, self.hash, self.actor, reason)
            }
        }
    }
}

/// A human's decision to run failed agents of a stopped run again ([`Retry`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryRecord {
    /// Who decided (name and kind; validated when read).
    pub actor: Actor,
    /// The agents retried, by name, sorted.
    pub agents: Vec<String>,
    /// Why.
    pub reason: String,
}

impl RetryRecord {
    /// Copies a retry.
    pub fn from_core(retry: &Retry) -> RetryRecord {
        RetryRecord {
            actor: retry.actor().clone(),
            agents: retry.agents().to_vec(),
            reason: retry.reason().to_owned(),
        }
    }

    /// Rebuilds the exact retry.
    pub fn into_core(self) -> Retry {
        Retry::new(self.actor, self.agents, self.reason)
    }
}

/// What a run was created with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunHeader {
    /// Agent names in registration order (`AgentId` order).
    pub agents: Vec<String>,
    /// Who or what created the run.
    pub created_by: String,
    /// The root intent, if the run has one.
    pub intent: Option<Value>,
    /// The job spec the run's runtime was built from, if it was built from one: what lets
    /// another process (resuming, approving, replaying) build the identical runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobRecord>,
}

impl RunHeader {
    /// What the run is for: its root intent's objective, when the header records one.
    pub fn objective(&self) -> Option<&str> {
        self.intent.as_ref()?.get("objective")?.as_str()
    }
}

/// A job spec as a run's header keeps it: its exact text and where it was read from.
///
/// Relative paths inside the spec (the programs of `command` agents) are resolved against
/// the directory of `path`, so a run is rebuilt from the same text and the same directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRecord {
    /// The spec file, as an absolute path when it was read from a file.
    pub path: String,
    /// The spec's exact text.
    pub source: String,
}

/// Fewest outcomes worth recording on a thread of their own ([`StepInput::cycle`]).
const RECORD_PER_THREAD_MIN: usize = 2048;

/// The input of one journal step: everything replay must feed the core to reproduce the step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum StepInput {
    /// The run started (always step 0).
    Start {
        /// What the run was created with.
        header: RunHeader,
    },
    /// One cycle: the batch the core asked for and the outcome of each agent.
    Cycle {
        /// The cycle, from 1.
        cycle: u32,
        /// The batch's agents, as `AgentId::index` values, in id order.
        batch: Vec<u32>,
        /// Each agent's outcome, by agent index, in id order. A journal stores them apart from
        /// the step's input text (one record per agent, so each can be committed as soon as
        /// its agent finishes), so the stored text of a cycle has none.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        outcomes: Vec<(u32, OutcomeRecord)>,
    },
    /// Human decisions applied when a stopped run went on: decisions on the proposals of a
    /// run awaiting approval, or a retry of the failed agents of a run they stopped.
    Decisions {
        /// The decisions, in the order they were applied (none with a retry).
        decisions: Vec<DecisionRecord>,
        /// The retry, when the step retried failed agents.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry: Option<RetryRecord>,
    },
    /// The driver halted the run (a time budget, a cancellation, a failure).
    Halt {
        /// The stop reason, as the core serialized it.
        reason: Value,
    },
    /// A step with no input that only carries events (for example the final `run_stopped`).
    Stop,
}

impl StepInput {
    /// The step's kind: `start`, `cycle`, `decisions`, `halt` or `stop`.
    pub fn kind(&self) -> &'static str {
        match self {
            StepInput::Start { .. } => "start",
            StepInput::Cycle { .. } => "cycle",
            StepInput::Decisions { .. } => "decisions",
            StepInput::Halt { .. } => "halt",
            StepInput::Stop => "stop",
        }
    }

    /// Records one cycle: `batch` and the outcomes submitted for it (in any order; they are
    /// stored in `AgentId` order, the order the core merges them in).
    pub fn cycle(batch: &Batch, outcomes: &[(AgentId, AgentOutcome)]) -> StepInput {
        // A copy of every outcome: for a wide cycle, spread over the cores.
        let mut recorded: Vec<(u32, OutcomeRecord)> = crate::parallel::map(
            outcomes.iter().collect(),
            RECORD_PER_THREAD_MIN,
            |(agent, outcome)| (agent_index(*agent), OutcomeRecord::from_core(outcome)),
        );
        recorded.sort_by_key(|(agent, _)| *agent);
        StepInput::Cycle {
            cycle: batch.cycle(),
            batch: batch.agents().iter().copied().map(agent_index).collect(),
            outcomes: recorded,
        }
    }

    /// Records human decisions.
    pub fn decisions(decisions: &[Decision]) -> StepInput {
        StepInput::Decisions {
            decisions: decisions.iter().map(DecisionRecord::from_core).collect(),
            retry: None,
        }
    }

    /// Records a retry of failed agents: a `decisions` step holding no decision and the retry.
    ///
    /// ```
    /// use converge_core::{Actor, Retry};
    /// use converge_journal::StepInput;
    ///
    /// let retry = Retry::new(Actor::human("alice").unwrap(), ["fetch"], "the server is back");
    /// let input = StepInput::retry(&retry);
    /// assert_eq!(input.kind(), "decisions");
    /// assert_eq!(input.retry_into_core(), Some(retry));
    /// assert!(input.decisions_into_core().is_empty());
    /// ```
    pub fn retry(retry: &Retry) -> StepInput {
        StepInput::Decisions {
            decisions: Vec::new(),
            retry: Some(RetryRecord::from_core(retry)),
        }
    }

    /// The retry of a recorded `Decisions` step that retried failed agents.
    pub fn retry_into_core(&self) -> Option<Retry> {
        match self {
            StepInput::Decisions {
                retry: Some(retry), ..
            } => Some(retry.clone().into_core()),
            _ => None,
        }
    }

    /// The outcomes of a recorded cycle, ready for `Run::submit` on a replayed run that asks
    /// for `batch`. Refuses if the replayed run asks for a different cycle or batch: replay
    /// has diverged from the recording.
    pub fn outcomes_for(&self, batch: &Batch) -> Result<Vec<(AgentId, AgentOutcome)>, RecordError> {
        let StepInput::Cycle {
            cycle,
            batch: recorded,
            outcomes,
        } = self
        else {
            return Err(RecordError::NotACycle { kind: self.kind() });
        };
        if *cycle != batch.cycle() {
            return Err(RecordError::CycleMismatch {
                recorded: *cycle,
                actual: batch.cycle(),
            });
        }
        let actual: Vec<u32> = batch.agents().iter().copied().map(agent_index).collect();
        if *recorded != actual {
            return Err(RecordError::BatchMismatch {
                recorded: recorded.clone(),
                actual,
            });
        }
        for (position, expected) in actual.iter().enumerate() {
            match outcomes.get(position) {
                Some((agent, _)) if agent == expected => {}
                Some((agent, _)) => return Err(RecordError::Outcome { agent: *agent }),
                None => return Err(RecordError::Outcome { agent: *expected }),
            }
        }
        if let Some((agent, _)) = outcomes.get(actual.len()) {
            return Err(RecordError::Outcome { agent: *agent });
        }
        batch
            .agents()
            .iter()
            .zip(outcomes)
            .map(|(agent, (_, outcome))| Ok((*agent, outcome.clone().into_core()?)))
            .collect()
    }

    /// The decisions of a recorded `Decisions` step, in order; empty for any other step.
    pub fn decisions_into_core(&self) -> Vec<Decision> {
        match self {
            StepInput::Decisions { decisions, .. } => decisions
                .iter()
                .cloned()
                .map(DecisionRecord::into_core)
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// Agent indices as text: `2, 5, 7`.
fn indices(agents: &[u32]) -> String {
    let text: Vec<String> = agents.iter().map(ToString::to_string).collect();
    text.join(", ")
}

fn agent_index(agent: AgentId) -> u32 {
    u32::try_from(agent.index()).unwrap_or(u32::MAX)
}
