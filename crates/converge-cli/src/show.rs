//! What the commands print: run summaries, fact listings, exports (provenance trees are in
//! `why.rs`, observations in `exchange.rs`).
//!
//! Every view has a text form for people and a JSON form (`--json`) for scripts; both are
//! built from the same re-derived state, so they never disagree.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use converge_core::{
    ContextKey, ConvergeResult, Exhausted, PendingApproval, ProposalId, StopReason,
};
use converge_runtime::spec::{JobSpec, Loaded, Problem};
use converge_runtime::{Inspection, RunId, RunStatus, RunSummary};
use converge_server::view::{fact_json, pending_json};
use serde_json::{Value, json};

/// `1 cycle`, `2 cycles`: a count with its noun, plural when it is not one.
pub(crate) fn count(n: impl Into<u64>, noun: &str) -> String {
    let n: u64 = n.into();
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// What `converge check` says of a valid spec: one line, or JSON.
pub(crate) fn spec_summary(loaded: &Loaded, path: &std::path::Path, json: bool) -> String {
    let spec = &loaded.spec;
    let agents: Vec<&str> = spec.agent_names().collect();
    let keys: Vec<String> = spec.configured_keys().map(|key| key.to_string()).collect();
    let invariants: Vec<&str> = spec.invariant_names().collect();
    if json {
        let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
        return json!({
            "spec": path.display().to_string(),
            "valid": true,
            "agents": agents,
            "keys": keys,
            "invariants": invariants,
            "warnings": warnings,
        })
        .to_string();
    }
    let warnings = match loaded.warnings.len() {
        0 => String::new(),
        n => format!(" ({} above)", count(n as u64, "warning")),
    };
    format!(
        "{} is valid: {}, {}, {}{warnings}",
        path.display(),
        count(agents.len() as u64, "agent"),
        count(keys.len() as u64, "configured key"),
        count(invariants.len() as u64, "invariant"),
    )
}

/// What `converge check --json` says of a refused spec: every problem, located.
pub(crate) fn spec_problems(problems: &[Problem], path: &std::path::Path) -> String {
    let problems: Vec<Value> = problems
        .iter()
        .map(|problem| {
            json!({
                "line": problem.line(),
                "column": problem.column(),
                "message": problem.message(),
            })
        })
        .collect();
    json!({"spec": path.display().to_string(), "valid": false, "problems": problems}).to_string()
}

/// A stop reason in a few words, agents named by their names in `agents` (registration
/// order; an agent not in it by its index).
pub(crate) fn reason_text(reason: &StopReason, agents: &[String]) -> String {
    match reason {
        StopReason::Converged => "converged".to_owned(),
        StopReason::AwaitingApproval { pending } => {
            format!(
                "awaiting approval of {}",
                count(pending.len() as u64, "proposal")
            )
        }
        StopReason::BudgetExhausted { exhausted } => {
            format!("budget exhausted: {}", exhausted_text(exhausted))
        }
        StopReason::InvariantViolated {
            invariant, detail, ..
        } => format!("invariant `{invariant}` violated: {detail}"),
        StopReason::InvariantUnevaluable {
            invariant, detail, ..
        } => format!(
            "invariant `{invariant}` could not be evaluated (nothing is known to be violated): {detail}"
        ),
        StopReason::AgentFailed { agent, message } => match agents.get(agent.index()) {
            Some(name) => format!("agent {name} failed: {message}"),
            None => format!("agent {agent} failed: {message}"),
        },
        StopReason::Halted { reason } => format!("halted: {reason}"),
    }
}

/// Which budget ran out, in words.
fn exhausted_text(exhausted: &Exhausted) -> String {
    match exhausted {
        Exhausted::Cycles { limit } => format!("cycle budget of {limit}"),
        Exhausted::Facts { limit } => format!("fact budget of {limit}"),
        Exhausted::Tokens { limit, used } => format!("token budget of {limit} ({used} used)"),
        Exhausted::Time {
            limit_ms,
            elapsed_ms,
        } => format!("time budget of {limit_ms} ms ({elapsed_ms} ms elapsed)"),
    }
}

/// The status column of `converge runs`.
pub(crate) fn status_text(status: &RunStatus) -> String {
    match status {
        RunStatus::Running => "running".to_owned(),
        RunStatus::AwaitingApproval => "awaiting approval".to_owned(),
        RunStatus::Stopped { reason } => match reason.get("stop").and_then(Value::as_str) {
            Some(stop) => stop.replace('_', " "),
            None => "stopped".to_owned(),
        },
    }
}

fn status_json(status: &RunStatus) -> Value {
    serde_json::to_value(status).unwrap_or(Value::Null)
}

/// Most failures and rejections a summary explains line by line; `converge inspect` lists
/// them all.
const EXPLAINED_MAX: usize = 20;

/// How much a summary says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detail {
    /// JSON on stdout.
    Json,
    /// Text, with each agent failure and rejection explained.
    Explained,
    /// Text, counts only (`--quiet`).
    Quiet,
}

