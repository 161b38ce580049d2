//! A bounded fuzz campaign over what Converge reads from users: job specs, CEL conditions
//! and invariants, MiniJinja templates, and journal files.
//!
//! Four proptest targets, each driven by a fixed seed so a CI run is reproducible, and each
//! seeded with the pathological cases of `tests/hostile/` and the `examples/`:
//!
//! - **spec loading**: valid specs mutated by bit flips, truncation, lines spliced from other
//!   specs, duplicated and deleted lines (duplicate keys), deep nesting, huge numbers and odd
//!   Unicode, parsed, built and — when they have no `command` agent — run in memory;
//! - **CEL**: expressions from a small grammar (facts, literals, lists, maps, nested macros,
//!   operators, `size`, `matches`, concatenation) and the hostile bombs, as a rule's `when`
//!   or as an invariant of each class;
//! - **templates**: MiniJinja templates from a small grammar (loops, `set`, namespaces,
//!   filters, `~`, `*`, ranges, macros) and the hostile bombs, as a rule's content, a rule's
//!   fact id or a model prompt;
//! - **journal opening**: random bytes, mutated copies of a real journal, and SQLite files of
//!   other shapes, opened with `SqliteJournal::open` and, when that succeeds, read with every
//!   read of the `Journal` trait, replayed and inspected.
//!
//! Every case runs on its own thread. It fails if anything panics on that thread (a panic
//! hook sees even those the runtime contains and reports as an agent's failure), if it runs
//! longer than [`CASE_DURATION_MAX`] or does not end within [`CASE_WALL_MAX`], or if a message it returns shows Rust debug
//! formatting. A journal file that is refused must be left byte-identical.
//!
//! The case counts are sized for about a minute in a debug build on two cores. To fuzz
//! longer, multiply them and pick another seed:
//!
//! ```text
//! CONVERGE_FUZZ_CASES=50 CONVERGE_FUZZ_SEED=7 cargo test --release -p converge-runtime --test fuzz
//! ```
//!
//! A finding is kept as an explicit `#[test]` below the targets, with its minimal input.

mod support;

use std::cell::RefCell;
use std::fmt::Debug;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Once, OnceLock, mpsc};
use std::time::{Duration, Instant};

use converge_core::{Context, StopReason};
use converge_runtime::spec::JobSpec;
use converge_runtime::{DriverConfig, Journal, RunId, Runtime, SqliteJournal, Verification};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use support::Rendering;
use tempfile::TempDir;

/// Spec mutations: about 15 s in a debug build (most cases are refused while parsing; those
/// that parse may run hostile bombs of a few hundred milliseconds each).
const SPEC_CASES: u32 = 300;
/// CEL expressions: about 20 s in a debug build (a case that reaches the default cost limit
/// takes about a second).
const CEL_CASES: u32 = 200;
/// Templates: about 12 s in a debug build.
const TEMPLATE_CASES: u32 = 1000;
/// Journal files: about 12 s in a debug build (each case writes and opens an SQLite file).
const JOURNAL_CASES: u32 = 1000;

/// How long one case may run, as every hostile spec must: its thread's CPU time where Linux
/// reports it (so that tests sharing the cores do not fail each other), else wall time.
const CASE_DURATION_MAX: Duration = Duration::from_secs(5);

/// How long a case may take on the wall clock before it is taken as hung: generous, since the
/// targets run in parallel on the CI machine's few cores.
const CASE_WALL_MAX: Duration = Duration::from_secs(30);

/// The wall-clock budget and agent timeout a fuzzed run is given (specs may ask for less).
const RUN_TIME_MS_MAX: u64 = 2_000;

/// How long proptest may spend shrinking a failure, in milliseconds: a hanging case costs
/// up to [`CASE_WALL_MAX`] per attempt.
const SHRINK_TIME_MS_MAX: u32 = 60_000;

/// What a user-facing message must never contain: Rust debug formatting, of `std` types and
/// of the CEL interpreter's values.
const DEBUG_MARKS: [&str; 10] = [
    "{ ", "Some(", "None", "Ok(", "Err(", "Int(", "UInt(", "Float(", "List(", "Map(",
];

/// Multiplies every case count (`CONVERGE_FUZZ_CASES`, default 1).
fn case_factor() -> u32 {
    std::env::var("CONVERGE_FUZZ_CASES")
        .ok()
        .and_then(|factor| factor.parse().ok())
        .unwrap_or(1)
}

/// The seed of `target`'s generator: fixed, unless `CONVERGE_FUZZ_SEED` picks another.
fn seed(target: &str) -> [u8; 32] {
    let mut seed = *b"converge fuzz campaign: seed 1.0";
    let extra = std::env::var("CONVERGE_FUZZ_SEED").unwrap_or_default();
    for (i, byte) in target.bytes().chain(extra.bytes()).enumerate() {
        seed[i % 32] ^= byte.rotate_left(i as u32 / 32);
    }
    seed
}

/// Runs `cases` cases of `target`, each input from `strategy` checked by `check`.
fn campaign<S>(target: &str, cases: u32, strategy: S, check: fn(&S::Value) -> Result<(), String>)
where
    S: Strategy,
    S::Value: Debug,
{
    let config = Config {
        cases: cases * case_factor(),
        failure_persistence: None,
        max_shrink_time: SHRINK_TIME_MS_MAX,
        ..Config::default()
    };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed(target));
    let mut runner = TestRunner::new_with_rng(config, rng);
    if let Err(error) = runner.run(&strategy, |input| {
        check(&input).map_err(TestCaseError::fail)
    }) {
        panic!("{target}: {error}");
    }
}

