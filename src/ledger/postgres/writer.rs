//! The PostgreSQL ledger's one writer thread, the twin of the SQLite writer: it owns the
//! station's writer connection (which holds the station's lock), and commits whatever changes
//! are waiting (up to 1024) in one transaction (group commit), so many devices share one
//! round of COMMIT and its WAL flush. Each change runs in a savepoint: a failing one fails only
//! itself. A change's answer is sent after the COMMIT, so it is durable when its caller goes
//! on. A lost connection fails every change from then on (and has dropped the station's lock
//! with it): the line stops, as for any ledger that cannot write.
//!
//! The synchronous `postgres` client runs tokio-postgres on a small runtime of its own, which
//! must not be entered from inside the station's runtime: the connection is made, and used,
//! only on this thread.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use postgres::Client;
use tokio::sync::oneshot;

use super::connect::describe;
use super::journal::{Statements, Tx};
use crate::ledger::LedgerError;
use crate::ledger::backend::Pending;

/// How many changes may wait for the writer before callers wait to submit.
const QUEUE: usize = 16_384;
/// The most changes one transaction commits.
const BATCH: usize = 1024;

/// What a change's closure returns.
type Outcome<T> = Result<T, postgres::Error>;

/// One change waiting for the writer.
trait Task: Send {
    /// Runs the change inside the writer's transaction.
    fn run(&mut self, tx: &mut Tx<'_, '_>) -> Outcome<()>;
    /// Answers the caller: `Err` with why when the change or the commit failed.
    fn answer(self: Box<Self>, outcome: Result<(), String>);
}

/// A change that answers a `T`.
struct Job<T, F> {
    change: Option<F>,
    value: Option<T>,
    ack: oneshot::Sender<Result<T, LedgerError>>,
    ledger: Arc<str>,
}

impl<T, F> Task for Job<T, F>
where
    T: Send,
    F: FnOnce(&mut Tx<'_, '_>) -> Outcome<T> + Send,
{
    fn run(&mut self, tx: &mut Tx<'_, '_>) -> Outcome<()> {
        let change = self.change.take().expect("a change runs once");
        self.value = Some(change(tx)?);
        Ok(())
    }

    fn answer(self: Box<Self>, outcome: Result<(), String>) {
        let Job {
            value, ack, ledger, ..
        } = *self;
        let result = outcome
            .and_then(|()| value.ok_or_else(|| "the change did not run".to_string()))
            .map_err(|reason| LedgerError::Write {
                path: ledger.to_string().into(),
                reason,
            });
        let _ = ack.send(result);
    }
}

/// The writer thread. Dropped with the last ledger handle: the thread commits what is queued
/// and ends, closing the connection, which releases the station's lock.
pub(super) struct Writer {
    tx: Option<Sender<Box<dyn Task>>>,
    thread: Option<JoinHandle<()>>,
    ledger: Arc<str>,
}

impl Writer {
    /// Starts the writer thread: `setup` runs there first (it connects, takes the station's
    /// lock, migrates) and its answer is returned here; on success the thread goes on
    /// committing changes on the connection `setup` made.
    pub(super) fn start<S: Send + 'static>(
        ledger: &str,
        setup: impl FnOnce() -> Result<(Client, S), LedgerError> + Send + 'static,
    ) -> Result<(Writer, S), LedgerError> {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || match setup() {
                Ok((client, s)) => {
                    let _ = ready_tx.send(Ok(s));
                    writer_loop(client, rx);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .map_err(|e| LedgerError::Postgres {
                ledger: ledger.to_string(),
                reason: format!("cannot start the ledger writer thread: {e}"),
            })?;
        let ready = ready_rx.recv().unwrap_or(Err(LedgerError::Stopped));
        let mut writer = Writer {
            tx: Some(tx),
            thread: Some(thread),
            ledger: ledger.into(),
        };
        match ready {
            Ok(s) => Ok((writer, s)),
            Err(e) => {
                writer.stop();
                Err(e)
            }
        }
    }

    /// Queues `change`; the answer comes once it is committed.
    pub(super) fn submit<T, F>(&self, change: F) -> Pending<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Tx<'_, '_>) -> Outcome<T> + Send + 'static,
    {
        let (ack, pending) = Pending::channel();
        let job = Box::new(Job {
            change: Some(change),
            value: None,
            ack,
            ledger: self.ledger.clone(),
        });
        let sent = self.tx.as_ref().map(|tx| tx.send(job));
        match sent {
            Some(Ok(())) => pending,
            _ => Pending::ready(Err(LedgerError::Stopped)),
        }
    }

    fn stop(&mut self) {
        // The last sender goes: the thread drains the queue and ends.
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn writer_loop(mut client: Client, rx: Receiver<Box<dyn Task>>) {
    let mut statements = Statements::default();
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(task) => batch.push(task),
                Err(_) => break,
            }
        }
        let mut tx = match client.transaction() {
            Ok(tx) => tx,
            Err(e) => {
                let reason = describe(&e);
                for task in batch {
                    task.answer(Err(reason.clone()));
                }
                continue;
            }
        };
        let mut ran = Vec::with_capacity(batch.len());
        for mut task in batch {
            // Each change in its own savepoint: committed with the others, or rolled back
            // alone (a savepoint dropped without commit is rolled back).
            let r = tx.transaction().and_then(|mut savepoint| {
                task.run(&mut Tx {
                    tx: &mut savepoint,
                    statements: &mut statements,
                })?;
                savepoint.commit()
            });
            ran.push((task, r.map_err(|e| describe(&e))));
        }
        let committed = tx.commit().map_err(|e| describe(&e));
        for (task, r) in ran {
            task.answer(committed.clone().and(r));
        }
    }
}
