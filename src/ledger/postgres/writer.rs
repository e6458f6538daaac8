//! The PostgreSQL ledger's one writer thread, the twin of the SQLite writer: it owns the
//! station's writer connection (which holds the station's lock), and commits whatever changes
//! are waiting (up to 1024) in one transaction (group commit), so many devices share one
//! round of COMMIT and its WAL flush. A failing change fails only itself: as in the SQLite
//! writer, the batch first runs without savepoints and, only if a change fails, is rolled back
//! and run again with one savepoint per change (each `SAVEPOINT` and `RELEASE` is a round trip
//! to the server). A change may therefore run twice; only the committed run counts. A change's
//! answer is sent after the COMMIT, so it is durable when its caller goes
//! on. A lost connection fails every change from then on (and has dropped the station's lock
//! with it): the line stops, as for any ledger that cannot write.
//!
//! Serial leases (`lease`): before a batch's transaction opens, the writer claims the serials
//! of the batch's `begin`s in one autocommit statement, and the batch's changes read what it
//! found ([`Tx::claims`]); every third of the lease it renews its station's leases (also when
//! idle), and on a clean stop it deletes them.
//!
//! The synchronous `postgres` client runs tokio-postgres on a small runtime of its own, which
//! must not be entered from inside the station's runtime: the connection is made, and used,
//! only on this thread.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use postgres::Client;
use tokio::sync::oneshot;

use super::connect::describe;
use super::journal::{ChangeError, Statements, Tx};
use super::lease::Claim;
use super::lease::Leases;
use crate::ledger::LedgerError;
use crate::ledger::backend::Pending;

/// How many changes may wait for the writer before callers wait to submit.
const QUEUE: usize = 16_384;
/// The most changes one transaction commits.
const BATCH: usize = 1024;

/// What a change's closure returns.
type Outcome<T> = Result<T, ChangeError>;

/// Why a change was not recorded, as its caller is told.
#[derive(Debug, Clone)]
enum Failure {
    /// What the server or the connection said.
    Reason(String),
    /// The device's serial is leased to another station now (this one's lease expired).
    LeaseLost { serial: String, holder: String },
}

impl From<ChangeError> for Failure {
    fn from(e: ChangeError) -> Failure {
        match e {
            ChangeError::Pg(e) => Failure::Reason(describe(&e)),
            ChangeError::LeaseLost { serial, holder } => Failure::LeaseLost { serial, holder },
        }
    }
}

/// One change waiting for the writer.
trait Task: Send {
    /// The serial this change claims before the batch's transaction opens (a `begin`).
    fn claims(&self) -> Option<&str>;
    /// Runs the change inside the writer's transaction (again, if a rolled-back batch held it).
    fn run(&mut self, tx: &mut Tx<'_, '_>) -> Outcome<()>;
    /// Answers the caller: `Err` with why when the change or the commit failed.
    fn answer(self: Box<Self>, outcome: Result<(), Failure>);
}

/// A change that answers a `T`.
struct Job<T, F> {
    claim: Option<String>,
    change: F,
    value: Option<T>,
    ack: oneshot::Sender<Result<T, LedgerError>>,
    ledger: Arc<str>,
}

