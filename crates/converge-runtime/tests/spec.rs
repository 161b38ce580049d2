//! Job specs end to end: real YAML files in a temporary directory, refused with the right
//! file, line and column, or built and run to a stop with the `Runtime` driver; command agents
//! are real `python3` and `sh` processes.
//!
//! Expected locations are written as the text they point at (`at(yaml, "oracle")`), so a
//! case reads as "the problem is reported where `oracle` is written".

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use converge_core::{
    Actor, Context, ContextKey, ConvergeResult, Decision, Digest, Event, EventRecord, Observer,
    Rejection, StopReason, TraceLink,
};
use converge_runtime::spec::{JobSpec, Loaded, SpecError};
use serde_json::json;
use tempfile::TempDir;

/// A spec file (and any scripts) in a fresh directory.
struct Job {
    _dir: TempDir,
    path: PathBuf,
}

fn job(yaml: &str, files: &[(&str, &str)]) -> Job {
    let dir = TempDir::new().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let path = dir.path().join("job.yaml");
    std::fs::write(&path, yaml).unwrap();
    Job { _dir: dir, path }
}

fn load(job: &Job) -> Loaded {
    match JobSpec::load(&job.path) {
        Ok(loaded) => loaded,
        Err(error) => panic!("the spec was refused:\n{error}"),
    }
}

/// Line and column (from 1, in characters) of the first occurrence of `needle` in `text`.
fn at(text: &str, needle: &str) -> (u64, u64) {
    let offset = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in the spec"));
    let before = &text[..offset];
    let line = before.matches('\n').count() as u64 + 1;
    let line_start = before.rfind('\n').map_or(0, |index| index + 1);
    let column = before[line_start..].chars().count() as u64 + 1;
    (line, column)
}

/// Loads `yaml` from a file and requires it refused with exactly these problems: each at the
/// first occurrence of its needle, its message containing the fragment, displayed as
/// `file:line:column: message`.
fn check_refused(yaml: &str, expected: &[(&str, &str)]) {
    let job = job(yaml, &[]);
    let error = match JobSpec::load(&job.path) {
        Ok(_) => panic!("the spec was accepted:\n{yaml}"),
        Err(error) => error,
    };
    let problems = error.problems();
    let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(problems.len(), expected.len(), "problems: {shown:#?}");
    for ((needle, fragment), problem) in expected.iter().zip(problems) {
        let (line, column) = at(yaml, needle);
        let prefix = format!("{}:{line}:{column}: ", job.path.display());
        let text = problem.to_string();
        assert!(
            text.starts_with(&prefix),
            "expected {prefix:?}…, got {text:?}"
        );
        assert!(
            problem.message().contains(fragment),
            "expected {fragment:?} in {text:?}"
        );
        assert_eq!(problem.origin(), job.path);
    }
    assert_eq!(error.to_string(), shown.join("\n"));
}

fn run(spec: &JobSpec) -> ConvergeResult {
    let mut runtime = spec.build().unwrap();
    tokio_runtime()
        .block_on(runtime.run(Context::new()))
        .unwrap()
}

fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

const HEAD: &str = "version: 1\nintent:\n  objective: test the spec loader\n";

fn spec(rest: &str) -> String {
    format!("{HEAD}{rest}")
}

// ---- refusals ----------------------------------------------------------------------------

#[test]
fn unknown_fields_are_refused_where_they_are_written() {
    check_refused(
        &spec("agent: []\n"),
        &[(
            "agent:",
            "unknown field `agent`, expected one of version, intent, keys",
        )],
    );
    check_refused(
        &spec(
            "agents:\n  - name: a\n    kind: seed\n    writes: [seeds]\n    facts: [{key: seeds, id: s1, content: x}]\n    colour: blue\n",
        ),
        &[("colour", "unknown field `colour`")],
    );
    check_refused(
        "version: 1\nintent:\n  objective: x\n  budgets: {cycles: 3, hours: 2}\n",
        &[(
            "hours",
            "unknown field `hours`, expected one of cycles, facts, tokens, time_ms",
        )],
    );
}

#[test]
fn expression_cost_limits_outside_their_range_are_refused() {
    check_refused(
        &spec("runtime: {expression_cost_max: 0}\n"),
        &[("0}", "`expression_cost_max` must be from 1 to 1000000")],
    );
    check_refused(
        &spec("runtime: {expression_cost_max: 1000001}\n"),
        &[("1000001", "`expression_cost_max` must be from 1 to 1000000")],
    );
    let yaml = spec(
        r#"seeds: [{key: signals, id: s, content: {xs: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}}]
runtime: {expression_cost_max: 50}
agents:
  - name: pairs
    kind: rule
    reads: [signals]
    writes: [evaluations]
    when: "facts.signals[0].content.xs.all(a, facts.signals[0].content.xs.all(b, a + b > 0))"
    propose: {key: evaluations, id: pairs, content: checked}
"#,
    );
    let job = job(&yaml, &[]);
    let result = run(&load(&job).spec);
    let messages: Vec<&str> = result.failures.iter().map(|f| f.message.as_str()).collect();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert!(
        messages[0].contains("when: the evaluation was stopped after 50 steps, its cost limit"),
        "{messages:?}"
    );
}

