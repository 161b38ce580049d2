//! Live progress of a run on stderr: a spinner line on a terminal, one plain line per cycle
//! otherwise (logs, pipes, CI).
//!
//! Progress reads the core's events as they are committed, and the runtime's word of each
//! agent starting and finishing (before its outcome is committed), so the line counts the
//! agents running while a cycle runs; it never changes a run.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use converge_core::{Event, EventRecord, Observer};
use converge_runtime::ActivityObserver;
use indicatif::{ProgressBar, ProgressStyle};

/// Counts what a run does and shows it.
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    quiet: bool,
    cycle: u32,
    running: u64,
    facts: u64,
    rejected: u64,
    failed: u64,
    awaiting: u64,
}

impl Progress {
    /// Shows progress on stderr: a spinner when stderr is a terminal, plain lines otherwise,
    /// nothing with `quiet`.
    pub(crate) fn new(quiet: bool) -> Progress {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress {
            bar,
            quiet,
            cycle: 0,
            running: 0,
            facts: 0,
            rejected: 0,
            failed: 0,
            awaiting: 0,
        }
    }

    /// Continues the counts of a run that already got as far as `seen`: its cycle, its
    /// facts, its rejections, failures and pending approvals. A resumed or decided run's
    /// lines go on from there rather than from zero.
    pub(crate) fn continuing(mut self, seen: &converge_core::ConvergeResult) -> Progress {
        self.cycle = seen.cycles;
        self.facts = seen.context.len() as u64;
        self.rejected = seen.rejections.len() as u64;
        self.failed = seen.failures.len() as u64;
        self.awaiting = match &seen.stop_reason {
            converge_core::StopReason::AwaitingApproval { pending } => pending.len() as u64,
            _ => 0,
        };
        self
    }

    fn status(&self) -> String {
        format!(
            "cycle {} · {} running · {} · {} rejected · {} failed · {} awaiting approval",
            self.cycle,
            crate::show::count(self.running, "agent"),
            crate::show::count(self.facts, "fact"),
            self.rejected,
            self.failed,
            self.awaiting
        )
    }

    fn redraw(&self) {
        if let Some(bar) = &self.bar {
            bar.set_message(self.status());
        }
    }

    fn line(&self, text: &str) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(bar) => bar.println(text),
            None => {
                let _ = writeln!(std::io::stderr(), "{text}");
            }
        }
    }
}

impl Observer for Progress {
    fn on_event(&mut self, record: &EventRecord) {
        match &record.event {
            // Running agents are counted as the runtime starts and finishes them: a cycle's
            // events are committed only once its agents have finished.
            Event::CycleStarted { cycle, .. } => self.cycle = *cycle,
            Event::FactPromoted { .. } => self.facts += 1,
            Event::ProposalRejected { .. } => self.rejected += 1,
            Event::AgentFailed { .. } => self.failed += 1,
            Event::ApprovalRequested { .. } => self.awaiting += 1,
            Event::ApprovalDecided { .. } => self.awaiting = self.awaiting.saturating_sub(1),
            Event::CycleFinished {
                cycle,
                promoted,
                rejected,
                parked,
            } => {
                self.line(&format!(
                    "cycle {cycle}: {promoted} promoted, {rejected} rejected, {parked} awaiting approval ({} in all)",
                    crate::show::count(self.facts, "fact")
                ));
            }
            Event::RunStopped { .. } => {
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
                return;
            }
            _ => {}
        }
        self.redraw();
    }
}

impl ActivityObserver for Progress {
    fn agent_started(&mut self, cycle: u32, _agent: &str) {
        self.cycle = cycle;
        self.running += 1;
        self.redraw();
    }

    fn agent_finished(&mut self, _cycle: u32, _agent: &str) {
        self.running = self.running.saturating_sub(1);
        self.redraw();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use converge_core::agents::SeedAgent;
    use converge_core::{Context, Engine, EventRecord, Observer};

    use super::Progress;

    /// Collects a run's events.
    struct Collect(Arc<Mutex<Vec<EventRecord>>>);

    impl Observer for Collect {
        fn on_event(&mut self, record: &EventRecord) {
            if let Ok(mut events) = self.0.lock() {
                events.push(record.clone());
            }
        }
    }

    #[test]
    fn a_continued_run_counts_on_from_where_it_stood() {
        let mut before = Engine::new();
        before.register(SeedAgent::new("a", 1));
        before.register(SeedAgent::new("b", 2));
        let seen = before.run(Context::new()).expect("runs");
        assert_eq!(seen.context.len(), 2);

        let events = Arc::new(Mutex::new(Vec::new()));
        let mut after = Engine::new();
        after.register(SeedAgent::new("c", 3));
        after.observe(Collect(events.clone()));
        after.run(Context::new()).expect("runs");

        let mut progress = Progress::new(true).continuing(&seen);
        assert_eq!((progress.cycle, progress.facts), (seen.cycles, 2));
        for record in events.lock().expect("events").iter() {
            progress.on_event(record);
        }
        assert_eq!(progress.facts, 3, "two before, one after");
        assert_eq!(progress.running, 0);
    }
}
