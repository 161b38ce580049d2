//! `converge why`: why a fact is true, as a tree — the agent and proposal it came from, its
//! validations and approval, the observations its evidence names (a model exchange or a
//! command's output, abridged; `converge show` prints one whole), and, below, each fact it
//! was derived from, explained the same way. Each fact and each observation is shown once.
//! The JSON form is the server's `why_json`, so `--json` and the API agree.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use converge_core::{ContextKey, ConvergeResult, Fact, ObservationId};
use converge_runtime::Inspection;
use converge_server::view::{lookup, why_json};

use crate::exchange;
use crate::show::{content_text, fact_ref, retry_text};

/// Finds a fact by `KEY/ID`, or by `ID` alone when exactly one key holds it.
pub(crate) fn find_fact<'r>(result: &'r ConvergeResult, name: &str) -> Result<&'r Fact, String> {
    if let Some((key, id)) = name.split_once('/') {
        let key: ContextKey = key
            .parse()
            .map_err(|error| format!("{key:?} is not a context key: {error}"))?;
        return result
            .context
            .fact(key, id)
            .ok_or_else(|| format!("the run has no fact {key}/{id}"));
    }
    let matches: Vec<&Fact> = result
        .context
        .keys()
        .filter_map(|key| result.context.fact(key, name))
        .collect();
    match matches.as_slice() {
        [fact] => Ok(fact),
        [] => Err(format!("the run has no fact with id {name:?}")),
        many => Err(format!(
            "{} keys hold a fact {name:?}; name one of: {}",
            many.len(),
            many.iter()
                .map(|fact| fact_ref(fact.key(), fact.id().as_str()))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// `converge why`: the provenance tree of one fact, with the recorded observations (a model's
/// prompts and answer) its evidence names.
pub(crate) fn explain(seen: &Inspection, fact: &Fact, json: bool) -> String {
    if json {
        return why_json(seen, fact).to_string();
    }
    let mut out = String::new();
    let mut shown = Shown::default();
    why_text(seen, fact, "", &mut shown, &mut out);
    out
}

/// What a provenance tree has shown already, so each fact and observation is shown once.
#[derive(Default)]
struct Shown {
    facts: BTreeSet<(ContextKey, String)>,
    observations: BTreeSet<ObservationId>,
}

/// The evidence line for `id`, followed by the observation, abridged, unless it was shown.
fn evidence_text(seen: &Inspection, id: ObservationId, shown: &mut Shown) -> String {
    let Some(observed) = seen.observation(id) else {
        return format!("evidence: {id} (not recorded in the journal)");
    };
    if !shown.observations.insert(id) {
        return format!("evidence: {id} (shown above)");
    }
    let length = exchange::Length::Abridged {
        run: seen.summary.id.as_str(),
    };
    let body = exchange::text(observed, length);
    let indented: String = body.lines().map(|line| format!("\n  {line}")).collect();
    format!("evidence: {id} ({}){indented}", observed.record.kind)
}

fn why_text(seen: &Inspection, fact: &Fact, indent: &str, shown: &mut Shown, out: &mut String) {
    let result = &seen.result;
    shown
        .facts
        .insert((fact.key(), fact.id().as_str().to_owned()));
    let record = fact.record();
    let _ = writeln!(
        out,
        "{} = {}  (version {}, confidence {})",
        fact_ref(fact.key(), fact.id().as_str()),
        content_text(fact.content()),
        fact.version(),
        fact.confidence().value()
    );
    let mut lines = vec![
        format!(
            "proposed by agent `{}` in cycle {} (proposal {}, hash {}…)",
            record.agent_name(),
            record.cycle(),
            record.proposal(),
            &fact.proposal_hash().to_string()[..16]
        ),
        format!(
            "validated: structural checks [{}]; validators [{}]; policy version {}",
            record.validation().structural().join(", "),
            record
                .validation()
                .validators()
                .collect::<Vec<_>>()
                .join(", "),
            record.policy_version()
        ),
        match record.approver() {
            Some(actor) => format!(
                "approved by {} ({})",
                actor.name(),
                serde_json::to_value(actor.kind())
                    .ok()
                    .and_then(|kind| kind.as_str().map(str::to_owned))
                    .unwrap_or_default()
            ),
            None => "no approval required".to_owned(),
        },
    ];
    // A fact from an agent that failed first was made possible by a person's retry.
    if let Some(recorded) = seen.retry_behind(fact) {
        lines.push(format!(
            "its agent ran again after failing: {}",
            retry_text(recorded)
        ));
    }
    if let Some(correction) = record.correction() {
        lines.push(format!(
            "corrects version {} of {}/{} (content hash {}): {}",
            correction.supersedes_version,
            correction.fact.key,
            correction.fact.id,
            correction.supersedes_hash,
            correction.reason
        ));
    }
    for id in record.evidence() {
        lines.push(evidence_text(seen, *id, shown));
    }
    let sources = record.derived_from();
    if sources.is_empty() {
        lines.push("derived from no other fact".to_owned());
    }
    let last_line = sources.is_empty();
    for (index, line) in lines.iter().enumerate() {
        let (branch, below) = if last_line && index + 1 == lines.len() {
            ("└─", " ")
        } else {
            ("├─", "│")
        };
        // A line of several (an observation under its evidence line) hangs below its branch.
        let mut parts = line.lines();
        let _ = writeln!(out, "{indent}{branch} {}", parts.next().unwrap_or_default());
        for part in parts {
            let hung = format!("{indent}{below}  {part}");
            let _ = writeln!(out, "{}", hung.trim_end());
        }
    }
    if sources.is_empty() {
        return;
    }
    let _ = writeln!(out, "{indent}└─ derived from:");
    for (index, source) in sources.iter().enumerate() {
        let last = index + 1 == sources.len();
        let (branch, child) = if last {
            ("└─", "   ")
        } else {
            ("├─", "│  ")
        };
        let child_indent = format!("{indent}   {child}");
        let _ = write!(out, "{indent}   {branch} ");
        match lookup(result, source) {
            Some(parent)
                if !shown
                    .facts
                    .contains(&(parent.key(), parent.id().as_str().to_owned())) =>
            {
                why_text(seen, parent, &child_indent, shown, out);
            }
            Some(parent) => {
                let _ = writeln!(
                    out,
                    "{} (shown above)",
                    fact_ref(parent.key(), parent.id().as_str())
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "{} (not in the context)",
                    fact_ref(source.key, source.id.as_str())
                );
            }
        }
    }
}