#[test]
fn unknown_agent_kinds_and_fields_of_another_kind_are_refused() {
    check_refused(
        &spec("agents:\n  - name: a\n    kind: oracle\n    writes: [seeds]\n"),
        &[(
            "oracle",
            "unknown variant `oracle`, expected one of seed, rule, command, llm",
        )],
    );
    check_refused(
        &spec(
            "agents:\n  - name: a\n    kind: rule\n    writes: [signals]\n    command: [ls]\n    propose: {key: signals, id: s1, content: x}\n",
        ),
        &[(
            "[ls]",
            "field `command` does not apply to a `rule` agent; its own fields are: when, for_each, propose",
        )],
    );
    check_refused(
        &spec("agents:\n  - name: a\n    kind: rule\n    writes: [signals]\n"),
        &[("rule", "a `rule` agent needs `propose`")],
    );
    check_refused(
        &spec(
            "agents:\n  - name: a\n    kind: llm\n    writes: [signals]\n    prompt: hi\n    temprature: 0.2\n",
        ),
        &[("temprature", "unknown field `temprature`")],
    );
    check_refused(
        &spec("agents:\n  - name: a\n    kind: llm\n    writes: [signals]\n    prompt: hi\n"),
        &[("llm", "a `llm` agent needs `model`")],
    );
    check_refused(
        &spec(
            "agents:\n  - name: a\n    kind: seed\n    reads: [signals]\n    writes: [seeds]\n    facts: [{key: seeds, id: s1, content: x}]\n",
        ),
        &[("signals", "a `seed` agent reads nothing")],
    );
}

#[test]
fn an_llm_agent_parses_but_does_not_build_without_a_factory() {
    let yaml = spec(
        "agents:\n  - name: writer\n    kind: llm\n    reads: [seeds]\n    writes: [hypotheses]\n    provider: openai\n    model: gpt-4o\n    system: You are terse.\n    prompt: \"Summarise {{ facts.seeds | tojson }}\"\n    max_tokens: 400\n    temperature: 0.2\n",
    );
    let job = job(&yaml, &[]);
    let spec = load(&job).spec;
    let Err(error) = spec.build() else {
        panic!("built an llm agent without a factory");
    };
    let (line, column) = at(&yaml, "llm");
    assert_eq!(
        error.to_string(),
        format!(
            "{}:{line}:{column}: agent `writer` is of kind `llm`, but no LLM factory was given to the builder (the llm kind is provided by the LLM crate)",
            job.path.display()
        )
    );
    check_refused(
        &yaml.replace("temperature: 0.2", "temperature: 3"),
        &[("3\n", "`temperature` must be a number from 0 to 2")],
    );
    check_refused(
        &yaml.replace("tojson }}", "tojson }"),
        &[("\"Summarise", "prompt: template syntax error")],
    );
}

#[test]
fn keys_nobody_may_write_or_nobody_declared_are_refused() {
    check_refused(
        &spec("keys:\n  - name: risks\nagents: []\n"),
        &[("risks", "no agent may write key `risks`")],
    );
    check_refused(
        &spec(
            "agents:\n  - name: a\n    kind: seed\n    writes: [risk]\n    facts: [{key: seeds, id: s1, content: x}]\n",
        ),
        &[
            ("risk]", "unknown key `risk`; declare it under `keys:`"),
            (
                "seeds, id",
                "agent `a` proposes into `seeds`, which its `writes` does not grant",
            ),
        ],
    );
    check_refused(
        &spec(
            "agents:\n  - name: a\n    kind: rule\n    writes: [signals]\n    propose: {key: hypotheses, id: h1, content: x}\n",
        ),
        &[(
            "hypotheses",
            "proposes into `hypotheses`, which its `writes` does not grant",
        )],
    );
    check_refused(
        "version: 1\nintent:\n  objective: x\n  success: [{key_not_empty: strategies}]\n",
        &[(
            "strategies",
            "success depends on key `strategies`, but no agent may write it",
        )],
    );
    check_refused(
        &spec("keys:\n  - name: Risks\nagents: []\n"),
        &[(
            "Risks",
            "invalid key name: key name \"Risks\" must start with a lowercase letter",
        )],
    );
}

