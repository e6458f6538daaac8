//! What the registry holds in memory of one table, and how it reads a row it does not hold.
//!
//! A [`Table`] is an overlay of the records changed but not yet committed (a value or a
//! tombstone, tagged with the sequence number of the write) over a bounded FIFO cache of clean
//! records (equal to their rows on disk). A dirty record is never evicted; the writer turns it
//! clean once the write that made it is committed (see [`Table::settle`]). A record in neither
//! is read from SQLite through the registry's read connection ([`ReadDb`]) and cached, and so
//! is a row that is not there: every write goes through the overlay (one process owns
//! `registry.db`), so a cached absence is replaced by the first write of that key. RegisterThing
//! asks for a new thing name every time; without that, each such miss read the disk again
//! (after every commit of the writer the read connection's page cache starts cold).
//!
//! A table may also know which keys it may hold ([`Table::knowing_keys`], the things): a Bloom
//! filter of every key on disk or written since, filled by one scan of the keys at open. A
//! miss the filter rules out is absent without a read: RegisterThing's lookup of a thing it is
//! about to create read the disk under the registry lock for every device (measured: removing
//! that read gave +7.9 % devices/s in a 5,000-device load test, the tokio workers having
//! waited on the lock behind it). A key is never taken out (a deleted key stays), so the
//! filter only ever says "maybe, read the disk" wrongly, never "absent". Its size is fixed
//! ([`BLOOM_BITS`], 1 MiB), so memory stays flat however many things: ~0.004 % of the lookups
//! of new names read the disk anyway at 100,000 things, ~3 % at a million.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};

use rusqlite::{Connection, OptionalExtension};
use serde::de::DeserializeOwned;

use super::RegistryError;

/// The registry's tables, in the order of [`TableId`].
pub(super) const TABLES: [&str; 4] = ["certificates", "tokens", "things", "policies"];

/// A table of the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TableId {
    Certificates = 0,
    Tokens = 1,
    Things = 2,
    Policies = 3,
}

impl TableId {
    pub(super) fn name(self) -> &'static str {
        TABLES[self as usize]
    }
    /// `SELECT json FROM <table> WHERE key = ?1`.
    fn select_sql(self) -> &'static str {
        [
            "SELECT json FROM certificates WHERE key = ?1",
            "SELECT json FROM tokens WHERE key = ?1",
            "SELECT json FROM things WHERE key = ?1",
            "SELECT json FROM policies WHERE key = ?1",
        ][self as usize]
    }
    /// `INSERT .. ON CONFLICT DO UPDATE` of one row.
    pub(super) fn upsert_sql(self) -> &'static str {
        [
            "INSERT INTO certificates (key, json) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET json = excluded.json",
            "INSERT INTO tokens (key, json) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET json = excluded.json",
            "INSERT INTO things (key, json) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET json = excluded.json",
            "INSERT INTO policies (key, json) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET json = excluded.json",
        ][self as usize]
    }
    pub(super) fn delete_sql(self) -> &'static str {
        [
            "DELETE FROM certificates WHERE key = ?1",
            "DELETE FROM tokens WHERE key = ?1",
            "DELETE FROM things WHERE key = ?1",
            "DELETE FROM policies WHERE key = ?1",
        ][self as usize]
    }
}

/// The read connection of the registry: `query_only`, used under the registry lock. In WAL
/// mode it never blocks the writer, and each read sees the last commit.
pub(super) struct ReadDb {
    pub(super) conn: Connection,
    pub(super) path: String,
}

