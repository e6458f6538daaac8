//! The few system calls the board thread needs beyond std: non-blocking pty I/O, `ppoll`
//! with a sub-millisecond timeout, and precise timer wake-ups. The only `unsafe` of the
//! virtual jig is here.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

pub(in crate::sim) fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, with integer arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(in crate::sim) fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

pub(in crate::sim) fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the whole call.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[derive(Clone, Copy)]
#[repr(transparent)]
pub(in crate::sim) struct PollFd(libc::pollfd);

impl PollFd {
    pub(in crate::sim) fn new(fd: RawFd, input: bool, output: bool) -> PollFd {
        let mut events = 0;
        if input {
            events |= libc::POLLIN;
        }
        if output {
            events |= libc::POLLOUT;
        }
        PollFd(libc::pollfd {
            fd,
            events,
            revents: 0,
        })
    }

    pub(in crate::sim) fn readable(&self) -> bool {
        self.0.revents & libc::POLLIN != 0
    }

    pub(in crate::sim) fn hung_up(&self) -> bool {
        self.0.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
    }
}

/// Waits for any of `fds`, at most `timeout` (`None`: no limit). An interrupted wait
/// returns early without error.
pub(in crate::sim) fn poll(fds: &mut [PollFd], timeout: Option<Duration>) -> io::Result<()> {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `PollFd` is a transparent wrapper of `libc::pollfd` (same layout, one
    // field), the slice is valid for the call, `ts_ptr` is null or points to `ts`, which
    // outlives the call, and a null signal mask leaves the mask unchanged.
    let r = unsafe {
        libc::ppoll(
            fds.as_mut_ptr().cast::<libc::pollfd>(),
            fds.len() as libc::nfds_t,
            ts_ptr,
            std::ptr::null(),
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

/// Timer wake-ups of this thread within a microsecond of their deadline (Linux adds up to
/// 50 µs of slack by default, which would slow the emulated line).
pub(in crate::sim) fn precise_timers() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and affects this thread only.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong);
    }
}
