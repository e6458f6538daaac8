//! The emulator's registry: certificates, ownership tokens, things and policies.
//!
//! SQLite (WAL) is the registry's store; memory holds, per table, only the records changed
//! but not yet committed (an overlay) and a bounded cache of clean ones ([`CACHE_CAP`] a
//! table, FIFO; `store.rs`). Everything is behind one mutex: a change is made under the lock
//! in a [`Txn`]; `Txn::commit` hands its writes to the writer thread (`writer.rs`) and returns
//! a `Commit` that resolves once they are committed. Every API reply that follows a registry
//! change waits for it, so nothing acknowledged is lost when the process dies (AWS does not
//! lose acknowledged writes); a commit that fails is not acknowledged (the API answers 500).
//!
//! Group commit: the writer takes everything queued since its last commit (up to 4096 writes)
//! into one transaction, so many requests share one commit and one sync. Writes reach the
//! writer in the order they were made under the lock, so a commit also covers every change
//! made before it. The writes of a failed commit are retried with the next one, so the disk
//! catches up with memory once it can; until then they stay in the overlay and reads see
//! them. After a commit the writer takes the lock and turns the records it committed clean
//! (unless a newer write changed them since), evicting the oldest clean ones beyond the cap.
//! Checkpoints run on a thread of their own (`checkpoint.rs`), so no commit waits for one.
//! `PRAGMA synchronous = NORMAL`: in WAL mode a commit is in the operating system before the
//! reply, so it survives a kill of the emulator; a power loss of the host may lose the last
//! commits, which is outside the emulation, as for the virtual boards' flash
//! (`docs/emulator.md` has the measured cost of `FULL`).
//!
//! Reads: the overlay, then the cache, then the row on disk through a `query_only` read
//! connection used under the same lock. A record leaves the overlay only after its commit and
//! under the lock, so a miss always finds the current row on disk; a row that is not there is
//! cached as absent (`store.rs`), since every write goes through the overlay. The things
//! table also keeps a Bloom filter of its keys (1 MiB, filled by a scan of the keys at open and
//! on every write), so a lookup of a thing name never written, RegisterThing's usual case,
//! reads nothing at all. No record is loaded on open: a row that does not parse is found when
//! it is read, and that request fails
//! ([`RegistryError::Corrupt`], logged with table and key; the API answers 500). Whole-table
//! needs are explicit scans that merge the disk and the overlay; token expiry uses an
//! expression index, so its cost does not grow with the registry. The tokens of a certificate
//! are found through the certificate, which names the key of the token issued with it; only
//! records written before it did are found by a scan of the tokens.
//!
//! Changes nobody waits for (claim registration at start, token expiry) are sent when their
//! [`Txn`] drops, and committed with the next batch.
//!
//! Ownership tokens are kept by their SHA-256 only; the token itself is returned to the device
//! once and never stored. A token the emulator issues starts with 8 bytes that order it by
//! issue time (nothing secret), and its key starts with them too: tokens issued together sit
//! side by side in the key's index, so a commit writes one index page for them, not one page
//! a token at a random place ([`token_key`]).

mod checkpoint;
mod store;
#[cfg(test)]
mod tests;
mod writer;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Sender;
use ring::digest;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use self::store::{ReadDb, Table, TableId};
use self::writer::{Ack, Write};

use super::template::SubjectFields;

/// Certificate status as AWS names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CertStatus {
    PendingActivation,
    Active,
    Inactive,
    Revoked,
}

/// A certificate record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    pub id: String,
    pub pem: String,
    pub status: CertStatus,
    pub created_ms: u64,
    /// Names of the policies attached to this certificate.
    pub policies: BTreeSet<String>,
    /// Names of the things this certificate is attached to.
    pub things: BTreeSet<String>,
    /// True for claim certificates (registered by the emulator itself).
    #[serde(default)]
    pub claim: bool,
    /// Subject of the certificate (source of the `AWS::IoT::Certificate::*` pseudo-parameters).
    #[serde(default)]
    pub subject: SubjectFields,
    /// The key of the ownership token issued with this certificate ([`token_key`]). `None`
    /// for claim certificates, and for records written before the field existed: their
    /// tokens are found by a scan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_key: Option<String>,
}

/// A thing record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thing {
    pub name: String,
    pub attributes: BTreeMap<String, String>,
    pub thing_type: Option<String>,
    pub groups: BTreeSet<String>,
    pub billing_group: Option<String>,
    /// Certificate ids attached to the thing.
    pub principals: BTreeSet<String>,
    pub version: u64,
}

