//! The output contract of an `llm` agent: the JSON a model must answer with, how it is asked
//! for, and how an answer becomes draft proposals.
//!
//! A model answers with one JSON object:
//!
//! ```json
//! {"proposals": [{"key": "hypotheses", "id": "seasonal-demand",
//!                 "content": {"claim": "…"}, "confidence": 0.7}]}
//! ```
//!
//! The schema sent to the provider lists the agent's granted keys and, for each, the JSON
//! Schema the spec gives its content, so a well-behaved model never proposes anything else.
//! The answer is then checked against the contract's shape in every case (whatever the
//! provider promised), and each proposal goes to the engine as a draft — where the grant, the
//! key's schema and any approval policy are enforced exactly as for every other agent. So a
//! model that proposes into a key it was not granted gets a recorded rejection, and nothing
//! it says can widen its grant.

use converge_core::{ContextKey, Draft, FACT_ID_LEN_MAX, Proposal};
use serde::Deserialize;
use serde_json::{Value, json};

/// The most proposals one answer may carry; more is an invalid answer.
pub const ANSWER_PROPOSALS_MAX: usize = 256;

/// How much of an invalid answer an error message quotes.
const QUOTED_CHARS_MAX: usize = 300;

/// The JSON Schema sent to the provider: proposals into `writes` only, each key's content
/// matching `schema_of(key)` when the spec gives one.
pub(crate) fn requested_schema(
    writes: &[ContextKey],
    schema_of: impl Fn(ContextKey) -> Option<Value>,
) -> Value {
    let variants: Vec<Value> = writes
        .iter()
        .map(|&key| {
            json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["key", "id", "content", "confidence"],
                "properties": {
                    "key": {"type": "string", "enum": [key.name()]},
                    "id": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": FACT_ID_LEN_MAX,
                        "pattern": "^[A-Za-z0-9._:/@-]+$"
                    },
                    "content": schema_of(key).unwrap_or_else(|| json!({})),
                    "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                },
            })
        })
        .collect();
    let item = match <[Value; 1]>::try_from(variants) {
        Ok([only]) => only,
        Err(variants) => json!({"anyOf": variants}),
    };
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["proposals"],
        "properties": {
            "proposals": {"type": "array", "maxItems": ANSWER_PROPOSALS_MAX, "items": item}
        },
    })
}

/// What the system prompt says of the contract, after the spec's own system prompt.
pub(crate) fn instructions(writes: &[ContextKey], schema: &Value) -> String {
    let keys: Vec<&str> = writes.iter().map(|key| key.name()).collect();
    format!(
        "Answer with one JSON object and nothing else, of the form \
         {{\"proposals\": [{{\"key\": …, \"id\": …, \"content\": …, \"confidence\": …}}]}}. \
         Each proposal suggests one fact: `key` is one of {keys}, `id` a short identifier \
         (ASCII letters, digits and . _ : / @ -), `content` the fact itself, `confidence` a \
         number from 0 to 1. Propose nothing (an empty list) when there is nothing to add. \
         The answer must match this JSON Schema: {schema}",
        keys = keys.join(", "),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer {
    proposals: Vec<AnswerProposal>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswerProposal {
    key: String,
    id: String,
    content: Value,
    #[serde(default)]
    confidence: Option<f64>,
}

/// The drafts of an answer, in its order, or why it does not keep the contract. Keys are
/// passed on as written: the gate validates them against the grant.
pub(crate) fn drafts(text: &str) -> Result<Vec<Proposal<Draft>>, String> {
    let answer: Answer = serde_json::from_str(strip_fence(text)).map_err(|error| {
        format!(
            "the answer is not the JSON the contract asks for ({error}); it began with {:?}",
            text.chars().take(QUOTED_CHARS_MAX).collect::<String>()
        )
    })?;
    if answer.proposals.len() > ANSWER_PROPOSALS_MAX {
        return Err(format!(
            "the answer has {} proposals; the contract allows {ANSWER_PROPOSALS_MAX}",
            answer.proposals.len()
        ));
    }
    Ok(answer
        .proposals
        .into_iter()
        .map(|proposal| {
            Proposal::new(proposal.key, proposal.id, proposal.content)
                .with_confidence(proposal.confidence.unwrap_or(1.0))
        })
        .collect())
}

/// The JSON inside a Markdown code fence, which models asked for JSON without structured
/// output often wrap it in; any other text is returned as it is.
fn strip_fence(text: &str) -> &str {
    let trimmed = text.trim();
    let Some(inner) = trimmed.strip_prefix("```") else {
        return trimmed;
    };
    let inner = inner.strip_prefix("json").unwrap_or(inner);
    inner.strip_suffix("```").map_or(trimmed, str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_becomes_drafts_with_keys_as_written() {
        let text = r#"{"proposals": [
            {"key": "hypotheses", "id": "h1", "content": {"claim": "x"}, "confidence": 0.5},
            {"key": "constraints", "id": "c1", "content": "approved"}
        ]}"#;
        let drafts = drafts(text).unwrap();
        assert_eq!(drafts.len(), 2);
        assert_eq!(drafts[0].confidence(), 0.5);
        assert_eq!(drafts[1].key().to_string(), "constraints");
        assert_eq!(drafts[1].confidence(), 1.0);
        assert_eq!(
            super::drafts("```json\n{\"proposals\": []}\n```")
                .unwrap()
                .len(),
            0
        );
    }

    #[test]
    fn answers_that_break_the_contract_are_refused_with_a_quote() {
        for (text, expected) in [
            ("Sure! Here you go", "is not the JSON"),
            (
                r#"{"proposals": [{"key": "h", "id": "x"}]}"#,
                "missing field `content`",
            ),
            (
                r#"{"proposals": [], "approved": true}"#,
                "unknown field `approved`",
            ),
            (r#"{"facts": []}"#, "unknown field `facts`"),
        ] {
            let error = drafts(text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn the_requested_schema_names_only_granted_keys() {
        let schema = requested_schema(&[ContextKey::Hypotheses], |_| {
            Some(json!({"type": "object"}))
        });
        let item = &schema["properties"]["proposals"]["items"];
        assert_eq!(item["properties"]["key"]["enum"], json!(["hypotheses"]));
        assert_eq!(item["properties"]["content"], json!({"type": "object"}));
        let two = requested_schema(&[ContextKey::Hypotheses, ContextKey::Signals], |_| None);
        assert_eq!(
            two["properties"]["proposals"]["items"]["anyOf"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert!(jsonschema::validator_for(&two).is_ok());
    }
}
