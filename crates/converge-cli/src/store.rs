//! Where the journal lives and how new runs are named.
//!
//! The journal defaults to `journal.db` in the per-user data directory (for example
//! `~/.local/share/converge/` on Linux); `--db` or `CONVERGE_DB` points elsewhere: another
//! file, or a PostgreSQL database by its `postgresql://` URL.

use std::path::Path;

use converge_runtime::{Journal, Location, RunId};

use crate::CliError;

/// The journal to open: `--db` (a file or a `postgresql://` URL), or the default file,
/// whose directory is created.
pub(crate) fn journal_location(given: Option<&Path>) -> Result<Location, CliError> {
    // An empty `--db` or `CONVERGE_DB=` means unset, as for any other variable.
    if let Some(path) = given.filter(|path| !path.as_os_str().is_empty()) {
        return Ok(match path.to_str() {
            Some(text) => Location::parse(text),
            None => Location::Sqlite(path.to_path_buf()),
        });
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
    Ok(Location::Sqlite(dir.join("journal.db")))
}

/// `STEM-N` for the spec's file stem (reduced to the characters a run id allows) and the
/// smallest `N` above every existing run of that stem.
pub(crate) fn next_run_id(journal: &impl Journal, spec: &Path) -> Result<RunId, CliError> {
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