/// The summary printed after `run`, `resume`, `approve` and `reject`: the stop, the counts,
/// and (unless quiet) each agent failure and rejection with the agent's name and the reason.
/// `agents` are the run's agent names, in registration order.
pub(crate) fn summary(
    run: &RunId,
    result: &ConvergeResult,
    detail: Detail,
    agents: &[String],
) -> String {
    let json = detail == Detail::Json;
    if json {
        return json!({
            "run": run.as_str(),
            "converged": result.converged,
            "stop_reason": result.stop_reason,
            "cycles": result.cycles,
            "facts": result.context.len(),
            "stats": result.stats,
            "rejections": result.rejections.len(),
            "failures": result.failures,
            "pending": pending_json(result),
            "root_hash": result.root_hash,
        })
        .to_string();
    }
    let mut out = String::new();
    let stop = match (&result.stop_reason, result.failed_agents().len()) {
        (StopReason::Converged, failed @ 1..) => {
            format!("converged, but {} failed", count(failed as u64, "agent"))
        }
        (reason, _) => reason_text(reason, agents),
    };
    let _ = writeln!(out, "run {run}: {stop}");
    let _ = writeln!(
        out,
        "  {} · {} · {} rejected · {}",
        count(result.cycles, "cycle"),
        count(result.context.len() as u64, "fact"),
        result.rejections.len(),
        count(result.failures.len() as u64, "agent failure")
    );
    if detail == Detail::Explained {
        out.push_str(&explained(result, agents));
    }
    let _ = writeln!(out, "  root hash {}", result.root_hash);
    if let StopReason::AwaitingApproval { pending } = &result.stop_reason {
        out.push_str(&pending_text(result, pending));
        let _ = writeln!(
            out,
            "  approve with: converge approve {run} <PROPOSAL> --as <NAME>"
        );
    }
    let failed = result.failed_agents();
    if result.is_retryable() && !json {
        let names: Vec<&str> = failed
            .iter()
            .filter_map(|agent| agents.get(agent.index()).map(String::as_str))
            .collect();
        let _ = writeln!(
            out,
            "  failed agents: {}; once the cause is fixed, run them again with: converge retry \
             {run} --as <NAME> --reason <WHY>",
            names.join(", ")
        );
    }
    out
}

/// `converge runs`.
/// The job a run was started from, as a listing shows it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Job {
    /// The spec's file name (`release-approval.yaml`), if the run came from one.
    pub(crate) name: Option<String>,
    /// The objective its intent states.
    pub(crate) objective: Option<String>,
}

impl Job {
    /// The job of a run, from its journal header (nothing when the header is unreadable).
    pub(crate) fn of(header: Option<&converge_runtime::RunHeader>) -> Job {
        let Some(header) = header else {
            return Job::default();
        };
        Job {
            name: JobSpec::name_of_run(header),
            objective: JobSpec::objective_of_run(header),
        }
    }
}

/// Most characters of an objective a listing line shows.
const OBJECTIVE_SHOWN_MAX: usize = 48;

