//! The station's side of the account quota all stations share (`provision.shared_quota =
//! true`): each API's calls take their tokens from that API's bucket in PostgreSQL
//! (`ledger::quota`), so that the stations of a factory together stay under the account's
//! quota, and a throttle seen by one station lowers the rate of all.
//!
//! - One thread per station owns a connection of its own to the ledger's database (not the
//!   ledger writer's) and runs the statements in order: grants, throttle reports.
//! - [`SharedBucket::acquire`]: a call takes the next token of the station's *stash*, the
//!   tokens of its last grant, and waits for that token's time. A grant is the station's
//!   share of ~100 ms of the shared rate ([`BATCH`] divided among the stations taking tokens),
//!   and its tokens are spread evenly over those 100 ms: the stash paces the station's calls
//!   at its share of the rate, as the local bucket paces at the whole rate. A session holds
//!   the stash while it waits, so the sessions take the tokens in turn and the next grant is
//!   asked for only when the last token of the one before is due: a station holds at most one
//!   batch ahead of its use. A token whose time passed more than [`STALE`] ago (the station
//!   was idle, or slower than its share) is dropped, not spent late, so tokens never bunch up.
//!   A batch starts where the last grant of any station ended on the shared time line and is
//!   used within ~100 ms of that start, so in any window the stations together take at most
//!   the rate's worth plus ~100 ms of it (well inside a quota's burst of a second).
//! - [`SharedBucket::on_throttle`]: reported to the database (no answer awaited).
//! - The database does not answer: no token, so no call goes out. The calls wait, retrying
//!   every [`RETRY`]; the station logs a warning when the outage starts and a line when it
//!   ends (and [`SharedBucket::outage`] reports it). There is no fallback to a local-only
//!   quota: N stations pacing alone would send N times the account's quota. A device whose
//!   deadline passes while it waits fails as any late device does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use crate::ledger::LedgerError;
use crate::ledger::quota::{Grant, QuotaStore, Throttled};

/// How much of the rate one round trip takes: ~100 ms of tokens (at least one).
pub const BATCH: Duration = Duration::from_millis(100);
/// A token this late (the station was idle when it came due) is dropped.
pub const STALE: Duration = Duration::from_millis(50);
/// How often a waiting call asks again while the database does not answer.
pub const RETRY: Duration = Duration::from_secs(1);

enum Request {
    Grant {
        api: &'static str,
        reply: oneshot::Sender<Result<Grant, String>>,
    },
    Throttled {
        api: &'static str,
        reply: Option<oneshot::Sender<Result<Throttled, String>>>,
    },
}

/// The link to the shared quota: the thread that owns the connection.
pub struct SharedQuota {
    tx: std_mpsc::Sender<Request>,
    /// The database, without its password (for messages).
    ledger: String,
}

impl std::fmt::Debug for SharedQuota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedQuota")
            .field("ledger", &self.ledger)
            .finish()
    }
}

