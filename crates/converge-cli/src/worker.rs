//! `converge worker`: drives the runs no one drives, any number of workers on one journal.
//!
//! A worker runs `--concurrency` slots, each a thread with a journal connection of its own.
//! A slot claims one run ([`Journal::claim`]: submitted, released by its driver, or whose
//! driver's lease expired; on PostgreSQL `FOR UPDATE SKIP LOCKED`, so no two slots of any
//! workers get one run), drives it to its next stop exactly as `converge resume` does —
//! re-deriving what was committed, executing only what was not, every commit fenced by the
//! lease — and claims the next. With nothing to claim it waits for news ([`Wakeups`]:
//! LISTEN/NOTIFY on PostgreSQL) or [`IDLE_LOOK`], whichever comes first: a dead worker's runs
//! are free once their leases expire, which no notification announces.
//!
//! A run a slot cannot drive (its spec no longer builds here: a missing program, provider or
//! key) keeps the slot's lease until it expires, so the slot moves on to other runs and any
//! worker tries it again later; each attempt is logged.
//!
//! SIGTERM, SIGINT or SIGHUP drains: no slot claims again, and the runs in flight go on to
//! their next stop. A second signal stops at once: the drives are dropped (killing their
//! agents' processes), their committed steps kept, and their runs are taken over by another
//! worker once their leases expire.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use converge_core::StopReason;
use converge_runtime::{Holder, Journal, Lease, Location, News, RunId, Wakeups, wall_clock_ms};
use tokio::sync::watch;

use crate::job::{self, Calls};
use crate::{CliError, exit, show};

/// How long an idle slot waits for news before it looks for runs anyway.
pub(crate) const IDLE_LOOK: Duration = Duration::from_secs(2);

/// How long a slot waits before trying again after the journal failed.
const RETRY_AFTER: Duration = Duration::from_secs(1);

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
    let draining = Arc::new(AtomicBool::new(false));
    let (stop_now, stopped) = watch::channel(false);
    let slots: Vec<_> = (0..args.concurrency)
        .map(|index| {
            let slot = Slot {
                index,
                location: location.clone(),
                providers: providers.map(Path::to_path_buf),
                holder: holder.clone(),
                draining: draining.clone(),
                stopped: stopped.clone(),
                until_idle: args.until_idle,
            };
            std::thread::Builder::new()
                .name(format!("converge-worker-{index}"))
                .spawn(move || slot.run())
                .map_err(|error| CliError::Other(format!("cannot start a worker slot: {error}")))
        })
        .collect::<Result<_, _>>()?;
    let (done, all_done) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        for slot in slots {
            let _ = slot.join();
        }
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
        draining.store(true, Ordering::SeqCst);
        tokio::select! {
            _ = all_done => Ok(exit::OK),
            signal = next_signal() => {
                say(format_args!("{signal}: stopping the runs in flight now"));
                let _ = stop_now.send(true);
                // The slots drop their drives, which kills their agents' processes.
                Ok(exit::SIGTERM)
            }
        }
    })
}

/// One slot: claims and drives one run at a time.
struct Slot {
    index: u16,
    location: Location,
    providers: Option<PathBuf>,
    holder: Holder,
    draining: Arc<AtomicBool>,
    stopped: watch::Receiver<bool>,
    until_idle: bool,
}

impl Slot {
    fn run(self) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => {
                return say(format_args!(
                    "slot {}: no async runtime: {error}",
                    self.index
                ));
            }
        };
        let mut wakeups = match Wakeups::new(&self.location, News::Runnable) {
            Ok(wakeups) => wakeups,
            Err(error) => return say(format_args!("slot {}: {error}", self.index)),
        };
        let mut journal: Option<Box<dyn Journal + Send>> = None;
        while !self.draining.load(Ordering::SeqCst) && !*self.stopped.borrow() {
            let open = match journal.as_mut() {
                Some(open) => open,
                None => match self.location.open() {
                    Ok(opened) => journal.insert(opened),
                    Err(error) => {
                        say(format_args!("slot {}: {error}; trying again", self.index));
                        std::thread::sleep(RETRY_AFTER);
                        continue;
                    }
                },
            };
            let now_ms = wall_clock_ms();
            match open.claim(&self.holder, now_ms, 1) {
                Ok(leases) if leases.is_empty() => {
                    if self.until_idle {
                        return;
                    }
                    if let Err(error) = wakeups.wait(IDLE_LOOK) {
                        say(format_args!("slot {}: {error}", self.index));
                        std::thread::sleep(RETRY_AFTER);
                    }
                }
                Ok(leases) => {
                    for lease in leases {
                        self.drive(open, &runtime, &lease);
                    }
                }
                Err(error) => {
                    // A failed write poisons the handle: open the journal again.
                    say(format_args!("slot {}: {error}; trying again", self.index));
                    journal = None;
                    std::thread::sleep(RETRY_AFTER);
                }
            }
        }
    }

    /// Drives one claimed run to its next stop and says how it stands.
    fn drive(
        &self,
        journal: &mut Box<dyn Journal + Send>,
        runtime: &tokio::runtime::Runtime,
        lease: &Lease,
    ) {
        let run: RunId = lease.run().clone();
        let calls = Calls::Live {
            providers: self.providers.as_deref(),
        };
        let driver = match job::runtime_of(&*journal, &run, calls) {
            Ok(driver) => driver,
            Err(error) => {
                // Keep the claim until it expires: other runs go first, and any worker tries
                // this one again later.
                return say(format_args!(
                    "run {run}: cannot be driven here ({error}); another attempt once its \
                     lease expires"
                ));
            }
        };
        let mut driver = driver.with_holder(self.holder.clone());
        let mut stopped = self.stopped.clone();
        let outcome = runtime.block_on(async {
            tokio::select! {
                outcome = driver.resume_durable(journal, &run) => Some(outcome),
                _ = stopped.wait_for(|stop| *stop) => None,
            }
        });
        match outcome {
            Some(Ok(result)) => {
                let facts = result.context.len();
                let state = match &result.stop_reason {
                    StopReason::Converged => {
                        format!("converged with {}", show::count(facts as u64, "fact"))
                    }
                    other => show::reason_text(other),
                };
                say(format_args!("run {run}: {state}"));
            }
            Some(Err(error)) => say(format_args!("run {run}: {error}")),
            None => say(format_args!(
                "run {run}: stopped with the worker; its committed steps are kept"
            )),
        }
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
