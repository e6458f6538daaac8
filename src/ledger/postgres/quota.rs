//! The account quota shared by every station (`provision.shared_quota = true`): one row per
//! API in `quota_buckets` (migration 0004), each a GCRA bucket at the current AIMD rate, and
//! the statements that take tokens from it and report a throttle. Each is one statement on
//! one row, so stations never see a half-made change; the server's clock is the only clock.
//!
//! - [`QuotaStore::grant`]: a *reservation*: the row's theoretical arrival time (`tat`)
//!   moves on by `k / rate`, and the station gets `k` tokens starting `delay` from now
//!   (`start = max(tat, now)`), to use over the next `batch` (~100 ms). `k` is the station's
//!   share of `batch` seconds' worth at the current rate: divided by the number of stations
//!   that took this API's tokens in the last second (`quota_takers`), at least one. So a
//!   round trip serves ~100 ms of a station's calls, and each station needs to keep up with
//!   its share only. The grants of all stations tile the time line without overlap: by any
//!   time, no more tokens were granted than the rate allows since the first, plus one batch.
//! - The additive increase is applied at each grant, lazily: every whole second since the
//!   last increase (or decrease) adds `increase`, up to `quota`.
//! - [`QuotaStore::throttled`]: a throttle seen by any station cuts the rate to 70 %
//!   (never below `floor`), at most once a second across all stations; every report counts.
//!
//! The provisioning side (`provision::shared_quota`) owns one [`QuotaStore`] on a thread of
//! its own, on a connection of its own (not the ledger writer's), with `synchronous_commit`
//! off: a grant does not wait for the server's disk (a crash of the server can lose its last
//! few grants, ~100 ms of tokens each, which is no ledger data).

use std::time::Duration;

use postgres::{Client, Statement};

use super::connect::{connect, pg_error};
use crate::ledger::LedgerError;

/// Takes the row's tokens: see the module comment. `$1` api, `$2` batch seconds, `$3` the
/// station. The batch is the station's share of `$2` seconds of tokens: the stations that
/// took this API's tokens in the last second (this one included) divide it.
const GRANT: &str = "
WITH c AS (SELECT extract(epoch FROM clock_timestamp())::float8 AS now),
taker AS (
    INSERT INTO quota_takers AS t (api, station, at)
    SELECT $1, $3, c.now FROM c
    ON CONFLICT (api, station) DO UPDATE SET at = EXCLUDED.at
),
n AS (
    SELECT 1 + count(*) AS stations
    FROM quota_takers t, c
    WHERE t.api = $1 AND t.station <> $3 AND t.at > c.now - 1
),
s AS (
    SELECT q.api, c.now,
        CASE WHEN c.now - q.last_increase >= 1
             THEN LEAST(q.quota, q.rate + q.increase * floor(c.now - q.last_increase))
             ELSE q.rate END AS rate,
        CASE WHEN c.now - q.last_increase >= 1
             THEN q.last_increase + floor(c.now - q.last_increase)
             ELSE q.last_increase END AS last_increase,
        GREATEST(q.tat, c.now) AS start
    FROM quota_buckets q, c
    WHERE q.api = $1
    FOR UPDATE OF q
),
g AS (
    SELECT s.*, n.stations, GREATEST(1, floor(s.rate * $2 / n.stations))::bigint AS k
    FROM s, n
)
UPDATE quota_buckets q
SET rate = g.rate,
    last_increase = g.last_increase,
    tat = g.start + g.k / g.rate,
    grants = q.grants + 1,
    tokens = q.tokens + g.k
FROM g
WHERE q.api = g.api
RETURNING g.k, g.start, g.start - g.now, g.rate, g.stations";

/// Reports a throttle: `$1` api. Cuts the rate at most once a second across stations.
const THROTTLED: &str = "
WITH c AS (SELECT extract(epoch FROM clock_timestamp())::float8 AS now)
UPDATE quota_buckets q
SET throttles = q.throttles + 1,
    decreases = q.decreases
        + CASE WHEN q.last_decrease IS NULL OR c.now - q.last_decrease >= 1 THEN 1 ELSE 0 END,
    rate = CASE WHEN q.last_decrease IS NULL OR c.now - q.last_decrease >= 1
                THEN GREATEST(q.floor, q.rate * 0.7) ELSE q.rate END,
    last_increase = CASE WHEN q.last_decrease IS NULL OR c.now - q.last_decrease >= 1
                         THEN c.now ELSE q.last_increase END,
    last_decrease = CASE WHEN q.last_decrease IS NULL OR c.now - q.last_decrease >= 1
                         THEN c.now ELSE q.last_decrease END
FROM c
WHERE q.api = $1
RETURNING q.rate, q.last_decrease = c.now";

/// Makes an API's row, or sets its quota: `$1` api, `$2` quota, `$3` increase, `$4` floor,
/// `$5` station. A changed quota restarts the rate there; the same one keeps the row's
/// state. (Run after [`SEEN`], in one transaction.)
const SEED: &str = "
INSERT INTO quota_buckets AS q (api, quota, rate, increase, floor, tat, last_increase, set_by)
VALUES ($1, $2, $2, $3, $4, 0, extract(epoch FROM clock_timestamp()), $5)
ON CONFLICT (api) DO UPDATE
SET rate = CASE WHEN q.quota = EXCLUDED.quota THEN q.rate ELSE EXCLUDED.quota END,
    set_by = CASE WHEN q.quota = EXCLUDED.quota THEN q.set_by ELSE EXCLUDED.set_by END,
    quota = EXCLUDED.quota,
    increase = EXCLUDED.increase,
    floor = EXCLUDED.floor";

