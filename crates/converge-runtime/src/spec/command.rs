//! The `command` agent: an external program, in any language, speaking JSON.
//!
//! The program receives the facts of the keys it reads as JSON on stdin and prints its
//! proposals as JSON on stdout; the protocol is specified in `docs/command-agents.md`. It runs
//! in the spec's directory, without a shell, with a minimal environment, in a process group of
//! its own (`process.rs`), under a timeout and a stdout size limit; the whole group is killed
//! when the exchange ends, or if the run stops waiting for it. Its stdin digest, stdout and stderr are recorded as
//! an observation that every proposal cites, so replay never runs it again and an audit can
//! see exactly what it said. A non-zero exit, a timeout, oversized or malformed output is the
//! agent's recorded failure.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use converge_core::{
    AgentEffect, AuthorityScope, Context, ContextKey, Digest, Draft, Observation, Proposal,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::process::{Group, agent_command};
use super::view::{facts_read, facts_view};
use super::wake::Wake;
use crate::agent::{AgentFuture, AsyncAgent};

/// The version of the stdin/stdout protocol, sent as `"protocol"` on stdin.
pub const COMMAND_PROTOCOL: u32 = 1;

/// How long a command may run when its spec does not say.
pub const COMMAND_TIMEOUT_MS_DEFAULT: u64 = 30_000;

/// How much a command may print on stdout when its spec does not say.
pub const COMMAND_OUTPUT_BYTES_MAX_DEFAULT: u64 = 1024 * 1024;

/// How much of a command's stderr is kept; the rest is read and dropped.
pub const COMMAND_STDERR_BYTES_MAX: usize = 64 * 1024;

/// The largest `output_bytes_max` a spec may set: an answer is stored whole in the journal.
pub const COMMAND_OUTPUT_BYTES_CAP: u64 = 16 * 1024 * 1024;

/// How long a program's output may keep arriving after it exited, when a process it left
/// behind holds its pipes open; then the group is killed and what arrived is the output.
pub const COMMAND_EXIT_GRACE_MS: u64 = 200;

/// How much one read from a pipe takes at most.
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// How much of stderr (its end) a failure message quotes.
const STDERR_QUOTED_CHARS_MAX: usize = 1000;

/// How much of a malformed stdout (its start) a failure message quotes.
const STDOUT_QUOTED_CHARS_MAX: usize = 200;

/// A command agent, ready to register.
#[derive(Clone)]
pub(crate) struct CommandAgent {
    /// Name, reads, writes and `when`.
    pub(crate) wake: Wake,
    /// The command as written; `argv[0]` names the program.
    pub(crate) argv: Arc<[String]>,
    /// The program to start: `argv[0]` resolved against the spec's directory when it is a path.
    pub(crate) program: PathBuf,
    /// The working directory: the spec's directory.
    pub(crate) dir: PathBuf,
    /// Variables set for the program, beside the minimal environment.
    pub(crate) env: Arc<BTreeMap<String, String>>,
    /// Variables passed through from the environment of the process running the job.
    pub(crate) pass_env: Arc<[String]>,
    pub(crate) timeout_ms: u64,
    pub(crate) output_bytes_max: u64,
}