// ---- one case, contained ----------------------------------------------------------------

thread_local! {
    /// Every panic on this thread, contained or not, as the panic hook saw it.
    static PANICS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

fn record_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = PANICS.try_with(|panics| panics.borrow_mut().push(info.to_string()));
            previous(info);
        }));
    });
}

/// Runs `case` on a thread of its own: its error, or a failure if anything on that thread
/// panicked or it did not end in time.
fn contained(case: impl FnOnce() -> Result<(), String> + Send + 'static) -> Result<(), String> {
    record_panics();
    let (sender, receiver) = mpsc::channel();
    std::thread::Builder::new()
        .name("fuzz-case".to_owned())
        .spawn(move || {
            let (started, cpu_started) = (Instant::now(), thread_cpu_time());
            let outcome = catch_unwind(AssertUnwindSafe(case));
            let panics = PANICS.with(RefCell::take);
            let spent = match (cpu_started, thread_cpu_time()) {
                (Some(start), Some(end)) => end.saturating_sub(start),
                _ => started.elapsed(),
            };
            let _ = sender.send((outcome, panics, spent));
        })
        .map_err(|error| format!("could not start the case's thread: {error}"))?;
    // The thread of a case that never ends is left behind: the campaign fails anyway.
    let (outcome, panics, spent) = receiver
        .recv_timeout(CASE_WALL_MAX)
        .map_err(|_| format!("the case did not end within {CASE_WALL_MAX:?}"))?;
    if !panics.is_empty() {
        return Err(format!("panicked: {}", panics.join("\n")));
    }
    if spent > CASE_DURATION_MAX {
        return Err(format!("the case ran for {spent:?}"));
    }
    outcome.unwrap_or_else(|_| Err("panicked".to_owned()))
}

/// How long the calling thread has run on a CPU, if Linux says (`/proc/thread-self/schedstat`
/// starts with it, in nanoseconds).
fn thread_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let nanos = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
}

/// Refuses a message showing Rust debug formatting that is not the user's own text: a mark
/// that occurs in `source` may be quoted from it (`{{ ` is template syntax, not a mark).
fn check_messages(messages: &[String], source: &str) -> Result<(), String> {
    let source = source.replace("{{", "");
    for message in messages {
        let text = message.replace("{{", "");
        if let Some(mark) = DEBUG_MARKS
            .iter()
            .find(|mark| text.contains(**mark) && !source.contains(**mark))
        {
            return Err(format!(
                "a message shows debug formatting ({mark:?}): {message}"
            ));
        }
    }
    Ok(())
}

// ---- specs: load, build, run ------------------------------------------------------------

/// Parses `source`, builds it and, without command agents, runs it: every message a user
/// would read (problems, warnings, failures, rejections, why it stopped).
fn spec_messages(source: &str, origin: &Path) -> Vec<String> {
    let loaded = match JobSpec::parse(source, origin) {
        Ok(loaded) => loaded,
        Err(error) => return vec![error.to_string()],
    };
    let mut messages: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    let spec = loaded.spec;
    let runtime = match spec.builder().llm(&Rendering).build() {
        Ok(runtime) => runtime,
        Err(error) => {
            messages.push(error.to_string());
            return messages;
        }
    };
    if spec.command_agents().next().is_none() {
        let time_ms = spec
            .time_budget_ms()
            .map_or(RUN_TIME_MS_MAX, |ms| ms.min(RUN_TIME_MS_MAX));
        messages.extend(run_messages(runtime, time_ms));
    }
    messages
}

fn run_messages(runtime: Runtime, time_ms: u64) -> Vec<String> {
    let mut runtime = runtime.with_config(DriverConfig {
        agent_timeout_ms: Some(RUN_TIME_MS_MAX),
        time_budget_ms: Some(time_ms),
        ..DriverConfig::default()
    });
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let result = match tokio.block_on(runtime.run(Context::new())) {
        Ok(result) => result,
        Err(error) => return vec![error.to_string()],
    };
    let mut messages: Vec<String> = result.failures.iter().map(|f| f.message.clone()).collect();
    messages.extend(result.rejections.iter().map(|r| r.rejection.to_string()));
    match result.stop_reason {
        StopReason::InvariantViolated { detail, .. }
        | StopReason::InvariantUnevaluable { detail, .. } => messages.push(detail),
        StopReason::AgentFailed { message, .. } => messages.push(message),
        StopReason::Halted { reason } => messages.push(reason),
        _ => {}
    }
    messages
}

/// The spec property: it ends in time, panics nowhere, and says nothing in debug format.
fn check_spec(source: &str, origin: &Path) -> Result<(), String> {
    let (source, origin) = (source.to_owned(), origin.to_path_buf());
    contained(move || check_messages(&spec_messages(&source, &origin), &source))
}

/// A spec file of the corpus.
#[derive(Debug)]
struct Sample {
    path: PathBuf,
    text: String,
}

fn samples_in(dir: &Path) -> Vec<Sample> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("a corpus directory")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| Sample {
            text: std::fs::read_to_string(&path).expect("a readable spec"),
            path,
        })
        .collect()
}

/// The examples and the hostile set.
fn corpus() -> &'static [Sample] {
    static CORPUS: OnceLock<Vec<Sample>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut samples = samples_in(&crate_dir.join("../../examples"));
        samples.extend(samples_in(&crate_dir.join("tests/hostile")));
        assert!(samples.len() >= 14, "the fuzz corpus is missing");
        samples
    })
}

