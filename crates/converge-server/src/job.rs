//! From a job spec to a runtime, for a new run and for an existing one (from the spec its
//! journal header keeps), with or without live model calls. The command line and the server
//! build runtimes the same way, so a run started by one can be resumed or audited by the
//! other.

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;

use converge_llm::{Models, Providers};
use converge_runtime::spec::{JobSpec, Loaded};
use converge_runtime::{JobRecord, Journal, JournalError, RunHeader, RunId, Runtime};

/// Whether the runtime's `llm` agents may call their models.
#[derive(Debug, Clone, Copy)]
pub enum Calls<'a> {
    /// Running, resuming or deciding: models are called, with the profiles of this provider
    /// file (or the default one) and keys from it or the environment.
    Live {
        /// The provider file, if one was given.
        providers: Option<&'a Path>,
    },
    /// Re-deriving a recorded run (inspect, why, replay, verify, export): no model is called,
    /// and no provider configuration or key is needed.
    Offline,
}

/// Why a runtime could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The spec was refused; its problems are `origin:line:column: …` lines.
    #[error("{0}")]
    Spec(String),
    /// The run was not started from a job spec.
    #[error(
        "run {run} was not started from a job spec (it was created by {created_by}); only the \
         program that built its runtime can rebuild it"
    )]
    NoSpec {
        /// The run.
        run: RunId,
        /// Who created it.
        created_by: String,
    },
    /// The provider file could not be read.
    #[error("{0}")]
    Providers(String),
    /// The journal could not be read.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// A built runtime that records the spec it was built from, and the spec's warnings
/// (located `origin:line:column: …` lines; the spec is valid despite them).
pub struct Built {
    /// The runtime.
    pub runtime: Runtime,
    /// The parsed spec.
    pub spec: JobSpec,
    /// Warnings.
    pub warnings: Vec<String>,
}

/// Parses, checks and builds a spec; the runtime records it (see [`Runtime::with_job`]).
///
/// ```
/// use converge_runtime::JobRecord;
/// use converge_server::job::{Calls, build};
///
/// let source = "version: 1\nintent: {objective: greet}\nseeds:\n  - {key: seeds, id: greeting, content: hello}\n";
/// let record = JobRecord { path: "/jobs/hello.yaml".into(), source: source.into() };
/// let built = build(&record, Calls::Offline).unwrap();
/// assert_eq!(built.runtime.job(), Some(&record));
/// ```
pub fn build(record: &JobRecord, calls: Calls<'_>) -> Result<Built, BuildError> {
    let loaded = JobSpec::parse(&record.source, &record.path)
        .map_err(|error| BuildError::Spec(error.to_string()))?;
    build_loaded(loaded, record, calls)
}

fn build_loaded(loaded: Loaded, record: &JobRecord, calls: Calls<'_>) -> Result<Built, BuildError> {
    let warnings = loaded.warnings.iter().map(ToString::to_string).collect();
    let spec = loaded.spec;
    let runtime = runtime_of_spec(&spec, record, calls)?;
    Ok(Built {
        runtime,
        spec,
        warnings,
    })
}

/// A runtime built from a checked spec, recording `record` (the spec's text and path).
fn runtime_of_spec(
    spec: &JobSpec,
    record: &JobRecord,
    calls: Calls<'_>,
) -> Result<Runtime, BuildError> {
    let models = match calls {
        Calls::Offline => Models::offline(spec),
        Calls::Live { .. } if spec.llm_agents().next().is_none() => Models::offline(spec),
        Calls::Live { providers } => Models::live(spec, providers_of(providers)?, |var| {
            std::env::var(var).ok()
        }),
    };
    let runtime = spec
        .builder()
        .llm(&models)
        .build()
        .map_err(|error| BuildError::Spec(error.to_string()))?;
    Ok(runtime.with_job(record.clone()))
}

