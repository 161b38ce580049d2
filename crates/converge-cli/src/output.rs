//! Writing what a command prints on stdout. A reader that went away (`converge inspect RUN |
//! head -1`) ends the command quietly, as a success, as `grep` and `rg` do; any other failure
//! to write (a full disk, a file size limit) is an error in words. Nothing here panics, unlike
//! `print!`.

use std::fmt::Display;
use std::io::{ErrorKind, Write};

use crate::CliError;

/// Prints `text` and a newline on stdout.
pub(crate) fn line(text: impl Display) -> Result<(), CliError> {
    write(format_args!("{text}\n"))
}

/// Prints `text` as it is on stdout.
pub(crate) fn text(text: impl Display) -> Result<(), CliError> {
    write(format_args!("{text}"))
}

fn write(arguments: std::fmt::Arguments<'_>) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_fmt(arguments)
        .and_then(|()| stdout.flush())
        .map_err(|error| match error.kind() {
            ErrorKind::BrokenPipe => CliError::OutputClosed,
            _ => CliError::Other(format!("cannot write to stdout: {error}")),
        })
}
