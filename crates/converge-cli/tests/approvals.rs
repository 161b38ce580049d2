//! Approvals through the real binary: a proposal the structural invariants would refuse is
//! never shown to a human, and deciding a proposal says what became of it.

mod common;

use common::{converge, text};
use serde_json::Value;
use tempfile::TempDir;

/// Two payouts awaiting approval, one over the structural cap.
const PAYOUTS: &str = r#"version: 1
intent:
  objective: Pay two invoices
  budgets: {cycles: 10}
keys:
  - name: payouts
    approval: true
agents:
  - name: big
    kind: rule
    writes: [payouts]
    when: "true"
    propose: {key: payouts, id: invoice-1800, content: {amount: 1800}}
  - name: small
    kind: rule
    writes: [payouts]
    when: "true"
    propose: {key: payouts, id: invoice-900, content: {amount: 900}}
invariants:
  - name: payout-cap
    class: structural
    check: facts.payouts.all(p, p.content.amount <= 1500)
"#;

#[test]
fn a_payout_over_the_cap_is_never_parked_and_a_decision_says_what_became_of_it() {
    let dir = TempDir::new().unwrap();
    let spec = dir.path().join("payouts.yaml");
    std::fs::write(&spec, PAYOUTS).unwrap();
    let db = dir.path().join("journal.db");
    let run = converge(
        &db,
        &["run", &spec.to_string_lossy(), "--id", "pay-1", "--json"],
    );
    let summary: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(
        summary["stop_reason"]["stop"], "awaiting_approval",
        "{summary}"
    );

    let seen: Value =
        serde_json::from_slice(&converge(&db, &["inspect", "pay-1", "--json"]).stdout).unwrap();
    let pending: Vec<&str> = seen["pending"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|pending| pending["id"].as_str())
        .collect();
    assert_eq!(
        pending,
        ["invoice-900"],
        "only the payout under the cap waits: {seen}"
    );
    let refused = seen["rejections"].to_string();
    assert!(
        refused.contains("invoice-1800") && refused.contains("payout-cap"),
        "the payout over the cap is refused by the invariant: {refused}"
    );

    let proposal = seen["pending"][0]["proposal"].as_str().unwrap().to_owned();
    let reject = converge(
        &db,
        &[
            "reject",
            "pay-1",
            &proposal,
            "--as",
            "alice",
            "--reason",
            "paid twice",
        ],
    );
    assert!(reject.status.success(), "{}", text(&reject.stderr));
    let said = text(&reject.stdout);
    assert!(
        said.contains(&format!(
            "proposal {proposal} (payouts/invoice-900): refused"
        )) && said.contains("alice")
            && said.contains("paid twice"),
        "the decision's outcome, with who and why: {said}"
    );
}

#[test]
fn the_weekly_payouts_example_refuses_the_approval_that_passes_the_weekly_total() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("journal.db");
    let spec =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/weekly-payouts.yaml");
    let run = converge(
        &db,
        &["run", &spec.to_string_lossy(), "--id", "week-1", "--json"],
    );
    assert_eq!(run.status.code(), Some(3), "{}", text(&run.stderr));
    let seen: Value =
        serde_json::from_slice(&converge(&db, &["inspect", "week-1", "--json"]).stdout).unwrap();
    let pending: Vec<String> = seen["pending"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|pending| pending["proposal"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(pending.len(), 4, "the 1800 payout never waits: {seen}");
    let mut said = Vec::new();
    for proposal in &pending {
        let approve = converge(&db, &["approve", "week-1", proposal, "--as", "alice"]);
        said.push(text(&approve.stdout));
    }
    let promoted = said
        .iter()
        .filter(|said| said.contains(": promoted to"))
        .count();
    assert_eq!(promoted, 3, "{said:?}");
    assert!(
        said[3].contains("refused: invariant weekly-total"),
        "the fourth would pass 5000 in the week: {}",
        said[3]
    );
}