/// The quoted strings after `marker` (`when: "`) in the hostile set: its bombs.
fn hostile_strings(markers: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for sample in corpus() {
        for line in sample.text.lines() {
            for marker in markers {
                let Some(at) = line.find(marker) else {
                    continue;
                };
                let quoted = &line[at + marker.len() - 1..];
                let mut strings = serde_json::Deserializer::from_str(quoted).into_iter::<String>();
                if let Some(Ok(text)) = strings.next() {
                    found.push(text);
                }
            }
        }
    }
    found
}

// ---- target 1: spec loading -------------------------------------------------------------

/// Numbers that stress parsers: past every integer width, past `f64`, special floats.
const HUGE_NUMBERS: [&str; 10] = [
    "99999999999999999999999999999999",
    "18446744073709551616",
    "-9223372036854775809",
    "9223372036854775807",
    "1e309",
    "-1e-400",
    "0x7fffffffffffffff",
    ".nan",
    "-.inf",
    "4000001",
];

/// Text that stresses a YAML reader: control characters, BOMs, bidi overrides, YAML line
/// breaks, anchors and aliases, tags, document markers, flow and block indicators.
const ODD_TEXT: [&str; 24] = [
    "\u{0}",
    "\u{feff}",
    "\u{202e}",
    "\u{85}",
    "\u{2028}",
    "\u{200b}",
    "\u{fffd}",
    "é\u{301}",
    "𝔘𝔫𝔦",
    "\r",
    "\t",
    "&a ",
    "*a",
    "<<: *a\n",
    "!!binary ",
    "!custom ",
    "? ",
    "- ",
    ": ",
    "|\n",
    "---\n",
    "...\n",
    "%YAML 1.2\n",
    "{[\"'#",
];

/// One edit of a spec's text.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit {
        at: Index,
        bit: u8,
    },
    Truncate {
        at: Index,
    },
    Splice {
        from: Index,
        start: Index,
        lines: usize,
        at: Index,
    },
    DuplicateLine {
        line: Index,
    },
    DeleteLine {
        line: Index,
    },
    Nest {
        line: Index,
        depth: usize,
        flow: bool,
    },
    HugeNumber {
        at: Index,
        number: Index,
    },
    Insert {
        at: Index,
        text: Index,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 0..8u8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        any::<Index>().prop_map(|at| Mutation::Truncate { at }),
        (any::<Index>(), any::<Index>(), 1..8usize, any::<Index>()).prop_map(
            |(from, start, lines, at)| Mutation::Splice {
                from,
                start,
                lines,
                at
            }
        ),
        any::<Index>().prop_map(|line| Mutation::DuplicateLine { line }),
        any::<Index>().prop_map(|line| Mutation::DeleteLine { line }),
        (any::<Index>(), 1..100usize, any::<bool>())
            .prop_map(|(line, depth, flow)| Mutation::Nest { line, depth, flow }),
        (any::<Index>(), any::<Index>())
            .prop_map(|(at, number)| Mutation::HugeNumber { at, number }),
        (any::<Index>(), any::<Index>()).prop_map(|(at, text)| Mutation::Insert { at, text }),
    ]
}

/// Byte offsets of the starts of `text`'s lines, and its end.
fn line_starts(text: &[u8]) -> Vec<usize> {
    let mut starts = vec![0];
    starts.extend(
        text.iter()
            .enumerate()
            .filter(|(_, byte)| **byte == b'\n')
            .map(|(at, _)| at + 1),
    );
    starts
}

fn line_range(text: &[u8], line: &Index) -> std::ops::Range<usize> {
    let starts = line_starts(text);
    let first = line.index(starts.len());
    let end = starts.get(first + 1).copied().unwrap_or(text.len());
    starts[first].min(text.len())..end
}

fn insert(text: &mut Vec<u8>, at: usize, piece: &[u8]) {
    let at = at.min(text.len());
    text.splice(at..at, piece.iter().copied());
}

fn nesting(depth: usize, flow: bool, indent: &[u8]) -> Vec<u8> {
    if flow {
        let mut line = indent.to_vec();
        line.extend_from_slice(b"nested: ");
        line.extend(std::iter::repeat_n(b'[', depth));
        line.extend(std::iter::repeat_n(b']', depth));
        line.push(b'\n');
        return line;
    }
    let mut lines = Vec::new();
    for level in 0..depth {
        lines.extend_from_slice(indent);
        lines.extend(std::iter::repeat_n(b' ', 2 * level));
        lines.extend_from_slice(b"nested:\n");
    }
    lines
}

fn apply(text: &mut Vec<u8>, mutation: &Mutation) {
    match mutation {
        Mutation::FlipBit { at, bit } if !text.is_empty() => {
            let at = at.index(text.len());
            text[at] ^= 1 << bit;
        }
        Mutation::FlipBit { .. } => {}
        Mutation::Truncate { at } => text.truncate(at.index(text.len() + 1)),
        Mutation::Splice {
            from,
            start,
            lines,
            at,
        } => {
            let donor = corpus()[from.index(corpus().len())].text.as_bytes();
            let starts = line_starts(donor);
            let first = start.index(starts.len());
            let last = (first + lines).min(starts.len() - 1);
            let piece = donor[starts[first]..starts[last].max(starts[first])].to_vec();
            let at = line_range(text, at).start;
            insert(text, at, &piece);
        }
        Mutation::DuplicateLine { line } => {
            let range = line_range(text, line);
            let piece = text[range.clone()].to_vec();
            insert(text, range.start, &piece);
        }
        Mutation::DeleteLine { line } => {
            let range = line_range(text, line);
            text.drain(range);
        }
        Mutation::Nest { line, depth, flow } => {
            let range = line_range(text, line);
            let indent: Vec<u8> = text[range.clone()]
                .iter()
                .take_while(|byte| **byte == b' ')
                .copied()
                .collect();
            insert(text, range.start, &nesting(*depth, *flow, &indent));
        }
        Mutation::HugeNumber { at, number } => {
            let digits: Vec<usize> = (0..text.len())
                .filter(|&i| text[i].is_ascii_digit() && (i == 0 || !text[i - 1].is_ascii_digit()))
                .collect();
            let number = HUGE_NUMBERS[number.index(HUGE_NUMBERS.len())].as_bytes();
            let Some(&start) = digits.get(at.index(digits.len().max(1))) else {
                text.extend_from_slice(number);
                return;
            };
            let end = (start..text.len())
                .find(|&i| !text[i].is_ascii_digit())
                .unwrap_or(text.len());
            text.splice(start..end, number.iter().copied());
        }
        Mutation::Insert { at, text: piece } => {
            let piece = ODD_TEXT[piece.index(ODD_TEXT.len())].as_bytes();
            let at = at.index(text.len() + 1);
            insert(text, at, piece);
        }
    }
}

