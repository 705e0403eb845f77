//! Landlock: the agent's filesystem, TCP and IPC-scope boundary.
//!
//! Everything Landlock can restrict at the pinned ABI is *handled*; only what the
//! policy grants is allowed. Writable paths never get `EXECUTE`, and no path may be both
//! writable and executable (rights add up along a hierarchy, so an executable directory
//! below a writable one would let the agent write a program and run it).
//!
//! The ruleset is built in the enforcer ([`LandlockPolicy::prepare`], which opens every
//! path and fails if one is missing) and applied in the agent's process just before exec
//! ([`PreparedLandlock::restrict_current_thread`], a few syscalls and no allocation, so
//! it is safe between `fork` and `exec`). There is no best effort: a kernel below
//! [`MIN_ABI`] or a ruleset the kernel does not fully enforce is an error.

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, NetPort, PathBeneath, PathFd,
    Ruleset, RulesetAttr, RulesetCreated, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};
use std::path::{Path, PathBuf};

/// Oldest Landlock ABI the enforcer accepts (the guest kernel we ship, 6.12, has 6):
/// TCP rules (4), device ioctl (5), abstract-socket and signal scoping (6).
pub const MIN_ABI: u32 = 6;
const PINNED: ABI = ABI::V6;

/// What the agent may touch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LandlockPolicy {
    /// Read files and list directories beneath these.
    pub read_only: Vec<PathBuf>,
    /// Also create, write, remove, rename and truncate beneath these (never execute).
    pub read_write: Vec<PathBuf>,
    /// As `read_write`, but no FIFO or socket may be made beneath these: the granted
    /// workspaces, where a special file would reach (or be offered to) the host.
    pub read_write_no_specials: Vec<PathBuf>,
    /// Execute (and read) beneath these: the shim directory, the loader, the entrypoint.
    pub executable: Vec<PathBuf>,
    /// Device files to read, write and ioctl (e.g. `/dev/null`, the agent's tty).
    pub devices: Vec<PathBuf>,
    /// TCP ports the agent may connect to (all binds are denied).
    pub connect_tcp: Vec<u16>,
}

/// Why Landlock could not be applied. The agent must not start.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    /// The kernel's ABI is below the pinned minimum.
    #[error("landlock: kernel ABI {found} is below the required {MIN_ABI} (the enforcer does not run with weaker confinement)")]
    AbiTooOld {
        /// ABI the kernel reports (0 = Landlock disabled or absent).
        found: u32,
    },
    /// A granted path cannot be opened.
    #[error("landlock: granted path {path}: {source}")]
    Path {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A path is both writable and executable.
    #[error("landlock: {writable} is writable and {executable} is executable; a path may not be both (write a program, run it)")]
    WritableExecutable {
        /// Writable path.
        writable: PathBuf,
        /// Executable path.
        executable: PathBuf,
    },
    /// Building or applying the ruleset failed.
    #[error("landlock: {0}")]
    Ruleset(String),
    /// The kernel accepted the ruleset only partly.
    #[error("landlock: {0}; refusing to run the agent")]
    NotEnforced(&'static str),
}

/// The Landlock ABI the running kernel supports (0 if none).
pub fn kernel_abi() -> u32 {
    // SAFETY: landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION) only
    // returns the ABI version (or -1); it reads no memory through the null pointer.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            1u32, // LANDLOCK_CREATE_RULESET_VERSION
        )
    };
    u32::try_from(v).unwrap_or(0)
}

fn read_only_access() -> BitFlags<AccessFs> {
    AccessFs::ReadFile | AccessFs::ReadDir
}

fn read_write_access() -> BitFlags<AccessFs> {
    read_only_access()
        | AccessFs::WriteFile
        | AccessFs::RemoveDir
        | AccessFs::RemoveFile
        | AccessFs::MakeDir
        | AccessFs::MakeReg
        | AccessFs::MakeSym
        | AccessFs::MakeFifo
        | AccessFs::MakeSock
        | AccessFs::Refer
        | AccessFs::Truncate
}

