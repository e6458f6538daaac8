-- fleet-station ledger, schema version 3 on PostgreSQL: `quota_buckets`, the account's API
-- quota shared by every station (`provision.shared_quota = true`; see ledger/postgres/quota.rs).
-- One row per API: a GCRA bucket (`tat`, the theoretical arrival time of the next free token,
-- in seconds since the epoch on the server's clock) at the current AIMD rate, and the AIMD
-- state all stations share; and `quota_takers`: when each station last took an API's tokens
-- (a grant's batch is the station's share: the rate's ~100 ms divided among the stations that
-- took tokens in the last second). Self-contained: it creates only these two tables.
CREATE TABLE quota_buckets (
    api TEXT PRIMARY KEY,
    -- The account's quota as configured (provision.*_tps), tokens/s: the rate's ceiling.
    quota DOUBLE PRECISION NOT NULL CHECK (quota > 0),
    -- The current rate, tokens/s: the quota until a throttle lowers it.
    rate DOUBLE PRECISION NOT NULL CHECK (rate > 0),
    -- The additive increase per second without a throttle, and the lowest rate.
    increase DOUBLE PRECISION NOT NULL,
    floor DOUBLE PRECISION NOT NULL,
    tat DOUBLE PRECISION NOT NULL,
    last_increase DOUBLE PRECISION NOT NULL,
    last_decrease DOUBLE PRECISION,
    -- Counters: round trips that took tokens, tokens granted, throttles reported, decreases.
    grants BIGINT NOT NULL DEFAULT 0,
    tokens BIGINT NOT NULL DEFAULT 0,
    throttles BIGINT NOT NULL DEFAULT 0,
    decreases BIGINT NOT NULL DEFAULT 0,
    -- The station that last set `quota` (its station.id).
    set_by TEXT NOT NULL
);
CREATE TABLE quota_takers (
    api TEXT NOT NULL,
    station TEXT NOT NULL,
    -- The station's last grant, seconds since the epoch on the server's clock.
    at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (api, station)
);