/// A corpus spec and the edits to make to it.
#[derive(Debug, Clone)]
struct MutatedSpec {
    sample: Index,
    mutations: Vec<Mutation>,
}

impl MutatedSpec {
    fn render(&self) -> (String, &'static Path) {
        let sample = &corpus()[self.sample.index(corpus().len())];
        let mut text = sample.text.clone().into_bytes();
        for mutation in &self.mutations {
            apply(&mut text, mutation);
        }
        (String::from_utf8_lossy(&text).into_owned(), &sample.path)
    }
}

fn check_mutated_spec(input: &MutatedSpec) -> Result<(), String> {
    let (source, origin) = input.render();
    check_spec(&source, origin)
}

#[test]
fn mutated_specs_end_in_time_without_panics_or_debug_output() {
    let strategy = (any::<Index>(), prop::collection::vec(mutation(), 0..6))
        .prop_map(|(sample, mutations)| MutatedSpec { sample, mutations });
    campaign("spec", SPEC_CASES, strategy, check_mutated_spec);
}

// ---- target 2: CEL ----------------------------------------------------------------------

/// Leaves of generated CEL: the variables a condition sees, and literals at the edges.
const CEL_LEAVES: [&str; 30] = [
    "facts",
    "facts.signals",
    "facts.signals[0]",
    "facts.signals[0].content.xs",
    "facts.evaluations",
    "fact",
    "fact.id",
    "fact.content.xs",
    "fact.content.text",
    "fact.content.x",
    "fact.content.x.y",
    "v",
    "w",
    "0",
    "-1",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551615u",
    "1e308",
    "-0.0",
    "'ab'",
    "''",
    "'é𝔘\\u0000'",
    "b'\\xff'",
    "true",
    "null",
    "[]",
    "{}",
    "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]",
    "'%s{}'",
];

const CEL_BINARY: [&str; 15] = [
    "+", "-", "*", "/", "%", "==", "!=", "<", "<=", ">", ">=", "&&", "||", "in", "+ '' +",
];

const CEL_FUNCTIONS: [&str; 8] = [
    "size", "string", "int", "uint", "double", "type", "bytes", "dyn",
];

const CEL_METHODS: [&str; 5] = ["contains", "startsWith", "endsWith", "split", "size"];

const CEL_MACROS: [&str; 5] = ["map", "filter", "all", "exists", "exists_one"];

/// Patterns for `matches`: backtracking bombs, huge repetitions, invalid syntax.
const CEL_PATTERNS: [&str; 7] = [
    "'a+b'",
    "'(a+)+$'",
    "'(a|aa)*c'",
    "'x{1000}{1000}'",
    "'['",
    "'(?i)é'",
    "'.*.*.*=.*'",
];

fn pick(options: &'static [&'static str]) -> impl Strategy<Value = String> + Clone {
    prop::sample::select(options).prop_map(str::to_owned)
}

fn cel_expression() -> impl Strategy<Value = String> {
    pick(&CEL_LEAVES).prop_recursive(6, 96, 4, |inner| {
        prop_oneof![
            (inner.clone(), pick(&CEL_BINARY), inner.clone())
                .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
            (prop::sample::select(&["!", "-"][..]), inner.clone())
                .prop_map(|(op, a)| format!("{op}{a}")),
            (inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(c, a, b)| format!("({c} ? {a} : {b})")),
            prop::collection::vec(inner.clone(), 0..4)
                .prop_map(|items| format!("[{}]", items.join(", "))),
            prop::collection::vec((inner.clone(), inner.clone()), 0..3).prop_map(|entries| {
                let entries: Vec<String> =
                    entries.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                format!("{{{}}}", entries.join(", "))
            }),
            (pick(&CEL_FUNCTIONS), inner.clone()).prop_map(|(f, a)| format!("{f}({a})")),
            (inner.clone(), pick(&CEL_METHODS), inner.clone())
                .prop_map(|(a, m, b)| format!("{a}.{m}({b})")),
            (inner.clone(), pick(&CEL_PATTERNS)).prop_map(|(a, p)| format!("{a}.matches({p})")),
            (inner.clone(), inner.clone()).prop_map(|(a, i)| format!("{a}[{i}]")),
            inner.clone().prop_map(|a| format!("has({a}.x)")),
            (
                inner.clone(),
                pick(&CEL_MACROS),
                prop::sample::select(&["v", "w"][..]),
                inner.clone()
            )
                .prop_map(|(list, mac, var, body)| format!("{list}.{mac}({var}, {body})")),
        ]
    })
}

