//! A worker on an embedded journal: its slots commit small steps through their shared
//! committer, and a step too large to hand over (more than `GROUPED_EVENTS_MAX` events) on
//! the slot's own connection. Both kinds of run end converged, intact, with every fact.
//! A worker left idle wakes for runs submitted one at a time and in a burst, and one drained
//! while idle ends at once. A run whose record cannot be read is tried once per lease, and
//! the runs behind it are driven.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use converge_core::agents::SeedAgent;
use converge_core::{ContextKey, Engine};
use converge_runtime::{
    Build, Control, Holder, Journal, Location, Report, RunId, RunStatus, Runtime, Verification,
    Worker, WorkerConfig,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// What a test hears from a worker besides runs reaching their stops, in words.
type Heard = Arc<Mutex<Vec<String>>>;

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

    // Anything but a run reaching its stop (trouble, a failed drive) stops the worker at once
    // — a slot would otherwise try the run again for ever — and fails the test below.
    let (worker, troubles) = start_worker(&location, 2, Ending::AtFirstTrouble)?;
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

/// When a test's worker ends.
#[derive(Clone, Copy, PartialEq)]
enum Ending {
    /// Once idle, or at once on anything but a run reaching its stop.
    AtFirstTrouble,
    /// When the test stops it: it waits for runs while idle.
    Stopped,
}

/// A worker of `slots` slots on the journal at `location`, ending as `ending` says, and the
/// reports other than a reached stop.
fn start_worker(
    location: &Location,
    slots: u16,
    ending: Ending,
) -> Result<(Worker, Heard), Box<dyn std::error::Error>> {
    let build: Build = Arc::new(|header, _| Ok(Runtime::new(seeds(header.agents.len()))));
    let troubles = Arc::new(Mutex::new(Vec::new()));
    let control: Arc<Mutex<Option<Control>>> = Arc::new(Mutex::new(None));
    let (heard, stopper) = (troubles.clone(), control.clone());
    let config = WorkerConfig {
        location: location.clone(),
        holder: Holder::this_process("worker test"),
        concurrency: slots,
        until_idle: ending == Ending::AtFirstTrouble,
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
    if ending == Ending::AtFirstTrouble {
        *control.lock().expect("control") = Some(worker.control());
    }
    Ok((worker, troubles))
}

/// Waits until every run of `names` stopped converged, failing after `within`.
fn until_converged(
    journal: &impl Journal,
    names: &[String],
    within: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    for name in names {
        let id = RunId::new(name.as_str())?;
        loop {
            let status = journal.summary(&id)?.status;
            if let RunStatus::Stopped { reason } = &status {
                assert_eq!(reason["stop"], "converged", "{name}");
                break;
            }
            assert!(started.elapsed() < within, "{name} is still {status:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}

#[test]
fn an_idle_worker_drives_runs_submitted_one_by_one_and_in_a_burst() -> TestResult {
    let dir = tempfile::tempdir()?;
    let location = Location::Sqlite(dir.path().join("journal.db"));
    let mut journal = location.open()?;
    let (worker, troubles) = start_worker(&location, 4, Ending::Stopped)?;
    let control = worker.control();
    // Every slot found nothing and waits.
    std::thread::sleep(Duration::from_millis(300));

    for index in 0..6 {
        let name = format!("one-{index}");
        Runtime::new(seeds(2)).submit_durable(&mut journal, &RunId::new(name.as_str())?)?;
        // Well within IDLE_LOOK (2 s), the most a slot waits unless a ring wakes it: the first
        // run, submitted while all four slots wait since their first look, would otherwise
        // wait 1.7 s.
        until_converged(&journal, &[name], Duration::from_secs(1))?;
        // Idle again before the next.
        std::thread::sleep(Duration::from_millis(150));
    }
    // More runs at once than slots: the claims go on from one slot to the next.
    let burst: Vec<String> = (0..10).map(|index| format!("burst-{index}")).collect();
    for name in &burst {
        Runtime::new(seeds(3)).submit_durable(&mut journal, &RunId::new(name.as_str())?)?;
    }
    until_converged(&journal, &burst, Duration::from_secs(30))?;

    control.drain();
    worker.join();
    assert_eq!(*troubles.lock().expect("reports"), Vec::<String>::new());
    Ok(())
}

#[test]
fn an_unreadable_run_is_tried_once_per_lease_and_the_runs_behind_it_are_driven() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("journal.db");
    let location = Location::Sqlite(path.clone());
    let mut journal = location.open()?;
    // Submitted first, so every claim would take it first.
    Runtime::new(seeds(2)).submit_durable(&mut journal, &RunId::new("altered")?)?;
    rusqlite::Connection::open(&path)?.execute(
        "UPDATE runs SET header = 'not a header' WHERE id = 'altered'",
        [],
    )?;
    let behind: Vec<String> = (0..4).map(|index| format!("behind-{index}")).collect();
    for name in &behind {
        Runtime::new(seeds(2)).submit_durable(&mut journal, &RunId::new(name.as_str())?)?;
    }
    let (worker, troubles) = start_worker(&location, 2, Ending::Stopped)?;
    until_converged(&journal, &behind, Duration::from_secs(10))?;
    // Long enough for a slot that let the run go at once to claim it hundreds of times.
    std::thread::sleep(Duration::from_millis(500));
    let control = worker.control();
    control.drain();
    worker.join();
    let heard = troubles.lock().expect("reports").clone();
    let failures = heard.iter().filter(|said| said.contains("altered")).count();
    // Once: its claim is kept until its lease expires (30 s), so no slot claims it again.
    assert_eq!(failures, 1, "{heard:?}");
    assert!(
        journal.summary(&RunId::new("altered")?)?.lease.is_some(),
        "the failed claim is kept"
    );
    Ok(())
}

#[test]
fn a_worker_drained_while_idle_ends_at_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    let location = Location::Sqlite(dir.path().join("journal.db"));
    let (worker, troubles) = start_worker(&location, 4, Ending::Stopped)?;
    // Every slot found nothing and waits.
    std::thread::sleep(Duration::from_millis(300));
    let control = worker.control();
    let (ended, joined) = std::sync::mpsc::channel();
    let joining = std::thread::spawn(move || {
        worker.join();
        let _ = ended.send(());
    });
    let drained = Instant::now();
    control.drain();
    // The waiting slots, and the listener for news once they are gone, end within moments.
    assert!(
        joined.recv_timeout(Duration::from_secs(5)).is_ok(),
        "the worker still runs 5 s after it was drained"
    );
    joining.join().expect("joined");
    let took = drained.elapsed();
    assert!(took < Duration::from_secs(5), "join took {took:?}");
    assert_eq!(*troubles.lock().expect("reports"), Vec::<String>::new());
    Ok(())
}
