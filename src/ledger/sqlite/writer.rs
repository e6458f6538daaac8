//! The SQLite ledger's one writer thread: changes wait on a channel, and the writer commits
//! whatever is waiting (up to 1024) in one transaction (group commit), so many devices share
//! one disk sync. A failing change fails only itself: the batch first runs without savepoints
//! and, only if a change in it fails, is rolled back and run again with one savepoint per
//! change (a savepoint per change cost two statements and a copy of every page the change
//! touched into the statement journal, on every change). A change may therefore run twice; it
//! is a function of the database (and the clock), so its second run is the one that counts.
//! A change's answer is sent after the commit, so it is durable when its caller goes on.

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
    /// Runs the change inside the writer's transaction (again, if a rolled-back batch held it).
    fn run(&mut self, tx: &Transaction<'_>) -> rusqlite::Result<()>;
    /// Answers the caller: `Err` with why when the change or the commit failed.
    fn answer(self: Box<Self>, outcome: Result<(), String>);
}

/// A change that answers a `T`.
struct Job<T, F> {
    change: F,
    value: Option<T>,
    ack: oneshot::Sender<Result<T, LedgerError>>,
    path: Arc<Path>,
}

impl<T, F> Task for Job<T, F>
where
    T: Send,
    F: Fn(&Transaction<'_>) -> rusqlite::Result<T> + Send,
{
    fn run(&mut self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        self.value = None;
        self.value = Some((self.change)(tx)?);
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

    /// Queues `change`; the answer comes once it is committed. `change` may run twice (see the
    /// module header): only the run in the committed transaction counts.
    pub(super) fn submit<T, F>(&self, change: F) -> Pending<T>
    where
        T: Send + 'static,
        F: Fn(&Transaction<'_>) -> rusqlite::Result<T> + Send + 'static,
    {
        let (ack, pending) = Pending::channel();
        let job = Box::new(Job {
            change,
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
        // One transaction, one sync, for the whole batch: first without savepoints; if a
        // change fails, the batch is rolled back and run again with one savepoint per change.
        let answers = match commit_whole(&mut conn, &mut batch) {
            Ok(()) => vec![Ok(()); batch.len()],
            Err(Whole::ChangeFailed) => commit_each(&mut conn, &mut batch),
            Err(Whole::Commit(e)) => vec![Err(e); batch.len()],
        };
        for (task, answer) in batch.into_iter().zip(answers) {
            task.answer(answer);
        }
    }
}

/// Why a batch was not committed whole.
enum Whole {
    /// A change failed: the transaction was rolled back, nothing of the batch is stored.
    ChangeFailed,
    /// BEGIN or COMMIT failed: every change of the batch fails with this.
    Commit(String),
}

/// The write lock is taken at BEGIN, where SQLite's busy handler waits for it: a deferred
/// transaction that reads first and upgrades later fails at once when another connection
/// wrote in between.
fn begin(conn: &mut Connection) -> Result<Transaction<'_>, String> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| e.to_string())
}

/// Runs every change of `batch` in one transaction and commits it.
fn commit_whole(conn: &mut Connection, batch: &mut [Box<dyn Task>]) -> Result<(), Whole> {
    let tx = begin(conn).map_err(Whole::Commit)?;
    for task in batch.iter_mut() {
        if task.run(&tx).is_err() {
            // Dropping the transaction rolls it back.
            return Err(Whole::ChangeFailed);
        }
    }
    tx.commit().map_err(|e| Whole::Commit(e.to_string()))
}

/// Runs each change of `batch` in a savepoint of one transaction: a failing change is rolled
/// back alone and answered with its error; the others commit.
fn commit_each(conn: &mut Connection, batch: &mut [Box<dyn Task>]) -> Vec<Result<(), String>> {
    let tx = match begin(conn) {
        Ok(tx) => tx,
        Err(e) => return vec![Err(e); batch.len()],
    };
    let mut ran = Vec::with_capacity(batch.len());
    for task in batch.iter_mut() {
        // Prepared once and kept: parsing these for every change cost as much as the
        // changes' own statements.
        let r = savepoint(&tx, "SAVEPOINT op")
            .and_then(|_| task.run(&tx))
            .and_then(|_| savepoint(&tx, "RELEASE op"));
        if r.is_err() {
            let _ = savepoint(&tx, "ROLLBACK TO op").and_then(|_| savepoint(&tx, "RELEASE op"));
        }
        ran.push(r.map_err(|e| e.to_string()));
    }
    let committed = tx.commit().map_err(|e| e.to_string());
    ran.into_iter().map(|r| committed.clone().and(r)).collect()
}

/// Runs one savepoint statement from the connection's statement cache.
fn savepoint(tx: &Transaction<'_>, sql: &str) -> rusqlite::Result<()> {
    tx.prepare_cached(sql)?.execute([]).map(drop)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::ledger::tests::{BatchGate, assert_only_the_failing_change_failed};

    /// A batch holding a failing change: the failing one answers its error, the others are
    /// committed once (after the batch ran again with savepoints).
    #[test]
    fn a_failing_change_fails_only_itself_and_the_rest_of_its_batch_commits_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("writer.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY); INSERT INTO t VALUES ('taken');")
            .unwrap();
        let writer = Writer::start(conn, &path, LedgerLock::acquire(&path, "st").unwrap());

        let (gate, hold) = BatchGate::hold();
        let first = writer.submit(move |_| {
            hold();
            Ok(())
        });
        gate.held();
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        let before = writer.submit(move |tx| {
            counted.fetch_add(1, Ordering::SeqCst);
            tx.execute("INSERT INTO t VALUES ('before')", [])
        });
        let failing = writer.submit(|tx| tx.execute("INSERT INTO t VALUES ('taken')", []));
        let after = writer.submit(|tx| tx.execute("INSERT INTO t VALUES ('after')", []));
        gate.release();

        first.wait_blocking().unwrap();
        assert_only_the_failing_change_failed(
            before.wait_blocking(),
            failing.wait_blocking(),
            after.wait_blocking(),
            "UNIQUE",
            runs.load(Ordering::SeqCst),
        );
        drop(writer);
        let conn = Connection::open(&path).unwrap();
        let keys: Vec<String> = conn
            .prepare("SELECT k FROM t ORDER BY k")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(keys, ["after", "before", "taken"]);
    }
}
