//! CPU-bound work of one large append or load (or one wide cycle) spread over the machine's
//! cores.
//!
//! Encoding a cycle's outcomes, compressing its groups of records and reading them back are
//! pure functions of their input, and for a cycle of many agents they are most of what a
//! commit costs outside storage; the runtime executes a cycle's synchronous agents the same
//! way. [`map`] splits such work into contiguous parts, one per
//! core (at most [`THREADS_MAX`]), on scoped threads, and returns the results in input
//! order, so what is stored never depends on how the work was split. Small work stays on
//! the calling thread: below `min_per_thread` items a part costs more to hand over than it
//! saves. A thread the system refuses to start is not an error; its part runs here instead.

use std::num::NonZero;
use std::sync::OnceLock;

/// Most threads one [`map`] uses, the calling thread included.
pub const THREADS_MAX: usize = 8;

/// The threads [`map`] may use: the cores this process may run on, at most [`THREADS_MAX`].
fn threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, NonZero::get)
            .clamp(1, THREADS_MAX)
    })
}

/// `items` mapped by `f`, in order; split over up to [`THREADS_MAX`] threads (one per core)
/// when each would get at least `min_per_thread` items.
///
/// ```
/// let squares = converge_journal::parallel::map((0..10_000u64).collect(), 1000, |n| n * n);
/// assert_eq!(squares[9_999], 9_999 * 9_999);
/// ```
pub fn map<T: Send, U: Send>(
    items: Vec<T>,
    min_per_thread: usize,
    f: impl Fn(T) -> U + Sync,
) -> Vec<U> {
    let threads = threads().min(items.len() / min_per_thread.max(1));
    if threads < 2 {
        return items.into_iter().map(f).collect();
    }
    let per_part = items.len().div_ceil(threads);
    let mut rest = items.into_iter();
    let parts: Vec<Vec<T>> = (0..threads)
        .map(|_| rest.by_ref().take(per_part).collect())
        .collect();
    let f = &f;
    std::thread::scope(|scope| {
        let mut parts = parts.into_iter();
        let here = parts.next().unwrap_or_default();
        // Each later part goes to a thread of its own once the thread runs; a part whose
        // thread could not start keeps its items and runs below.
        let started: Vec<Result<_, Vec<T>>> = parts
            .map(|part| {
                let (sender, receiver) = std::sync::mpsc::channel::<Vec<T>>();
                let spawned = std::thread::Builder::new()
                    .name("converge-journal-work".to_owned())
                    .spawn_scoped(scope, move || {
                        let part = receiver.recv().unwrap_or_default();
                        part.into_iter().map(f).collect::<Vec<U>>()
                    });
                match spawned {
                    Ok(handle) => sender.send(part).map(|()| handle).map_err(|error| error.0),
                    Err(_) => Err(part),
                }
            })
            .collect();
        let mut mapped: Vec<U> = here.into_iter().map(f).collect();
        for part in started {
            match part {
                Ok(handle) => match handle.join() {
                    Ok(done) => mapped.extend(done),
                    Err(panic) => std::panic::resume_unwind(panic),
                },
                Err(kept) => mapped.extend(kept.into_iter().map(f)),
            }
        }
        mapped
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_the_order_of_the_items_however_they_are_split() {
        let items: Vec<u64> = (0..10_001).collect();
        for min_per_thread in [1, 7, 1000, 5000, 20_000] {
            let mapped = map(items.clone(), min_per_thread, |n| n * 3);
            assert_eq!(mapped, items.iter().map(|n| n * 3).collect::<Vec<_>>());
        }
        assert!(map(Vec::<u64>::new(), 1, |n| n).is_empty());
    }
}
