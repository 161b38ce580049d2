//! Where the journal lives and how new runs are named.
//!
//! The journal defaults to `journal.db` in the per-user data directory (for example
//! `~/.local/share/converge/` on Linux); `--db` or `CONVERGE_DB` points elsewhere: another
//! file, or a PostgreSQL database by its `postgresql://` URL.

use std::path::Path;

use converge_runtime::{Journal, JournalError, Location, RunId};

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

/// The id of a new run: the given one or the next free `STEM-N` for the spec, with the
/// tenant's prefix when the run is a tenant's (`acme-release-approval-1`; a given id that
/// has the prefix keeps it once).
pub(crate) fn new_run_id(
    journal: &impl Journal,
    spec: &Path,
    given: Option<&str>,
    tenant: Option<&str>,
) -> Result<RunId, CliError> {
    let prefix = tenant
        .map(|tenant| format!("{tenant}-"))
        .unwrap_or_default();
    let id = match given {
        Some(id) if id.starts_with(&prefix) => id.to_owned(),
        Some(id) => format!("{prefix}{id}"),
        None => return next_run_id(journal, spec, &prefix),
    };
    RunId::new(&id).map_err(|error| CliError::Other(error.to_string()))
}

/// `PREFIXSTEM-N` for the spec's file stem (reduced to the characters a run id allows) and
/// the smallest `N` above every existing run of that stem.
fn next_run_id(journal: &impl Journal, spec: &Path, prefix: &str) -> Result<RunId, CliError> {
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
    let stem = format!("{prefix}{stem}");
    let prefix = format!("{stem}-");
    let last = journal
        .runs()?
        .iter()
        .filter_map(|run| run.id.as_str().strip_prefix(&prefix)?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    RunId::new(&format!("{stem}-{}", last + 1)).map_err(|error| CliError::Other(error.to_string()))
}

/// A run recorded as a tenant's ([`own`]), until its creation is known.
pub(crate) struct Owned(Option<(converge_server::Owners, RunId)>);

/// Records `run` as `tenant`'s (when a tenant is given), as `converge serve` records a
/// submission, so the server lists it for the tenant's tokens. Refused when the journal has
/// the run already: it is someone else's.
pub(crate) fn own(
    location: &Location,
    journal: &impl Journal,
    run: &RunId,
    tenant: Option<&str>,
) -> Result<Owned, CliError> {
    let Some(tenant) = tenant else {
        return Ok(Owned(None));
    };
    match journal.summary(run) {
        Err(JournalError::UnknownRun { .. }) => {}
        Ok(_) => {
            return Err(CliError::Other(format!(
                "run {run} already exists in {location}: choose another --id"
            )));
        }
        Err(other) => return Err(other.into()),
    }
    let failed = |error: converge_server::StoreError| CliError::Other(error.to_string());
    let mut owners = converge_server::Owners::open(location.clone()).map_err(failed)?;
    // Who made it: the account running the command, as a token names its person.
    let by = std::env::var("USER")
        .ok()
        .filter(|user| !user.is_empty())
        .unwrap_or_else(|| "converge".to_owned());
    owners.record(tenant, run, &by).map_err(failed)?;
    Ok(Owned(Some((owners, run.clone()))))
}

impl Owned {
    /// Passes `outcome` on, first forgetting the ownership of a run that was never created
    /// (its creation failed), so no tenant lists a run that is not there.
    pub(crate) fn settle<T, E>(
        mut self,
        journal: &impl Journal,
        outcome: Result<T, E>,
    ) -> Result<Result<T, E>, CliError> {
        if let (Err(_), Some((owners, run))) = (&outcome, self.0.as_mut())
            && matches!(journal.summary(run), Err(JournalError::UnknownRun { .. }))
        {
            owners
                .forget(run)
                .map_err(|error| CliError::Other(error.to_string()))?;
        }
        Ok(outcome)
    }
}
