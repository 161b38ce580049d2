//! `Journal::summaries`, the read behind listings, on both backends: the runs' summaries in
//! the order asked, equal to what `summary` reads one run at a time, and `None` for a run
//! the journal does not hold.

#[path = "support/cluster.rs"]
#[allow(dead_code)] // restarts and case runners are for other suites
mod cluster;

use converge_journal::{
    Holder, Journal, PostgresJournal, RunHeader, RunId, RunStatus, SqliteJournal,
};
use serde_json::json;

fn header() -> RunHeader {
    RunHeader {
        agents: vec!["seed".into()],
        created_by: "tests/summaries.rs".to_owned(),
        intent: Some(json!({"objective": "list runs"})),
        job: None,
    }
}

fn id(name: &str) -> RunId {
    RunId::new(name).expect("a valid id")
}

/// Creates `a` and `b` (`b` then released), and checks what `summaries` reads of them and of
/// runs that do not exist.
fn check(journal: &mut dyn Journal) {
    let holder = Holder::this_process("tests/summaries.rs");
    journal
        .create_run(&id("a"), &header(), &holder, 0)
        .expect("a created");
    let lease = journal
        .create_run(&id("b"), &header(), &holder, 0)
        .expect("b created");
    journal.release(&lease).expect("b released");

    let asked = [id("b"), id("missing"), id("a"), id("b")];
    let read = journal.summaries(&asked).expect("summaries read");
    assert_eq!(read.len(), asked.len(), "one answer per run asked");
    assert!(read[1].is_none(), "a run not held is None: {:?}", read[1]);
    for (run, summary) in asked.iter().zip(&read) {
        if run.as_str() == "missing" {
            continue;
        }
        let summary = summary.as_ref().expect("a held run has a summary");
        assert_eq!(summary.id, *run, "in the order asked");
        assert_eq!(summary, &journal.summary(run).expect("summary"));
        assert_eq!(summary.status, RunStatus::Running);
    }
    assert!(read[0].as_ref().is_some_and(|b| b.lease.is_none()));
    assert!(read[2].as_ref().is_some_and(|a| a.lease.is_some()));
    assert!(journal.summaries(&[]).expect("nothing asked").is_empty());
}

#[test]
fn summaries_read_each_run_asked_in_order_on_sqlite() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut journal = SqliteJournal::open(dir.path().join("journal.db")).expect("SQLite opens");
    check(&mut journal);
}

#[test]
fn summaries_read_each_run_asked_in_order_on_postgres() {
    let cluster = cluster::Cluster::start().expect("PostgreSQL starts");
    let url = cluster.database("summaries").expect("a database");
    let mut journal = PostgresJournal::open(&url).expect("PostgreSQL opens");
    check(&mut journal);
}
