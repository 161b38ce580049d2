//! A run's event encodings packed on another thread while the run goes on.
//!
//! Merging a cycle of many agents emits their events' encodings for the whole cycle before
//! the step is taken; holding them all until the commit touches tens of MiB of new memory,
//! and compressing them all then puts that work on the commit's path. A driver instead gives
//! the run a [`PackingSink`] ([`packer`]): the run hands it each group of encodings as it
//! fills ([`converge_core::EncodingSink`]), a thread of the packer compresses the group as
//! the journal stores it and gives the buffer back for the next group, and the driver takes
//! the packed groups of each step with [`Packed::take`] and joins them to its
//! [`PendingStep`] ([`PendingStep::with_packed`]). The journal stores them as the step's first
//! chunks, after checking that they are exactly the events the batch says were handed
//! over; what is stored is byte for byte what packing the whole batch at the commit stores.
//!
//! Groups in flight are bounded ([`GROUPS_IN_FLIGHT_MAX`]): a run that emits faster than
//! the thread packs waits for it. Packed groups wait for their step to be taken; they are
//! that step's chunks, which its commit holds in memory anyway. The thread starts with the first full group, so a run
//! whose steps are all small never starts one, and it ends when the run drops the sink. A
//! thread the system refuses to start is not an error: groups are then packed as they are
//! handed over.

use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};

use converge_core::{EncodingSink, Encodings, EventBatch};

use crate::PendingStep;
use crate::pack::{self, GROUP_BYTES_MAX, Index};

/// Most full groups handed over and not yet packed; a run handing over one more waits.
pub const GROUPS_IN_FLIGHT_MAX: usize = 16;

/// Most emptied buffers waiting to be reused; more are freed.
const BUFFERS_SPARE_MAX: usize = 4;

/// A sink for a run's encodings and the packed groups it yields: give the sink to the run
/// ([`converge_core::Run::hand_encoded_events_to`]) and take each step's groups from the
/// other half.
///
/// ```
/// use converge_core::agents::SeedAgent;
/// use converge_core::{Context, Engine, Step, execute_isolated};
///
/// let mut engine = Engine::new();
/// for seed in 0..10_000 {
///     engine.register(SeedAgent::new(format!("seed-{seed}"), "hello"));
/// }
/// let mut run = engine.start(Context::new())?;
/// let (sink, mut packed) = converge_journal::packer();
/// run.hand_encoded_events_to(Box::new(sink));
/// let _start = run.take_events();
/// let Step::Execute(batch) = run.next_step() else { unreachable!() };
/// let outcomes: Vec<_> = batch.agents().iter()
///     .map(|&id| (id, execute_isolated(run.agent(id), run.context())))
///     .collect();
/// run.submit(outcomes)?;
/// let cycle = run.take_events();
/// assert!(cycle.handed() > 10_000, "most of the cycle's encodings went to the packer");
/// // Its step goes to the journal as `PendingStep::new(input, cycle).with_packed(groups)`.
/// let groups = packed.take(&cycle)?;
/// assert_eq!(groups.events(), cycle.handed());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn packer() -> (PackingSink, Packed) {
    let (results, received) = mpsc::channel();
    (
        PackingSink {
            mode: Mode::Idle { results },
        },
        Packed { received },
    )
}

/// The half of a [`packer`] a run hands its full groups of encodings to.
pub struct PackingSink {
    mode: Mode,
}

enum Mode {
    /// No group handed over yet.
    Idle {
        results: Sender<Result<PackedGroup, u64>>,
    },
    /// Groups go to the packing thread, emptied buffers come back.
    Threaded {
        groups: SyncSender<Encodings>,
        spare: Spare,
    },
    /// The thread could not start: groups are packed as they are handed over.
    Inline {
        results: Sender<Result<PackedGroup, u64>>,
    },
}

impl EncodingSink for PackingSink {
    fn fits(&self, count: usize, bytes: usize, len: usize) -> bool {
        pack::fits(count, bytes, len)
    }

    fn take(&mut self, group: Encodings) -> Vec<u8> {
        if let Mode::Idle { results } = &self.mode {
            self.mode = start(results.clone());
        }
        match &self.mode {
            Mode::Threaded { groups, spare } => {
                // A send fails only once the thread has ended (it panicked): the group is
                // then lost, and `Packed::take` says so instead of storing the step.
                let _ = groups.send(group);
                spare.take()
            }
            Mode::Inline { results } | Mode::Idle { results } => {
                let _ = results.send(pack_group(&group));
                group.into_buffer()
            }
        }
    }
}