/// Every run with its job, status and size: a table, or a JSON array.
pub(crate) fn runs(runs: &[RunSummary], jobs: &[Job], json: bool) -> String {
    let job_of = |index: usize| jobs.get(index).cloned().unwrap_or_default();
    if json {
        let rows: Vec<Value> = runs
            .iter()
            .enumerate()
            .map(|(index, run)| {
                let job = job_of(index);
                json!({
                    "run": run.id.as_str(),
                    "job": job.name,
                    "objective": job.objective,
                    "status": status_json(&run.status),
                    "steps": run.steps,
                    "events": run.events,
                    "root_hash": run.root_hash,
                    "record_hash": run.record_hash,
                })
            })
            .collect();
        return Value::Array(rows).to_string();
    }
    if runs.is_empty() {
        return "no runs yet: start one with `converge run SPEC`\n".to_owned();
    }
    let width = runs
        .iter()
        .map(|run| run.id.as_str().len())
        .max()
        .unwrap_or(3)
        .max(3);
    let names: Vec<String> = (0..runs.len())
        .map(|index| job_of(index).name.unwrap_or_else(|| "-".to_owned()))
        .collect();
    let job_width = names
        .iter()
        .map(|name| name.chars().count())
        .max()
        .unwrap_or(3)
        .max(3);
    let mut out = format!(
        "{:width$}  {:18}  {:>5}  {:job_width$}  objective\n",
        "run", "status", "steps", "job"
    );
    for (index, run) in runs.iter().enumerate() {
        let objective = job_of(index).objective.unwrap_or_default();
        let mut shown: String = objective.chars().take(OBJECTIVE_SHOWN_MAX).collect();
        if objective.chars().count() > OBJECTIVE_SHOWN_MAX {
            shown.push('…');
        }
        let _ = writeln!(
            out,
            "{:width$}  {:18}  {:>5}  {:job_width$}  {shown}",
            run.id.as_str(),
            status_text(&run.status),
            run.steps,
            names[index],
        );
    }
    out
}

pub(crate) fn fact_ref(key: ContextKey, id: &str) -> String {
    format!("{key}/{id}")
}

/// A fact's content on one line, cut at 120 characters.
pub(crate) fn content_text(content: &Value) -> String {
    let text = content.to_string();
    if text.chars().count() > 120 {
        let cut: String = text.chars().take(117).collect();
        format!("{cut}…")
    } else {
        text
    }
}

fn pending_text(result: &ConvergeResult, pending: &[PendingApproval]) -> String {
    let mut out = String::from("  pending approvals:\n");
    for pending in pending {
        let content = result
            .pending_proposal(pending.proposal)
            .map(|proposal| content_text(proposal.content()))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "    {}  {} = {}  (hash {}…)",
            pending.proposal,
            fact_ref(pending.fact.key, pending.fact.id.as_str()),
            content,
            &pending.hash.to_string()[..16]
        );
    }
    out
}

/// `converge inspect`.
pub(crate) fn inspect(seen: &Inspection, json: bool) -> String {
    let result = &seen.result;
    if json {
        return export_json(seen).to_string();
    }
    let mut out = String::new();
    let summary = &seen.summary;
    let _ = writeln!(
        out,
        "run {} · {} · {} steps · {} events",
        summary.id,
        status_text(&summary.status),
        summary.steps,
        summary.events
    );
    if seen.stopped {
        let _ = writeln!(
            out,
            "stopped: {}",
            reason_text(&result.stop_reason, &seen.header.agents)
        );
    } else {
        let _ = writeln!(
            out,
            "not stopped: its last committed step left it running (`converge resume {}`)",
            summary.id
        );
    }
    let _ = writeln!(out, "root hash {}", summary.root_hash);
    let keys: BTreeSet<ContextKey> = result.context.keys().collect();
    let _ = writeln!(out, "\nfacts ({}):", result.context.len());
    for key in keys {
        let _ = writeln!(out, "  {key}:");
        for fact in result.context.get(key) {
            let approver = fact
                .record()
                .approver()
                .map(|actor| format!(", approved by {}", actor.name()))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "    {} = {}  (by {}, cycle {}{approver})",
                fact.id(),
                content_text(fact.content()),
                fact.record().agent_name(),
                fact.record().cycle()
            );
        }
    }
    if !result.rejections.is_empty() {
        let _ = writeln!(out, "\nrejections ({}):", result.rejections.len());
        for rejected in &result.rejections {
            let _ = writeln!(
                out,
                "  {}  {}/{} = {}: {}",
                rejected.proposal,
                rejected.key,
                rejected.id,
                content_text(&rejected.content),
                rejected.rejection
            );
        }
    }
    if !result.failures.is_empty() {
        let _ = writeln!(out, "\nagent failures ({}):", result.failures.len());
        for failure in &result.failures {
            let name = seen
                .header
                .agents
                .get(failure.agent.index())
                .cloned()
                .unwrap_or_else(|| format!("#{}", failure.agent.index()));
            let _ = writeln!(
                out,
                "  cycle {} agent {name}: {}",
                failure.cycle, failure.message
            );
        }
    }
    out.push_str(&retries_text(seen));
    out.push_str(&observations_text(seen));
    if let StopReason::AwaitingApproval { pending } = &result.stop_reason {
        out.push('\n');
        out.push_str(&pending_text(result, pending));
    }
    out
}

