//! The command line on a PostgreSQL journal (`--db postgresql://…`), against a throwaway
//! cluster started here: the Quick Start's run, approve, why, replay and verify work as on a
//! file, and the same job recorded in a file and in the database has the same root and record
//! hashes; a run another process drives is refused at once; reading a database that holds
//! no journal creates nothing; a password never appears in what the binary prints.
//!
//! Its own harness (`harness = false`) so the cluster is started once and always stopped.

#[path = "../../converge-journal/tests/support/cluster.rs"]
mod cluster;
mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{converge, text};
use serde_json::Value;

use cluster::Cluster;

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("exited, not killed")
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("not JSON ({error}): {}", text(&output.stdout)))
}

/// Runs the release example to its approval and approves it; returns the run's summary row.
fn run_and_approve(db: &Path) -> Value {
    let run = converge(
        db,
        &["run", &example("release-approval.yaml"), "--id", "rel-1"],
    );
    assert_eq!(code(&run), 3, "{}{}", text(&run.stdout), text(&run.stderr));
    let seen = json(&converge(db, &["inspect", "rel-1", "--json"]));
    assert_eq!(seen["status"]["status"], "awaiting_approval");
    let proposal = seen["pending"][0]["proposal"]
        .as_str()
        .expect("a pending proposal")
        .to_owned();
    let approve = converge(db, &["approve", "rel-1", &proposal, "--as", "alice"]);
    assert_eq!(
        code(&approve),
        0,
        "{}{}",
        text(&approve.stdout),
        text(&approve.stderr)
    );
    let runs = json(&converge(db, &["runs", "--json"]));
    runs.as_array()
        .and_then(|runs| runs.iter().find(|row| row["run"] == "rel-1"))
        .cloned()
        .expect("the run is listed")
}

fn the_quick_start_works_on_postgres_with_the_hashes_of_a_file(cluster: &Cluster) {
    let url = cluster.database("cli").expect("a database");
    let db = Path::new(&url);
    let row = run_and_approve(db);
    assert_eq!(row["status"]["status"], "stopped");

    let why = converge(db, &["why", "rel-1", "release-2-4-0"]);
    assert_eq!(code(&why), 0, "{}", text(&why.stderr));
    assert!(text(&why.stdout).contains("approved by alice (human)"));
    let replay = json(&converge(db, &["replay", "rel-1", "--json"]));
    assert_eq!(replay["replay"], "identical");
    assert_eq!(replay["root_hash"], row["root_hash"]);
    let verify = converge(db, &["verify", "rel-1"]);
    assert_eq!(code(&verify), 0, "{}", text(&verify.stdout));
    assert!(text(&verify.stdout).contains("intact"));

    // The same job in a file: the same root hash and record hash, byte for byte.
    let dir = tempfile::tempdir().expect("a directory");
    let file = dir.path().join("journal.db");
    let file_row = run_and_approve(&file);
    assert_eq!(file_row["root_hash"], row["root_hash"]);
    assert_eq!(file_row["record_hash"], row["record_hash"]);
}

