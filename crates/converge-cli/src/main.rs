//! `converge`: run, watch, approve, resume and audit Converge jobs from a terminal.
//!
//! Every command opens the journal (an embedded SQLite file), does one thing and exits with a
//! code that says how the run stands (see `converge --help`). Commands other than `run`,
//! `runs` and `verify` rebuild the run's runtime from the job spec its journal header keeps,
//! so they work in any process, on any machine that has the journal and the agents' programs.

mod cli;
mod exchange;
mod job;
mod output;
mod progress;
mod show;
mod signals;
mod store;
mod why;
mod worker;

/// Many small values come and go in a cycle of many agents; mimalloc keeps that cheap.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use converge_core::{Actor, ConvergeResult, Decision, ProposalId, Retry, StopReason};
use converge_runtime::spec::{self, AGENT_LAUNCHER_ARG};
use converge_runtime::{
    DurableError, Holder, Journal, JournalError, Location, ReplayReport, RunId, Verification,
    wall_clock_ms,
};
use serde_json::json;

use converge_server::{Drivers, Role, Server, ServerConfig, Tokens};

use crate::cli::{
    Cli, Command, CopyArgs, DecideArgs, DriveArg, Format, JournalCommand, RetryArgs, RoleArg,
    ServeArgs, TokenCommand,
};
use crate::job::Calls;
use crate::progress::Progress;

/// How a command failed; printed on stderr as `converge: …`.
#[derive(Debug, thiserror::Error)]
enum CliError {
    /// A job spec was refused (its problems are already `file:line:column: …` lines).
    #[error("{0}")]
    Spec(String),
    /// The journal refused a read or a write.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A durable operation failed.
    #[error(transparent)]
    Durable(#[from] DurableError),
    /// `converge` was told to stop while driving a run; its agents were killed and the run
    /// can be resumed.
    #[error(
        "interrupted by {signal}; the run's agents were stopped and its committed steps kept: \
         continue it with `converge resume {run}`"
    )]
    Interrupted {
        /// The signal's name (`SIGTERM`).
        signal: &'static str,
        /// The exit code that reports it.
        code: u8,
        /// The run that was being driven.
        run: RunId,
    },
    /// Stdout was closed by its reader: the command ends quietly.
    #[error("stdout was closed")]
    OutputClosed,
    /// Anything else, in words.
    #[error("{0}")]
    Other(String),
}

impl CliError {
    /// What to do about the error, when there is something to say.
    fn hint(&self) -> Option<&'static str> {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(self);
        for _ in 0..ERROR_CHAIN_DEPTH_MAX {
            let error = source?;
            let code = (error.downcast_ref::<rusqlite::Error>())
                .and_then(rusqlite::Error::sqlite_error_code);
            match code {
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                    return Some(
                        "another process (a `converge run`, `resume`, `approve` or `serve`) is \
                         writing to this journal; try again when it has finished, or use \
                         another journal with --db",
                    );
                }
                Some(rusqlite::ErrorCode::SystemIoFailure | rusqlite::ErrorCode::DiskFull) => {
                    return Some(
                        "the journal could not be written: check the free space of its disk, \
                         and the file size limit (`ulimit -f`)",
                    );
                }
                _ => source = error.source(),
            }
        }
        None
    }
}

/// How many causes of an error are looked through for a hint.
const ERROR_CHAIN_DEPTH_MAX: usize = 16;