/// The run's recorded observations, a line each, and how to print one whole.
/// The run's retries of failed agents: who, which agents, why, and when.
fn retries_text(seen: &Inspection) -> String {
    if seen.retries.is_empty() {
        return String::new();
    }
    let mut out = format!("\nretries ({}):\n", seen.retries.len());
    for recorded in &seen.retries {
        let _ = writeln!(out, "  {}", retry_text(recorded));
    }
    out
}

/// One retry in words: `after cycle 1, alice retried score: the feed is ready`.
pub(crate) fn retry_text(recorded: &converge_runtime::RecordedRetry) -> String {
    let retry = &recorded.retry;
    format!(
        "after cycle {}, {} retried {}: {}",
        recorded.after_cycle,
        retry.actor().name(),
        retry.agents().join(", "),
        retry.reason()
    )
}

fn observations_text(seen: &Inspection) -> String {
    if seen.observations.is_empty() {
        return String::new();
    }
    let mut out = format!("\nobservations ({}):\n", seen.observations.len());
    for observed in &seen.observations {
        let origin = observed
            .record
            .remote
            .as_ref()
            .map(|remote| format!(" from {}", remote.system))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {}  agent {}: {}{origin}",
            observed.id, observed.agent, observed.record.kind
        );
    }
    let _ = writeln!(
        out,
        "  `converge show {} OBSERVATION` prints one whole",
        seen.summary.id
    );
    out
}

/// `converge export --format json` (and `converge inspect --json`), observations and their
/// payloads included.
pub(crate) fn export_json(seen: &Inspection) -> Value {
    let result = &seen.result;
    json!({
        "run": seen.summary.id.as_str(),
        "status": status_json(&seen.summary.status),
        "stopped": seen.stopped,
        "stop_reason": seen.stopped.then_some(&result.stop_reason),
        "steps": seen.summary.steps,
        "events": seen.summary.events,
        "root_hash": seen.summary.root_hash,
        "agents": seen.header.agents,
        "stats": result.stats,
        "facts": result.context.history().iter().map(fact_json).collect::<Vec<_>>(),
        "rejections": result.rejections,
        "failures": result.failures,
        "pending": pending_json(result),
        "observations": seen.observations,
        "retries": seen.retries,
    })
}

/// `converge export --format dot`: facts as nodes, derivations as edges, clustered by key.
pub(crate) fn export_dot(seen: &Inspection) -> String {
    let result = &seen.result;
    let node = |key: ContextKey, id: &str| format!("\"{}\"", escape(&fact_ref(key, id)));
    let mut out = format!(
        "digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box, fontname=\"Helvetica\"];\n",
        escape(seen.summary.id.as_str())
    );
    let keys: BTreeSet<ContextKey> = result.context.keys().collect();
    for (index, key) in keys.iter().enumerate() {
        let _ = writeln!(
            out,
            "  subgraph cluster_{index} {{\n    label=\"{}\";",
            escape(&key.to_string())
        );
        for fact in result.context.get(*key) {
            let record = fact.record();
            let approver = record
                .approver()
                .map(|actor| format!("\\napproved by {}", escape(actor.name())))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "    {} [label=\"{}\\n{}\\nby {} · cycle {}{approver}\"];",
                node(*key, fact.id().as_str()),
                escape(fact.id().as_str()),
                escape(&content_text(fact.content())),
                escape(record.agent_name()),
                record.cycle()
            );
        }
        out.push_str("  }\n");
    }
    for fact in keys.iter().flat_map(|key| result.context.get(*key)) {
        for source in fact.record().derived_from() {
            let _ = writeln!(
                out,
                "  {} -> {};",
                node(source.key, source.id.as_str()),
                node(fact.key(), fact.id().as_str())
            );
        }
    }
    out.push_str("}\n");
    out
}

