//! Shared by the VM test binaries (`#[path]`-included): the image inputs and VMM tools
//! every VM test needs, or why this machine cannot boot VMs (a failure under CI).
#![allow(dead_code)]

use airlock_launcher::image::BuildInputs;
use airlock_launcher::vmm::qemu::QemuTools;
use std::path::{Path, PathBuf};

/// One VM at a time within a test binary, except where a test boots several on
/// purpose: on two cores, concurrent TCG guests plus the rest of the suite starve
/// each other.
pub static ONE_VM: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The workspace checkout.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The `airlock` binary cargo built beside this test binary's probe.
pub fn airlock() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hostile_probe"))
        .parent()
        .unwrap()
        .join("airlock")
}

/// QEMU and the helpers `make tools` installs.
pub fn qemu_tools() -> QemuTools {
    QemuTools {
        qemu: PathBuf::from("/usr/bin/qemu-system-x86_64"),
        vhost_device_vsock: workspace_root()
            .join("target/airlock-cache/tools/bin/vhost-device-vsock"),
        virtiofsd: workspace_root().join("target/airlock-cache/tools/bin/virtiofsd"),
    }
}

/// Panics naming whatever of `needed` is missing: `make test` installs every tool
/// first, so an absent one is a broken set-up, never a reason to skip.
pub fn require_present(needed: &[&Path]) {
    let missing: Vec<String> = needed
        .iter()
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "missing {} (`make test` builds and installs them)",
        missing.join(", ")
    );
}

/// Image inputs and VMM tools (panics naming what is missing).
pub fn setup(dir: &Path) -> (BuildInputs, QemuTools) {
    let musl = workspace_root().join("target/x86_64-unknown-linux-musl/release");
    let tools = qemu_tools();
    let (enforcer, shim) = (musl.join("airlock-enforcer"), musl.join("airlock-shim"));
    require_present(&[
        &enforcer,
        &shim,
        Path::new("/bin/busybox"),
        &tools.qemu,
        &tools.vhost_device_vsock,
        &tools.virtiofsd,
    ]);
    airlock_launcher::keys::keygen(&dir.join("keys"), true).unwrap();
    (
        BuildInputs {
            enforcer: musl.join("airlock-enforcer"),
            shim: musl.join("airlock-shim"),
            busybox: PathBuf::from("/bin/busybox"),
            public_key: dir.join("keys/airlock.pub"),
            cache: workspace_root().join("target/airlock-cache"),
            out: dir.join("images"),
            added: vec![],
        },
        tools,
    )
}

/// The VM tests' policy file (`tests/cases/vm-policy.toml`).
pub fn vm_policy_path() -> PathBuf {
    workspace_root().join("tests/cases/vm-policy.toml")
}

