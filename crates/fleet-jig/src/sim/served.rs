//! The handle of an emulated board's pty thread, shared by the boards of the other drivers
//! ([`VirtualModem`](super::VirtualModem), [`VirtualZephyr`](super::VirtualZephyr)): a pty
//! behind a fresh stable path, served by one thread, which is stopped and joined, and its
//! directory removed, when the handle is dropped.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::error::JigError;
use crate::sim::virtual_jig::pty::{Pty, open_stable};

/// A pty served by a thread, behind a stable path.
pub(in crate::sim) struct Served {
    path: String,
    dir: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Served {
    /// Opens a pty behind a fresh stable path; `host` makes the serving loop from the pty and
    /// the stop flag (the loop ends soon after the flag is set), run on a thread named
    /// `<name> <path>`.
    pub(in crate::sim) fn spawn<F, R>(name: &str, host: F) -> Result<Served, JigError>
    where
        F: FnOnce(Pty, Arc<AtomicBool>) -> R,
        R: FnOnce() + Send + 'static,
    {
        let (dir, link, pty) = open_stable()?;
        let path = link.to_string_lossy().into_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let run = host(pty, stop.clone());
        match std::thread::Builder::new()
            .name(format!("{name} {path}"))
            .spawn(run)
        {
            Ok(thread) => Ok(Served {
                path,
                dir,
                stop,
                thread: Some(thread),
            }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(JigError::Fixture {
                    detail: format!("cannot start the {name} thread: {e}"),
                })
            }
        }
    }

    /// The path the station opens.
    pub(in crate::sim) fn path(&self) -> &str {
        &self.path
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Locks `m`, also when a thread panicked holding it (the state is plain data).
pub(in crate::sim) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