impl ReadDb {
    fn sqlite(&self, table: TableId, key: &str, source: rusqlite::Error) -> RegistryError {
        tracing::error!(table = table.name(), %key, error = %source, "emulator registry: a row could not be read");
        RegistryError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Parses a stored row; a row that does not parse is [`RegistryError::Corrupt`] (logged).
    pub(super) fn parse<T: DeserializeOwned>(
        &self,
        table: TableId,
        key: &str,
        json: &str,
    ) -> Result<T, RegistryError> {
        serde_json::from_str(json).map_err(|e| {
            tracing::error!(table = table.name(), %key, error = %e, "emulator registry: a stored row does not parse; the request reading it fails");
            RegistryError::Corrupt {
                path: self.path.clone(),
                table: table.name(),
                key: key.to_string(),
                reason: e.to_string(),
            }
        })
    }

    /// The row `key` of `table`, if there is one.
    fn load<T: DeserializeOwned>(
        &self,
        table: TableId,
        key: &str,
    ) -> Result<Option<T>, RegistryError> {
        let json: Option<String> = self
            .conn
            .prepare_cached(table.select_sql())
            .and_then(|mut s| s.query_row([key], |r| r.get(0)).optional())
            .map_err(|e| self.sqlite(table, key, e))?;
        json.map(|j| self.parse(table, key, &j)).transpose()
    }

    /// Every row of `sql` (which selects `key, json`), with `param` bound if given.
    pub(super) fn rows(
        &self,
        table: TableId,
        sql: &str,
        param: Option<&dyn rusqlite::ToSql>,
    ) -> Result<Vec<(String, String)>, RegistryError> {
        let run = || -> rusqlite::Result<Vec<(String, String)>> {
            let mut stmt = self.conn.prepare_cached(sql)?;
            let params: Vec<&dyn rusqlite::ToSql> = param.into_iter().collect();
            let rows = stmt.query_map(params.as_slice(), |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        };
        run().map_err(|e| self.sqlite(table, "*", e))
    }
}

/// A record changed under the lock and not yet committed: its value, or `None` if deleted.
struct Dirty<T> {
    seq: u64,
    value: Option<T>,
}

/// One table's records in memory: the uncommitted overlay and the clean cache.
pub(super) struct Table<T> {
    id: TableId,
    dirty: HashMap<String, Dirty<T>>,
    /// Clean records (`None`: no such row), with the generation of their entry in `order`.
    clean: HashMap<String, (Option<T>, u64)>,
    /// Insertion order of the clean records (FIFO eviction). An entry whose generation is not
    /// its record's any more (the record was changed or re-cached since) is stale and only
    /// counts against the cap, so `clean.len() <= order.len() <= cap`.
    order: VecDeque<(String, u64)>,
    generation: u64,
    cap: usize,
    /// Every key on disk or written since, when the table tracks them.
    known: Option<Bloom>,
}

/// Bits of a table's [`Bloom`] filter: 2^23, 1 MiB.
pub(super) const BLOOM_BITS: u64 = 1 << 23;

/// A Bloom filter of keys with three probes, fixed in size: `may_hold` is false only for a
/// key never added.
struct Bloom {
    words: Vec<u64>,
}

impl Bloom {
    fn new() -> Bloom {
        Bloom {
            words: vec![0; (BLOOM_BITS / 64) as usize],
        }
    }

    /// The three bit positions of `key` (double hashing of one SipHash with fixed keys).
    fn probes(key: &str) -> [u64; 3] {
        let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
        let (a, b) = (h, h.rotate_left(32) | 1);
        [0u64, 1, 2].map(|i| a.wrapping_add(i.wrapping_mul(b)) % BLOOM_BITS)
    }

    fn add(&mut self, key: &str) {
        for bit in Bloom::probes(key) {
            self.words[(bit / 64) as usize] |= 1 << (bit % 64);
        }
    }

    fn may_hold(&self, key: &str) -> bool {
        Bloom::probes(key)
            .iter()
            .all(|bit| self.words[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
    }
}

impl<T: DeserializeOwned> Table<T> {
    pub(super) fn new(id: TableId, cap: usize) -> Table<T> {
        Table {
            id,
            dirty: HashMap::new(),
            clean: HashMap::new(),
            order: VecDeque::new(),
            generation: 0,
            cap: cap.max(1),
            known: None,
        }
    }

    /// From now on the table knows its keys: those on disk (one scan of the key column) and
    /// every key written after; a miss on a key it does not know reads nothing.
    pub(super) fn knowing_keys(mut self, db: &ReadDb) -> Result<Table<T>, RegistryError> {
        let sql = format!("SELECT key FROM {}", self.id.name());
        let mut known = Bloom::new();
        (|| -> rusqlite::Result<()> {
            let mut stmt = db.conn.prepare(&sql)?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                known.add(row.get_ref(0)?.as_str().unwrap_or_default());
            }
            Ok(())
        })()
        .map_err(|e| db.sqlite(self.id, "*", e))?;
        self.known = Some(known);
        Ok(self)
    }

    /// The current record `key`: the overlay's, the cache's, or the row on disk (then cached).
    pub(super) fn get(&mut self, db: &ReadDb, key: &str) -> Result<Option<&T>, RegistryError> {
        if self.dirty.contains_key(key) {
            return Ok(self.dirty.get(key).and_then(|d| d.value.as_ref()));
        }
        if !self.clean.contains_key(key) {
            if self.known.as_ref().is_some_and(|k| !k.may_hold(key)) {
                // Never on disk and never written: nothing to read (or to cache).
                return Ok(None);
            }
            // Not in the overlay, so its last write is committed: the disk has it (or that
            // there is no such record).
            let value = db.load::<T>(self.id, key)?;
            self.cache(key.to_string(), value);
        }
        Ok(self.clean.get(key).and_then(|(v, _)| v.as_ref()))
    }

    /// Records a write made under the lock (`None`: a delete) with its sequence number.
    pub(super) fn put(&mut self, key: String, value: Option<T>, seq: u64) {
        if let Some(known) = &mut self.known {
            known.add(&key);
        }
        self.clean.remove(&key);
        self.dirty.insert(key, Dirty { seq, value });
    }

    /// The write `seq` of `key` is committed: unless a newer write changed the record since,
    /// it is clean now (cached; a delete is cached as an absence).
    pub(super) fn settle(&mut self, key: &str, seq: u64) {
        if self.dirty.get(key).is_none_or(|d| d.seq != seq) {
            return;
        }
        let Some((key, dirty)) = self.dirty.remove_entry(key) else {
            return;
        };
        self.cache(key, dirty.value);
    }

    fn cache(&mut self, key: String, value: Option<T>) {
        while self.order.len() >= self.cap {
            let Some((old, generation)) = self.order.pop_front() else {
                break;
            };
            if self.clean.get(&old).is_some_and(|(_, g)| *g == generation) {
                self.clean.remove(&old);
            }
        }
        self.generation += 1;
        self.order.push_back((key.clone(), self.generation));
        self.clean.insert(key, (value, self.generation));
    }

    /// Records held in memory: dirty ones and cached clean ones.
    pub(super) fn held(&self) -> usize {
        self.dirty.len() + self.clean.len()
    }

    /// The overlay's records (`None`: deleted), for scans that merge it with the disk.
    pub(super) fn dirty(&self) -> impl Iterator<Item = (&String, Option<&T>)> {
        self.dirty.iter().map(|(k, d)| (k, d.value.as_ref()))
    }
}

impl<T: DeserializeOwned + Clone> Table<T> {
    /// Every record of the table: the rows of `sql` (selecting `key, json`) not overridden by
    /// the overlay, then the overlay's values that `keep` accepts. `keep` must accept every
    /// record the query selects, so disk and memory agree on what is in the scan.
    pub(super) fn scan(
        &self,
        db: &ReadDb,
        sql: &str,
        param: Option<&dyn rusqlite::ToSql>,
        keep: impl Fn(&T) -> bool,
    ) -> Result<Vec<(String, T)>, RegistryError> {
        let mut out = Vec::new();
        for (key, json) in db.rows(self.id, sql, param)? {
            if self.dirty.contains_key(&key) {
                continue;
            }
            let value = match self.clean.get(&key) {
                Some((Some(v), _)) => v.clone(),
                _ => db.parse(self.id, &key, &json)?,
            };
            out.push((key, value));
        }
        for (key, value) in self.dirty() {
            if let Some(v) = value.filter(|v| keep(v)) {
                out.push((key.clone(), v.clone()));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::Bloom;

    #[test]
    fn the_bloom_filter_never_rules_out_a_key_it_was_given_and_few_others_pass() {
        let mut bloom = Bloom::new();
        for i in 0..100_000 {
            bloom.add(&format!("thing-{i}"));
        }
        assert!((0..100_000).all(|i| bloom.may_hold(&format!("thing-{i}"))));
        let passed = (0..100_000)
            .filter(|i| bloom.may_hold(&format!("other-{i}")))
            .count();
        // Three probes in 2^23 bits hold 100,000 keys with ~0.004 % false positives.
        assert!(passed < 100, "{passed} of 100,000 keys never added");
    }
}
