//! Ledger failures, each with a code and a help line for the operator. A ledger that cannot
//! write stops the line: nothing may run ahead of it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum LedgerError {
    #[error("ledger {path}: {source}")]
    #[diagnostic(
        code(station::ledger::sqlite),
        help("check that the disk holding station.ledger is writable and not full")
    )]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("ledger {ledger}: {reason}")]
    #[diagnostic(
        code(station::ledger::postgres),
        help(
            "check station.ledger's URL (host, port, dbname, user, password, sslmode), that the PostgreSQL server is up and reachable from this station, and that its user has the privileges the README's \"A shared PostgreSQL ledger\" lists"
        )
    )]
    Postgres {
        /// The ledger's URL, without its password.
        ledger: String,
        /// What the server or the connection said.
        reason: String,
    },
    #[error("ledger {ledger} is in use by another station with station.id {station:?}: {holder}")]
    #[diagnostic(
        code(station::ledger::station_in_use),
        help(
            "many stations share a PostgreSQL ledger, but each under its own station.id: stop the other station with this id, or give this one an id of its own"
        )
    )]
    StationInUse {
        /// The ledger's URL, without its password.
        ledger: String,
        station: String,
        /// Who holds the id: station id, pid, host and start time.
        holder: String,
    },
    #[error("cannot use {path}: {source}")]
    #[diagnostic(
        code(station::ledger::io),
        help("set station.ledger to a path in a writable directory")
    )]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "ledger {path} has schema version {found}, but this fleet-station reads version {need} (0: the file is not a ledger)"
    )]
    #[diagnostic(
        code(station::ledger::schema),
        help(
            "read it with the fleet-station version that wrote it (`station ledger export`); to start a new ledger, move the file aside together with its .key file (a PostgreSQL ledger: point station.ledger at another database or schema)"
        )
    )]
    Schema {
        path: PathBuf,
        found: i64,
        need: i64,
    },
    #[error("ledger {path} does not exist")]
    #[diagnostic(
        code(station::ledger::not_found),
        help(
            "check station.ledger in the configuration you passed with --config; the first `station run` creates the ledger"
        )
    )]
    NotFound { path: PathBuf },
    #[error("ledger {path} is in use by another station: {holder}")]
    #[diagnostic(
        code(station::ledger::in_use),
        help(
            "stop the other station first (one station writes a ledger at a time), or give this one its own station.ledger in its configuration"
        )
    )]
    InUse {
        path: PathBuf,
        /// Who holds the lock: station id, pid, host and start time.
        holder: String,
    },
    #[error(
        "the key file {key} of ledger {path} is missing, and {sealed} unfinished device(s) in the ledger have private keys sealed under it"
    )]
    #[diagnostic(
        code(station::ledger::key_missing),
        help(
            "restore <ledger>.key from the backup kept with the ledger, then start again; without it those {sealed} unfinished devices cannot resume (a new key cannot open their sealed keys)"
        )
    )]
    KeyMissing {
        path: PathBuf,
        key: PathBuf,
        sealed: i64,
    },
    #[error(
        "the key file {key} does not open the private keys sealed in ledger {path} (tried board {serial}): it belongs to another ledger"
    )]
    #[diagnostic(
        code(station::ledger::key_mismatch),
        help(
            "restore the <ledger>.key that was backed up together with this ledger; a key file from another ledger cannot resume its {sealed} unfinished device(s)"
        )
    )]
    KeyMismatch {
        path: PathBuf,
        key: PathBuf,
        serial: String,
        sealed: i64,
    },
    #[error("ledger {path} could not record a change: {reason}")]
    #[diagnostic(
        code(station::ledger::write),
        help(
            "check that the disk holding station.ledger is writable and not full; \"database is locked\" means another program (e.g. an sqlite3 shell with an open transaction) held the ledger's write lock for more than 5 s: close it"
        )
    )]
    Write { path: PathBuf, reason: String },
    #[error("ledger writer has stopped")]
    #[diagnostic(
        code(station::ledger::stopped),
        help("an earlier ledger error stopped the writer; see the message before this one")
    )]
    Stopped,
    #[error("board {serial} is already provisioned and verified (thing {thing})")]
    #[diagnostic(
        code(station::ledger::already_provisioned),
        help(
            "take the board off the jig: it holds its identity already; a second one would orphan the first"
        )
    )]
    AlreadyProvisioned { serial: String, thing: String },
    #[error(
        "board {serial} is held by station {station}: it is provisioning this serial now (its lease expires in {expires_in_s} s unless that station renews it)"
    )]
    #[diagnostic(
        code(station::ledger::held_by_station),
        help(
            "take the board off this jig: station {station} is working on a board with the same serial (a board moved between lines, or a duplicated label: check the label). If station {station} has stopped for good, its lease expires after its station.lease_s; place the board again then and it resumes here"
        )
    )]
    HeldElsewhere {
        serial: String,
        station: String,
        expires_in_s: i64,
    },
    #[error(
        "ledger {ledger}: the lease on board {serial} passed to station {holder} (this station's lease expired): the change was not recorded"
    )]
    #[diagnostic(
        code(station::ledger::lease_lost),
        help(
            "this station did not renew its serial leases within station.lease_s (it was paused, or lost the database for that long), and station {holder} took the board over; stop this station, check the board's state with `station ledger export --station {holder}`, and raise station.lease_s if the stall was expected"
        )
    )]
    LeaseLost {
        /// The ledger's URL, without its password.
        ledger: String,
        serial: String,
        holder: String,
    },
}
