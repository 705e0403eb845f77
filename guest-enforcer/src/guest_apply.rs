//! `Apply` in the VM: the guest clock set from the host, the manifest verified against
//! the key baked into the image and this boot's bindings (CID, image id, the challenge
//! handed out by `Hello`), then everything the agent will run under resolved and
//! prepared: shims for the granted tools, the agent's cgroup, every layer. Nothing of
//! the agent runs here; a failure leaves nothing half-applied that could run it.

use crate::cgroup::{CgroupLimits, TreeCgroup};
use crate::guest_init::{read_image_identity, InitReport};
use crate::identity::AgentIdentity;
use crate::manifest_layers::{
    existing_paths, plan_agent, present_loaders, GuestLayout, AGENT_DEVICES,
};
use airlock_proto::envelope::{Expect, Expectations, VerifyError};
use airlock_proto::manifest::Manifest;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The guest's shim directory: the static shim ships here, and each granted tool gets a
/// hard link to it (same filesystem, so the kernel executes the shim's own inode, which
/// is what Landlock's EXECUTE grant on this directory covers).
pub const SHIM_DIR: &str = "/usr/lib/airlock/bin";
/// The shim binary in the image.
pub const SHIM_BINARY: &str = "/usr/lib/airlock/bin/airlock-shim";

