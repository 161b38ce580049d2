//! Where the journal lives and how new runs are named.
//!
//! The journal defaults to `journal.db` in the per-user data directory (for example
//! `~/.local/share/converge/` on Linux); `--db` or `CONVERGE_DB` points elsewhere.

use std::path::{Path, PathBuf};

use converge_runtime::{Journal, RunId, SqliteJournal};

use crate::CliError;

/// The journal file to open, creating its directory when it is the default one.
pub(crate) fn journal_path(given: Option<&Path>) -> Result<PathBuf, CliError> {
    // An empty `--db` or `CONVERGE_DB=` means unset, as for any other variable.
    if let Some(path) = given.filter(|path| !path.as_os_str().is_empty()) {
        return Ok(path.to_path_buf());
    }
    let dirs = directories::ProjectDirs::from("", "", "converge").ok_or_else(|| {
        CliError::Other(
            "no home directory to keep the journal in; pass --db FILE or set CONVERGE_DB"
                .to_owned(),
        )
    })?;
    let dir = dirs.data_dir();
    std::fs::create_dir_all(dir)
        .map_err(|error| CliError::Other(format!("cannot create {}: {error}", dir.display())))?;
    Ok(dir.join("journal.db"))
}

/// `STEM-N` for the spec's file stem (reduced to the characters a run id allows) and the
/// smallest `N` above every existing run of that stem.
pub(crate) fn next_run_id(journal: &SqliteJournal, spec: &Path) -> Result<RunId, CliError> {
    let stem: String = spec
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(48)
        .collect();
    let stem = if stem.is_empty() {
        "run".to_owned()
    } else {
        stem
    };
    let prefix = format!("{stem}-");
    let last = journal
        .runs()?
        .iter()
        .filter_map(|run| run.id.as_str().strip_prefix(&prefix)?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    RunId::new(&format!("{stem}-{}", last + 1)).map_err(|error| CliError::Other(error.to_string()))
}
