//! Hostile specs: every file in `tests/hostile/` is loaded and run through the `Runtime`
//! like any job, and must end quickly with a clear message, within a memory bound.
//!
//! Each file's first line says what its message must contain (`# expect: …`). The cases
//! are CEL comprehension bombs in conditions and invariants, and template bombs in rule
//! content and model prompts. They run one after another in this one test, so the process's
//! peak resident size (`VmHWM`) at the end bounds every case.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use converge_core::{Context, StopReason};
use converge_runtime::spec::JobSpec;
use support::Rendering;

/// How long one hostile spec may take, start to stop.
const CASE_DURATION_MAX: Duration = Duration::from_secs(5);

/// The most memory the whole set may make this process hold at once, in KiB.
const PEAK_RSS_KIB_MAX: u64 = 256 * 1024;

/// What a user-facing message must never contain: Rust debug formatting.
const DEBUG_MARKS: [&str; 5] = ["{ ", "Some(", "None", "Ok(", "Err("];

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    cases.sort();
    cases
}

/// Every message the run produced: failures, rejections and why it stopped.
fn messages(path: &Path) -> Vec<String> {
    let spec = JobSpec::load(path).unwrap().spec;
    let mut runtime = spec.builder().llm(&Rendering).build().unwrap();
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = tokio.block_on(runtime.run(Context::new())).unwrap();
    let mut messages: Vec<String> = result.failures.iter().map(|f| f.message.clone()).collect();
    messages.extend(result.rejections.iter().map(|r| r.rejection.to_string()));
    if let StopReason::InvariantViolated { detail, .. }
    | StopReason::InvariantUnevaluable { detail, .. } = &result.stop_reason
    {
        messages.push(detail.clone());
    }
    messages
}

fn expected(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let first = text.lines().next().unwrap_or_default();
    first
        .strip_prefix("# expect: ")
        .unwrap_or_else(|| panic!("{} has no `# expect:` line", path.display()))
        .to_owned()
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn every_hostile_spec_ends_quickly_with_a_clear_message() {
    let cases = cases();
    assert!(cases.len() >= 10, "the hostile set is missing");
    for path in &cases {
        let name = path.file_name().unwrap().to_string_lossy();
        let started = Instant::now();
        let messages = messages(path);
        let elapsed = started.elapsed();
        assert!(elapsed < CASE_DURATION_MAX, "{name} took {elapsed:?}");
        let expected = expected(path);
        assert!(
            messages.iter().any(|message| message.contains(&expected)),
            "{name}: no message contains {expected:?}: {messages:#?}"
        );
        for message in &messages {
            for mark in DEBUG_MARKS {
                assert!(!message.contains(mark), "{name}: {message}");
            }
        }
    }
    if cfg!(target_os = "linux") {
        let peak = peak_rss_kib();
        assert!(peak > 0 && peak < PEAK_RSS_KIB_MAX, "peak RSS {peak} KiB");
    }
}
