//! A throwaway PostgreSQL cluster for tests: `initdb` in a temporary directory (as the
//! `postgres` user when the tests run as root, since PostgreSQL refuses to run as root), a
//! free port on 127.0.0.1, `fsync` on, stopped and removed when dropped.
//!
//! When `CONVERGE_TEST_POSTGRES` holds a URL (of a role that may create databases), that
//! server is used instead and nothing is started.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A PostgreSQL server for the tests: started here, or named by `CONVERGE_TEST_POSTGRES`.
pub(crate) struct Cluster {
    /// The URL of its `postgres` database, where databases are created.
    admin_url: String,
    /// What was started here: its data directory, binaries and whether they run as `postgres`.
    started: Option<Started>,
    databases: AtomicUsize,
}

struct Started {
    dir: tempfile::TempDir,
    bin: PathBuf,
    as_postgres: bool,
}

impl Cluster {
    /// Starts a cluster, or connects to the one `CONVERGE_TEST_POSTGRES` names.
    pub(crate) fn start() -> Result<Cluster, String> {
        if let Some(url) = std::env::var("CONVERGE_TEST_POSTGRES")
            .ok()
            .filter(|url| !url.is_empty())
        {
            return Ok(Cluster {
                admin_url: url,
                started: None,
                databases: AtomicUsize::new(0),
            });
        }
        let bin = binaries()?;
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("converge-pg-")
            .tempdir()
            .map_err(|error| format!("cannot create a directory for the cluster: {error}"))?;
        if as_postgres {
            run(Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.path()))?;
        }
        let data = dir.path().join("data");
        let started = Started {
            dir,
            bin,
            as_postgres,
        };
        started.run(
            "initdb",
            &[
                "-D",
                &data.to_string_lossy(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        )?;
        let port = free_port()?;
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=200",
            started.dir.path().display()
        );
        let log = started.dir.path().join("server.log");
        started.run(
            "pg_ctl",
            &[
                "-D",
                &data.to_string_lossy(),
                "-l",
                &log.to_string_lossy(),
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )?;
        Ok(Cluster {
            admin_url: format!("postgresql://postgres@127.0.0.1:{port}/postgres"),
            started: Some(started),
            databases: AtomicUsize::new(0),
        })
    }

    /// A new, empty database, and its URL.
    pub(crate) fn database(&self, purpose: &str) -> Result<String, String> {
        let index = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!("converge_{}_{}_{index}", purpose, std::process::id());
        let mut client = postgres::Client::connect(&self.admin_url, postgres::NoTls)
            .map_err(|error| format!("cannot connect to {}: {error}", self.admin_url))?;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .map_err(|error| format!("cannot create database {name}: {error}"))?;
        let base = self
            .admin_url
            .rsplit_once('/')
            .map_or(self.admin_url.as_str(), |(base, _)| base);
        Ok(format!("{base}/{name}"))
    }

    /// Restarts the started cluster the way an operator would (`pg_ctl restart -m fast`):
    /// sessions are ended, and the server comes back on the same port with the same data.
    #[allow(dead_code)] // only some suites restart
    pub(crate) fn restart(&self) -> Result<(), String> {
        let Some(started) = &self.started else {
            return Err("the cluster was not started by the tests".to_owned());
        };
        // The restarted server logs to the file, not to the pipe `pg_ctl` is read through
        // (which would then never close).
        let log = started.dir.path().join("server.log");
        self.pg_ctl(&[
            "-l",
            &log.to_string_lossy(),
            "-m",
            "fast",
            "-w",
            "-t",
            "60",
            "restart",
        ])
    }

    /// Runs `pg_ctl` with `args` on the started cluster (for restarts in tests).
    pub(crate) fn pg_ctl(&self, args: &[&str]) -> Result<(), String> {
        let Some(started) = &self.started else {
            return Err("the cluster was not started by the tests".to_owned());
        };
        let data = started.dir.path().join("data");
        let mut all = vec!["-D", data.to_str().unwrap_or_default()];
        all.extend_from_slice(args);
        started.run("pg_ctl", &all)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // An immediate stop: the data is thrown away with the directory.
        let _ = self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
    }
}

impl Started {
    fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let program = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&program);
            command
        } else {
            Command::new(&program)
        };
        command.args(args).current_dir(self.dir.path());
        run(&mut command)
    }
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("cannot run {command:?}: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// The directory of PostgreSQL's server programs: Debian's newest, or `pg_config --bindir`.
fn binaries() -> Result<PathBuf, String> {
    let debian = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(debian)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.path().join("bin"))
                .filter(|bin| bin.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    if let Some(bin) = versions.pop() {
        return Ok(bin);
    }
    let output = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .map_err(|_| {
            "PostgreSQL's server is not installed: install Debian's `postgresql` package \
             (scripts/test does), or set CONVERGE_TEST_POSTGRES to a server's URL"
                .to_owned()
        })?;
    Ok(PathBuf::from(
        String::from_utf8_lossy(&output.stdout).trim(),
    ))
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|error| format!("no free port: {error}"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
}

/// A test binary's cases, each given the cluster.
#[allow(dead_code)] // the conformance suite runs its cases over two backends itself
pub(crate) type Case = (&'static str, fn(&Cluster));

/// Runs a test binary's `cases` (those whose names contain a command-line argument, when
/// any is given) against one cluster, started first and stopped last whatever fails, and
/// exits with 1 if any case failed. `binary` names the suite in its summary line.
#[allow(dead_code)]
pub(crate) fn run_cases(binary: &str, cases: &[Case]) {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    let cluster = match Cluster::start() {
        Ok(cluster) => cluster,
        Err(error) => {
            eprintln!("{binary}: cannot start PostgreSQL: {error}");
            std::process::exit(1);
        }
    };
    let mut failed = Vec::new();
    let mut passed = 0;
    for (name, case) in cases {
        if !filter.is_empty() && !filter.iter().any(|wanted| name.contains(wanted.as_str())) {
            continue;
        }
        let started = std::time::Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(&cluster)));
        match outcome {
            Ok(()) => {
                passed += 1;
                println!(
                    "test {name} ... ok ({:.1} s)",
                    started.elapsed().as_secs_f64()
                );
            }
            Err(_) => {
                println!("test {name} ... FAILED");
                failed.push(*name);
            }
        }
    }
    drop(cluster);
    println!("{binary}: {passed} passed, {} failed", failed.len());
    if !failed.is_empty() {
        std::process::exit(1);
    }
}
