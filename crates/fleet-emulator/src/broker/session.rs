//! Persistent MQTT sessions (docs/aws-fleet-provisioning.md §5.2: AWS keeps them for an hour by
//! default).
//!
//! A client that connects with `cleanSession = 0` (MQTT 3.1.1) or a Session Expiry Interval
//! above 0 (MQTT 5) keeps its subscriptions after it disconnects, for one hour (MQTT 5: the
//! interval it asked for, at most one hour), and QoS 1 messages published to them meanwhile
//! are queued and delivered when it reconnects (CONNACK `session present = 1`). A clean
//! connect discards the stored session. API replies are never queued: AWS answers on the
//! requesting connection only.
//!
//! Choices where AWS is silent: at most 100 queued messages per session (AWS's in-flight
//! limit); later ones are dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::codec::ForwardedProps;
use super::topic;

/// AWS's persistent-session expiry.
pub(crate) const MAX_EXPIRY: Duration = Duration::from_secs(3600);
/// Queued QoS 1 messages kept per offline session.
pub(crate) const MAX_QUEUED: usize = 100;

/// A subscription as a session keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredSubscription {
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
}

/// A message waiting for an offline session.
#[derive(Debug, Clone)]
pub(crate) struct Queued {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub props: Option<Arc<ForwardedProps>>,
}

#[derive(Debug)]
struct Stored {
    subscriptions: Vec<StoredSubscription>,
    /// The connection using it, or `None` while the client is away.
    owner: Option<u64>,
    expiry: Duration,
    offline_since: Option<Instant>,
    queue: VecDeque<Queued>,
}

impl Stored {
    fn expired(&self, now: Instant) -> bool {
        self.offline_since
            .is_some_and(|t| now.saturating_duration_since(t) >= self.expiry)
    }
}

/// Every persistent session, by client id.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    by_client: HashMap<String, Stored>,
}

/// What a reconnecting client gets back.
#[derive(Debug, Default)]
pub(crate) struct Resumed {
    pub subscriptions: Vec<StoredSubscription>,
    pub queued: Vec<Queued>,
}

impl Sessions {
    /// A connection starts. `clean` discards a stored session; `persistent` (with its
    /// granted `expiry`) makes this connection's session survive it. Returns the resumed
    /// session, if there was one (then CONNACK says session present).
    pub(crate) fn open(
        &mut self,
        client_id: &str,
        conn_id: u64,
        clean: bool,
        persistent: bool,
        expiry: Duration,
        now: Instant,
    ) -> Option<Resumed> {
        if clean {
            self.by_client.remove(client_id);
        }
        let resumed = match self.by_client.get_mut(client_id) {
            Some(s) if !s.expired(now) => Some(Resumed {
                subscriptions: s.subscriptions.clone(),
                queued: s.queue.drain(..).collect(),
            }),
            _ => None,
        };
        if persistent {
            let s = self
                .by_client
                .entry(client_id.to_string())
                .or_insert(Stored {
                    subscriptions: Vec::new(),
                    owner: None,
                    expiry,
                    offline_since: None,
                    queue: VecDeque::new(),
                });
            if resumed.is_none() {
                s.subscriptions.clear();
                s.queue.clear();
            }
            s.owner = Some(conn_id);
            s.expiry = expiry;
            s.offline_since = None;
        } else {
            self.by_client.remove(client_id);
        }
        resumed
    }

    /// The connection changed its subscriptions.
    pub(crate) fn save(
        &mut self,
        client_id: &str,
        conn_id: u64,
        subscriptions: Vec<StoredSubscription>,
    ) {
        if let Some(s) = self.by_client.get_mut(client_id)
            && s.owner == Some(conn_id)
        {
            s.subscriptions = subscriptions;
        }
    }

    /// The connection ended: its session (if persistent and still its own) waits offline.
    pub(crate) fn close(&mut self, client_id: &str, conn_id: u64, now: Instant) {
        if let Some(s) = self.by_client.get_mut(client_id)
            && s.owner == Some(conn_id)
        {
            s.owner = None;
            s.offline_since = Some(now);
        }
    }

    /// Queues a publish for every offline session with a matching QoS 1 subscription.
    pub(crate) fn queue(&mut self, message: &Queued, now: Instant) {
        self.by_client.retain(|_, s| !s.expired(now));
        for s in self.by_client.values_mut().filter(|s| s.owner.is_none()) {
            let qos = s
                .subscriptions
                .iter()
                .filter(|sub| topic::matches(&sub.filter, &message.topic))
                .map(|sub| sub.qos)
                .max();
            if qos.is_some_and(|q| q >= 1) && message.qos >= 1 && s.queue.len() < MAX_QUEUED {
                s.queue.push_back(message.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(f: &str) -> StoredSubscription {
        StoredSubscription {
            filter: f.into(),
            qos: 1,
            no_local: false,
        }
    }

    fn msg(t: &str, qos: u8) -> Queued {
        Queued {
            topic: t.into(),
            payload: Bytes::from_static(b"x"),
            qos,
            props: None,
        }
    }

    #[test]
    fn a_persistent_session_keeps_subscriptions_and_queues_qos1() {
        let mut s = Sessions::default();
        let t0 = Instant::now();
        assert!(s.open("c", 1, false, true, MAX_EXPIRY, t0).is_none());
        s.save("c", 1, vec![sub("a/#")]);
        s.close("c", 1, t0);
        s.queue(&msg("a/b", 1), t0);
        s.queue(&msg("a/c", 0), t0);
        s.queue(&msg("z", 1), t0);
        let r = s.open("c", 2, false, true, MAX_EXPIRY, t0).unwrap();
        assert_eq!(r.subscriptions, vec![sub("a/#")]);
        assert_eq!(r.queued.len(), 1);
        assert_eq!(r.queued[0].topic, "a/b");
    }

    #[test]
    fn clean_connects_and_expiry_discard_it() {
        let mut s = Sessions::default();
        let t0 = Instant::now();
        s.open("c", 1, false, true, Duration::from_secs(10), t0);
        s.save("c", 1, vec![sub("a")]);
        s.close("c", 1, t0);
        assert!(
            s.open(
                "c",
                2,
                false,
                true,
                MAX_EXPIRY,
                t0 + Duration::from_secs(11)
            )
            .is_none()
        );
        s.save("c", 2, vec![sub("a")]);
        s.close("c", 2, t0);
        assert!(
            s.open("c", 3, true, false, MAX_EXPIRY, t0).is_none(),
            "clean start"
        );
        assert!(s.open("c", 4, false, true, MAX_EXPIRY, t0).is_none());
    }

    #[test]
    fn a_takeover_keeps_the_session_of_the_live_connection() {
        let mut s = Sessions::default();
        let t0 = Instant::now();
        s.open("c", 1, false, true, MAX_EXPIRY, t0);
        s.save("c", 1, vec![sub("a")]);
        // A second connection takes over while the first is still up.
        let r = s.open("c", 2, false, true, MAX_EXPIRY, t0).unwrap();
        assert_eq!(r.subscriptions, vec![sub("a")]);
        // The first one ending later does not put the session offline.
        s.close("c", 1, t0);
        s.queue(&msg("a", 1), t0);
        s.save("c", 2, vec![sub("a"), sub("b")]);
        s.close("c", 2, t0);
        let r = s.open("c", 3, false, true, MAX_EXPIRY, t0).unwrap();
        assert_eq!(r.subscriptions.len(), 2);
        assert!(
            r.queued.is_empty(),
            "nothing was queued while connection 2 was up"
        );
    }
}
