//! The runs this process knows: one [`Slot`] per run, kept for as long as it is in use and
//! evicted, least recently used first, once more than [`SLOTS_KEPT_MAX`] are held.
//!
//! A slot holds a run's drive lock, the cancel handle of a drive in progress, a watch of its
//! committed events and caches of what was read of it (its events, its re-derived view, its
//! job's names). Caches can always be read again from the journal, so an idle slot can be
//! dropped at any time; a slot in use cannot. A slot is in use while anyone holds it (a
//! request, a drive), holds its drive lock, or follows its events. A server that answers
//! for millions of runs over its life thus keeps the slots of the runs in use and of the
//! last [`SLOTS_KEPT_MAX`] read, not of every run it ever saw.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use converge_runtime::{Cancel, Inspection, RunId, Runtime};
use tokio::sync::watch;

use crate::service::{EventEntry, JobNames};
use crate::store::Ownership;

/// Slots kept before idle ones are evicted. An eviction goes down to half as many, so that
/// its cost (a sort of the idle slots) is paid once per that many new slots.
pub(crate) const SLOTS_KEPT_MAX: usize = 4096;

/// One run as this process knows it.
pub(crate) struct Slot {
    /// Held for as long as anyone drives the run.
    pub(crate) drive: Arc<tokio::sync::Mutex<()>>,
    /// The cancel handle of the drive in progress.
    pub(crate) cancel: Mutex<Option<Cancel>>,
    /// Committed events, as far as this process has seen (drives here update it at once;
    /// readers update it from the journal).
    pub(crate) committed: watch::Sender<u64>,
    pub(crate) driving: AtomicBool,
    pub(crate) events: Mutex<Vec<Arc<EventEntry>>>,
    pub(crate) view: Mutex<Option<(u64, Arc<Inspection>)>>,
    /// What the run's job goes by, once read: a header never changes.
    pub(crate) job: std::sync::OnceLock<JobNames>,
    /// Who owns the run, once read: an ownership never changes while its run exists, and is
    /// forgotten only when the run's submission fails (here, this is then cleared; on
    /// another replica, the journal read that follows answers 404 all the same).
    pub(crate) owner: Mutex<Option<Ownership>>,
    /// The runtime re-deriving the run (models never called), once built from its header's
    /// spec: a header never changes. Taken out while in use; a concurrent reader builds its
    /// own.
    pub(crate) offline: Mutex<Option<Runtime>>,
    /// When it was last handed out, in [`Slots`]' ticks.
    used: AtomicU64,
}

impl Slot {
    fn new(tick: u64) -> Slot {
        Slot {
            drive: Arc::new(tokio::sync::Mutex::new(())),
            cancel: Mutex::new(None),
            committed: watch::Sender::new(0),
            driving: AtomicBool::new(false),
            events: Mutex::new(Vec::new()),
            view: Mutex::new(None),
            job: std::sync::OnceLock::new(),
            owner: Mutex::new(None),
            offline: Mutex::new(None),
            used: AtomicU64::new(tick),
        }
    }

    /// Whether only the map holds it: no request or drive has it, nobody holds its drive
    /// lock or follows its events. Asked under the map's lock, through which alone a slot
    /// is handed out, so the answer cannot change while it is being evicted.
    fn idle(slot: &Arc<Slot>) -> bool {
        Arc::strong_count(slot) == 1
            && Arc::strong_count(&slot.drive) == 1
            && slot.committed.receiver_count() == 0
            && !slot.driving.load(Ordering::SeqCst)
    }
}

/// The slots, by run.
#[derive(Default)]
pub(crate) struct Slots {
    map: HashMap<RunId, Arc<Slot>>,
    /// Counts hand-outs: a slot's `used` is the tick of its last one.
    tick: u64,
}

impl Slots {
    /// The slot of `run`, made on first use (evicting idle slots first when too many are
    /// held).
    pub(crate) fn get_or_make(&mut self, run: &RunId) -> Arc<Slot> {
        self.tick += 1;
        let tick = self.tick;
        if let Some(slot) = self.map.get(run) {
            slot.used.store(tick, Ordering::Relaxed);
            return slot.clone();
        }
        if self.map.len() >= SLOTS_KEPT_MAX {
            self.evict(SLOTS_KEPT_MAX / 2);
        }
        let slot = Arc::new(Slot::new(tick));
        self.map.insert(run.clone(), slot.clone());
        slot
    }

    /// The slot of `run`, if this process holds one.
    pub(crate) fn get(&self, run: &RunId) -> Option<&Arc<Slot>> {
        self.map.get(run)
    }

    /// How many slots are held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }

    /// Drops idle slots, least recently used first, until at most `keep` are held or no
    /// idle one is left.
    fn evict(&mut self, keep: usize) {
        let mut idle: Vec<(u64, RunId)> = self
            .map
            .iter()
            .filter(|(_, slot)| Slot::idle(slot))
            .map(|(run, slot)| (slot.used.load(Ordering::Relaxed), run.clone()))
            .collect();
        idle.sort_unstable();
        let excess = self.map.len().saturating_sub(keep);
        for (_, run) in idle.into_iter().take(excess) {
            self.map.remove(&run);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(index: usize) -> RunId {
        RunId::new(&format!("run-{index}")).expect("a valid run id")
    }

    #[test]
    fn idle_slots_are_evicted_least_recently_used_first() {
        let mut slots = Slots::default();
        for index in 0..SLOTS_KEPT_MAX {
            slots.get_or_make(&run(index));
        }
        // Run 0 is read again: now the most recently used.
        slots.get_or_make(&run(0));
        assert_eq!(slots.len(), SLOTS_KEPT_MAX);
        slots.get_or_make(&run(SLOTS_KEPT_MAX));
        assert_eq!(slots.len(), SLOTS_KEPT_MAX / 2 + 1);
        assert!(slots.get(&run(0)).is_some(), "the slot read last is kept");
        assert!(
            slots.get(&run(1)).is_none(),
            "the oldest idle slot is evicted"
        );
        assert!(slots.get(&run(SLOTS_KEPT_MAX - 1)).is_some());
        assert!(slots.get(&run(SLOTS_KEPT_MAX)).is_some());
    }

    #[test]
    fn slots_in_use_are_never_evicted() {
        let mut slots = Slots::default();
        let held = slots.get_or_make(&run(0));
        let locked = slots.get_or_make(&run(1)).drive.clone().try_lock_owned();
        let followed = slots.get_or_make(&run(2)).committed.subscribe();
        slots
            .get_or_make(&run(3))
            .driving
            .store(true, Ordering::SeqCst);
        for index in 4..SLOTS_KEPT_MAX * 3 {
            slots.get_or_make(&run(index));
        }
        assert!(slots.len() <= SLOTS_KEPT_MAX, "held {}", slots.len());
        for index in 0..4 {
            assert!(
                slots.get(&run(index)).is_some(),
                "slot {index} in use was evicted"
            );
        }
        assert!(Arc::ptr_eq(&held, &slots.get_or_make(&run(0))));
        drop((held, locked, followed));
        slots
            .get_or_make(&run(3))
            .driving
            .store(false, Ordering::SeqCst);
        for index in SLOTS_KEPT_MAX * 3..SLOTS_KEPT_MAX * 5 {
            slots.get_or_make(&run(index));
        }
        for index in 0..4 {
            assert!(
                slots.get(&run(index)).is_none(),
                "idle slot {index} was kept"
            );
        }
    }
}