impl SharedQuota {
    /// Connects to the ledger's database at `url` on a connection of its own, makes or sets
    /// the row of each of `quotas` (API code, the account's quota in tokens/s) and starts
    /// the thread. Blocks while it connects. A quota different from the one the row held
    /// (another station's configuration) is set for every station, with a warning.
    pub fn start(
        url: &str,
        station: &str,
        quotas: &[(&'static str, f64)],
    ) -> Result<Arc<SharedQuota>, LedgerError> {
        let ledger =
            crate::ledger::LedgerLocation::of(std::path::Path::new(url), None, station).display();
        let store = open(url, station, quotas, &ledger)?;
        let (tx, rx) = std_mpsc::channel();
        let (url, station, quotas) = (url.to_string(), station.to_string(), quotas.to_vec());
        let name = ledger.clone();
        std::thread::Builder::new()
            .name("shared-quota".into())
            .spawn(move || serve(Some(store), &url, &station, &quotas, &name, &rx))
            .map_err(|e| LedgerError::Postgres {
                ledger: ledger.clone(),
                reason: format!("cannot start the shared quota's thread: {e}"),
            })?;
        Ok(Arc::new(SharedQuota { tx, ledger }))
    }

    /// The bucket of `api` (an API code), starting at `quota` tokens/s until its first grant.
    pub fn bucket(self: &Arc<Self>, api: &'static str, quota: f64) -> SharedBucket {
        SharedBucket {
            api,
            link: self.clone(),
            stash: tokio::sync::Mutex::new(Stash {
                next: Instant::now(),
                left: 0,
                interval: Duration::ZERO,
            }),
            rate: AtomicU64::new(quota.to_bits()),
            outage: watch::channel(None).0,
        }
    }

    fn send(&self, request: Request) -> Result<(), String> {
        self.tx
            .send(request)
            .map_err(|_| "the shared quota's thread has stopped".to_string())
    }
}

/// Connects and makes or sets every row.
fn open(
    url: &str,
    station: &str,
    quotas: &[(&'static str, f64)],
    ledger: &str,
) -> Result<QuotaStore, LedgerError> {
    let mut store = QuotaStore::connect(url, station)?;
    for &(api, quota) in quotas {
        let seeded = store.seed(api, quota)?;
        if let Some((old, by)) = seeded.previous
            && old != quota
        {
            tracing::warn!(
                "shared quota of {api} in {ledger}: was {old}/s (set by station {by}); this \
                 station's configuration makes it {quota}/s for every station"
            );
        }
    }
    Ok(store)
}

/// The thread: runs each request on the connection, reconnecting (and setting the rows
/// again) after a failure, when the next request comes.
fn serve(
    mut store: Option<QuotaStore>,
    url: &str,
    station: &str,
    quotas: &[(&'static str, f64)],
    ledger: &str,
    rx: &std_mpsc::Receiver<Request>,
) {
    while let Ok(request) = rx.recv() {
        if store.is_none() {
            match open(url, station, quotas, ledger) {
                Ok(s) => store = Some(s),
                Err(e) => {
                    let reason = e.to_string();
                    match request {
                        Request::Grant { reply, .. } => drop(reply.send(Err(reason))),
                        Request::Throttled { reply, .. } => {
                            if let Some(r) = reply {
                                drop(r.send(Err(reason)));
                            }
                        }
                    }
                    continue;
                }
            }
        }
        let Some(s) = store.as_mut() else { continue };
        let failed = match request {
            Request::Grant { api, reply } => {
                let r = s.grant(api, BATCH).map_err(|e| e.to_string());
                let failed = r.is_err();
                drop(reply.send(r));
                failed
            }
            Request::Throttled { api, reply } => {
                let r = s.throttled(api).map_err(|e| e.to_string());
                let failed = r.is_err();
                if let Err(e) = &r {
                    tracing::warn!("a throttle of {api} could not be reported: {e}");
                }
                if let Some(reply) = reply {
                    drop(reply.send(r));
                }
                failed
            }
        };
        if failed {
            // A new connection for the next request (and the rows set again, if gone).
            store = None;
        }
    }
}

/// The tokens of the last grant not yet taken.
#[derive(Debug)]
struct Stash {
    /// When the next one may be used.
    next: Instant,
    left: u32,
    interval: Duration,
}

/// One API's share of the account quota, taken from PostgreSQL in batches.
#[derive(Debug)]
pub struct SharedBucket {
    api: &'static str,
    link: Arc<SharedQuota>,
    stash: tokio::sync::Mutex<Stash>,
    /// The shared rate of the last grant (f64 bits).
    rate: AtomicU64,
    /// Why the database does not answer, while it does not.
    outage: watch::Sender<Option<String>>,
}

impl SharedBucket {
    /// Waits for a token of the shared bucket, and for its time.
    pub async fn acquire(&self) {
        let mut guard = self.stash.lock().await;
        loop {
            let stash = &mut *guard;
            let now = Instant::now();
            while stash.left > 0 && stash.next + STALE < now {
                stash.next += stash.interval;
                stash.left -= 1;
            }
            if stash.left > 0 {
                let at = stash.next;
                stash.next += stash.interval;
                stash.left -= 1;
                if at > now + Duration::from_millis(1) {
                    tokio::time::sleep_until(at.into()).await;
                }
                return;
            }
            match self.grant().await {
                Ok(g) => {
                    self.answered();
                    self.rate.store(g.rate.to_bits(), Ordering::Relaxed);
                    *guard = Stash {
                        next: Instant::now() + g.delay,
                        left: g.tokens,
                        interval: g.interval,
                    };
                }
                Err(reason) => {
                    self.unanswered(reason);
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    async fn grant(&self) -> Result<Grant, String> {
        let (reply, answer) = oneshot::channel();
        self.link.send(Request::Grant {
            api: self.api,
            reply,
        })?;
        answer
            .await
            .map_err(|_| "the shared quota's thread has stopped".to_string())?
    }

    /// A call was throttled: the shared rate drops for every station (at most once a second
    /// across them). Not waited for.
    pub fn on_throttle(&self) {
        let sent = self.link.send(Request::Throttled {
            api: self.api,
            reply: None,
        });
        if let Err(e) = sent {
            tracing::warn!("a throttle of {} could not be reported: {e}", self.api);
        }
    }

    /// Reports a throttle and waits for the shared rate it leaves (the tests' way to know the
    /// report is in the row).
    #[cfg(test)]
    pub(crate) async fn report_throttle(&self) -> Result<Throttled, String> {
        let (reply, answer) = oneshot::channel();
        self.link.send(Request::Throttled {
            api: self.api,
            reply: Some(reply),
        })?;
        let t = answer
            .await
            .map_err(|_| "the shared quota's thread has stopped".to_string())??;
        self.rate.store(t.rate.to_bits(), Ordering::Relaxed);
        Ok(t)
    }

    /// The shared rate as of this station's last grant, tokens/s.
    pub fn rate(&self) -> f64 {
        f64::from_bits(self.rate.load(Ordering::Relaxed))
    }

    /// Why the database does not answer, while it does not (`None` when it does).
    pub fn outage(&self) -> watch::Receiver<Option<String>> {
        self.outage.subscribe()
    }

    fn unanswered(&self, reason: String) {
        let api = self.api;
        let ledger = &self.link.ledger;
        self.outage.send_if_modified(|o| {
            if o.is_none() {
                tracing::warn!(
                    "the shared quota in {ledger} does not answer ({reason}): {api} calls wait \
                     for its tokens (asking again every {} s); none goes out on a local quota",
                    RETRY.as_secs()
                );
                *o = Some(reason);
                true
            } else {
                false
            }
        });
    }

    fn answered(&self) {
        let api = self.api;
        self.outage.send_if_modified(|o| {
            if o.take().is_some() {
                tracing::info!("the shared quota answers again; {api} calls continue");
                true
            } else {
                false
            }
        });
    }
}

#[cfg(test)]
mod tests;
