//! From a job spec file to a runtime, and from a run's journal header back to the runtime it
//! was started with (built the same way as the server builds them: see
//! `converge_server::job`).

use std::path::Path;

use converge_runtime::{JobRecord, Journal, RunId, Runtime};
use converge_server::job::{self, BuildError};

pub(crate) use converge_server::job::Calls;

use crate::CliError;

/// A spec read from a file, built into a runtime that records it.
pub(crate) struct Loaded {
    pub(crate) runtime: Runtime,
    /// Located warnings (`file:line:column: …`); the spec is valid despite them.
    pub(crate) warnings: Vec<String>,
}

/// Reads, checks and builds the spec at `path`; nothing runs if any of it is wrong.
pub(crate) fn load(path: &Path, calls: Calls<'_>) -> Result<Loaded, CliError> {
    let absolute = std::path::absolute(path).map_err(|error| {
        CliError::Other(format!(
            "{}: cannot resolve the path: {error}",
            path.display()
        ))
    })?;
    let source = std::fs::read_to_string(&absolute).map_err(|error| {
        CliError::Other(format!(
            "{}: cannot read the job spec: {error}",
            path.display()
        ))
    })?;
    let record = JobRecord {
        path: absolute.to_string_lossy().into_owned(),
        source,
    };
    let built = job::build(&record, calls).map_err(cli_error)?;
    Ok(Loaded {
        runtime: built.runtime,
        warnings: built.warnings,
    })
}

/// The runtime of an existing run, rebuilt from the spec in its header.
pub(crate) fn runtime_of(
    journal: &(impl Journal + ?Sized),
    run: &RunId,
    calls: Calls<'_>,
) -> Result<Runtime, CliError> {
    job::runtime_of(journal, run, calls).map_err(cli_error)
}

fn cli_error(error: BuildError) -> CliError {
    match error {
        BuildError::Spec(message) => CliError::Spec(message),
        BuildError::Journal(error) => CliError::Journal(error),
        other => CliError::Other(other.to_string()),
    }
}
