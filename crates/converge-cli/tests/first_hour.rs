//! Small things a new user meets in the first hour, through the real binary: an empty
//! `CONVERGE_DB` counts as unset, counts are written as words ("1 cycle", "2 facts"), and
//! runs are listed with their job and objective.

use std::process::Command;

use tempfile::TempDir;

const ONE_SEED: &str =
    "version: 1\nintent: {objective: one fact}\nseeds:\n  - {key: seeds, id: s1, content: one}\n";

#[test]
fn an_empty_converge_db_is_unset_and_counts_read_as_words() {
    let dir = TempDir::new().unwrap();
    let spec = dir.path().join("one.yaml");
    std::fs::write(&spec, ONE_SEED).unwrap();
    let db = dir.path().join("journal.db");
    let run = Command::new(env!("CARGO_BIN_EXE_converge"))
        .env("CONVERGE_DB", "")
        .arg("--db")
        .arg(&db)
        .args(["run", &spec.to_string_lossy(), "--id", "one-1"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(db.exists(), "--db was used");
    assert!(
        said.contains("1 cycle ·") && said.contains("2 facts") && said.contains("0 agent failures"),
        "counts as words: {said}"
    );
    // With CONVERGE_DB naming the journal and no --db, the same run is there.
    let runs = Command::new(env!("CARGO_BIN_EXE_converge"))
        .env("CONVERGE_DB", &db)
        .arg("runs")
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&runs.stdout);
    let row = listed
        .lines()
        .find(|line| line.starts_with("one-1"))
        .unwrap_or_else(|| panic!("the run is listed: {listed}"));
    assert!(
        row.contains("one.yaml") && row.contains("one fact"),
        "runs are listed with their job and objective: {listed}"
    );
}
