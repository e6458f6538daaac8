//! Tests of the registry: durability of commits, the overlay and the bounded cache (reads
//! after eviction, uncommitted changes, memory held), corrupt rows, tokens and their expiry.

use std::collections::BTreeSet;
use std::time::Duration;

use rusqlite::Connection;

use super::*;
use crate::template::SubjectFields;

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
        token_key: None,
    }
}

/// The first column of the one row `sql` returns, read from the file at `path` by a
/// connection of its own (what is on disk, not what the registry holds).
fn on_disk<T: rusqlite::types::FromSql>(path: &std::path::Path, sql: &str) -> T {
    Connection::open(path)
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

fn thing(name: &str) -> Thing {
    Thing {
        name: name.into(),
        ..Thing::default()
    }
}

fn token(certificate_id: &str, expires_ms: u64) -> TokenRecord {
    TokenRecord {
        certificate_id: certificate_id.into(),
        expires_ms,
        used: false,
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
        t.put_thing(thing("thing-1"));
        t.put_token("secret-token", token("c1", u64::MAX));
        drop(t);
        reg.close();
    }
    let reg = Registry::open(&path).unwrap();
    assert_eq!(
        reg.certificate("c1").unwrap().unwrap().status,
        CertStatus::Active
    );
    assert!(reg.thing("thing-1").unwrap().is_some());
    assert_eq!(
        reg.txn()
            .check_token("secret-token", 0)
            .unwrap()
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
fn opening_reads_no_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    {
        let reg = Registry::open(&path).unwrap();
        let mut t = reg.txn();
        for i in 0..100 {
            t.put_certificate(cert(&format!("c{i}"), CertStatus::Active));
        }
        t.commit_blocking().unwrap();
    }
    let reg = Registry::open(&path).unwrap();
    assert_eq!(reg.held(), 0, "nothing is loaded on open");
    assert!(reg.certificate("c7").unwrap().is_some());
    assert_eq!(reg.held(), 1, "a read caches what it read, and only that");
    assert!(reg.certificate("missing").unwrap().is_none());
    assert_eq!(reg.held(), 2, "an absent row is cached as absent");
}

#[test]
fn a_cached_absence_gives_way_to_the_first_write_and_a_delete_is_cached_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(&dir.path().join("r.db")).unwrap();
    assert!(reg.certificate("c1").unwrap().is_none());
    reg.set_storage_delay(Duration::from_millis(100));
    let commit = {
        let mut t = reg.txn();
        t.put_certificate(cert("c1", CertStatus::PendingActivation));
        t.commit()
    };
    // Before its commit (the overlay) and after it (the clean cache): the write, not the
    // absence read before it.
    assert!(reg.certificate("c1").unwrap().is_some());
    futures_lite_block_on(commit);
    reg.set_storage_delay(Duration::ZERO);
    assert_eq!(
        reg.certificate("c1").unwrap().unwrap().status,
        CertStatus::PendingActivation
    );
    let mut t = reg.txn();
    t.delete_certificate("c1");
    t.commit_blocking().unwrap();
    assert!(reg.certificate("c1").unwrap().is_none());
    // Reopened: the disk agrees.
    reg.close();
    drop(reg);
    let reg = Registry::open(&dir.path().join("r.db")).unwrap();
    assert!(reg.certificate("c1").unwrap().is_none());
}

#[test]
fn a_failed_commit_is_reported_and_its_writes_retried_with_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    let reg = Registry::open_with_cache(&path, 2).unwrap();
    let other = Connection::open(&path).unwrap();
    other.execute_batch("DROP TABLE things").unwrap();
    let mut t = reg.txn();
    t.put_thing(thing("t1"));
    assert!(matches!(t.commit_blocking(), Err(CommitError::Failed(_))));
    // Memory has it, and keeps it under eviction pressure; the disk will once it can.
    let mut t = reg.txn();
    for i in 0..20 {
        t.put_certificate(cert(&format!("x{i}"), CertStatus::Active));
    }
    drop(t);
    assert_eq!(reg.thing("t1").unwrap().unwrap().name, "t1");
    other
        .execute_batch("CREATE TABLE things (key TEXT PRIMARY KEY, json TEXT NOT NULL)")
        .unwrap();
    let mut t = reg.txn();
    t.put_certificate(cert("c1", CertStatus::Active));
    t.commit_blocking().unwrap();
    let rows_in = |table: &str| -> i64 {
        other
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!((rows_in("things"), rows_in("certificates")), (1, 21));
    // Committed now: clean, so it may be evicted, and still reads back from disk.
    assert!(reg.held() <= 4 * 2, "{}", reg.held());
    assert_eq!(reg.thing("t1").unwrap().unwrap().name, "t1");

    reg.close();
    let mut t = reg.txn();
    t.put_thing(Thing::default());
    assert_eq!(t.commit_blocking(), Err(CommitError::Closed));
}

#[test]
fn reads_after_eviction_come_back_from_disk_equal() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open_with_cache(&dir.path().join("r.db"), 3).unwrap();
    let mut written = Vec::new();
    let mut t = reg.txn();
    for i in 0..50 {
        let mut c = cert(&format!("c{i}"), CertStatus::PendingActivation);
        c.pem = format!("PEM of {i}");
        c.policies.insert(format!("p{i}"));
        c.subject.common_name = Some(format!("device {i}"));
        t.put_certificate(c.clone());
        t.put_thing(Thing {
            name: format!("t{i}"),
            principals: BTreeSet::from([c.id.clone()]),
            version: i,
            ..Thing::default()
        });
        written.push(c);
    }
    t.commit_blocking().unwrap();
    for c in &written {
        assert_eq!(reg.certificate(&c.id).unwrap().as_ref(), Some(c));
    }
    assert_eq!(reg.thing("t17").unwrap().unwrap().version, 17);
    assert!(reg.held() <= 4 * 3);
    let mut all = reg.certificates().unwrap();
    all.sort_by_key(|c| c.created_ms);
    assert_eq!(all.len(), 50);
    assert_eq!(reg.things().unwrap().len(), 50);
}