#[test]
fn malformed_expressions_templates_and_schemas_are_refused() {
    check_refused(
        &spec(
            "agents:\n  - name: a\n    kind: rule\n    reads: [seeds]\n    writes: [signals]\n    when: \"size(facts.seeds) >\"\n    propose: {key: signals, id: s1, content: x}\n",
        ),
        &[(
            "\"size(",
            "when: invalid expression: mismatched input '<EOF>'",
        )],
    );
    check_refused(
        &spec(
            "agents:\n  - name: a\n    kind: rule\n    writes: [signals]\n    propose: {key: signals, id: \"s-{{ facts.seeds\", content: x}\n",
        ),
        &[("\"s-{{", "template syntax error: unexpected end of input")],
    );
    check_refused(
        &spec(
            "agents:\n  - name: a\n    kind: rule\n    writes: [signals]\n    propose:\n      key: signals\n      id: s1\n      content: {summary: \"{% if %}\"}\n",
        ),
        &[("{summary", "propose.content.summary: template syntax error")],
    );
    check_refused(
        &spec(
            "keys:\n  - name: risks\n    schema: {type: strin}\nseeds:\n  - {key: risks, id: r1, content: x}\n",
        ),
        &[(
            "{type: strin}",
            "schema of key `risks`: not a valid JSON Schema at /type",
        )],
    );
    check_refused(
        &spec("invariants:\n  - {name: cap, class: structural, check: \"facts.seeds.all(s,\"}\n"),
        &[("\"facts.seeds.all", "check: invalid expression")],
    );
}

#[test]
fn bad_values_are_refused_with_what_was_expected() {
    check_refused(
        "version: 1\nintent:\n  objective: x\n  budgets: {cycles: 0}\n",
        &[("0}", "a cycle budget must be at least 1")],
    );
    check_refused(
        "version: 2\nintent: {objective: x}\n",
        &[("2", "unsupported spec version 2; expected 1")],
    );
    check_refused(
        &spec(
            "keys:\n  - name: risks\n    schema: {type: object, required: [severity]}\nseeds:\n  - {key: risks, id: r1, content: {owner: ops}}\n",
        ),
        &[(
            "{owner",
            "the content does not match the schema of `risks`: \"severity\" is a required property",
        )],
    );
    check_refused(
        &spec("seeds:\n  - {key: seeds, id: \"bad id\", content: x}\n"),
        &[("\"bad id\"", "invalid fact id")],
    );
    check_refused(
        &spec(
            "agents:\n  - name: a\n    kind: seed\n    facts: [{key: seeds, id: s1, content: x}]\n",
        ),
        &[(
            "a\n",
            "agent `a` needs `writes`: the keys it may propose into",
        )],
    );
    check_refused(
        &spec("agents:\n  - writes: [seeds]\n"),
        &[
            ("writes: [seeds]", "an agent needs a `name`"),
            (
                "writes: [seeds]",
                "an agent needs a `kind`: seed, rule, command or llm",
            ),
        ],
    );
    check_refused(
        &spec(
            "agents:\n  - name: a\n    kind: command\n    writes: [signals]\n    command: [\"true\"]\n    timeout_ms: 0\n",
        ),
        &[("0\n", "`timeout_ms` must be at least 1")],
    );
}

#[test]
fn command_limits_and_environment_names_are_checked() {
    let command =
        "agents:\n  - name: a\n    kind: command\n    writes: [signals]\n    command: [\"true\"]\n";
    check_refused(
        &spec(&format!("{command}    output_bytes_max: 16777217\n")),
        &[(
            "16777217",
            "`output_bytes_max` must be at most 16777216 (16 MiB)",
        )],
    );
    check_refused(
        &spec(&format!(
            "{command}    pass_env: [\"\", \"A=B\", KEPT]\n    env: {{KEPT: x}}\n"
        )),
        &[
            ("\"\"", "`pass_env`: invalid variable name \"\""),
            ("\"A=B\"", "`pass_env`: invalid variable name \"A=B\""),
            ("KEPT]", "`pass_env`: `KEPT` is also set in `env`"),
        ],
    );
    check_refused(
        &spec(&format!("{command}    env: {{\"X=Y\": x}}\n")),
        &[("{\"X=Y", "`env`: invalid variable name \"X=Y\"")],
    );
    check_refused(
        &spec(
            "agents:\n  - name: a\n    kind: rule\n    writes: [signals]\n    pass_env: [HOME]\n    propose: {key: signals, id: s, content: x}\n",
        ),
        &[(
            "[HOME]",
            "field `pass_env` does not apply to a `rule` agent",
        )],
    );
}

