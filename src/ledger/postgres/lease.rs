//! Serial leases on the shared PostgreSQL ledger: one serial, one station.
//!
//! When a board is placed, its station claims the serial (table `leases`, migration 3): an
//! insert under the serial's primary key, or an update of a lease that is already this
//! station's or has expired. A lease held by another station and not expired refuses the
//! board ([`Claim::Held`], then `LedgerError::HeldElsewhere` naming that station). The writer
//! renews all of its station's leases every third of `station.lease_s` (one statement, however
//! many devices are in flight), and deletes a lease in the same savepoint that records its
//! device verified, failed or interrupted; a station that stops cleanly deletes what it still
//! holds. A station that dies holds its leases until they expire, `station.lease_s` after its
//! last renewal; another station may then claim the serial and resume the device.
//!
//! Why claims run before the group commit, in a statement of their own (autocommit): the
//! writer's transaction holds the row locks of every device it touched until COMMIT. Were
//! the claim inside it, two stations each committing one of two boards the other then
//! placed would wait for each other (a deadlock, broken by the server failing one). Here a
//! claim statement holds no lock when it starts, and takes the lease rows of a batch in
//! serial order (one statement for the whole batch, rows sorted), so two claims never wait for
//! each other in a cycle; and a group commit only touches the rows of serials its station
//! holds, so it never waits for another station's commit. The claim's transaction does not
//! wait for its WAL flush (`synchronous_commit = off`): the group commit after it, which
//! answers the `begin`, flushes the WAL past it. Times are the server's clock
//! (`now()`), so the stations' clocks need not agree.

use std::collections::HashMap;
use std::time::Duration;

use postgres::{Client, Statement};

/// What claiming a serial found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Claim {
    /// The lease is this station's (new, renewed, or taken over after it expired).
    Ours,
    /// Another station holds a live lease.
    Held {
        station: String,
        /// Seconds until that lease expires unless its station renews it.
        expires_in_s: i64,
    },
}

/// The lease statements, prepared once on the writer's connection.
pub(super) struct Leases {
    station: String,
    lease_ms: i64,
    claim: Statement,
    holders: Statement,
    renew: Statement,
}

/// How many times a claim is taken again for a serial whose holder released it between the
/// claim and the look at who holds it.
const CLAIM_ROUNDS: usize = 4;

impl Leases {
    /// Prepares the statements for station `station` with leases of `lease`.
    pub(super) fn prepare(
        client: &mut Client,
        station: &str,
        lease: Duration,
    ) -> Result<Leases, postgres::Error> {
        Ok(Leases {
            station: station.to_string(),
            lease_ms: lease.as_millis().min(i64::MAX as u128) as i64,
            // Rows in serial order: two stations' claims lock shared serials in one order.
            claim: client.prepare(
                "INSERT INTO leases (serial, station, taken_at, expires_at)
                 SELECT s, $2::text, now(), now() + $3::bigint * interval '1 millisecond'
                 FROM unnest($1::text[]) AS s ORDER BY s
                 ON CONFLICT (serial) DO UPDATE SET
                     station = EXCLUDED.station,
                     taken_at = CASE WHEN leases.station = EXCLUDED.station
                                     THEN leases.taken_at ELSE EXCLUDED.taken_at END,
                     expires_at = EXCLUDED.expires_at
                 WHERE leases.station = EXCLUDED.station OR leases.expires_at <= now()
                 RETURNING serial",
            )?,
            holders: client.prepare(
                "SELECT serial, station,
                        ceil(extract(epoch FROM expires_at - now()))::bigint
                 FROM leases WHERE serial = ANY($1::text[])",
            )?,
            renew: client.prepare(
                "UPDATE leases SET expires_at = now() + $2::bigint * interval '1 millisecond'
                 WHERE station = $1",
            )?,
        })
    }

    /// How often the writer renews: a third of the lease, so two renewals may be late before
    /// a lease of a live station expires.
    pub(super) fn renew_every(&self) -> Duration {
        Duration::from_millis((self.lease_ms / 3).max(1) as u64)
    }

    /// Claims `serials` (sorted, without duplicates) in autocommit statements; what each
    /// found.
    pub(super) fn claim(
        &self,
        client: &mut Client,
        serials: &[String],
    ) -> Result<HashMap<String, Claim>, postgres::Error> {
        let mut found = HashMap::with_capacity(serials.len());
        let mut open: Vec<String> = serials.to_vec();
        for _ in 0..CLAIM_ROUNDS {
            if open.is_empty() {
                break;
            }
            // Without waiting for its own WAL flush: nothing acts on a claim before the group
            // commit that follows it, and that commit flushes the WAL up to itself, the claim
            // included (a claim lost in a server crash was never answered).
            let mut tx = client.transaction()?;
            tx.batch_execute("SET LOCAL synchronous_commit TO off")?;
            for row in tx.query(&self.claim, &[&open, &self.station, &self.lease_ms])? {
                found.insert(row.try_get::<_, String>(0)?, Claim::Ours);
            }
            tx.commit()?;
            open.retain(|s| !found.contains_key(s));
            if open.is_empty() {
                break;
            }
            for row in client.query(&self.holders, &[&open])? {
                let serial: String = row.try_get(0)?;
                let station: String = row.try_get(1)?;
                let expires_in_s: i64 = row.try_get::<_, Option<i64>>(2)?.unwrap_or(0);
                found.insert(
                    serial,
                    Claim::Held {
                        station,
                        expires_in_s: expires_in_s.max(0),
                    },
                );
            }
            // A serial with neither was released in between: claim it again.
            open.retain(|s| !found.contains_key(s));
        }
        // Released and taken again at every look (never seen in tests): refused, unnamed.
        for serial in open {
            found.insert(
                serial,
                Claim::Held {
                    station: "another station".into(),
                    expires_in_s: 0,
                },
            );
        }
        Ok(found)
    }

    /// Renews every lease this station holds.
    pub(super) fn renew(&self, client: &mut Client) -> Result<u64, postgres::Error> {
        client.execute(&self.renew, &[&self.station, &self.lease_ms])
    }

    /// Deletes every lease this station still holds (a clean stop, or at start those of an
    /// earlier run under this id): its unfinished devices can be taken over at once.
    pub(super) fn release_all(&self, client: &mut Client) -> Result<u64, postgres::Error> {
        client.execute("DELETE FROM leases WHERE station = $1", &[&self.station])
    }
}
