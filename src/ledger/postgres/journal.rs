//! The SQL of the PostgreSQL ledger's changes, each run by the writer inside its transaction
//! (in a savepoint of its own): `begin` (with the resume point of a device that resumes), a
//! [`Transition`], a note, a lost request — the same statements and rules as the SQLite
//! ledger's (`sqlite/journal.rs`, `sqlite/orphans.rs`). A device's row is locked
//! (`FOR UPDATE`) before it is changed, so two stations touching one board take turns.
//!
//! Leases (`lease`): `begin` reads what the writer's claim found and refuses a serial another
//! station holds ([`Began::Held`]); a verified device's lease is let go at once. A change to
//! a device whose lease another station has taken since (this station's expired) is refused
//! ([`ChangeError::LeaseLost`]). Recording a device verified, failed or interrupted deletes its
//! lease in the same savepoint. An orphan names the station whose key or certificate it was
//! (`key_station`, set when the key is reserved or the certificate received).

use std::collections::HashMap;

use postgres::types::ToSql;
use postgres::{Row, Statement, Transaction};
use zeroize::Zeroizing;

use super::lease::Claim;
use crate::fleet::payloads::Secret;
use crate::keys::KeySource;
use crate::ledger::seal::Sealer;
use crate::ledger::{Began, DeviceState, OrphanStatus, Resume, Transition, now_ms};

/// Why a change was not recorded.
#[derive(Debug)]
pub(super) enum ChangeError {
    /// The server or the connection failed the statement.
    Pg(postgres::Error),
    /// The device's serial is now leased to `holder`: this station's lease expired and was
    /// taken over.
    LeaseLost { serial: String, holder: String },
}

impl From<postgres::Error> for ChangeError {
    fn from(e: postgres::Error) -> ChangeError {
        ChangeError::Pg(e)
    }
}

