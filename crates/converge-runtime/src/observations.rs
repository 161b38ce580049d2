//! The observations a run recorded, each under the id its facts cite it by.
//!
//! The core keeps only an observation's hash in its events; the payload — a model's prompt
//! and answer, a command's output — lives in the journal's step inputs. This module reads
//! them back out of committed steps, in id order, for the commands and the API that show
//! them (`converge why`, `converge show`, `inspect --json`). It re-derives nothing and
//! executes nothing: what it returns is exactly what the journal holds.

use converge_core::ObservationId;
use serde::Serialize;

use converge_journal::{ObservationRecord, OutcomeRecord, StepInput};

/// One observation as its run recorded it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct RecordedObservation {
    /// Its id (`c<cycle>.a<agent>.o<n>`), which a fact's evidence names.
    pub id: ObservationId,
    /// The name of the agent that made it.
    pub agent: String,
    /// The observation: its kind, where it came from, how it replays, and its payload.
    #[serde(flatten)]
    pub record: ObservationRecord,
}

/// Every observation of the inputs of committed steps, in id order (cycle, agent, position);
/// `agents` are the run's agent names in id order.
pub(crate) fn recorded(
    inputs: impl IntoIterator<Item = StepInput>,
    agents: &[String],
) -> Vec<RecordedObservation> {
    let mut observations = Vec::new();
    for input in inputs {
        let StepInput::Cycle {
            cycle, outcomes, ..
        } = input
        else {
            continue;
        };
        for (agent, outcome) in outcomes {
            let OutcomeRecord::Completed(effect) = outcome else {
                continue;
            };
            for (seq, record) in effect.observations.into_iter().enumerate() {
                let Ok(id) = format!("c{cycle}.a{agent}.o{seq}").parse() else {
                    continue;
                };
                let name = agents.get(agent as usize).cloned();
                observations.push(RecordedObservation {
                    id,
                    agent: name.unwrap_or_else(|| format!("#{agent}")),
                    record,
                });
            }
        }
    }
    observations
}

#[cfg(test)]
mod tests {
    use super::*;
    use converge_core::TokenUsage;
    use converge_journal::{EffectRecord, RemoteRecord, ReplayabilityRecord};
    use serde_json::json;

    fn cycle(cycle: u32, outcomes: Vec<(u32, OutcomeRecord)>) -> StepInput {
        StepInput::Cycle {
            cycle,
            batch: outcomes.iter().map(|(agent, _)| *agent).collect(),
            outcomes,
        }
    }

    fn observed(payloads: &[&str]) -> OutcomeRecord {
        OutcomeRecord::Completed(EffectRecord {
            proposals: Vec::new(),
            observations: payloads
                .iter()
                .map(|payload| ObservationRecord {
                    kind: "llm.exchange".to_owned(),
                    remote: Some(RemoteRecord {
                        system: "ollama:small".to_owned(),
                        reference: (*payload).to_owned(),
                    }),
                    replayability: ReplayabilityRecord::Recorded,
                    payload: json!({"answer": payload}),
                })
                .collect(),
            usage: TokenUsage::default(),
            failure: None,
        })
    }

    #[test]
    fn observations_are_read_out_of_cycles_under_their_ids_with_agent_names() {
        let failed = OutcomeRecord::Failed {
            message: "timed out".to_owned(),
        };
        let steps = vec![
            cycle(1, vec![(0, observed(&["a"])), (1, failed)]),
            cycle(2, vec![(1, observed(&["b", "c"])), (7, observed(&["d"]))]),
        ];
        let agents = ["seed".to_owned(), "explainer".to_owned()];
        let seen: Vec<(String, String, String)> = recorded(steps, &agents)
            .into_iter()
            .map(|o| {
                (
                    o.id.to_string(),
                    o.agent,
                    o.record.payload["answer"].to_string(),
                )
            })
            .collect();
        let expected = [
            ("c1.a0.o0", "seed", "\"a\""),
            ("c2.a1.o0", "explainer", "\"b\""),
            ("c2.a1.o1", "explainer", "\"c\""),
            ("c2.a7.o0", "#7", "\"d\""),
        ];
        let expected: Vec<(String, String, String)> = expected
            .iter()
            .map(|(id, agent, answer)| (id.to_string(), agent.to_string(), answer.to_string()))
            .collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn an_observation_serializes_flat_with_its_id() {
        let steps = vec![cycle(3, vec![(4, observed(&["x"]))])];
        let agents: Vec<String> = (0..5).map(|i| format!("agent-{i}")).collect();
        let json = serde_json::to_value(&recorded(steps, &agents)[0]).unwrap();
        assert_eq!(json["id"], "c3.a4.o0");
        assert_eq!(json["agent"], "agent-4");
        assert_eq!(json["kind"], "llm.exchange");
        assert_eq!(json["remote"]["system"], "ollama:small");
        assert_eq!(json["replayability"], "recorded");
        assert_eq!(json["payload"]["answer"], "x");
    }
}