#[test]
fn agent_names_must_be_valid_unique_and_not_reserved() {
    let seed = |name: &str| {
        format!(
            "  - name: {name}\n    kind: seed\n    writes: [seeds]\n    facts: [{{key: seeds, id: {name}-fact, content: x}}]\n"
        )
    };
    check_refused(
        &spec(&format!(
            "agents:\n{}{}",
            seed("twin"),
            seed("twin").replace("twin-fact", "other")
        )),
        &[(
            "twin\n    kind: seed\n    writes: [seeds]\n    facts: [{key: seeds, id: other",
            "agent `twin` is already defined at line 5",
        )],
    );
    check_refused(
        &spec(&format!("agents:\n{}", seed("intent"))),
        &[("intent\n", "agent name `intent` is reserved")],
    );
    check_refused(
        &spec(
            "agents:\n  - name: \"has space\"\n    kind: seed\n    writes: [seeds]\n    facts: [{key: seeds, id: s1, content: x}]\n",
        ),
        &[("\"has space\"", "invalid agent name \"has space\"")],
    );
}

#[test]
fn yaml_errors_and_duplicate_keys_are_located() {
    check_refused(
        "version: 1\nversion: 1\nintent: {objective: x}\n",
        &[("version: 1\nintent", "duplicate mapping key")],
    );
    let job = job("version: 1\nintent: {objective: x\n", &[]);
    let error = JobSpec::load(&job.path).unwrap_err();
    assert_eq!(error.problems().len(), 1);
    assert!(
        error.problems()[0].line() >= 2,
        "{error}: the unclosed mapping is on line 2"
    );
}

#[test]
fn every_problem_is_reported_together_in_source_order() {
    let yaml = spec(
        "keys:\n  - name: orphans\nagents:\n  - name: a\n    kind: rule\n    writes: [signals, nope]\n    when: \"((\"\n    propose: {key: signals, id: s1, content: x}\n",
    );
    check_refused(
        &yaml,
        &[
            ("orphans", "no agent may write key `orphans`"),
            ("nope", "unknown key `nope`"),
            ("\"((\"", "when: invalid expression"),
        ],
    );
}

#[test]
fn a_missing_file_is_a_read_error() {
    let dir = TempDir::new().unwrap();
    let missing = dir.path().join("nowhere.yaml");
    let error = JobSpec::load(&missing).unwrap_err();
    assert!(matches!(error, SpecError::Read { .. }), "{error}");
    assert!(error.problems().is_empty());
    assert!(
        error
            .to_string()
            .starts_with(&format!("{}: cannot read", missing.display()))
    );
}

// ---- warnings ----------------------------------------------------------------------------

#[test]
fn reading_a_key_nobody_produces_and_a_missing_program_are_warnings() {
    let yaml = spec(
        "agents:\n  - name: watcher\n    kind: command\n    reads: [signals]\n    writes: [evaluations]\n    command: [./missing.py]\n",
    );
    let job = job(&yaml, &[]);
    let loaded = load(&job);
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    let (line, column) = at(&yaml, "signals");
    assert_eq!(
        warnings[0],
        format!(
            "{}:{line}:{column}: agent `watcher` reads `signals`, but no agent and no seed can produce it; it will never be woken by it",
            job.path.display()
        )
    );
    let (line, column) = at(&yaml, "./missing.py");
    assert!(warnings[1].starts_with(&format!("{}:{line}:{column}: program ", job.path.display())));
    assert!(warnings[1].ends_with("missing.py does not exist (yet)"));
    // A warning refuses nothing.
    loaded.spec.build().unwrap();
}

// ---- runs --------------------------------------------------------------------------------

const TRIAGE: &str = r#"version: 1
intent:
  objective: Triage open risks
  constraints: [no weekend deploys]
  success:
    - min_facts: {key: evaluations, count: 2}
  budgets: {cycles: 10, facts: 100}
keys:
  - name: risks
    schema:
      type: object
      required: [severity, owner]
      properties:
        severity: {type: integer, minimum: 1, maximum: 5}
        owner: {type: string}
seeds:
  - {key: risks, id: db-outage, content: {severity: 5, owner: dba}}
  - {key: risks, id: typo, content: {severity: 1, owner: docs}}
  - {key: risks, id: cert-expiry, content: {severity: 4, owner: ops}}
agents:
  - name: flag-severe
    kind: rule
    reads: [risks]
    writes: [evaluations]
    for_each: risks
    when: "fact.content.severity >= 4"
    propose:
      key: evaluations
      id: "severe-{{ fact.id }}"
      content: {risk: "{{ fact.id }}", owner: "{{ fact.content.owner | upper }}", severity: 5}
      confidence: 0.9
  - name: summarise
    kind: command
    reads: [evaluations]
    writes: [strategies]
    command: [python3, summarise.py]
"#;

