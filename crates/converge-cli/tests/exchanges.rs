//! Model exchanges in the open, through the real binary: a run whose `llm` agent talks to a
//! scripted model on 127.0.0.1, then `converge why` showing the exchange the fact cites
//! (provider, the model asked for and the one that answered, prompts, answer, tokens,
//! latency), `converge show` printing it whole, `inspect --json` and `why --json` carrying
//! it, and replay reproducing the run with the model server gone.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use converge_llm::scripted::{Reply, ScriptedServer, Wire};
use serde_json::{Value, json};
use tempfile::TempDir;

use common::text;

const ANTHROPIC_KEY: &str = "sk-ant-test-0123456789abcdef";

/// `converge --db <db> <args>`, with no provider configuration from the environment but an
/// Anthropic key (the scripted server does not check it).
fn converge(db: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_converge"))
        .arg("--db")
        .arg(db)
        .args(args)
        .env_remove("CONVERGE_DB")
        .env_remove("CONVERGE_PROVIDERS")
        .env("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
        .output()
        .expect("the converge binary runs")
}

/// What a command printed for people, required to succeed and to read as words.
fn said(output: &Output) -> String {
    let out = text(&output.stdout);
    let err = text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{out}{err}");
    for debug in ["Some(", "None", "Ok(", "Err(", " { ", "panicked", "\\n"] {
        assert!(!out.contains(debug), "{debug:?} in: {out}");
        assert!(!err.contains(debug), "{debug:?} in: {err}");
    }
    out
}

fn json_of(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("not JSON ({error}): {}", text(&output.stdout)))
}

/// A job whose one `llm` agent explains the seeded signal.
fn job(dir: &Path, provider: &str, base_url: &str) -> String {
    let guidance: Vec<String> = GUIDANCE
        .iter()
        .map(|line| format!("      {line}"))
        .collect();
    let guidance = guidance.join("\n");
    let spec = format!(
        r#"version: 1
intent:
  objective: Explain the churn signal
keys:
  - name: hypotheses
    schema: {{type: object, required: [claim], properties: {{claim: {{type: string}}}}}}
seeds:
  - {{key: signals, id: churn, content: "churn is up 4% in the north region"}}
agents:
  - name: explainer
    kind: llm
    provider: {provider}
    base_url: "{base_url}"
    model: small-model
    reads: [signals]
    writes: [hypotheses]
    system: |
{guidance}
    prompt: "Explain this signal: {{{{ facts.signals | tojson }}}}"
"#
    );
    let path = dir.join(format!("{provider}.yaml"));
    std::fs::write(&path, spec).unwrap();
    path.to_string_lossy().into_owned()
}

/// The spec's system prompt, long enough (with the contract's instructions appended) for
/// `converge why` to abridge it.
const GUIDANCE: [&str; 6] = [
    "You explain business signals to a retention team.",
    "Each signal is a fact the monitoring or the account managers recorded this week.",
    "Prefer explanations a retention manager can check against the data they already hold.",
    "Name the region, the segment and the period a claim is about, and nothing you cannot tie",
    "to a signal. When two explanations fit equally well, propose both with lower confidence",
    "rather than choosing one; the team decides which to investigate first.",
];

/// How the system prompt ends: the schema of the answer, in the contract's instructions.
const SCHEMA_END: &str = r#""required":["proposals"],"type":"object"}"#;

fn answer() -> String {
    json!({"proposals": [{
        "key": "hypotheses", "id": "north-churn", "confidence": 0.7,
        "content": {"claim": "a competitor entered the north"}
    }]})
    .to_string()
}

