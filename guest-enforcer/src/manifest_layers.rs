//! From a verified manifest to what gets applied: the agent's [`Sandbox`] and the
//! broker's [`GrantedTool`]s.
//!
//! Everything the manifest names is resolved and opened here, before anything of the
//! agent runs; a tool that does not exist, a mount point that is missing or limits the
//! kernel cannot apply are refused with the manifest field that named them. Nothing is
//! half-applied: this only computes and opens; applying happens after it succeeded.

use crate::broker::{BrokerError, GrantedTool, PreparedToolSandbox, ToolSandbox};
use crate::cgroup::CgroupMembership;
use crate::identity::AgentIdentity;
use crate::landlock::LandlockPolicy;
use crate::limits::Rlimits;
use crate::sandbox::Sandbox;
use airlock_proto::manifest::{Access, Manifest};
use airlock_proto::tool_invocation::program_name;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where things are in the guest image (fixed per image, not per manifest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestLayout {
    /// Directories searched, in order, for a granted tool's real binary (once, at apply
    /// time; never at exec time). Neither the agent nor any tool may execute them as
    /// a whole: a tool executes its own binary and what its profile names.
    pub tool_dirs: Vec<PathBuf>,
    /// Read-only directory holding the shims (the agent's PATH).
    pub shim_dir: PathBuf,
    /// The dynamic loader(s): the kernel needs EXECUTE on them to run any dynamic binary.
    pub loaders: Vec<PathBuf>,
    /// System paths the agent may read (libraries, certificates; never the tool dirs).
    pub system_read_only: Vec<PathBuf>,
    /// Writable scratch space (mounted noexec).
    pub scratch: Vec<PathBuf>,
    /// Device files the agent may use.
    pub devices: Vec<PathBuf>,
    /// Who the agent runs as.
    pub agent: AgentIdentity,
    /// Open-file limit per agent process.
    pub nofile: u64,
    /// Where the host mounted an entrypoint that is not part of the image (process
    /// mode): an absolute `argv[0]` missing from the image is looked up here by file
    /// name. `None` in a VM image.
    pub external_entrypoints: Option<PathBuf>,
}

/// The given paths that exist in this image (layouts list what an image may have).
pub fn existing_paths(paths: &[&str]) -> Vec<PathBuf> {
    paths
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .collect()
}

/// Device nodes an agent may use, where the image has them.
pub const AGENT_DEVICES: [&str; 6] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
];

/// The dynamic loaders the image has, resolved: the kernel checks EXECUTE on the
/// loader's final path.
pub fn present_loaders() -> Vec<PathBuf> {
    ["/lib64/ld-linux-x86-64.so.2", "/lib/ld-musl-x86_64.so.1"]
        .iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect()
}

/// A manifest that cannot be applied here, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum ManifestApplyError {
    /// A field names something that does not exist or cannot be used.
    #[error("manifest field `{field}`: {problem}")]
    Field {
        /// Dotted field path.
        field: String,
        /// What is wrong.
        problem: String,
    },
    /// A layer cannot be prepared on this kernel or image (not a manifest field).
    #[error("cannot apply the agent's layers: {0}")]
    Layer(#[from] crate::sandbox::SandboxError),
}

fn field(field: impl Into<String>, problem: impl Into<String>) -> ManifestApplyError {
    ManifestApplyError::Field {
        field: field.into(),
        problem: problem.into(),
    }
}

/// What the enforcer will apply for this manifest.
#[derive(Debug)]
pub struct AgentPlan {
    /// The agent's layers.
    pub sandbox: Sandbox,
    /// The layers of each tool the broker runs (see [`ToolSandboxes`]).
    pub tool_sandboxes: ToolSandboxes,
    /// The broker's tools, binaries already open.
    pub tools: Vec<GrantedTool>,
    /// The entrypoint binary, resolved.
    pub entrypoint: PathBuf,
}

fn find_in(dirs: &[PathBuf], program: &str) -> Option<PathBuf> {
    dirs.iter().map(|d| d.join(program)).find(|p| p.is_file())
}

fn existing_dir(path: &Path, name: String) -> Result<PathBuf, ManifestApplyError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(path.to_path_buf()),
        Ok(_) => Err(field(
            name,
            format!("{} is not a directory", path.display()),
        )),
        Err(e) => Err(field(name, format!("{}: {e}", path.display()))),
    }
}