/// Exit codes (documented in `converge --help`).
mod exit {
    pub(crate) const OK: u8 = 0;
    pub(crate) const ERROR: u8 = 1;
    pub(crate) const AWAITING_APPROVAL: u8 = 3;
    pub(crate) const BUDGET: u8 = 4;
    pub(crate) const INVARIANT: u8 = 5;
    pub(crate) const OTHER_STOP: u8 = 6;
    pub(crate) const CONVERGED_WITH_FAILURES: u8 = 7;
    pub(crate) const INVARIANT_UNEVALUABLE: u8 = 8;
    /// 128 plus the signal's number, as shells report a process a signal ended.
    pub(crate) const SIGHUP: u8 = 129;
    pub(crate) const SIGINT: u8 = 130;
    pub(crate) const SIGTERM: u8 = 143;
}

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    if args.nth(1).as_deref() == Some(std::ffi::OsStr::new(AGENT_LAUNCHER_ARG)) {
        return spec::launch_agent(args);
    }
    install_agent_launcher();
    signals::survive_file_size_limit();
    let cli = Cli::parse().with_environment();
    let error = match execute(&cli) {
        Ok(code) => return ExitCode::from(code),
        Err(CliError::OutputClosed) => return ExitCode::from(exit::OK),
        Err(error) => error,
    };
    if cli.json {
        let _ = output::line(json!({"error": error.to_string()}));
    }
    let _ = writeln!(std::io::stderr(), "converge: {error}");
    if let Some(hint) = error.hint() {
        let _ = writeln!(std::io::stderr(), "converge: {hint}");
    }
    match error {
        CliError::Interrupted { code, .. } => ExitCode::from(code),
        _ => ExitCode::from(exit::ERROR),
    }
}

/// Command agents are started through this executable (see
/// [`spec::set_agent_launcher`]), so they die with it even if it is killed outright.
fn install_agent_launcher() {
    // The running image itself, even if its file was replaced or deleted since it started.
    let program = if cfg!(target_os = "linux") {
        Some(std::path::PathBuf::from("/proc/self/exe"))
    } else {
        std::env::current_exe().ok()
    };
    if let Some(program) = program {
        spec::set_agent_launcher(program, vec![AGENT_LAUNCHER_ARG.into()]);
    }
}

