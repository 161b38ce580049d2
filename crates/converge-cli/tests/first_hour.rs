//! Small things a new user meets in the first hour, through the real binary: an empty
//! `CONVERGE_DB` counts as unset, and counts are written as words ("1 cycle", "2 facts").

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
    assert!(String::from_utf8_lossy(&runs.stdout).contains("one-1"));
}
