//! The SQLite ledger's one writer thread: changes wait on a channel, and the writer commits
//! whatever is waiting (up to 1024) in one transaction (group commit), so many devices share
//! one disk sync. Each change runs in a savepoint: a failing one fails only itself. A change's
//! answer is sent after the commit, so it is durable when its caller goes on.

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::oneshot;

use super::lock::LedgerLock;
use crate::ledger::LedgerError;
use crate::ledger::backend::Pending;

/// How many changes may wait for the writer before callers wait to submit.
const QUEUE: usize = 16_384;
/// The most changes one transaction commits.
const BATCH: usize = 1024;

/// One change waiting for the writer.
trait Task: Send {
    /// Runs the change inside the writer's transaction.
    fn run(&mut self, tx: &Transaction<'_>) -> rusqlite::Result<()>;
    /// Answers the caller: `Err` with why when the change or the commit failed.
    fn answer(self: Box<Self>, outcome: Result<(), String>);
}

/// A change that answers a `T`.
struct Job<T, F> {
    change: Option<F>,
    value: Option<T>,
    ack: oneshot::Sender<Result<T, LedgerError>>,
    path: Arc<Path>,
}

impl<T, F> Task for Job<T, F>
where
    T: Send,
    F: FnOnce(&Transaction<'_>) -> rusqlite::Result<T> + Send,
{
    fn run(&mut self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        let change = self.change.take().expect("a change runs once");
        self.value = Some(change(tx)?);
        Ok(())
    }

    fn answer(self: Box<Self>, outcome: Result<(), String>) {
        let Job {
            value, ack, path, ..
        } = *self;
        let result = outcome
            .and_then(|()| value.ok_or_else(|| "the change did not run".to_string()))
            .map_err(|reason| LedgerError::Write {
                path: path.to_path_buf(),
                reason,
            });
        let _ = ack.send(result);
    }
}

/// The writer thread and the one-writer lock. Dropped with the last ledger handle: the
/// thread commits what is queued and ends, then the lock is released.
pub(super) struct Writer {
    tx: Option<Sender<Box<dyn Task>>>,
    thread: Option<JoinHandle<()>>,
    path: Arc<Path>,
    /// Dropped after the writer thread has finished (fields drop after `drop`), so the next
    /// station cannot open the ledger while this one still commits.
    _lock: LedgerLock,
}

impl Writer {
    /// Starts the writer thread on `conn`, holding `lock` until it ends.
    pub(super) fn start(conn: Connection, path: &Path, lock: LedgerLock) -> Writer {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let thread = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .expect("spawn ledger writer");
        Writer {
            tx: Some(tx),
            thread: Some(thread),
            path: path.into(),
            _lock: lock,
        }
    }

    /// Queues `change`; the answer comes once it is committed.
    pub(super) fn submit<T, F>(&self, change: F) -> Pending<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> rusqlite::Result<T> + Send + 'static,
    {
        let (ack, pending) = Pending::channel();
        let job = Box::new(Job {
            change: Some(change),
            value: None,
            ack,
            path: self.path.clone(),
        });
        let sent = self.tx.as_ref().map(|tx| tx.send(job));
        match sent {
            Some(Ok(())) => pending,
            _ => Pending::ready(Err(LedgerError::Stopped)),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // The last sender goes: the thread drains the queue and ends.
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn writer_loop(mut conn: Connection, rx: Receiver<Box<dyn Task>>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(task) => batch.push(task),
                Err(_) => break,
            }
        }
        // One transaction, one sync, for the whole batch. A failing change fails only itself
        // (its savepoint is rolled back); the others commit. The write lock is taken at BEGIN,
        // where SQLite's busy handler waits for it: a deferred transaction that reads first
        // and upgrades later fails at once when another connection wrote in between.
        let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => {
                for task in batch {
                    task.answer(Err(e.to_string()));
                }
                continue;
            }
        };
        let mut ran = Vec::with_capacity(batch.len());
        for mut task in batch {
            // Prepared once and kept: parsing these for every change cost as much as the
            // changes' own statements.
            let r = savepoint(&tx, "SAVEPOINT op")
                .and_then(|_| task.run(&tx))
                .and_then(|_| savepoint(&tx, "RELEASE op"));
            if r.is_err() {
                let _ = savepoint(&tx, "ROLLBACK TO op").and_then(|_| savepoint(&tx, "RELEASE op"));
            }
            ran.push((task, r.map_err(|e| e.to_string())));
        }
        let committed = tx.commit().map_err(|e| e.to_string());
        for (task, r) in ran {
            task.answer(committed.clone().and(r));
        }
    }
}

/// Runs one savepoint statement from the connection's statement cache.
fn savepoint(tx: &Transaction<'_>, sql: &str) -> rusqlite::Result<()> {
    tx.prepare_cached(sql)?.execute([]).map(drop)
}
