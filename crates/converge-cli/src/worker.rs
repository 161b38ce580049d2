//! `converge worker`: the arguments, signals and words around [`converge_runtime::Worker`],
//! which drives the runs no one drives, any number of workers on one journal.
//!
//! Each slot rebuilds a claimed run's runtime from the spec its journal header keeps, exactly
//! as `converge resume` does (with this command's provider file), and drives it to its next
//! stop; every report becomes one line on stderr.
//!
//! SIGTERM, SIGINT or SIGHUP drains: no slot claims again, and the runs in flight go on to
//! their next stop. A second signal stops at once: the drives are dropped (killing their
//! agents' processes), their committed steps kept, and their runs are taken over by another
//! worker once their leases expire.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use converge_core::StopReason;
use converge_runtime::{Holder, Location, Report, Worker, WorkerConfig};

use crate::job::Calls;
use crate::{CliError, exit, show};

/// Runs the worker until it is told to stop (or, with `--until-idle`, until no run is left).
pub(crate) fn work(
    location: &Location,
    providers: Option<&Path>,
    args: &crate::cli::WorkerArgs,
) -> Result<u8, CliError> {
    let holder = Holder::this_process("converge worker");
    say(format_args!(
        "{holder}: driving runs of {location} with {} slots",
        args.concurrency
    ));
    let config = WorkerConfig {
        location: location.clone(),
        holder,
        concurrency: args.concurrency,
        until_idle: args.until_idle,
    };
    let providers: Option<PathBuf> = providers.map(Path::to_path_buf);
    let build = Arc::new(move |header: &converge_runtime::RunHeader, run: &_| {
        let calls = Calls::Live {
            providers: providers.as_deref(),
        };
        converge_server::job::runtime_of_header(header, run, calls)
            .map_err(|error| error.to_string())
    });
    let worker = Worker::start(&config, build, Arc::new(|report| say(words(&report))))
        .map_err(|error| CliError::Other(error.to_string()))?;
    let control = worker.control();
    let (done, all_done) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        worker.join();
        let _ = done.send(());
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| CliError::Other(format!("cannot start the async runtime: {error}")))?;
    runtime.block_on(async move {
        let mut all_done = all_done;
        tokio::select! {
            _ = &mut all_done => return Ok(exit::OK),
            signal = next_signal() => {
                say(format_args!(
                    "{signal}: draining; the runs in flight go on to their next stop \
                     (send it again to stop at once)"
                ));
            }
        }
        control.drain();
        tokio::select! {
            _ = all_done => Ok(exit::OK),
            signal = next_signal() => {
                say(format_args!("{signal}: stopping the runs in flight now"));
                // The slots drop their drives, which kills their agents' processes.
                control.stop_now();
                Ok(exit::SIGTERM)
            }
        }
    })
}

/// A slot's report in the command line's words.
fn words(report: &Report) -> String {
    match report {
        Report::Reached {
            run,
            stop_reason,
            facts,
            agents,
        } => {
            let state = match stop_reason {
                StopReason::Converged => {
                    format!("converged with {}", show::count(*facts as u64, "fact"))
                }
                other => show::reason_text(other, agents),
            };
            format!("run {run}: {state}")
        }
        other => other.to_string(),
    }
}

/// One line on stderr for whoever runs the worker.
fn say(line: impl std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "converge worker: {line}");
}

/// The next SIGTERM, SIGINT or SIGHUP, by name.
async fn next_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut terminate), Ok(mut interrupt), Ok(mut hangup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
            _ = hangup.recv() => "SIGHUP",
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}