/// The quota an API's row holds and who set it, locked until the transaction ends.
const SEEN: &str = "SELECT quota, set_by FROM quota_buckets WHERE api = $1 FOR UPDATE";

/// Tokens taken from the shared bucket in one round trip.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Grant {
    /// How many.
    pub tokens: u32,
    /// The first one's time on the server's clock (seconds since the epoch).
    pub start_s: f64,
    /// How long from now until the first one may be used (0 when the bucket was idle).
    pub delay: Duration,
    /// The spacing of the tokens: the batch's time over their number (the station's share
    /// of the rate, paced).
    pub interval: Duration,
    /// The shared rate now, tokens/s.
    pub rate: f64,
    /// The stations sharing it (those that took tokens in the last second).
    pub stations: i64,
}

/// A throttle's effect on the shared rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Throttled {
    /// The shared rate after the report, tokens/s.
    pub rate: f64,
    /// Whether this report cut it (false: another report did within the last second).
    pub decreased: bool,
}

/// What a station found when it set an API's quota: who set a different one before.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Seeded {
    pub previous: Option<(f64, String)>,
}

/// One connection to the shared quota's rows, with its statements prepared.
pub(crate) struct QuotaStore {
    client: Client,
    url: String,
    station: String,
    grant: Statement,
    throttled: Statement,
}

impl QuotaStore {
    /// Connects to the ledger database at `url` (its own connection) as station `station`.
    pub(crate) fn connect(url: &str, station: &str) -> Result<QuotaStore, LedgerError> {
        let mut client = connect(url, false)?;
        // A grant need not wait for the disk: the bucket's state is worth ~100 ms of tokens,
        // and a server that crashes loses at most its last few grants, never the ledger's.
        client
            .batch_execute("SET synchronous_commit = off")
            .map_err(pg_error(url))?;
        let grant = client.prepare(GRANT).map_err(pg_error(url))?;
        let throttled = client.prepare(THROTTLED).map_err(pg_error(url))?;
        Ok(QuotaStore {
            client,
            url: url.to_string(),
            station: station.to_string(),
            grant,
            throttled,
        })
    }

    /// Makes `api`'s row at `quota` tokens/s, or sets the quota of the row there.
    pub(crate) fn seed(&mut self, api: &str, quota: f64) -> Result<Seeded, LedgerError> {
        let station = &self.station;
        let increase = (quota * 0.05).max(0.5).min(quota);
        let floor = quota.min(0.5);
        let pg = pg_error(&self.url);
        let mut tx = self.client.transaction().map_err(&pg)?;
        let previous = tx
            .query_opt(SEEN, &[&api])
            .map_err(&pg)?
            .map(|r| Ok::<_, postgres::Error>((r.try_get(0)?, r.try_get(1)?)))
            .transpose()
            .map_err(&pg)?;
        tx.execute(SEED, &[&api, &quota, &increase, &floor, &station])
            .map_err(&pg)?;
        tx.commit().map_err(&pg)?;
        Ok(Seeded { previous })
    }

    /// Takes this station's share of `batch` seconds' worth of `api`'s tokens at the shared
    /// rate (at least one), to be used over `batch`.
    pub(crate) fn grant(&mut self, api: &str, batch: Duration) -> Result<Grant, LedgerError> {
        let rows = self
            .client
            .query(&self.grant, &[&api, &batch.as_secs_f64(), &self.station])
            .map_err(pg_error(&self.url))?;
        let Some(row) = rows.first() else {
            return Err(self.no_row(api));
        };
        let get = |e| pg_error(&self.url)(e);
        let tokens: i64 = row.try_get(0).map_err(get)?;
        let start_s: f64 = row.try_get(1).map_err(get)?;
        let delay: f64 = row.try_get(2).map_err(get)?;
        let rate: f64 = row.try_get(3).map_err(get)?;
        let stations: i64 = row.try_get(4).map_err(get)?;
        let tokens = u32::try_from(tokens.max(1)).unwrap_or(u32::MAX);
        Ok(Grant {
            tokens,
            start_s,
            delay: Duration::from_secs_f64(delay.max(0.0)),
            interval: batch.max(Duration::from_secs_f64(f64::from(tokens) / rate)) / tokens,
            rate,
            stations,
        })
    }

    /// Reports a throttle of `api`: the rate drops for every station (once a second).
    pub(crate) fn throttled(&mut self, api: &str) -> Result<Throttled, LedgerError> {
        let rows = self
            .client
            .query(&self.throttled, &[&api])
            .map_err(pg_error(&self.url))?;
        let Some(row) = rows.first() else {
            return Err(self.no_row(api));
        };
        let get = |e| pg_error(&self.url)(e);
        Ok(Throttled {
            rate: row.try_get(0).map_err(get)?,
            decreased: row.try_get(1).map_err(get)?,
        })
    }

    fn no_row(&self, api: &str) -> LedgerError {
        LedgerError::Postgres {
            ledger: super::redact(&self.url),
            reason: format!("the shared quota has no row for {api} (was it deleted?)"),
        }
    }
}