/// An IoT policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub name: String,
    pub document: serde_json::Value,
}

/// An ownership token as stored: which certificate it redeems, until when, whether used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub certificate_id: String,
    pub expires_ms: u64,
    pub used: bool,
}

/// Why a token cannot be redeemed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenProblem {
    Unknown,
    Expired,
    AlreadyUsed,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Hex characters of the ordering prefix of a token the emulator issues
/// (`ApiService::new_token`: 8 bytes of issue time and a counter, then 48 random bytes).
pub const TOKEN_ORDER_HEX: usize = 16;
/// Length of such a token in hex characters.
pub const ORDERED_TOKEN_LEN: usize = 2 * (8 + 48);

/// The key a token is stored under: its SHA-256 (the registry holds nothing that redeems a
/// token), after the token's ordering prefix when it has one. Tokens issued together then
/// share the pages of the key's index; a token issued before the prefix existed (96 hex
/// characters) is keyed by its hash alone, as it was stored, and so is anything else.
pub fn token_key(token: &str) -> String {
    let hash = hex::encode(digest::digest(&digest::SHA256, token.as_bytes()));
    if token.len() == ORDERED_TOKEN_LEN && token.bytes().all(|b| b.is_ascii_hexdigit()) {
        format!("{}{hash}", &token[..TOKEN_ORDER_HEX])
    } else {
        hash
    }
}

/// The file of the registry in an emulator's state directory.
pub const REGISTRY_FILE: &str = "registry.db";

/// `PRAGMA synchronous` of the registry database (see the module header).
const SYNCHRONOUS: &str = "NORMAL";

/// Why a change was not committed (and so must not be acknowledged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    #[error("the registry database could not commit the change: {0}")]
    Failed(String),
    #[error("the registry is closed; the change was not stored")]
    Closed,
}

/// Errors opening or reading the registry database.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry database {path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
    #[error("registry database {path} has a corrupt {table} row {key:?}: {reason}")]
    Corrupt {
        path: String,
        table: &'static str,
        key: String,
        reason: String,
    },
}

/// Clean records cached in memory per table at most (besides the uncommitted ones, which are
/// never evicted). The create → register sequence of a device reads records written moments
/// before, well within this many.
pub const CACHE_CAP: usize = 4096;

/// Unused tokens by expiry (partial index, so a used token leaves it).
const EXPIRED_TOKENS_SQL: &str = "SELECT key, json FROM tokens
     WHERE json_extract(json, '$.used') = 0 AND json_extract(json, '$.expires_ms') <= ?1";
/// The tokens of a certificate whose record does not name its token: a scan of the table
/// (registries written before certificates named their tokens).
const TOKENS_OF_SQL: &str =
    "SELECT key, json FROM tokens WHERE json_extract(json, '$.certificate_id') = ?1";

/// What the registry holds in memory (see the module header), and its read connection.
pub(crate) struct State {
    certificates: Table<Certificate>,
    tokens: Table<TokenRecord>,
    things: Table<Thing>,
    policies: Table<Policy>,
    db: ReadDb,
    /// Sequence number of the last write made under the lock.
    seq: u64,
}

impl State {
    fn settle(&mut self, table: TableId, key: &str, seq: u64) {
        match table {
            TableId::Certificates => self.certificates.settle(key, seq),
            TableId::Tokens => self.tokens.settle(key, seq),
            TableId::Things => self.things.settle(key, seq),
            TableId::Policies => self.policies.settle(key, seq),
        }
    }