const SUMMARISE_PY: &str = r#"import json, sys
job = json.load(sys.stdin)
severe = [fact["id"] for fact in job["facts"]["evaluations"]]
print(json.dumps({"proposals": [{
    "key": "strategies", "id": "plan-%d" % len(severe),
    "content": {"escalate": severe}, "confidence": 0.75,
}]}))
"#;

#[test]
fn a_valid_spec_builds_and_runs_to_convergence() {
    let job = job(TRIAGE, &[("summarise.py", SUMMARISE_PY)]);
    let loaded = load(&job);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let spec = loaded.spec;
    assert_eq!(spec.source(), TRIAGE);
    assert_eq!(spec.base_dir(), job.path.parent().unwrap());
    let runtime = spec.build().unwrap();
    let names: Vec<&str> = runtime.engine().agent_names().collect();
    assert_eq!(names, ["intent", "seeds", "flag-severe", "summarise"]);

    let result = run(&spec);
    assert_eq!(result.stop_reason, StopReason::Converged);
    assert!(result.rejections.is_empty(), "{:?}", result.rejections);
    assert!(result.failures.is_empty(), "{:?}", result.failures);
    let ctx = &result.context;
    let severe = ctx
        .fact(ContextKey::Evaluations, "severe-db-outage")
        .unwrap();
    assert_eq!(
        severe.content(),
        &json!({"risk": "db-outage", "owner": "DBA", "severity": 5})
    );
    assert_eq!(severe.confidence().value(), 0.9);
    assert_eq!(severe.record().agent_name(), "flag-severe");
    assert_eq!(severe.record().derived_from()[0].id.as_str(), "db-outage");
    assert!(ctx.contains(ContextKey::Evaluations, "severe-cert-expiry"));
    assert!(!ctx.contains(ContextKey::Evaluations, "severe-typo"));
    assert!(ctx.contains(ContextKey::Constraints, "intent.constraint.0"));
    // The command saw one evaluation, then both; each run proposed a new plan.
    let plan = ctx.fact(ContextKey::Strategies, "plan-2").unwrap();
    assert_eq!(
        plan.content(),
        &json!({"escalate": ["severe-db-outage", "severe-cert-expiry"]})
    );
    assert_eq!(
        ctx.count(ContextKey::Strategies),
        1,
        "both evaluations come in one cycle"
    );

    // Building is a pure function of the text: a second build replays to the same hash.
    let again = JobSpec::parse(spec.source(), &job.path).unwrap().spec;
    assert_eq!(run(&again).root_hash, result.root_hash);
}

#[test]
fn schemas_reject_bad_proposals_at_the_gate() {
    let yaml = spec(
        r#"keys:
  - name: scores
    schema: {type: object, required: [score], properties: {score: {type: number, maximum: 1}}}
seeds:
  - {key: seeds, id: input, content: {value: 3}}
agents:
  - name: overscore
    kind: rule
    reads: [seeds]
    writes: [scores]
    propose: {key: scores, id: too-high, content: {score: 3}}
  - name: fair-score
    kind: rule
    reads: [seeds]
    writes: [scores]
    propose: {key: scores, id: fair, content: {score: 0.5}}
"#,
    );
    let job = job(&yaml, &[]);
    let result = run(&load(&job).spec);
    assert_eq!(result.stop_reason, StopReason::Converged);
    assert!(
        result
            .context
            .contains(ContextKey::custom("scores").unwrap(), "fair")
    );
    assert_eq!(result.rejections.len(), 1, "{:?}", result.rejections);
    let rejected = &result.rejections[0];
    assert_eq!(rejected.id, "too-high");
    assert_eq!(
        rejected.rejection,
        Rejection::ValidatorFailed {
            validator: "json-schema".to_owned(),
            detail: "at /score: 3 is greater than the maximum of 1".to_owned(),
        }
    );
    // The rule does not retry a refused proposal forever: the run converged.
    assert!(result.cycles <= 3, "{} cycles", result.cycles);
}

#[test]
fn cel_invariants_reject_what_would_break_them() {
    let yaml = spec(
        r#"keys:
  - name: spend
seeds:
  - {key: spend, id: rent, content: {amount: 700}}
  - {key: spend, id: party, content: {amount: 400}}
invariants:
  - name: within-budget
    class: structural
    check: "facts.spend.map(s, s.content.amount).all(a, a <= 800) && size(facts.spend) <= 1"
"#,
    );
    let job = job(&yaml, &[]);
    let result = run(&load(&job).spec);
    assert_eq!(result.stop_reason, StopReason::Converged);
    let spend = ContextKey::custom("spend").unwrap();
    assert!(result.context.contains(spend, "rent"));
    assert!(!result.context.contains(spend, "party"));
    assert!(matches!(
        &result.rejections[0].rejection,
        Rejection::InvariantViolated { invariant, detail }
            if invariant == "within-budget" && detail == "the check is false"
    ));
}

