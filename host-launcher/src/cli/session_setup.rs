//! Setting up sessions, shared by the subcommands that run them (`run`, `serve`,
//! `mcp`): the VM image, the launcher's key, the VM launcher, egress pins, where per-VM
//! state goes, and the approvers.

use super::output::errln;
use super::{fail, ApprovalArgs, Failure, OnAskArg, VmArgs, VmmArg};
use airlock_launcher::keys::{self, PRIVATE_KEY_FILE};
use airlock_launcher::mint::parse_duration_secs;
use airlock_launcher::policy::Policy;
use std::path::{Path, PathBuf};

/// `--resolve NAME=IP` flags, parsed (a bad one is named).
pub fn egress_pins(
    flags: &[String],
) -> Result<std::collections::BTreeMap<String, std::net::IpAddr>, Failure> {
    flags
        .iter()
        .map(|f| {
            airlock_launcher::egress::address_ranges::parse_resolve_pin(f)
                .map_err(|e| fail(125, format!("--resolve {f}: {e}")))
        })
        .collect()
}

/// The VM image a run uses: `--image` (a descriptor or its directory), else the
/// minimal image in the cache.
fn load_image(arg: Option<&Path>) -> Result<airlock_launcher::image::ImageDescriptor, Failure> {
    let path = match arg {
        Some(p) if p.is_dir() => p.join("image.json"),
        Some(p) => p.to_path_buf(),
        None => keys::default_cache_dir()
            .map_err(|e| fail(125, e))?
            .join("images/minimal/image.json"),
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        fail(
            125,
            format!(
                "VM image {}: {e} (build one with `airlock image build --profile minimal`, or pass --image)",
                path.display()
            ),
        )
    })?;
    serde_json::from_str(&text)
        .map_err(|e| fail(125, format!("VM image descriptor {}: {e}", path.display())))
}

/// Where per-VM directories go: `$XDG_RUNTIME_DIR/airlock/vms`, else `/run/airlock/vms`
/// for root, else a per-user directory under the temporary directory.
pub fn vm_state_root() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("airlock/vms");
    }
    // SAFETY: geteuid has no failure mode.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        PathBuf::from("/run/airlock/vms")
    } else {
        std::env::temp_dir().join(format!("airlock-{uid}/vms"))
    }
}

/// The launcher's signing key (`--key`, else the default).
pub fn launcher_signer(
    vm: &VmArgs,
) -> Result<std::sync::Arc<airlock_proto::envelope::Signer>, Failure> {
    let key = match &vm.key {
        Some(k) => k.clone(),
        None => keys::default_key_dir()
            .map_err(|e| fail(125, e))?
            .join(PRIVATE_KEY_FILE),
    };
    keys::load_signer(&key)
        .map(std::sync::Arc::new)
        .map_err(|e| fail(125, e))
}

/// A launcher for `vm` args and `policy`; reports a sweep of a crashed launcher's VMs.
pub fn vm_launcher(
    vm: &VmArgs,
    policy: Policy,
    signer: std::sync::Arc<airlock_proto::envelope::Signer>,
    approvals: std::sync::Arc<airlock_launcher::approval_broker::ApprovalBroker>,
    quiet: bool,
) -> Result<airlock_launcher::launcher::Launcher, Failure> {
    use airlock_launcher::launcher::{Launcher, LauncherConfig};
    use airlock_launcher::vmm::{cloud_hypervisor, find_program, qemu};
    let image = load_image(vm.image.as_deref())?;
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    // The Makefile's tool cache, for a launcher run from the build tree.
    let mut dirs: Vec<PathBuf> = vm.tools_dir.iter().cloned().collect();
    dirs.push(exe_dir.join("../airlock-cache/tools/bin"));
    let need = |name: &str| {
        find_program(name, &dirs).ok_or_else(|| {
            fail(
                125,
                format!("{name} not found in --tools-dir or PATH (make tools installs it)"),
            )
        })
    };
    let state_root = vm_state_root();
    let virtiofsd = find_program("virtiofsd", &dirs).unwrap_or_else(|| PathBuf::from("virtiofsd"));
    let vmm: std::sync::Arc<dyn airlock_launcher::vmm::Vmm> = match vm.vmm {
        VmmArg::Qemu => {
            let tools = qemu::QemuTools {
                qemu: need("qemu-system-x86_64")?,
                vhost_device_vsock: need("vhost-device-vsock")?,
                virtiofsd,
            };
            let spec = airlock_launcher::vmm::VmSpec::for_image(&image, 3, 1, 256);
            let cache = keys::default_cache_dir()
                .map_err(|e| fail(125, e))?
                .join("kvm-probe");
            let probe = qemu::probe_kvm(
                &tools,
                &spec,
                &state_root,
                &cache,
                std::time::Duration::from_secs(15),
            );
            if let Some(news) = probe.news().filter(|_| !quiet) {
                errln!("airlock: {news}");
            }
            std::sync::Arc::new(qemu::Qemu {
                tools,
                accel: probe.accel,
            })
        }
        VmmArg::CloudHypervisor => {
            let binary = need("cloud-hypervisor")?;
            if let Some(why) = cloud_hypervisor::kvm_unusable(&binary) {
                return Err(fail(
                    125,
                    format!("cloud-hypervisor cannot run here: {why}"),
                ));
            }
            std::sync::Arc::new(cloud_hypervisor::CloudHypervisor { binary, virtiofsd })
        }
    };
    let (launcher, sweep) = Launcher::new(LauncherConfig {
        policy: std::sync::Arc::new(policy),
        signer,
        image,
        vmm,
        state_root,
        boot_timeout: airlock_launcher::launcher::DEFAULT_BOOT_TIMEOUT,
        egress_pins: egress_pins(&vm.resolve)?,
        approvals,
    })
    .map_err(|e| fail(125, e))?;
    for d in &sweep.removed {
        errln!(
            "airlock: removed {} (left by a launcher that crashed)",
            d.display()
        );
    }
    Ok(launcher)
}

