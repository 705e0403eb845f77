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
//!
//! On a host (process-isolation mode) the hierarchy is whatever the host mounted, often
//! a hybrid layout whose cgroup2 part holds none of the controllers we need.
//! [`TreeCgroup`] picks cgroup2 when it delegates every needed controller and otherwise
//! one cgroup v1 group per controller, under a shared `airlock` parent in each hierarchy.

use crate::pidfd::PidFd;
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

impl CgroupLimits {
    /// The agent tree's limits from a manifest's resources: pids, memory (MiB) and a
    /// CPU quota of `vcpus` full CPUs. A memory size that does not fit in bytes is an
    /// error, not "unlimited".
    pub fn for_resources(r: &airlock_proto::manifest::Resources) -> Result<Self, CgroupError> {
        let memory = r
            .memory_mib
            .checked_mul(1 << 20)
            .ok_or(CgroupError::Limit {
                field: "resources.memory_mib",
                problem: format!("{} MiB does not fit in 64 bits of bytes", r.memory_mib),
            })?;
        Ok(CgroupLimits {
            pids_max: Some(u64::from(r.pids)),
            memory_max_bytes: Some(memory),
            cpu_max: Some((u64::from(r.vcpus) * 100_000, 100_000)),
        })
    }
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
    /// Neither cgroup2 nor a cgroup v1 hierarchy can enforce a needed controller.
    #[error("cgroup: controller `{controller}` has no cgroup v1 hierarchy at {v1_hierarchy}, and cgroup2 at {v2_root} cannot be used ({v2_status})")]
    ControllerUnavailable {
        /// The controller.
        controller: &'static str,
        /// Where its v1 hierarchy was looked for.
        v1_hierarchy: PathBuf,
        /// The cgroup2 directory tried first.
        v2_root: PathBuf,
        /// Why cgroup2 was not used.
        v2_status: String,
    },
    /// A manifest limit cannot be expressed (never silently unlimited).
    #[error("cgroup: manifest field `{field}`: {problem}")]
    Limit {
        /// The field.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// A group name that could escape its parent or collide with a cgroup file.
    #[error("cgroup: group name {0:?} is invalid (want 1 to 64 of A-Z a-z 0-9 _ -)")]
    InvalidName(String),
    /// Processes survived SIGKILL for the whole grace period.
    #[error("cgroup: {path}: {remaining} process(es) still in the group after SIGKILL for 5 s")]
    KillTimeout {
        /// The group.
        path: PathBuf,
        /// How many were left.
        remaining: usize,
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
const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;

fn fs_magic(path: &Path) -> Option<i64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statfs fills a zeroed struct through a valid pointer; the path is a valid
    // NUL-terminated string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    (rc == 0).then_some(st.f_type as i64)
}

fn is_cgroup2(path: &Path) -> bool {
    fs_magic(path) == Some(CGROUP2_SUPER_MAGIC)
}

/// The controllers `limits` needs, in the order groups are made and joined.
fn needed_controllers(limits: &CgroupLimits) -> Vec<&'static str> {
    [
        ("pids", limits.pids_max.is_some()),
        ("memory", limits.memory_max_bytes.is_some()),
        ("cpu", limits.cpu_max.is_some()),
    ]
    .into_iter()
    .filter_map(|(c, want)| want.then_some(c))
    .collect()
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
        let needed = needed_controllers(limits);
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
        join_fd(&self.procs)
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

/// Writes `0` to a `cgroup.procs` descriptor: moves the caller. One syscall, no allocation.
fn join_fd(procs: &File) -> io::Result<()> {
    // SAFETY: writes one byte from a static buffer to a descriptor the caller owns.
    let n = unsafe { libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) };
    if n == 1 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Pre-opened `cgroup.procs` of the v2 leaf or of each v1 group.
#[derive(Debug)]
pub struct CgroupMembership {
    procs: Vec<File>,
}

impl CgroupMembership {
    /// Moves the calling process into every group (between fork and exec: one write per
    /// descriptor, no allocation). Stops at the first failure, which the caller must
    /// treat as fatal for the child.
    pub fn join_on_current_process(&self) -> io::Result<()> {
        for procs in &self.procs {
            join_fd(procs)?;
        }
        Ok(())
    }
}

/// The shared parent made in each hierarchy; every agent's group is a child of it.
const PARENT: &str = "airlock";

/// How often a create retries when a concurrent failed create removed the empty parent
/// between our two mkdirs.
const PARENT_RACE_RETRIES: usize = 10;

const KILL_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

fn validate_name(name: &str) -> Result<(), CgroupError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(CgroupError::InvalidName(name.to_string()))
    }
}