    fn held(&self) -> usize {
        self.certificates.held() + self.tokens.held() + self.things.held() + self.policies.held()
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
}

/// A transaction's changes on their way to disk: [`Commit::durable`] resolves once they are
/// committed.
#[must_use = "a reply must wait until its changes are durable"]
pub(crate) struct Commit(CommitState);

enum CommitState {
    Pending(tokio::sync::oneshot::Receiver<Result<(), CommitError>>),
    Done(Result<(), CommitError>),
}

impl Commit {
    /// Waits until the changes are committed.
    pub(crate) async fn durable(self) -> Result<(), CommitError> {
        match self.0 {
            CommitState::Done(r) => r,
            // The writer drops an acknowledgement only when it stops.
            CommitState::Pending(rx) => rx.await.unwrap_or(Err(CommitError::Closed)),
        }
    }
}

/// The registry. Cheap to share behind an `Arc`.
pub struct Registry {
    state: Arc<Mutex<State>>,
    writes: Mutex<Option<Sender<Write>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Fault injection: extra milliseconds every commit takes (`storage_delay_ms`).
    slow_disk: Arc<SlowDisk>,
    /// Checkpoints the checkpoint thread completed.
    #[cfg_attr(not(test), allow(dead_code))]
    checkpoints: Arc<checkpoint::Done>,
}

/// Fault injection: a slow disk. Every commit takes `delay_ms` longer; the commits that
/// entered the delay are counted, so a test can act while one is in it.
#[derive(Default)]
pub(super) struct SlowDisk {
    delay_ms: AtomicU64,
    slowed: Mutex<u64>,
    entered: std::sync::Condvar,
}

impl SlowDisk {
    /// The delay of the next commit.
    pub(super) fn delay(&self) -> Duration {
        Duration::from_millis(self.delay_ms.load(Ordering::Relaxed))
    }

    /// A commit is about to wait out the delay.
    pub(super) fn enter(&self) {
        let mut n = self.slowed.lock().unwrap_or_else(|p| p.into_inner());
        *n += 1;
        self.entered.notify_all();
    }
}

/// A mutation batch: reads and changes made under the registry lock. `Txn::commit` sends the
/// changes to the writer and says when they are durable; a `Txn` dropped without it sends
/// them unobserved.
pub struct Txn<'a> {
    state: MutexGuard<'a, State>,
    pending: Vec<Write>,
    registry: &'a Registry,
}

