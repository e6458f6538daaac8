//! One writer per ledger: an exclusive `flock` on `<ledger>.lock`, held as long as the
//! [`Ledger`](crate::ledger::Ledger) is open.
//!
//! Two stations writing one ledger would interleave their devices' journals and, worse, each
//! take the other's unfinished boards for its own. The lock is taken non-blocking, so the
//! second station is refused at start with a message naming the first (station id, pid, host
//! and start time, written into the lock file once the lock is held). The kernel drops a
//! `flock` when its holder's file is closed, also when the process is killed with SIGKILL,
//! so a crashed station never blocks its own restart. A lock found held is tried again for a
//! quarter of a second before the station is refused: a process forked by the holder in that
//! instant keeps a copy of the descriptor (and so the lock) until it executes its program, and
//! a station that is just closing lets go. The lock file is never deleted:
//! deleting it would let a second process lock a new file of the same name while the first
//! still holds the old one.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::ledger::LedgerError;

/// The lock file next to a ledger.
pub(crate) fn lock_path(ledger: &Path) -> PathBuf {
    crate::ledger::beside(ledger, ".lock")
}

/// The held lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub(super) struct LedgerLock {
    // Closing the file releases the lock.
    _file: File,
}

impl LedgerLock {
    /// Takes the lock of `ledger` for `station`, or says who holds it.
    pub(super) fn acquire(ledger: &Path, station: &str) -> Result<LedgerLock, LedgerError> {
        let path = lock_path(ledger);
        let io = |source| LedgerError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        let patience = std::time::Instant::now() + std::time::Duration::from_millis(250);
        loop {
            // SAFETY: flock on a file descriptor this function owns.
            let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if r == 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) if std::time::Instant::now() < patience => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Some(libc::EWOULDBLOCK) => {
                    let mut text = String::new();
                    let _ = file.read_to_string(&mut text);
                    let holder = match text.trim() {
                        "" => "a station that is starting (it has not written its details yet)"
                            .to_string(),
                        t => t.to_string(),
                    };
                    return Err(LedgerError::InUse {
                        path: ledger.to_path_buf(),
                        holder,
                    });
                }
                _ => return Err(io(e)),
            }
        }
        // Held: say who holds it. Overwrite in place, then cut the rest, so a reader never
        // sees an empty file between the two.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io)?;
        let holder = holder_line(station);
        file.write_all_at(holder.as_bytes(), 0).map_err(io)?;
        file.set_len(holder.len() as u64).map_err(io)?;
        Ok(LedgerLock { _file: file })
    }
}

/// `station ID, pid N, host H, since RFC3339`.
pub(in crate::ledger) fn holder_line(station: &str) -> String {
    let since = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    format!(
        "station {station}, pid {}, host {}, since {since}\n",
        std::process::id(),
        host_name()
    )
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or
    // truncates, and the last byte is kept 0 below.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    if r != 0 {
        return "unknown".to_string();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
