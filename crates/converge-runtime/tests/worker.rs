//! A worker on an embedded journal: its slots commit small steps through their shared
//! committer, and a step too large to hand over (more than `GROUPED_EVENTS_MAX` events) on
//! the slot's own connection. Both kinds of run end converged, intact, with every fact.

use std::sync::{Arc, Mutex};

use converge_core::agents::SeedAgent;
use converge_core::{ContextKey, Engine};
use converge_runtime::{
    Build, Control, Holder, Journal, Location, Report, RunId, RunStatus, Runtime, Verification,
    Worker, WorkerConfig,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// An engine of `seeds` seed agents: one cycle, `seeds` facts, two events per fact.
fn seeds(seeds: usize) -> Engine {
    let mut engine = Engine::new();
    for index in 0..seeds {
        engine.register(SeedAgent::new(format!("seed-{index}"), index));
    }
    engine
}

#[test]
fn small_and_large_steps_both_commit_through_a_worker() -> TestResult {
    let dir = tempfile::tempdir()?;
    let location = Location::Sqlite(dir.path().join("journal.db"));
    let mut journal = location.open()?;
    // 3 seeds: a few events, grouped; 3,000 seeds: over 6,000 events, committed by the slot.
    let runs = [("small", 3), ("large", 3000), ("small-too", 5)];
    for (name, count) in runs {
        Runtime::new(seeds(count)).submit_durable(&mut journal, &RunId::new(name)?)?;
    }

    let build: Build = Arc::new(|header, _| Ok(Runtime::new(seeds(header.agents.len()))));
    // Anything but a run reaching its stop (trouble, a failed drive) stops the worker at once
    // — a slot would otherwise try the run again for ever — and fails the test below.
    let troubles = Arc::new(Mutex::new(Vec::new()));
    let control: Arc<Mutex<Option<Control>>> = Arc::new(Mutex::new(None));
    let (heard, stopper) = (troubles.clone(), control.clone());
    let config = WorkerConfig {
        location: location.clone(),
        holder: Holder::this_process("worker test"),
        concurrency: 2,
        until_idle: true,
    };
    let worker = Worker::start(
        &config,
        build,
        Arc::new(move |report| {
            if !matches!(report, Report::Reached { .. }) {
                heard.lock().expect("reports").push(report.to_string());
                if let Some(control) = &*stopper.lock().expect("control") {
                    control.stop_now();
                }
            }
        }),
    )?;
    *control.lock().expect("control") = Some(worker.control());
    worker.join();
    assert_eq!(*troubles.lock().expect("reports"), Vec::<String>::new());

    for (name, count) in runs {
        let id = RunId::new(name)?;
        let summary = journal.summary(&id)?;
        assert!(
            matches!(&summary.status, RunStatus::Stopped { reason } if reason["stop"] == "converged"),
            "{name}: {:?}",
            summary.status
        );
        assert!(
            matches!(journal.verify(&id)?, Verification::Intact { root_hash, .. } if root_hash == summary.root_hash),
            "{name} verifies"
        );
        let seen = Runtime::new(seeds(count)).inspect(&journal, &id)?;
        let last = format!("seed-{}", count - 1);
        assert!(
            seen.result.context.fact(ContextKey::Seeds, &last).is_some(),
            "{name}: {last}"
        );
        assert_eq!(
            seen.result.context.count(ContextKey::Seeds),
            count,
            "{name}"
        );
    }
    Ok(())
}