/// Where an expression is evaluated.
#[derive(Debug, Clone, Copy)]
enum CelPlace {
    When,
    WhenForEach,
    Invariant(&'static str),
}

#[derive(Debug, Clone)]
struct CelCase {
    expression: String,
    place: CelPlace,
    cost_max: Option<u32>,
}

/// A spec around `case.expression`: two signal facts and a rule, with the expression as
/// its condition or as an invariant.
fn cel_spec(case: &CelCase) -> String {
    let quoted = serde_json::to_string(&case.expression).expect("a string");
    let runtime = case
        .cost_max
        .map(|cost| format!("runtime: {{expression_cost_max: {cost}}}\n"))
        .unwrap_or_default();
    let (rule, invariant) = match case.place {
        CelPlace::When => (format!("    when: {quoted}\n"), String::new()),
        CelPlace::WhenForEach => (
            format!("    for_each: signals\n    when: {quoted}\n"),
            String::new(),
        ),
        CelPlace::Invariant(class) => (
            "    for_each: signals\n".to_owned(),
            format!("invariants:\n  - {{name: probe, class: {class}, check: {quoted}}}\n"),
        ),
    };
    format!(
        "version: 1\nintent: {{objective: \"fuzz: a CEL expression\"}}\n{runtime}seeds:\n  \
         - {{key: signals, id: numbers, content: {{xs: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19], text: \"ab\", x: {{y: 1}}}}}}\n  \
         - {{key: signals, id: words, content: {{xs: [\"a\", \"bb\"], text: \"\", x: null}}}}\n\
         agents:\n  - name: probe\n    kind: rule\n    reads: [signals]\n    writes: [evaluations]\n\
         {rule}    propose: {{key: evaluations, id: \"seen-{{{{ fact.id if fact is defined else 'all' }}}}\", content: yes}}\n\
         {invariant}"
    )
}

fn check_cel(case: &CelCase) -> Result<(), String> {
    check_spec(&cel_spec(case), Path::new("cel.yaml"))
}

fn cel_case() -> impl Strategy<Value = CelCase> {
    let bombs = hostile_strings(&["when: \"", "check: \""]);
    assert!(bombs.len() >= 4, "the hostile CEL bombs are missing");
    let expression = prop_oneof![
        4 => cel_expression(),
        1 => prop::sample::select(bombs.clone()),
        1 => (prop::sample::select(bombs), cel_expression())
            .prop_map(|(bomb, tail)| format!("{tail} || {bomb}")),
    ];
    let place = prop_oneof![
        Just(CelPlace::When),
        Just(CelPlace::WhenForEach),
        Just(CelPlace::Invariant("structural")),
        Just(CelPlace::Invariant("semantic")),
        Just(CelPlace::Invariant("acceptance")),
    ];
    let cost_max = prop_oneof![3 => Just(None), 1 => prop::sample::select(&[1, 100, 1_000_000][..]).prop_map(Some)];
    (expression, place, cost_max).prop_map(|(expression, place, cost_max)| CelCase {
        expression,
        place,
        cost_max,
    })
}

#[test]
fn cel_expressions_end_in_time_without_panics_or_debug_output() {
    campaign("cel", CEL_CASES, cel_case(), check_cel);
}

// ---- target 3: templates ----------------------------------------------------------------

/// Leaves of generated template expressions.
const TEMPLATE_LEAVES: [&str; 22] = [
    "fact.id",
    "fact.content.xs",
    "fact.content.text",
    "fact.content.x",
    "facts.signals",
    "facts",
    "x",
    "ns.s",
    "loop.index",
    "'ab'",
    "''",
    "'%1000s'",
    "'%-1000000s'",
    "0",
    "-1",
    "1000",
    "1000000000",
    "range(100)",
    "range(1000000)",
    "[1, 2]",
    "{'a': [1]}",
    "none",
];

/// Operators and filters, `{a}` and `{b}` standing for operands.
const TEMPLATE_FORMS: [&str; 34] = [
    "({a} ~ {b})",
    "({a} * {b})",
    "({a} + {b})",
    "({a} - {b})",
    "({a} // {b})",
    "({a} ** {b})",
    "({a} | join({b}))",
    "({a} | replace({b}, {a}))",
    "({a} | format({b}))",
    "({b} | format({a}, {a}))",
    "({a} | batch({b}))",
    "({a} | batch({b}, {a}))",
    "({a} | indent({b}))",
    "({a} | slice({b}))",
    "({a} | tojson)",
    "({a} | pprint)",
    "({a} | string)",
    "({a} | list)",
    "({a} | length)",
    "({a} | sort)",
    "({a} | unique)",
    "({a} | reverse)",
    "({a} | first)",
    "({a} | sum)",
    "({a} | int)",
    "({a} | items)",
    "({a} | default({b}))",
    "({a} | map('upper'))",
    "({a} | center({b}))",
    "({a} | title)",
    "({a} | trim)",
    "range({a}, {b})",
    "{a}[{b}]",
    "[{a}, {b}]",
];

fn template_expression() -> impl Strategy<Value = String> {
    pick(&TEMPLATE_LEAVES).prop_recursive(4, 32, 2, |inner| {
        (pick(&TEMPLATE_FORMS), inner.clone(), inner)
            .prop_map(|(form, a, b)| form.replace("{a}", &a).replace("{b}", &b))
    })
}

/// Statements, `{e}` standing for an expression and `{body}` for statements.
const TEMPLATE_STATEMENTS: [&str; 14] = [
    "{% for x in {e} %}{body}{% endfor %}",
    "{% for x in {e} recursive %}{body}{{ loop(x) }}{% endfor %}",
    "{% set x = {e} %}{body}",
    "{% set ns = namespace(s={e}) %}{body}",
    "{% set ns.s = ns.s ~ {e} %}{body}",
    "{% if {e} %}{body}{% else %}{{ {e} }}{% endif %}",
    "{% set x %}{body}{% endset %}{{ x }}",
    "{% set ns = namespace(s={e}) %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{body}",
    "{% filter upper %}{body}{% endfilter %}",
    "{% with x = {e} %}{body}{% endwith %}",
    "{%- raw -%}{{ {e} }}{%- endraw %}{body}",
    "{% include 'other' %}{body}",
    "{# {e} #}{body}",
    "{{ {e} }}{body}",
];

fn template() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        template_expression().prop_map(|e| format!("{{{{ {e} }}}}")),
        Just("text ".to_owned()),
        Just(String::new()),
    ];
    leaf.prop_recursive(4, 24, 2, |inner| {
        (pick(&TEMPLATE_STATEMENTS), template_expression(), inner)
            .prop_map(|(form, e, body)| form.replace("{e}", &e).replace("{body}", &body))
    })
}