#[test]
fn an_uncommitted_change_is_read_and_survives_eviction_pressure() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    let reg = Registry::open_with_cache(&path, 2).unwrap();
    {
        let mut t = reg.txn();
        t.put_certificate(cert("old", CertStatus::PendingActivation));
        t.put_thing(thing("gone"));
        for i in 0..10 {
            t.put_certificate(cert(&format!("e{i}"), CertStatus::Active));
        }
        t.commit_blocking().unwrap();
    }
    reg.set_storage_delay(Duration::from_millis(300));
    let mut t = reg.txn();
    t.put_certificate(cert("old", CertStatus::Active));
    t.put_certificate(cert("new", CertStatus::Active));
    t.delete_thing("gone");
    let commit = t.commit();
    // Evict everything clean many times over while the commit is still on its way.
    let mut t = reg.txn();
    for round in 0..5 {
        for i in 0..10 {
            assert!(
                t.certificate(&format!("e{i}")).unwrap().is_some(),
                "{round}"
            );
        }
    }
    assert_eq!(
        t.certificate("old").unwrap().unwrap().status,
        CertStatus::Active
    );
    assert!(t.certificate("new").unwrap().is_some());
    assert!(
        t.thing("gone").unwrap().is_none(),
        "a delete is seen at once"
    );
    drop(t);
    let status_on_disk: String = on_disk(
        &path,
        "SELECT json_extract(json, '$.status') FROM certificates WHERE key = 'old'",
    );
    assert_eq!(status_on_disk, "PENDING_ACTIVATION", "not committed yet");
    assert_eq!(reg.things().unwrap().len(), 0, "scans merge the overlay");
    assert_eq!(reg.certificates().unwrap().len(), 12);
    futures_lite_block_on(commit);
    reg.set_storage_delay(Duration::ZERO);
    assert_eq!(
        reg.certificate("old").unwrap().unwrap().status,
        CertStatus::Active
    );
    assert!(reg.thing("gone").unwrap().is_none());
}

fn futures_lite_block_on(commit: Commit) {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(commit.durable())
        .unwrap();
}

