//! Prometheus `/metrics` through the real CLI: `station run --metrics-addr 127.0.0.1:0` prints
//! the address it bound, serves the figures while the line works (counters only grow), and
//! they are the figures of the run's summary.json; `loadtest` serves them too. A metrics
//! address in use or unparsable stops the run before any device is provisioned, naming the
//! flag or the key.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::cli::{StationConfig, count, station, wait_for};
use fleet_station::jig::{BoardSpec, VirtualJig, VirtualJigConfig};

/// Samples of one scrape: `name{labels}` → value.
type Scrape = BTreeMap<String, f64>;

/// `GET /metrics` (or another path): the status line, the headers and the body.
fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: station\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

fn scrape(addr: SocketAddr) -> Scrape {
    let (head, body) = get(addr, "/metrics");
    assert!(head.contains(" 200 "), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_string(), value.parse().unwrap())
        })
        .collect()
}

/// The sum of every series of `name` (all label values).
fn total(s: &Scrape, name: &str) -> f64 {
    s.iter()
        .filter(|(k, _)| k.as_str() == name || k.starts_with(&format!("{name}{{")))
        .map(|(_, v)| v)
        .sum()
}

fn provisioned(s: &Scrape) -> f64 {
    s.get(r#"fleet_station_devices_total{outcome="provisioned"}"#)
        .copied()
        .unwrap_or(0.0)
}

/// Every counter series of `before` is still there in `after`, and not lower.
fn assert_cumulative(before: &Scrape, after: &Scrape) {
    let counter = |k: &str| {
        k.contains("_total") || k.contains("_bucket") || k.contains("_count") || k.contains("_sum")
    };
    for (k, v) in before.iter().filter(|(k, _)| counter(k)) {
        let now = after.get(k).unwrap_or_else(|| panic!("{k} went away"));
        assert!(now >= v, "{k} went down: {v} → {now}");
    }
}

/// Spawns `station ARGS` with stderr read on a thread; returns the child, the metrics address
/// it printed, and the rest of its stderr (collected until it exits).
fn spawn_with_metrics(args: &[&str]) -> (Child, SocketAddr, mpsc::Receiver<String>) {
    let mut child = station()
        .args(args)
        .args(["--metrics-addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("the station prints `metrics: http://ADDR/metrics` at start");
        if let Some(rest) = line.strip_prefix("metrics: http://") {
            break rest.strip_suffix("/metrics").unwrap().parse().unwrap();
        }
    };
    (child, addr, rx)
}

/// Scrapes while `child` runs until `ready` holds for a scrape (bounded by `wait_for`), at
/// most every 20 ms; checks that counters never go down between scrapes. Returns the scrape
/// that was ready.
fn scrape_until(
    child: &mut Child,
    addr: SocketAddr,
    last: &mut Scrape,
    what: &str,
    ready: impl Fn(&Scrape) -> bool,
) -> Scrape {
    let mut found = None;
    let mut next = Instant::now();
    wait_for(child, what, || {
        if Instant::now() < next {
            return false;
        }
        next = Instant::now() + Duration::from_millis(20);
        let s = scrape(addr);
        assert_cumulative(last, &s);
        *last = s.clone();
        let ok = ready(&s);
        if ok {
            found = Some(s);
        }
        ok
    });
    found.unwrap()
}

fn finish(child: Child) -> Output {
    child.wait_with_output().unwrap()
}

/// Two serial-mode jigs, each a virtual board behind a pty that the test feeds: the line
/// runs until it is stopped, so a scrape can see its final figures before the stop.
#[test]
fn scrapes_during_a_run_grow_and_end_at_the_summary_figures() {
    let dir = tempfile::tempdir().unwrap();
    let mut feeds = Vec::new();
    let mut jigs = Vec::new();
    for _ in 0..2 {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut jc = VirtualJigConfig::new(&dir.path().join("boards"));
        jc.baud = 0;
        jigs.push(VirtualJig::spawn(jc, rx).unwrap());
        feeds.push(tx);
    }
    let ports: Vec<String> = ["line-a", "line-b"]
        .iter()
        .zip(&jigs)
        .map(|(name, j)| format!("{{ name = {name:?}, path = {:?} }}", j.path()))
        .collect();
    let cfg = StationConfig::embedded(dir.path())
        .set_str("station.id", "metrics")
        .set_str("jigs.mode", "serial")
        .set("jigs.baud", "921600")
        .set("jigs.ports", &format!("[{}]", ports.join(", ")))
        .write();
    let feed = |from: usize, to: usize| {
        for n in from..to {
            for (i, tx) in feeds.iter().enumerate() {
                tx.send(BoardSpec::new(&format!("MET-{i}-{n:03}"))).unwrap();
            }
        }
    };
    feed(0, 8);
    let report = dir.path().join("report");
    let (mut child, addr, stderr) = spawn_with_metrics(&[
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--report-dir",
        report.to_str().unwrap(),
    ]);
    let mut last = Scrape::new();

    // Mid-run: the first 16 boards are done, the line waits for more.
    let mid = scrape_until(&mut child, addr, &mut last, "16 boards in /metrics", |s| {
        provisioned(s) == 16.0
    });
    assert_eq!(mid["fleet_station_jigs_connected"], 2.0);
    assert_eq!(mid["fleet_station_endpoint_reachable"], 1.0);
    assert_eq!(total(&mid, "fleet_station_jig_boards_written_total"), 16.0);
    assert!(mid.contains_key(r#"fleet_station_jig_boards_written_total{jig="line-a"}"#));
    assert!(mid["fleet_station_sessions_pool_size"] >= 1.0);
    assert!(
        !mid.keys().any(|k| k.contains("MET-")),
        "a serial number became a label"
    );
    // Other paths are not the metrics.
    assert!(get(addr, "/").0.contains(" 404 "));

    feed(8, 15);
    let end = scrape_until(&mut child, addr, &mut last, "30 boards in /metrics", |s| {
        provisioned(s) == 30.0
            && s["fleet_station_devices_in_flight"] == 0.0
            && s[r#"fleet_station_stage_duration_seconds_count{stage="end_to_end"}"#] == 30.0
    });
    // The operator stops the idle line; nothing was in flight.
    // SAFETY: signalling a child process this test owns.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = finish(child);
    let errors: Vec<String> = stderr.try_iter().collect();
    assert_eq!(out.status.code(), Some(130), "{errors:?}");
    drop(feeds);

    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.join("summary.json")).unwrap()).unwrap();
    let n = |v: &serde_json::Value| v.as_u64().unwrap() as f64;
    let d = &summary["devices"];
    for outcome in ["provisioned", "failed", "interrupted"] {
        assert_eq!(
            end[&format!(r#"fleet_station_devices_total{{outcome="{outcome}"}}"#)],
            n(&d[outcome]),
            "{outcome}"
        );
    }
    assert_eq!(
        total(&end, "fleet_station_device_failures_total"),
        n(&d["failed"])
    );
    assert_eq!(
        total(&end, "fleet_station_retries_total"),
        n(&summary["retries"])
    );
    assert_eq!(
        total(&end, "fleet_station_throttles_total"),
        n(&summary["throttled"])
    );
    assert_eq!(
        end["fleet_station_endpoint_outages_total"],
        n(&summary["endpoint"]["outages"])
    );
    for (stage, stats) in summary["stages"].as_object().unwrap() {
        assert_eq!(
            end[&format!(r#"fleet_station_stage_duration_seconds_count{{stage="{stage}"}}"#)],
            n(&stats["count"]),
            "{stage}"
        );
    }
    let jigs = &summary["jigs"];
    assert_eq!(
        total(&end, "fleet_station_jig_payload_bytes_total"),
        n(&jigs["bytes_written"])
    );
    assert_eq!(
        total(&end, "fleet_station_jig_retries_total"),
        n(&jigs["retries"])
    );
    assert_eq!(
        total(&end, "fleet_station_jig_boards_failed_total"),
        n(&jigs["failed_boards"])
    );
    // Every device made one CreateCertificateFromCsr and one RegisterThing request that
    // were accepted.
    for api in ["create_certificate", "register_thing"] {
        assert_eq!(
            end[&format!(r#"fleet_station_api_requests_total{{api="{api}",result="accepted"}}"#)],
            30.0,
            "{api}"
        );
    }
    // The server stopped with the run.
    assert!(TcpStream::connect(addr).is_err());
}

#[test]
fn a_load_test_serves_metrics_with_its_rate_controller() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StationConfig::embedded(dir.path())
        .set("provision.register_thing_tps", "20")
        .write();
    let report = dir.path().join("lt");
    let (mut child, addr, _stderr) = spawn_with_metrics(&[
        "loadtest",
        "--devices",
        "40",
        "--config",
        cfg.to_str().unwrap(),
        "--report-dir",
        report.to_str().unwrap(),
    ]);
    let mut last = Scrape::new();
    let mid = scrape_until(&mut child, addr, &mut last, "5 devices in /metrics", |s| {
        provisioned(s) >= 5.0
    });
    let target = mid[r#"fleet_station_rate_target_requests_per_second{api="register_thing"}"#];
    assert!(target > 0.0 && target <= 20.0, "{target}");
    assert!(
        mid.contains_key(r#"fleet_station_rate_actual_requests_per_second{api="register_thing"}"#)
    );
    let out = finish(child);
    assert_eq!(out.status.code(), Some(0));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["devices"]["provisioned"], 40);
    assert!(provisioned(&last) <= 40.0);
}

/// `station run` with a bad metrics address; its output and the ledger's device count.
fn run_refused(dir: &Path, config: StationConfig, flag: Option<&str>) -> (Output, usize) {
    let cfg = config.write();
    let mut cmd = station();
    cmd.args(["run", "--boards", "5", "--config"])
        .arg(&cfg)
        .arg("--report-dir")
        .arg(dir.join("report"));
    if let Some(addr) = flag {
        cmd.args(["--metrics-addr", addr]);
    }
    let out = cmd.output().unwrap();
    let devices = count(&dir.join("ledger.db"), "SELECT count(*) FROM devices");
    (out, devices)
}

#[test]
fn a_metrics_address_in_use_stops_the_run_before_any_device() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for (in_file, key) in [(false, "--metrics-addr"), (true, "telemetry.metrics_addr")] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = StationConfig::embedded(dir.path());
        if in_file {
            config = config.set_str("telemetry.metrics_addr", &addr);
        }
        let (out, devices) = run_refused(dir.path(), config, (!in_file).then_some(&*addr));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("station::metrics::bind"), "{stderr}");
        assert!(stderr.contains(key) && stderr.contains(&addr), "{stderr}");
        assert!(stderr.contains("free port"), "{stderr}");
        assert_eq!(devices, 0, "a device was started");
        assert!(!dir.path().join("report/summary.json").exists());
    }
}

#[test]
fn an_unparsable_metrics_address_is_refused_with_its_key() {
    for (in_file, key) in [(false, "--metrics-addr"), (true, "telemetry.metrics_addr")] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = StationConfig::embedded(dir.path());
        if in_file {
            config = config.set_str("telemetry.metrics_addr", "9100");
        }
        let (out, devices) = run_refused(dir.path(), config, (!in_file).then_some("9100"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("station::config::invalid"), "{stderr}");
        assert!(
            stderr.contains(key) && stderr.contains("HOST:PORT"),
            "{stderr}"
        );
        assert_eq!(devices, 0);
        assert!(!dir.path().join("ledger.db").exists());
    }
}