/// The runtime of an existing run, rebuilt from the spec in its header. The spec is parsed
/// as recorded (`JobSpec::parse_recorded`): checks added since the run started refuse new
/// runs, not this one.
pub fn runtime_of(
    journal: &(impl Journal + ?Sized),
    run: &RunId,
    calls: Calls<'_>,
) -> Result<Runtime, BuildError> {
    runtime_of_header(&journal.header(run)?, run, calls)
}

/// The runtime of run `run`, rebuilt from the spec in `header`, its journal header (as
/// [`runtime_of`], for a caller that has read the header already: a worker that loaded the
/// run it claimed).
pub fn runtime_of_header(
    header: &RunHeader,
    run: &RunId,
    calls: Calls<'_>,
) -> Result<Runtime, BuildError> {
    let Some(record) = &header.job else {
        return Err(BuildError::NoSpec {
            run: run.clone(),
            created_by: header.created_by.clone(),
        });
    };
    RECORDED.with(|recorded| {
        let mut recorded = recorded.borrow_mut();
        let spec = match recorded.as_ref() {
            Some((parsed, spec)) if parsed == record => spec.clone(),
            _ => {
                let loaded = JobSpec::parse_recorded(&record.source, &record.path)
                    .map_err(|error| BuildError::Spec(error.to_string()))?;
                let spec = Rc::new(loaded.spec);
                *recorded = Some((record.clone(), spec.clone()));
                spec
            }
        };
        runtime_of_spec(&spec, record, calls)
    })
}

thread_local! {
    /// The spec this thread last parsed for an existing run, with the record it came from: a
    /// worker rebuilds runtime after runtime from one spec, and parsing and checking it (YAML,
    /// CEL) costs more than driving a small run. One spec per thread, so the memory is bounded;
    /// a spec parses to the same checked spec whenever its text and path are the same.
    static RECORDED: RefCell<Option<(JobRecord, Rc<JobSpec>)>> = const { RefCell::new(None) };
}

/// The provider profiles: the built-in ones with the provider file's on top (the given one,
/// or `providers.toml` in the per-user config directory if it exists).
fn providers_of(file: Option<&Path>) -> Result<Providers, BuildError> {
    let loaded = match file {
        Some(path) => Providers::load(path),
        None => {
            let dirs = directories::ProjectDirs::from("", "", "converge");
            Providers::discover(dirs.as_ref().map(|dirs| dirs.config_dir()))
        }
    };
    loaded.map_err(|error| BuildError::Providers(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_of(source: &str) -> RunHeader {
        RunHeader {
            agents: Vec::new(),
            created_by: "a test".to_owned(),
            intent: None,
            job: Some(JobRecord {
                path: "/jobs/job.yaml".into(),
                source: source.into(),
            }),
        }
    }

    /// A thread keeps the spec it parsed last; a header with another spec is built from its
    /// own, and the first again after it.
    #[test]
    fn each_header_is_built_from_its_own_spec() {
        let run = RunId::new("run-1").expect("valid");
        let rule = |name: &str| {
            header_of(&format!(
                "version: 1\nintent: {{objective: x}}\nagents:\n  - {{name: {name}, kind: rule, \
                 writes: [signals], when: \"true\", propose: {{key: signals, id: {name}, \
                 content: 1}}}}\n"
            ))
        };
        let (one, two) = (rule("one"), rule("two"));
        for (header, name) in [(&one, "one"), (&one, "one"), (&two, "two"), (&one, "one")] {
            let runtime = runtime_of_header(header, &run, Calls::Offline).expect("builds");
            assert_eq!(runtime.job(), header.job.as_ref());
            assert!(
                runtime.engine().agent_names().any(|agent| agent == name),
                "{name}"
            );
        }
        let Err(BuildError::Spec(_)) =
            runtime_of_header(&header_of("version: 1\nagents: 3\n"), &run, Calls::Offline)
        else {
            panic!("a spec that does not parse is refused, whatever was parsed before");
        };
    }
}