/// Where a template is rendered.
#[derive(Debug, Clone, Copy)]
enum TemplatePlace {
    Content,
    Id,
    Prompt,
}

#[derive(Debug, Clone)]
struct TemplateCase {
    template: String,
    place: TemplatePlace,
}

fn template_spec(case: &TemplateCase) -> String {
    let quoted = serde_json::to_string(&case.template).expect("a string");
    let agent = match case.place {
        TemplatePlace::Content => format!(
            "    kind: rule\n    for_each: signals\n    propose: {{key: evaluations, id: \"t-{{{{ fact.id }}}}\", content: {{text: {quoted}}}}}\n"
        ),
        TemplatePlace::Id => format!(
            "    kind: rule\n    for_each: signals\n    propose: {{key: evaluations, id: {quoted}, content: yes}}\n"
        ),
        TemplatePlace::Prompt => format!("    kind: llm\n    model: any\n    prompt: {quoted}\n"),
    };
    format!(
        "version: 1\nintent: {{objective: \"fuzz: a template\"}}\nseeds:\n  \
         - {{key: signals, id: numbers, content: {{xs: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], text: \"ab\", x: {{y: 1}}}}}}\n  \
         - {{key: signals, id: words, content: {{xs: [\"a\", \"bb\"], text: \"\", x: null}}}}\n\
         agents:\n  - name: probe\n    reads: [signals]\n    writes: [evaluations]\n{agent}"
    )
}

fn check_template(case: &TemplateCase) -> Result<(), String> {
    check_spec(&template_spec(case), Path::new("template.yaml"))
}

fn template_case() -> impl Strategy<Value = TemplateCase> {
    let bombs = hostile_strings(&["text: \"", "prompt: \""]);
    assert!(bombs.len() >= 8, "the hostile template bombs are missing");
    let text = prop_oneof![
        4 => template(),
        1 => prop::sample::select(bombs.clone()),
        1 => (prop::sample::select(bombs), template()).prop_map(|(bomb, rest)| format!("{rest}{bomb}")),
    ];
    let place = prop_oneof![
        2 => Just(TemplatePlace::Content),
        1 => Just(TemplatePlace::Id),
        1 => Just(TemplatePlace::Prompt),
    ];
    (text, place).prop_map(|(template, place)| TemplateCase { template, place })
}

#[test]
fn templates_end_in_time_without_panics_or_debug_output() {
    campaign("template", TEMPLATE_CASES, template_case(), check_template);
}

// ---- target 4: journal opening ----------------------------------------------------------

/// The small job recorded in the real journal: seeds, a rule and a semantic invariant.
const JOURNALED_JOB: &str = r#"
version: 1
intent: {objective: "fuzz: a journaled run"}
seeds:
  - {key: signals, id: a, content: {n: 1}}
  - {key: signals, id: b, content: {n: 2}}
agents:
  - name: flag
    kind: rule
    reads: [signals]
    writes: [evaluations]
    for_each: signals
    when: "fact.content.n > 1"
    propose: {key: evaluations, id: "flag-{{ fact.id }}", content: {n: "{{ fact.content.n }}"}}
invariants:
  - {name: small, class: semantic, check: "size(facts.evaluations) < 5"}
"#;

fn journaled_runtime() -> Runtime {
    JobSpec::parse(JOURNALED_JOB, "journaled.yaml")
        .expect("the journaled job parses")
        .spec
        .build()
        .expect("the journaled job builds")
}

/// The bytes of a journal holding one finished run of [`JOURNALED_JOB`], checkpointed.
fn real_journal() -> &'static [u8] {
    static JOURNAL: OnceLock<Vec<u8>> = OnceLock::new();
    JOURNAL.get_or_init(|| {
        let dir = TempDir::new().expect("a temporary directory");
        let path = dir.path().join("real.journal");
        let mut journal = SqliteJournal::open(&path).expect("a new journal");
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let run = RunId::new("fuzz-run").expect("a run id");
        tokio
            .block_on(journaled_runtime().run_durable(&mut journal, &run))
            .expect("the journaled run");
        drop(journal);
        let conn = rusqlite::Connection::open(&path).expect("the journal, reopened");
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .expect("a checkpoint");
        drop(conn);
        std::fs::read(&path).expect("the journal's bytes")
    })
}

/// An SQLite file of another shape, made with rusqlite.
#[derive(Debug, Clone)]
struct Shape {
    application_id: i32,
    user_version: i32,
    page_size: u32,
    wal: bool,
    /// Tables named like the journal's, with other columns.
    tables: Vec<&'static str>,
    /// A view (which takes no page of its own: the file stays one page).
    view: bool,
    schema_version: Option<&'static str>,
}

