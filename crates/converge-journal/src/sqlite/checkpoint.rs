//! Checkpointing a journal's write-ahead log on a thread of its own, off the commit path.
//!
//! In WAL mode a commit is durable once its frames are in the log and the log is synced; a
//! checkpoint later copies those pages into the database file and syncs it. By default SQLite
//! checkpoints inside the commit that takes the log past 1,000 pages, so that commit also waits
//! for the copy and a second fsync: for a wide cycle (21 MB for 100,000 facts) that doubled the
//! write. SQLite's WAL documentation names the alternative used here: automatic checkpoints off,
//! and checkpoints run by another thread. The writing connection's WAL hook records the log's
//! size after each commit; past [`CHECKPOINT_PAGES`] the writer wakes a [`Checkpointer`]
//! thread, which runs a `PASSIVE` checkpoint on its own connection (it never blocks the writer
//! or readers) with the same `synchronous=FULL`.
//!
//! The log stays bounded: wake-ups go through a channel of one (a wake-up while a checkpoint
//! is pending is already served by it), and should the log reach [`WAL_PAGES_MAX`] anyway —
//! the thread could not start, or checkpoints fall behind a writer — the commit checkpoints
//! inline, as SQLite would. The thread is started at the first wake-up, so a handle that
//! writes little never starts one, and it is stopped and joined when the handle is dropped,
//! before the writing connection closes: that connection is then the last and, as SQLite does
//! on the last close, checkpoints the rest and removes the log.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

use rusqlite::wal::CheckpointMode;
use rusqlite::{Connection, OpenFlags};

use super::schema::{BUSY_TIMEOUT, DURABILITY};

/// Log size, in pages, past which a commit wakes the checkpointer: SQLite's own default for
/// automatic checkpoints (about 4 MB with 4 KB pages).
pub(crate) const CHECKPOINT_PAGES: i32 = 1000;

/// Log size, in pages, past which a commit checkpoints inline instead of leaving it to the
/// thread (256 MB with 4 KB pages): the bound on the log whatever happens to the thread.
pub(crate) const WAL_PAGES_MAX: i32 = 65_536;

/// The checkpointing thread of one writing handle, started at its first wake-up.
#[derive(Debug)]
pub(crate) struct Checkpointer {
    path: PathBuf,
    /// Pages in the log after the latest commit on the writing connection.
    pages: Arc<AtomicI32>,
    thread: Option<Running>,
}

#[derive(Debug)]
struct Running {
    wake: SyncSender<()>,
    handle: JoinHandle<()>,
}

impl Checkpointer {
    /// Turns off `conn`'s automatic checkpoints in favour of a checkpointer for the journal at
    /// `path`; `conn` keeps checkpointing inline past [`WAL_PAGES_MAX`].
    pub(crate) fn install(conn: &mut Connection, path: &Path) -> rusqlite::Result<Checkpointer> {
        let pages = Arc::new(AtomicI32::new(0));
        let seen = Arc::clone(&pages);
        conn.wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, logged: i32| {
            seen.store(logged, Ordering::Relaxed);
            if logged >= WAL_PAGES_MAX {
                // The commit has happened; a checkpoint that cannot finish now is retried
                // after the next one, as SQLite's own automatic checkpoint is.
                let _ = wal.checkpoint_v2(CheckpointMode::PASSIVE);
            }
            Ok(())
        }))?;
        Ok(Checkpointer {
            path: path.to_path_buf(),
            pages,
            thread: None,
        })
    }

    /// Called after each commit: wakes the thread (starting it the first time) once the log
    /// has grown past [`CHECKPOINT_PAGES`]. If the thread cannot run, `conn` checkpoints now.
    pub(crate) fn committed(&mut self, conn: &Connection) {
        if self.pages.load(Ordering::Relaxed) < CHECKPOINT_PAGES {
            return;
        }
        if self.thread.is_none() {
            self.thread = Running::start(&self.path);
        }
        let woken = match &self.thread {
            Some(running) => match running.wake.try_send(()) {
                Ok(()) | Err(TrySendError::Full(())) => true,
                Err(TrySendError::Disconnected(())) => false,
            },
            None => false,
        };
        if !woken {
            let _ = conn.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE);
        }
    }
}

