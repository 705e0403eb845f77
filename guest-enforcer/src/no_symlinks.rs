//! Opening paths the agent may have tampered with: `openat2` with
//! `RESOLVE_NO_SYMLINKS`, so no symlink anywhere on the way is followed (a swapped-in
//! link fails with `ELOOP` instead of redirecting the open).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

/// Opens `path` with `flags` (`O_CLOEXEC` is added), following no symlink and no
/// magic link on the way.
pub fn open_following_no_symlinks(path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: open_how is plain data; zeroed is a valid value before we fill it.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 with a live path and a live, correctly sized open_how.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat2 returned a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}