/// Makes `dir` if missing; true when this call made it.
fn ensure_dir(dir: &Path) -> Result<bool, CgroupError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io_err(dir)(e)),
    }
}

/// Why cgroup2 at `root` cannot hold a group with `needed`, if it cannot. A child sees
/// only what `root` delegates in `cgroup.subtree_control`, and we never change a group
/// we did not create, so that file (not `cgroup.controllers`) decides.
fn v2_refusal(root: &Path, needed: &[&'static str]) -> Option<String> {
    if !is_cgroup2(root) {
        return Some("not a cgroup2 hierarchy".to_string());
    }
    let path = root.join("cgroup.subtree_control");
    let delegated = match std::fs::read_to_string(&path) {
        Ok(d) => d,
        Err(e) => return Some(format!("{}: {e}", path.display())),
    };
    let missing: Vec<&str> = needed
        .iter()
        .copied()
        .filter(|c| !delegated.split_whitespace().any(|d| d == *c))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "it delegates `{}`, not `{}`",
            delegated.trim(),
            missing.join(" ")
        )
    })
}

/// One cgroup v1 group: a directory in one hierarchy, bound to one or more controllers
/// (several when the host co-mounts them, e.g. `cpu,cpuacct`).
#[derive(Debug)]
struct V1Group {
    controllers: Vec<&'static str>,
    hierarchy: PathBuf,
    path: PathBuf,
    procs: File,
}

/// The agent's groups on a cgroup v1 host, one per hierarchy of a needed controller.
#[derive(Debug)]
pub struct CgroupV1Groups {
    groups: Vec<V1Group>,
}

/// A directory made by a create in progress, removed again if the create fails.
struct Made {
    group: PathBuf,
    parent: Option<PathBuf>,
}

fn undo(made: &[Made]) {
    for m in made.iter().rev() {
        let _ = std::fs::remove_dir(&m.group);
        if let Some(p) = &m.parent {
            // Fails harmlessly (EBUSY/ENOTEMPTY) when a concurrent create uses it.
            let _ = std::fs::remove_dir(p);
        }
    }
}

/// Makes `hierarchy/airlock/name`, recording what it made in `made`.
fn make_v1_group(
    hierarchy: &Path,
    name: &str,
    made: &mut Vec<Made>,
) -> Result<PathBuf, CgroupError> {
    let parent = hierarchy.join(PARENT);
    let path = parent.join(name);
    let mut retries = 0;
    loop {
        let made_parent = ensure_dir(&parent)?;
        match std::fs::create_dir(&path) {
            Ok(()) => {
                made.push(Made {
                    group: path.clone(),
                    parent: made_parent.then(|| parent.clone()),
                });
                return Ok(path);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && retries < PARENT_RACE_RETRIES => {
                retries += 1;
            }
            Err(e) => {
                if made_parent {
                    let _ = std::fs::remove_dir(&parent);
                }
                return Err(io_err(&path)(e));
            }
        }
    }
}

/// The file proving `controller` is bound to a v1 group's hierarchy (the hierarchy root
/// of `pids` has no such file, so the check is made on the new group).
fn v1_limit_file(controller: &str) -> &'static str {
    match controller {
        "pids" => "pids.max",
        "memory" => "memory.limit_in_bytes",
        _ => "cpu.cfs_quota_us",
    }
}