fn a_run_another_process_drives_is_refused(cluster: &Cluster) {
    let url = cluster.database("cli_lease").expect("a database");
    let dir = tempfile::tempdir().expect("a directory");
    let spec = dir.path().join("slow.yaml");
    std::fs::write(
        &spec,
        r#"version: 1
intent:
  objective: Wait a while
  budgets: {cycles: 5}
agents:
  - name: slow
    kind: command
    writes: [signals]
    command: [sh, -c, "sleep 4; cat > /dev/null; echo '{\"proposals\":[{\"key\":\"signals\",\"id\":\"done\",\"content\":1}]}'"]
    timeout_ms: 20000
"#,
    )
    .expect("spec written");
    let mut driver = Command::new(env!("CARGO_BIN_EXE_converge"))
        .args([
            "--db",
            &url,
            "run",
            &spec.to_string_lossy(),
            "--id",
            "slow-1",
        ])
        .env_remove("CONVERGE_DB")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the driver starts");
    let db = Path::new(&url);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let runs = converge(db, &["runs", "--json"]);
        if code(&runs) == 0 && json(&runs)[0]["steps"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the run never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let resume = converge(db, &["resume", "slow-1"]);
    let _ = driver.wait();
    assert_ne!(code(&resume), 0, "a second driver was let in");
    assert!(
        text(&resume.stderr).contains("is being driven by converge run"),
        "{}",
        text(&resume.stderr)
    );
    let verify = converge(db, &["verify", "slow-1"]);
    assert_eq!(code(&verify), 0, "{}", text(&verify.stdout));
}

fn reading_an_empty_database_creates_nothing_and_hides_the_password(cluster: &Cluster) {
    let url = cluster.database("cli_empty").expect("a database");
    let with_password = url.replacen("postgres@", "postgres:hunter2@", 1);
    let inspect = converge(Path::new(&with_password), &["inspect", "nope-1"]);
    assert_eq!(code(&inspect), 1);
    let message = text(&inspect.stderr);
    assert!(message.contains("holds no Converge journal"), "{message}");
    assert!(
        !message.contains("hunter2"),
        "the password was printed: {message}"
    );
    // Nothing was created: a writer still finds an empty database and creates the schema.
    let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("connects");
    let schema: Option<String> = client
        .query_one("SELECT to_regclass('converge.runs')::text", &[])
        .expect("query")
        .get(0);
    assert_eq!(schema, None, "reading created the journal");
    // A database that cannot be reached: the server's tables are not opened, and the message
    // names the database without its password.
    let unreachable = "postgresql://postgres:hunter2@127.0.0.1:1/converge";
    let tokens = converge(Path::new(unreachable), &["token", "list"]);
    assert_eq!(code(&tokens), 1);
    let message = text(&tokens.stderr);
    assert!(message.contains("127.0.0.1:1"), "{message}");
    assert!(
        !message.contains("hunter2"),
        "the password was printed: {message}"
    );
}

fn a_file_is_copied_to_postgres_and_runs_on_there(cluster: &Cluster) {
    let dir = tempfile::tempdir().expect("a directory");
    let file = dir.path().join("journal.db");
    let row = run_and_approve(&file);
    let parked = converge(
        &file,
        &["run", &example("release-approval.yaml"), "--id", "rel-2"],
    );
    assert_eq!(code(&parked), 3);
    let url = cluster.database("cli_copy").expect("a database");
    let copy = Command::new(env!("CARGO_BIN_EXE_converge"))
        .args([
            "journal",
            "copy",
            "--from",
            &file.to_string_lossy(),
            "--to",
            &url,
        ])
        .env_remove("CONVERGE_DB")
        .output()
        .expect("copy runs");
    assert_eq!(
        code(&copy),
        0,
        "{}{}",
        text(&copy.stdout),
        text(&copy.stderr)
    );
    assert!(
        text(&copy.stdout).contains("2 runs copied"),
        "{}",
        text(&copy.stdout)
    );
    let db = Path::new(&url);
    let copied = json(&converge(db, &["runs", "--json"]));
    assert_eq!(copied[0]["record_hash"], row["record_hash"]);
    let replay = json(&converge(db, &["replay", "rel-1", "--json"]));
    assert_eq!(replay["replay"], "identical");
    // The parked run goes on in the database.
    let seen = json(&converge(db, &["inspect", "rel-2", "--json"]));
    let proposal = seen["pending"][0]["proposal"]
        .as_str()
        .expect("pending")
        .to_owned();
    let approve = converge(db, &["approve", "rel-2", &proposal, "--as", "alice"]);
    assert_eq!(code(&approve), 0, "{}", text(&approve.stderr));
    let again = Command::new(env!("CARGO_BIN_EXE_converge"))
        .args([
            "journal",
            "copy",
            "--from",
            &file.to_string_lossy(),
            "--to",
            &url,
        ])
        .env_remove("CONVERGE_DB")
        .output()
        .expect("copy runs");
    assert_eq!(code(&again), 1);
    assert!(
        text(&again.stderr).contains("already exists"),
        "{}",
        text(&again.stderr)
    );
}

const CASES: &[cluster::Case] = &[
    (
        "the_quick_start_works_on_postgres_with_the_hashes_of_a_file",
        the_quick_start_works_on_postgres_with_the_hashes_of_a_file,
    ),
    (
        "a_run_another_process_drives_is_refused",
        a_run_another_process_drives_is_refused,
    ),
    (
        "a_file_is_copied_to_postgres_and_runs_on_there",
        a_file_is_copied_to_postgres_and_runs_on_there,
    ),
    (
        "reading_an_empty_database_creates_nothing_and_hides_the_password",
        reading_an_empty_database_creates_nothing_and_hides_the_password,
    ),
];

fn main() {
    cluster::run_cases("postgres", CASES);
}