fn execute(cli: &Cli) -> Result<u8, CliError> {
    // A copy names its own journals, and checking a spec runs nothing: neither opens the
    // default journal.
    if let Command::Journal(JournalCommand::Copy(args)) = &cli.command {
        return copy_journal(cli, args);
    }
    if let Command::Check(args) = &cli.command {
        return check(&args.spec, cli.json);
    }
    let location = store::journal_location(cli.db.as_deref())?;
    // Commands that only read open the journal read-only: they work on a journal they may
    // not write, and never create one.
    if cli.command.only_reads() && !location.may_exist() {
        // Reading never creates a journal.
        if let Command::Runs = cli.command {
            output::text(show::runs(&[], &[], cli.json))?;
            if cli.json {
                output::line("")?;
            }
            return Ok(exit::OK);
        }
        return Err(CliError::Other(format!(
            "there is no journal at {}: nothing has run there yet (run a job first, or point \
             --db at the journal to read)",
            location
        )));
    }
    let mut journal = if cli.command.only_reads() {
        location.open_read_only()?
    } else {
        location.open()?
    };
    let live = Calls::Live {
        providers: cli.providers.as_deref(),
    };
    match &cli.command {
        // Handled above, before any journal is opened.
        Command::Check(args) => check(&args.spec, cli.json),
        Command::Run(args) => {
            let loaded = job::load(&args.spec, live)?;
            for warning in &loaded.warnings {
                let _ = writeln!(std::io::stderr(), "warning: {warning}");
            }
            let run_id = store::new_run_id(
                &journal,
                &args.spec,
                args.id.as_deref(),
                args.tenant.as_deref(),
            )?;
            let owned = store::own(&location, &journal, &run_id, args.tenant.as_deref())?;
            let mut runtime = loaded
                .runtime
                .with_holder(Holder::this_process("converge run"));
            runtime.observe_activity(Progress::new(cli.json));
            if !cli.json {
                let _ = writeln!(
                    std::io::stderr(),
                    "run {run_id} of {} (journal {})",
                    args.spec.display(),
                    location
                );
            }
            let drive = runtime.run_durable(&mut journal, &run_id);
            let result = block_on(signals::unless_interrupted(&run_id, drive))?;
            let result = owned.settle(&journal, result)???;
            let agents: Vec<String> = runtime.engine().agent_names().map(str::to_owned).collect();
            output::line(show::summary(&run_id, &result, cli.detail(), &agents).trim_end())?;
            Ok(stop_code(&result))
        }
        Command::Submit(args) => {
            let loaded = job::load(&args.spec, live)?;
            for warning in &loaded.warnings {
                let _ = writeln!(std::io::stderr(), "warning: {warning}");
            }
            let run_id = store::new_run_id(
                &journal,
                &args.spec,
                args.id.as_deref(),
                args.tenant.as_deref(),
            )?;
            let owned = store::own(&location, &journal, &run_id, args.tenant.as_deref())?;
            let runtime = loaded
                .runtime
                .with_holder(Holder::this_process("converge submit"));
            let submitted = runtime.submit_durable(&mut journal, &run_id);
            owned.settle(&journal, submitted)??;
            if cli.json {
                output::line(json!({"run": run_id.as_str(), "status": "submitted"}))?;
            } else {
                output::line(format_args!(
                    "run {run_id} submitted: a worker on {location} will drive it \
                     (`converge worker`)"
                ))?;
            }
            Ok(exit::OK)
        }
        Command::Worker(args) => {
            drop(journal);
            worker::work(&location, cli.providers.as_deref(), args)
        }
        Command::Runs => {
            let runs = journal.runs()?;
            let jobs: Vec<show::Job> = runs
                .iter()
                .map(|run| show::Job::of(journal.header(&run.id).ok().as_ref()))
                .collect();
            output::text(show::runs(&runs, &jobs, cli.json))?;
            if cli.json {
                output::line("")?;
            }
            Ok(exit::OK)
        }
        Command::Inspect(args) => {
            let run_id = run_id(&args.run)?;
            let runtime = job::runtime_of(&journal, &run_id, Calls::Offline)?;
            let seen = runtime.inspect(&journal, &run_id)?;
            output::line(show::inspect(&seen, cli.json).trim_end())?;
            Ok(exit::OK)
        }
        Command::Why(args) => {
            let run_id = run_id(&args.run)?;
            let runtime = job::runtime_of(&journal, &run_id, Calls::Offline)?;
            let seen = runtime.inspect(&journal, &run_id)?;
            let fact = why::find_fact(&seen.result, &args.fact).map_err(CliError::Other)?;
            output::line(why::explain(&seen, fact, cli.json).trim_end())?;
            Ok(exit::OK)
        }
        Command::Show(args) => {
            let run_id = run_id(&args.run)?;
            let runtime = job::runtime_of(&journal, &run_id, Calls::Offline)?;
            let seen = runtime.inspect(&journal, &run_id)?;
            let observed = exchange::find(&seen, &args.observation).map_err(CliError::Other)?;
            output::line(exchange::show(observed, cli.json).trim_end())?;
            Ok(exit::OK)
        }
        Command::Approve(args) => decide(cli, &mut journal, args, true),
        Command::Reject(args) => decide(cli, &mut journal, args, false),
        Command::Retry(args) => retry(cli, &mut journal, args),
        Command::Resume(args) => {
            let run_id = run_id(&args.run)?;
            let mut runtime = job::runtime_of(&journal, &run_id, live)?
                .with_holder(Holder::this_process("converge resume"));
            // Where the run stands, so the progress lines go on from there.
            let seen = runtime.inspect(&journal, &run_id)?;
            let parked = matches!(seen.result.stop_reason, StopReason::AwaitingApproval { .. });
            if seen.stopped && !parked {
                return Err(CliError::Other(already_stopped(&run_id, &seen)));
            }
            runtime.observe_activity(Progress::new(cli.json).continuing(&seen.result));
            let drive = runtime.resume_durable(&mut journal, &run_id);
            let result = block_on(signals::unless_interrupted(&run_id, drive))???;
            let agents: Vec<String> = runtime.engine().agent_names().map(str::to_owned).collect();
            output::line(show::summary(&run_id, &result, cli.detail(), &agents).trim_end())?;
            Ok(stop_code(&result))
        }
        Command::Replay(args) => {
            let run_id = run_id(&args.run)?;
            let runtime = job::runtime_of(&journal, &run_id, Calls::Offline)?;
            let report = runtime.replay(&journal, &run_id)?;
            let code = match &report {
                ReplayReport::Identical { .. } => exit::OK,
                ReplayReport::Diverged(_) => exit::OTHER_STOP,
            };
            if cli.json {
                output::line(serde_json::to_value(&report).unwrap_or_default())?;
            } else {
                match &report {
                    ReplayReport::Identical {
                        steps,
                        events,
                        root_hash,
                    } => output::line(format_args!(
                        "run {run_id}: identical — {steps} steps and {events} events re-derived \
                         without calling any agent; root hash {root_hash}"
                    ))?,
                    ReplayReport::Diverged(divergence) => {
                        output::line(format_args!("run {run_id}: {divergence}"))?;
                        if let (Some(expected), actual) = (divergence.expected, divergence.actual) {
                            output::line(format_args!("  recorded   {expected}"))?;
                            match actual {
                                Some(actual) => {
                                    output::line(format_args!("  re-derived {actual}"))?
                                }
                                None => output::line(format_args!("  re-derived nothing"))?,
                            }
                        }
                    }
                }
            }
            Ok(code)
        }
        Command::Verify(args) => {
            let run_id = run_id(&args.run)?;
            let verification = journal.verify(&run_id)?;
            let code = match &verification {
                Verification::Intact { .. } => exit::OK,
                Verification::Broken { .. } => exit::OTHER_STOP,
            };
            if cli.json {
                let mut json = converge_server::view::verification_json(&verification);
                json["run"] = json!(run_id.as_str());
                output::line(format_args!("{json}"))?;
                return Ok(code);
            }
            match &verification {
                Verification::Intact {
                    steps,
                    events,
                    root_hash,
                    record_hash,
                } => output::line(format_args!(
                    "run {run_id}: intact — {steps} steps, {events} events, root hash \
                     {root_hash}, record hash {record_hash}"
                ))?,
                Verification::Broken { at, reason } => {
                    output::line(format_args!("run {run_id}: BROKEN at {at}: {reason}"))?;
                }
            }
            Ok(code)
        }
        Command::Journal(JournalCommand::Copy(args)) => copy_journal(cli, args),
        Command::Serve(args) => serve(&location, cli, args),
        Command::Token(command) => token(&location, cli, command),
        Command::Export(args) => {
            let run_id = run_id(&args.run)?;
            let runtime = job::runtime_of(&journal, &run_id, Calls::Offline)?;
            let seen = runtime.inspect(&journal, &run_id)?;
            match args.format {
                Format::Json => output::line(show::export_json(&seen))?,
                Format::Dot => output::text(show::export_dot(&seen))?,
            }
            Ok(exit::OK)
        }
    }
}