/// The approval broker of this launcher and the channels that answer it.
pub struct Approvers {
    pub broker: std::sync::Arc<airlock_launcher::approval_broker::ApprovalBroker>,
    tty: Option<PathBuf>,
    command: Option<PathBuf>,
}

impl Approvers {
    /// Whether asks are put to a person on this process's terminal (`--on-ask prompt`).
    pub fn prompt_on_the_terminal(&self) -> bool {
        self.tty.is_some()
    }

    /// The broker and channels `a` asks for (`serving`: defaults for `airlock serve`).
    pub fn from_args(
        a: &ApprovalArgs,
        serving: bool,
        policy: &Policy,
        signer: std::sync::Arc<airlock_proto::envelope::Signer>,
    ) -> Result<Approvers, Failure> {
        use airlock_launcher::approval_broker::{
            Answer, ApprovalBroker, AutoAnswer, Scope, DEFAULT_APPROVAL_TIMEOUT,
        };
        use airlock_launcher::audit_log::{default_audit_path, AuditLog};
        use airlock_launcher::policy::MAX_ASK_TIMEOUT_SECS;
        let secs = match &a.ask_timeout {
            Some(t) => {
                let secs =
                    parse_duration_secs(t).map_err(|e| fail(2, format!("--ask-timeout: {e}")))?;
                if !(1..=MAX_ASK_TIMEOUT_SECS).contains(&secs) {
                    return Err(fail(
                        2,
                        format!("--ask-timeout {secs}s is outside 1s..={MAX_ASK_TIMEOUT_SECS}s"),
                    ));
                }
                secs
            }
            None => policy
                .ask_timeout_secs
                .unwrap_or(DEFAULT_APPROVAL_TIMEOUT.as_secs()),
        };
        const TTY: &str = "/dev/tty";
        // Interactive use: a controlling terminal, and input from it (a launcher run
        // by a script or a test, stdin elsewhere, is not prompting anyone).
        let has_tty = || {
            use std::io::IsTerminal;
            std::io::stdin().is_terminal()
                && std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(TTY)
                    .is_ok()
        };
        let on_ask = match a.on_ask {
            Some(o) => o,
            None if serving || a.approver_cmd.is_some() => OnAskArg::Wait,
            None if has_tty() => OnAskArg::Prompt,
            None => OnAskArg::Deny,
        };
        let auto = |answer, name: &str| {
            Some(AutoAnswer {
                answer,
                approver: name.to_string(),
            })
        };
        let (auto, tty) = match on_ask {
            OnAskArg::Allow => (auto(Answer::Approve(Scope::Once), "--on-ask allow"), None),
            OnAskArg::Deny => (auto(Answer::Deny, "--on-ask deny"), None),
            OnAskArg::Wait => (None, None),
            OnAskArg::Prompt => (None, Some(PathBuf::from(TTY))),
        };
        if auto.is_some() && a.approver_cmd.is_some() {
            return Err(fail(
                2,
                "--approver-cmd answers asks, and so does --on-ask allow|deny: give one",
            ));
        }
        // Fail closed: a launcher that cannot keep its log decides nothing.
        let refused = |e: &dyn std::fmt::Display| {
            fail(
                125,
                format!("audit log: {e} (give another with --audit-log, or move this one aside after checking it with `airlock audit verify`)"),
            )
        };
        let log = match &a.audit_log {
            Some(path) => AuditLog::open(path, signer).map_err(|e| refused(&e))?,
            // The default place may be missing or unwritable (no home directory, a
            // read-only one): the runtime directory then holds the log, and the run
            // says where. A log that exists and does not verify is never passed over.
            None => match default_audit_path().and_then(|p| AuditLog::open(&p, signer.clone())) {
                Ok(log) => log,
                Err(e @ airlock_launcher::audit_log::AuditError::Corrupt { .. }) => {
                    return Err(refused(&e))
                }
                Err(e) => {
                    let fallback = vm_state_root()
                        .parent()
                        .map(Path::to_path_buf)
                        .unwrap_or_default()
                        .join("audit.jsonl");
                    let log = AuditLog::open(&fallback, signer).map_err(|e| refused(&e))?;
                    errln!(
                        "airlock: audit log: the default place is unusable ({e}); writing to {}",
                        fallback.display()
                    );
                    log
                }
            },
        };
        let broker = ApprovalBroker::configured(
            std::time::Duration::from_secs(secs),
            auto,
            Some(std::sync::Arc::new(log)),
        );
        Ok(Approvers {
            broker,
            tty,
            command: a.approver_cmd.clone(),
        })
    }

