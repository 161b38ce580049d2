//! Containing a command agent's processes: a process group of its own, a minimal environment,
//! and the agent launcher, which kills the group if the process that started it dies.
//!
//! Every agent program starts as the leader of a new process group, so everything it starts
//! (a shell's children, a background job) is in that group unless it leaves it on purpose.
//! [`Group`] kills the whole group with `SIGKILL` when dropped: at the end of the agent's
//! exchange, on its timeout, and when its future is dropped (a cancellation, the run's time
//! budget, `converge` exiting on a signal).
//!
//! A process killed with `SIGKILL` cannot clean up after itself, so agents may also be
//! started through a launcher — an executable that calls [`launch_agent`] (the `converge`
//! binary does, when given [`AGENT_LAUNCHER_ARG`]). The launcher leads the group: it starts
//! the program as its child, checks every [`LAUNCHER_PARENT_POLL_MS`] that the process that
//! started it is still its parent, and if that process died (even by `SIGKILL`), kills the
//! whole group, itself included. Otherwise it ends as the program ended: the same exit
//! status, or the same signal. A process that installed no launcher
//! ([`set_agent_launcher`]) starts agents directly: their groups are killed whenever that
//! process lets them be, but not if it is killed outright.
//!
//! Watching the parent by polling, rather than with Linux's parent-death signal, is
//! deliberate: that signal fires when the *thread* that started a process exits, and agents
//! are started on whatever thread polls the drive; a parent process id changes only when the
//! process dies.
//!
//! What this does not do: follow processes that leave the group (`setsid`, `setpgid`), or
//! limit what an agent may read, write or connect to.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;

/// The variables an agent inherits from the process that runs the job, when they are set
/// there; everything else it gets is named by its spec (`env:` values and `pass_env:` names).
pub const AGENT_ENV_INHERITED: &[&str] = &[
    "HOME",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_COLLATE",
    "LC_CTYPE",
    "LC_MESSAGES",
    "LC_MONETARY",
    "LC_NUMERIC",
    "LC_TIME",
    "LOGNAME",
    "PATH",
    "SHELL",
    "TMPDIR",
    "TZ",
    "USER",
];

/// The argument that makes the `converge` binary act as the agent launcher: `converge
/// __converge-launch-agent PARENT_PID PROGRAM [ARGUMENT…]`. Not a command for people.
pub const AGENT_LAUNCHER_ARG: &str = "__converge-launch-agent";

/// How often the launcher checks that the process that started it is alive.
pub const LAUNCHER_PARENT_POLL_MS: u64 = 100;

/// The launcher's exit status when the process that started it had already died.
pub const LAUNCH_EXIT_ORPHANED: u8 = 125;

/// The launcher's exit status when its arguments are malformed.
pub const LAUNCH_EXIT_USAGE: u8 = 126;

/// The launcher's exit status when the agent's program could not be started (as a shell's).
pub const LAUNCH_EXIT_NOT_STARTED: u8 = 127;

/// The launcher this process starts agents through, if one was installed.
static LAUNCHER: OnceLock<Launcher> = OnceLock::new();

/// An executable and the leading arguments that make it run [`launch_agent`].
#[derive(Debug)]
struct Launcher {
    program: PathBuf,
    args: Vec<OsString>,
}

/// Starts every later command agent of this process through `program args… PARENT_PID
/// PROGRAM [ARGUMENT…]`, where `program` runs [`launch_agent`] on the arguments after `args`.
/// Returns `false` (and changes nothing) if a launcher was already installed.
pub fn set_agent_launcher(program: PathBuf, args: Vec<OsString>) -> bool {
    LAUNCHER.set(Launcher { program, args }).is_ok()
}

/// The launcher's side: `args` are `PARENT_PID PROGRAM [ARGUMENT…]`. Checks the parent is
/// still `PARENT_PID`, starts the program (with this process's working directory,
/// environment, standard streams and process group), and watches the parent until the
/// program ends: if the parent dies first, kills this process group. Ends as the program
/// ended: returns its exit status, or kills itself with the signal that killed it (an exit
/// status of 128 plus the signal's number where that cannot be done). Returns an exit status
/// of its own, with a message on stderr, if the program could not be started.
pub fn launch_agent(mut args: impl Iterator<Item = OsString>) -> ExitCode {
    let parent = args
        .next()
        .and_then(|pid| pid.to_str()?.parse::<u32>().ok());
    let (Some(parent), Some(program)) = (parent, args.next()) else {
        say(&format!(
            "{AGENT_LAUNCHER_ARG}: expected PARENT_PID PROGRAM [ARGUMENT…]"
        ));
        return ExitCode::from(LAUNCH_EXIT_USAGE);
    };
    if !parent_is(parent) {
        say(&format!(
            "the process that started this agent (pid {parent}) has exited; not starting it"
        ));
        return ExitCode::from(LAUNCH_EXIT_ORPHANED);
    }
    let mut child = match std::process::Command::new(&program).args(args).spawn() {
        Ok(child) => child,
        Err(error) => {
            let program = Path::new(&program).display();
            say(&format!("could not start {program}: {error}"));
            return ExitCode::from(LAUNCH_EXIT_NOT_STARTED);
        }
    };
    std::thread::spawn(move || watch_parent(parent));
    match child.wait() {
        Ok(status) => end_as(status),
        Err(error) => {
            say(&format!("could not wait for the agent: {error}"));
            kill_own_group();
            ExitCode::from(LAUNCH_EXIT_NOT_STARTED)
        }
    }
}