/// `approve` and `reject`: one decision on one pending proposal, then on to the next stop.
fn decide(
    cli: &Cli,
    journal: &mut impl Journal,
    args: &DecideArgs,
    approve: bool,
) -> Result<u8, CliError> {
    let run_id = run_id(&args.run)?;
    let proposal: ProposalId = args.proposal.parse().map_err(|error| {
        CliError::Other(format!(
            "{:?} is not a proposal id (like c2.a3.p0): {error}",
            args.proposal
        ))
    })?;
    let actor = Actor::human(&args.actor).map_err(|error| CliError::Other(error.to_string()))?;
    let live = Calls::Live {
        providers: cli.providers.as_deref(),
    };
    let command = if approve {
        "converge approve"
    } else {
        "converge reject"
    };
    let holder = Holder::this_process(command);
    let now_ms = wall_clock_ms();
    if let Some(leased) = journal.summary(&run_id)?.driven_by(&holder, now_ms) {
        return Err(leased.into());
    }
    let mut runtime = job::runtime_of(journal, &run_id, live)?.with_holder(holder);
    let seen = runtime.inspect(journal, &run_id)?;
    let StopReason::AwaitingApproval { pending } = &seen.result.stop_reason else {
        return Err(CliError::Other(format!(
            "run {run_id} is not awaiting approval ({})",
            show::reason_text(&seen.result.stop_reason, &seen.header.agents)
        )));
    };
    let Some(pending) = pending.iter().find(|pending| pending.proposal == proposal) else {
        let known: Vec<String> = pending.iter().map(|p| p.proposal.to_string()).collect();
        return Err(CliError::Other(format!(
            "proposal {proposal} is not pending in run {run_id}; pending: {}",
            known.join(", ")
        )));
    };
    let decision = if approve {
        if args.reason.is_some() {
            return Err(CliError::Other(
                "an approval records who approved which proposal, not a reason; drop --reason"
                    .to_owned(),
            ));
        }
        Decision::approve(proposal, pending.hash, actor)
    } else {
        let Some(reason) = args.reason.clone() else {
            return Err(CliError::Other(
                "a rejection needs --reason: it is recorded in the journal".to_owned(),
            ));
        };
        Decision::reject(proposal, pending.hash, actor, reason)
    };
    runtime.observe_activity(Progress::new(cli.json).continuing(&seen.result));
    let drive = runtime.decide_durable(journal, &run_id, vec![decision]);
    let result = block_on(signals::unless_interrupted(&run_id, drive))???;
    let agents: Vec<String> = runtime.engine().agent_names().map(str::to_owned).collect();
    if !cli.json {
        output::line(show::decided(&result, proposal))?;
    }
    output::line(show::summary(&run_id, &result, cli.detail(), &agents).trim_end())?;
    Ok(stop_code(&result))
}