impl Txn<'_> {
    /// The certificate `id` as of this transaction.
    pub fn certificate(&mut self, id: &str) -> Result<Option<&Certificate>, RegistryError> {
        let s = &mut *self.state;
        s.certificates.get(&s.db, id)
    }

    pub fn thing(&mut self, name: &str) -> Result<Option<&Thing>, RegistryError> {
        let s = &mut *self.state;
        s.things.get(&s.db, name)
    }

    pub fn policy(&mut self, name: &str) -> Result<Option<&Policy>, RegistryError> {
        let s = &mut *self.state;
        s.policies.get(&s.db, name)
    }

    pub fn has_policy(&mut self, name: &str) -> Result<bool, RegistryError> {
        Ok(self.policy(name)?.is_some())
    }

    pub(crate) fn put_certificate(&mut self, c: Certificate) {
        let seq = self.state.next_seq();
        self.pending
            .push(upsert(TableId::Certificates, &c.id, &c, seq));
        self.state.certificates.put(c.id.clone(), Some(c), seq);
    }
    pub(crate) fn put_thing(&mut self, t: Thing) {
        let seq = self.state.next_seq();
        self.pending.push(upsert(TableId::Things, &t.name, &t, seq));
        self.state.things.put(t.name.clone(), Some(t), seq);
    }
    pub(crate) fn put_policy(&mut self, p: Policy) {
        let seq = self.state.next_seq();
        self.pending
            .push(upsert(TableId::Policies, &p.name, &p, seq));
        self.state.policies.put(p.name.clone(), Some(p), seq);
    }
    /// Stores a token by its key ([`token_key`]), which is returned.
    pub(crate) fn put_token(&mut self, token: &str, rec: TokenRecord) -> String {
        let key = token_key(token);
        self.put_token_by_key(key.clone(), rec);
        key
    }
    fn put_token_by_key(&mut self, key: String, rec: TokenRecord) {
        let seq = self.state.next_seq();
        self.pending.push(upsert(TableId::Tokens, &key, &rec, seq));
        self.state.tokens.put(key, Some(rec), seq);
    }
    fn delete(&mut self, table: TableId, key: &str) {
        let seq = self.state.next_seq();
        let s = &mut *self.state;
        match table {
            TableId::Certificates => s.certificates.put(key.to_string(), None, seq),
            TableId::Tokens => s.tokens.put(key.to_string(), None, seq),
            TableId::Things => s.things.put(key.to_string(), None, seq),
            TableId::Policies => s.policies.put(key.to_string(), None, seq),
        }
        self.pending.push(Write::Delete {
            table,
            key: key.to_string(),
            seq,
        });
    }
    pub(crate) fn delete_certificate(&mut self, id: &str) {
        self.delete(TableId::Certificates, id);
    }
    pub(crate) fn delete_thing(&mut self, name: &str) {
        self.delete(TableId::Things, name);
    }
    fn delete_token_by_key(&mut self, key: &str) {
        self.delete(TableId::Tokens, key);
    }

    /// The ownership tokens issued for `certificate_id` (with their keys): the one its record
    /// names, or, for a record that names none, those a scan of the table finds.
    fn tokens_of(
        &mut self,
        certificate_id: &str,
    ) -> Result<Vec<(String, TokenRecord)>, RegistryError> {
        let named = self
            .certificate(certificate_id)?
            .and_then(|c| c.token_key.clone());
        let s = &mut *self.state;
        match named {
            Some(key) => Ok(s
                .tokens
                .get(&s.db, &key)?
                .map(|r| (key, r.clone()))
                .into_iter()
                .collect()),
            None => s
                .tokens
                .scan(&s.db, TOKENS_OF_SQL, Some(&certificate_id), |r| {
                    r.certificate_id == certificate_id
                }),
        }
    }

    /// Deletes every ownership token issued for `certificate_id` (before the certificate
    /// itself, whose record names its token).
    pub(crate) fn delete_tokens_of(&mut self, certificate_id: &str) -> Result<(), RegistryError> {
        for (key, _) in self.tokens_of(certificate_id)? {
            self.delete_token_by_key(&key);
        }
        Ok(())
    }

    /// Ends the transaction: its changes go to the writer (the lock is released), and the
    /// returned [`Commit`] resolves once they are on disk.
    pub(crate) fn commit(mut self) -> Commit {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.send(Some(Ack::Async(tx))) {
            Commit(CommitState::Pending(rx))
        } else {
            Commit(CommitState::Done(Err(CommitError::Closed)))
        }
    }

    /// As `Txn::commit`, blocking the thread until the changes are on disk.
    pub(crate) fn commit_blocking(mut self) -> Result<(), CommitError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if !self.send(Some(Ack::Blocking(tx))) {
            return Err(CommitError::Closed);
        }
        drop(self);
        rx.recv().unwrap_or(Err(CommitError::Closed))
    }

    /// Sends the pending writes (and `ack`) to the writer while the lock is still held, so
    /// writes reach it in the order they were made. False when the writer has stopped.
    fn send(&mut self, ack: Option<Ack>) -> bool {
        let writes = self.registry.writes.lock().expect("registry writer lock");
        let Some(tx) = writes.as_ref() else {
            self.pending.clear();
            return false;
        };
        for w in self.pending.drain(..).chain(ack.map(Write::Ack)) {
            if tx.send(w).is_err() {
                return false;
            }
        }
        true
    }

    /// Looks a token up and checks it can still be redeemed. The outer error is a registry
    /// that could not be read.
    pub fn check_token(
        &mut self,
        token: &str,
        now: u64,
    ) -> Result<Result<TokenRecord, TokenProblem>, RegistryError> {
        let key = token_key(token);
        let s = &mut *self.state;
        let Some(rec) = s.tokens.get(&s.db, &key)? else {
            return Ok(Err(TokenProblem::Unknown));
        };
        if rec.used {
            return Ok(Err(TokenProblem::AlreadyUsed));
        }
        if rec.expires_ms <= now {
            return Ok(Err(TokenProblem::Expired));
        }
        Ok(Ok(rec.clone()))
    }

    /// Marks a token as used (single use).
    pub(crate) fn consume_token(&mut self, token: &str) -> Result<(), RegistryError> {
        let key = token_key(token);
        let s = &mut *self.state;
        if let Some(mut rec) = s.tokens.get(&s.db, &key)?.cloned() {
            rec.used = true;
            self.put_token_by_key(key, rec);
        }
        Ok(())
    }
}

impl Drop for Txn<'_> {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            // Nobody waits for these: a closed registry drops them.
            self.send(None);
        }
    }
}

fn upsert<T: Serialize>(table: TableId, key: &str, value: &T, seq: u64) -> Write {
    Write::Upsert {
        table,
        key: key.to_string(),
        json: {
            // Sized for a certificate record (its PEM) at once, instead of growing by doubling.
            let mut out = Vec::with_capacity(2048);
            serde_json::to_writer(&mut out, value).expect("registry records serialize");
            String::from_utf8(out).expect("serde_json writes UTF-8")
        },
        seq,
    }
}

impl Registry {
    /// Opens (or creates) the registry database. Nothing is read until it is asked for.
    pub fn open(path: &Path) -> Result<Arc<Registry>, RegistryError> {
        Registry::open_with_cache(path, CACHE_CAP)
    }

