//! The registry's writer thread: group commit of the writes made under the registry lock, and
//! after each commit, the committed records turned clean in memory.

use std::sync::{Arc, Mutex};

use crossbeam_channel::Receiver;
use rusqlite::{Connection, params};

use super::store::TableId;
use super::{CommitError, SlowDisk, State};

/// Writes taken into one commit at most.
const BATCH: usize = 4096;

pub(super) enum Write {
    Upsert {
        table: TableId,
        key: String,
        json: String,
        seq: u64,
    },
    Delete {
        table: TableId,
        key: String,
        seq: u64,
    },
    /// Acknowledge once every write sent before this one is committed.
    Ack(Ack),
}

/// Where the writer reports a commit.
pub(super) enum Ack {
    Async(tokio::sync::oneshot::Sender<Result<(), CommitError>>),
    Blocking(crossbeam_channel::Sender<Result<(), CommitError>>),
}

impl Ack {
    fn send(self, result: Result<(), CommitError>) {
        // A waiter that went away (its connection closed) no longer needs to know.
        match self {
            Ack::Async(tx) => {
                let _ = tx.send(result);
            }
            Ack::Blocking(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}

pub(super) fn writer_loop(
    mut conn: Connection,
    rx: Receiver<Write>,
    state: Arc<Mutex<State>>,
    disk: Arc<SlowDisk>,
) {
    // Writes of a commit that failed, retried first with the next one.
    let mut carried: Vec<Write> = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut writes = std::mem::take(&mut carried);
        let mut acks = Vec::new();
        let mut taken = 0;
        let mut next = Some(first);
        while let Some(w) = next {
            match w {
                Write::Ack(ack) => acks.push(ack),
                w => writes.push(w),
            }
            taken += 1;
            next = if taken < BATCH {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        let result = if writes.is_empty() {
            Ok(())
        } else {
            match persist(&mut conn, &writes, &disk) {
                Ok(()) => {
                    settle(&state, &writes);
                    Ok(())
                }
                Err(e) => {
                    tracing::error!(
                        error = %e,
                        writes = writes.len(),
                        "emulator registry: a commit failed; its requests are answered 500 and \
                         its changes are retried with the next commit"
                    );
                    // They stay dirty in memory, so reads still see them.
                    carried = writes;
                    Err(CommitError::Failed(e.to_string()))
                }
            }
        };
        for ack in acks {
            ack.send(result.clone());
        }
    }
}

/// The committed writes' records are clean now (those not changed again since).
fn settle(state: &Mutex<State>, writes: &[Write]) {
    let mut state = state.lock().expect("registry lock");
    for w in writes {
        match w {
            Write::Upsert {
                table, key, seq, ..
            }
            | Write::Delete { table, key, seq } => {
                state.settle(*table, key, *seq);
            }
            Write::Ack(_) => {}
        }
    }
}

/// One transaction with every write, the slow-disk fault, and the commit.
fn persist(conn: &mut Connection, writes: &[Write], disk: &SlowDisk) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    for w in writes {
        match w {
            Write::Upsert {
                table, key, json, ..
            } => {
                tx.prepare_cached(table.upsert_sql())?
                    .execute(params![key, json])?;
            }
            Write::Delete { table, key, .. } => {
                tx.prepare_cached(table.delete_sql())?
                    .execute(params![key])?;
            }
            Write::Ack(_) => {}
        }
    }
    let delay = disk.delay();
    if !delay.is_zero() {
        disk.enter();
        std::thread::sleep(delay);
    }
    tx.commit()
}