/// The VM tests' policy, loaded (its examples checked).
pub fn vm_policy() -> airlock_launcher::policy::Policy {
    airlock_launcher::policy::Policy::load(&vm_policy_path()).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `argv` through the enforcer's `Exec`; returns (exit code or 128 + signal,
/// stdout, stderr).
pub async fn enforcer_exec(
    client: &mut airlock_proto::pb::enforcer_client::EnforcerClient<tonic::transport::Channel>,
    argv: &[&str],
) -> (i32, String, String) {
    use airlock_proto::pb::{exec_event::Event, exit_status::Status};
    use airlock_proto::shell_status::ProcessEnd;
    let mut stream = client
        .exec(airlock_proto::pb::EnforcerExecRequest {
            argv: argv.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"))
        .into_inner();
    let (mut out, mut err, mut code, mut started) = (Vec::new(), Vec::new(), None, false);
    while let Some(ev) = stream.message().await.unwrap() {
        match ev.event.unwrap() {
            Event::Started(_) => started = true,
            Event::Stdout(b) => out.extend(b),
            Event::Stderr(b) => err.extend(b),
            Event::Exit(st) => {
                code = Some(match st.status.unwrap() {
                    Status::Code(c) => c,
                    Status::Signal(s) => ProcessEnd::Signaled(s).exit_code(),
                })
            }
            Event::Merged(m) => panic!("{argv:?}: the enforcer never merges: {m:?}"),
        }
    }
    assert!(started, "{argv:?}: no started event");
    (
        code.unwrap_or_else(|| panic!("{argv:?}: no exit event")),
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

/// A launcher over `image` on QEMU/TCG signing with the key `setup` made in `dir`, its
/// VM directories under `dir/vms`, asks answered no.
pub fn qemu_launcher(
    dir: &Path,
    image: airlock_launcher::image::ImageDescriptor,
    policy: airlock_launcher::policy::Policy,
    tools: QemuTools,
) -> airlock_launcher::launcher::Launcher {
    qemu_launcher_with(
        dir,
        image,
        policy,
        tools,
        airlock_launcher::approval_broker::ApprovalBroker::configured(
            std::time::Duration::from_secs(60),
            Some(airlock_launcher::approval_broker::AutoAnswer {
                answer: airlock_launcher::approval_broker::Answer::Deny,
                approver: "--on-ask deny".into(),
            }),
            None,
        ),
    )
}

/// [`qemu_launcher`] whose asks go to `approvals`.
pub fn qemu_launcher_with(
    dir: &Path,
    image: airlock_launcher::image::ImageDescriptor,
    policy: airlock_launcher::policy::Policy,
    tools: QemuTools,
    approvals: std::sync::Arc<airlock_launcher::approval_broker::ApprovalBroker>,
) -> airlock_launcher::launcher::Launcher {
    use std::sync::Arc;
    let signer = airlock_launcher::keys::load_signer(&dir.join("keys/airlock.key")).unwrap();
    let (launcher, _) =
        airlock_launcher::launcher::Launcher::new(airlock_launcher::launcher::LauncherConfig {
            policy: Arc::new(policy),
            signer: Arc::new(signer),
            image,
            vmm: Arc::new(airlock_launcher::vmm::qemu::Qemu::tcg(tools)),
            state_root: dir.join("vms"),
            boot_timeout: std::time::Duration::from_secs(180),
            egress_pins: Default::default(),
            approvals,
        })
        .unwrap_or_else(|e| panic!("{e}"));
    launcher
}

/// Runs `spec` in `session` to its end; (how it ended, stdout, stderr).
pub async fn run_captured(
    session: &mut airlock_launcher::launcher::Session,
    spec: airlock_launcher::launcher::ExecSpec,
) -> (
    Result<airlock_launcher::launcher::ExecEnd, airlock_launcher::launcher::SessionError>,
    String,
    String,
) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let end = session
        .run(spec, &mut |is_err, b| {
            if is_err {
                err.extend_from_slice(b)
            } else {
                out.extend_from_slice(b)
            }
        })
        .await;
    (
        end,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

/// The session id the tests that drive a VM's enforcer by hand bind their manifests to.
pub const HAND_SESSION_ID: &str = "5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e";
/// The session secret they hand over in `Apply`.
pub const HAND_SESSION_SECRET: [u8; 32] = [1; 32];

/// Serves the `Host` service a launcher would, for a VM whose enforcer a test drives by
/// hand (booted with [`airlock_proto::HOST_VSOCK_PORT`] in its host ports): the broker's
/// records of allowed and denied calls are heard (the launcher checks them against
/// `tools` of `policy`), and asks are answered no. Stops with the returned task.
pub fn serve_host_by_hand(
    vm: &mut dyn airlock_launcher::vmm::Vm,
    policy: &airlock_launcher::policy::Policy,
    tools: &[&str],
) -> tokio::task::JoinHandle<()> {
    use airlock_launcher::approval_broker::{Answer, ApprovalBroker, AutoAnswer};
    let listener = vm
        .take_host_listener(airlock_proto::HOST_VSOCK_PORT)
        .expect("the VM was booted with the Host port");
    listener.set_nonblocking(true).unwrap();
    let grants: Vec<_> = tools.iter().map(|t| policy.tool_grant(t)).collect();
    let service = airlock_launcher::host_service::HostService::new(
        HAND_SESSION_ID.into(),
        HAND_SESSION_SECRET.to_vec(),
        &grants,
        ApprovalBroker::configured(
            std::time::Duration::from_secs(60),
            Some(AutoAnswer {
                answer: Answer::Deny,
                approver: "the test".into(),
            }),
            None,
        ),
        std::sync::Arc::new(std::sync::Mutex::new(Vec::new())),
        vm.state_dir().join("guest.log"),
    );
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(
        tokio::net::UnixListener::from_std(listener).unwrap(),
    );
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service.into_server())
            .serve_with_incoming(incoming)
            .await;
    })
}
