//! Integration tests: each scenario, run small through the library, ends with exact counts.

use converge_bench::{BenchError, DEFAULT_SET, Scenario, execute, measure};
use converge_core::{ContextKey, StopReason};

const N: usize = 50;

#[test]
fn chain_id_converges_in_n_cycles_with_n_facts() {
    let result = execute(Scenario::ChainId, N).expect("runs");
    assert_eq!(result.stop_reason, StopReason::Converged);
    assert!(result.converged);
    assert_eq!(result.cycles, 50);
    assert_eq!(result.context.len(), 50);
    assert_eq!(result.context.count(ContextKey::Hypotheses), 50);
    assert!(result.context.contains(ContextKey::Hypotheses, "c0"));
    assert!(result.context.contains(ContextKey::Hypotheses, "c49"));
    assert!(result.rejections.is_empty());
    assert!(result.failures.is_empty());
}

#[test]
fn chain_count_converges_in_n_cycles_with_n_facts() {
    let result = execute(Scenario::ChainCount, N).expect("runs");
    assert_eq!(result.stop_reason, StopReason::Converged);
    assert_eq!(result.cycles, 50);
    assert_eq!(result.context.len(), 50);
    assert_eq!(result.context.count(ContextKey::Hypotheses), 50);
    assert!(result.context.contains(ContextKey::Hypotheses, "c49"));
    assert!(result.rejections.is_empty());
}

#[test]
fn fanout_converges_in_one_cycle_with_n_facts() {
    let result = execute(Scenario::Fanout, N).expect("runs");
    assert_eq!(result.stop_reason, StopReason::Converged);
    assert_eq!(result.cycles, 1);
    assert_eq!(result.context.len(), 50);
    assert_eq!(result.context.count(ContextKey::Seeds), 50);
    assert!(result.context.contains(ContextKey::Seeds, "f0"));
    assert!(result.context.contains(ContextKey::Seeds, "f49"));
    assert!(result.rejections.is_empty());
}

#[test]
fn every_scenario_works_with_a_single_agent() {
    for scenario in Scenario::IN_PROCESS {
        let result = execute(scenario, 1).expect("runs");
        let expected = scenario.expected(1);
        assert!(result.converged, "{scenario}");
        assert_eq!(result.cycles as usize, expected.cycles, "{scenario}");
        assert_eq!(result.context.len(), expected.facts, "{scenario}");
    }
}

#[test]
fn measure_verifies_and_reports_the_counts() {
    for scenario in Scenario::IN_PROCESS {
        let measurement = measure(scenario, N).expect("verifies");
        let expected = scenario.expected(N);
        assert_eq!(measurement.cycles, expected.cycles);
        assert_eq!(measurement.facts, expected.facts);
        let line: serde_json::Value =
            serde_json::from_str(&measurement.json_line()).expect("valid JSON");
        assert_eq!(line["scenario"], scenario.name());
        assert_eq!(line["n"], 50);
        assert_eq!(line["cycles"], expected.cycles);
        assert_eq!(line["facts"], expected.facts);
        assert!(line["ms"].is_f64());
    }
}

#[test]
fn json_line_has_the_documented_shape() {
    let measurement = converge_bench::Measurement {
        scenario: Scenario::ChainId,
        n: 1000,
        cycles: 1000,
        facts: 1000,
        ms: 12.0,
        resume_ms: None,
        journal_bytes: None,
        wal_bytes: None,
    };
    assert_eq!(
        measurement.json_line(),
        r#"{"scenario":"chain-id","n":1000,"cycles":1000,"facts":1000,"ms":12.000}"#
    );
}

#[test]
fn names_round_trip_and_bad_sizes_are_refused() {
    for scenario in Scenario::ALL {
        assert_eq!(scenario.name().parse::<Scenario>().ok(), Some(scenario));
    }
    assert!(matches!(
        "nope".parse::<Scenario>(),
        Err(BenchError::UnknownScenario { .. })
    ));
    assert!(matches!(
        execute(Scenario::Fanout, 0),
        Err(BenchError::BadN { n: 0 })
    ));
    assert_eq!(DEFAULT_SET.len(), 8);
}

#[test]
fn the_journaled_scenarios_converge_and_measure_their_journal() {
    for scenario in [Scenario::LatencyJournal, Scenario::Journal] {
        let measurement = converge_bench::measure(scenario, 8).unwrap();
        let line: serde_json::Value = serde_json::from_str(&measurement.json_line()).unwrap();
        assert!(line["journal_bytes"].as_u64().unwrap() > 0, "{line}");
        assert!(line["bytes_per_fact"].as_f64().unwrap() > 0.0, "{line}");
    }
}

#[test]
fn latency_runs_eight_layers_concurrently() {
    let result = converge_bench::execute(converge_bench::Scenario::Latency, 3).unwrap();
    assert!(result.converged, "{:?}", result.stop_reason);
    assert_eq!((result.cycles, result.context.len()), (8, 24));
}

#[test]
fn journal_lines_carry_throughput_and_resume_time() {
    let measurement = converge_bench::Measurement {
        scenario: Scenario::Journal,
        n: 100,
        cycles: 1,
        facts: 100,
        ms: 50.0,
        resume_ms: Some(20.0),
        journal_bytes: Some(21_050),
        wal_bytes: None,
    };
    assert_eq!(
        measurement.json_line(),
        r#"{"scenario":"journal","n":100,"cycles":1,"facts":100,"ms":50.000,"facts_per_s":2000,"resume_ms":20.000,"journal_bytes":21050,"bytes_per_fact":210.5}"#
    );
}

/// Both PostgreSQL scenarios on a small size: a server (CONVERGE_BENCH_POSTGRES, or a
/// throwaway cluster), every run verified.
#[test]
fn the_postgres_scenarios_measure_their_server() {
    let line = measure(Scenario::PgJournal, 50)
        .expect("measures")
        .json_line();
    let line: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["facts"], 50, "{line}");
    assert!(line["journal_bytes"].as_u64().unwrap() > 0, "{line}");
    assert!(line["wal_bytes"].as_u64().unwrap() > 0, "{line}");

    let lines = converge_bench::lines(Scenario::PgRuns, 8).expect("measures");
    assert_eq!(lines.len(), converge_bench::WORKER_COUNTS.len());
    for line in lines {
        let line: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(line["n"], 8, "{line}");
        assert!(line["runs_per_s"].as_f64().unwrap() > 0.0, "{line}");
        assert!(line["commits_per_run"].as_f64().unwrap() >= 1.0, "{line}");
    }
}