/// Why `resume` has nothing to do for a run that stopped, in words, and what may continue it.
fn already_stopped(run_id: &RunId, seen: &converge_runtime::Inspection) -> String {
    let retryable = seen.result.is_retryable();
    let failed: Vec<&str> = seen
        .result
        .failed_agents()
        .iter()
        .filter(|_| retryable)
        .filter_map(|agent| seen.header.agents.get(agent.index()).map(String::as_str))
        .collect();
    let reason = show::reason_text(&seen.result.stop_reason, &seen.header.agents);
    match failed.as_slice() {
        [] => format!("run {run_id} has already stopped ({reason}); there is nothing to resume"),
        failed => format!(
            "run {run_id} has already stopped ({reason}); once the cause is fixed, run its \
             failed agents ({}) again with `converge retry {run_id} --as NAME --reason TEXT`",
            failed.join(", ")
        ),
    }
}

/// `converge retry`: records a human's retry of failed agents and runs the job on.
fn retry(cli: &Cli, journal: &mut impl Journal, args: &RetryArgs) -> Result<u8, CliError> {
    let run_id = run_id(&args.run)?;
    let actor = Actor::human(&args.actor).map_err(|error| CliError::Other(error.to_string()))?;
    let holder = Holder::this_process("converge retry");
    if let Some(leased) = journal
        .summary(&run_id)?
        .driven_by(&holder, wall_clock_ms())
    {
        return Err(leased.into());
    }
    let live = Calls::Live {
        providers: cli.providers.as_deref(),
    };
    let mut runtime = job::runtime_of(journal, &run_id, live)?.with_holder(holder);
    let seen = runtime.inspect(journal, &run_id)?;
    let agents: Vec<String> = runtime.engine().agent_names().map(str::to_owned).collect();
    let before = seen.result.failures.len();
    runtime.observe(Progress::new(cli.json).continuing(&seen.result));
    let retry = Retry::new(actor, args.agents.iter().cloned(), args.reason.clone());
    let drive = runtime.retry_durable(journal, &run_id, retry);
    let result = block_on(signals::unless_interrupted(&run_id, drive))???;
    if !cli.json {
        let retried = match args.agents.is_empty() {
            true => seen.result.failed_agents().to_vec(),
            false => {
                let named = |agent: &&String| args.agents.contains(agent);
                let ids = seen.result.failed_agents().iter().copied();
                ids.filter(|id| agents.get(id.index()).is_some_and(|name| named(&name)))
                    .collect()
            }
        };
        output::line(show::retried(&result, &retried, before, &agents).trim_end())?;
    }
    output::line(show::summary(&run_id, &result, cli.detail(), &agents).trim_end())?;
    Ok(stop_code(&result))
}

