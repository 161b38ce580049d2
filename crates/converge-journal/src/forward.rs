//! Forwarding [`crate::Journal`] methods to another journal, written once: the blanket
//! implementations for `&mut J` and `Box<J>` forward everything, and journals that wrap
//! another to change its writes (fault injection, group commit, crash tests) forward its
//! reads.

/// Implements [`crate::Journal`] methods by calling the same method on another journal.
///
/// Inside an `impl Journal for …` block:
/// - `forward_journal!(reads to field)` forwards every read to `self.field`;
/// - `forward_journal!(all to field)` forwards every method to `self.field`;
/// - `forward_journal!(all through deref)` forwards every method to `**self`.
///
/// ```
/// use converge_journal::{Journal, RunId, SqliteJournal};
///
/// /// A journal that is another one under a name of its own.
/// struct Archive(SqliteJournal);
///
/// impl Journal for Archive {
///     converge_journal::forward_journal!(all to 0);
/// }
///
/// let dir = tempfile::tempdir().unwrap();
/// let archive = Archive(SqliteJournal::open(dir.path().join("runs.db")).unwrap());
/// assert!(archive.runs().unwrap().is_empty());
/// assert!(archive.summary(&RunId::new("missing").unwrap()).is_err());
/// ```
#[macro_export]
macro_rules! forward_journal {
    (reads to $field:tt) => {
        $crate::forward_journal!(@reads self field $field);
    };
    (all to $field:tt) => {
        $crate::forward_journal!(@writes self field $field);
        $crate::forward_journal!(@reads self field $field);
    };
    (all through deref) => {
        $crate::forward_journal!(@writes self deref);
        $crate::forward_journal!(@reads self deref);
    };
    // `self` is passed along as a token, so that the receivers the rules below declare and
    // the ones their bodies use are the same to the compiler.
    (@target $s:tt deref) => {
        (**$s)
    };
    (@target $s:tt field $field:tt) => {
        $s.$field
    };
    (@reads $s:tt $($to:tt)+) => {
        fn runs(&$s) -> Result<Vec<$crate::RunSummary>, $crate::JournalError> {
            $crate::forward_journal!(@target $s $($to)+).runs()
        }

        fn summary(&$s, run: &$crate::RunId) -> Result<$crate::RunSummary, $crate::JournalError> {
            $crate::forward_journal!(@target $s $($to)+).summary(run)
        }

        fn summaries(
            &$s,
            runs: &[$crate::RunId],
        ) -> Result<Vec<Option<$crate::RunSummary>>, $crate::JournalError> {
            $crate::forward_journal!(@target $s $($to)+).summaries(runs)
        }

        fn header(&$s, run: &$crate::RunId) -> Result<$crate::RunHeader, $crate::JournalError> {
            $crate::forward_journal!(@target $s $($to)+).header(run)
        }

        fn load(&$s, run: &$crate::RunId) -> Result<$crate::RecordedRun, $crate::JournalError> {
            $crate::forward_journal!(@target $s $($to)+).load(run)
        }

        fn events(
            &$s,
            run: &$crate::RunId,
            from: u64,
        ) -> Result<Vec<$crate::StoredEvent>, $crate::JournalError> {
            $crate::forward_journal!(@target $s $($to)+).events(run, from)
        }

        fn events_page(
            &$s,
            run: &$crate::RunId,
            from: u64,
            limit: usize,
        ) -> Result<Vec<$crate::StoredEvent>, $crate::JournalError> {
            $crate::forward_journal!(@target $s $($to)+).events_page(run, from, limit)
        }

        fn verify(
            &$s,
            run: &$crate::RunId,
        ) -> Result<$crate::Verification, $crate::JournalError> {
            $crate::forward_journal!(@target $s $($to)+).verify(run)
        }
    };
    (@writes $s:tt $($to:tt)+) => {
        fn create_run(
            &mut $s,
            run: &$crate::RunId,
            header: &$crate::RunHeader,
            holder: &$crate::Holder,
            now_ms: u64,
        ) -> Result<$crate::Lease, $crate::JournalError> {
            $crate::forward_journal!(@target $s $($to)+).create_run(run, header, holder, now_ms)
        }

        fn acquire(
            &mut $s,
            run: &$crate::RunId,
            holder: &$crate::Holder,
            now_ms: u64,
        ) -> Result<$crate::Lease, $crate::JournalError> {
            $crate::forward_journal!(@target $s $($to)+).acquire(run, holder, now_ms)
        }

        fn preempt(
            &mut $s,
            run: &$crate::RunId,
            holder: &$crate::Holder,
            now_ms: u64,
        ) -> Result<$crate::Lease, $crate::JournalError> {
            $crate::forward_journal!(@target $s $($to)+).preempt(run, holder, now_ms)
        }

        fn renew(
            &mut $s,
            lease: &mut $crate::Lease,
            now_ms: u64,
        ) -> Result<(), $crate::JournalError> {
            $crate::forward_journal!(@target $s $($to)+).renew(lease, now_ms)
        }

        fn claim(
            &mut $s,
            holder: &$crate::Holder,
            now_ms: u64,
            limit: usize,
        ) -> Result<Vec<$crate::Lease>, $crate::JournalError> {
            $crate::forward_journal!(@target $s $($to)+).claim(holder, now_ms, limit)
        }

        fn claim_loaded(
            &mut $s,
            holder: &$crate::Holder,
            now_ms: u64,
            limit: usize,
        ) -> Result<Vec<$crate::ClaimedRun>, $crate::JournalError> {
            $crate::forward_journal!(@target $s $($to)+).claim_loaded(holder, now_ms, limit)
        }

        fn release(&mut $s, lease: &$crate::Lease) -> Result<(), $crate::JournalError> {
            $crate::forward_journal!(@target $s $($to)+).release(lease)
        }

        fn submit_run(
            &mut $s,
            run: &$crate::RunId,
            header: &$crate::RunHeader,
            holder: &$crate::Holder,
            now_ms: u64,
        ) -> Result<(), $crate::JournalError> {
            $crate::forward_journal!(@target $s $($to)+).submit_run(run, header, holder, now_ms)
        }

        fn commit_outcomes(
            &mut $s,
            lease: &$crate::Lease,
            step: u64,
            cycle: u32,
            outcomes: &[(u32, $crate::OutcomeRecord)],
        ) -> Result<(), $crate::JournalError> {
            $crate::forward_journal!(@target $s $($to)+).commit_outcomes(lease, step, cycle, outcomes)
        }

        fn append(
            &mut $s,
            lease: &$crate::Lease,
            step: u64,
            input: &$crate::StepInput,
            events: &converge_core::EventBatch,
        ) -> Result<(), $crate::JournalError> {
            $crate::forward_journal!(@target $s $($to)+).append(lease, step, input, events)
        }

        fn append_steps(
            &mut $s,
            lease: &$crate::Lease,
            first: u64,
            steps: &[$crate::PendingStep],
            after: $crate::AfterSteps,
        ) -> Result<(), $crate::JournalError> {
            $crate::forward_journal!(@target $s $($to)+).append_steps(lease, first, steps, after)
        }

        fn append_steps_of_runs(
            &mut $s,
            runs: &[$crate::RunSteps],
        ) -> Vec<Result<(), $crate::JournalError>> {
            $crate::forward_journal!(@target $s $($to)+).append_steps_of_runs(runs)
        }

        fn append_steps_of_runs_and_claim(
            &mut $s,
            runs: &[$crate::RunSteps],
            holder: &$crate::Holder,
            now_ms: u64,
            limit: usize,
        ) -> $crate::GroupAndClaim {
            $crate::forward_journal!(@target $s $($to)+)
                .append_steps_of_runs_and_claim(runs, holder, now_ms, limit)
        }
    };
}