/// A group buffer's room: a full group, and the encoding that did not fit it, which is
/// appended before the group is handed over.
const BUFFER_BYTES: usize = GROUP_BYTES_MAX + (64 << 10);

/// Emptied group buffers, given back by the packing thread for the run to fill again.
#[derive(Clone, Default)]
struct Spare(Arc<Mutex<Vec<Vec<u8>>>>);

impl Spare {
    /// A spare buffer, or a new one.
    fn take(&self) -> Vec<u8> {
        let mut spare = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BUFFER_BYTES))
    }

    /// Keeps `buffer` for reuse, unless [`BUFFERS_SPARE_MAX`] are kept already.
    fn give(&self, buffer: Vec<u8>) {
        let mut spare = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if spare.len() < BUFFERS_SPARE_MAX {
            spare.push(buffer);
        }
    }
}

/// Starts the packing thread, or packs inline if the system refuses a thread.
fn start(results: Sender<Result<PackedGroup, u64>>) -> Mode {
    let (groups, incoming) = mpsc::sync_channel::<Encodings>(GROUPS_IN_FLIGHT_MAX);
    let spare = Spare::default();
    let (thread_results, thread_spare) = (results.clone(), spare.clone());
    let spawned = std::thread::Builder::new()
        .name("converge-journal-pack".to_owned())
        .spawn(move || {
            for group in incoming {
                if thread_results.send(pack_group(&group)).is_err() {
                    return;
                }
                thread_spare.give(group.into_buffer());
            }
        });
    match spawned {
        Ok(_) => Mode::Threaded { groups, spare },
        Err(_) => Mode::Inline { results },
    }
}

/// A group compressed as the journal stores it; `Err(seq)` names an encoding too large for a
/// group's 32-bit offsets.
fn pack_group(group: &Encodings) -> Result<PackedGroup, u64> {
    let mut index = Index::default();
    let mut start = 0;
    for (at, &end) in group.ends().iter().enumerate() {
        index
            .push(end - start)
            .map_err(|()| group.first_seq() + at as u64)?;
        start = end;
    }
    Ok(PackedGroup {
        first_seq: group.first_seq(),
        count: group.len(),
        sealed: Arc::new(index.seal(group.bytes())),
    })
}

/// The half of a [`packer`] the driver takes each step's packed groups from.
pub struct Packed {
    received: Receiver<Result<PackedGroup, u64>>,
}

impl Packed {
    /// The packed groups of the encodings `events` says were handed over
    /// ([`EventBatch::handed`]), waiting for the packer to finish them. `Err` says why they
    /// cannot be had: the packing thread ended, or an encoding is too large to store.
    pub fn take(&mut self, events: &EventBatch) -> Result<PackedEvents, String> {
        let mut groups = Vec::new();
        let mut covered = 0;
        while covered < events.handed() {
            match self.received.recv() {
                Ok(Ok(group)) => {
                    covered += group.count;
                    groups.push(group);
                }
                Ok(Err(seq)) => {
                    return Err(format!(
                        "event {seq} is larger than the 4 GiB a journal stores"
                    ));
                }
                Err(_) => {
                    return Err(
                        "the thread packing the run's events stopped before packing them"
                            .to_owned(),
                    );
                }
            }
        }
        Ok(PackedEvents { groups })
    }
}

/// The packed groups of one step's handed encodings, in seq order, for
/// [`PendingStep::with_packed`].
#[derive(Debug, Clone, Default)]
pub struct PackedEvents {
    pub(crate) groups: Vec<PackedGroup>,
}

impl PackedEvents {
    /// How many events' encodings the groups hold.
    pub fn events(&self) -> usize {
        self.groups.iter().map(|group| group.count).sum()
    }
}

/// One group of encodings, packed: the end offsets and the compressed bytes, as stored.
#[derive(Debug, Clone)]
pub(crate) struct PackedGroup {
    pub(crate) first_seq: u64,
    pub(crate) count: usize,
    pub(crate) sealed: Arc<(Vec<u8>, Vec<u8>)>,
}

impl PendingStep {
    /// The step with the packed groups of its handed encodings ([`Packed::take`] of its
    /// events); the journal refuses a step whose batch handed encodings over without them.
    pub fn with_packed(mut self, packed: PackedEvents) -> PendingStep {
        self.packed = packed;
        self
    }
}