fn apply_v1_limits(
    path: &Path,
    controller: &'static str,
    limits: &CgroupLimits,
) -> Result<(), CgroupError> {
    match controller {
        "pids" => {
            if let Some(p) = limits.pids_max {
                write_file(&path.join("pids.max"), &p.to_string())?;
            }
        }
        "memory" => {
            if let Some(m) = limits.memory_max_bytes {
                // memsw (memory + swap) must be >= the memory limit, so it goes second;
                // equal means swap cannot extend the budget.
                write_file(&path.join("memory.limit_in_bytes"), &m.to_string())?;
                // v1 charges TCP socket buffers only once this is set (v2 always does):
                // without it, connections that are never read hold host-wide TCP memory
                // far past the session's limit. Set while the group has no task.
                let tcp = path.join("memory.kmem.tcp.limit_in_bytes");
                if tcp.exists() {
                    write_file(&tcp, &m.to_string())?;
                }
                let memsw = path.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    write_file(&memsw, &m.to_string())?;
                } else {
                    // Without swap accounting, only reclaim policy keeps the tree out of
                    // swap; best effort (the kernel logs a v1 deprecation note for it).
                    let _ = std::fs::write(path.join("memory.swappiness"), "0");
                }
                // v1 copies oom_kill_disable from the parent; with it set a hog would
                // hang at the limit instead of being killed.
                let oom = path.join("memory.oom_control");
                let state = std::fs::read_to_string(&oom).map_err(io_err(&oom))?;
                if state.lines().any(|l| l.trim() == "oom_kill_disable 1") {
                    write_file(&oom, "0")?;
                }
            }
        }
        _ => {
            if let Some((quota, period)) = limits.cpu_max {
                // Period first: the quota is validated against the current period.
                write_file(&path.join("cpu.cfs_period_us"), &period.to_string())?;
                write_file(&path.join("cpu.cfs_quota_us"), &quota.to_string())?;
            }
        }
    }
    Ok(())
}