#[test]
fn approval_keys_park_proposals_until_a_human_decides() {
    let yaml = spec(
        r#"keys:
  - name: decisions
    approval: true
seeds:
  - {key: seeds, id: release, content: {version: "2.0"}}
agents:
  - name: propose-release
    kind: rule
    reads: [seeds]
    writes: [decisions]
    propose: {key: decisions, id: ship-2-0, content: {ship: true}}
"#,
    );
    let job = job(&yaml, &[]);
    let spec = load(&job).spec;
    let mut runtime = spec.build().unwrap();
    let tokio = tokio_runtime();
    let result = tokio.block_on(runtime.run(Context::new())).unwrap();
    let StopReason::AwaitingApproval { pending } = &result.stop_reason else {
        panic!(
            "expected to await approval, stopped with {:?}",
            result.stop_reason
        );
    };
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].fact.id.as_str(), "ship-2-0");
    let decisions = ContextKey::custom("decisions").unwrap();
    assert!(!result.context.contains(decisions, "ship-2-0"));

    let alice = Actor::human("alice").unwrap();
    let decision = Decision::approve(pending[0].proposal, pending[0].hash, alice.clone());
    let result = tokio
        .block_on(runtime.resume(result, vec![decision]))
        .unwrap();
    assert_eq!(result.stop_reason, StopReason::Converged);
    let fact = result.context.fact(decisions, "ship-2-0").unwrap();
    assert_eq!(fact.record().approver(), Some(&alice));
}

#[test]
fn a_rule_that_cannot_be_evaluated_is_a_recorded_failure() {
    let yaml = spec(
        r#"keys:
  - name: levels
seeds:
  - {key: levels, id: l1, content: {level: 2}}
agents:
  - name: broken
    kind: rule
    reads: [levels]
    writes: [signals]
    for_each: levels
    when: "fact.content.missing > 1"
    propose: {key: signals, id: x, content: x}
  - name: fine
    kind: rule
    reads: [levels]
    writes: [signals]
    propose: {key: signals, id: fine, content: "{{ facts.levels[0].content.level }}"}
"#,
    );
    let job = job(&yaml, &[]);
    let result = run(&load(&job).spec);
    assert_eq!(result.stop_reason, StopReason::Converged);
    assert_eq!(result.failures.len(), 1, "{:?}", result.failures);
    let message = &result.failures[0].message;
    assert!(
        message.contains("rule \"broken\": when: No such key: missing"),
        "{message}"
    );
    let fine = result.context.fact(ContextKey::Signals, "fine").unwrap();
    assert_eq!(
        fine.content(),
        &json!(2),
        "a lone expression keeps its type"
    );
}

// ---- command agents ----------------------------------------------------------------------

#[test]
fn failing_commands_are_recorded_failures_and_the_run_goes_on() {
    let yaml = spec(
        r#"seeds:
  - {key: seeds, id: s1, content: go}
agents:
  - name: sleeper
    kind: command
    reads: [seeds]
    writes: [signals]
    command: [sh, -c, "sleep 5"]
    timeout_ms: 300
  - name: chatterbox
    kind: command
    reads: [seeds]
    writes: [signals]
    command: [python3, -c, "print('x' * 5000)"]
    output_bytes_max: 100
  - name: mumbler
    kind: command
    reads: [seeds]
    writes: [signals]
    command: [sh, -c, "echo 'this is not json'"]
  - name: quitter
    kind: command
    reads: [seeds]
    writes: [signals]
    command: [sh, -c, "echo 'disk full' >&2; exit 3"]
  - name: steady
    kind: rule
    reads: [seeds]
    writes: [signals]
    propose: {key: signals, id: steady, content: ok}
"#,
    );
    let job = job(&yaml, &[]);
    let started = std::time::Instant::now();
    let result = run(&load(&job).spec);
    assert!(
        started.elapsed().as_secs() < 4,
        "the sleeper was not killed in time"
    );
    assert_eq!(result.stop_reason, StopReason::Converged);
    assert!(result.context.contains(ContextKey::Signals, "steady"));
    let messages: Vec<&str> = result.failures.iter().map(|f| f.message.as_str()).collect();
    assert_eq!(messages.len(), 4, "{messages:#?}");
    let expect = [
        "command agent \"sleeper\" (sh -c sleep 5): timed out after 300 ms and was killed",
        "command agent \"chatterbox\" (python3 -c print('x' * 5000)): printed more than 100 bytes on stdout (the limit) and was killed",
        "command agent \"mumbler\" (sh -c echo 'this is not json'): printed malformed output (",
        "command agent \"quitter\" (sh -c echo 'disk full' >&2; exit 3): exited with status 3; stderr: disk full",
    ];
    for (message, expected) in messages.iter().zip(expect) {
        assert!(
            message.contains(expected),
            "{message:?} should contain {expected:?}"
        );
    }
    assert!(
        messages[2].ends_with("stdout began with \"this is not json\\n\""),
        "{}",
        messages[2]
    );
}

