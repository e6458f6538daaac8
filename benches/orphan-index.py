"""benches/orphan-index.py: what the ledger's orphans_serial index saves. In a ledger with 100,000
orphans, every RegisterThing runs the journal's orphan update (by serial) on the one writer
thread; this times that statement with and without the index (python3 benches/orphan-index.py,
stdlib only). The station makes the index when it opens a ledger (src/ledger/sqlite/schema.rs)."""
import sqlite3, time, sys, os, tempfile
for with_index in (False, True):
    d = tempfile.mkdtemp(); c = sqlite3.connect(os.path.join(d, "l.db"))
    c.execute("CREATE TABLE orphans (id INTEGER PRIMARY KEY, certificate_id TEXT, public_key_sha256 TEXT, serial TEXT NOT NULL, status TEXT NOT NULL, thing_name TEXT, reason TEXT NOT NULL, recorded_ms INTEGER NOT NULL)")
    c.executemany("INSERT INTO orphans (certificate_id, serial, status, reason, recorded_ms) VALUES (?, ?, 'pending', 'r', 0)", ((f"c{i:064x}", f"SN-{i:08d}") for i in range(100_000)))
    if with_index: c.execute("CREATE INDEX orphans_serial ON orphans(serial)")
    c.commit()
    t = time.perf_counter()
    for i in range(2000):
        c.execute("UPDATE orphans SET thing_name = 't' WHERE serial = ? AND status = 'active' AND thing_name IS NULL", (f"SN-NEW-{i}",))
    dt = (time.perf_counter() - t) / 2000 * 1e6
    print(f"100,000 orphans, index {'on ' if with_index else 'off'}: {dt:9.1f} µs per registration's orphan update")
