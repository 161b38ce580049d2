//! The `command` agent: an external program, in any language, speaking JSON.
//!
//! The program receives the facts of the keys it reads as JSON on stdin and prints its
//! proposals as JSON on stdout; the protocol is specified in `docs/command-agents.md`. It runs
//! in the spec's directory, without a shell, under a timeout and a stdout size limit, and is
//! killed if the run stops waiting for it. Its stdin digest, stdout and stderr are recorded as
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
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

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
    pub(crate) env: Arc<BTreeMap<String, String>>,
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
    /// Returning early drops the child, which kills it.
    async fn exchange(&self, input: &[u8]) -> Result<Exchange, String> {
        let mut child = tokio::process::Command::new(&self.program)
            .args(&self.argv[1..])
            .current_dir(&self.dir)
            .envs(self.env.iter())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| format!("could not start {:?}: {error}", self.argv[0]))?;
        let (stdin, stdout, stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let talk = async {
            let (_, stdout, (stderr, stderr_truncated)) = tokio::try_join!(
                write_input(stdin, input),
                read_stdout(stdout, self.output_bytes_max),
                read_stderr(stderr),
            )?;
            let status = child
                .wait()
                .await
                .map_err(|error| format!("could not wait for the program: {error}"))?;
            Ok(Exchange {
                status,
                stdout,
                stderr,
                stderr_truncated,
            })
        };
        let limit = Duration::from_millis(self.timeout_ms);
        tokio::time::timeout(limit, talk).await.unwrap_or_else(|_| {
            Err(format!(
                "timed out after {} ms and was killed",
                self.timeout_ms
            ))
        })
    }
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

async fn read_stdout(
    stdout: Option<tokio::process::ChildStdout>,
    limit: u64,
) -> Result<Vec<u8>, String> {
    let Some(stdout) = stdout else {
        return Ok(Vec::new());
    };
    let mut bytes = Vec::new();
    stdout
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .await
        .map_err(|error| format!("could not read stdout: {error}"))?;
    if bytes.len() as u64 > limit {
        return Err(format!(
            "printed more than {limit} bytes on stdout (the limit) and was killed"
        ));
    }
    Ok(bytes)
}

/// Keeps the first [`COMMAND_STDERR_BYTES_MAX`] bytes and drains the rest, so a chatty
/// program never blocks on a full pipe.
async fn read_stderr(
    stderr: Option<tokio::process::ChildStderr>,
) -> Result<(Vec<u8>, bool), String> {
    let Some(mut stderr) = stderr else {
        return Ok((Vec::new(), false));
    };
    let mut kept = Vec::new();
    (&mut stderr)
        .take(COMMAND_STDERR_BYTES_MAX as u64)
        .read_to_end(&mut kept)
        .await
        .map_err(|error| format!("could not read stderr: {error}"))?;
    let dropped = drain(&mut stderr).await;
    Ok((kept, dropped > 0))
}

async fn drain(reader: &mut (impl AsyncRead + Unpin)) -> u64 {
    tokio::io::copy(reader, &mut tokio::io::sink())
        .await
        .unwrap_or(0)
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
