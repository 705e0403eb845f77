//! Identity: the agent runs as an unprivileged uid with every capability set empty.
//!
//! Applied between fork and exec, in this order, because each step needs the privilege
//! the next one removes: drop every capability from the bounding set (needs
//! `CAP_SETPCAP`), clear the ambient set, set supplementary groups, gid, then uid (after
//! which the kernel clears permitted and effective), clear inheritable/permitted/effective
//! explicitly, set `no_new_privs`, and read it all back. No allocation: raw syscalls on
//! values computed in [`AgentIdentity::prepare`]. (The `caps` crate builds hash sets, which
//! is not safe after `fork` in a threaded parent.)

use std::io;

/// Who the agent runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentIdentity {
    /// User id (not 0).
    pub uid: u32,
    /// Group id (not 0).
    pub gid: u32,
    /// Supplementary groups (may be empty; none may be 0).
    pub groups: Vec<u32>,
}

/// Why the identity cannot be applied. The agent must not start.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A root id was requested.
    #[error("identity: the agent may not run as {what} 0")]
    Root {
        /// `uid`, `gid` or `group`.
        what: &'static str,
    },
    /// The kernel's capability count could not be read.
    #[error("identity: cannot read /proc/sys/kernel/cap_last_cap: {0}")]
    CapLastCap(String),
}

/// An identity ready to apply.
#[derive(Debug, Clone)]
pub struct PreparedIdentity {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
    cap_last_cap: u32,
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

impl AgentIdentity {
    /// Checks the ids and reads how many capabilities the kernel has.
    pub fn prepare(&self) -> Result<PreparedIdentity, IdentityError> {
        if self.uid == 0 {
            return Err(IdentityError::Root { what: "uid" });
        }
        if self.gid == 0 {
            return Err(IdentityError::Root { what: "gid" });
        }
        if self.groups.contains(&0) {
            return Err(IdentityError::Root { what: "group" });
        }
        let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .map_err(|e| IdentityError::CapLastCap(e.to_string()))?;
        let cap_last_cap = last
            .trim()
            .parse()
            .map_err(|_| IdentityError::CapLastCap(format!("`{}` is not a number", last.trim())))?;
        Ok(PreparedIdentity {
            uid: self.uid,
            gid: self.gid,
            groups: self.groups.clone(),
            cap_last_cap,
        })
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl PreparedIdentity {
    /// Drops to the agent's identity with no capabilities. Errors are raw OS errors (no
    /// allocation); a check that fails after the drop returns `EPERM`.
    pub fn drop_privileges_on_current_thread(&self) -> io::Result<()> {
        for cap in 0..=self.cap_last_cap {
            // SAFETY: prctl with integer arguments only.
            let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            // EINVAL: a capability this kernel does not know; nothing to drop.
            if rc != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: prctl with integer arguments only.
        check(unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            )
        })?;
        // SAFETY: the pointer and length describe `self.groups`, alive for the call.
        check(unsafe { libc::setgroups(self.groups.len(), self.groups.as_ptr()) })?;
        // SAFETY: integer arguments only.
        check(unsafe { libc::setresgid(self.gid, self.gid, self.gid) })?;
        // SAFETY: integer arguments only.
        check(unsafe { libc::setresuid(self.uid, self.uid, self.uid) })?;
        let header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let empty = [CapData::default(); 2];
        // SAFETY: header and data are valid, correctly laid out for capset v3.
        check(unsafe { libc::syscall(libc::SYS_capset, &header, empty.as_ptr()) as libc::c_int })?;
        // SAFETY: prctl with integer arguments only.
        check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
        self.verify_dropped()
    }

    /// Reads back ids and capabilities; anything left over is `EPERM`.
    fn verify_dropped(&self) -> io::Result<()> {
        let denied = || io::Error::from_raw_os_error(libc::EPERM);
        let (mut r, mut e, mut s) = (0, 0, 0);
        // SAFETY: pointers to live locals.
        check(unsafe { libc::getresuid(&mut r, &mut e, &mut s) })?;
        if [r, e, s] != [self.uid; 3] {
            return Err(denied());
        }
        // SAFETY: pointers to live locals.
        check(unsafe { libc::getresgid(&mut r, &mut e, &mut s) })?;
        if [r, e, s] != [self.gid; 3] {
            return Err(denied());
        }
        let mut header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let mut data = [CapData::default(); 2];
        // SAFETY: header and data are valid, correctly laid out for capget v3.
        check(unsafe {
            libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) as libc::c_int
        })?;
        if data
            .iter()
            .any(|d| d.effective != 0 || d.permitted != 0 || d.inheritable != 0)
        {
            return Err(denied());
        }
        for cap in 0..=self.cap_last_cap {
            // SAFETY: prctl with integer arguments only.
            if unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) } > 0 {
                return Err(denied());
            }
        }
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) } != 1 {
            return Err(denied());
        }
        Ok(())
    }
}
