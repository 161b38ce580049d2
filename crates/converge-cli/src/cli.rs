//! The command line's grammar: every command, its arguments, and the help text with examples.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Run, watch, approve, retry, resume and audit Converge jobs.
///
/// Every run is journaled in an embedded SQLite file (by default in your user data directory;
/// `--db` or `CONVERGE_DB` chooses another file, or a PostgreSQL database shared by many
/// machines), so any later command, in any process, can inspect, approve, resume, replay or
/// verify it.
#[derive(Debug, Parser)]
#[command(name = "converge", version, about, long_about = None)]
#[command(after_long_help = EXIT_CODES)]
pub(crate) struct Cli {
    /// The journal: a SQLite file (created if missing) or a PostgreSQL database by its
    /// `postgresql://` URL (its schema created if missing) [env: CONVERGE_DB=, ignored when
    /// empty].
    #[arg(long, global = true, value_name = "FILE|URL")]
    pub(crate) db: Option<PathBuf>,

    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long, global = true)]
    pub(crate) json: bool,

    /// After a run, print counts only, not each agent failure and rejection.
    #[arg(long, short, global = true)]
    pub(crate) quiet: bool,

    /// The provider file for `llm` agents (default: providers.toml in the per-user config
    /// directory, if it exists). API keys come from it or from the environment
    /// [env: CONVERGE_PROVIDERS=, ignored when empty].
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) providers: Option<PathBuf>,

    #[command(subcommand)]
    pub(crate) command: Command,
}

const EXIT_CODES: &str = "\
Exit codes:
  0  the run converged (or the command succeeded)
  1  error: bad spec (`converge check` lists its problems), unknown run, journal failure…
  2  usage error
  3  the run stopped awaiting approval
  4  a budget ran out
  5  an invariant was violated
  6  the run stopped otherwise (agent failure, halt, or divergence on replay / broken journal on verify)
  7  the run reached its fixed point, but some of its agents failed (each is listed;
     `converge retry RUN` runs them again once the cause is fixed)
  8  an invariant could not be evaluated (its check failed on the facts, or reached a limit):
     nothing is known to be violated
  129, 130, 143  SIGHUP, SIGINT (Ctrl-C) or SIGTERM stopped a run, its agents were killed and its
     committed steps kept: `converge resume RUN` continues it

A closed stdout (`converge inspect RUN | head -1`) ends a command quietly with 0.";

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Check a job spec without running it: print every problem, at file:line:column.
    #[command(after_help = "Examples:
  converge check examples/weekly-payouts.yaml
  converge check examples/release-approval.yaml --json")]
    Check(CheckArgs),

    /// Run a job spec to its next stop, showing live progress.
    #[command(after_help = "Examples:
  converge run examples/release-approval.yaml
  converge run examples/weekly-payouts.yaml --id payouts-1 --json")]
    Run(RunArgs),

    /// Record a run of a job spec for a worker to drive, and print its id.
    #[command(after_help = "Examples:
  converge submit examples/release-approval.yaml
  converge submit examples/weekly-payouts.yaml --id payouts-7 --db postgresql://converge@db.internal/converge")]
    Submit(RunArgs),

    /// Drive runs no one drives (submitted, or whose driver died), many at once, until
    /// SIGTERM or Ctrl-C (which stop claiming and let the runs in flight finish).
    #[command(after_help = "Examples:
  converge worker --db postgresql://converge@db.internal/converge --concurrency 8
  converge worker --until-idle")]
    Worker(WorkerArgs),

    /// List the runs in the journal.
    #[command(after_help = "Examples:
  converge runs
  converge runs --json")]
    Runs,

    /// Show a run's facts by key, its rejections and its pending approvals.
    #[command(after_help = "Examples:
  converge inspect release-approval-1
  converge inspect release-approval-1 --json")]
    Inspect(RunArg),

    /// Explain why a fact is true: its agent, the facts it read, its validations, who approved,
    /// and the model exchanges (prompts and answer) or command outputs it cites.
    #[command(after_help = "Examples:
  converge why release-approval-1 release-2-4-0
  converge why release-approval-1 releases/release-2-4-0 --json")]
    Why(WhyArgs),

    /// Print one recorded observation whole: a model exchange (provider, the model asked for
    /// and the one that answered, prompts, answer, tokens, latency) or a command's output.
    #[command(after_help = "Examples:
  converge run examples/incident-triage.yaml
  converge show incident-triage-1 c2.a2.o0
  converge show incident-triage-1 c2.a2.o0 --json")]
    Show(ShowArgs),

    /// Approve a pending proposal, then run the job on to its next stop.
    #[command(after_help = "Examples:
  converge approve release-approval-1 c3.a3.p0 --as alice
  converge approve payouts-1 c2.a2.p0 --as alice --json")]
    Approve(DecideArgs),

    /// Reject a pending proposal, then run the job on to its next stop.
    #[command(after_help = "Examples:
  converge reject payouts-1 c2.a2.p2 --as bob --reason \"invoice paid twice\"")]
    Reject(DecideArgs),

    /// Run failed agents of a stopped run again, once the cause of their failure is fixed
    /// (a model server back up, a token renewed), then run the job on to its next stop. The
    /// retry is recorded in the journal: who, which agents, why.
    #[command(after_help = "Examples:
  converge run examples/churn-explainer.yaml --id churn-1
  converge retry churn-1 --as alice --reason \"the model server is back\"
  converge retry churn-1 --agent explainer --as alice --reason \"model pulled\" --json")]
    Retry(RetryArgs),

    /// Continue a run whose process stopped before it did (crash, kill, power loss).
    #[command(after_help = "Examples:
  converge resume release-approval-1")]
    Resume(RunArg),

    /// Re-derive a run from its journal, calling nothing, and report whether it is identical.
    #[command(after_help = "Examples:
  converge replay release-approval-1")]
    Replay(RunArg),

    /// Check a run's stored hash chain and name the first altered or missing entry.
    #[command(after_help = "Examples:
  converge verify release-approval-1")]
    Verify(RunArg),

    /// Serve the HTTP API and the web run viewer over this journal.
    #[command(after_help = "Examples:
  converge serve
  converge serve --listen 0.0.0.0:7700 --allow-commands
  converge serve --db postgresql://converge@db.internal/converge --drive workers
  converge token create --tenant acme --name alice --role approver")]
    Serve(ServeArgs),

    /// Make, list or revoke the API tokens `converge serve` accepts.
    #[command(subcommand)]
    Token(TokenCommand),

    /// Work on whole journals: copy runs from one to another.
    #[command(subcommand)]
    Journal(JournalCommand),

    /// Export a run's facts and provenance as JSON, or its provenance graph as Graphviz dot.
    #[command(after_help = "Examples:
  converge export release-approval-1 --format json > run.json
  converge export release-approval-1 --format dot | dot -Tsvg > provenance.svg")]
    Export(ExportArgs),
}