/// The binary `argv0` names in this image. A program granted as a tool always runs
/// through its shim, however `argv0` spells it (`git` or `/usr/bin/git`): every call of
/// it is then decided by its rules. Anything else must be an absolute path to a binary
/// in the image (or, in process mode, the entrypoint mounted from the host); the agent
/// may execute that binary under any name, so a multi-call binary as the entrypoint
/// (busybox) reaches all of its applets, whatever the broker grants.
pub fn resolve_entrypoint(
    argv0: &str,
    manifest: &Manifest,
    layout: &GuestLayout,
) -> Result<PathBuf, ManifestApplyError> {
    let name = program_name(argv0);
    let shim = layout.shim_dir.join(name);
    if manifest.tools.iter().any(|t| t.program == name) && shim.exists() {
        return Ok(shim);
    }
    if !argv0.starts_with('/') {
        return Err(field(
            "command.argv[0]",
            format!("`{argv0}` is neither an absolute path nor a granted tool"),
        ));
    }
    let p = PathBuf::from(argv0);
    let external = layout
        .external_entrypoints
        .as_ref()
        .zip(p.file_name())
        .map(|(dir, name)| dir.join(name))
        .filter(|e| e.is_file());
    let binary = match external {
        _ if p.is_file() => p,
        Some(e) => e,
        None => return Err(field("command.argv[0]", format!("{argv0} does not exist"))),
    };
    loader_present(&binary, "command.argv[0]")?;
    Ok(binary)
}

/// Refuses a dynamically linked binary whose loader this image lacks, naming both:
/// the image contract's "a libc for dynamically linked tools", checked again at boot
/// for what the manifest grants (otherwise the first call would fail with a misleading
/// "No such file or directory" for a file that exists).
fn loader_present(binary: &Path, field_name: &str) -> Result<(), ManifestApplyError> {
    match airlock_proto::program_interpreter::program_interpreter(binary) {
        Some(loader) if !Path::new(&loader).exists() => Err(field(
            field_name,
            format!(
                "{} is dynamically linked against {loader}, which this image does not have",
                binary.display()
            ),
        )),
        _ => Ok(()),
    }
}

/// The library trees an interpreter entrypoint needs to start, found from the binary
/// the entrypoint resolves to: CPython 3.N reads `/usr/lib/python3.N` (its standard
/// library; `encodings` is imported before any user code) and the system and local
/// `dist-packages`; Node reads its bundled modules. Only trees that exist; nothing for
/// any other entrypoint. Reading is all they get: executing stays limited to the
/// shims, the loader and the entrypoint itself.
pub fn runtime_library_trees(entrypoint: &Path) -> Vec<PathBuf> {
    let real = std::fs::canonicalize(entrypoint).unwrap_or_else(|_| entrypoint.to_path_buf());
    let Some(name) = real.file_name().and_then(|n| n.to_str()) else {
        return vec![];
    };
    let python_minor = name
        .strip_prefix("python3.")
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()));
    let trees: Vec<String> = match (python_minor, name) {
        (Some(minor), _) => vec![
            format!("/usr/lib/python3.{minor}"),
            "/usr/lib/python3/dist-packages".into(),
            format!("/usr/local/lib/python3.{minor}/dist-packages"),
        ],
        (None, "node" | "nodejs") => vec![
            "/usr/lib/node_modules".into(),
            "/usr/share/nodejs".into(),
            "/usr/local/lib/node_modules".into(),
        ],
        _ => vec![],
    };
    let trees: Vec<&str> = trees.iter().map(String::as_str).collect();
    existing_paths(&trees)
}

/// Paths the sandbox provides itself; a mount may neither cover nor sit inside one.
pub const RESERVED_GUEST_PATHS: [&str; 14] = [
    "/", "/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/dev", "/proc",
    "/run", "/sys", "/tmp",
];

/// The reserved path a mount at `guest` would cover or sit inside, if any.
pub fn reserved_guest_path(guest: &Path) -> Option<&'static str> {
    RESERVED_GUEST_PATHS
        .iter()
        .find(|r| (**r != "/" && guest.starts_with(r)) || Path::new(r).starts_with(guest))
        .copied()
}

