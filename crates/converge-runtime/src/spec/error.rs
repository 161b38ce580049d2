//! What is wrong with a job spec, and where.
//!
//! A [`Problem`] is one located message (`file:line:column: message`); a [`SpecError`] refuses
//! a spec with every problem found, or says the file could not be read. Warnings use the same
//! [`Problem`] type but do not refuse anything. Nothing here decides what is a problem.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One located message about a job spec: an error or a warning.
///
/// Lines and columns count from 1, columns in characters, as editors do.
///
/// ```
/// use converge_runtime::spec::JobSpec;
///
/// let error = JobSpec::parse("version: 1\nbogus: true\n", "job.yaml").unwrap_err();
/// let problem = &error.problems()[0];
/// assert_eq!((problem.line(), problem.column()), (2, 1));
/// assert!(problem.to_string().starts_with("job.yaml:2:1: unknown field `bogus`"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    origin: Arc<Path>,
    line: u64,
    column: u64,
    message: String,
}

impl Problem {
    pub(crate) fn new(origin: &Arc<Path>, at: At, message: impl Into<String>) -> Problem {
        Problem {
            origin: origin.clone(),
            line: at.line.max(1),
            column: at.column.max(1),
            message: message.into(),
        }
    }

    /// The file the spec came from, as given to [`crate::spec::JobSpec::parse`].
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// The line, from 1.
    pub fn line(&self) -> u64 {
        self.line
    }

    /// The column, from 1.
    pub fn column(&self) -> u64 {
        self.column
    }

    /// What is wrong and what was expected, without the location.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.origin.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// A position in the spec's source text (1-based; 0 means unknown and shows as 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct At {
    pub(crate) line: u64,
    pub(crate) column: u64,
}

impl At {
    pub(crate) fn of(location: &serde_saphyr::Location) -> At {
        At {
            line: location.line(),
            column: location.column(),
        }
    }
}

/// Why a job spec was refused. Nothing was built and nothing ran.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// The file could not be read.
    #[error("{}: cannot read the job spec: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The spec is not valid; every problem found is listed, in source order.
    #[error("{}", Lines(problems))]
    Invalid {
        /// The problems, one per line when displayed.
        problems: Vec<Problem>,
    },
}

impl SpecError {
    /// The located problems (empty when the file could not be read).
    pub fn problems(&self) -> &[Problem] {
        match self {
            SpecError::Invalid { problems } => problems,
            SpecError::Read { .. } => &[],
        }
    }

    pub(crate) fn invalid(mut problems: Vec<Problem>) -> SpecError {
        problems.sort_by_key(|problem| (problem.line, problem.column));
        SpecError::Invalid { problems }
    }
}

struct Lines<'a>(&'a [Problem]);

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, problem) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}