impl Cli {
    /// How much a run's summary says.
    pub(crate) fn detail(&self) -> crate::show::Detail {
        match (self.json, self.quiet) {
            (true, _) => crate::show::Detail::Json,
            (false, true) => crate::show::Detail::Quiet,
            (false, false) => crate::show::Detail::Explained,
        }
    }

    /// Fills what the command line left out from the environment: `CONVERGE_DB` and
    /// `CONVERGE_PROVIDERS`, an empty value counting as unset (as for any variable).
    pub(crate) fn with_environment(mut self) -> Cli {
        let from_env = |name: &str| {
            std::env::var_os(name)
                .filter(|value| !value.is_empty())
                .map(PathBuf::from)
        };
        self.db = self.db.or_else(|| from_env("CONVERGE_DB"));
        self.providers = self.providers.or_else(|| from_env("CONVERGE_PROVIDERS"));
        self
    }
}

impl Command {
    /// Whether the command only reads the journal (it then opens it read-only).
    pub(crate) fn only_reads(&self) -> bool {
        matches!(
            self,
            Command::Runs
                | Command::Inspect(_)
                | Command::Why(_)
                | Command::Show(_)
                | Command::Replay(_)
                | Command::Verify(_)
                | Command::Export(_)
        )
    }
}

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// The job spec (YAML).
    pub(crate) spec: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The job spec (YAML).
    pub(crate) spec: PathBuf,
    /// The new run's id (default: the spec's file stem and the next free number).
    #[arg(long)]
    pub(crate) id: Option<String>,
    /// Make the run this tenant's, as if submitted over the HTTP API: its id starts with the
    /// tenant's prefix (`acme-release-approval-1`), and `converge serve` lists and serves it
    /// to the tenant's tokens.
    #[arg(long, value_name = "TENANT")]
    pub(crate) tenant: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct RunArg {
    /// The run's id (see `converge runs`).
    pub(crate) run: String,
}

#[derive(Debug, Args)]
pub(crate) struct WhyArgs {
    /// The run's id.
    pub(crate) run: String,
    /// The fact: `KEY/ID`, or just `ID` when only one key has a fact with that id.
    pub(crate) fact: String,
}

#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// The run's id.
    pub(crate) run: String,
    /// The observation, as a fact's evidence names it (e.g. `c2.a3.o0`).
    pub(crate) observation: String,
}