#[test]
fn a_newer_write_stays_dirty_when_an_older_one_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    let reg = Registry::open_with_cache(&path, 1).unwrap();
    let mut t = reg.txn();
    t.put_certificate(cert("other", CertStatus::Active));
    t.commit_blocking().unwrap();
    reg.set_storage_delay(Duration::from_millis(300));
    let mut t = reg.txn();
    t.put_certificate(cert("c", CertStatus::PendingActivation));
    let first = t.commit();
    // Once the writer has taken the first write into its commit and is in the slow disk's
    // delay, the newer write goes to the next commit.
    reg.wait_for_slowed_commits(1);
    let mut t = reg.txn();
    t.put_certificate(cert("c", CertStatus::Active));
    drop(t);
    futures_lite_block_on(first);
    let status: String = on_disk(
        &path,
        "SELECT json_extract(json, '$.status') FROM certificates WHERE key = 'c'",
    );
    assert_eq!(
        status, "PENDING_ACTIVATION",
        "the newer write is not committed yet"
    );
    // Committing the older write did not make the record clean: it is not evicted (a cache of
    // one, filled by another record) and still reads as the newer write.
    assert!(reg.certificate("other").unwrap().is_some());
    assert_eq!(
        reg.certificate("c").unwrap().unwrap().status,
        CertStatus::Active
    );
    reg.set_storage_delay(Duration::ZERO);
    reg.flush().unwrap();
    assert_eq!(
        reg.certificate("c").unwrap().unwrap().status,
        CertStatus::Active
    );
}

#[test]
fn memory_held_stays_within_the_cap_however_many_records() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 64;
    let reg = Registry::open_with_cache(&dir.path().join("r.db"), cap).unwrap();
    let mut max_held = 0;
    for batch in 0..50 {
        let mut t = reg.txn();
        for i in 0..100 {
            let id = format!("c{batch}-{i}");
            t.put_certificate(cert(&id, CertStatus::PendingActivation));
            t.put_token(&format!("tok-{id}"), token(&id, u64::MAX));
        }
        // Each batch reads back (and caches) some records written before.
        for i in 0..10 {
            assert!(
                t.certificate(&format!("c{}-{i}", batch / 2))
                    .unwrap()
                    .is_some()
            );
        }
        t.commit_blocking().unwrap();
        max_held = max_held.max(reg.held());
    }
    // 5,000 certificates and 5,000 tokens on disk; memory holds at most a cap a table (four
    // tables), nothing being in flight after each commit.
    assert!(max_held <= 4 * cap, "held {max_held}");
    assert_eq!(reg.certificates().unwrap().len(), 5000);
}

#[test]
fn a_corrupt_row_fails_the_read_that_finds_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    {
        let reg = Registry::open(&path).unwrap();
        let mut t = reg.txn();
        t.put_certificate(cert("good", CertStatus::Active));
        t.put_certificate(cert("bad", CertStatus::Active));
        t.commit_blocking().unwrap();
    }
    Connection::open(&path)
        .unwrap()
        .execute(
            "UPDATE certificates SET json = '{\"id\": 7' WHERE key = 'bad'",
            [],
        )
        .unwrap();
    // It opens: nothing is read on open.
    let reg = Registry::open(&path).unwrap();
    assert!(reg.certificate("good").unwrap().is_some());
    let e = reg.certificate("bad").unwrap_err();
    assert!(
        matches!(&e, RegistryError::Corrupt { table: "certificates", key, .. } if key == "bad"),
        "{e}"
    );
    assert!(matches!(
        reg.certificates(),
        Err(RegistryError::Corrupt { .. })
    ));
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
    let n: i64 = on_disk(&path, "SELECT count(*) FROM certificates WHERE key = 'c1'");
    assert_eq!(n, 1);
}

#[test]
fn tokens_are_single_use_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(&dir.path().join("r.db")).unwrap();
    let mut t = reg.txn();
    t.put_certificate(cert("c1", CertStatus::PendingActivation));
    t.put_token("tok", token("c1", 1000));
    assert_eq!(
        t.check_token("nope", 0).unwrap(),
        Err(TokenProblem::Unknown)
    );
    assert_eq!(
        t.check_token("tok", 1000).unwrap(),
        Err(TokenProblem::Expired)
    );
    assert!(t.check_token("tok", 999).unwrap().is_ok());
    t.consume_token("tok").unwrap();
    assert_eq!(
        t.check_token("tok", 0).unwrap(),
        Err(TokenProblem::AlreadyUsed)
    );
}

