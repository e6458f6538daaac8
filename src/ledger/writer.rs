//! The ledger's one writer thread: jobs wait on a channel, and the writer commits whatever
//! is waiting in one transaction (group commit), so many devices share one disk sync. Each
//! job runs in a savepoint: a failing one fails only itself.

use std::sync::Mutex;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use rusqlite::Connection;
use tokio::sync::oneshot;

use super::lock::LedgerLock;

/// One change, run inside the writer's transaction; returns a row id.
pub(super) type Job =
    Box<dyn FnOnce(&rusqlite::Transaction<'_>) -> Result<i64, rusqlite::Error> + Send>;

pub(super) struct Op {
    pub job: Job,
    pub ack: oneshot::Sender<Result<i64, String>>,
}

/// Owns the writer thread (joined when the last ledger handle goes) and the ledger lock.
pub(super) struct WriterGuard {
    pub handle: Mutex<Option<JoinHandle<()>>>,
    pub stop_tx: Mutex<Option<Sender<Op>>>,
    /// Dropped after the writer thread has finished (fields drop after `drop`), so the next
    /// station cannot open the ledger while this one still commits.
    pub _lock: LedgerLock,
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        self.stop_tx.lock().expect("ledger lock").take();
        if let Some(h) = self.handle.lock().expect("ledger lock").take() {
            let _ = h.join();
        }
    }
}

pub(super) fn writer_loop(mut conn: Connection, rx: Receiver<Op>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < 1024 {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        // One transaction, one sync, for the whole batch. A failing job fails only itself
        // (its savepoint is rolled back); the others commit. The write lock is taken at BEGIN,
        // where SQLite's busy handler waits for it: a deferred transaction that reads first
        // and upgrades later fails at once when another connection wrote in between.
        let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => {
                for op in batch {
                    let _ = op.ack.send(Err(e.to_string()));
                }
                continue;
            }
        };
        let mut results = Vec::with_capacity(batch.len());
        for op in batch {
            let r = tx
                .execute_batch("SAVEPOINT op")
                .and_then(|_| (op.job)(&tx))
                .and_then(|v| tx.execute_batch("RELEASE op").map(|_| v));
            if r.is_err() {
                let _ = tx.execute_batch("ROLLBACK TO op; RELEASE op");
            }
            results.push((op.ack, r.map_err(|e| e.to_string())));
        }
        let committed = tx.commit();
        for (ack, r) in results {
            let r = match &committed {
                Ok(()) => r,
                Err(e) => Err(e.to_string()),
            };
            let _ = ack.send(r);
        }
    }
}
