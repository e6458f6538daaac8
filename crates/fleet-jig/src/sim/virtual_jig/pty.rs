//! The jig's USB adapter while plugged in: a pty pair, with the jig's stable path pointing
//! at the slave end (switched atomically on every replug).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serialport::{SerialPort, TTYPort};

use super::sys;
use super::tmpdir::private_dir;
use crate::error::JigError;

/// A fresh private directory with the stable path `tty` in it pointing at a new pty: the
/// directory (removed again when the pty cannot be opened), the stable path and the pty.
pub(in crate::sim) fn open_stable() -> Result<(PathBuf, PathBuf, Pty), JigError> {
    let dir = private_dir().map_err(|e| JigError::Fixture {
        detail: format!("cannot create the jig directory: {e}"),
    })?;
    let link = dir.join("tty");
    match Pty::open(&link) {
        Ok(pty) => Ok((dir, link, pty)),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

/// The adapter while plugged in: a pty pair, and the stable path pointing at its slave.
pub(in crate::sim) struct Pty {
    pub(in crate::sim) master: TTYPort,
    /// Our own handle on the slave end, so the master never sees a hang-up while the station
    /// closes and reopens the port.
    _slave: TTYPort,
}

impl Pty {
    pub(in crate::sim) fn open(link: &Path) -> Result<Pty, JigError> {
        let fixture = |detail: String| JigError::Fixture { detail };
        let (master, slave) =
            TTYPort::pair().map_err(|e| fixture(format!("cannot open a pty pair: {e}")))?;
        let target = slave
            .name()
            .ok_or_else(|| fixture("the pty slave has no path".into()))?;
        sys::set_nonblocking(master.as_raw_fd())
            .map_err(|e| fixture(format!("cannot make the pty non-blocking: {e}")))?;
        // Point the stable path at the new pty atomically (symlink beside it, rename over).
        let tmp = link.with_extension("new");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp)
            .and_then(|()| std::fs::rename(&tmp, link))
            .map_err(|e| fixture(format!("cannot link {} to {target}: {e}", link.display())))?;
        Ok(Pty {
            master,
            _slave: slave,
        })
    }
}