type Result<T> = std::result::Result<T, ChangeError>;
type Params<'p> = &'p [&'p (dyn ToSql + Sync)];

/// The writer's prepared statements, kept for the connection's life: preparing costs a round
/// trip to the server.
#[derive(Default)]
pub(super) struct Statements(HashMap<&'static str, Statement>);

/// The writer's transaction (a change's savepoint) and its prepared statements.
pub(super) struct Tx<'a, 't> {
    pub(super) tx: &'a mut Transaction<'t>,
    pub(super) statements: &'a mut Statements,
    /// What the batch's lease claims found, by serial.
    pub(super) claims: &'a HashMap<String, Claim>,
}

impl Tx<'_, '_> {
    fn statement(&mut self, sql: &'static str) -> std::result::Result<Statement, postgres::Error> {
        if let Some(s) = self.statements.0.get(sql) {
            return Ok(s.clone());
        }
        let s = self.tx.prepare(sql)?;
        self.statements.0.insert(sql, s.clone());
        Ok(s)
    }

    fn execute(&mut self, sql: &'static str, params: Params<'_>) -> Result<u64> {
        let s = self.statement(sql)?;
        Ok(self.tx.execute(&s, params)?)
    }

    fn query_opt(&mut self, sql: &'static str, params: Params<'_>) -> Result<Option<Row>> {
        let s = self.statement(sql)?;
        Ok(self.tx.query_opt(&s, params)?)
    }

    fn query_one(&mut self, sql: &'static str, params: Params<'_>) -> Result<Row> {
        let s = self.statement(sql)?;
        Ok(self.tx.query_one(&s, params)?)
    }
}

/// Adds an audit-trail entry.
pub(super) fn event(
    tx: &mut Tx<'_, '_>,
    id: i64,
    state: &str,
    detail: Option<&str>,
    now: i64,
) -> Result<()> {
    tx.execute(
        "INSERT INTO events (device_id, state, detail, at_ms) VALUES ($1, $2, $3, $4)",
        &[&id, &state, &detail, &now],
    )?;
    Ok(())
}

/// Records that `station` is provisioning board `serial` on `jig`: a new row, a failed or
/// interrupted device started over (same row, one more attempt), or an unfinished one kept in
/// its state to resume there. A verified device is refused and nothing is written (its lease
/// is let go); so is a serial another station holds (nothing is read or written).
pub(super) fn begin(
    tx: &mut Tx<'_, '_>,
    sealer: &Sealer,
    serial: &str,
    jig: &str,
    station: &str,
) -> Result<Began> {
    if let Some(Claim::Held {
        station: holder,
        expires_in_s,
    }) = tx.claims.get(serial)
    {
        return Ok(Began::Held {
            station: holder.clone(),
            expires_in_s: *expires_in_s,
        });
    }
    let now = now_ms();
    // Another station may insert the same serial between our look and our insert: the insert
    // then does nothing, and the look is taken again (the row exists by then).
    let (id, state, thing) = loop {
        let existing = tx.query_opt(
            "SELECT id, state, thing_name FROM devices WHERE serial = $1 FOR UPDATE",
            &[&serial],
        )?;
        if let Some(r) = existing {
            break (
                r.try_get::<_, i64>(0)?,
                r.try_get::<_, String>(1)?,
                r.try_get::<_, Option<String>>(2)?,
            );
        }
        let inserted = tx.query_opt(
            "INSERT INTO devices (serial, jig, station, state, created_ms, updated_ms)
             VALUES ($1, $2, $3, 'started', $4, $4)
             ON CONFLICT (serial) DO NOTHING RETURNING id",
            &[&serial, &jig, &station, &now],
        )?;
        if let Some(r) = inserted {
            let id: i64 = r.try_get(0)?;
            event(tx, id, "started", Some(&format!("jig={jig}")), now)?;
            return Ok(Began::Fresh(id));
        }
    };
    match DeviceState::parse(&state) {
        Some(DeviceState::Verified) => {
            release(tx, serial, station)?;
            Ok(Began::Verified {
                thing: thing.unwrap_or_default(),
            })
        }
        Some(DeviceState::Failed | DeviceState::Interrupted) => {
            tx.execute(
                "UPDATE devices SET jig = $2, station = $3, state = 'started', reason = NULL,
                 key_source = NULL, public_key_sha256 = NULL, sealed_key = NULL,
                 attempts = attempts + 1, updated_ms = $4 WHERE id = $1",
                &[&id, &jig, &station, &now],
            )?;
            event(tx, id, "started", Some(&format!("jig={jig}")), now)?;
            Ok(Began::Fresh(id))
        }
        _ => {
            // Unfinished by an earlier run: keep its state so it resumes there.
            tx.execute(
                "UPDATE devices SET jig = $2, station = $3, attempts = attempts + 1,
                 updated_ms = $4 WHERE id = $1",
                &[&id, &jig, &station, &now],
            )?;
            event(
                tx,
                id,
                "resumed",
                Some(&format!("jig={jig} from={state}")),
                now,
            )?;
            Ok(match resume_point(tx, sealer, id)? {
                Some(resume) => Began::Resumed(id, resume),
                None => Began::Fresh(id),
            })
        }
    }
}

/// Where device `id` resumes: `None` unless its state [resumes](DeviceState::resumes). A
/// sealed key that does not open under this station's key is left out.
fn resume_point(tx: &mut Tx<'_, '_>, sealer: &Sealer, id: i64) -> Result<Option<Resume>> {
    let Some(r) = tx.query_opt(
        "SELECT serial, state, key_source, sealed_key, public_key_sha256, certificate_id,
         certificate_pem, token, token_expires_ms, thing_name, device_configuration
         FROM devices WHERE id = $1",
        &[&id],
    )?
    else {
        return Ok(None);
    };
    let serial: String = r.try_get(0)?;
    let state = DeviceState::stored(&r.try_get::<_, String>(1)?);
    if !state.resumes() {
        return Ok(None);
    }
    let source: Option<String> = r.try_get(2)?;
    let sealed: Option<Vec<u8>> = r.try_get(3)?;
    let private_key = sealed
        .and_then(|s| sealer.open(&serial, &s))
        .and_then(|k: Zeroizing<Vec<u8>>| String::from_utf8(k.to_vec()).ok())
        .map(Secret::new);
    let config: Option<String> = r.try_get(10)?;
    Ok(Some(Resume {
        state,
        key_source: source.as_deref().and_then(KeySource::parse),
        private_key,
        public_key_sha256: r.try_get(4)?,
        certificate_id: r.try_get(5)?,
        certificate_pem: r.try_get(6)?,
        token: r.try_get::<_, Option<String>>(7)?.map(Secret::new),
        token_expires_ms: r.try_get(8)?,
        thing_name: r.try_get(9)?,
        device_configuration: config
            .and_then(|c| serde_json::from_str(&c).ok())
            .unwrap_or_default(),
    }))
}

/// Records a state change of device `id` and what it implies: a station-made or AWS-made key
/// sealed, an abandoned certificate moved to the orphans, secrets dropped once done.
pub(super) fn transition(
    tx: &mut Tx<'_, '_>,
    sealer: &Sealer,
    station: &str,
    id: i64,
    t: &Transition,
) -> Result<()> {
    let now = now_ms();
    let state = t.state().as_str();
    let row = tx.query_one(
        "SELECT d.serial, l.station FROM devices d LEFT JOIN leases l ON l.serial = d.serial
         WHERE d.id = $1 FOR UPDATE OF d",
        &[&id],
    )?;
    let serial: String = row.try_get(0)?;
    match row.try_get::<_, Option<String>>(1)? {
        Some(holder) if holder != station => {
            return Err(ChangeError::LeaseLost { serial, holder });
        }
        _ => {}
    }
    let seal = |k: &Secret| sealer.seal(&serial, k.expose().as_bytes());
    let detail: Option<String> = match t {
        Transition::KeyReserved {
            source,
            public_key_sha256,
            private_key,
        } => {
            tx.execute(
                "UPDATE devices SET state = $2, key_source = $3, public_key_sha256 = $4,
                 sealed_key = $5, updated_ms = $6, key_station = $7 WHERE id = $1",
                &[
                    &id,
                    &state,
                    &source.as_str(),
                    public_key_sha256,
                    &private_key.as_ref().map(seal),
                    &now,
                    &station,
                ],
            )?;
            Some(format!("source={}", source.as_str()))
        }
        Transition::CertificateIssued {
            certificate_id,
            certificate_pem,
            token,
            token_expires_ms,
            private_key,
            public_key_sha256,
        } => {
            // A certificate this device held before is abandoned now.
            orphan_current(tx, id, "replaced by a new certificate", now, true, None)?;
            tx.execute(
                "UPDATE devices SET state = $2, certificate_id = $3, certificate_pem = $4,
                 token = $5, token_expires_ms = $6, updated_ms = $7, key_station = $8
                 WHERE id = $1",
                &[
                    &id,
                    &state,
                    certificate_id,
                    certificate_pem,
                    &token.expose(),
                    &(*token_expires_ms as i64),
                    &now,
                    &station,
                ],
            )?;
            if let Some(k) = private_key {
                tx.execute(
                    "UPDATE devices SET sealed_key = $2 WHERE id = $1",
                    &[&id, &seal(k)],
                )?;
            }
            if let Some(pk) = public_key_sha256 {
                tx.execute(
                    "UPDATE devices SET public_key_sha256 = $2 WHERE id = $1",
                    &[&id, pk],
                )?;
            }
            Some(format!("certificate_id={certificate_id}"))
        }
        Transition::Registered {
            thing_name,
            device_configuration,
        } => {
            // An earlier certificate of this device that a lost RegisterThing made active was
            // recorded before the thing's name was known: it is this thing.
            tx.execute(
                "UPDATE orphans SET thing_name = $2
                 WHERE serial = $1 AND status = 'active' AND thing_name IS NULL",
                &[&serial, thing_name],
            )?;
            let config = serde_json::to_string(device_configuration).expect("string map");
            tx.execute(
                "UPDATE devices SET state = $2, thing_name = $3, device_configuration = $4,
                 updated_ms = $5 WHERE id = $1",
                &[&id, &state, thing_name, &config, &now],
            )?;
            Some(format!("thing_name={thing_name}"))
        }
        Transition::Written => {
            tx.execute(
                "UPDATE devices SET state = $2, updated_ms = $3 WHERE id = $1",
                &[&id, &state, &now],
            )?;
            None
        }
        Transition::Verified => {
            // The token and the sealed key have done their job; drop them.
            tx.execute(
                "UPDATE devices SET state = $2, token = NULL, sealed_key = NULL,
                 reason = NULL, updated_ms = $3 WHERE id = $1",
                &[&id, &state, &now],
            )?;
            release(tx, &serial, station)?;
            None
        }
        Transition::CertificateAbandoned { reason, status } => {
            orphan_current(tx, id, reason, now, false, Some(*status))?;
            // Back to the start with no key: the next attempt reserves a fresh one.
            tx.execute(
                "UPDATE devices SET state = $2, key_source = NULL, public_key_sha256 = NULL,
                 sealed_key = NULL, updated_ms = $3 WHERE id = $1",
                &[&id, &state, &now],
            )?;
            Some(format!(
                "certificate abandoned ({}): {reason}",
                status.as_str()
            ))
        }
        Transition::KeyReleased { reason } => {
            // Only a key no certificate came for: a device holding one keeps it.
            let released = tx.execute(
                "UPDATE devices SET state = $2, key_source = NULL, public_key_sha256 = NULL,
                 sealed_key = NULL, updated_ms = $3
                 WHERE id = $1 AND state = 'key_reserved' AND certificate_id IS NULL",
                &[&id, &state, &now],
            )?;
            if released == 0 {
                return Ok(());
            }
            Some(format!("key released: {reason}"))
        }
        Transition::Failed { reason } | Transition::Interrupted { reason } => {
            orphan_current(tx, id, reason, now, false, None)?;
            tx.execute(
                "UPDATE devices SET state = $2, reason = $3, token = NULL, sealed_key = NULL,
                 updated_ms = $4 WHERE id = $1",
                &[&id, &state, reason, &now],
            )?;
            release(tx, &serial, station)?;
            Some(reason.clone())
        }
    };
    event(tx, id, state, detail.as_deref(), now)
}

/// Lets this station's lease on `serial` go (its device is done, for now or for good).
fn release(tx: &mut Tx<'_, '_>, serial: &str, station: &str) -> Result<()> {
    tx.execute(
        "DELETE FROM leases WHERE serial = $1 AND station = $2",
        &[&serial, &station],
    )?;
    Ok(())
}

/// Lets this station's lease on device `id`'s serial go (a load test's device, which ends at
/// `registered`, with no board to write).
pub(super) fn release_device(tx: &mut Tx<'_, '_>, id: i64, station: &str) -> Result<()> {
    tx.execute(
        "DELETE FROM leases WHERE station = $2 AND serial = (SELECT serial FROM devices WHERE id = $1)",
        &[&id, &station],
    )?;
    Ok(())
}

/// Lists device `id`'s current public key as a `pending` orphan without certificate id (once
/// per key) and notes `request_lost`; nothing when the device has no public key on record.
pub(super) fn lost_request(tx: &mut Tx<'_, '_>, id: i64, reason: &str) -> Result<()> {
    let now = now_ms();
    let Some(r) = tx.query_opt(
        "SELECT serial, public_key_sha256, coalesce(key_station, station) FROM devices
         WHERE id = $1 FOR UPDATE",
        &[&id],
    )?
    else {
        return Ok(());
    };
    let serial: String = r.try_get(0)?;
    let pk: Option<String> = r.try_get(1)?;
    let station: String = r.try_get(2)?;
    if let Some(pk) = pk {
        insert_orphan(
            tx,
            &NewOrphan {
                certificate_id: None,
                public_key_sha256: Some(&pk),
                serial: &serial,
                station: &station,
                status: OrphanStatus::Pending,
                thing_name: None,
                reason,
            },
            now,
        )?;
        event(tx, id, "request_lost", Some(reason), now)?;
    }
    Ok(())
}

/// An orphan to record.
struct NewOrphan<'a> {
    certificate_id: Option<&'a str>,
    public_key_sha256: Option<&'a str>,
    serial: &'a str,
    /// The station whose key or certificate it was.
    station: &'a str,
    status: OrphanStatus,
    thing_name: Option<&'a str>,
    reason: &'a str,
}

/// Records an orphan unless the same one is listed already: the same serial and certificate
/// id, or (no certificate id) the same serial and public key.
fn insert_orphan(tx: &mut Tx<'_, '_>, o: &NewOrphan<'_>, now: i64) -> Result<()> {
    tx.execute(
        "INSERT INTO orphans (certificate_id, public_key_sha256, serial, status, thing_name, reason, recorded_ms, station)
         SELECT $1::text, $2::text, $3::text, $4::text, $5::text, $6::text, $7::bigint, $8::text
         WHERE NOT EXISTS (
             SELECT 1 FROM orphans WHERE serial = $3::text AND (
                 ($1::text IS NOT NULL AND certificate_id = $1::text)
                 OR ($1::text IS NULL AND certificate_id IS NULL AND public_key_sha256 = $2::text)))",
        &[
            &o.certificate_id,
            &o.public_key_sha256,
            &o.serial,
            &o.status.as_str(),
            &o.thing_name,
            &o.reason,
            &now,
            &o.station,
        ],
    )?;
    Ok(())
}

/// Moves device `id`'s current certificate into `orphans` and clears it (the rule of
/// `sqlite/orphans.rs`'s `orphan_current`, which says why each case is what it is).
fn orphan_current(
    tx: &mut Tx<'_, '_>,
    id: i64,
    reason: &str,
    now: i64,
    only_issued: bool,
    believed: Option<OrphanStatus>,
) -> Result<()> {
    let Some(r) = tx.query_opt(
        "SELECT serial, state, certificate_id, public_key_sha256, thing_name,
         coalesce(key_station, station) FROM devices WHERE id = $1",
        &[&id],
    )?
    else {
        return Ok(());
    };
    let station: String = r.try_get(5)?;
    let serial: String = r.try_get(0)?;
    let state = DeviceState::stored(&r.try_get::<_, String>(1)?);
    let cert: Option<String> = r.try_get(2)?;
    let pk: Option<String> = r.try_get(3)?;
    let thing: Option<String> = r.try_get(4)?;
    let Some(status) = OrphanStatus::of_abandoned(state, cert.is_some(), believed) else {
        return Ok(());
    };
    if cert.is_none() && (only_issued || pk.is_none()) {
        return Ok(());
    }
    let thing = thing.filter(|_| status == OrphanStatus::Active);
    insert_orphan(
        tx,
        &NewOrphan {
            certificate_id: cert.as_deref(),
            public_key_sha256: pk.as_deref(),
            serial: &serial,
            station: &station,
            status,
            thing_name: thing.as_deref(),
            reason,
        },
        now,
    )?;
    tx.execute(
        "UPDATE devices SET certificate_id = NULL, certificate_pem = NULL, token = NULL,
         token_expires_ms = NULL, thing_name = NULL, device_configuration = NULL WHERE id = $1",
        &[&id],
    )?;
    Ok(())
}
