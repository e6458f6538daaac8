//! The `/metrics` HTTP endpoint: `tiny_http` on its own thread, answering each scrape with
//! the latest snapshot's metrics ([`super::metrics`]); 404 for any other path.
//!
//! Binding is separate from serving, so a station binds its address before it provisions
//! anything (an address in use or unparsable stops the run at start) and serves once its
//! telemetry runs. The server stops when [`MetricsServer`] is dropped, with the run.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::watch;

use super::Snapshot;
use super::metrics::{CONTENT_TYPE, Metrics};

/// The metrics address could not be served.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("cannot serve /metrics on {addr} (`{key}`): {reason}")]
#[diagnostic(
    code(station::metrics::bind),
    help(
        "choose a free port with `{key}` (port 0 picks one and prints it), or stop what listens on {addr}; a host name must resolve to an address of this machine"
    )
)]
pub struct BindError {
    /// `--metrics-addr` or `telemetry.metrics_addr`.
    pub key: &'static str,
    pub addr: String,
    pub reason: String,
}

/// A bound, not yet serving, metrics address.
pub struct BoundMetrics {
    server: tiny_http::Server,
    addr: SocketAddr,
}

impl BoundMetrics {
    /// Binds `addr` (`HOST:PORT`); `key` names where it came from, for the error.
    pub fn bind(addr: &str, key: &'static str) -> Result<BoundMetrics, BindError> {
        let err = |reason: String| BindError {
            key,
            addr: addr.to_string(),
            reason,
        };
        let server = tiny_http::Server::http(addr).map_err(|e| err(e.to_string()))?;
        let bound = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| err("not an IP address".into()))?;
        Ok(BoundMetrics {
            server,
            addr: bound,
        })
    }

    /// The address bound (the actual port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `/metrics` of station `station` from `snapshots` on a thread of its own until
    /// the server is dropped.
    pub fn serve(self, snapshots: watch::Receiver<Snapshot>, station: &str) -> MetricsServer {
        let server = Arc::new(self.server);
        let metrics = Metrics::new(snapshots, station);
        let thread = std::thread::Builder::new()
            .name("metrics-http".into())
            .spawn({
                let server = server.clone();
                move || {
                    for request in server.incoming_requests() {
                        answer(request, &metrics);
                    }
                }
            })
            .expect("spawn the metrics thread");
        MetricsServer {
            server,
            addr: self.addr,
            thread: Some(thread),
        }
    }
}

/// Answers one request: the metrics for `GET`/`HEAD /metrics`, 405 for another method, 404
/// elsewhere. A client that hung up is no concern of the station's.
fn answer(request: tiny_http::Request, metrics: &Metrics) {
    use tiny_http::{Header, Method, Response};
    let path = request.url().split('?').next().unwrap_or("");
    let header = |k: &str, v: &str| Header::from_bytes(k, v).expect("a valid ASCII header");
    let plain = header("Content-Type", "text/plain; charset=utf-8");
    let _ = if path != "/metrics" {
        request.respond(
            Response::from_string("not found: the metrics are at /metrics\n")
                .with_status_code(404)
                .with_header(plain),
        )
    } else if !matches!(request.method(), Method::Get | Method::Head) {
        request.respond(
            Response::from_string("method not allowed: use GET\n")
                .with_status_code(405)
                .with_header(plain)
                .with_header(header("Allow", "GET, HEAD")),
        )
    } else {
        request.respond(
            Response::from_string(metrics.render())
                .with_header(header("Content-Type", CONTENT_TYPE)),
        )
    };
}

/// `/metrics` being served; dropping it stops the server and joins its thread.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use super::*;

    /// One HTTP/1.0 request; the whole response as text.
    fn get(addr: SocketAddr, method: &str, path: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "{method} {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_metrics_with_the_text_format_type_and_404_elsewhere() {
        let bound = BoundMetrics::bind("127.0.0.1:0", "telemetry.metrics_addr").unwrap();
        let addr = bound.local_addr();
        assert_ne!(addr.port(), 0);
        let snap = Snapshot {
            provisioned: 7,
            ..Snapshot::default()
        };
        let (_tx, rx) = watch::channel(snap);
        let server = bound.serve(rx, "line-7");

        let ok = get(addr, "GET", "/metrics");
        assert!(
            ok.starts_with("HTTP/1.0 200") || ok.starts_with("HTTP/1.1 200"),
            "{ok}"
        );
        assert!(
            ok.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"),
            "{ok}"
        );
        assert!(ok.contains("fleet_station_devices_total{outcome=\"provisioned\"} 7"));
        // The station's id, as an info metric.
        assert!(
            ok.contains(&format!(
                "fleet_station_info{{station=\"line-7\",version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
            "{ok}"
        );

        let missing = get(addr, "GET", "/");
        assert!(missing.contains(" 404 "), "{missing}");
        let post = get(addr, "POST", "/metrics");
        assert!(post.contains(" 405 "), "{post}");

        // Dropping the server closes the port (its accept thread ends just after).
        drop(server);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while TcpStream::connect(addr).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "the port is still open"
            );
            std::thread::yield_now();
        }
    }

    #[test]
    fn an_address_in_use_is_refused_with_its_key() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let Err(e) = BoundMetrics::bind(&addr, "--metrics-addr") else {
            panic!("bound an address in use");
        };
        assert_eq!(e.key, "--metrics-addr");
        let text = e.to_string();
        assert!(
            text.contains(&addr) && text.contains("--metrics-addr"),
            "{text}"
        );
    }
}