/// Escapes text for a double-quoted dot string.
fn escape(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// What became of a decided proposal, in one line: promoted (with the fact it became), or
/// refused (by the approver, or by a check the approval could not lift) and why.
/// What became of each agent a retry ran again: failed again (and why), or no longer failing.
/// `before` is how many failures the run had before the retry.
pub(crate) fn retried(
    result: &ConvergeResult,
    retried: &[converge_core::AgentId],
    before: usize,
    agents: &[String],
) -> String {
    let still_failed = result.failed_agents();
    let mut out = String::new();
    for &agent in retried {
        let name = agents.get(agent.index()).map_or("?", String::as_str);
        let again = result.failures[before.min(result.failures.len())..]
            .iter()
            .rev()
            .find(|failure| failure.agent == agent);
        let line = match again {
            Some(failure) if still_failed.contains(&agent) => format!(
                "retried agent {name}: failed again in cycle {}: {}",
                failure.cycle, failure.message
            ),
            _ => format!("retried agent {name}: no longer failing"),
        };
        let _ = writeln!(out, "{line}");
    }
    out
}

pub(crate) fn decided(result: &ConvergeResult, proposal: ProposalId) -> String {
    let promoted = result
        .context
        .history()
        .iter()
        .find(|fact| fact.record().proposal() == proposal);
    if let Some(fact) = promoted {
        let approver = fact
            .record()
            .approver()
            .map(|actor| format!(", approved by {}", actor.name()))
            .unwrap_or_default();
        return format!(
            "proposal {proposal}: promoted to {}/{}{approver}",
            fact.key(),
            fact.id()
        );
    }
    match result
        .rejections
        .iter()
        .find(|rejected| rejected.proposal == proposal)
    {
        Some(rejected) => format!(
            "proposal {proposal} ({}/{}): refused: {}",
            rejected.key, rejected.id, rejected.rejection
        ),
        None => format!("proposal {proposal}: still pending"),
    }
}

/// Each agent failure and rejection in a line, with the agent's name and the reason; at most
/// [`EXPLAINED_MAX`] of them, then how many more `converge inspect` shows.
fn explained(result: &ConvergeResult, agents: &[String]) -> String {
    let name = |agent: converge_core::AgentId| {
        agents
            .get(agent.index())
            .cloned()
            .unwrap_or_else(|| format!("#{}", agent.index()))
    };
    // A failure is still standing only if it is its agent's last and the agent was not
    // retried since; the others were answered by a retry.
    let standing = result.failed_agents();
    let last = |index: usize, agent| {
        !result.failures[index + 1..]
            .iter()
            .any(|later| later.agent == agent)
    };
    let mut lines: Vec<String> = result
        .failures
        .iter()
        .enumerate()
        .map(|(index, failure)| {
            let retried = match standing.contains(&failure.agent) && last(index, failure.agent) {
                true => "",
                false => " (retried since)",
            };
            format!(
                "  failed: agent {} in cycle {}{retried}: {}",
                name(failure.agent),
                failure.cycle,
                failure.message
            )
        })
        .collect();
    lines.extend(result.rejections.iter().map(|rejected| {
        format!(
            "  rejected: {}/{} from agent {}: {}",
            rejected.key,
            rejected.id,
            name(rejected.proposal.agent()),
            rejected.rejection
        )
    }));
    let more = lines.len().saturating_sub(EXPLAINED_MAX);
    lines.truncate(EXPLAINED_MAX);
    if more > 0 {
        lines.push(format!(
            "  … and {more} more: converge inspect shows them all"
        ));
    }
    lines.iter().map(|line| format!("{line}\n")).collect()
}