/// What a command prints on stdout.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Output {
    proposals: Vec<OutputProposal>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputProposal {
    key: String,
    id: String,
    content: Value,
    #[serde(default)]
    confidence: Option<f64>,
    #[serde(default)]
    derived_from: Vec<OutputFactRef>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputFactRef {
    key: String,
    id: String,
}

/// What came back from one execution.
struct Exchange {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    stderr_truncated: bool,
}

impl CommandAgent {
    fn input(&self, ctx: &Context) -> Vec<u8> {
        let writes: Vec<&str> = self.wake.writes.iter().map(|key| key.name()).collect();
        let input = json!({
            "protocol": COMMAND_PROTOCOL,
            "agent": &*self.wake.name,
            "writes": writes,
            "facts": facts_view(ctx, self.wake.reads.iter().copied()),
        });
        let mut bytes = serde_json::to_vec(&input).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    async fn run(&self, ctx: &Context) -> Result<AgentEffect, String> {
        if !self.wake.condition(ctx)? {
            return Ok(AgentEffect::empty());
        }
        let input = self.input(ctx);
        let exchange = self.exchange(&input).await?;
        if !exchange.status.success() {
            return Err(format!(
                "{}{}",
                describe_status(exchange.status),
                quote_stderr(&exchange.stderr)
            ));
        }
        let stdout = std::str::from_utf8(&exchange.stdout)
            .map_err(|_| "printed stdout that is not UTF-8".to_owned())?;
        let output: Output = serde_json::from_str(stdout).map_err(|error| {
            format!(
                "printed malformed output ({error}); expected one JSON object \
                 {{\"proposals\": [{{\"key\", \"id\", \"content\", \"confidence\"?}}]}}; \
                 stdout began with {:?}",
                stdout
                    .chars()
                    .take(STDOUT_QUOTED_CHARS_MAX)
                    .collect::<String>()
            )
        })?;
        let mut effect = AgentEffect::empty();
        let observation = self.observation(&input, &exchange, stdout);
        let cited = effect.observe(observation);
        // A proposal that names no derivation is derived from everything the program read.
        let read = facts_read(ctx, self.wake.reads.iter().copied());
        for proposal in output.proposals {
            let mut draft = draft(proposal)?;
            if draft.derivations().next().is_none() {
                for (key, id) in &read {
                    draft = draft.derived_from(*key, id.clone());
                }
            }
            effect.propose(draft.citing(cited));
        }
        Ok(effect)
    }

    fn observation(&self, input: &[u8], exchange: &Exchange, stdout: &str) -> Observation {
        let payload = json!({
            "argv": &*self.argv,
            "exit_code": exchange.status.code(),
            "stdout": stdout,
            "stderr": String::from_utf8_lossy(&exchange.stderr),
            "stderr_truncated": exchange.stderr_truncated,
        });
        Observation::remote(
            "command.output",
            format!("command:{}", self.argv[0]),
            Digest::of_bytes(input).to_string(),
            payload,
        )
    }

    /// Starts the program, feeds it `input`, and collects what it prints, within the limits.
    /// Whatever happens — an answer, a failure, a timeout, this future dropped — every
    /// process left in the program's group is killed on the way out.
    async fn exchange(&self, input: &[u8]) -> Result<Exchange, String> {
        let mut child = agent_command(
            &self.program,
            &self.argv[1..],
            &self.dir,
            self.pass_env.iter().map(String::as_str),
            self.env.iter(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("could not start {}: {error}", self.argv[0]))?;
        let _group = Group::led_by(&child);
        let mut stdout = Vec::new();
        let mut stderr = Stderr::default();
        let talk = talk(
            &mut child,
            input,
            (&mut stdout, self.output_bytes_max),
            &mut stderr,
        );
        let limit = Duration::from_millis(self.timeout_ms);
        let status = tokio::time::timeout(limit, talk)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "timed out after {} ms and was killed",
                    self.timeout_ms
                ))
            })?;
        Ok(Exchange {
            status,
            stdout,
            stderr: stderr.kept,
            stderr_truncated: stderr.dropped,
        })
    }
}

/// Feeds the input to the program and collects both outputs until it exits. An answer is
/// final when the program exits: if its pipes stay open after that (a process it left behind
/// holds them), what arrives within [`COMMAND_EXIT_GRACE_MS`] is its output.
async fn talk(
    child: &mut tokio::process::Child,
    input: &[u8],
    (stdout, stdout_max): (&mut Vec<u8>, u64),
    stderr: &mut Stderr,
) -> Result<ExitStatus, String> {
    let pipes = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let io = async {
        tokio::try_join!(
            write_input(pipes.0, input),
            read_stdout(pipes.1, stdout, stdout_max),
            read_stderr(pipes.2, stderr),
        )
        .map(|_| ())
    };
    let mut io = std::pin::pin!(io);
    let waited = tokio::select! {
        done = &mut io => {
            done?;
            None
        }
        status = child.wait() => Some(status),
    };
    let status = match waited {
        Some(status) => {
            let grace = Duration::from_millis(COMMAND_EXIT_GRACE_MS);
            if let Ok(done) = tokio::time::timeout(grace, &mut io).await {
                done?;
            }
            status
        }
        None => child.wait().await,
    };
    status.map_err(|error| format!("could not wait for the program: {error}"))
}

