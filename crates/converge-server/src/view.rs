//! Runs as JSON: facts with their provenance, pending approvals and "why" trees, built from a
//! re-derived run. The command line's `--json` output and the HTTP API share these, so the two
//! never disagree.

use std::collections::BTreeSet;

use converge_core::{ConvergeResult, Fact, FactRef, StopReason};
use converge_runtime::{Inspection, RecordedObservation, Verification};
use serde_json::{Value, json};

/// One fact with its provenance: key, id, version, content, confidence and hashes, the agent
/// and cycle that produced it, what it was derived from, its evidence, validations, policy
/// version, approver, correction and trace.
///
/// ```
/// use converge_core::agents::SeedAgent;
/// use converge_core::{Context, ContextKey, Engine};
///
/// let mut engine = Engine::new();
/// engine.register(SeedAgent::new("seed-1", "hello"));
/// let result = engine.run(Context::new()).unwrap();
/// let fact = result.context.get(ContextKey::Seeds).next().unwrap();
/// let json = converge_server::view::fact_json(fact);
/// assert_eq!(json["id"], "seed-1");
/// assert_eq!(json["agent"], "seed-1");
/// ```
pub fn fact_json(fact: &Fact) -> Value {
    let record = fact.record();
    json!({
        "key": fact.key(),
        "id": fact.id(),
        "version": fact.version(),
        "content": fact.content(),
        "confidence": fact.confidence().value(),
        "content_hash": fact.content_hash(),
        "agent": record.agent_name(),
        "cycle": record.cycle(),
        "proposal": record.proposal(),
        "proposal_hash": fact.proposal_hash(),
        "derived_from": record.derived_from(),
        "evidence": record.evidence(),
        "structural_checks": record.validation().structural(),
        "validators": record.validation().validators().collect::<Vec<_>>(),
        "policy_version": record.policy_version(),
        "approver": record.approver(),
        "correction": record.correction(),
        "trace": record.trace(),
    })
}

/// The proposals a run awaiting approval has parked, each with the content an approver is
/// shown and the hash a decision must name; empty for any other run.
pub fn pending_json(result: &ConvergeResult) -> Value {
    let StopReason::AwaitingApproval { pending } = &result.stop_reason else {
        return json!([]);
    };
    Value::Array(
        pending
            .iter()
            .map(|pending| {
                json!({
                    "proposal": pending.proposal,
                    "hash": pending.hash,
                    "key": pending.fact.key,
                    "id": pending.fact.id,
                    "content": result
                        .pending_proposal(pending.proposal)
                        .map(|proposal| proposal.content().clone()),
                    "confidence": pending.confidence.value(),
                    "agent": pending.agent,
                })
            })
            .collect(),
    )
}

/// Why `fact` is true: [`fact_json`] with its `sources`, each explained the same way (a
/// source already shown above is marked `shown_above`, one no longer in the context
/// `missing`), and the recorded `observations` its evidence names, payloads included (a
/// model exchange's prompts, answer, tokens and latency).
pub fn why_json(seen: &Inspection, fact: &Fact) -> Value {
    why(seen, fact, &mut BTreeSet::new())
}

fn why(inspection: &Inspection, fact: &Fact, seen: &mut BTreeSet<(String, String)>) -> Value {
    let result = &inspection.result;
    let mut value = fact_json(fact);
    let observations: Vec<&RecordedObservation> = fact
        .record()
        .evidence()
        .iter()
        .filter_map(|id| inspection.observation(*id))
        .collect();
    value["observations"] = json!(observations);
    // A fact from an agent that failed first was made possible by a person's retry.
    value["retried"] = json!(inspection.retry_behind(fact));
    seen.insert((fact.key().to_string(), fact.id().as_str().to_owned()));
    let sources: Vec<Value> = fact
        .record()
        .derived_from()
        .iter()
        .map(|source| match lookup(result, source) {
            Some(parent)
                if !seen.contains(&(parent.key().to_string(), parent.id().as_str().to_owned())) =>
            {
                why(inspection, parent, seen)
            }
            Some(_) => json!({"key": source.key, "id": source.id, "shown_above": true}),
            None => json!({"key": source.key, "id": source.id, "missing": true}),
        })
        .collect();
    value["sources"] = Value::Array(sources);
    value
}

/// What a verification found: `{"intact": true, steps, events, root_hash, record_hash}` or
/// `{"intact": false, at, step, first_bad_seq, reason}` (`at` names the first bad place in
/// words; `first_bad_seq` is its event seq when it is an event, else null).
pub fn verification_json(verification: &Verification) -> Value {
    match verification {
        Verification::Intact {
            steps,
            events,
            root_hash,
            record_hash,
        } => json!({
            "intact": true,
            "steps": steps,
            "events": events,
            "root_hash": root_hash,
            "record_hash": record_hash,
        }),
        Verification::Broken { at, reason } => json!({
            "intact": false,
            "at": at.to_string(),
            "step": at.step(),
            "first_bad_seq": at.seq(),
            "reason": reason.to_string(),
        }),
    }
}

/// The current fact a provenance link names, if it is still in the context.
pub fn lookup<'r>(result: &'r ConvergeResult, source: &FactRef) -> Option<&'r Fact> {
    result.context.fact(source.key, source.id.as_str())
}