/// Records every event of a run.
struct Recorder(Arc<Mutex<Vec<EventRecord>>>);

impl Observer for Recorder {
    fn on_event(&mut self, record: &EventRecord) {
        self.0.lock().unwrap().push(record.clone());
    }
}

const ECHO_PY: &str = r#"import json, sys
received = sys.stdin.read()
sys.stderr.write("scoring %d risks\n" % len(json.loads(received)["facts"]["risks"]))
print(json.dumps({"proposals": [
    {"key": "evaluations", "id": "stdin", "content": {"received": received}},
    {"key": "strategies", "id": "out-of-grant", "content": "sneaky"},
    {"key": "evaluations", "id": "derived", "content": {"ok": True},
     "derived_from": [{"key": "risks", "id": "r1"}]},
]}))
"#;

#[test]
fn commands_get_the_facts_they_read_and_their_output_is_an_observation() {
    let yaml = spec(
        r#"keys:
  - name: risks
seeds:
  - {key: risks, id: r1, content: {severity: 3}}
  - {key: signals, id: ignored, content: not read}
agents:
  - name: echo
    kind: command
    reads: [risks]
    writes: [evaluations]
    command: [python3, echo.py]
    env: {EXTRA: "1"}
"#,
    );
    let job = job(&yaml, &[("echo.py", ECHO_PY)]);
    let spec = load(&job).spec;
    let mut runtime = spec.build().unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    runtime.observe(Recorder(events.clone()));
    let result = tokio_runtime()
        .block_on(runtime.run(Context::new()))
        .unwrap();
    assert_eq!(result.stop_reason, StopReason::Converged);

    // The protocol's input: only the keys read, sorted, facts in promotion order.
    let stdin = result
        .context
        .fact(ContextKey::Evaluations, "stdin")
        .unwrap();
    let received = stdin.content()["received"].as_str().unwrap();
    assert_eq!(
        received,
        "{\"agent\":\"echo\",\"facts\":{\"risks\":[{\"confidence\":1.0,\"content\":{\"severity\":3},\"id\":\"r1\"}]},\"protocol\":1,\"writes\":[\"evaluations\"]}\n"
    );
    let derived = result
        .context
        .fact(ContextKey::Evaluations, "derived")
        .unwrap();
    assert_eq!(derived.record().derived_from()[0].id.as_str(), "r1");
    // A proposal outside the grant is refused at the gate, whatever the program says.
    assert_eq!(result.rejections.len(), 1);
    assert_eq!(
        result.rejections[0].rejection,
        Rejection::Unauthorized {
            key: ContextKey::Strategies
        }
    );

    // Every fact cites the recorded exchange; stdout and stderr are in its payload.
    let TraceLink::RemoteRef {
        system,
        reference,
        observation,
    } = stdin.record().trace()
    else {
        panic!("expected a remote trace, got {:?}", stdin.record().trace());
    };
    assert_eq!(system, "command:python3");
    assert_eq!(
        reference,
        &Digest::of_bytes(received.as_bytes()).to_string()
    );
    assert_eq!(stdin.record().evidence(), [*observation]);
    let events = events.lock().unwrap();
    let recorded: Vec<_> = events
        .iter()
        .filter_map(|record| match &record.event {
            Event::ObservationRecorded {
                observation: id,
                kind,
                payload_hash,
                ..
            } => Some((*id, kind.clone(), *payload_hash)),
            _ => None,
        })
        .collect();
    assert_eq!(recorded.len(), 1);
    let stdout = std::process::Command::new("python3")
        .arg(job.path.parent().unwrap().join("echo.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(received.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap()
        .stdout;
    let expected_payload = json!({
        "argv": ["python3", "echo.py"],
        "exit_code": 0,
        "stdout": String::from_utf8(stdout).unwrap(),
        "stderr": "scoring 1 risks\n",
        "stderr_truncated": false,
    });
    assert_eq!(
        recorded[0],
        (
            *observation,
            "command.output".to_owned(),
            Digest::of_json(&expected_payload)
        )
    );
}

#[test]
fn a_command_without_inputs_runs_once() {
    let yaml = spec(
        r#"agents:
  - name: census
    kind: command
    writes: [signals]
    command: [sh, -c, "echo '{\"proposals\": [{\"key\": \"signals\", \"id\": \"headcount\", \"content\": 42}]}'"]
  - name: follow
    kind: rule
    reads: [signals]
    writes: [hypotheses]
    when: "size(facts.signals) > 0"
    propose: {key: hypotheses, id: staffed, content: "{{ facts.signals | length }} signal(s)"}
"#,
    );
    let job = job(&yaml, &[]);
    let result = run(&load(&job).spec);
    assert_eq!(result.stop_reason, StopReason::Converged);
    assert_eq!(
        result
            .context
            .fact(ContextKey::Signals, "headcount")
            .unwrap()
            .content(),
        &json!(42)
    );
    assert_eq!(
        result
            .context
            .fact(ContextKey::Hypotheses, "staffed")
            .unwrap()
            .content(),
        &json!("1 signal(s)")
    );
    assert!(
        result.rejections.is_empty(),
        "ran again: {:?}",
        result.rejections
    );
    assert_eq!(
        result.stats.agents_executed, 3,
        "intent, census and follow, once each"
    );
}

// ---- the examples ------------------------------------------------------------------------

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

#[test]
fn the_examples_run_to_their_expected_stop() {
    let tokio = tokio_runtime();
    let run_example = |name: &str| {
        let loaded = JobSpec::load(example(name)).unwrap_or_else(|e| panic!("{e}"));
        assert!(loaded.warnings.is_empty(), "{name}: {:?}", loaded.warnings);
        let mut runtime = loaded.spec.build().unwrap();
        tokio.block_on(runtime.run(Context::new())).unwrap()
    };

    let release = run_example("release-approval.yaml");
    let StopReason::AwaitingApproval { pending } = &release.stop_reason else {
        panic!("release-approval: {:?}", release.stop_reason);
    };
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].fact.id.as_str(), "release-2-4-0");
    assert!(release.failures.is_empty() && release.rejections.is_empty());

    let triage = run_example("incident-triage.yaml");
    assert_eq!(
        triage.stop_reason,
        StopReason::Converged,
        "{:?}",
        triage.failures
    );
    assert!(triage.failures.is_empty(), "{:?}", triage.failures);
    assert_eq!(triage.context.count(ContextKey::Evaluations), 4);
    assert!(
        triage
            .context
            .contains(ContextKey::Strategies, "page-db-primary-down")
    );

    let budget = run_example("budget-review.yaml");
    assert_eq!(budget.stop_reason, StopReason::Converged);
    let kinds: Vec<&str> = budget
        .rejections
        .iter()
        .map(|r| match &r.rejection {
            Rejection::ValidatorFailed { .. } => "schema",
            Rejection::InvariantViolated { .. } => "invariant",
            _ => "other",
        })
        .collect();
    assert!(
        kinds.contains(&"schema") && kinds.contains(&"invariant"),
        "{:?}",
        budget.rejections
    );
    assert!(!kinds.contains(&"other"), "{:?}", budget.rejections);
}

