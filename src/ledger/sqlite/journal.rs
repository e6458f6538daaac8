//! The SQL of the ledger's changes, each run by the writer inside its transaction: `begin`
//! (with the resume point of a device that resumes), a [`Transition`], a note, a lost
//! request. Every change of a device's state adds one `events` row (its audit trail).

use rusqlite::{OptionalExtension, Transaction, params};
use zeroize::Zeroizing;

use super::orphans::{NewOrphan, insert_orphan, orphan_current};
use crate::fleet::payloads::Secret;
use crate::keys::KeySource;
use crate::ledger::seal::Sealer;
use crate::ledger::{Began, DeviceState, OrphanStatus, Resume, Transition, now_ms};

/// Adds an audit-trail entry.
pub(super) fn event(
    tx: &Transaction<'_>,
    id: i64,
    state: &str,
    detail: Option<&str>,
    now: i64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO events (device_id, state, detail, at_ms) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![id, state, detail, now])?;
    Ok(())
}

/// Records that `station` is provisioning board `serial` on `jig`: a new row, a failed or
/// interrupted device started over (same row, one more attempt), or an unfinished one kept in
/// its state to resume there. A verified device is refused and nothing is written.
pub(super) fn begin(
    tx: &Transaction<'_>,
    sealer: &Sealer,
    serial: &str,
    jig: &str,
    station: &str,
) -> rusqlite::Result<Began> {
    let now = now_ms();
    let existing: Option<(i64, String, Option<String>)> = tx
        .prepare_cached("SELECT id, state, thing_name FROM devices WHERE serial = ?1")?
        .query_row(params![serial], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((id, state, thing)) = existing else {
        tx.prepare_cached(
            "INSERT INTO devices (serial, jig, station, state, created_ms, updated_ms)
             VALUES (?1, ?2, ?3, 'started', ?4, ?4)",
        )?
        .execute(params![serial, jig, station, now])?;
        let id = tx.last_insert_rowid();
        event(tx, id, "started", Some(&format!("jig={jig}")), now)?;
        return Ok(Began::Fresh(id));
    };
    match DeviceState::parse(&state) {
        Some(DeviceState::Verified) => Ok(Began::Verified {
            thing: thing.unwrap_or_default(),
        }),
        Some(DeviceState::Failed | DeviceState::Interrupted) => {
            tx.prepare_cached(
                "UPDATE devices SET jig = ?2, station = ?3, state = 'started', reason = NULL,
                 key_source = NULL, public_key_sha256 = NULL, sealed_key = NULL,
                 attempts = attempts + 1, updated_ms = ?4 WHERE id = ?1",
            )?
            .execute(params![id, jig, station, now])?;
            event(tx, id, "started", Some(&format!("jig={jig}")), now)?;
            Ok(Began::Fresh(id))
        }
        _ => {
            // Unfinished by an earlier run: keep its state so it resumes there.
            tx.prepare_cached(
                "UPDATE devices SET jig = ?2, station = ?3, attempts = attempts + 1,
                 updated_ms = ?4 WHERE id = ?1",
            )?
            .execute(params![id, jig, station, now])?;
            event(
                tx,
                id,
                "resumed",
                Some(&format!("jig={jig} from={state}")),
                now,
            )?;
            Ok(match resume_point(tx, sealer, id)? {
                Some(resume) => Began::Resumed(id, resume),
                // At `started` (or a state this version does not know): nothing to resume.
                None => Began::Fresh(id),
            })
        }
    }
}

/// Where device `id` resumes: `None` unless its state [resumes](DeviceState::resumes). A
/// sealed key that does not open under this ledger's key is left out.
fn resume_point(
    tx: &Transaction<'_>,
    sealer: &Sealer,
    id: i64,
) -> rusqlite::Result<Option<Resume>> {
    type Row = (
        String,
        String,
        Option<String>,
        Option<Vec<u8>>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<i64>,
        Option<String>,
        Option<String>,
    );
    let row: Option<Row> = tx
        .prepare_cached(
            "SELECT serial, state, key_source, sealed_key, public_key_sha256, certificate_id,
             certificate_pem, token, token_expires_ms, thing_name, device_configuration
             FROM devices WHERE id = ?1",
        )?
        .query_row(params![id], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
                r.get(9)?,
                r.get(10)?,
            ))
        })
        .optional()?;
    let Some((serial, state, source, sealed, pk, cert_id, cert_pem, token, expires, thing, config)) =
        row
    else {
        return Ok(None);
    };
    let state = DeviceState::stored(&state);
    if !state.resumes() {
        return Ok(None);
    }
    let private_key = sealed
        .and_then(|s| sealer.open(&serial, &s))
        .and_then(|k: Zeroizing<Vec<u8>>| String::from_utf8(k.to_vec()).ok())
        .map(Secret::new);
    Ok(Some(Resume {
        state,
        key_source: source.as_deref().and_then(KeySource::parse),
        private_key,
        public_key_sha256: pk,
        certificate_id: cert_id,
        certificate_pem: cert_pem,
        token: token.map(Secret::new),
        token_expires_ms: expires,
        thing_name: thing,
        device_configuration: config
            .and_then(|c| serde_json::from_str(&c).ok())
            .unwrap_or_default(),
    }))
}

