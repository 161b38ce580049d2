//! The progress line on a terminal, through the real binary: `converge` runs with its stderr
//! on a pseudo-terminal (as in a person's shell), and the line it redraws must count the
//! agent that is running while it runs — in a fresh run and in a run resumed after its
//! process was killed mid-cycle, where the fact count goes on from where the run stood.
//!
//! The pseudo-terminal is util-linux's `script` (in every Debian and Ubuntu install): it runs
//! the command on a terminal of its own and copies what is drawn there to its stdout.

mod common;

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{converge, text};
use serde_json::Value;
use tempfile::TempDir;

/// A job whose second agent, a command, sleeps for a few seconds in cycle 2.
const SLOW_JOB: &str = r#"version: 1
intent:
  objective: Count to two slowly
  budgets: {cycles: 10}
agents:
  - name: first
    kind: rule
    writes: [signals]
    when: "true"
    propose: {key: signals, id: one, content: 1}
  - name: slow
    kind: command
    reads: [signals]
    writes: [hypotheses]
    command: [sh, -c, "sleep 3; cat > /dev/null; echo '{\"proposals\":[{\"key\":\"hypotheses\",\"id\":\"two\",\"content\":2}]}'"]
    timeout_ms: 20000
"#;

/// How long a run may take to show what a test waits for.
const WAIT: Duration = Duration::from_secs(30);

/// A `converge` process on a pseudo-terminal 200 columns wide, and what it has drawn there.
struct OnTerminal {
    child: Child,
    drawn: Arc<Mutex<Vec<u8>>>,
    reader: thread::JoinHandle<()>,
}

impl OnTerminal {
    /// Starts `converge --db <db> <args>` on a new pseudo-terminal.
    fn start(db: &Path, args: &[&str]) -> OnTerminal {
        let mut words = vec![
            quoted(env!("CARGO_BIN_EXE_converge")),
            "--db".to_owned(),
            quoted(&db.to_string_lossy()),
        ];
        words.extend(args.iter().map(|arg| quoted(arg)));
        let command = format!("stty cols 200 rows 40; exec {}", words.join(" "));
        let mut child = Command::new("script")
            .args(["--quiet", "--return", "--command", &command, "/dev/null"])
            .env_remove("CONVERGE_DB")
            .env("TERM", "xterm")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("util-linux's `script` runs (Debian: apt-get install bsdutils)");
        let mut output = child.stdout.take().expect("script's stdout");
        let drawn = Arc::new(Mutex::new(Vec::new()));
        let sink = drawn.clone();
        let reader = thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(read) = output.read(&mut buffer) {
                if read == 0 {
                    break;
                }
                sink.lock()
                    .expect("the drawing")
                    .extend_from_slice(&buffer[..read]);
            }
        });
        OnTerminal {
            child,
            drawn,
            reader,
        }
    }

    /// What has been drawn so far, without terminal escape sequences.
    fn screen(&self) -> String {
        without_escapes(&text(&self.drawn.lock().expect("the drawing")))
    }

    /// Waits until the drawing contains `wanted`, while the process still runs.
    fn wait_for(&mut self, wanted: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.screen().contains(wanted) {
            let exited = self.child.try_wait().expect("the process's status");
            if exited.is_some() || Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "the terminal never showed {wanted:?} while converge ran ({}); it showed:\n{}",
                    match exited {
                        Some(status) => format!("it exited with {status}"),
                        None => format!("waited {WAIT:?}"),
                    },
                    self.screen()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit; answers its exit code and everything drawn.
    fn finish(self) -> (Option<i32>, String) {
        let OnTerminal {
            mut child,
            drawn,
            reader,
        } = self;
        let status = child.wait().expect("converge exits");
        let _ = reader.join();
        let screen = without_escapes(&text(&drawn.lock().expect("the drawing")));
        (status.code(), screen)
    }
}

/// `word` quoted for the shell `script` runs the command with.
fn quoted(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// `text` without ANSI escape sequences (cursor moves, line clears) and carriage returns.
fn without_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    // Parameters and intermediates, up to the final byte (@ to ~).
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
            }
            '\r' => out.push('\n'),
            c => out.push(c),
        }
    }
    out
}

fn spec_in(dir: &TempDir) -> String {
    let spec = dir.path().join("slow.yaml");
    std::fs::write(&spec, SLOW_JOB).unwrap();
    spec.to_string_lossy().into_owned()
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|error| panic!("not JSON ({error}): {}", text(bytes)))
}

/// The number of facts `converge inspect` finds in the run.
fn facts_of(db: &Path, run: &str) -> usize {
    let seen = json(&converge(db, &["inspect", run, "--json"]).stdout);
    seen["facts"].as_array().map_or(0, Vec::len)
}

#[test]
fn the_progress_line_counts_the_agent_running_in_a_cycle() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("journal.db");
    let spec = spec_in(&dir);

    let mut run = OnTerminal::start(&db, &["run", &spec, "--id", "slow-1"]);
    // Cycle 1 promoted the rule's fact (and the intent's); cycle 2 runs the slow command.
    run.wait_for("cycle 2 · 1 agent running");
    let (code, screen) = run.finish();
    assert_eq!(
        code,
        Some(0),
        "the run converges; the terminal showed:\n{screen}"
    );
    assert!(
        !screen.contains("1 agents running"),
        "one agent reads as one agent: {screen}"
    );
    let drawn_while_running = screen
        .lines()
        .filter(|line| line.contains("cycle 2 · "))
        .any(|line| line.contains("1 agent running"));
    assert!(drawn_while_running, "{screen}");
}

#[test]
fn a_resumed_run_counts_its_running_agent_and_goes_on_from_its_facts() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("journal.db");
    let spec = spec_in(&dir);

    // Killed while the slow agent sleeps in cycle 2 (start and cycle 1 are committed).
    let log = dir.path().join("run.log");
    let mut first = Command::new(env!("CARGO_BIN_EXE_converge"))
        .arg("--db")
        .arg(&db)
        .args(["run", &spec, "--id", "slow-1"])
        .env_remove("CONVERGE_DB")
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("cycle 1:")
    {
        assert!(
            Instant::now() < deadline,
            "the run never finished cycle 1: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(20));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let facts = facts_of(&db, "slow-1");
    assert!(facts > 0, "cycle 1 promoted facts");

    let mut resumed = OnTerminal::start(&db, &["resume", "slow-1"]);
    let fact_word = if facts == 1 { "fact" } else { "facts" };
    resumed.wait_for(&format!("cycle 2 · 1 agent running · {facts} {fact_word}"));
    let (code, screen) = resumed.finish();
    assert_eq!(
        code,
        Some(0),
        "the resumed run converges; the terminal showed:\n{screen}"
    );
    assert_eq!(facts_of(&db, "slow-1"), facts + 1, "the slow agent's fact");
}
