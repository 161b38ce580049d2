//! `converge` when things go wrong around it: signals while an agent runs (`SIGTERM`,
//! `SIGHUP`, `SIGINT` leave the run resumable; `SIGKILL` leaves no agent behind), stdout
//! closed by its reader, a file size limit, a journal locked by another process, and secrets
//! in its environment. Through the real binary, with real agent processes found in `/proc`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// How long a killed process may take to disappear, and `converge` to exit after a signal.
const GONE_WITHIN: Duration = Duration::from_secs(10);

/// How long an agent may take to start and write its pid files.
const STARTED_WITHIN: Duration = Duration::from_secs(30);

fn converge_command(db: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_converge"));
    command.arg("--db").arg(db).env_remove("CONVERGE_DB");
    command
}

/// `converge --db <db> <args>`, run to its end.
fn converge(db: &Path, args: &[&str]) -> Output {
    let output = converge_command(db).args(args).output().unwrap();
    assert_plain_words(&String::from_utf8_lossy(&output.stderr));
    output
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Requires `text` free of Rust debug formatting and panics.
fn assert_plain_words(text: &str) {
    for debug in [
        "Some(",
        "None",
        "Ok(",
        "Err(",
        " { ",
        "panicked",
        "RUST_BACKTRACE",
    ] {
        assert!(!text.contains(debug), "{debug:?} in: {text}");
    }
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// `(state, process group)` of a process, from `/proc/PID/stat`; `None` if it does not exist.
fn stat(pid: &str) -> Option<(char, u32)> {
    let text = std::fs::read_to_string(Path::new("/proc").join(pid).join("stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let pgrp = fields.nth(1)?.parse().ok()?;
    Some((state, pgrp))
}

fn alive(pid: u32) -> bool {
    stat(&pid.to_string()).is_some_and(|(state, _)| !matches!(state, 'Z' | 'X'))
}

fn group_of(pid: u32) -> u32 {
    stat(&pid.to_string()).expect("the process is running").1
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

/// Requires every pid, and every process of group `group`, gone within [`GONE_WITHIN`].
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

/// Waits for `child` to exit, within [`GONE_WITHIN`].
fn wait(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + GONE_WITHIN;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "converge did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(pid: u32, name: &str) {
    let sent = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// A job whose one agent, the first time, starts a background job and a foreground child
/// (recording the pids of all three) and waits; the next time it answers at once.
const STUCK_JOB: &str = "version: 1
intent:
  objective: wait for a signal
  success: [{key_not_empty: signals}]
agents:
  - name: stuck
    kind: command
    writes: [signals]
    command: [sh, stuck.sh]
    timeout_ms: 120000
";

const STUCK_SH: &str = r#"if [ -f interrupted-once ]; then
  echo '{"proposals": [{"key": "signals", "id": "done", "content": "resumed"}]}'
  exit 0
fi
touch interrupted-once
echo $$ > agent
sleep 300 &
echo $! > background
sh -c 'echo $$ > foreground; exec sleep 301'
"#;

/// A directory holding the stuck job, and its journal; kills any pid it recorded when
/// dropped, so a failing test leaves nothing running.
struct Stuck {
    dir: TempDir,
}

impl Stuck {
    fn new() -> Stuck {
        let dir = TempDir::new().unwrap();
        std::fs::write(dir.path().join("job.yaml"), STUCK_JOB).unwrap();
        std::fs::write(dir.path().join("stuck.sh"), STUCK_SH).unwrap();
        Stuck { dir }
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("journal.db")
    }

    /// `converge run job.yaml --id stuck-1`, in the background.
    fn start(&self) -> Child {
        converge_command(&self.db())
            .args(["run", "--id", "stuck-1"])
            .arg(self.dir.path().join("job.yaml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("run.log")).unwrap())
            .spawn()
            .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("run.log")).unwrap_or_default()
    }

    /// The pid the agent wrote to `name`, waiting for it.
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
            assert!(
                Instant::now() < deadline,
                "{name} was never written; converge said: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The agent's three pids and its process group, once all three run.
    fn agent(&self) -> ([u32; 3], u32) {
        let pids = [
            self.pid("agent"),
            self.pid("background"),
            self.pid("foreground"),
        ];
        (pids, group_of(pids[0]))
    }

    /// Resumes the run: the agent answers this time, and the run converges.
    fn assert_resumes(&self) {
        let resumed = converge(&self.db(), &["resume", "stuck-1", "--json"]);
        assert_eq!(resumed.status.code(), Some(0), "{}", stderr(&resumed));
        let summary: Value = serde_json::from_slice(&resumed.stdout).unwrap();
        assert_eq!(summary["converged"], true, "{summary}");
    }
}

impl Drop for Stuck {
    fn drop(&mut self) {
        for name in ["agent", "background", "foreground"] {
            if let Ok(pid) = std::fs::read_to_string(self.dir.path().join(name)) {
                let _ = Command::new("kill")
                    .args(["-KILL", pid.trim()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

#[test]
fn a_signal_stops_the_run_kills_its_agents_and_leaves_it_resumable() {
    for (name, code) in [("TERM", 143), ("HUP", 129), ("INT", 130)] {
        let stuck = Stuck::new();
        let mut child = stuck.start();
        let (pids, group) = stuck.agent();
        assert_ne!(
            group,
            group_of(child.id()),
            "the agent has a group of its own"
        );
        signal(child.id(), name);
        let status = wait(&mut child);
        let log = stuck.log();
        assert_eq!(status.code(), Some(code), "SIG{name}: {log}");
        assert!(
            log.contains(&format!("converge: interrupted by SIG{name};"))
                && log.contains("continue it with `converge resume stuck-1`"),
            "{log}"
        );
        assert_plain_words(&log);
        assert_all_gone(group, &pids);
        stuck.assert_resumes();
    }
}

#[test]
fn agents_die_with_a_converge_killed_outright() {
    let stuck = Stuck::new();
    let mut child = stuck.start();
    let (pids, group) = stuck.agent();
    signal(child.id(), "KILL");
    let status = wait(&mut child);
    assert_eq!(status.code(), None, "killed by the signal");
    assert_all_gone(group, &pids);
    stuck.assert_resumes();
}

/// A journal holding one converged run of the incident triage example.
fn triaged() -> (TempDir, PathBuf) {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("journal.db");
    let spec = examples().join("incident-triage.yaml");
    let run = converge(&db, &["run", "--id", "triage-1", spec.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    (dir, db)
}

/// Every command that prints, each with enough output to fill more than one byte.
fn printing_commands(spec: &str) -> Vec<Vec<String>> {
    let commands: &[&[&str]] = &[
        &["--help"],
        &["runs"],
        &["runs", "--json"],
        &["inspect", "triage-1"],
        &["inspect", "triage-1", "--json"],
        &["why", "triage-1", "db-primary-down"],
        &["why", "triage-1", "db-primary-down", "--json"],
        &["replay", "triage-1"],
        &["replay", "triage-1", "--json"],
        &["verify", "triage-1"],
        &["verify", "triage-1", "--json"],
        &["export", "triage-1", "--format", "json"],
        &["export", "triage-1", "--format", "dot"],
        &["token", "list"],
        &["run", spec],
        &["run", spec, "--json"],
        &["check", spec],
        &["check", spec, "--json"],
    ];
    let owned = commands
        .iter()
        .map(|args| args.iter().map(|arg| (*arg).to_owned()));
    owned.map(Iterator::collect).collect()
}

#[test]
fn a_closed_stdout_ends_every_command_quietly() {
    let (_dir, db) = triaged();
    let spec = examples().join("incident-triage.yaml");
    for args in printing_commands(spec.to_str().unwrap()) {
        // The reader is gone before anything is written.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let output = converge_command(&db)
            .args(&args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(0),
            "{args:?}: {}",
            stderr(&output)
        );
        assert_plain_words(&stderr(&output));
        assert!(!stderr(&output).contains("Broken pipe"), "{args:?}");

        // The reader takes one byte and goes (`| head -c1`).
        let mut child = converge_command(&db)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut byte = [0; 1];
        std::io::Read::read_exact(&mut stdout, &mut byte).unwrap();
        drop(stdout);
        let output = child.wait_with_output().unwrap();
        assert_eq!(
            output.status.code(),
            Some(0),
            "{args:?}: {}",
            stderr(&output)
        );
        assert_plain_words(&stderr(&output));
    }
}

#[test]
fn a_file_size_limit_is_an_error_message_not_a_silent_death() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("journal.db");
    let spec = examples().join("incident-triage.yaml");
    // 40 blocks (20 or 40 KiB, depending on the shell): less than the journal needs.
    let output = Command::new("sh")
        .arg("-c")
        .arg("ulimit -f 40 && exec \"$@\"")
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_converge"))
        .arg("--db")
        .arg(&db)
        .arg("run")
        .arg(&spec)
        .env_remove("CONVERGE_DB")
        .output()
        .unwrap();
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("converge: journal") && text.contains("file size limit (`ulimit -f`)"),
        "{text}"
    );
    assert_plain_words(&text);
}

#[test]
fn a_locked_journal_says_what_to_do() {
    let (_dir, db) = triaged();
    let holder = rusqlite::Connection::open(&db).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let spec = examples().join("incident-triage.yaml");
    let output = converge(&db, &["run", spec.to_str().unwrap()]);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("database is locked"), "{text}");
    assert!(
        text.contains("another process (a `converge run`, `resume`, `approve` or `serve`) is writing to this journal"),
        "{text}"
    );
}

#[test]
fn secrets_in_the_environment_reach_only_the_agents_that_name_them() {
    let dir = TempDir::new().unwrap();
    let job = "version: 1
intent:
  objective: show what agents see
  success: [{key_not_empty: signals}]
agents:
  - name: plain
    kind: command
    writes: [signals]
    command: [sh, env.sh, plain]
  - name: named
    kind: command
    writes: [signals]
    command: [sh, env.sh, named]
    env: {API_URL: \"http://localhost:9999\"}
    pass_env: [DEPLOY_TOKEN]
";
    // The environment each agent was started with, before its shell adds anything.
    let script = "tr '\\0' '\\n' < /proc/$$/environ > \"env-$1\"
echo '{\"proposals\": [{\"key\": \"signals\", \"id\": \"'$1'\", \"content\": \"seen\"}]}'
";
    std::fs::write(dir.path().join("job.yaml"), job).unwrap();
    std::fs::write(dir.path().join("env.sh"), script).unwrap();
    let output = converge_command(&dir.path().join("journal.db"))
        .arg("run")
        .arg(dir.path().join("job.yaml"))
        .env("DEPLOY_TOKEN", "deploy-secret")
        .env("DATABASE_PASSWORD", "db-secret")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let seen = |agent: &str| std::fs::read_to_string(dir.path().join(format!("env-{agent}")));
    let (plain, named) = (seen("plain").unwrap(), seen("named").unwrap());
    for env in [&plain, &named] {
        assert!(!env.contains("db-secret"), "{env}");
        assert!(env.lines().any(|line| line.starts_with("PATH=")), "{env}");
    }
    assert!(!plain.contains("deploy-secret"), "{plain}");
    assert!(!plain.contains("API_URL"), "{plain}");
    assert!(
        named
            .lines()
            .any(|line| line == "DEPLOY_TOKEN=deploy-secret"),
        "{named}"
    );
    assert!(
        named
            .lines()
            .any(|line| line == "API_URL=http://localhost:9999"),
        "{named}"
    );
}

/// A job that runs out of cycles while a command agent fails.
const BUDGET_JOB: &str = "version: 1
intent:
  objective: run out of cycles
  budgets: {cycles: 1}
seeds:
  - {key: seeds, id: s1, content: go}
agents:
  - name: first
    kind: rule
    reads: [seeds]
    writes: [signals]
    propose: {key: signals, id: a, content: x}
  - name: second
    kind: rule
    reads: [signals]
    writes: [hypotheses]
    propose: {key: hypotheses, id: b, content: y}
  - name: quitter
    kind: command
    writes: [evaluations]
    command: [sh, -c, \"echo 'disk full' >&2; exit 3\"]
";

#[test]
fn stops_failures_and_refusals_read_as_words() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("journal.db");
    let spec = dir.path().join("budget.yaml");
    std::fs::write(&spec, BUDGET_JOB).unwrap();
    let bad = dir.path().join("bad.yaml");
    let bad_agent = "  - {name: x, kind: command, writes: [signals], command: [\"true\"], output_bytes_max: 99999999, pass_env: [\"A=B\"]}\n";
    std::fs::write(
        &bad,
        BUDGET_JOB.replace(
            "  - name: first\n",
            &format!("{bad_agent}  - name: first\n"),
        ),
    )
    .unwrap();
    let (spec, bad) = (spec.to_str().unwrap(), bad.to_str().unwrap());
    let run = converge(&db, &["run", spec, "--id", "budget-1"]);
    assert_eq!(run.status.code(), Some(4), "{}", stderr(&run));
    let summary = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        summary.contains("budget exhausted: cycle budget of 1"),
        "{summary}"
    );
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["inspect", "budget-1"],
            0,
            "exited with status 3; stderr: disk full",
        ),
        (&["runs"], 0, "budget exhausted"),
        (&["resume", "budget-1"], 1, "already stopped"),
        (
            &["approve", "budget-1", "c1.a0.p0", "--as", "alice"],
            1,
            "not awaiting approval (budget exhausted: cycle budget of 1)",
        ),
        (
            &["approve", "budget-1", "not-an-id", "--as", "alice"],
            1,
            "is not a proposal id",
        ),
        (&["why", "budget-1", "missing"], 1, "no fact with id"),
        (&["why", "budget-1", "No-Key/s1"], 1, "is not a context key"),
        (&["inspect", "ghost"], 1, "no run"),
        (
            &["run", bad],
            1,
            "`output_bytes_max` must be at most 16777216",
        ),
    ];
    for (args, code, expected) in cases {
        let output = converge(&db, args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            stderr(&output)
        );
        assert_eq!(output.status.code(), Some(*code), "{args:?}: {text}");
        assert!(text.contains(expected), "{args:?}: {text}");
        assert_plain_words(&text);
    }
}