/// Why `Apply` refused. The agent does not run.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The egress funnel could not be set up: egress was granted, so nothing runs
    /// without it.
    #[error("{0}")]
    Egress(String),
    /// `Hello` was not called first, or this boot already had its `Apply`.
    #[error("no outstanding challenge: call Hello first (one Apply per boot)")]
    NoChallenge,
    /// The host sent no usable time.
    #[error("host time {0} ms is not a time; refusing to judge the manifest's validity")]
    BadHostTime(i64),
    /// Setting the clock failed.
    #[error("setting the guest clock: {0}")]
    Clock(std::io::Error),
    /// The manifest failed verification.
    #[error("manifest refused: {0}")]
    Refused(#[from] VerifyError),
    /// The manifest asks for something this enforcer does not provide yet.
    #[error("manifest field `{field}`: {problem}")]
    Unsupported {
        /// Field.
        field: String,
        /// What is missing.
        problem: String,
    },
    /// A granted share could not be mounted.
    #[error("manifest field `{field}`: {what}: {source}")]
    Mount {
        /// Field.
        field: String,
        /// What was being done.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A copy-on-write workspace could not be set up.
    #[error("manifest field `{field}`: {source}")]
    Workspace {
        /// Field.
        field: String,
        /// What failed.
        source: crate::workspace_layer::WorkspaceError,
    },
    /// The tool broker could not start.
    #[error("the tool broker could not start: {0}")]
    Broker(crate::session::SessionError),
    /// A layer could not be prepared.
    #[error(transparent)]
    Layers(#[from] crate::manifest_layers::ManifestApplyError),
    /// Shims could not be installed.
    #[error("installing the shim for `{tool}`: {source}")]
    Shim {
        /// Tool.
        tool: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The shim directory could not be made read-only.
    #[error("making the shim directory {SHIM_DIR} a read-only mount: {0}")]
    ShimDir(nix::errno::Errno),
    /// The agent's cgroup.
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    /// The image's identity went missing.
    #[error(transparent)]
    Identity(#[from] crate::guest_init::InitError),
}

impl ApplyError {
    /// Whether the manifest itself was refused (as opposed to this guest failing).
    pub fn is_refusal(&self) -> bool {
        matches!(self, ApplyError::Refused(_))
    }
}

/// An applied manifest: what the agent will run under (the broker already serves).
pub struct Applied {
    /// The verified manifest.
    pub manifest: Manifest,
    /// The agent's layers.
    pub sandbox: crate::sandbox::Sandbox,
    /// The image layout it was resolved against.
    pub layout: GuestLayout,
    /// The agent's cgroup.
    pub cgroup: TreeCgroup,
    /// What was applied, for the ready report: (layer, detail).
    pub layers: Vec<(String, String)>,
    /// Tags of the copy-on-write workspaces (their upper layers are on the scratch).
    pub workspaces: Vec<String>,
}

/// Where things are in a guest image.
pub fn vm_layout() -> GuestLayout {
    GuestLayout {
        tool_dirs: existing_paths(&["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"]),
        shim_dir: PathBuf::from(SHIM_DIR),
        loaders: present_loaders(),
        system_read_only: existing_paths(&[
            "/etc",
            "/usr/lib/x86_64-linux-gnu",
            "/usr/share",
            "/proc",
        ]),
        scratch: existing_paths(&["/tmp"]),
        devices: existing_paths(&AGENT_DEVICES),
        agent: AgentIdentity {
            uid: 1000,
            gid: 1000,
            groups: vec![],
        },
        nofile: 4096,
        external_entrypoints: None,
    }
}

/// Sets CLOCK_REALTIME from the host's clock.
pub fn set_clock_from_host(host_ms: i64) -> Result<u64, ApplyError> {
    if host_ms <= 0 {
        return Err(ApplyError::BadHostTime(host_ms));
    }
    let ts = libc::timespec {
        tv_sec: host_ms / 1000,
        tv_nsec: (host_ms % 1000) * 1_000_000,
    };
    // SAFETY: clock_settime reads one live timespec.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(ApplyError::Clock(std::io::Error::last_os_error()));
    }
    Ok((host_ms / 1000) as u64)
}

/// Mounts each granted share (virtio-fs, by the manifest's tag) at its guest path:
/// nosuid, nodev, noexec, and read-only when granted read-only (virtiofsd refuses
/// writes to it on the host as well). A `rw` share is a copy-on-write overlay over the
/// read-only share, its upper layer on the session's scratch tmpfs
/// ([`crate::workspace_layer`]); only `rw-live` writes the host directly. Returns one
/// line per mount for the report, and the tags of the copy-on-write workspaces.
fn mount_shares(manifest: &Manifest) -> Result<(Vec<String>, Vec<String>), ApplyError> {
    use crate::workspace_layer as ws;
    use airlock_proto::manifest::Access;
    use nix::mount::MsFlags;
    let mut done = Vec::new();
    let mut workspaces = Vec::new();
    let scratch = Path::new(ws::VM_SCRATCH_DIR);
    {
        std::fs::create_dir_all(scratch).map_err(|e| ApplyError::Mount {
            field: "resources.disk_mib".into(),
            what: format!("creating {}", scratch.display()),
            source: e,
        })?;
        let opts = ws::scratch_tmpfs_options(manifest.resources.disk_mib);
        nix::mount::mount(
            Some("tmpfs"),
            scratch,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(opts.as_str()),
        )
        .map_err(|e| ApplyError::Mount {
            field: "resources.disk_mib".into(),
            what: format!("mounting the session's scratch tmpfs ({opts})"),
            source: e.into(),
        })?;
        // The agent's /tmp is part of the same budget as the workspaces' write layers.
        ws::bind_scratch_dirs(scratch, &[("tmp", PathBuf::from("/tmp"))]).map_err(|source| {
            ApplyError::Workspace {
                field: "resources.disk_mib".into(),
                source,
            }
        })?;
        done.push(format!(
            "/tmp and write layers: one scratch tmpfs, {} MiB / {} inodes in total",
            manifest.resources.disk_mib,
            ws::scratch_inodes(manifest.resources.disk_mib)
        ));
    }
    for (i, m) in manifest.mounts.iter().enumerate() {
        let field = || format!("mounts[{i}].guest_path");
        let guest = Path::new(&m.guest_path);
        if let Some(r) = crate::manifest_layers::reserved_guest_path(guest) {
            return Err(ApplyError::Unsupported {
                field: field(),
                problem: format!(
                    "{} would cover or sit inside {r}, which the sandbox provides itself",
                    m.guest_path
                ),
            });
        }
        std::fs::create_dir_all(guest).map_err(|e| ApplyError::Mount {
            field: field(),
            what: format!("creating {}", m.guest_path),
            source: e,
        })?;
        // The reserved-path check above is on the string; the mount must land on that
        // path itself. A symlink on the way (the image's `/var/run -> /run`, or one an
        // earlier share put under a later share's path) would carry it elsewhere, so
        // the target is opened with no symlink followed and mounted through its fd.
        let target = crate::no_symlinks::open_following_no_symlinks(
            guest,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        )
        .map_err(|e| ApplyError::Mount {
            field: field(),
            what: match e.raw_os_error() {
                Some(libc::ELOOP) | Some(libc::EXDEV) => format!(
                    "{} is or goes through a symbolic link; shares mount only on real directories",
                    m.guest_path
                ),
                _ => format!("opening {}", m.guest_path),
            },
            source: e,
        })?;
        let target = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&target));
        let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        if m.mode != Access::RwLive {
            flags |= MsFlags::MS_RDONLY;
        }
        let lower = Path::new(ws::VM_LOWER_DIR).join(&m.tag);
        let share_at = if m.mode == Access::Rw {
            std::fs::create_dir_all(&lower).map_err(|e| ApplyError::Mount {
                field: field(),
                what: format!("creating {}", lower.display()),
                source: e,
            })?;
            lower.to_string_lossy().into_owned()
        } else {
            target.clone()
        };
        nix::mount::mount(
            Some(m.tag.as_str()),
            share_at.as_str(),
            Some("virtiofs"),
            flags,
            None::<&str>,
        )
        .map_err(|e| ApplyError::Mount {
            field: field(),
            what: format!("mounting virtio-fs tag {} on {share_at}", m.tag),
            source: e.into(),
        })?;
        let mut shown = m.mode.as_str().to_string();
        if m.mode == Access::Rw {
            ws::mount_overlay(&m.tag, &lower, scratch, &target).map_err(|source| {
                ApplyError::Workspace {
                    field: field(),
                    source,
                }
            })?;
            shown = "copy-on-write on the scratch".to_string();
            workspaces.push(m.tag.clone());
        }
        done.push(format!("{} ({}, {shown})", m.guest_path, m.tag));
    }
    Ok((done, workspaces))
}

/// Gives each granted tool a hard link to the shim in [`SHIM_DIR`].
fn install_shims(manifest: &Manifest) -> Result<(), ApplyError> {
    for t in &manifest.tools {
        let link = Path::new(SHIM_DIR).join(&t.program);
        if link.exists() {
            continue;
        }
        std::fs::hard_link(SHIM_BINARY, &link).map_err(|source| ApplyError::Shim {
            tool: t.program.clone(),
            source,
        })?;
    }
    mount_shim_dir_read_only()
}

/// Seals the shim directory once every granted tool has its link: a read-only bind
/// mount of itself. The agent's uid could not write there anyway (root owns it, and
/// Landlock grants no write); the mount is the same third wall process mode has.
fn mount_shim_dir_read_only() -> Result<(), ApplyError> {
    use nix::mount::{mount, MsFlags};
    mount(
        Some(SHIM_DIR),
        SHIM_DIR,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(ApplyError::ShimDir)?;
    mount(
        None::<&str>,
        SHIM_DIR,
        None::<&str>,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(ApplyError::ShimDir)
}

/// Verifies `envelope` and prepares everything for the agent.
pub fn apply_in_vm(
    init: &InitReport,
    challenge: &[u8],
    envelope: &[u8],
    host_ms: i64,
    session_secret: &[u8],
) -> Result<Applied, ApplyError> {
    if !(16..=64).contains(&session_secret.len()) {
        return Err(ApplyError::Unsupported {
            field: "session_secret".into(),
            problem: format!(
                "{} bytes; the host must hand over 16 to 64 (the Host channel is authenticated with it)",
                session_secret.len()
            ),
        });
    }
    let now = set_clock_from_host(host_ms)?;
    let (verifier, image_id) = read_image_identity()?;
    let manifest = verifier.verify(
        envelope,
        &Expectations {
            now,
            // The session is bound through the challenge: only this boot's nonce works.
            session_id: Expect::Unchecked,
            vm_cid: Expect::Exactly(init.vm_cid),
            image_id: Expect::Exactly(image_id),
            nonce: Expect::Exactly(hex::encode(challenge)),
        },
    )?;
    let (mounted, workspaces) = mount_shares(&manifest)?;
    // The network funnel comes before the agent's layers (ARCHITECTURE §6): with egress
    // granted, the agent's only way out must exist and hold before it runs.
    let egress = if crate::egress_funnel::egress_granted(&manifest) {
        crate::guest_init::load_egress_modules().map_err(|e| ApplyError::Egress(e.to_string()))?;
        let funnel = crate::egress_funnel::start_egress_funnel_in_current_netns(
            &manifest,
            session_secret.to_vec(),
            crate::egress_funnel::HostDialer::Vsock {
                port: airlock_proto::EGRESS_VSOCK_PORT,
            },
        )
        .map_err(|e| ApplyError::Egress(e.to_string()))?;
        funnel.description
    } else {
        "none granted: no route, no port".to_string()
    };
    install_shims(&manifest)?;
    let layout = vm_layout();
    let mut plan = plan_agent(&manifest, &layout)?;
    let r = &manifest.resources;
    let cgroup = TreeCgroup::create_on_host("agent", &CgroupLimits::for_resources(r)?)?;
    let membership = Arc::new(cgroup.membership().map_err(|e| {
        ApplyError::Cgroup(crate::cgroup::CgroupError::Io {
            path: PathBuf::from("/sys/fs/cgroup/airlock/agent"),
            source: e,
        })
    })?);
    plan.sandbox.cgroup = Some(Arc::clone(&membership));
    plan.tool_sandboxes.join_cgroup(&membership);
    let ll = plan.sandbox.landlock.clone();
    let ll = ll.as_ref();
    let layers = vec![
        ("clock".to_string(), format!("set from the host: {now} s")),
        (
            "manifest".to_string(),
            format!(
                "verified: key {}, cid {}, image {}, this boot's challenge, expires at {}",
                verifier.key_id(),
                manifest.vm_cid,
                manifest.image_id,
                manifest.expires_at
            ),
        ),
        (
            "mounts".to_string(),
            if mounted.is_empty() {
                "none".into()
            } else {
                mounted.join(", ")
            },
        ),
        ("egress".to_string(), egress),
        (
            "tools".to_string(),
            manifest
                .tools
                .iter()
                .map(|t| t.program.as_str())
                .collect::<Vec<_>>()
                .join(" "),
        ),
        ("cgroup".to_string(), cgroup.describe()),
        (
            "limits".to_string(),
            format!("nproc {}, fsize {} MiB, core 0", r.pids, r.disk_mib),
        ),
        (
            "identity".to_string(),
            "uid 1000 gid 1000, no capabilities, no_new_privs".into(),
        ),
        (
            "landlock".to_string(),
            format!(
                "abi {}: {} read-only, {} read-write, {} executable paths",
                init.landlock_abi,
                ll.map_or(0, |l| l.read_only.len()),
                ll.map_or(0, |l| l.read_write.len() + l.read_write_no_specials.len()),
                ll.map_or(0, |l| l.executable.len())
            ),
        ),
        (
            "seccomp".to_string(),
            "the agent's filter (compiled)".into(),
        ),
    ];
    crate::session::serve_broker(
        plan.tools,
        plan.tool_sandboxes,
        &layout,
        Arc::new(crate::host_asker::HostAsker::new(
            manifest.session_id.clone(),
            session_secret.to_vec(),
        )),
        crate::broker::DEFAULT_ASK_TIMEOUT,
        Path::new(crate::shim::DEFAULT_BROKER_SOCKET),
        crate::egress_funnel::agent_proxy_environment(&manifest),
    )
    .map_err(ApplyError::Broker)?;
    Ok(Applied {
        manifest,
        sandbox: plan.sandbox,
        layout,
        cgroup,
        layers,
        workspaces,
    })
}
