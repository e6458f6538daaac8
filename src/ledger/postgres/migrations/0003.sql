-- fleet-station ledger, schema version 3 on PostgreSQL: serial leases ("one serial, one
-- station") and the station of each orphan. Self-contained: it only adds.
--
-- leases: one row per serial a station is working on. A station claims a serial when its board
-- is placed (an insert, or an update of a lease that is its own or has expired), renews its
-- leases while it runs, and deletes a lease when its device is verified, fails or is
-- interrupted. Times are the server's clock, so stations' clocks need not agree.
CREATE TABLE leases (
    serial TEXT PRIMARY KEY,
    station TEXT NOT NULL,
    taken_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX leases_station ON leases(station);
-- The station that reserved the device's current key or received its current certificate:
-- the one whose key file seals it, named on the orphan when that certificate is abandoned.
ALTER TABLE devices ADD COLUMN key_station TEXT;
-- The station an orphan belongs to (whose certificate it was).
ALTER TABLE orphans ADD COLUMN station TEXT;
UPDATE orphans o SET station = d.station FROM devices d WHERE d.serial = o.serial;
