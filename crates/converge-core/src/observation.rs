//! Observations: everything an agent got from outside the context.
//!
//! An LLM answer, a tool result or a command's output is recorded as an [`Observation`] so that
//! replay never calls out again and an audit can follow where a fact came from. This module
//! only describes observations; recording them durably is the runtime's job.

use serde::Serialize;
use serde_json::Value;

use crate::digest::Digest;
use crate::id::{AgentId, ObservationId};

/// Where something came from, and so how it can be checked again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TraceLink {
    /// Produced in-process by an agent from the context; re-executing the agent on the same
    /// context reproduces it.
    LocalTrace {
        /// The agent that produced it.
        agent: AgentId,
        /// The cycle it was produced in.
        cycle: u32,
    },
    /// Produced by an external system (a model, an API, a program). Audit follows the reference;
    /// replay uses the recorded observation.
    RemoteRef {
        /// The external system, for example `openai:gpt-4o` or `command:./score.py`.
        system: String,
        /// The system's own reference for the exchange (request id, prompt hash…).
        reference: String,
        /// The observation that recorded the exchange.
        observation: ObservationId,
    },
}

/// Whether an observation can be reproduced when a run is replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Replayability {
    /// Re-executing on the same inputs gives the same payload.
    Deterministic,
    /// Not reproducible by re-execution; replay reuses the recorded payload.
    Recorded,
    /// Only a reference is kept (the payload is withheld); replay cannot reproduce it and says so.
    AuditOnly,
}

/// What an agent observed, as it hands it to the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub(crate) kind: String,
    pub(crate) remote: Option<(String, String)>,
    pub(crate) replayability: Replayability,
    pub(crate) payload: Value,
}

impl Observation {
    /// Something computed in-process (deterministic).
    ///
    /// ```
    /// use converge_core::{Observation, Replayability};
    ///
    /// let obs = Observation::local("score", serde_json::json!({"score": 0.7}));
    /// assert_eq!(obs.replayability(), Replayability::Deterministic);
    /// ```
    pub fn local(kind: impl Into<String>, payload: Value) -> Observation {
        Observation {
            kind: kind.into(),
            remote: None,
            replayability: Replayability::Deterministic,
            payload,
        }
    }

    /// An exchange with an external system, recorded for replay.
    pub fn remote(
        kind: impl Into<String>,
        system: impl Into<String>,
        reference: impl Into<String>,
        payload: Value,
    ) -> Observation {
        Observation {
            kind: kind.into(),
            remote: Some((system.into(), reference.into())),
            replayability: Replayability::Recorded,
            payload,
        }
    }

    /// Marks the payload as withheld: only the reference is audit material.
    pub fn audit_only(mut self) -> Observation {
        self.replayability = Replayability::AuditOnly;
        self.payload = Value::Null;
        self
    }

    /// What kind of observation this is (`llm.chat`, `command.output`…).
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// How it can be replayed.
    pub fn replayability(&self) -> Replayability {
        self.replayability
    }

    /// The recorded payload.
    pub fn payload(&self) -> &Value {
        &self.payload
    }

    /// The external system and its reference, for a remote observation.
    pub fn remote_ref(&self) -> Option<(&str, &str)> {
        self.remote
            .as_ref()
            .map(|(system, reference)| (system.as_str(), reference.as_str()))
    }

    pub(crate) fn trace(&self, id: ObservationId) -> TraceLink {
        match &self.remote {
            Some((system, reference)) => TraceLink::RemoteRef {
                system: system.clone(),
                reference: reference.clone(),
                observation: id,
            },
            None => TraceLink::LocalTrace {
                agent: id.agent(),
                cycle: id.cycle(),
            },
        }
    }

    pub(crate) fn payload_hash(&self) -> Digest {
        Digest::of_json(&self.payload)
    }
}
