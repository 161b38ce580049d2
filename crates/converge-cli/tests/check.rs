//! `converge check` and the static checks behind it, through the real binary: one spec per
//! kind of mistake, each refused at its `file:line:column` with what to do, before anything
//! runs; every example passes; and an invariant that cannot be evaluated at run time stops
//! the run as "could not be evaluated", with its own exit code, never as a violation.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{converge, text};
use tempfile::TempDir;

/// A valid spec; each test breaks one thing in it.
const PAYOUTS: &str = r#"version: 1
intent: {objective: Pay suppliers}
keys:
  - name: invoices
    schema:
      type: object
      additionalProperties: false
      properties: {supplier: {type: string}, amount: {type: integer}}
  - name: payouts
    schema: {type: object}
seeds:
  - {key: invoices, id: i1, content: {supplier: acme, amount: 100}}
agents:
  - name: pay
    kind: rule
    reads: [invoices]
    writes: [payouts]
    for_each: invoices
    when: fact.content.amount > 0
    propose:
      key: payouts
      id: "payout-{{ fact.id }}"
      content: {amount: "{{ fact.content.amount }}"}
invariants:
  - name: cap
    class: structural
    check: facts.payouts.all(p, p.content.amount <= 1500)
"#;

/// Exit code of a refused spec (and of any error).
const EXIT_ERROR: i32 = 1;

/// Exit code of a run stopped by an invariant that could not be evaluated.
const EXIT_INVARIANT_UNEVALUABLE: i32 = 8;

fn write_spec(dir: &TempDir, source: &str) -> PathBuf {
    let path = dir.path().join("job.yaml");
    std::fs::write(&path, source).unwrap();
    path
}

/// `line:column` of the first occurrence of `needle` in `source`, as an editor counts.
fn place_of(source: &str, needle: &str) -> String {
    for (index, line) in source.lines().enumerate() {
        if let Some(byte) = line.find(needle) {
            return format!("{}:{}", index + 1, line[..byte].chars().count() + 1);
        }
    }
    panic!("`{needle}` is in the spec");
}

/// Replaces `from` (which must be there) with `to` in the valid spec.
fn broken(from: &str, to: &str) -> String {
    assert!(PAYOUTS.contains(from), "{from}");
    PAYOUTS.replacen(from, to, 1)
}

fn check(spec: &Path) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_converge"))
        .arg("check")
        .arg(spec)
        .env_remove("CONVERGE_DB")
        .output()
        .unwrap();
    (
        output.status.code(),
        text(&output.stdout),
        text(&output.stderr),
    )
}

/// Checks that `source` is refused with a problem at the first occurrence of `at`, whose
/// message says each of `words`.
fn refused(source: &str, at: &str, words: &[&str]) {
    let dir = TempDir::new().unwrap();
    let spec = write_spec(&dir, source);
    let (code, stdout, stderr) = check(&spec);
    assert_eq!(code, Some(EXIT_ERROR), "{stdout}{stderr}");
    let located = format!("{}:{}: ", spec.display(), place_of(source, at));
    let line = stderr
        .lines()
        .find(|line| line.contains(&located))
        .unwrap_or_else(|| panic!("a problem at {located}:\n{stderr}"));
    for word in words {
        assert!(line.contains(word), "`{word}` in: {line}");
    }
    assert!(
        !stderr.contains("Some(") && !stderr.contains("Ident("),
        "{stderr}"
    );
}

#[test]
fn the_valid_spec_and_every_example_pass() {
    let dir = TempDir::new().unwrap();
    let spec = write_spec(&dir, PAYOUTS);
    let (code, stdout, stderr) = check(&spec);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(
        stdout.trim(),
        format!(
            "{} is valid: 1 agent, 2 configured keys, 1 invariant",
            spec.display()
        )
    );
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "yaml") {
            let (code, stdout, stderr) = check(&path);
            assert_eq!(code, Some(0), "{}: {stdout}{stderr}", path.display());
            assert!(stdout.contains(" is valid: "), "{stdout}");
            checked += 1;
        }
    }
    assert!(checked >= 5, "the examples were found");
}

#[test]
fn an_undefined_template_variable_names_the_variables_there() {
    let source = broken("payout-{{ fact.id }}", "payout-{{ fakt.id }}");
    refused(
        &source,
        "fakt",
        &[
            "`propose.id` of agent `pay`",
            "`fakt` is not defined",
            "the variables in this template are `facts`, `fact`",
            "did you mean `fact`?",
        ],
    );
}

#[test]
fn an_invariant_naming_an_undeclared_key_is_refused() {
    let source = broken("facts.payouts.all", "facts.payout.all");
    refused(
        &source,
        "payout.all",
        &[
            "`check` of invariant `cap`",
            "there is no key `payout`",
            "declare it under `keys:`",
            "did you mean `payouts`?",
        ],
    );
}

#[test]
fn an_unknown_function_is_refused_listing_the_functions() {
    let source = broken(
        "facts.payouts.all(p, p.content.amount <= 1500)",
        "total(facts.payouts.map(p, p.content.amount)) <= 5000",
    );
    refused(
        &source,
        "total(",
        &["unknown function `total`", "`sum`", "`max`", "`size`"],
    );
}