    /// As [`Registry::open`], caching at most `cache_cap` clean records a table.
    pub(crate) fn open_with_cache(
        path: &Path,
        cache_cap: usize,
    ) -> Result<Arc<Registry>, RegistryError> {
        let p = path.display().to_string();
        let sql = |source| RegistryError::Sqlite {
            path: p.clone(),
            source,
        };
        let mut conn = Connection::open(path).map_err(sql)?;
        // Another process reading the file (a test, an operator) must not fail a commit.
        conn.busy_timeout(Duration::from_secs(5)).map_err(sql)?;
        // The indexes are created on open, so registries made before them get them too. The
        // index of tokens by certificate that earlier registries had is dropped: each token's
        // entry went to a random page of it (certificates name their token now).
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous={SYNCHRONOUS};
             CREATE TABLE IF NOT EXISTS certificates (key TEXT PRIMARY KEY, json TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS tokens (key TEXT PRIMARY KEY, json TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS things (key TEXT PRIMARY KEY, json TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS policies (key TEXT PRIMARY KEY, json TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS tokens_unused_by_expiry
                 ON tokens (json_extract(json, '$.expires_ms'))
                 WHERE json_extract(json, '$.used') = 0;
             DROP INDEX IF EXISTS tokens_by_certificate;"
        ))
        .map_err(sql)?;
        let read = Connection::open(path).map_err(sql)?;
        read.busy_timeout(Duration::from_secs(5)).map_err(sql)?;
        read.execute_batch("PRAGMA query_only = ON").map_err(sql)?;
        let db = ReadDb {
            conn: read,
            path: p.clone(),
        };
        let state = Arc::new(Mutex::new(State {
            certificates: Table::new(TableId::Certificates, cache_cap),
            tokens: Table::new(TableId::Tokens, cache_cap),
            things: Table::new(TableId::Things, cache_cap).knowing_keys(&db)?,
            policies: Table::new(TableId::Policies, cache_cap),
            db,
            seq: 0,
        }));

        // Unbounded: the writer takes the registry lock after each commit, so a sender
        // holding that lock must never wait for room. What is queued is also in the overlay,
        // and replies wait for their commit, which bounds it.
        let (tx, rx) = crossbeam_channel::unbounded();
        let slow_disk = Arc::new(SlowDisk::default());
        let disk = slow_disk.clone();
        let writer_state = state.clone();
        let checkpoints = Arc::new(checkpoint::Done::default());
        let checkpointer =
            checkpoint::Checkpointer::start(&mut conn, path, checkpoints.clone()).map_err(sql)?;
        let writer = std::thread::Builder::new()
            .name("registry-writer".into())
            .spawn(move || {
                writer::writer_loop(conn, rx, writer_state, disk);
                // After the connection (its WAL hook signals the checkpoint thread).
                drop(checkpointer);
            })
            .expect("spawn registry writer");
        Ok(Arc::new(Registry {
            state,
            writes: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            slow_disk,
            checkpoints,
        }))
    }

    /// Opens the registry of an emulator's state directory (`[emulator] state_dir`), e.g. to
    /// inspect it or apply [`control`](super::control) operations after the emulator stopped.
    pub fn open_state_dir(state_dir: &Path) -> Result<Arc<Registry>, RegistryError> {
        Registry::open(&state_dir.join(REGISTRY_FILE))
    }

    /// Fault injection: every commit from now on takes `delay` longer, as on a slow disk.
    pub(crate) fn set_storage_delay(&self, delay: Duration) {
        self.slow_disk.delay_ms.store(
            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Waits until `n` commits in all have entered the storage delay (a test's signal that
    /// the writer took what was sent before into a commit that has not ended yet).
    #[cfg(test)]
    pub(crate) fn wait_for_slowed_commits(&self, n: u64) {
        let disk = &self.slow_disk;
        let slowed = disk.slowed.lock().unwrap();
        let (slowed, timeout) = disk
            .entered
            .wait_timeout_while(slowed, Duration::from_secs(30), |s| *s < n)
            .unwrap();
        assert!(!timeout.timed_out(), "{} of {n} slowed commits", *slowed);
    }

    /// Waits until the checkpoint thread has copied the whole WAL `n` times.
    #[cfg(test)]
    pub(crate) fn wait_for_checkpoints(&self, n: u64) {
        self.checkpoints.wait_for(n);
    }

    /// Starts a transaction under the registry lock; see `Txn::commit`.
    pub fn txn(&self) -> Txn<'_> {
        Txn {
            state: self.state.lock().expect("registry lock"),
            pending: Vec::new(),
            registry: self,
        }
    }

    pub fn certificate(&self, id: &str) -> Result<Option<Certificate>, RegistryError> {
        Ok(self.txn().certificate(id)?.cloned())
    }

    pub fn thing(&self, name: &str) -> Result<Option<Thing>, RegistryError> {
        Ok(self.txn().thing(name)?.cloned())
    }

    pub fn policy(&self, name: &str) -> Result<Option<Policy>, RegistryError> {
        Ok(self.txn().policy(name)?.cloned())
    }

    /// The policy documents attached to a certificate.
    pub fn policies_of(
        &self,
        certificate_id: &str,
    ) -> Result<Vec<serde_json::Value>, RegistryError> {
        let mut txn = self.txn();
        let Some(names) = txn.certificate(certificate_id)?.map(|c| c.policies.clone()) else {
            return Ok(Vec::new());
        };
        let mut docs = Vec::with_capacity(names.len());
        for name in &names {
            if let Some(p) = txn.policy(name)? {
                docs.push(p.document.clone());
            }
        }
        Ok(docs)
    }

    /// Every certificate (a scan of the whole table: for tools and tests, not hot paths).
    pub fn certificates(&self) -> Result<Vec<Certificate>, RegistryError> {
        let txn = self.txn();
        let s = &*txn.state;
        let rows =
            s.certificates
                .scan(&s.db, "SELECT key, json FROM certificates", None, |_| true)?;
        Ok(rows.into_iter().map(|(_, c)| c).collect())
    }

    /// Every thing (a scan of the whole table: for tools and tests, not hot paths).
    pub fn things(&self) -> Result<Vec<Thing>, RegistryError> {
        let txn = self.txn();
        let s = &*txn.state;
        let rows = s
            .things
            .scan(&s.db, "SELECT key, json FROM things", None, |_| true)?;
        Ok(rows.into_iter().map(|(_, t)| t).collect())
    }

    /// The ownership tokens issued for `certificate_id`.
    pub fn tokens_of(&self, certificate_id: &str) -> Result<Vec<TokenRecord>, RegistryError> {
        let rows = self.txn().tokens_of(certificate_id)?;
        Ok(rows.into_iter().map(|(_, r)| r).collect())
    }

    /// Deletes certificates whose ownership token expired while they were still pending and
    /// unattached, as AWS does one hour after `Create*` (docs/aws-fleet-provisioning.md §2).
    /// Returns their ids. The expired tokens come from an index (and the overlay), so the
    /// cost follows what expired, not the size of the registry. Nothing changes unless every
    /// record it needs could be read.
    pub fn expire_tokens(&self, now: u64) -> Result<Vec<String>, RegistryError> {
        let mut txn = self.txn();
        let bound = i64::try_from(now).unwrap_or(i64::MAX);
        let expired = {
            let s = &*txn.state;
            s.tokens
                .scan(&s.db, EXPIRED_TOKENS_SQL, Some(&bound), |r| {
                    !r.used && r.expires_ms <= now
                })?
        };
        let mut orphans = Vec::new();
        let mut seen = HashSet::new();
        for (_, rec) in &expired {
            let orphan = txn.certificate(&rec.certificate_id)?.is_some_and(|c| {
                c.status == CertStatus::PendingActivation
                    && c.policies.is_empty()
                    && c.things.is_empty()
            });
            if orphan && seen.insert(rec.certificate_id.as_str()) {
                orphans.push(rec.certificate_id.clone());
            }
        }
        for (key, _) in &expired {
            txn.delete_token_by_key(key);
        }
        for id in &orphans {
            txn.delete_certificate(id);
        }
        Ok(orphans)
    }

    /// Records held in memory now, all tables: the uncommitted ones and the cached clean ones
    /// (at most [`CACHE_CAP`] a table).
    pub fn held(&self) -> usize {
        self.state.lock().expect("registry lock").held()
    }

    /// Waits until everything changed so far is on disk.
    pub(crate) fn flush(&self) -> Result<(), CommitError> {
        self.txn().commit_blocking()
    }

    /// Flushes and stops the writer thread. Later changes stay in memory only.
    pub fn close(&self) {
        self.writes.lock().expect("registry writer lock").take();
        if let Some(h) = self.writer.lock().expect("registry writer lock").take() {
            let _ = h.join();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.close();
    }
}