/// `converge journal copy`: runs from one journal to another, verified on both sides.
fn copy_journal(cli: &Cli, args: &CopyArgs) -> Result<u8, CliError> {
    let from = store::journal_location(Some(&args.from))?;
    let to = store::journal_location(Some(&args.to))?;
    let runs = args
        .runs
        .iter()
        .map(|id| run_id(id))
        .collect::<Result<Vec<_>, _>>()?;
    let mut printed: Result<(), CliError> = Ok(());
    let copied = converge_runtime::copy(&from, &to, &runs, &mut |done| {
        if printed.is_err() {
            return;
        }
        printed = if cli.json {
            output::line(json!({
                "run": done.run.as_str(),
                "steps": done.steps,
                "events": done.events,
                "record_hash": done.record_hash.to_string(),
            }))
        } else {
            output::line(format_args!(
                "copied {}: {}, {}, record hash {} (verified in both)",
                done.run,
                show::count(done.steps, "step"),
                show::count(done.events, "event"),
                done.record_hash
            ))
        };
    })?;
    printed?;
    if !cli.json {
        output::line(format_args!(
            "{} copied from {from} to {to}",
            show::count(copied.len() as u64, "run")
        ))?;
    }
    Ok(exit::OK)
}

/// `converge serve`: the HTTP API and web viewer until Ctrl-C or SIGTERM.
fn serve(db: &Location, cli: &Cli, args: &ServeArgs) -> Result<u8, CliError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CONVERGE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut config = ServerConfig::new(db.clone());
    if let Some(drivers) = args.drive {
        config.drivers = match drivers {
            DriveArg::Server => Drivers::Server,
            DriveArg::Workers => Drivers::Workers,
        };
    }
    config.listen = args.listen;
    config.max_body = args.max_body;
    config.header_timeout = std::time::Duration::from_secs(args.header_timeout);
    config.body_timeout = std::time::Duration::from_secs(args.body_timeout);
    config.allow_commands = args.allow_commands;
    config.allow_self_approval = args.allow_self_approval;
    config.providers = cli.providers.clone();
    if let Some(dir) = &args.jobs_dir {
        config.jobs_dir = std::path::absolute(dir)
            .map_err(|error| CliError::Other(format!("{}: {error}", dir.display())))?;
    }
    let drivers = config.drivers;
    block_on(async move {
        let server = Server::bind(config)
            .await
            .map_err(|error| CliError::Other(format!("cannot start the server: {error}")))?;
        let _ = writeln!(
            std::io::stderr(),
            "converge: serving http://{} (journal {db}; {})",
            server.local_addr(),
            match drivers {
                Drivers::Server => "runs driven here",
                Drivers::Workers => "runs driven by `converge worker`",
            }
        );
        server
            .serve(shutdown_signal())
            .await
            .map_err(|error| CliError::Other(error.to_string()))
    })??;
    Ok(exit::OK)
}

/// Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// `converge token create | list | revoke`.
fn token(db: &Location, cli: &Cli, command: &TokenCommand) -> Result<u8, CliError> {
    let mut tokens =
        Tokens::open(db.clone()).map_err(|error| CliError::Other(error.to_string()))?;
    let failed = |error: converge_server::StoreError| CliError::Other(error.to_string());
    match command {
        TokenCommand::Create(args) => {
            let role = match args.role {
                RoleArg::Viewer => Role::Viewer,
                RoleArg::Submitter => Role::Submitter,
                RoleArg::Approver => Role::Approver,
                RoleArg::Admin => Role::Admin,
            };
            let issued = tokens
                .create(&args.tenant, &args.name, role)
                .map_err(failed)?;
            if cli.json {
                output::line(
                    json!({"token": issued.secret, "id": issued.info.id, "tenant": issued.info.tenant, "name": issued.info.name, "role": issued.info.role}),
                )?;
            } else {
                output::line(issued.secret)?;
                let _ = writeln!(
                    std::io::stderr(),
                    "token {} for {} ({}) in tenant {}: shown once, store it now",
                    issued.info.id,
                    issued.info.name,
                    issued.info.role,
                    issued.info.tenant
                );
            }
        }
        TokenCommand::List => {
            let listed = tokens.list().map_err(failed)?;
            if cli.json {
                output::line(serde_json::to_value(&listed).unwrap_or_default())?;
            } else if listed.is_empty() {
                output::line(format_args!(
                    "no tokens (make one with `converge token create`)"
                ))?;
            } else {
                for token in listed {
                    let state = if token.revoked_ms.is_some() {
                        "revoked"
                    } else {
                        "active"
                    };
                    output::line(format_args!(
                        "{}  {:<10} {:<16} {:<24} {state}",
                        token.id, token.role, token.tenant, token.name
                    ))?;
                }
            }
        }
        TokenCommand::Revoke(args) => {
            tokens.revoke(&args.id).map_err(failed)?;
            if cli.json {
                output::line(json!({"revoked": args.id}))?;
            } else {
                output::line(format_args!("token {} revoked", args.id))?;
            }
        }
    }
    Ok(exit::OK)
}

/// `converge check SPEC`: every problem of the spec, or a one-line summary of a valid one.
/// With `--json`, a refused spec's problems are printed as JSON on stdout (and as lines on
/// stderr), for editors and CI to place them.
fn check(path: &std::path::Path, json: bool) -> Result<u8, CliError> {
    let loaded = match spec::JobSpec::load(path) {
        Ok(loaded) => loaded,
        Err(error @ spec::SpecError::Invalid { .. }) if json => {
            let _ = writeln!(std::io::stderr(), "{error}");
            output::line(show::spec_problems(error.problems(), path))?;
            return Ok(exit::ERROR);
        }
        Err(error @ spec::SpecError::Invalid { .. }) => {
            return Err(CliError::Spec(error.to_string()));
        }
        Err(other) => return Err(CliError::Other(other.to_string())),
    };
    for warning in &loaded.warnings {
        let _ = writeln!(std::io::stderr(), "warning: {warning}");
    }
    output::line(show::spec_summary(&loaded, path, json))?;
    Ok(exit::OK)
}

fn run_id(text: &str) -> Result<RunId, CliError> {
    RunId::new(text).map_err(|error| CliError::Other(error.to_string()))
}

/// The exit code a run's stop reason maps to.
fn stop_code(result: &ConvergeResult) -> u8 {
    match &result.stop_reason {
        // Failures that a retry since made good do not count: the agent ran after all.
        StopReason::Converged if !result.failed_agents().is_empty() => {
            exit::CONVERGED_WITH_FAILURES
        }
        StopReason::Converged => exit::OK,
        StopReason::AwaitingApproval { .. } => exit::AWAITING_APPROVAL,
        StopReason::BudgetExhausted { .. } => exit::BUDGET,
        StopReason::InvariantViolated { .. } => exit::INVARIANT,
        StopReason::InvariantUnevaluable { .. } => exit::INVARIANT_UNEVALUABLE,
        StopReason::AgentFailed { .. } | StopReason::Halted { .. } => exit::OTHER_STOP,
    }
}

/// Runs a future to completion on a runtime for this command alone.
fn block_on<F: std::future::Future>(future: F) -> Result<F::Output, CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_stack_size(converge_runtime::DRIVER_STACK_BYTES)
        .enable_all()
        .build()
        .map_err(|error| CliError::Other(format!("cannot start the async runtime: {error}")))?;
    Ok(runtime.block_on(future))
}
