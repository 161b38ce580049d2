//! Signals to `converge` itself.
//!
//! A drive (`run`, `resume`, `approve`, `reject`) stops on `SIGTERM`, `SIGHUP` or `SIGINT`:
//! its future is dropped, which kills the process group of every agent it was running, and
//! the command ends with [`CliError::Interrupted`]. Nothing is journaled for the signal, so
//! the run keeps its committed steps and is resumable (unlike a cancellation, which stops a
//! run for good). Exceeding the file size limit (`ulimit -f`) makes a write fail instead of
//! killing the process without a word.

use std::future::Future;

use converge_runtime::RunId;

use crate::CliError;

/// Drives `future` unless `converge` is told to stop first; then drops it and says which run
/// to resume.
pub(crate) async fn unless_interrupted<F: Future>(
    run: &RunId,
    future: F,
) -> Result<F::Output, CliError> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let watch = |kind: SignalKind| {
            signal(kind).map_err(|error| {
                CliError::Other(format!("cannot watch for signals to stop the run: {error}"))
            })
        };
        let mut terminate = watch(SignalKind::terminate())?;
        let mut hangup = watch(SignalKind::hangup())?;
        let mut interrupt = watch(SignalKind::interrupt())?;
        let signal = tokio::select! {
            output = future => return Ok(output),
            _ = terminate.recv() => Stop::Term,
            _ = hangup.recv() => Stop::Hup,
            _ = interrupt.recv() => Stop::Int,
        };
        Err(CliError::Interrupted {
            signal: signal.name(),
            code: signal.exit_code(),
            run: run.clone(),
        })
    }
    #[cfg(not(unix))]
    {
        let _ = run;
        Ok(future.await)
    }
}

/// The signals that stop a drive.
#[cfg(unix)]
#[derive(Clone, Copy)]
enum Stop {
    Term,
    Hup,
    Int,
}

#[cfg(unix)]
impl Stop {
    fn name(self) -> &'static str {
        match self {
            Stop::Term => "SIGTERM",
            Stop::Hup => "SIGHUP",
            Stop::Int => "SIGINT",
        }
    }

    /// 128 plus the signal's number, as a shell reports a process the signal killed.
    fn exit_code(self) -> u8 {
        match self {
            Stop::Term => crate::exit::SIGTERM,
            Stop::Hup => crate::exit::SIGHUP,
            Stop::Int => crate::exit::SIGINT,
        }
    }
}

/// Makes a write past the file size limit fail with "File too large" rather than kill the
/// process (`SIGXFSZ`'s default action). A handler is installed rather than the signal
/// ignored, so programs `converge` starts get the default action back when they `exec`.
pub(crate) fn survive_file_size_limit() {
    #[cfg(unix)]
    {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
        else {
            return;
        };
        let xfsz =
            tokio::signal::unix::SignalKind::from_raw(rustix::process::Signal::XFSZ.as_raw());
        // tokio keeps the handler installed for the life of the process, whatever becomes of
        // this stream and this runtime.
        let _ = runtime.block_on(async { tokio::signal::unix::signal(xfsz) });
    }
}
