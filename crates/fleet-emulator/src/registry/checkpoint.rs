//! The registry's checkpoints, off the writer thread. SQLite's automatic checkpoint runs in
//! the commit that crosses its threshold, so that commit, and every reply waiting behind it,
//! waits while the WAL's pages are copied into the database and synced. Here the writer's
//! connection only reports the WAL's length after each commit (`sqlite3_wal_hook`); once it
//! reaches [`WAL_CHECKPOINT_PAGES`], a thread of its own with its own connection runs a
//! `PASSIVE` checkpoint, which never blocks the writer (SQLite restarts the WAL at the next
//! commit after a checkpoint that copied every frame).

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Receiver;
use rusqlite::Connection;

/// WAL pages after which a checkpoint copies them into the database: SQLite's automatic
/// default. (8,000 was tried: fewer copies of pages written twice, but each checkpoint's
/// burst of writes delayed the ledger's syncs on the same disk: `docs/performance.md`.)
pub(super) const WAL_CHECKPOINT_PAGES: i32 = 1000;

/// Checkpoints that copied the whole WAL, counted for tests to wait on.
#[derive(Default)]
pub(super) struct Done {
    count: std::sync::Mutex<u64>,
    changed: std::sync::Condvar,
}

impl Done {
    fn add(&self) {
        *self.count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.changed.notify_all();
    }

    /// Waits until `n` checkpoints have copied the whole WAL.
    #[cfg(test)]
    pub(super) fn wait_for(&self, n: u64) {
        let count = self.count.lock().unwrap();
        let (count, timeout) = self
            .changed
            .wait_timeout_while(count, std::time::Duration::from_secs(30), |c| *c < n)
            .unwrap();
        assert!(!timeout.timed_out(), "{} of {n} checkpoints", *count);
    }
}

/// The checkpoint thread. Dropped after the writer's connection (which holds the sending
/// side in its WAL hook): the thread then sees the channel closed and ends.
pub(super) struct Checkpointer {
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Turns `writer`'s automatic checkpoints off and starts the thread that checkpoints the
    /// database at `path` when the writer's WAL reaches [`WAL_CHECKPOINT_PAGES`].
    pub(super) fn start(
        writer: &mut Connection,
        path: &Path,
        done: Arc<Done>,
    ) -> rusqlite::Result<Checkpointer> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // One signal waiting is enough: a checkpoint copies whatever the WAL holds by then.
        let (tx, rx) = crossbeam_channel::bounded::<()>(1);
        // Installing the hook replaces SQLite's automatic checkpoint on this connection.
        writer.wal_hook(Some(move |_wal: &mut rusqlite::hooks::Wal, pages: i32| {
            if pages >= WAL_CHECKPOINT_PAGES {
                // Full: a checkpoint is already due. Gone: the thread failed to start, and
                // SQLite checkpoints when the last connection closes; nothing is lost.
                let _ = tx.try_send(());
            }
            Ok(())
        }))?;
        let thread = std::thread::Builder::new()
            .name("registry-checkpoint".into())
            .spawn(move || checkpoint_loop(conn, rx, &done))
            .expect("spawn registry checkpoint thread");
        Ok(Checkpointer {
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn checkpoint_loop(conn: Connection, rx: Receiver<()>, done: &Done) {
    while rx.recv().is_ok() {
        match conn.query_row("PRAGMA main.wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        }) {
            Ok((log, copied)) => {
                tracing::debug!(log, copied, "emulator registry: checkpoint");
                if copied == log {
                    done.add();
                }
            }
            // A checkpoint that fails leaves the WAL as it was (the data is in it); the next
            // signal tries again.
            Err(e) => tracing::warn!(error = %e, "emulator registry: a checkpoint failed"),
        }
    }
}
