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
//! Why claims run before the group commit, in statements of their own (autocommit): the
//! writer's transaction holds the row locks of every device it touched until COMMIT. Were
//! the claim inside it, two stations each committing one of two boards the other then
//! placed would wait for each other (a deadlock, broken by the server failing one).
//!
//! Why a claim locks no lease it does not take: a group commit lets go of its station's
//! leases (deletes their rows) in the order its changes came, not sorted. The first claim
//! statement, `INSERT … ON CONFLICT DO UPDATE … WHERE`, locked every conflicting row, also
//! those whose `WHERE` refused the update (a live lease of another station), and kept them
//! locked until it committed. A claim that had so locked lease U of station A, and then
//! waited for lease V which A's open group commit was deleting, deadlocked with that commit
//! as soon as it went on to delete U (seen with two lines on 300 shared serials). Now a claim
//! is two statements, each its own transaction: new leases are inserted with
//! `ON CONFLICT DO NOTHING`, which locks nothing it does not insert; then the serials that
//! have a lease already take over those that are this station's or expired, locked in serial
//! order by a `SELECT … FOR UPDATE` that only ever locks such rows. A live lease of another
//! station is only read. So a claim waits for other stations' transactions, but none of
//! theirs waits for a claim — except where a station, stalled past its lease, lets go of or
//! renews a lease another station is taking over at that moment; the server then fails one of
//! the two, and a claim that fails so is taken again ([`CLAIM_ROUNDS`]).
//!
//! A claim's transactions do not wait for their WAL flush (`synchronous_commit = off`): the
//! group commit after them, which answers the `begin`, flushes the WAL past them. Times are
//! the server's clock (`now()`), so the stations' clocks need not agree.

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
    insert: Statement,
    take: Statement,
    holders: Statement,
    renew: Statement,
}

/// How many rounds a claim takes at most: a serial whose holder let it go between the claim
/// and the look at who holds it, or a claim the server failed to break a deadlock, is
/// claimed again in the next round.
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
            // New leases, in serial order (claims of two stations meet in one order); a
            // serial with a lease already is left alone and not locked.
            insert: client.prepare(
                "INSERT INTO leases (serial, station, taken_at, expires_at)
                 SELECT s, $2::text, now(), now() + $3::bigint * interval '1 millisecond'
                 FROM unnest($1::text[]) AS s ORDER BY s
                 ON CONFLICT (serial) DO NOTHING
                 RETURNING serial",
            )?,
            // This station's own leases (renewed) and expired ones (taken over), locked in
            // serial order; a row is locked only if it is one of those (FOR UPDATE checks the
            // condition again on the row it locks).
            take: client.prepare(
                "WITH mine AS (
                     SELECT serial FROM leases
                     WHERE serial = ANY($1::text[]) AND (station = $2 OR expires_at <= now())
                     ORDER BY serial FOR UPDATE
                 )
                 UPDATE leases l SET
                     station = $2,
                     taken_at = CASE WHEN l.station = $2 THEN l.taken_at ELSE now() END,
                     expires_at = now() + $3::bigint * interval '1 millisecond'
                 FROM mine WHERE l.serial = mine.serial
                 RETURNING l.serial",
            )?,
            holders: client.prepare(
                "SELECT serial, station,
                        ceil(extract(epoch FROM expires_at - now()))::bigint
                 FROM leases WHERE serial = ANY($1::text[])",
            )?,
            // Locked in serial order, as claims lock them.
            renew: client.prepare(
                "WITH mine AS (
                     SELECT serial FROM leases WHERE station = $1 ORDER BY serial FOR UPDATE
                 )
                 UPDATE leases l SET expires_at = now() + $2::bigint * interval '1 millisecond'
                 FROM mine WHERE l.serial = mine.serial AND l.station = $1",
            )?,
        })
    }

    /// How often the writer renews: a third of the lease, so two renewals may be late before
    /// a lease of a live station expires.
    pub(super) fn renew_every(&self) -> Duration {
        Duration::from_millis((self.lease_ms / 3).max(1) as u64)
    }

    /// Claims `serials` (sorted, without duplicates) in statements of their own; what each
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
            // commit that follows it, and that commit flushes the WAL up to itself, the claims
            // included (a claim lost in a server crash was never answered).
            let mut deadlocked = false;
            for statement in [&self.insert, &self.take] {
                match self.run(client, statement, &open) {
                    Ok(taken) => {
                        for serial in taken {
                            found.insert(serial, Claim::Ours);
                        }
                    }
                    // Failed by the server to break a deadlock with a stalled station (see
                    // the module's comment): nothing was taken; the next round tries again.
                    Err(e) if is_deadlock(&e) => deadlocked = true,
                    Err(e) => return Err(e),
                }
                open.retain(|s| !found.contains_key(s));
                if open.is_empty() {
                    return Ok(found);
                }
            }
            if deadlocked {
                continue;
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

    /// Runs one claim statement over `serials` in a transaction of its own; the serials it
    /// took.
    fn run(
        &self,
        client: &mut Client,
        statement: &Statement,
        serials: &[String],
    ) -> Result<Vec<String>, postgres::Error> {
        let mut tx = client.transaction()?;
        tx.batch_execute("SET LOCAL synchronous_commit TO off")?;
        let taken = tx
            .query(statement, &[&serials, &self.station, &self.lease_ms])?
            .iter()
            .map(|row| row.try_get::<_, String>(0))
            .collect::<Result<Vec<_>, _>>()?;
        tx.commit()?;
        Ok(taken)
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

/// The server failed the statement to break a deadlock.
fn is_deadlock(e: &postgres::Error) -> bool {
    e.code() == Some(&postgres::error::SqlState::T_R_DEADLOCK_DETECTED)
}