fn executable_access() -> BitFlags<AccessFs> {
    read_only_access() | AccessFs::Execute
}

fn device_access() -> BitFlags<AccessFs> {
    AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev
}

fn ruleset_err(e: impl std::fmt::Display) -> LandlockError {
    LandlockError::Ruleset(e.to_string())
}

/// A ruleset ready to be applied.
#[derive(Debug)]
pub struct PreparedLandlock {
    ruleset: RulesetCreated,
    /// ABI of the running kernel.
    pub kernel_abi: u32,
}

impl LandlockPolicy {
    /// Checks the policy, opens every path and builds the ruleset.
    pub fn prepare(&self) -> Result<PreparedLandlock, LandlockError> {
        let found = kernel_abi();
        if found < MIN_ABI {
            return Err(LandlockError::AbiTooOld { found });
        }
        for w in self.read_write.iter().chain(&self.read_write_no_specials) {
            for x in &self.executable {
                if x.starts_with(w) || w.starts_with(x) {
                    return Err(LandlockError::WritableExecutable {
                        writable: w.clone(),
                        executable: x.clone(),
                    });
                }
            }
        }
        let mut ruleset = Ruleset::default()
            .set_compatibility(CompatLevel::HardRequirement)
            .handle_access(AccessFs::from_all(PINNED))
            .map_err(ruleset_err)?
            .handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)
            .map_err(ruleset_err)?
            .scope(Scope::AbstractUnixSocket | Scope::Signal)
            .map_err(ruleset_err)?
            .create()
            .map_err(ruleset_err)?;
        let no_specials = read_write_access() & !(AccessFs::MakeFifo | AccessFs::MakeSock);
        let groups: [(&[PathBuf], BitFlags<AccessFs>); 5] = [
            (&self.read_only, read_only_access()),
            (&self.read_write, read_write_access()),
            (&self.read_write_no_specials, no_specials),
            (&self.executable, executable_access()),
            (&self.devices, device_access()),
        ];
        for (paths, access) in groups {
            for path in paths {
                let fd = PathFd::new(path).map_err(|e| LandlockError::Path {
                    path: path.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?;
                // A regular file only takes file rights; directories take all.
                let access = if path_is_dir(path)? {
                    access
                } else {
                    access & AccessFs::from_file(PINNED)
                };
                ruleset = ruleset
                    .add_rule(PathBeneath::new(fd, access))
                    .map_err(ruleset_err)?;
            }
        }
        for port in &self.connect_tcp {
            ruleset = ruleset
                .add_rule(NetPort::new(*port, AccessNet::ConnectTcp))
                .map_err(ruleset_err)?;
        }
        Ok(PreparedLandlock {
            ruleset,
            kernel_abi: found,
        })
    }
}

fn path_is_dir(path: &Path) -> Result<bool, LandlockError> {
    std::fs::metadata(path)
        .map(|m| m.is_dir())
        .map_err(|source| LandlockError::Path {
            path: path.to_path_buf(),
            source,
        })
}

impl PreparedLandlock {
    /// Sets `no_new_privs` and restricts the calling thread (and what it executes).
    /// Fails unless the kernel enforces the whole ruleset.
    pub fn restrict_current_thread(self) -> Result<(), LandlockError> {
        // Between fork and exec: the success path and these checks allocate nothing.
        let status = self.ruleset.restrict_self().map_err(ruleset_err)?;
        match status.ruleset {
            RulesetStatus::FullyEnforced => {}
            RulesetStatus::PartiallyEnforced => {
                return Err(LandlockError::NotEnforced(
                    "ruleset only partially enforced",
                ))
            }
            _ => return Err(LandlockError::NotEnforced("ruleset not enforced")),
        }
        if !status.no_new_privs {
            return Err(LandlockError::NotEnforced("no_new_privs not set"));
        }
        Ok(())
    }
}