#[derive(Debug, Clone)]
enum JournalFile {
    Random(Vec<u8>),
    SqliteHeader(Vec<u8>),
    Real {
        flips: Vec<(Index, u8)>,
        truncate: Option<Index>,
        zeroed: Option<(Index, usize)>,
    },
    Shaped(Shape),
}

fn shape() -> impl Strategy<Value = Shape> {
    let ids = prop_oneof![Just(0), Just(0x436E_7667), Just(0x0F05_5112), any::<i32>()];
    let tables = prop::sample::subsequence(
        vec!["meta", "runs", "steps", "events", "outcomes", "other"],
        0..6,
    );
    (
        ids,
        prop_oneof![Just(0), Just(1), Just(2), Just(3), any::<i32>()],
        prop::sample::select(&[512u32, 4096, 65536][..]),
        any::<bool>(),
        tables,
        any::<bool>(),
        prop::option::of(prop::sample::select(&["2", "1", "0", "99", "two"][..])),
    )
        .prop_map(
            |(application_id, user_version, page_size, wal, tables, view, schema_version)| Shape {
                application_id,
                user_version,
                page_size,
                wal,
                tables,
                view,
                schema_version,
            },
        )
}

fn journal_file() -> impl Strategy<Value = JournalFile> {
    let flips = prop::collection::vec((any::<Index>(), 0..8u8), 0..8);
    let real = (
        flips,
        prop::option::of(any::<Index>()),
        prop::option::of((any::<Index>(), 1..4096usize)),
    )
        .prop_map(|(flips, truncate, zeroed)| JournalFile::Real {
            flips,
            truncate,
            zeroed,
        });
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..2048).prop_map(JournalFile::Random),
        1 => prop::collection::vec(any::<u8>(), 0..4096).prop_map(JournalFile::SqliteHeader),
        4 => real,
        2 => shape().prop_map(JournalFile::Shaped),
    ]
}

fn make_shaped(path: &Path, shape: &Shape) -> rusqlite::Result<()> {
    let conn = rusqlite::Connection::open(path)?;
    conn.pragma_update(None, "page_size", shape.page_size)?;
    if shape.wal {
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
    }
    conn.pragma_update(None, "application_id", shape.application_id)?;
    conn.pragma_update(None, "user_version", shape.user_version)?;
    for table in &shape.tables {
        conn.execute_batch(&format!(
            "CREATE TABLE {table} (key TEXT, value TEXT, id TEXT)"
        ))?;
    }
    if let (Some(version), true) = (shape.schema_version, shape.tables.contains(&"meta")) {
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
            [version],
        )?;
    }
    if shape.view {
        conn.execute_batch("CREATE VIEW converge AS SELECT 1")?;
    }
    if shape.wal {
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    }
    Ok(())
}

/// Writes `file` at `path`.
fn write_journal_file(path: &Path, file: &JournalFile) -> Result<(), String> {
    let bytes = match file {
        JournalFile::Random(bytes) => bytes.clone(),
        JournalFile::SqliteHeader(tail) => [&b"SQLite format 3\0"[..], tail].concat(),
        JournalFile::Real {
            flips,
            truncate,
            zeroed,
        } => {
            let mut bytes = real_journal().to_vec();
            for (at, bit) in flips {
                let at = at.index(bytes.len());
                bytes[at] ^= 1 << bit;
            }
            if let Some((at, len)) = zeroed {
                let start = at.index(bytes.len());
                let end = (start + len).min(bytes.len());
                bytes[start..end].fill(0);
            }
            if let Some(at) = truncate {
                bytes.truncate(at.index(bytes.len() + 1));
            }
            bytes
        }
        JournalFile::Shaped(shape) => {
            return make_shaped(path, shape).map_err(|error| format!("making the file: {error}"));
        }
    };
    std::fs::write(path, bytes).map_err(|error| format!("writing the file: {error}"))
}

/// Every read of every run: the messages of each error and of each broken verification.
fn journal_messages(journal: &SqliteJournal) -> Vec<String> {
    let runs = match journal.runs() {
        Ok(runs) => runs,
        Err(error) => return vec![error.to_string()],
    };
    let runtime = journaled_runtime();
    let mut messages = Vec::new();
    let mut note = |outcome: Result<(), String>| messages.extend(outcome.err());
    for run in runs {
        let id = &run.id;
        note(journal.summary(id).map(drop).map_err(|e| e.to_string()));
        note(journal.header(id).map(drop).map_err(|e| e.to_string()));
        note(journal.load(id).map(drop).map_err(|e| e.to_string()));
        note(journal.events(id, 0).map(drop).map_err(|e| e.to_string()));
        note(
            journal
                .events_page(id, 1, 2)
                .map(drop)
                .map_err(|e| e.to_string()),
        );
        note(match journal.verify(id) {
            Ok(Verification::Broken { at, reason }) => Err(format!("broken at {at}: {reason}")),
            Ok(_) => Ok(()),
            Err(error) => Err(error.to_string()),
        });
        note(
            runtime
                .replay(journal, id)
                .map(drop)
                .map_err(|e| e.to_string()),
        );
        note(
            runtime
                .inspect(journal, id)
                .map(drop)
                .map_err(|e| e.to_string()),
        );
    }
    messages
}