#[test]
fn a_when_reading_a_key_missing_from_reads_is_refused() {
    let source = broken(
        "when: fact.content.amount > 0",
        "when: size(facts.payouts) < 10",
    );
    refused(
        &source,
        "payouts) < 10",
        &[
            "`when` of agent `pay`",
            "`payouts` is not in the agent's `reads`",
            "add `payouts` to `reads`",
        ],
    );
}

#[test]
fn a_misspelled_schema_field_suggests_the_declared_one() {
    let source = broken("fact.content.amount > 0", "fact.content.amout > 0");
    refused(
        &source,
        "amout",
        &[
            "`when` of agent `pay`",
            "the content of key `invoices` has no field `amout`",
            "allows only `amount`, `supplier`",
            "did you mean `amount`?",
        ],
    );
    // In a template too, at the misspelled word.
    let source = broken(
        "\"{{ fact.content.amount }}\"",
        "\"{{ fact.content.amout }}\"",
    );
    refused(
        &source,
        "amout",
        &[
            "`propose.content.amount` of agent `pay`",
            "did you mean `amount`?",
        ],
    );
}

#[test]
fn a_non_boolean_when_is_refused() {
    let source = broken("fact.content.amount > 0", "fact.content.amount + 1");
    refused(
        &source,
        "fact.content.amount + 1",
        &[
            "`when` of agent `pay`",
            "must give true or false, but gives a number",
        ],
    );
}

#[test]
fn a_prompt_is_held_to_the_agent_s_reads_and_has_no_fact() {
    let source = r#"version: 1
intent: {objective: Explain}
keys:
  - name: notes
agents:
  - name: writer
    kind: seed
    writes: [notes, signals]
    facts: [{key: signals, id: s1, content: {level: 1}}]
  - name: explain
    kind: llm
    reads: [signals]
    writes: [notes]
    model: any
    prompt: |
      Signals: {{ facts.signals | tojson }}
      Notes: {{ facts.notes | tojson }}
"#;
    refused(
        source,
        "notes | tojson",
        &[
            "`prompt` of agent `explain`",
            "`notes` is not in the agent's `reads`",
        ],
    );
    let source = source.replace("{{ facts.notes | tojson }}", "{{ fact.id }}");
    refused(
        &source,
        "fact.id",
        &["`prompt` of agent `explain`", "`fact` is not defined here"],
    );
}

#[test]
fn a_refused_spec_never_runs_and_every_problem_is_listed() {
    let source = broken("fact.content.amount > 0", "fact.content.amout > 0")
        .replace("facts.payouts.all", "facts.payout.all");
    let dir = TempDir::new().unwrap();
    let spec = write_spec(&dir, &source);
    let (code, _, stderr) = check(&spec);
    assert_eq!(code, Some(EXIT_ERROR));
    assert!(
        stderr.contains("amout") && stderr.contains("`payout`"),
        "{stderr}"
    );
    // As JSON, for editors and CI: each problem with its line and column.
    let output = Command::new(env!("CARGO_BIN_EXE_converge"))
        .args(["check", "--json"])
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(EXIT_ERROR));
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(answer["valid"], false, "{answer}");
    let problems = answer["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 2, "{answer}");
    let amout = place_of(&source, "amout");
    assert_eq!(
        format!("{}:{}", problems[0]["line"], problems[0]["column"]),
        amout
    );
    assert!(
        problems[0]["message"]
            .as_str()
            .unwrap()
            .contains("did you mean `amount`?")
    );
    let db = dir.path().join("journal.db");
    let run = converge(&db, &["run", &spec.to_string_lossy()]);
    assert_eq!(run.status.code(), Some(EXIT_ERROR));
    assert!(text(&run.stderr).contains("amout"), "{}", text(&run.stderr));
    let runs = converge(&db, &["runs"]);
    assert!(
        !text(&runs.stdout).contains("job-"),
        "nothing was journaled: {}",
        text(&runs.stdout)
    );
}

#[test]
fn an_invariant_that_cannot_be_evaluated_stops_the_run_apart_from_violations() {
    let source = r#"version: 1
intent: {objective: Divide}
keys:
  - name: numbers
seeds:
  - {key: numbers, id: n1, content: {n: 1}}
invariants:
  - name: ratio
    class: semantic
    check: facts.numbers.all(x, x.content.n / 0 >= 0)
"#;
    let dir = TempDir::new().unwrap();
    let spec = write_spec(&dir, source);
    let (code, stdout, stderr) = check(&spec);
    assert_eq!(code, Some(0), "statically fine: {stdout}{stderr}");
    let db = dir.path().join("journal.db");
    let run = converge(&db, &["run", &spec.to_string_lossy(), "--id", "ratio-1"]);
    let said = format!("{}{}", text(&run.stdout), text(&run.stderr));
    assert_eq!(
        run.status.code(),
        Some(EXIT_INVARIANT_UNEVALUABLE),
        "{said}"
    );
    assert!(
        said.contains("invariant `ratio` could not be evaluated"),
        "{said}"
    );
    assert!(said.contains("divided by zero"), "{said}");
    assert!(!said.contains("violated:"), "{said}");
    let inspect = converge(&db, &["--json", "inspect", "ratio-1"]);
    let inspected = text(&inspect.stdout);
    assert!(inspected.contains("invariant_unevaluable"), "{inspected}");
}
