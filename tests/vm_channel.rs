//! The host ↔ guest channel in a real VM: QEMU (microvm, TCG) with a fresh
//! vhost-device-vsock, the enforcer as PID 1 serving `Enforcer` on vsock, the launcher
//! dialing it through the hybrid vsock socket with the `CONNECT`/`OK` handshake.

use airlock_launcher::image::{build, BuildInputs, Profile};
use airlock_launcher::vmm::hybrid_vsock::grpc_channel;
use airlock_launcher::vmm::qemu::{QemuTools, QemuVm};
use airlock_launcher::vmm::VmSpec;
use airlock_proto::pb::enforcer_client::EnforcerClient;
use airlock_proto::pb::{HelloRequest, ShutdownRequest};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Image inputs and VMM tools, or why this machine cannot boot VMs (a failure under CI).
fn setup(dir: &Path) -> Option<(BuildInputs, QemuTools)> {
    let musl = workspace_root().join("target/x86_64-unknown-linux-musl/release");
    let tools = QemuTools {
        qemu: PathBuf::from("/usr/bin/qemu-system-x86_64"),
        vhost_device_vsock: workspace_root()
            .join("target/airlock-cache/tools/bin/vhost-device-vsock"),
    };
    let needed = [
        musl.join("airlock-enforcer"),
        musl.join("airlock-shim"),
        PathBuf::from("/bin/busybox"),
        tools.qemu.clone(),
        tools.vhost_device_vsock.clone(),
    ];
    let missing: Vec<String> = needed
        .iter()
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if !missing.is_empty() {
        let why = format!("missing {} (make test installs them)", missing.join(", "));
        assert!(std::env::var_os("CI").is_none(), "{why}");
        eprintln!("skipped: {why}");
        return None;
    }
    airlock_launcher::keys::keygen(&dir.join("keys"), true).unwrap();
    Some((
        BuildInputs {
            enforcer: musl.join("airlock-enforcer"),
            shim: musl.join("airlock-shim"),
            busybox: PathBuf::from("/bin/busybox"),
            public_key: dir.join("keys/airlock.pub"),
            cache: workspace_root().join("target/airlock-cache"),
            out: dir.join("images"),
        },
        tools,
    ))
}

fn hello(max: u32, min: u32) -> HelloRequest {
    HelloRequest {
        host_protocol_version: max,
        host_min_protocol_version: min,
        host_software_version: "test".into(),
    }
}

fn alive(pid: u32) -> bool {
    // A reaped child is gone; a zombie would still have /proc/<pid>.
    Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test(flavor = "current_thread")]
async fn hello_over_vsock_then_shutdown_powers_the_vm_off_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Some((inputs, tools)) = setup(dir.path()) else {
        return;
    };
    let (image, _) = build(Profile::Minimal, &inputs, &|_| {}).unwrap_or_else(|e| panic!("{e}"));
    let spec = VmSpec::for_image(&image, 3, 1, 256);
    let mut vm = QemuVm::boot(&spec, &tools, &dir.path().join("vms")).unwrap();
    let (pids, state) = (vm.pids(), vm.state_dir());

    let channel = grpc_channel(
        vm.vsock_uds(),
        1024,
        Instant::now() + Duration::from_secs(60),
        vm.serial_log(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\nserial:\n{}", vm.serial_output()));
    let mut client = EnforcerClient::new(channel);

    // A host that only speaks a future protocol is refused, naming both versions.
    let err = client.hello(hello(9, 7)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message().contains("7..=9") && err.message().contains("speaks 1"),
        "{err}"
    );

    let v = airlock_proto::PROTOCOL_VERSION;
    let first = client.hello(hello(v, v)).await.unwrap().into_inner();
    assert_eq!(first.guest_protocol_version, v);
    assert_eq!(first.image_id, image.image_id);
    assert_eq!(first.landlock_abi, 6);
    assert_eq!(first.challenge_nonce.len(), 16);
    let again = client.hello(hello(v, v)).await.unwrap().into_inner();
    assert_ne!(
        again.challenge_nonce, first.challenge_nonce,
        "a challenge is fresh each time"
    );

    client
        .shutdown(ShutdownRequest {
            reason: "test over".into(),
        })
        .await
        .unwrap();
    drop(client);
    let status = vm
        .wait_for_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the VM did not power off\n{}", vm.serial_output()));
    assert!(status.success(), "qemu: {status}");
    let serial = vm.serial_output();
    assert!(
        serial.contains("shutdown requested by the host: test over"),
        "{serial}"
    );
    vm.destroy().unwrap();
    for pid in pids {
        assert!(!alive(pid), "helper {pid} outlived its VM");
    }
    assert!(!state.exists(), "the VM's directory was left behind");
}

#[tokio::test(flavor = "current_thread")]
async fn a_guest_that_never_answers_is_an_error_naming_the_serial_log() {
    let dir = tempfile::tempdir().unwrap();
    let Some((inputs, tools)) = setup(dir.path()) else {
        return;
    };
    let (image, _) = build(Profile::Minimal, &inputs, &|_| {}).unwrap_or_else(|e| panic!("{e}"));
    let vm = QemuVm::boot(
        &VmSpec::for_image(&image, 4, 1, 256),
        &tools,
        &dir.path().join("vms"),
    )
    .unwrap();
    // Port 1025: nothing listens there, so the daemon never answers OK.
    let err = grpc_channel(
        vm.vsock_uds(),
        1025,
        Instant::now() + Duration::from_secs(3),
        vm.serial_log(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("did not answer") && err.contains("serial.log"),
        "{err}"
    );
    vm.destroy().unwrap();
}
