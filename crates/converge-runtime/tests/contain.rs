//! Command agents are contained: real `sh` processes whose children and background jobs must
//! all be gone after a timeout, a dropped drive or the end of their exchange; an answer
//! written before exit counts even when a leftover process holds the pipe; agents see a
//! minimal environment plus what their spec names.
//!
//! Processes are found through `/proc` (Linux): each script writes the ids of the processes
//! it starts to files in the job's directory, and a process counts as gone when it no longer
//! exists or is a zombie (killed, waiting to be reaped by whoever inherited it).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use converge_core::{Context, ContextKey, ConvergeResult, StopReason};
use converge_runtime::spec::{AGENT_ENV_INHERITED, JobSpec};
use serde_json::Value;
use tempfile::TempDir;

/// How long a killed process may take to disappear from `/proc`.
const GONE_WITHIN: Duration = Duration::from_secs(5);

/// How long a script may take to write its pid files.
const STARTED_WITHIN: Duration = Duration::from_secs(10);

/// A job directory with a spec and scripts; kills every recorded pid when dropped, so a
/// failing test leaves nothing behind.
struct Job {
    dir: TempDir,
    spec: PathBuf,
}

impl Job {
    fn new(agents: &str, files: &[(&str, &str)]) -> Job {
        let dir = TempDir::new().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let spec = dir.path().join("job.yaml");
        let yaml = format!(
            "version: 1\nintent:\n  objective: contain command agents\nseeds:\n  - {{key: seeds, id: s1, content: go}}\nagents:\n{agents}"
        );
        std::fs::write(&spec, yaml).unwrap();
        Job { dir, spec }
    }

    fn runtime(&self) -> converge_runtime::Runtime {
        match JobSpec::load(&self.spec) {
            Ok(loaded) => loaded.spec.build().unwrap(),
            Err(error) => panic!("the spec was refused:\n{error}"),
        }
    }

    /// The pid a script wrote to `name`, waiting for it.
    fn pid(&self, name: &str) -> u32 {
        let path = self.dir.path().join(name);
        let deadline = Instant::now() + STARTED_WITHIN;
        loop {
            if let Some(pid) = std::fs::read_to_string(&path)
                .ok()
                .and_then(|text| text.trim().parse().ok())
            {
                return pid;
            }
            assert!(Instant::now() < deadline, "{name} was never written");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        for name in ["group", "foreground", "background"] {
            if let Ok(pid) = std::fs::read_to_string(self.dir.path().join(name)) {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", pid.trim()])
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
    }
}

fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn run(job: &Job) -> ConvergeResult {
    tokio_runtime()
        .block_on(job.runtime().run(Context::new()))
        .unwrap()
}

/// `(state, process group)` of a process, from `/proc/PID/stat`; `None` if it does not exist.
fn stat(pid: &str) -> Option<(char, u32)> {
    let text = std::fs::read_to_string(Path::new("/proc").join(pid).join("stat")).ok()?;
    // pid (comm) state ppid pgrp …; comm may hold spaces and parentheses.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let pgrp = fields.nth(1)?.parse().ok()?;
    Some((state, pgrp))
}

fn alive(pid: u32) -> bool {
    stat(&pid.to_string()).is_some_and(|(state, _)| !matches!(state, 'Z' | 'X'))
}

/// The live processes of group `group`.
fn members(group: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.bytes().all(|b| b.is_ascii_digit()))
        .filter(|name| {
            stat(name).is_some_and(|(state, pgrp)| pgrp == group && !matches!(state, 'Z' | 'X'))
        })
        .filter_map(|name| name.parse().ok())
        .collect()
}

/// Requires every pid, and every process of the agent's group, gone within [`GONE_WITHIN`].
fn assert_all_gone(group: u32, pids: &[u32]) {
    let deadline = Instant::now() + GONE_WITHIN;
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|pid| alive(*pid)).collect();
        let members = members(group);
        if left.is_empty() && members.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still running: {left:?}; left in the agent's process group {group}: {members:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A shell agent with a foreground child and a background job, both recorded, that never
/// answers.
const STUCK_SH: &str = "echo $$ > group
sleep 300 &
echo $! > background
sh -c 'echo $$ > foreground; exec sleep 301'
";

/// A shell agent that answers, leaving a background job that keeps stdout and stderr open.
const ANSWER_AND_LINGER_SH: &str = r#"echo $$ > group
sleep 300 &
echo $! > background
echo '{"proposals": [{"key": "signals", "id": "answer", "content": "given"}]}'
"#;

fn failure_messages(result: &ConvergeResult) -> Vec<&str> {
    result.failures.iter().map(|f| f.message.as_str()).collect()
}

#[test]
fn a_timeout_kills_the_agents_children_and_background_jobs() {
    let job = Job::new(
        "  - {name: stuck, kind: command, reads: [seeds], writes: [signals], command: [sh, stuck.sh], timeout_ms: 1000}\n",
        &[("stuck.sh", STUCK_SH)],
    );
    let started = Instant::now();
    let result = run(&job);
    assert!(started.elapsed() < Duration::from_secs(5));
    let failures = failure_messages(&result);
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0].contains("timed out after 1000 ms and was killed"),
        "{}",
        failures[0]
    );
    let pids = [
        job.pid("group"),
        job.pid("background"),
        job.pid("foreground"),
    ];
    assert_all_gone(pids[0], &pids);
}