/// The latency `why` printed, in milliseconds.
fn latency_ms(why: &str) -> u64 {
    let line = why
        .lines()
        .find_map(|line| line.split_once("latency: ").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no latency in: {why}"));
    let ms = line.strip_suffix(" ms").unwrap_or(line);
    ms.parse()
        .unwrap_or_else(|_| panic!("latency {line:?} in: {why}"))
}

#[test]
fn why_shows_the_exchange_show_prints_it_whole_and_replay_needs_no_model() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("journal.db");
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let server = tokio.block_on(ScriptedServer::start(Wire::OpenAi)).unwrap();
    server.push(
        Reply::answer(answer(), 412, 96)
            .answered_by("small-model:3b-q4_K_M")
            .delayed(Duration::from_millis(150)),
    );
    let spec = job(dir.path(), "ollama", &server.base_url());

    said(&converge(&db, &["run", &spec, "--id", "churn-1"]));
    assert_eq!(server.request_count(), 1);

    let why = said(&converge(
        &db,
        &["why", "churn-1", "hypotheses/north-churn"],
    ));
    for expected in [
        "evidence: c2.a2.o0 (llm.exchange)",
        "model exchange c2.a2.o0 by agent `explainer`, attempt 1",
        &format!("provider: ollama (openai wire, {})", server.base_url()),
        "model: asked for small-model, answered by small-model:3b-q4_K_M",
        "tokens: 412 in, 96 out",
        "finish: stop",
        "system prompt:",
        "You explain business signals to a retention team.",
        "user prompt:",
        "│        Explain this signal: [{",
        "\"content\":\"churn is up 4% in the north region\"",
        "answer:",
        "\"claim\": \"a competitor entered the north\"",
        "more characters: `converge show churn-1 c2.a2.o0` prints it whole",
    ] {
        assert!(why.contains(expected), "{expected:?} in:\n{why}");
    }
    assert!(
        !why.contains(SCHEMA_END),
        "the end of a long system prompt is left to `converge show`: {why}"
    );
    let latency = latency_ms(&why);
    assert!((150..60_000).contains(&latency), "latency {latency} ms");
    // The exchange hangs under its evidence line, inside the tree.
    assert!(
        why.contains("│    user prompt:\n│        Explain this signal"),
        "{why}"
    );

    let show = said(&converge(&db, &["show", "churn-1", "c2.a2.o0"]));
    for expected in [
        "model exchange c2.a2.o0 by agent `explainer`, attempt 1",
        "model: asked for small-model, answered by small-model:3b-q4_K_M",
        &format!("latency: {latency} ms"),
        "parameters: max_tokens 2048, structured_output schema",
        "prompt hash: ",
        "from: ollama:small-model:3b-q4_K_M (reference chatcmpl-scripted-1)",
        "replay: replay uses this record and calls nothing",
        // The end of the system prompt, which `why` leaves out.
        SCHEMA_END,
    ] {
        assert!(show.contains(expected), "{expected:?} in:\n{show}");
    }
    assert!(!show.contains("more characters"), "{show}");

    let inspected = said(&converge(&db, &["inspect", "churn-1"]));
    assert!(
        inspected.contains(
            "observations (1):\n  c2.a2.o0  agent explainer: llm.exchange from \
             ollama:small-model:3b-q4_K_M\n  `converge show churn-1 OBSERVATION` prints one whole"
        ),
        "{inspected}"
    );

    let shown = json_of(&converge(&db, &["show", "churn-1", "c2.a2.o0", "--json"]));
    assert_eq!(shown["id"], "c2.a2.o0");
    assert_eq!(shown["agent"], "explainer");
    assert_eq!(shown["kind"], "llm.exchange");
    assert_eq!(shown["payload"]["model"], "small-model");
    assert_eq!(shown["payload"]["served_model"], "small-model:3b-q4_K_M");
    assert_eq!(shown["payload"]["latency_ms"], latency);

    let inspected = json_of(&converge(&db, &["inspect", "churn-1", "--json"]));
    assert_eq!(inspected["observations"], json!([shown]));
    let fact = json_of(&converge(
        &db,
        &["why", "churn-1", "hypotheses/north-churn", "--json"],
    ));
    assert_eq!(fact["evidence"], json!(["c2.a2.o0"]));
    assert_eq!(fact["observations"], json!([shown]));
    assert_eq!(fact["trace"]["system"], "ollama:small-model:3b-q4_K_M");

    let missing = converge(&db, &["show", "churn-1", "c2.a1.o0"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        text(&missing.stderr).contains("run churn-1 has no observation c2.a1.o0; it has c2.a2.o0"),
        "{}",
        text(&missing.stderr)
    );
    let malformed = converge(&db, &["show", "churn-1", "c2.a2.p0"]);
    assert!(
        text(&malformed.stderr).contains("\"c2.a2.p0\" is not an observation id"),
        "{}",
        text(&malformed.stderr)
    );

    // With the model server gone, the run replays identically and `why` reads the same.
    drop(server);
    let replay = said(&converge(&db, &["replay", "churn-1"]));
    assert!(replay.contains("identical"), "{replay}");
    assert_eq!(
        said(&converge(
            &db,
            &["why", "churn-1", "hypotheses/north-churn"]
        )),
        why
    );
}

#[test]
fn why_names_the_prompt_tokens_anthropic_read_from_its_cache() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("journal.db");
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let server = tokio
        .block_on(ScriptedServer::start(Wire::Anthropic))
        .unwrap();
    server.expect_key(ANTHROPIC_KEY);
    server.push(Reply::answer(answer(), 20, 30).with_cache_tokens(1_500, 200));
    let spec = job(dir.path(), "anthropic", &server.base_url());

    let run = converge(&db, &["run", &spec, "--id", "cached-1", "--json"]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    let summary = json_of(&run);
    assert_eq!(summary["stats"]["tokens"]["input"], 1_720);
    assert!(server.violations().is_empty(), "{:?}", server.violations());

    let why = said(&converge(&db, &["why", "cached-1", "north-churn"]));
    for expected in [
        "provider: anthropic (anthropic wire, ",
        "model: small-model (asked for and answered)",
        "tokens: 1720 in (of which 1500 read from the prompt cache, 200 written to it), 30 out",
        "finish: tool_use",
    ] {
        assert!(why.contains(expected), "{expected:?} in:\n{why}");
    }
}

#[test]
fn show_prints_a_failed_attempt_with_its_error_and_no_answer() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("journal.db");
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let server = tokio.block_on(ScriptedServer::start(Wire::OpenAi)).unwrap();
    server.push(Reply::error(429, "rate_limit_exceeded", "slow down"));
    let spec = job(dir.path(), "ollama", &server.base_url());

    let run = converge(&db, &["run", &spec, "--id", "limited-1"]);
    assert_eq!(run.status.code(), Some(7), "{}", text(&run.stdout));

    let show = said(&converge(&db, &["show", "limited-1", "c2.a2.o0"]));
    for expected in [
        "model exchange c2.a2.o0 by agent `explainer`, attempt 1",
        "model: asked for small-model; no answer came",
        "tokens: 0 in, 0 out",
        "error: rate_limited (HTTP 429): slow down",
        "from: ollama:small-model (reference prompt:",
        "answer: none came",
    ] {
        assert!(show.contains(expected), "{expected:?} in:\n{show}");
    }
}