impl CgroupV1Groups {
    fn create(
        v1_root: &Path,
        v2_root: &Path,
        v2_status: String,
        name: &str,
        needed: &[&'static str],
        limits: &CgroupLimits,
    ) -> Result<CgroupV1Groups, CgroupError> {
        let mut made = Vec::new();
        let result = Self::create_recording(
            v1_root, v2_root, &v2_status, name, needed, limits, &mut made,
        );
        if result.is_err() {
            undo(&made);
        }
        result
    }

    fn create_recording(
        v1_root: &Path,
        v2_root: &Path,
        v2_status: &str,
        name: &str,
        needed: &[&'static str],
        limits: &CgroupLimits,
        made: &mut Vec<Made>,
    ) -> Result<CgroupV1Groups, CgroupError> {
        let unavailable =
            |controller: &'static str, v1_hierarchy: PathBuf| CgroupError::ControllerUnavailable {
                controller,
                v1_hierarchy,
                v2_root: v2_root.to_path_buf(),
                v2_status: v2_status.to_string(),
            };
        let mut groups: Vec<V1Group> = Vec::new();
        for &controller in needed {
            let hierarchy = v1_root.join(controller);
            if fs_magic(&hierarchy) != Some(CGROUP_SUPER_MAGIC) {
                return Err(unavailable(controller, hierarchy));
            }
            // Co-mounted controllers share one hierarchy (and one group).
            let canonical = std::fs::canonicalize(&hierarchy).map_err(io_err(&hierarchy))?;
            let path = match groups.iter_mut().find(|g| g.hierarchy == canonical) {
                Some(g) => {
                    g.controllers.push(controller);
                    g.path.clone()
                }
                None => {
                    let path = make_v1_group(&hierarchy, name, made)?;
                    let procs_path = path.join("cgroup.procs");
                    let procs = OpenOptions::new()
                        .write(true)
                        .open(&procs_path)
                        .map_err(io_err(&procs_path))?;
                    groups.push(V1Group {
                        controllers: vec![controller],
                        hierarchy: canonical,
                        path: path.clone(),
                        procs,
                    });
                    path
                }
            };
            if !path.join(v1_limit_file(controller)).exists() {
                return Err(unavailable(controller, hierarchy));
            }
            apply_v1_limits(&path, controller, limits)?;
        }
        Ok(CgroupV1Groups { groups })
    }

    /// Each group's controllers and directory.
    pub fn groups(&self) -> impl Iterator<Item = (&[&'static str], &Path)> {
        self.groups
            .iter()
            .map(|g| (g.controllers.as_slice(), g.path.as_path()))
    }

    /// SIGKILLs every process in every group until all are empty, then removes the
    /// groups (the shared `airlock` parents stay: concurrent agents use them).
    fn destroy(self) -> Result<(), CgroupError> {
        let deadline = std::time::Instant::now() + KILL_GRACE;
        let killed = self.kill_all(deadline);
        let mut first_err = killed.err();
        for g in &self.groups {
            if let Err(e) = remove_group_dir(&g.path, deadline) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn kill_all(&self, deadline: std::time::Instant) -> Result<(), CgroupError> {
        loop {
            let mut busy = false;
            for g in &self.groups {
                let procs_path = g.path.join("cgroup.procs");
                let pids = read_procs(&procs_path)?;
                if pids.is_empty() {
                    continue;
                }
                busy = true;
                if std::time::Instant::now() >= deadline {
                    return Err(CgroupError::KillTimeout {
                        path: g.path.clone(),
                        remaining: pids.len(),
                    });
                }
                // v1 has no cgroup.kill: read, then signal. A pidfd pins each pid, and a
                // second read confirms the pinned process is (still) a member, so a pid
                // reused by an outside process after the first read is never signalled.
                let pinned: Vec<(i32, Option<PidFd>)> = pids
                    .into_iter()
                    .filter_map(|pid| match PidFd::open(pid) {
                        Ok(fd) => Some((pid, Some(fd))),
                        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => None,
                        // No pidfd (old kernel, fd limit): plain kill after the re-read.
                        Err(_) => Some((pid, None)),
                    })
                    .collect();
                let members = read_procs(&procs_path)?;
                for (pid, fd) in pinned {
                    if !members.contains(&pid) {
                        continue;
                    }
                    match fd {
                        // ESRCH (already exited) is the outcome we want anyway.
                        Some(fd) => {
                            let _ = fd.send_signal(libc::SIGKILL);
                        }
                        // SAFETY: kill takes a pid and a signal number; no memory involved.
                        None => unsafe {
                            libc::kill(pid, libc::SIGKILL);
                        },
                    }
                }
            }
            if !busy {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
}

fn read_procs(path: &Path) -> Result<Vec<i32>, CgroupError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    // 0 is a member in another pid namespace: not ours to see, nor to signal.
    Ok(text
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|&p: &i32| p > 0)
        .collect())
}

/// Removes an emptied group, waiting out the short window before the last exit lands.
fn remove_group_dir(path: &Path, deadline: std::time::Instant) -> Result<(), CgroupError> {
    loop {
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e)
                if e.raw_os_error() == Some(libc::EBUSY)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => return Err(io_err(path)(e)),
        }
    }
}

/// The agent's tree cgroup on a host: v2 when the unified hierarchy delegates every
/// needed controller, else one v1 group per needed controller.
#[derive(Debug)]
pub enum TreeCgroup {
    /// A cgroup2 leaf `<v2 root>/airlock/<name>`.
    V2(CgroupLeaf),
    /// `<v1 root>/<controller>/airlock/<name>` for each needed controller.
    V1(CgroupV1Groups),
}

impl TreeCgroup {
    /// Creates the group(s) on this host: cgroup2 at `/sys/fs/cgroup` (unified layout)
    /// or `/sys/fs/cgroup/unified` (hybrid layout), else the v1 hierarchies in
    /// `/sys/fs/cgroup`. See [`TreeCgroup::create_under`].
    pub fn create_on_host(name: &str, limits: &CgroupLimits) -> Result<TreeCgroup, CgroupError> {
        let root = Path::new("/sys/fs/cgroup");
        let v2_root = if is_cgroup2(root) {
            root.to_path_buf()
        } else {
            root.join("unified")
        };
        Self::create_under(&v2_root, root, name, limits)
    }

    /// Creates `<hierarchy>/airlock/<name>` with `limits`: under `v2_root` when it is
    /// cgroup2 and delegates every needed controller, else under `v1_root/<controller>`
    /// for each. A controller neither offers is an error naming it, and a failed create
    /// removes every directory it made.
    ///
    /// With no limit set there is nothing to bound: cgroup2 is used if present (so the
    /// tree can still be killed), else the result holds no group.
    pub fn create_under(
        v2_root: &Path,
        v1_root: &Path,
        name: &str,
        limits: &CgroupLimits,
    ) -> Result<TreeCgroup, CgroupError> {
        validate_name(name)?;
        let needed = needed_controllers(limits);
        match v2_refusal(v2_root, &needed) {
            None => Self::create_v2(v2_root, name, limits).map(TreeCgroup::V2),
            Some(v2_status) => {
                CgroupV1Groups::create(v1_root, v2_root, v2_status, name, &needed, limits)
                    .map(TreeCgroup::V1)
            }
        }
    }

    fn create_v2(
        v2_root: &Path,
        name: &str,
        limits: &CgroupLimits,
    ) -> Result<CgroupLeaf, CgroupError> {
        let parent = v2_root.join(PARENT);
        let mut retries = 0;
        loop {
            let made_parent = ensure_dir(&parent)?;
            match CgroupLeaf::create(&parent, name, limits) {
                Ok(leaf) => return Ok(leaf),
                Err(CgroupError::Io { source, .. })
                    if source.kind() == io::ErrorKind::NotFound
                        && retries < PARENT_RACE_RETRIES
                        && !parent.exists() =>
                {
                    retries += 1;
                }
                Err(e) => {
                    if made_parent {
                        let _ = std::fs::remove_dir(&parent);
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Duplicated `cgroup.procs` descriptors (close-on-exec) for joining the group(s).
    pub fn membership(&self) -> io::Result<CgroupMembership> {
        let procs = match self {
            TreeCgroup::V2(leaf) => vec![leaf.procs.try_clone()?],
            TreeCgroup::V1(v1) => v1
                .groups
                .iter()
                .map(|g| g.procs.try_clone())
                .collect::<io::Result<_>>()?,
        };
        Ok(CgroupMembership { procs })
    }

    /// The group directories.
    pub fn paths(&self) -> Vec<&Path> {
        match self {
            TreeCgroup::V2(leaf) => vec![leaf.path()],
            TreeCgroup::V1(v1) => v1.groups().map(|(_, p)| p).collect(),
        }
    }

    /// One line for reports, e.g. `cgroup v1: pids=/sys/fs/cgroup/pids/airlock/x, ...`.
    pub fn describe(&self) -> String {
        match self {
            TreeCgroup::V2(leaf) => format!("cgroup v2: {}", leaf.path().display()),
            TreeCgroup::V1(v1) if v1.groups.is_empty() => {
                "cgroup v1: no group (no limits)".to_string()
            }
            TreeCgroup::V1(v1) => {
                let parts: Vec<String> = v1
                    .groups()
                    .flat_map(|(cs, p)| cs.iter().map(move |c| format!("{c}={}", p.display())))
                    .collect();
                format!("cgroup v1: {}", parts.join(", "))
            }
        }
    }

    /// Kills every process still in the group(s) and removes the directories (v2:
    /// `cgroup.kill`; v1: SIGKILL each member until none is left, for up to 5 s).
    pub fn destroy(self) -> Result<(), CgroupError> {
        match self {
            TreeCgroup::V2(leaf) => leaf.destroy(),
            TreeCgroup::V1(v1) => v1.destroy(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_resources_become_tree_limits_and_overflow_is_refused() {
        let mut r = airlock_proto::manifest::Resources {
            vcpus: 2,
            memory_mib: 256,
            disk_mib: 64,
            pids: 32,
            wall_time_secs: 60,
            net_connections: 32,
            net_mib: 1024,
        };
        let l = CgroupLimits::for_resources(&r).unwrap();
        assert_eq!(l.pids_max, Some(32));
        assert_eq!(l.memory_max_bytes, Some(256 << 20));
        assert_eq!(l.cpu_max, Some((200_000, 100_000)));
        r.memory_mib = u64::MAX;
        let err = CgroupLimits::for_resources(&r).unwrap_err().to_string();
        assert!(err.contains("resources.memory_mib"), "{err}");
    }
}
