//! Pseudo-terminals made from a `ptmx` the caller names: the guest's own devpts for a
//! VM's interactive commands, the host's for process isolation (the enforcer's terminal
//! for the agent, and the launcher's stand-in for the caller's terminal).

use crate::pb::WindowSize;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Sets the size of the terminal whose master (or slave) is `fd`.
pub fn set_window_size(fd: &OwnedFd, size: &WindowSize) -> std::io::Result<()> {
    let ws = libc::winsize {
        ws_row: size.rows.min(u16::MAX.into()) as u16,
        ws_col: size.cols.min(u16::MAX.into()) as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one live winsize.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A fresh pseudo-terminal from `ptmx`: (master, slave), both close-on-exec, the
/// master non-blocking when asked. The slave comes from the master itself
/// (`TIOCGPTPEER`), never by a path the agent could have swapped.
pub fn open_pty(
    ptmx: &str,
    size: Option<&WindowSize>,
    nonblocking_master: bool,
) -> std::io::Result<(OwnedFd, OwnedFd)> {
    let path = std::ffi::CString::new(ptmx).map_err(std::io::Error::other)?;
    let nonblock = if nonblocking_master {
        libc::O_NONBLOCK
    } else {
        0
    };
    // SAFETY: open with a live NUL-terminated path.
    let m = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC | nonblock,
        )
    };
    if m < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: open returned a new descriptor we own.
    let master = unsafe { OwnedFd::from_raw_fd(m) };
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one live int; TIOCGPTPEER takes open flags and returns
    // a new descriptor.
    let slave = unsafe {
        if libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if slave < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    if let Some(size) = size {
        set_window_size(&master, size)?;
    }
    Ok((master, slave))
}
