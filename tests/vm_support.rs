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

/// Image inputs and VMM tools, or why this machine cannot boot VMs (a failure under CI).
pub fn setup(dir: &Path) -> Option<(BuildInputs, QemuTools)> {
    let musl = workspace_root().join("target/x86_64-unknown-linux-musl/release");
    let tools = QemuTools {
        qemu: PathBuf::from("/usr/bin/qemu-system-x86_64"),
        vhost_device_vsock: workspace_root()
            .join("target/airlock-cache/tools/bin/vhost-device-vsock"),
        virtiofsd: workspace_root().join("target/airlock-cache/tools/bin/virtiofsd"),
    };
    let needed = [
        musl.join("airlock-enforcer"),
        musl.join("airlock-shim"),
        PathBuf::from("/bin/busybox"),
        tools.qemu.clone(),
        tools.vhost_device_vsock.clone(),
        tools.virtiofsd.clone(),
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
