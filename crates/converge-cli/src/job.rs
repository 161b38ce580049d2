//! From a job spec to a runtime: for a new run (read from a file) and for an existing run
//! (from the spec its journal header keeps, so that every later command rebuilds the very
//! runtime the run was started with).

use std::path::Path;

use converge_runtime::spec::JobSpec;
use converge_runtime::{JobRecord, Journal, RunId, Runtime};

use crate::CliError;

/// A spec read from a file, built into a runtime that records it.
pub(crate) struct Loaded {
    pub(crate) runtime: Runtime,
    /// Located warnings (`file:line:column: …`); the spec is valid despite them.
    pub(crate) warnings: Vec<String>,
}

/// Reads, checks and builds the spec at `path`; nothing runs if any of it is wrong.
pub(crate) fn load(path: &Path) -> Result<Loaded, CliError> {
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
    let (runtime, warnings) = build(&record)?;
    Ok(Loaded {
        runtime: runtime.with_job(record),
        warnings,
    })
}

/// The runtime of an existing run, rebuilt from the spec in its header.
pub(crate) fn runtime_of(journal: &impl Journal, run: &RunId) -> Result<Runtime, CliError> {
    let header = journal.header(run)?;
    let Some(record) = header.job else {
        return Err(CliError::Other(format!(
            "run {run} was not started from a job spec (it was created by {}); \
             only the program that built its runtime can rebuild it",
            header.created_by
        )));
    };
    let (runtime, _) = build(&record)?;
    Ok(runtime.with_job(record))
}

/// Parses and builds a recorded spec.
fn build(record: &JobRecord) -> Result<(Runtime, Vec<String>), CliError> {
    let loaded = JobSpec::parse(&record.source, &record.path)
        .map_err(|error| CliError::Spec(error.to_string()))?;
    let warnings = loaded.warnings.iter().map(ToString::to_string).collect();
    let runtime = loaded
        .spec
        .build()
        .map_err(|error| CliError::Spec(error.to_string()))?;
    Ok((runtime, warnings))
}
