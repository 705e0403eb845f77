//! Resource limits of the agent's processes (rlimits).
//!
//! rlimits bound each process: how many processes the agent's uid may have (a fork bomb
//! stops there), open files, the largest file it may write, no core dumps (they would
//! copy memory, secrets included, to disk), and optionally the address space. The
//! cgroup v2 leaf (pids.max, memory.max, cpu.max) bounds the tree as a whole and is
//! applied by the enforcer inside the VM, where it owns the cgroup hierarchy.

use std::io;

/// rlimits for the agent. `None` leaves a limit as inherited, except core dumps, which
/// are always off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rlimits {
    /// RLIMIT_NPROC: processes and threads of the agent's uid.
    pub nproc: Option<u64>,
    /// RLIMIT_NOFILE: open file descriptors per process.
    pub nofile: Option<u64>,
    /// RLIMIT_FSIZE: largest file a process may write, bytes.
    pub fsize_bytes: Option<u64>,
    /// RLIMIT_AS: address space per process, bytes.
    pub address_space_bytes: Option<u64>,
}

impl Rlimits {
    /// Sets the limits (soft = hard, so the agent cannot raise them). No allocation.
    pub fn apply_to_current_process(&self) -> io::Result<()> {
        // The resource type differs between glibc and musl; a macro keeps one spelling.
        macro_rules! set {
            ($resource:expr, $value:expr) => {{
                let lim = libc::rlimit {
                    rlim_cur: $value,
                    rlim_max: $value,
                };
                // SAFETY: `lim` is a valid rlimit for the duration of the call.
                if unsafe { libc::setrlimit($resource, &lim) } != 0 {
                    return Err(io::Error::last_os_error());
                }
            }};
        }
        set!(libc::RLIMIT_CORE, 0);
        if let Some(v) = self.nproc {
            set!(libc::RLIMIT_NPROC, v);
        }
        if let Some(v) = self.nofile {
            set!(libc::RLIMIT_NOFILE, v);
        }
        if let Some(v) = self.fsize_bytes {
            set!(libc::RLIMIT_FSIZE, v);
        }
        if let Some(v) = self.address_space_bytes {
            set!(libc::RLIMIT_AS, v);
        }
        Ok(())
    }
}
