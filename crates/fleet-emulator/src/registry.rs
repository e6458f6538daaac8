//! The emulator's registry: certificates, ownership tokens, things and policies.
//!
//! State lives in memory behind one mutex (every operation is short: map lookups and small
//! copies) and is persisted to SQLite (WAL) by a writer thread. A change is made under the
//! lock in a [`Txn`]; `Txn::commit` hands its writes to the writer and returns a
//! `Commit` that resolves once they are committed. Every API reply that follows a registry
//! change waits for it, so nothing acknowledged is lost when the process dies (AWS does not
//! lose acknowledged writes); a commit that fails is not acknowledged (the API answers 500).
//!
//! Group commit: the writer takes everything queued since its last commit (up to 4096 writes)
//! into one transaction, so many requests share one commit and one sync. Writes reach the
//! writer in the order they were made under the lock, so a commit also covers every change
//! made before it. The writes of a failed commit are retried with the next one, so the disk
//! catches up with memory once it can. `PRAGMA synchronous = NORMAL`: in WAL mode a commit is
//! in the operating system before the reply, so it survives a kill of the emulator; a power
//! loss of the host may lose the last commits, which is outside the emulation, as for the
//! virtual boards' flash (`docs/emulator.md` has the measured cost of `FULL`). On start the
//! whole registry is read back.
//!
//! Changes nobody waits for (claim registration at start, token expiry) are sent when their
//! [`Txn`] drops, and committed with the next batch.
//!
//! Ownership tokens are kept by their SHA-256 only; the token itself is returned to the device
//! once and never stored.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};
use ring::digest;
use rusqlite::{Connection, params};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

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