    /// Starts the channels (inside a runtime); they stop when the handles drop.
    pub fn start(
        &self,
    ) -> Result<Vec<airlock_launcher::approver_channels::ChannelHandle>, Failure> {
        use airlock_launcher::approver_channels::{
            spawn_command_approver, spawn_terminal_approver,
        };
        let mut handles = Vec::new();
        if let Some(tty) = &self.tty {
            handles.push(
                spawn_terminal_approver(self.broker.clone(), tty)
                    .map_err(|e| fail(125, format!("--on-ask prompt: {}: {e}", tty.display())))?,
            );
        }
        if let Some(cmd) = &self.command {
            handles.push(spawn_command_approver(self.broker.clone(), cmd.clone()));
        }
        Ok(handles)
    }
}

/// Process isolation set up from the flags `run` and `ssh-entry` share: its options,
/// and the approver channels on a runtime of their own (the session blocks the calling
/// thread). Keep it for the session: the channels stop when it drops.
pub struct ProcessSetup {
    pub opts: airlock_launcher::process_session::ProcessRunOptions,
    _channels: Vec<airlock_launcher::approver_channels::ChannelHandle>,
    _runtime: tokio::runtime::Runtime,
}

/// [`ProcessSetup`] for these flags. `enforcer` and `shim` default to the binaries
/// next to `airlock`.
pub fn process_setup(
    vm: &VmArgs,
    approvals: &ApprovalArgs,
    policy: &Policy,
    enforcer: Option<PathBuf>,
    shim: Option<PathBuf>,
    merge: airlock_launcher::workspace_merge::MergeWhen,
) -> Result<ProcessSetup, Failure> {
    use airlock_launcher::process_session::ProcessRunOptions;
    let mut opts = ProcessRunOptions::next_to_current_exe().map_err(|e| fail(125, e))?;
    if let Some(e) = enforcer {
        opts.enforcer = e;
    }
    if let Some(s) = shim {
        opts.shim = s;
    }
    // The audit log's checkpoints are signed with the launcher's key when there is one
    // (process isolation needs none otherwise); else with a key made for this run: the
    // checkpoint names that key's id, so `audit verify --pub` says whose it is not.
    let signer = match launcher_signer(vm) {
        Ok(s) => s,
        Err(_) => std::sync::Arc::new(
            airlock_proto::envelope::Signer::generate().map_err(|e| fail(125, e))?,
        ),
    };
    let approvers =
        Approvers::from_args(approvals, false, policy, signer).map_err(|f| fail(125, f.message))?;
    opts.approvals = approvers.broker.clone();
    opts.merge = merge;
    opts.egress_pins = egress_pins(&vm.resolve)?;
    // Our terminal's ^C is the agent's (the enforcer leads a session of its own);
    // a quit or hang-up ends the session.
    opts.forward_interrupts = true;
    opts.prompt_on_the_terminal = approvers.prompt_on_the_terminal();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| fail(125, format!("tokio runtime: {e}")))?;
    let channels = {
        let _entered = runtime.enter();
        approvers.start().map_err(|f| fail(125, f.message))?
    };
    Ok(ProcessSetup {
        opts,
        _channels: channels,
        _runtime: runtime,
    })
}