/// Resolves and opens everything the manifest names.
pub fn plan_agent(
    manifest: &Manifest,
    layout: &GuestLayout,
) -> Result<AgentPlan, ManifestApplyError> {
    let mut read_only = layout.system_read_only.clone();
    let read_write = layout.scratch.clone();
    let mut workspaces = Vec::new();
    for (i, m) in manifest.mounts.iter().enumerate() {
        let dir = existing_dir(Path::new(&m.guest_path), format!("mounts[{i}].guest_path"))?;
        match m.mode {
            Access::Ro => read_only.push(dir),
            Access::Rw | Access::RwLive => workspaces.push(dir),
        }
    }
    let cwd = Path::new(&manifest.command.cwd);
    existing_dir(cwd, "command.cwd".into())?;

    let mut tools = Vec::with_capacity(manifest.tools.len());
    for (i, grant) in manifest.tools.iter().enumerate() {
        let name = format!("tools[{i}].program");
        let path = find_in(&layout.tool_dirs, &grant.program).ok_or_else(|| {
            field(
                &name,
                format!(
                    "no `{}` in {}",
                    grant.program,
                    layout
                        .tool_dirs
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
        loader_present(&path, &name)?;
        if !layout.shim_dir.join(&grant.program).exists() {
            return Err(field(
                &name,
                format!(
                    "no shim for `{}` in {}",
                    grant.program,
                    layout.shim_dir.display()
                ),
            ));
        }
        tools.push(
            GrantedTool::open(grant.clone(), &path).map_err(|e| match e {
                BrokerError::Binary { problem, path, .. } => {
                    field(&name, format!("{}: {problem}", path.display()))
                }
                other => field(&name, other.to_string()),
            })?,
        );
    }

    let entrypoint = resolve_entrypoint(&manifest.command.argv[0], manifest, layout)?;
    // An interpreter entrypoint reads its own standard library; only that tree, never
    // the tool dirs or the rest of /usr.
    read_only.extend(runtime_library_trees(&entrypoint));
    let mut executable = vec![layout.shim_dir.clone()];
    executable.extend(layout.loaders.iter().cloned());
    if !entrypoint.starts_with(&layout.shim_dir) {
        executable.push(entrypoint.clone());
    }

    let r = &manifest.resources;
    let fsize_bytes = r.disk_mib.checked_mul(1 << 20).ok_or_else(|| {
        field(
            "resources.disk_mib",
            format!("{} MiB does not fit in 64 bits of bytes", r.disk_mib),
        )
    })?;
    let sandbox = Sandbox {
        cgroup: None,
        rlimits: Some(Rlimits {
            nproc: Some(u64::from(r.pids)),
            nofile: Some(layout.nofile),
            // disk_mib = 0 means no file may grow at all: fail closed, not unlimited.
            fsize_bytes: Some(fsize_bytes),
            address_space_bytes: None,
        }),
        identity: Some(layout.agent.clone()),
        landlock: Some(LandlockPolicy {
            read_only,
            read_write,
            read_write_no_specials: workspaces,
            executable,
            devices: layout.devices.clone(),
            connect_tcp: crate::egress_funnel::agent_connect_ports(manifest),
        }),
        seccomp: true,
    };
    let mut tool_sandboxes = ToolSandboxes::default();
    for tool in &tools {
        let ts = tool_sandbox(&sandbox, layout, tool);
        ts.prepare()?;
        tool_sandboxes
            .by_program
            .insert(tool.grant.program.clone(), ts);
    }
    // Check now what the kernel will refuse later (missing paths, rw+exec overlap, ABI).
    sandbox.prepare()?;
    Ok(AgentPlan {
        sandbox,
        tool_sandboxes,
        tools,
        entrypoint,
    })
}

/// A tool's layers: the agent's (same identity, limits, seccomp, reads and writes),
/// with execute narrowed to the shims (a program the tool starts by name is a brokered
/// call, decided by the rules), the loader, the tool's own binary and what its profile
/// names. An interpreter granted as a tool also reads its library tree.
fn tool_sandbox(agent: &Sandbox, layout: &GuestLayout, tool: &GrantedTool) -> Sandbox {
    let mut ts = agent.clone();
    if let Some(ll) = ts.landlock.as_mut() {
        let profile = &tool.grant.profile;
        let mut executable = vec![layout.shim_dir.clone()];
        executable.extend(layout.loaders.iter().cloned());
        executable.push(tool.binary_path().to_path_buf());
        let listed = |paths: &[String]| -> Vec<PathBuf> {
            let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
            existing_paths(&paths)
        };
        for p in listed(&profile.executes) {
            if !executable.contains(&p) {
                executable.push(p);
            }
        }
        ll.executable = executable;
        ll.read_only.extend(listed(&profile.reads));
        ll.read_only
            .extend(runtime_library_trees(tool.binary_path()));
    }
    ts
}

/// The sandbox of each granted tool, by program; the broker prepares the one of the
/// program it is about to run.
#[derive(Debug, Clone, Default)]
pub struct ToolSandboxes {
    by_program: BTreeMap<String, Sandbox>,
}

impl ToolSandboxes {
    /// Every tool joins `membership` first (tools count against the session's limits).
    pub fn join_cgroup(&mut self, membership: &Arc<CgroupMembership>) {
        for s in self.by_program.values_mut() {
            s.cgroup = Some(Arc::clone(membership));
        }
    }

    /// The sandbox `program` runs in.
    pub fn get(&self, program: &str) -> Option<&Sandbox> {
        self.by_program.get(program)
    }
}

impl ToolSandbox for ToolSandboxes {
    fn prepare(&self, program: &str) -> io::Result<Box<dyn PreparedToolSandbox>> {
        let sandbox = self
            .by_program
            .get(program)
            .ok_or_else(|| io::Error::other(format!("no sandbox was prepared for `{program}`")))?;
        ToolSandbox::prepare(sandbox, program)
    }

    fn prepare_running_no_program(
        &self,
        program: &str,
        binary_fd: std::os::fd::RawFd,
        report: std::os::fd::RawFd,
    ) -> io::Result<Box<dyn PreparedToolSandbox>> {
        let sandbox = self
            .by_program
            .get(program)
            .ok_or_else(|| io::Error::other(format!("no sandbox was prepared for `{program}`")))?;
        ToolSandbox::prepare_running_no_program(sandbox, program, binary_fd, report)
    }
}