/// Kills this process group once `parent` is no longer this process's parent. Runs until
/// then, or until the process exits (when the program it launched ends).
fn watch_parent(parent: u32) {
    while parent_is(parent) {
        std::thread::sleep(std::time::Duration::from_millis(LAUNCHER_PARENT_POLL_MS));
    }
    kill_own_group();
}

/// One line on stderr, which may be closed: the exit status says the same.
fn say(message: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{message}");
}

#[cfg(unix)]
fn parent_is(expected: u32) -> bool {
    let parent = rustix::process::getppid().map(|pid| pid.as_raw_nonzero().get());
    parent.and_then(|pid| u32::try_from(pid).ok()) == Some(expected)
}

#[cfg(not(unix))]
fn parent_is(_expected: u32) -> bool {
    true
}

#[cfg(unix)]
fn kill_own_group() {
    use rustix::process::{Signal, getpgrp, kill_process_group};
    let _ = kill_process_group(getpgrp(), Signal::KILL);
}

#[cfg(not(unix))]
fn kill_own_group() {}

/// Ends this process as the program ended.
#[cfg(unix)]
fn end_as(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX));
    }
    let signal = status.signal().unwrap_or(0);
    if let Some(raw) = rustix::process::Signal::from_named_raw(signal) {
        // Comes back only for a signal this process ignores (SIGPIPE, which Rust ignores).
        let _ = rustix::process::kill_process(rustix::process::getpid(), raw);
    }
    ExitCode::from(u8::try_from(128 + signal).unwrap_or(u8::MAX))
}

#[cfg(not(unix))]
fn end_as(status: std::process::ExitStatus) -> ExitCode {
    let code = status.code().unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX))
}

/// The command that starts `program` with `args`: through the launcher when one is
/// installed. In its own process group, with the minimal environment plus `pass_env`
/// (from this process) and `env` (given values), in `dir`, killed if dropped.
pub(crate) fn agent_command<'a>(
    program: &Path,
    args: &[String],
    dir: &Path,
    pass_env: impl Iterator<Item = &'a str>,
    env: impl Iterator<Item = (&'a String, &'a String)>,
) -> tokio::process::Command {
    let mut command = match LAUNCHER.get() {
        Some(launcher) => {
            let mut command = tokio::process::Command::new(&launcher.program);
            command.args(&launcher.args);
            command.arg(std::process::id().to_string()).arg(program);
            command
        }
        None => tokio::process::Command::new(program),
    };
    command.args(args).current_dir(dir).kill_on_drop(true);
    command.env_clear();
    for name in AGENT_ENV_INHERITED.iter().copied().chain(pass_env) {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    command.envs(env);
    #[cfg(unix)]
    command.process_group(0);
    command
}

/// An agent's process group, killed whole when this is dropped.
pub(crate) struct Group {
    #[cfg(unix)]
    leader: Option<rustix::process::Pid>,
}

impl Group {
    /// The group `child` leads (it was started by [`agent_command`]).
    pub(crate) fn led_by(child: &tokio::process::Child) -> Group {
        #[cfg(unix)]
        let leader = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(rustix::process::Pid::from_raw);
        #[cfg(not(unix))]
        let _ = child;
        Group {
            #[cfg(unix)]
            leader,
        }
    }
}

impl Drop for Group {
    /// `SIGKILL` to every process left in the group. A group's id is not reused while any
    /// process is in the group, so while one is left, the signal reaches only the agent's
    /// processes; an empty group answers "no such process", which is ignored. (Once the group
    /// is empty and its leader reaped, its id could be reused; the kill follows the leader's
    /// exit within a grace of milliseconds, far less than the kernel takes to cycle through
    /// process ids.)
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(leader) = self.leader {
            // ESRCH: the group is already empty.
            let _ = rustix::process::kill_process_group(leader, rustix::process::Signal::KILL);
        }
    }
}
