//! Why a run stopped early. A stage that finds a problem no retry can fix (a ledger that
//! cannot write, a claim certificate the endpoint refuses, a template that does not exist)
//! raises it here: the line stops at once, devices in flight keep their state, and the run
//! ends with that error instead of failing every board one by one.
//!
//! [`Halt`] wraps the run's [`Shutdown`]: raising triggers it, so everything that already
//! stops on Ctrl-C stops the same way. The first cause wins; later ones are only logged.

use std::sync::{Arc, Mutex};

use crate::error::Error;
use crate::shutdown::Shutdown;

#[derive(Clone)]
pub struct Halt {
    shutdown: Shutdown,
    cause: Arc<Mutex<Option<Error>>>,
}

impl Halt {
    pub fn new(shutdown: Shutdown) -> Halt {
        Halt {
            shutdown,
            cause: Arc::new(Mutex::new(None)),
        }
    }

    /// The run's stop signal (triggered by Ctrl-C, SIGTERM or [`raise`](Self::raise)).
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// Stops the line because of `e`.
    pub fn raise(&self, e: impl Into<Error>) {
        let e = e.into();
        let mut cause = self.cause.lock().unwrap_or_else(|p| p.into_inner());
        if cause.is_none() {
            tracing::error!("stopping the line: {e}");
            *cause = Some(e);
        } else {
            tracing::warn!("also: {e}");
        }
        drop(cause);
        self.shutdown.trigger();
    }

    /// Whether a cause was raised.
    pub fn is_raised(&self) -> bool {
        self.cause
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Takes the cause (once).
    pub fn take(&self) -> Option<Error> {
        self.cause.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_cause_wins_and_stops_the_run() {
        let s = Shutdown::new();
        let h = Halt::new(s.clone());
        assert!(!h.is_raised());
        h.raise(Error::NoJigs);
        h.raise(Error::Report(
            crate::telemetry::report::ReportError::NotWritable {
                path: "later".into(),
                source: std::io::Error::other("later"),
            },
        ));
        assert!(s.is_triggered());
        assert!(matches!(h.take(), Some(Error::NoJigs)));
        assert!(h.take().is_none());
    }
}
