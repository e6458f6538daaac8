//! Recording orphans in SQLite: a certificate AWS issued that will never reach a board, or
//! the key of a request whose answer may have been lost, listed once per serial. Which status
//! an orphan gets is [`OrphanStatus::of_abandoned`]'s rule.

use rusqlite::{OptionalExtension, Transaction, params};

use crate::ledger::{DeviceState, OrphanStatus};

/// An orphan to record.
pub(super) struct NewOrphan<'a> {
    pub certificate_id: Option<&'a str>,
    pub public_key_sha256: Option<&'a str>,
    pub serial: &'a str,
    pub status: OrphanStatus,
    pub thing_name: Option<&'a str>,
    pub reason: &'a str,
}

/// Records an orphan unless the same one is listed already: the same serial and certificate
/// id, or (no certificate id) the same serial and public key.
pub(super) fn insert_orphan(
    tx: &Transaction<'_>,
    o: &NewOrphan<'_>,
    now: i64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO orphans (certificate_id, public_key_sha256, serial, status, thing_name, reason, recorded_ms)
         SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7
         WHERE NOT EXISTS (
             SELECT 1 FROM orphans WHERE serial = ?3 AND (
                 (?1 IS NOT NULL AND certificate_id = ?1)
                 OR (?1 IS NULL AND certificate_id IS NULL AND public_key_sha256 = ?2)))",
    )?
    .execute(params![
        o.certificate_id,
        o.public_key_sha256,
        o.serial,
        o.status.as_str(),
        o.thing_name,
        o.reason,
        now
    ])?;
    Ok(())
}

/// Moves device `id`'s current certificate into `orphans` and clears it. With no certificate
/// but a key reserved, a certificate request may have been answered unheard: the key's sha256
/// is recorded instead. With `only_issued`, a certificate request still unanswered is not
/// counted (its answer is what is being recorded). `believed` is the caller's status for a
/// certificate the device holds.
pub(super) fn orphan_current(
    tx: &Transaction<'_>,
    id: i64,
    reason: &str,
    now: i64,
    only_issued: bool,
    believed: Option<OrphanStatus>,
) -> rusqlite::Result<()> {
    type Row = (
        String,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let row: Option<Row> = tx
        .prepare_cached(
            "SELECT serial, state, certificate_id, public_key_sha256, thing_name FROM devices WHERE id = ?1",
        )?
        .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .optional()?;
    let Some((serial, state, cert, pk, thing)) = row else {
        return Ok(());
    };
    let state = DeviceState::stored(&state);
    let Some(status) = OrphanStatus::of_abandoned(state, cert.is_some(), believed) else {
        return Ok(());
    };
    if cert.is_none() && (only_issued || pk.is_none()) {
        return Ok(());
    }
    // The thing is known when the device itself was registered (NULL otherwise: an active
    // orphan of a device that was not gets it from the device's next registration).
    let thing = thing.filter(|_| status == OrphanStatus::Active);
    insert_orphan(
        tx,
        &NewOrphan {
            certificate_id: cert.as_deref(),
            public_key_sha256: pk.as_deref(),
            serial: &serial,
            status,
            thing_name: thing.as_deref(),
            reason,
        },
        now,
    )?;
    tx.prepare_cached(
        "UPDATE devices SET certificate_id = NULL, certificate_pem = NULL, token = NULL,
         token_expires_ms = NULL, thing_name = NULL, device_configuration = NULL WHERE id = ?1",
    )?
    .execute(params![id])?;
    Ok(())
}