/// The journal property: opening refuses (leaving the file as it was) or opens, and every
/// read then answers; nothing panics, nothing hangs, no message is in debug format.
fn check_journal_file(file: &JournalFile) -> Result<(), String> {
    let file = file.clone();
    contained(move || {
        let dir = TempDir::new().map_err(|error| format!("a temporary directory: {error}"))?;
        let path = dir.path().join("fuzz.journal");
        write_journal_file(&path, &file)?;
        let before = std::fs::read(&path).map_err(|error| format!("reading the file: {error}"))?;
        let messages = match SqliteJournal::open(&path) {
            Err(error) => {
                let after = std::fs::read(&path).map_err(|e| format!("rereading the file: {e}"))?;
                if after != before {
                    return Err(format!("the refused file was changed: {error}"));
                }
                vec![error.to_string()]
            }
            Ok(journal) => journal_messages(&journal),
        };
        check_messages(&messages, "")
    })
}

#[test]
fn journal_files_open_or_are_refused_untouched_without_panics() {
    campaign("journal", JOURNAL_CASES, journal_file(), check_journal_file);
}

// ---- findings ---------------------------------------------------------------------------
//
// Each test below is a minimal input the campaign found, failing until its bug is fixed.

/// The property for a spec whose source the marks are checked against.
fn assert_spec_passes(source: &str) {
    if let Err(failure) = check_spec(source, Path::new("job.yaml")) {
        panic!("{failure}\nspec:\n{source}");
    }
}

fn rule_with_condition(condition: &str) -> String {
    cel_spec(&CelCase {
        expression: condition.to_owned(),
        place: CelPlace::When,
        cost_max: None,
    })
}

/// Found by the spec target: serde-saphyr's depth limit shows its debug form, so a seed whose
/// content nests 62 lists deep is refused with
/// `job.yaml:4:97: YAML document too large or too complex: limits breached: Depth { depth: 65 }`.
#[test]
fn yaml_nested_past_the_depth_limit_is_refused_in_plain_words() {
    let nesting = format!("{}{}", "[".repeat(62), "]".repeat(62));
    assert_spec_passes(&format!(
        "version: 1\nintent: {{objective: x}}\nseeds:\n  - {{key: signals, id: s, content: {nesting}}}\n"
    ));
}

/// Found by the CEL target: the interpreter's errors print values with `{:?}` and the runtime
/// passes them on (`spec/expr.rs`, `ExpressionError::Failed(error.to_string())`), so a failed
/// condition reads `Unable to use value 'List([Int(1)])' as a key`, `Index out of bounds:
/// Int(-1)` or `Unsupported binary operator 'add': Int(0), String("")`, and one that names
/// `facts` prints the whole context in debug form.
#[test]
fn cel_evaluation_errors_do_not_show_debug_values() {
    for condition in [
        "size({[1]: 1}) > 0",
        "[1][-1] == 1",
        "size(0 + '') > 0",
        "size({facts: 1}) > 0",
    ] {
        assert_spec_passes(&rule_with_condition(condition));
    }
}

/// Found by the CEL target: an invariant that indexes an empty list is "not evaluated" with
/// `Index out of bounds: Int(0)`.
#[test]
fn an_invariant_indexing_an_empty_list_says_so_in_plain_words() {
    assert_spec_passes(&cel_spec(&CelCase {
        expression: "facts.evaluations[0].id != ''".to_owned(),
        place: CelPlace::Invariant("semantic"),
        cost_max: None,
    }));
}

/// Found by the template target: MiniJinja names a constant key of an undefined item with
/// `{:?}`, so `a{{ fact.content[none] }}` fails with `` `fact.content[None]` is undefined ``.
#[test]
fn an_undefined_item_is_named_as_written() {
    assert_spec_passes(&template_spec(&TemplateCase {
        template: "a{{ fact.content[none] }}".to_owned(),
        place: TemplatePlace::Content,
    }));
}

/// Found by the CEL target: one evaluation at the hard cap, when it was 4,000,000 steps, took
/// about 3.5 s in a debug build, and the run's `time_ms` did not stop the next rule's, so two
/// such rules ran for about 7 s whatever the budget said. The cap is now 1,000,000 steps, and
/// an agent's evaluation stops at its deadline.
#[test]
fn two_rules_at_the_cost_cap_end_within_the_bound() {
    let bomb = hostile_strings(&["when: \""])
        .into_iter()
        .find(|when| when.starts_with("size("))
        .expect("the nested-map bomb");
    let quoted = serde_json::to_string(&bomb).expect("a string");
    let rule = |name: &str| {
        format!(
            "  - {{name: {name}, kind: rule, reads: [signals], writes: [evaluations], when: {quoted}, \
             propose: {{key: evaluations, id: {name}, content: x}}}}\n"
        )
    };
    assert_spec_passes(&format!(
        "version: 1\nintent: {{objective: x, budgets: {{time_ms: 1000}}}}\n\
         runtime: {{expression_cost_max: 1000000}}\nseeds:\n  \
         - {{key: signals, id: s, content: {{xs: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]}}}}\n\
         agents:\n{}{}",
        rule("first"),
        rule("second")
    ));
}

/// The corpus itself, unmutated: every example and hostile spec passes the spec property.
#[test]
fn the_corpus_passes_unmutated() {
    for sample in corpus() {
        if let Err(failure) = check_spec(&sample.text, &sample.path) {
            panic!("{}: {failure}", sample.path.display());
        }
    }
}

/// The real journal, untouched, opens and reads without a message.
#[test]
fn the_real_journal_reads_cleanly() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("real.journal");
    std::fs::write(&path, real_journal()).unwrap();
    let journal = SqliteJournal::open(&path).unwrap();
    assert_eq!(journal.runs().unwrap().len(), 1);
    assert_eq!(journal_messages(&journal), Vec::<String>::new());
}
