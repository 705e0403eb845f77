//! A cgroup v2 leaf for the agent's process tree: pids.max, memory.max, cpu.max.
//!
//! rlimits bound single processes (and NPROC a uid); the cgroup bounds the tree as a
//! whole, which is what stops a fork bomb or a memory hog spread over many processes.
//! Inside the VM the enforcer mounts cgroup2 itself and owns every controller. The leaf
//! is created under a parent the caller owns; controllers are enabled in that parent's
//! `cgroup.subtree_control` only (never in a group we did not create). A hierarchy that
//! is not cgroup2 or lacks a controller is an error, not a silent skip.
//!
//! The agent joins the leaf between fork and exec by writing `0` to the leaf's
//! `cgroup.procs` through a descriptor opened beforehand ([`CgroupLeaf::join_on_current_process`]).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Limits for the tree. `None` leaves the controller's default (unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupLimits {
    /// pids.max: processes and threads of the whole tree.
    pub pids_max: Option<u64>,
    /// memory.max, bytes (swap is disabled for the leaf too: memory.swap.max = 0 when
    /// the kernel has swap accounting).
    pub memory_max_bytes: Option<u64>,
    /// cpu.max as (quota µs, period µs): e.g. (200_000, 100_000) = 2 CPUs.
    pub cpu_max: Option<(u64, u64)>,
}

/// Why the leaf cannot be set up. The agent must not start.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The parent is not on a cgroup2 filesystem.
    #[error("cgroup: {0} is not a cgroup2 hierarchy")]
    NotCgroup2(PathBuf),
    /// A needed controller is not available in the parent.
    #[error("cgroup: controller `{controller}` is not available in {parent} (cgroup.controllers: `{available}`)")]
    MissingController {
        /// The controller.
        controller: &'static str,
        /// Parent group.
        parent: PathBuf,
        /// What the parent offers.
        available: String,
    },
    /// A cgroup file could not be read or written.
    #[error("cgroup: {path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A created leaf. [`CgroupLeaf::destroy`] kills what is left in it and removes it.
#[derive(Debug)]
pub struct CgroupLeaf {
    path: PathBuf,
    procs: File,
}

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

fn is_cgroup2(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills a zeroed struct through a valid pointer; the path is a valid
    // NUL-terminated string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == CGROUP2_SUPER_MAGIC
}

fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(io_err(path))
}

impl CgroupLeaf {
    /// Creates `parent/name` with `limits`, enabling the needed controllers in `parent`.
    pub fn create(
        parent: &Path,
        name: &str,
        limits: &CgroupLimits,
    ) -> Result<CgroupLeaf, CgroupError> {
        if !is_cgroup2(parent) {
            return Err(CgroupError::NotCgroup2(parent.to_path_buf()));
        }
        let needed: Vec<&'static str> = [
            ("pids", limits.pids_max.is_some()),
            ("memory", limits.memory_max_bytes.is_some()),
            ("cpu", limits.cpu_max.is_some()),
        ]
        .into_iter()
        .filter_map(|(c, want)| want.then_some(c))
        .collect();
        let controllers_path = parent.join("cgroup.controllers");
        let available =
            std::fs::read_to_string(&controllers_path).map_err(io_err(&controllers_path))?;
        for c in &needed {
            if !available.split_whitespace().any(|a| a == *c) {
                return Err(CgroupError::MissingController {
                    controller: c,
                    parent: parent.to_path_buf(),
                    available: available.trim().to_string(),
                });
            }
        }
        if !needed.is_empty() {
            let enable: Vec<String> = needed.iter().map(|c| format!("+{c}")).collect();
            write_file(&parent.join("cgroup.subtree_control"), &enable.join(" "))?;
        }
        let path = parent.join(name);
        std::fs::create_dir(&path).map_err(io_err(&path))?;
        // From here on, a failure removes the half-made leaf (nothing half-applied).
        let leaf = (|| {
            if let Some(p) = limits.pids_max {
                write_file(&path.join("pids.max"), &p.to_string())?;
            }
            if let Some(m) = limits.memory_max_bytes {
                write_file(&path.join("memory.max"), &m.to_string())?;
                let swap = path.join("memory.swap.max");
                if swap.exists() {
                    write_file(&swap, "0")?;
                }
            }
            if let Some((quota, period)) = limits.cpu_max {
                write_file(&path.join("cpu.max"), &format!("{quota} {period}"))?;
            }
            let procs_path = path.join("cgroup.procs");
            let procs = OpenOptions::new()
                .write(true)
                .open(&procs_path)
                .map_err(io_err(&procs_path))?;
            Ok(CgroupLeaf {
                path: path.clone(),
                procs,
            })
        })();
        if leaf.is_err() {
            let _ = std::fs::remove_dir(&path);
        }
        leaf
    }

    /// The leaf's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the calling process into the leaf (between fork and exec: one write, no
    /// allocation).
    pub fn join_on_current_process(&self) -> io::Result<()> {
        // SAFETY: writes one byte from a static buffer to a descriptor we own.
        let n = unsafe { libc::write(self.procs.as_raw_fd(), b"0".as_ptr().cast(), 1) };
        if n == 1 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Kills everything in the leaf (cgroup.kill) and removes it.
    pub fn destroy(self) -> Result<(), CgroupError> {
        let kill = self.path.join("cgroup.kill");
        if kill.exists() {
            let mut f = OpenOptions::new()
                .write(true)
                .open(&kill)
                .map_err(io_err(&kill))?;
            f.write_all(b"1").map_err(io_err(&kill))?;
        }
        // Removal succeeds once the killed processes are reaped by their parents.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e)
                    if e.raw_os_error() == Some(libc::EBUSY)
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => return Err(io_err(&self.path)(e)),
            }
        }
    }
}