#[test]
fn expiry_deletes_only_unregistered_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    let reg = Registry::open_with_cache(&path, 1).unwrap();
    {
        let mut t = reg.txn();
        t.put_certificate(cert("pending", CertStatus::PendingActivation));
        let mut attached = cert("attached", CertStatus::PendingActivation);
        attached.things.insert("t".into());
        t.put_certificate(attached);
        t.put_certificate(cert("used", CertStatus::PendingActivation));
        t.put_token("a", token("pending", 10));
        t.put_token("b", token("attached", 10));
        t.put_token("c", token("used", 10));
        t.consume_token("c").unwrap();
        t.commit_blocking().unwrap();
    }
    // An uncommitted token is seen by expiry too.
    reg.set_storage_delay(Duration::from_millis(200));
    {
        let mut t = reg.txn();
        t.put_certificate(cert("late", CertStatus::PendingActivation));
        t.put_token("d", token("late", 10));
    }
    assert_eq!(reg.expire_tokens(5).unwrap(), Vec::<String>::new());
    let mut expired = reg.expire_tokens(10).unwrap();
    expired.sort();
    assert_eq!(expired, ["late", "pending"]);
    reg.set_storage_delay(Duration::ZERO);
    reg.flush().unwrap();
    assert!(reg.certificate("pending").unwrap().is_none());
    assert!(reg.certificate("late").unwrap().is_none());
    assert!(reg.certificate("attached").unwrap().is_some());
    assert!(
        reg.certificate("used").unwrap().is_some(),
        "its token was used"
    );
    assert!(reg.tokens_of("pending").unwrap().is_empty());
    assert_eq!(reg.tokens_of("used").unwrap().len(), 1);
    assert_eq!(reg.expire_tokens(10).unwrap(), Vec::<String>::new());
}

#[test]
fn expiry_uses_its_index_and_an_older_registry_loses_the_index_of_tokens_by_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    // A registry as an earlier emulator left it: the index of tokens by certificate, and a
    // certificate whose record names no token (a legacy token, keyed by its hash alone).
    let legacy = "ab".repeat(48);
    {
        let reg = Registry::open(&path).unwrap();
        let mut t = reg.txn();
        t.put_certificate(cert("old", CertStatus::PendingActivation));
        assert_eq!(t.put_token(&legacy, token("old", u64::MAX)).len(), 64);
        t.commit_blocking().unwrap();
        reg.close();
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE INDEX tokens_by_certificate
                     ON tokens (json_extract(json, '$.certificate_id'))",
            )
            .unwrap();
    }
    let reg = Registry::open(&path).unwrap();
    let c = Connection::open(&path).unwrap();
    let old_index: i64 = on_disk(
        &path,
        "SELECT count(*) FROM sqlite_master WHERE name = 'tokens_by_certificate'",
    );
    assert_eq!(
        old_index, 0,
        "the index of tokens by certificate is dropped"
    );
    let plan: String = c
        .query_row(
            &format!("EXPLAIN QUERY PLAN {EXPIRED_TOKENS_SQL}"),
            [1],
            |r| r.get(3),
        )
        .unwrap();
    assert!(
        plan.contains("USING INDEX tokens_unused_by_expiry"),
        "{plan}"
    );
    // The legacy token still redeems, and its certificate's tokens are found by the scan.
    let mut t = reg.txn();
    assert!(t.check_token(&legacy, 0).unwrap().is_ok());
    assert_eq!(t.tokens_of("old").unwrap().len(), 1);
    t.delete_tokens_of("old").unwrap();
    assert_eq!(
        t.check_token(&legacy, 0).unwrap(),
        Err(TokenProblem::Unknown)
    );
    t.commit_blocking().unwrap();
    reg.close();
}