impl Running {
    /// Starts the thread, or `None` if the system refuses a thread.
    fn start(path: &Path) -> Option<Running> {
        let (wake, woken) = sync_channel(1);
        let path = path.to_path_buf();
        let handle = std::thread::Builder::new()
            .name("converge-checkpoint".to_owned())
            .spawn(move || checkpoint_when_woken(&path, &woken))
            .ok()?;
        Some(Running { wake, handle })
    }
}

/// The thread: its own connection, one `PASSIVE` checkpoint per wake-up, until the writing
/// handle hangs up. A connection that cannot be opened ends the thread, and the writer then
/// checkpoints inline.
fn checkpoint_when_woken(path: &Path, woken: &Receiver<()>) {
    let Ok(conn) = open(path) else {
        return;
    };
    while woken.recv().is_ok() {
        // A failed checkpoint loses nothing: the pages stay in the log for the next one.
        let _ = conn.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE);
    }
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    for (pragma, value) in DURABILITY {
        conn.pragma_update(None, pragma, value)?;
    }
    Ok(conn)
}

impl Drop for Checkpointer {
    /// Hangs up and waits for a checkpoint under way, so that the writing connection closes
    /// last.
    fn drop(&mut self) {
        if let Some(Running { wake, handle }) = self.thread.take() {
            drop(wake);
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("converge-checkpoint-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        dir.join("journal.db")
    }

    fn wal_bytes(path: &Path) -> u64 {
        std::fs::metadata(format!("{}-wal", path.display())).map_or(0, |meta| meta.len())
    }

    /// Commits of 4 KB rows past the threshold are copied into the database file by the
    /// thread, so the log restarts instead of growing: after 20 MB committed in 40 commits it
    /// holds a few checkpoints' worth, not the 20 MB.
    #[test]
    fn the_thread_keeps_the_log_from_growing() {
        let path = scratch("bounded");
        let mut conn = Connection::open(&path).expect("open");
        conn.pragma_update(None, "journal_mode", "WAL")
            .expect("wal");
        let mut checkpointer = Checkpointer::install(&mut conn, &path).expect("install");
        conn.execute_batch("CREATE TABLE t (b BLOB)")
            .expect("table");
        let row = vec![7u8; 4000];
        for _ in 0..40 {
            let tx = conn.unchecked_transaction().expect("begin");
            for _ in 0..128 {
                tx.execute("INSERT INTO t VALUES (?1)", [&row])
                    .expect("insert");
            }
            tx.commit().expect("commit");
            checkpointer.committed(&conn);
            // Gives the thread its turn, as the rest of a cycle would.
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(checkpointer.thread.is_some(), "the thread was started");
        let logged = wal_bytes(&path);
        assert!(
            logged < 12 << 20,
            "the log holds {logged} bytes after 20 MB committed"
        );
        drop(checkpointer);
        drop(conn);
        assert_eq!(wal_bytes(&path), 0, "the last close removes the log");
        let conn = Connection::open(&path).expect("reopen");
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .expect("count");
        assert_eq!(rows, 40 * 128, "every committed row is in the file");
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    /// Below the threshold nothing starts: a handle that writes a little costs no thread.
    #[test]
    fn small_commits_start_no_thread() {
        let path = scratch("small");
        let mut conn = Connection::open(&path).expect("open");
        conn.pragma_update(None, "journal_mode", "WAL")
            .expect("wal");
        let mut checkpointer = Checkpointer::install(&mut conn, &path).expect("install");
        conn.execute_batch("CREATE TABLE t (x INTEGER)")
            .expect("table");
        for x in 0..50 {
            conn.execute("INSERT INTO t VALUES (?1)", [x])
                .expect("insert");
            checkpointer.committed(&conn);
        }
        assert!(checkpointer.thread.is_none());
        drop(checkpointer);
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }
}
