//! Leases: one driver per run.
//!
//! A process that drives a run (starts it, resumes it, applies decisions, cancels it) first
//! takes the run's lease: a row in the journal naming the holder (what it is, its host and
//! process id), a random-enough token and an expiry, renewed while it drives. Every write of
//! the run names the token, so a process that lost its lease can never commit into a run that
//! another now drives (the token *fences* it). A lease whose holder is gone is free: it
//! expired, or its holder was a process on this host that no longer exists (it was killed), so
//! a crashed run can be resumed at once without a manual step.
//!
//! This module decides nothing about storage; stores record and compare what it describes.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use converge_core::Digest;

use crate::RunId;

/// How long a lease lasts without renewal.
pub const LEASE_TTL_MS: u64 = 30_000;

/// How often a driver renews its lease: well before it expires.
pub const LEASE_RENEW_MS: u64 = LEASE_TTL_MS / 3;

/// Longest holder name stored, in bytes.
const HOLDER_NAME_LEN_MAX: usize = 200;

/// Who drives a run: what it is, and the host and process it runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// What is driving, in words (`converge resume`, `converge serve`…).
    pub name: String,
    /// The host name of the machine it runs on.
    pub host: String,
    /// Its process id.
    pub pid: u32,
}

impl Holder {
    /// This process, described as `name`.
    ///
    /// ```
    /// let holder = converge_journal::Holder::this_process("converge run");
    /// assert_eq!(holder.pid, std::process::id());
    /// assert!(holder.to_string().starts_with("converge run (pid "));
    /// ```
    pub fn this_process(name: &str) -> Holder {
        let mut name = name.to_owned();
        if name.len() > HOLDER_NAME_LEN_MAX {
            let mut end = HOLDER_NAME_LEN_MAX;
            while !name.is_char_boundary(end) {
                end -= 1;
            }
            name.truncate(end);
        }
        Holder {
            name,
            host: this_host(),
            pid: std::process::id(),
        }
    }

    /// Whether this holder's lease does not stand in `other`'s way: this holder is certainly
    /// gone — a process of this host that no longer runs (or is a zombie, killed and not yet
    /// reaped) — or it is `other`'s own process, which serializes its own drives of a run
    /// (a drive it abandoned is fenced out by the new token). A holder on another host is
    /// never known to be gone; its lease is free only once it expires.
    pub(crate) fn yields_to(&self, other: &Holder) -> bool {
        self.is_gone() || (self.host == other.host && self.pid == other.pid)
    }

    /// Whether this holder is certainly gone: a process of this host that no longer runs (or
    /// is a zombie, killed and not yet reaped).
    pub(crate) fn is_gone(&self) -> bool {
        Holder::gone_here(&self.host, self.pid)
    }

    /// Whether the process `pid` of `host` is certainly gone: `host` is this one and the
    /// process no longer runs.
    pub(crate) fn gone_here(host: &str, pid: u32) -> bool {
        host == this_host() && !process_runs(pid)
    }

    /// This machine's host name, as holders record it.
    pub(crate) fn this_host() -> String {
        this_host()
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (pid {} on {})", self.name, self.pid, self.host)
    }
}

/// The time leases are reckoned in: milliseconds since the Unix epoch, by this machine's
/// clock. A lease is read by other processes, on other machines, so it needs a clock they
/// share (within the lease's margin), not a process's monotonic one.
///
/// ```
/// let now = converge_journal::wall_clock_ms();
/// assert!(now > 1_700_000_000_000, "after November 2023");
/// ```
pub fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// The right to write one run, until it expires or is released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub(crate) run: RunId,
    pub(crate) token: String,
    pub(crate) holder: Holder,
    pub(crate) expires_ms: u64,
}

impl Lease {
    /// A new lease on `run` for `holder` from `now_ms`, with a fresh token.
    pub(crate) fn new(run: &RunId, holder: &Holder, now_ms: u64) -> Lease {
        Lease {
            run: run.clone(),
            token: fresh_token(holder, now_ms),
            holder: holder.clone(),
            expires_ms: now_ms.saturating_add(LEASE_TTL_MS),
        }
    }

    /// The run it is for.
    pub fn run(&self) -> &RunId {
        &self.run
    }

    /// Who holds it.
    pub fn holder(&self) -> &Holder {
        &self.holder
    }

    /// When it expires unless renewed, in milliseconds since the Unix epoch.
    pub fn expires_ms(&self) -> u64 {
        self.expires_ms
    }

    /// The token every write of the run names.
    pub fn token(&self) -> &str {
        &self.token
    }
}

/// A token no other lease has had: a digest of the holder, the time and a process-wide
/// counter (unique in this process) and the process id and host (unique among processes).
fn fresh_token(holder: &Holder, now_ms: u64) -> String {
    static ISSUED: AtomicU64 = AtomicU64::new(0);
    let count = ISSUED.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    Digest::of_parts(&[
        holder.host.as_bytes(),
        &holder.pid.to_le_bytes(),
        &now_ms.to_le_bytes(),
        &nanos.to_le_bytes(),
        &count.to_le_bytes(),
    ])
    .to_string()[..32]
        .to_owned()
}

/// This machine's host name.
fn this_host() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// Whether process `pid` of this host runs (a zombie does not).
fn process_runs(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    match rustix::process::test_kill_process(pid) {
        // EPERM: it exists, owned by someone else.
        Ok(()) | Err(rustix::io::Errno::PERM) => !is_zombie(pid.as_raw_nonzero().get()),
        Err(_) => false,
    }
}

/// Whether `/proc` says the process is a zombie (Linux); elsewhere, never.
fn is_zombie(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may hold spaces.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state == "Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_runs_and_a_reaped_child_is_gone() {
        let me = Holder::this_process("test");
        let mut sleeper = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let other = Holder {
            pid: sleeper.id(),
            ..me.clone()
        };
        assert!(!other.yields_to(&me), "a live process keeps its lease");
        assert!(me.yields_to(&me), "a process takes over its own lease");
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
        assert!(other.yields_to(&me), "a killed process's lease is free");
        let elsewhere = Holder {
            host: format!("{}-elsewhere", me.host),
            ..other
        };
        assert!(
            !elsewhere.yields_to(&me),
            "another host's lease is free only once expired"
        );
    }

    #[test]
    fn tokens_differ() {
        let me = Holder::this_process("test");
        let run = RunId::new("r").unwrap();
        assert_ne!(
            Lease::new(&run, &me, 1).token,
            Lease::new(&run, &me, 1).token
        );
    }
}