fn token_key(token: &str) -> String {
    hex::encode(digest::digest(&digest::SHA256, token.as_bytes()))
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

#[derive(Default)]
pub struct State {
    pub certificates: HashMap<String, Certificate>,
    pub tokens: HashMap<String, TokenRecord>,
    pub things: HashMap<String, Thing>,
    pub policies: HashMap<String, Policy>,
}

enum Write {
    Upsert {
        table: &'static str,
        key: String,
        json: String,
    },
    Delete {
        table: &'static str,
        key: String,
    },
    /// Acknowledge once every write sent before this one is committed.
    Ack(Ack),
}

/// Where the writer reports a commit.
enum Ack {
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

const TABLES: [&str; 4] = ["certificates", "tokens", "things", "policies"];

/// The registry. Cheap to share behind an `Arc`.
pub struct Registry {
    state: Mutex<State>,
    writes: Mutex<Option<Sender<Write>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Fault injection: extra milliseconds every commit takes (`storage_delay_ms`).
    storage_delay_ms: Arc<AtomicU64>,
}

/// A mutation batch: changes made under the registry lock. `Txn::commit` sends them to the
/// writer and says when they are durable; a `Txn` dropped without it sends them unobserved.
pub struct Txn<'a> {
    pub state: MutexGuard<'a, State>,
    pending: Vec<Write>,
    registry: &'a Registry,
}

impl Txn<'_> {
    pub(crate) fn put_certificate(&mut self, c: Certificate) {
        self.pending.push(upsert("certificates", &c.id, &c));
        self.state.certificates.insert(c.id.clone(), c);
    }
    pub(crate) fn put_thing(&mut self, t: Thing) {
        self.pending.push(upsert("things", &t.name, &t));
        self.state.things.insert(t.name.clone(), t);
    }
    pub(crate) fn put_policy(&mut self, p: Policy) {
        self.pending.push(upsert("policies", &p.name, &p));
        self.state.policies.insert(p.name.clone(), p);
    }
    /// Stores a token by its hash.
    pub(crate) fn put_token(&mut self, token: &str, rec: TokenRecord) {
        self.put_token_by_key(token_key(token), rec);
    }
    fn put_token_by_key(&mut self, key: String, rec: TokenRecord) {
        self.pending.push(upsert("tokens", &key, &rec));
        self.state.tokens.insert(key, rec);
    }
    pub(crate) fn delete_certificate(&mut self, id: &str) {
        self.state.certificates.remove(id);
        self.pending.push(Write::Delete {
            table: "certificates",
            key: id.to_string(),
        });
    }
    pub(crate) fn delete_thing(&mut self, name: &str) {
        self.state.things.remove(name);
        self.pending.push(Write::Delete {
            table: "things",
            key: name.to_string(),
        });
    }
    fn delete_token_by_key(&mut self, key: &str) {
        self.state.tokens.remove(key);
        self.pending.push(Write::Delete {
            table: "tokens",
            key: key.to_string(),
        });
    }

    /// Deletes every ownership token issued for `certificate_id`.
    pub(crate) fn delete_tokens_of(&mut self, certificate_id: &str) {
        let keys: Vec<String> = self
            .state
            .tokens
            .iter()
            .filter(|(_, r)| r.certificate_id == certificate_id)
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            self.delete_token_by_key(&key);
        }
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

    /// Looks a token up and checks it can still be redeemed.
    pub fn check_token(&self, token: &str, now: u64) -> Result<TokenRecord, TokenProblem> {
        let rec = self
            .state
            .tokens
            .get(&token_key(token))
            .ok_or(TokenProblem::Unknown)?;
        if rec.used {
            return Err(TokenProblem::AlreadyUsed);
        }
        if rec.expires_ms <= now {
            return Err(TokenProblem::Expired);
        }
        Ok(rec.clone())
    }

    /// Marks a token as used (single use).
    pub(crate) fn consume_token(&mut self, token: &str) {
        let key = token_key(token);
        if let Some(mut rec) = self.state.tokens.get(&key).cloned() {
            rec.used = true;
            self.put_token_by_key(key, rec);
        }
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

fn upsert<T: Serialize>(table: &'static str, key: &str, value: &T) -> Write {
    Write::Upsert {
        table,
        key: key.to_string(),
        json: serde_json::to_string(value).expect("registry records serialize"),
    }
}

impl Registry {
    /// Opens (or creates) the registry database and loads it into memory.
    pub fn open(path: &Path) -> Result<Arc<Registry>, RegistryError> {
        let p = path.display().to_string();
        let sql = |source| RegistryError::Sqlite {
            path: p.clone(),
            source,
        };
        let conn = Connection::open(path).map_err(sql)?;
        // Another process reading the file (a test, an operator) must not fail a commit.
        conn.busy_timeout(Duration::from_secs(5)).map_err(sql)?;
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous={SYNCHRONOUS};
             CREATE TABLE IF NOT EXISTS certificates (key TEXT PRIMARY KEY, json TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS tokens (key TEXT PRIMARY KEY, json TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS things (key TEXT PRIMARY KEY, json TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS policies (key TEXT PRIMARY KEY, json TEXT NOT NULL);"
        ))
        .map_err(sql)?;
        let mut state = State::default();
        load_table(&conn, &p, "certificates", &mut state.certificates)?;
        load_table(&conn, &p, "tokens", &mut state.tokens)?;
        load_table(&conn, &p, "things", &mut state.things)?;
        load_table(&conn, &p, "policies", &mut state.policies)?;

        let (tx, rx) = crossbeam_channel::bounded(65_536);
        let storage_delay_ms = Arc::new(AtomicU64::new(0));
        let delay = storage_delay_ms.clone();
        let writer = std::thread::Builder::new()
            .name("registry-writer".into())
            .spawn(move || writer_loop(conn, rx, delay))
            .expect("spawn registry writer");
        Ok(Arc::new(Registry {
            state: Mutex::new(state),
            writes: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            storage_delay_ms,
        }))
    }

    /// Opens the registry of an emulator's state directory (`[emulator] state_dir`), e.g. to
    /// inspect it or apply [`control`](super::control) operations after the emulator stopped.
    pub fn open_state_dir(state_dir: &Path) -> Result<Arc<Registry>, RegistryError> {
        Registry::open(&state_dir.join(REGISTRY_FILE))
    }

    /// Fault injection: every commit from now on takes `delay` longer, as on a slow disk.
    pub(crate) fn set_storage_delay(&self, delay: Duration) {
        self.storage_delay_ms.store(
            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Starts a mutation under the registry lock; see `Txn::commit`.
    pub fn txn(&self) -> Txn<'_> {
        Txn {
            state: self.state.lock().expect("registry lock"),
            pending: Vec::new(),
            registry: self,
        }
    }

    /// Read access to the current state.
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.state.lock().expect("registry lock"))
    }

    pub fn certificate(&self, id: &str) -> Option<Certificate> {
        self.read(|s| s.certificates.get(id).cloned())
    }

    pub fn thing(&self, name: &str) -> Option<Thing> {
        self.read(|s| s.things.get(name).cloned())
    }

    pub fn policy(&self, name: &str) -> Option<Policy> {
        self.read(|s| s.policies.get(name).cloned())
    }

    /// The policy documents attached to a certificate.
    pub fn policies_of(&self, certificate_id: &str) -> Vec<serde_json::Value> {
        self.read(|s| {
            s.certificates
                .get(certificate_id)
                .map(|c| {
                    c.policies
                        .iter()
                        .filter_map(|p| s.policies.get(p).map(|p| p.document.clone()))
                        .collect()
                })
                .unwrap_or_default()
        })
    }

    /// Deletes certificates whose ownership token expired while they were still pending and
    /// unattached, as AWS does one hour after `Create*` (docs/aws-fleet-provisioning.md §2).
    /// Returns their ids.
    pub fn expire_tokens(&self, now: u64) -> Vec<String> {
        let mut txn = self.txn();
        let expired: Vec<(String, String)> = txn
            .state
            .tokens
            .iter()
            .filter(|(_, r)| !r.used && r.expires_ms <= now)
            .map(|(k, r)| (k.clone(), r.certificate_id.clone()))
            .collect();
        let mut deleted = Vec::new();
        for (key, cert_id) in expired {
            txn.delete_token_by_key(&key);
            let orphan = txn.state.certificates.get(&cert_id).is_some_and(|c| {
                c.status == CertStatus::PendingActivation
                    && c.policies.is_empty()
                    && c.things.is_empty()
            });
            if orphan {
                txn.delete_certificate(&cert_id);
                deleted.push(cert_id);
            }
        }
        deleted
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

fn load_table<T: DeserializeOwned>(
    conn: &Connection,
    path: &str,
    table: &'static str,
    into: &mut HashMap<String, T>,
) -> Result<(), RegistryError> {
    let sql = |source| RegistryError::Sqlite {
        path: path.to_string(),
        source,
    };
    let mut stmt = conn
        .prepare(&format!("SELECT key, json FROM {table}"))
        .map_err(sql)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .map_err(sql)?;
    for row in rows {
        let (key, json) = row.map_err(sql)?;
        let value = serde_json::from_str(&json).map_err(|e| RegistryError::Corrupt {
            path: path.to_string(),
            table,
            key: key.clone(),
            reason: e.to_string(),
        })?;
        into.insert(key, value);
    }
    Ok(())
}

fn writer_loop(mut conn: Connection, rx: Receiver<Write>, storage_delay_ms: Arc<AtomicU64>) {
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
            next = if taken < 4096 {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        let result = if writes.is_empty() {
            Ok(())
        } else {
            let delay = Duration::from_millis(storage_delay_ms.load(Ordering::Relaxed));
            persist(&mut conn, &writes, delay).map_err(|e| {
                tracing::error!(
                    error = %e,
                    writes = writes.len(),
                    "emulator registry: a commit failed; its requests are answered 500 and \
                     its changes are retried with the next commit"
                );
                carried = writes;
                CommitError::Failed(e.to_string())
            })
        };
        for ack in acks {
            ack.send(result.clone());
        }
    }
}

/// One transaction with every write, the slow-disk fault, and the commit.
fn persist(conn: &mut Connection, writes: &[Write], delay: Duration) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    for w in writes {
        match w {
            Write::Upsert { table, key, json } => {
                debug_assert!(TABLES.contains(table));
                tx.prepare_cached(&format!(
                    "INSERT INTO {table} (key, json) VALUES (?1, ?2)
                     ON CONFLICT(key) DO UPDATE SET json = excluded.json"
                ))?
                .execute(params![key, json])?;
            }
            Write::Delete { table, key } => {
                tx.prepare_cached(&format!("DELETE FROM {table} WHERE key = ?1"))?
                    .execute(params![key])?;
            }
            Write::Ack(_) => {}
        }
    }
    if !delay.is_zero() {
        std::thread::sleep(delay);
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(id: &str, status: CertStatus) -> Certificate {
        Certificate {
            id: id.into(),
            pem: "PEM".into(),
            status,
            created_ms: 1,
            policies: BTreeSet::new(),
            things: BTreeSet::new(),
            claim: false,
            subject: SubjectFields::default(),
        }
    }

    #[test]
    fn persists_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.db");
        {
            let reg = Registry::open(&path).unwrap();
            let mut t = reg.txn();
            t.put_certificate(cert("c1", CertStatus::Active));
            t.put_thing(Thing {
                name: "thing-1".into(),
                ..Thing::default()
            });
            t.put_token(
                "secret-token",
                TokenRecord {
                    certificate_id: "c1".into(),
                    expires_ms: u64::MAX,
                    used: false,
                },
            );
            drop(t);
            reg.close();
        }
        let reg = Registry::open(&path).unwrap();
        assert_eq!(reg.certificate("c1").unwrap().status, CertStatus::Active);
        assert!(reg.thing("thing-1").is_some());
        assert_eq!(
            reg.txn()
                .check_token("secret-token", 0)
                .unwrap()
                .certificate_id,
            "c1"
        );
        // The token itself is not stored anywhere in the database file.
        reg.close();
        let raw = std::fs::read(&path).unwrap();
        assert!(!raw.windows(12).any(|w| w == b"secret-token"));
    }

    #[test]
    fn a_failed_commit_is_reported_and_its_writes_retried_with_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let reg = Registry::open(&path).unwrap();
        let other = Connection::open(&path).unwrap();
        other.execute_batch("DROP TABLE things").unwrap();
        let mut t = reg.txn();
        t.put_thing(Thing {
            name: "t1".into(),
            ..Thing::default()
        });
        assert!(matches!(t.commit_blocking(), Err(CommitError::Failed(_))));
        // Memory has it; the disk will once it can.
        assert!(reg.thing("t1").is_some());
        other
            .execute_batch("CREATE TABLE things (key TEXT PRIMARY KEY, json TEXT NOT NULL)")
            .unwrap();
        let mut t = reg.txn();
        t.put_certificate(cert("c1", CertStatus::Active));
        t.commit_blocking().unwrap();
        let on_disk = |table: &str| -> i64 {
            other
                .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!((on_disk("things"), on_disk("certificates")), (1, 1));

        reg.close();
        let mut t = reg.txn();
        t.put_thing(Thing::default());
        assert_eq!(t.commit_blocking(), Err(CommitError::Closed));
    }

    #[tokio::test]
    async fn a_commit_resolves_once_its_writes_are_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let reg = Registry::open(&path).unwrap();
        reg.set_storage_delay(Duration::from_millis(200));
        let commit = {
            let mut t = reg.txn();
            t.put_certificate(cert("c1", CertStatus::PendingActivation));
            t.commit()
        };
        commit.durable().await.unwrap();
        let c = Connection::open(&path).unwrap();
        let n: i64 = c
            .query_row(
                "SELECT count(*) FROM certificates WHERE key = 'c1'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn tokens_are_single_use_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(&dir.path().join("r.db")).unwrap();
        let mut t = reg.txn();
        t.put_certificate(cert("c1", CertStatus::PendingActivation));
        t.put_token(
            "tok",
            TokenRecord {
                certificate_id: "c1".into(),
                expires_ms: 1000,
                used: false,
            },
        );
        assert_eq!(t.check_token("nope", 0), Err(TokenProblem::Unknown));
        assert_eq!(t.check_token("tok", 1000), Err(TokenProblem::Expired));
        assert!(t.check_token("tok", 999).is_ok());
        t.consume_token("tok");
        assert_eq!(t.check_token("tok", 0), Err(TokenProblem::AlreadyUsed));
    }

    #[test]
    fn expiry_deletes_only_unregistered_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(&dir.path().join("r.db")).unwrap();
        {
            let mut t = reg.txn();
            t.put_certificate(cert("pending", CertStatus::PendingActivation));
            let mut attached = cert("attached", CertStatus::PendingActivation);
            attached.things.insert("t".into());
            t.put_certificate(attached);
            for (tok, id) in [("a", "pending"), ("b", "attached")] {
                t.put_token(
                    tok,
                    TokenRecord {
                        certificate_id: id.into(),
                        expires_ms: 10,
                        used: false,
                    },
                );
            }
        }
        assert_eq!(reg.expire_tokens(5), Vec::<String>::new());
        assert_eq!(reg.expire_tokens(10), vec!["pending".to_string()]);
        assert!(reg.certificate("pending").is_none());
        assert!(reg.certificate("attached").is_some());
    }
}
