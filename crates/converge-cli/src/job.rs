//! From a job spec to a runtime: for a new run (read from a file) and for an existing run
//! (from the spec its journal header keeps, so that every later command rebuilds the very
//! runtime the run was started with).

use std::path::Path;

use converge_llm::{Models, Providers};
use converge_runtime::spec::JobSpec;
use converge_runtime::{JobRecord, Journal, RunId, Runtime};

use crate::CliError;

/// Whether the runtime's `llm` agents may call their models.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Calls<'a> {
    /// Running or resuming: models are called, with the profiles of this provider file (or
    /// the default one) and keys from it or the environment.
    Live { providers: Option<&'a Path> },
    /// Re-deriving a recorded run (inspect, why, replay, verify, export): no model is called,
    /// and no provider configuration or key is needed.
    Offline,
}

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
    let (runtime, warnings) = build(&record, calls)?;
    Ok(Loaded {
        runtime: runtime.with_job(record),
        warnings,
    })
}

/// The runtime of an existing run, rebuilt from the spec in its header.
pub(crate) fn runtime_of(
    journal: &impl Journal,
    run: &RunId,
    calls: Calls<'_>,
) -> Result<Runtime, CliError> {
    let header = journal.header(run)?;
    let Some(record) = header.job else {
        return Err(CliError::Other(format!(
            "run {run} was not started from a job spec (it was created by {}); \
             only the program that built its runtime can rebuild it",
            header.created_by
        )));
    };
    let (runtime, _) = build(&record, calls)?;
    Ok(runtime.with_job(record))
}

/// Parses and builds a recorded spec.
fn build(record: &JobRecord, calls: Calls<'_>) -> Result<(Runtime, Vec<String>), CliError> {
    let loaded = JobSpec::parse(&record.source, &record.path)
        .map_err(|error| CliError::Spec(error.to_string()))?;
    let warnings = loaded.warnings.iter().map(ToString::to_string).collect();
    let spec = loaded.spec;
    let models = match calls {
        Calls::Offline => Models::offline(&spec),
        Calls::Live { .. } if spec.llm_agents().next().is_none() => Models::offline(&spec),
        Calls::Live { providers } => Models::live(&spec, providers_of(providers)?, |var| {
            std::env::var(var).ok()
        }),
    };
    let runtime = spec
        .builder()
        .llm(&models)
        .build()
        .map_err(|error| CliError::Spec(error.to_string()))?;
    Ok((runtime, warnings))
}

/// The provider profiles: the built-in ones with the provider file's on top.
fn providers_of(file: Option<&Path>) -> Result<Providers, CliError> {
    let loaded = match file {
        Some(path) => Providers::load(path),
        None => {
            let dirs = directories::ProjectDirs::from("", "", "converge");
            Providers::discover(dirs.as_ref().map(|dirs| dirs.config_dir()))
        }
    };
    loaded.map_err(|error| CliError::Other(error.to_string()))
}