#[test]
fn dropping_a_drive_kills_its_agents_whole() {
    let job = Job::new(
        "  - {name: stuck, kind: command, reads: [seeds], writes: [signals], command: [sh, stuck.sh], timeout_ms: 60000}\n",
        &[("stuck.sh", STUCK_SH)],
    );
    let mut runtime = job.runtime();
    let tokio = tokio_runtime();
    let cut = tokio.block_on(async {
        let drive = runtime.run(Context::new());
        tokio::time::timeout(Duration::from_millis(1500), drive).await
    });
    assert!(cut.is_err(), "the drive should still have been waiting");
    let pids = [
        job.pid("group"),
        job.pid("background"),
        job.pid("foreground"),
    ];
    assert_all_gone(pids[0], &pids);
}

#[test]
fn an_answer_counts_when_a_leftover_process_holds_the_pipe_and_the_leftover_is_killed() {
    let job = Job::new(
        "  - {name: answer, kind: command, reads: [seeds], writes: [signals], command: [sh, answer.sh], timeout_ms: 20000}\n",
        &[("answer.sh", ANSWER_AND_LINGER_SH)],
    );
    let started = Instant::now();
    let result = run(&job);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited for the leftover: {:?}",
        started.elapsed()
    );
    assert_eq!(failure_messages(&result), Vec::<&str>::new());
    assert_eq!(result.stop_reason, StopReason::Converged);
    let answer = result.context.fact(ContextKey::Signals, "answer").unwrap();
    assert_eq!(answer.content(), &Value::from("given"));
    let pids = [job.pid("group"), job.pid("background")];
    assert_all_gone(pids[0], &pids);
}

#[test]
fn processes_an_agent_leaves_behind_are_killed_when_it_exits() {
    let linger = r#"echo $$ > group
sleep 300 > /dev/null 2>&1 < /dev/null &
echo $! > background
echo '{"proposals": []}'
"#;
    let job = Job::new(
        "  - {name: linger, kind: command, reads: [seeds], writes: [signals], command: [sh, linger.sh]}\n",
        &[("linger.sh", linger)],
    );
    let result = run(&job);
    assert_eq!(failure_messages(&result), Vec::<&str>::new());
    let pids = [job.pid("group"), job.pid("background")];
    assert_all_gone(pids[0], &pids);
}

/// Writes the environment it was started with (before the shell adds anything) to
/// `env-$AGENT_ID`, and answers nothing.
const ENV_SH: &str = r#"tr '\0' '\n' < /proc/$$/environ > "env-$AGENT_ID"
echo '{"proposals": []}'
"#;

#[test]
fn agents_see_a_minimal_environment_plus_what_the_spec_names() {
    // Cargo sets CARGO_MANIFEST_DIR for the tests it runs: it stands for a secret here.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("run through cargo test");
    let job = Job::new(
        "  - {name: plain, kind: command, reads: [seeds], writes: [signals], command: [sh, env.sh], env: {AGENT_ID: plain}}
  - name: named
    kind: command
    reads: [seeds]
    writes: [signals]
    command: [sh, env.sh]
    env: {AGENT_ID: named, TRIAGE_MODE: strict}
    pass_env: [CARGO_MANIFEST_DIR, CONVERGE_UNSET_VARIABLE]
",
        &[("env.sh", ENV_SH)],
    );
    let result = run(&job);
    assert_eq!(failure_messages(&result), Vec::<&str>::new());
    let seen = |id: &str| -> Vec<(String, String)> {
        let text = std::fs::read_to_string(job.dir.path().join(format!("env-{id}"))).unwrap();
        let pairs = text.lines().filter_map(|line| line.split_once('='));
        pairs.map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
    };
    let plain = seen("plain");
    let names: Vec<&str> = plain.iter().map(|(name, _)| name.as_str()).collect();
    let unexpected: Vec<&str> = names
        .iter()
        .copied()
        .filter(|name| !AGENT_ENV_INHERITED.contains(name) && *name != "AGENT_ID")
        .collect();
    assert_eq!(unexpected, Vec::<&str>::new());
    assert!(names.contains(&"PATH"), "{names:?}");
    assert!(!names.contains(&"CARGO_MANIFEST_DIR"));
    let named = seen("named");
    let value = |name: &str| {
        named
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    assert_eq!(value("TRIAGE_MODE"), Some("strict"));
    assert_eq!(value("CARGO_MANIFEST_DIR"), Some(manifest.as_str()));
    assert_eq!(
        value("CONVERGE_UNSET_VARIABLE"),
        None,
        "a variable that is not set is not passed"
    );
    assert_eq!(named.len(), plain.len() + 2, "{named:?}");
}