// ---- robustness --------------------------------------------------------------------------

mod mutations {
    use super::*;
    use proptest::prelude::*;

    fn sources() -> Vec<String> {
        [
            "release-approval.yaml",
            "incident-triage.yaml",
            "budget-review.yaml",
        ]
        .iter()
        .map(|name| std::fs::read_to_string(example(name)).unwrap())
        .collect()
    }

    /// Replaces `len` characters at `at` with `insert`.
    fn edit(text: &str, at: usize, len: usize, insert: &str) -> String {
        let chars: Vec<char> = text.chars().collect();
        let start = at % (chars.len() + 1);
        let end = (start + len).min(chars.len());
        chars[..start]
            .iter()
            .chain(insert.chars().collect::<Vec<_>>().iter())
            .chain(chars[end..].iter())
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Whatever an edit breaks, loading and building answer with a value, never a panic,
        /// and every problem has a location inside the text.
        #[test]
        fn edited_specs_are_refused_or_built_never_a_panic(
            which in 0..3_usize,
            at in 0..6000_usize,
            len in 0..12_usize,
            insert in prop::sample::select(vec![
                "", ":", " ", "\n", "- ", "{", "}", "[", "]", "\"", "'", "{{", "}}", "(", ")",
                "&a", "*a", "!!str ", "0", "-1", "1e999", "x", "kind: llm\n", "    ",
            ]),
        ) {
            let source = edit(&sources()[which], at, len, insert);
            let lines = source.lines().count() as u64 + 1;
            let origin = example("edited.yaml");
            match JobSpec::parse(&source, &origin) {
                Ok(loaded) => {
                    let _ = loaded.spec.build();
                }
                Err(error) => {
                    prop_assert!(!error.problems().is_empty());
                    for problem in error.problems() {
                        prop_assert!(problem.line() >= 1 && problem.line() <= lines, "{problem}");
                    }
                }
            }
        }
    }
}