#[test]
fn a_certificate_names_its_token_and_its_tokens_are_found_through_it() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(&dir.path().join("r.db")).unwrap();
    let mine = format!("{:016x}{}", 7u64, "cd".repeat(48));
    let stray = format!("{:016x}{}", 8u64, "ef".repeat(48));
    let mut t = reg.txn();
    let key = t.put_token(&mine, token("c1", u64::MAX));
    assert!(
        key.starts_with("0000000000000007") && key.len() == 16 + 64,
        "{key}"
    );
    // A token that claims the certificate without the certificate naming it is not one of
    // its tokens: the lookup goes through the certificate, not a scan.
    t.put_token(&stray, token("c1", u64::MAX));
    let mut c1 = cert("c1", CertStatus::PendingActivation);
    c1.token_key = Some(key.clone());
    t.put_certificate(c1);
    t.commit_blocking().unwrap();
    assert_eq!(reg.tokens_of("c1").unwrap(), vec![token("c1", u64::MAX)]);
    let mut t = reg.txn();
    t.delete_tokens_of("c1").unwrap();
    t.delete_certificate("c1");
    assert_eq!(t.check_token(&mine, 0).unwrap(), Err(TokenProblem::Unknown));
    assert!(t.check_token(&stray, 0).unwrap().is_ok());
    t.commit_blocking().unwrap();
    reg.close();
}

#[test]
fn a_token_is_keyed_by_its_ordering_prefix_then_its_hash_and_an_older_one_by_its_hash() {
    let ordered = format!("{:016x}{}", 1u64 << 40, "0a".repeat(48));
    let older = "0a".repeat(48);
    let hash = |t: &str| hex::encode(digest::digest(&digest::SHA256, t.as_bytes()));
    assert_eq!(
        token_key(&ordered),
        format!("{}{}", &ordered[..16], hash(&ordered))
    );
    assert_eq!(token_key(&older), hash(&older));
    // Anything else a device may send is keyed by its hash; nothing panics on odd input.
    assert_eq!(token_key(&"é".repeat(56)), hash(&"é".repeat(56)));
    let straddling = format!("a{}a", "é".repeat(55));
    assert_eq!(straddling.len(), 112);
    assert_eq!(token_key(&straddling), hash(&straddling));
    assert_eq!(token_key(""), hash(""));
}

#[test]
fn the_wal_is_checkpointed_by_a_thread_of_its_own_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    let reg = Registry::open(&path).unwrap();
    // Certificates of about a page each, committed in batches, until the WAL holds more
    // than the threshold; the writer's commits never checkpoint.
    let pem = "P".repeat(3000);
    let n = 2 * checkpoint::WAL_CHECKPOINT_PAGES as usize;
    for batch in 0..n / 50 {
        let mut t = reg.txn();
        for i in 0..50 {
            let mut c = cert(&format!("c{batch}-{i}"), CertStatus::Active);
            c.pem = pem.clone();
            t.put_certificate(c);
        }
        t.commit_blocking().unwrap();
    }
    reg.wait_for_checkpoints(1);
    let rows: i64 = on_disk(&path, "SELECT count(*) FROM certificates");
    assert_eq!(rows as usize, n);
}

#[test]
fn a_thing_name_never_written_is_absent_without_a_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    {
        let reg = Registry::open(&path).unwrap();
        let mut t = reg.txn();
        t.put_thing(thing("on-disk"));
        t.commit_blocking().unwrap();
    }
    let reg = Registry::open(&path).unwrap();
    assert!(reg.thing("never-written").unwrap().is_none());
    assert_eq!(
        reg.held(),
        0,
        "a name never written is neither read nor cached"
    );
    // A name on disk is known from the scan at open, and read.
    assert_eq!(reg.thing("on-disk").unwrap().unwrap().name, "on-disk");
    assert_eq!(reg.held(), 1);
    // A name written since is known too; deleted, its hash stays and the disk says absent.
    let mut t = reg.txn();
    t.put_thing(thing("new"));
    t.delete_thing("on-disk");
    t.commit_blocking().unwrap();
    assert!(reg.thing("new").unwrap().is_some());
    assert!(reg.thing("on-disk").unwrap().is_none());
    reg.close();
    drop(reg);
    let reg = Registry::open(&path).unwrap();
    assert!(reg.thing("new").unwrap().is_some());
    assert!(reg.thing("on-disk").unwrap().is_none());
}