#[derive(Debug, Args)]
pub(crate) struct DecideArgs {
    /// The run's id.
    pub(crate) run: String,
    /// The pending proposal's id, as `converge inspect` lists it (e.g. `c3.a3.p0`).
    pub(crate) proposal: String,
    /// Who decides: the name recorded in the journal with the decision.
    #[arg(long = "as", value_name = "NAME")]
    pub(crate) actor: String,
    /// Why (required to reject).
    #[arg(long)]
    pub(crate) reason: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct RetryArgs {
    /// The run's id.
    pub(crate) run: String,
    /// A failed agent to run again, by name (repeat for more; default: every failed agent).
    #[arg(long = "agent", value_name = "NAME")]
    pub(crate) agents: Vec<String>,
    /// Who decides: the name recorded in the journal with the retry.
    #[arg(long = "as", value_name = "NAME")]
    pub(crate) actor: String,
    /// Why the agents can succeed now: recorded in the journal with the retry.
    #[arg(long)]
    pub(crate) reason: String,
}

#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// The run's id.
    pub(crate) run: String,
    /// The output format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub(crate) format: Format,
}

#[derive(Debug, Args)]
pub(crate) struct WorkerArgs {
    /// How many runs to drive at once (each on a thread and a journal connection of its own).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub(crate) concurrency: u16,
    /// Exit once no run is left to drive, instead of waiting for more.
    #[arg(long)]
    pub(crate) until_idle: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The address to listen on (loopback unless told otherwise).
    #[arg(long, env = "CONVERGE_LISTEN", default_value = "127.0.0.1:7700")]
    pub(crate) listen: std::net::SocketAddr,
    /// The largest request body accepted, in bytes.
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES")]
    pub(crate) max_body: usize,
    /// Seconds a client may take to send its request headers (also the idle keep-alive limit).
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub(crate) header_timeout: u64,
    /// Seconds a client may take to send its request body.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub(crate) body_timeout: u64,
    /// Accept job specs with `command` agents (they run programs on this machine).
    #[arg(long)]
    pub(crate) allow_commands: bool,
    /// Let whoever submitted a run also decide on its proposals.
    #[arg(long)]
    pub(crate) allow_self_approval: bool,
    /// Where submitted specs are placed: relative command programs resolve from here
    /// (default: the current directory).
    #[arg(long, value_name = "DIR")]
    pub(crate) jobs_dir: Option<PathBuf>,
    /// Who drives submitted runs: this server (the default on a SQLite file), or
    /// `converge worker` processes sharing the database (the default on PostgreSQL; any
    /// number of servers can then answer for the same runs).
    #[arg(long, value_enum, value_name = "WHO")]
    pub(crate) drive: Option<DriveArg>,
}

/// Who drives a server's runs.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum DriveArg {
    /// This server process.
    Server,
    /// `converge worker` processes.
    Workers,
}

#[derive(Debug, Subcommand)]
pub(crate) enum JournalCommand {
    /// Copy runs, byte for byte, from one journal to another (a file to a PostgreSQL
    /// database, say): each is verified before and after, with the same hashes. Stop every
    /// process using the source first; a run another live process drives is refused.
    #[command(after_help = "Examples:
  converge journal copy --from journal.db --to postgresql://converge@db.internal/converge
  converge journal copy --from journal.db --to other.db --run release-approval-1")]
    Copy(CopyArgs),
}

#[derive(Debug, Args)]
pub(crate) struct CopyArgs {
    /// The journal to copy from (a file or a `postgresql://` URL); it is only read.
    #[arg(long, value_name = "FILE|URL")]
    pub(crate) from: PathBuf,
    /// The journal to copy to (created if missing).
    #[arg(long, value_name = "FILE|URL")]
    pub(crate) to: PathBuf,
    /// Copy only this run (repeat for more); every run by default.
    #[arg(long = "run", value_name = "RUN")]
    pub(crate) runs: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Make a token; its secret is printed once and only its hash is kept.
    #[command(after_help = "Examples:
  converge token create --tenant acme --name alice --role approver
  converge token create --tenant acme --name ci --role submitter --json")]
    Create(TokenCreateArgs),
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by its id (see `converge token list`).
    Revoke(TokenRevokeArgs),
}

#[derive(Debug, Args)]
pub(crate) struct TokenCreateArgs {
    /// The tenant: the token sees only this tenant's runs.
    #[arg(long)]
    pub(crate) tenant: String,
    /// Who the token is: recorded as the actor of its decisions.
    #[arg(long)]
    pub(crate) name: String,
    /// What it may do.
    #[arg(long, value_enum)]
    pub(crate) role: RoleArg,
}

#[derive(Debug, Args)]
pub(crate) struct TokenRevokeArgs {
    /// The token's id.
    pub(crate) id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum RoleArg {
    /// Reads runs, events, facts and audits.
    Viewer,
    /// Also submits, cancels and resumes runs.
    Submitter,
    /// Also approves and rejects proposals.
    Approver,
    /// Everything.
    Admin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// Facts, provenance, rejections and pending approvals as one JSON document.
    Json,
    /// The fact provenance graph in Graphviz dot.
    Dot,
}