impl AsyncAgent for CommandAgent {
    fn name(&self) -> &str {
        &self.wake.name
    }

    fn dependencies(&self) -> &[ContextKey] {
        &self.wake.reads
    }

    fn requested_scope(&self) -> AuthorityScope {
        AuthorityScope::keys(self.wake.writes.iter().copied())
    }

    /// See [`Wake::accepts`].
    fn accepts(&self, ctx: &Context) -> bool {
        self.wake.accepts(ctx)
    }

    fn execute<'a>(&'a self, ctx: &'a Context) -> AgentFuture<'a> {
        Box::pin(async move {
            match self.run(ctx).await {
                Ok(effect) => effect,
                Err(error) => AgentEffect::failed(format!(
                    "command agent {:?} ({}): {error}",
                    &*self.wake.name,
                    self.argv.join(" ")
                )),
            }
        })
    }
}

fn draft(proposal: OutputProposal) -> Result<Proposal<Draft>, String> {
    let mut draft = Proposal::new(proposal.key, proposal.id, proposal.content)
        .with_confidence(proposal.confidence.unwrap_or(1.0));
    for cited in proposal.derived_from {
        let key: ContextKey = cited
            .key
            .parse()
            .map_err(|error| format!("printed a derived_from with a bad key: {error}"))?;
        draft = draft.derived_from(key, cited.id);
    }
    Ok(draft)
}

/// Writes the input and closes stdin. A program may exit without reading its input, so a
/// failed write is not an error: its exit status and output decide.
async fn write_input(
    stdin: Option<tokio::process::ChildStdin>,
    input: &[u8],
) -> Result<(), String> {
    if let Some(mut stdin) = stdin {
        let _ = stdin.write_all(input).await;
    }
    Ok(())
}

/// Reads stdout into `bytes` as it arrives (so what was read survives this future being
/// dropped), failing as soon as it passes `limit`.
async fn read_stdout(
    stdout: Option<tokio::process::ChildStdout>,
    bytes: &mut Vec<u8>,
    limit: u64,
) -> Result<(), String> {
    let Some(mut stdout) = stdout else {
        return Ok(());
    };
    let mut chunk = [0; READ_CHUNK_BYTES];
    loop {
        let read = (stdout.read(&mut chunk).await)
            .map_err(|error| format!("could not read stdout: {error}"))?;
        if read == 0 {
            return Ok(());
        }
        if (bytes.len() + read) as u64 > limit {
            return Err(format!(
                "printed more than {limit} bytes on stdout (the limit) and was killed"
            ));
        }
        bytes.extend_from_slice(&chunk[..read]);
    }
}

/// What a program printed on stderr: the first [`COMMAND_STDERR_BYTES_MAX`] bytes, and
/// whether more was read and dropped.
#[derive(Default)]
struct Stderr {
    kept: Vec<u8>,
    dropped: bool,
}

/// Keeps the first [`COMMAND_STDERR_BYTES_MAX`] bytes and drains the rest, so a chatty
/// program never blocks on a full pipe.
async fn read_stderr(
    stderr: Option<tokio::process::ChildStderr>,
    into: &mut Stderr,
) -> Result<(), String> {
    let Some(mut stderr) = stderr else {
        return Ok(());
    };
    let mut chunk = [0; READ_CHUNK_BYTES];
    loop {
        let read = (stderr.read(&mut chunk).await)
            .map_err(|error| format!("could not read stderr: {error}"))?;
        if read == 0 {
            return Ok(());
        }
        let room = COMMAND_STDERR_BYTES_MAX.saturating_sub(into.kept.len());
        into.kept.extend_from_slice(&chunk[..read.min(room)]);
        into.dropped |= read > room;
    }
}

fn describe_status(status: ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => "was terminated by a signal".to_owned(),
    }
}

fn quote_stderr(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    let skip = text.chars().count().saturating_sub(STDERR_QUOTED_CHARS_MAX);
    let tail: String = text.chars().skip(skip).collect();
    let ellipsis = if skip > 0 { "…" } else { "" };
    format!("; stderr: {ellipsis}{tail}")
}