impl<T, F> Task for Job<T, F>
where
    T: Send,
    F: Fn(&mut Tx<'_, '_>) -> Outcome<T> + Send,
{
    fn claims(&self) -> Option<&str> {
        self.claim.as_deref()
    }

    fn run(&mut self, tx: &mut Tx<'_, '_>) -> Outcome<()> {
        self.value = None;
        self.value = Some((self.change)(tx)?);
        Ok(())
    }

    fn answer(self: Box<Self>, outcome: Result<(), Failure>) {
        let Job {
            value, ack, ledger, ..
        } = *self;
        let result = outcome
            .and_then(|()| value.ok_or_else(|| Failure::Reason("the change did not run".into())))
            .map_err(|failure| match failure {
                Failure::Reason(reason) => LedgerError::Write {
                    path: ledger.to_string().into(),
                    reason,
                },
                Failure::LeaseLost { serial, holder } => LedgerError::LeaseLost {
                    ledger: ledger.to_string(),
                    serial,
                    holder,
                },
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
        setup: impl FnOnce() -> Result<(Client, Leases, S), LedgerError> + Send + 'static,
    ) -> Result<(Writer, S), LedgerError> {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || match setup() {
                Ok((client, leases, s)) => {
                    let _ = ready_tx.send(Ok(s));
                    writer_loop(client, leases, rx);
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
        F: Fn(&mut Tx<'_, '_>) -> Outcome<T> + Send + 'static,
    {
        self.submit_claiming(None, change)
    }

    /// Queues `change`, claiming the lease on `serial` first (outside the batch's
    /// transaction); `change` finds what the claim found in [`Tx::claims`].
    pub(super) fn submit_claiming<T, F>(&self, serial: Option<String>, change: F) -> Pending<T>
    where
        T: Send + 'static,
        F: Fn(&mut Tx<'_, '_>) -> Outcome<T> + Send + 'static,
    {
        let (ack, pending) = Pending::channel();
        let job = Box::new(Job {
            claim: serial,
            change,
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

fn writer_loop(mut client: Client, leases: Leases, rx: Receiver<Box<dyn Task>>) {
    let mut statements = Statements::default();
    let renew_every = leases.renew_every();
    let mut renewed = Instant::now();
    loop {
        let first = match rx.recv_timeout(renew_every.saturating_sub(renewed.elapsed())) {
            Ok(task) => task,
            Err(RecvTimeoutError::Timeout) => {
                renew(&mut client, &leases, &mut renewed);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(task) => batch.push(task),
                Err(_) => break,
            }
        }
        if renewed.elapsed() >= renew_every {
            renew(&mut client, &leases, &mut renewed);
        }
        // The batch's claims, in one statement before its transaction opens.
        let mut serials: Vec<String> = batch
            .iter()
            .filter_map(|t| t.claims().map(str::to_string))
            .collect();
        serials.sort_unstable();
        serials.dedup();
        let claims = match serials.is_empty() {
            true => HashMap::new(),
            false => match leases.claim(&mut client, &serials) {
                Ok(claims) => claims,
                Err(e) => {
                    let reason = describe(&e);
                    let (claiming, rest): (Vec<_>, Vec<_>) =
                        batch.into_iter().partition(|t| t.claims().is_some());
                    for task in claiming {
                        task.answer(Err(Failure::Reason(reason.clone())));
                    }
                    batch = rest;
                    if batch.is_empty() {
                        continue;
                    }
                    HashMap::new()
                }
            },
        };
        let answers = match commit_whole(&mut client, &mut statements, &claims, &mut batch) {
            Ok(()) => vec![Ok(()); batch.len()],
            Err(Whole::ChangeFailed) => {
                commit_each(&mut client, &mut statements, &claims, &mut batch)
            }
            Err(Whole::Commit(failure)) => vec![Err(failure); batch.len()],
        };
        for (task, answer) in batch.into_iter().zip(answers) {
            task.answer(answer);
        }
    }
    // A clean stop: what this station still holds can be taken over at once, and its id is
    // free as soon as this returns (not only once the server has seen the connection close).
    if let Err(e) = leases.release_all(&mut client) {
        tracing::warn!(error = %describe(&e), "the ledger's serial leases of this station were not released; they expire after station.lease_s");
    }
    let _ = client.batch_execute("SELECT pg_advisory_unlock_all()");
}

/// Why a batch was not committed whole.
enum Whole {
    /// A change failed: the transaction was rolled back, nothing of the batch is stored.
    ChangeFailed,
    /// BEGIN or COMMIT failed: every change of the batch fails with this.
    Commit(Failure),
}

/// Runs every change of `batch` in one transaction and commits it.
fn commit_whole(
    client: &mut Client,
    statements: &mut Statements,
    claims: &HashMap<String, Claim>,
    batch: &mut [Box<dyn Task>],
) -> Result<(), Whole> {
    let reason = |e: postgres::Error| Whole::Commit(Failure::Reason(describe(&e)));
    let mut tx = client.transaction().map_err(reason)?;
    for task in batch.iter_mut() {
        let mut t = Tx {
            tx: &mut tx,
            statements,
            claims,
        };
        if task.run(&mut t).is_err() {
            // Dropping the transaction rolls it back.
            return Err(Whole::ChangeFailed);
        }
    }
    tx.commit().map_err(reason)
}

/// Runs each change of `batch` in a savepoint of one transaction: a failing change is rolled
/// back alone (a savepoint dropped without commit is rolled back) and answered with its
/// error; the others commit.
fn commit_each(
    client: &mut Client,
    statements: &mut Statements,
    claims: &HashMap<String, Claim>,
    batch: &mut [Box<dyn Task>],
) -> Vec<Result<(), Failure>> {
    let mut tx = match client.transaction() {
        Ok(tx) => tx,
        Err(e) => return vec![Err(Failure::Reason(describe(&e))); batch.len()],
    };
    let mut ran = Vec::with_capacity(batch.len());
    for task in batch.iter_mut() {
        let r = (|| -> Outcome<()> {
            let mut savepoint = tx.transaction()?;
            task.run(&mut Tx {
                tx: &mut savepoint,
                statements,
                claims,
            })?;
            savepoint.commit()?;
            Ok(())
        })();
        ran.push(r.map_err(Failure::from));
    }
    let committed = tx.commit().map_err(|e| Failure::Reason(describe(&e)));
    ran.into_iter().map(|r| committed.clone().and(r)).collect()
}

/// Renews the station's leases; a failure is logged (the next change fails too, and says why).
fn renew(client: &mut Client, leases: &Leases, renewed: &mut Instant) {
    *renewed = Instant::now();
    if let Err(e) = leases.renew(client) {
        tracing::warn!(error = %describe(&e), "the ledger's serial leases of this station could not be renewed");
    }
}
