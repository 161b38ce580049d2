//! Containing a command agent's processes: a process group of its own, a minimal environment,
//! and a parent-death signal through the agent launcher.
//!
//! Every agent program starts as the leader of a new process group, so everything it starts
//! (a shell's children, a background job) is in that group unless it leaves it on purpose.
//! [`Group`] kills the whole group with `SIGKILL` when dropped: at the end of the agent's
//! exchange, on its timeout, and when its future is dropped (a cancellation, the run's time
//! budget, `converge` exiting on a signal).
//!
//! A process killed with `SIGKILL` cannot clean up after itself, so on Linux the agent also
//! gets a parent-death signal: when the process that started it dies, the kernel kills the
//! agent. Setting one needs code running between `fork` and `exec`, which safe Rust cannot
//! add to a `Command`, so the program is started through a launcher — an executable that
//! calls [`launch_agent`] (the `converge` binary does, when given [`AGENT_LAUNCHER_ARG`]):
//! it sets the signal, checks its parent is still the process that started it, and `exec`s
//! the agent, which keeps the signal. A process that installed no launcher
//! ([`set_agent_launcher`]) starts agents directly, without a parent-death signal.
//!
//! What this does not do: follow processes that leave the group (`setsid`, `setpgid`), or
//! limit what an agent may read, write or connect to.

use std::ffi::{OsStr, OsString};
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
///
/// The parent-death signal is the kernel's: it fires when the *thread* that started the
/// agent exits, not only the process. Agents are started on the thread that polls the drive,
/// so poll drives on threads that outlive them: the thread calling `block_on`, or a tokio
/// worker thread (they live as long as their tokio runtime, whose end drops the drive and so
/// kills its agents anyway).
pub fn set_agent_launcher(program: PathBuf, args: Vec<OsString>) -> bool {
    LAUNCHER.set(Launcher { program, args }).is_ok()
}

/// The launcher's side: `args` are `PARENT_PID PROGRAM [ARGUMENT…]`. Sets the parent-death
/// signal (Linux), checks the parent is still `PARENT_PID`, and replaces this process with the
/// program, which keeps the working directory, environment and process group given to the
/// launcher. Returns only on failure, with the exit status to end with (the message is on
/// stderr).
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
    if let Err(error) = die_with_parent(parent) {
        say(&error);
        return ExitCode::from(LAUNCH_EXIT_ORPHANED);
    }
    let error = exec(&program, args);
    say(&format!(
        "could not start {}: {error}",
        Path::new(&program).display()
    ));
    ExitCode::from(LAUNCH_EXIT_NOT_STARTED)
}

/// One line on stderr, which may be closed: the exit status says the same.
fn say(message: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{message}");
}

#[cfg(unix)]
fn exec(program: &OsStr, args: impl Iterator<Item = OsString>) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    std::process::Command::new(program).args(args).exec()
}

#[cfg(not(unix))]
fn exec(_program: &OsStr, _args: impl Iterator<Item = OsString>) -> std::io::Error {
    std::io::Error::other("the agent launcher needs a Unix system")
}

/// Asks the kernel to kill this process when its parent dies, then checks the parent has not
/// died already (it may have, between the `fork` and now, and nothing would then fire).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn die_with_parent(parent: u32) -> Result<(), String> {
    use rustix::process::{Signal, getppid, set_parent_process_death_signal};
    set_parent_process_death_signal(Some(Signal::KILL))
        .map_err(|error| format!("could not set the parent-death signal: {error}"))?;
    check_parent(getppid().map(|pid| pid.as_raw_nonzero().get()), parent)
}

#[cfg(all(unix, not(any(target_os = "linux", target_os = "android"))))]
fn die_with_parent(parent: u32) -> Result<(), String> {
    let current = rustix::process::getppid().map(|pid| pid.as_raw_nonzero().get());
    check_parent(current, parent)
}

#[cfg(not(unix))]
fn die_with_parent(_parent: u32) -> Result<(), String> {
    Ok(())
}

#[cfg(unix)]
fn check_parent(current: Option<i32>, expected: u32) -> Result<(), String> {
    if current.and_then(|pid| u32::try_from(pid).ok()) == Some(expected) {
        return Ok(());
    }
    Err(format!(
        "the process that started this agent (pid {expected}) has exited; not starting it"
    ))
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