/// Records a state change of device `id` and what it implies: a station-made or AWS-made key
/// sealed, an abandoned certificate moved to the orphans, secrets dropped once done.
pub(super) fn transition(
    tx: &Transaction<'_>,
    sealer: &Sealer,
    id: i64,
    t: &Transition,
) -> rusqlite::Result<()> {
    let now = now_ms();
    let state = t.state().as_str();
    let serial: String = tx
        .prepare_cached("SELECT serial FROM devices WHERE id = ?1")?
        .query_row(params![id], |r| r.get(0))?;
    let seal = |k: &Secret| sealer.seal(&serial, k.expose().as_bytes());
    let detail: Option<String> = match t {
        Transition::KeyReserved {
            source,
            public_key_sha256,
            private_key,
        } => {
            tx.prepare_cached(
                "UPDATE devices SET state = ?2, key_source = ?3, public_key_sha256 = ?4,
                 sealed_key = ?5, updated_ms = ?6 WHERE id = ?1",
            )?
            .execute(params![
                id,
                state,
                source.as_str(),
                public_key_sha256,
                private_key.as_ref().map(seal),
                now
            ])?;
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
            tx.prepare_cached(
                "UPDATE devices SET state = ?2, certificate_id = ?3, certificate_pem = ?4,
                 token = ?5, token_expires_ms = ?6, updated_ms = ?7 WHERE id = ?1",
            )?
            .execute(params![
                id,
                state,
                certificate_id,
                certificate_pem,
                token.expose(),
                *token_expires_ms as i64,
                now
            ])?;
            if let Some(k) = private_key {
                tx.prepare_cached("UPDATE devices SET sealed_key = ?2 WHERE id = ?1")?
                    .execute(params![id, seal(k)])?;
            }
            if let Some(pk) = public_key_sha256 {
                tx.prepare_cached("UPDATE devices SET public_key_sha256 = ?2 WHERE id = ?1")?
                    .execute(params![id, pk])?;
            }
            Some(format!("certificate_id={certificate_id}"))
        }
        Transition::Registered {
            thing_name,
            device_configuration,
        } => {
            // An earlier certificate of this device that a lost RegisterThing made active was
            // recorded before the thing's name was known: it is this thing.
            tx.prepare_cached(
                "UPDATE orphans SET thing_name = ?2
                 WHERE serial = ?1 AND status = 'active' AND thing_name IS NULL",
            )?
            .execute(params![serial, thing_name])?;
            tx.prepare_cached(
                "UPDATE devices SET state = ?2, thing_name = ?3, device_configuration = ?4,
                 updated_ms = ?5 WHERE id = ?1",
            )?
            .execute(params![
                id,
                state,
                thing_name,
                serde_json::to_string(device_configuration).expect("string map"),
                now
            ])?;
            Some(format!("thing_name={thing_name}"))
        }
        Transition::Written => {
            tx.prepare_cached("UPDATE devices SET state = ?2, updated_ms = ?3 WHERE id = ?1")?
                .execute(params![id, state, now])?;
            None
        }
        Transition::Verified => {
            // The token and the sealed key have done their job; drop them.
            tx.prepare_cached(
                "UPDATE devices SET state = ?2, token = NULL, sealed_key = NULL,
                 reason = NULL, updated_ms = ?3 WHERE id = ?1",
            )?
            .execute(params![id, state, now])?;
            None
        }
        Transition::CertificateAbandoned { reason, status } => {
            orphan_current(tx, id, reason, now, false, Some(*status))?;
            // Back to the start with no key: the next attempt reserves a fresh one, so this
            // key is never recorded as in flight again.
            tx.prepare_cached(
                "UPDATE devices SET state = ?2, key_source = NULL, public_key_sha256 = NULL,
                 sealed_key = NULL, updated_ms = ?3 WHERE id = ?1",
            )?
            .execute(params![id, state, now])?;
            Some(format!(
                "certificate abandoned ({}): {reason}",
                status.as_str()
            ))
        }
        Transition::KeyReleased { reason } => {
            // Only a key no certificate came for: a device holding one keeps it.
            let released = tx
                .prepare_cached(
                    "UPDATE devices SET state = ?2, key_source = NULL, public_key_sha256 = NULL,
                     sealed_key = NULL, updated_ms = ?3
                     WHERE id = ?1 AND state = 'key_reserved' AND certificate_id IS NULL",
                )?
                .execute(params![id, state, now])?;
            if released == 0 {
                return Ok(());
            }
            Some(format!("key released: {reason}"))
        }
        Transition::Failed { reason } | Transition::Interrupted { reason } => {
            orphan_current(tx, id, reason, now, false, None)?;
            tx.prepare_cached(
                "UPDATE devices SET state = ?2, reason = ?3, token = NULL, sealed_key = NULL,
                 updated_ms = ?4 WHERE id = ?1",
            )?
            .execute(params![id, state, reason, now])?;
            Some(reason.clone())
        }
    };
    event(tx, id, state, detail.as_deref(), now)
}

/// Lists device `id`'s current public key as a `pending` orphan without certificate id (once
/// per key) and notes `request_lost`; nothing when the device has no public key on record.
pub(super) fn lost_request(tx: &Transaction<'_>, id: i64, reason: &str) -> rusqlite::Result<()> {
    let now = now_ms();
    let row: Option<(String, Option<String>)> = tx
        .prepare_cached("SELECT serial, public_key_sha256 FROM devices WHERE id = ?1")?
        .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    if let Some((serial, Some(pk))) = row {
        insert_orphan(
            tx,
            &NewOrphan {
                certificate_id: None,
                public_key_sha256: Some(&pk),
                serial: &serial,
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
