//! The cloud-hypervisor backend: the production VMM where hardware KVM works. It boots
//! the image's uncompressed PVH `vmlinux` directly, serves hybrid vsock itself (the
//! `--vsock` socket speaks the same `CONNECT`/`OK` protocol as vhost-device-vsock),
//! talks vhost-user to one virtiofsd per share, and has no network device unless asked
//! (we never ask). Its API socket is kept in the VM directory for later control
//! (pause, snapshot for a warm pool).
//!
//! cloud-hypervisor needs `/dev/kvm` that can run a normal guest; [`kvm_unusable`] says
//! why a machine cannot, so callers can skip with a reason instead of hanging.

use super::helpers::{bind_host_listeners, log_to, start_virtiofsd};
use super::running::RunningVm;
use super::state_dir::create_vm_dir;
use super::{Vm, VmSpec, Vmm, VmmError};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The programs this backend runs.
#[derive(Debug, Clone)]
pub struct CloudHypervisor {
    /// `cloud-hypervisor`.
    pub binary: PathBuf,
    /// `virtiofsd` (needed only for VMs with shares).
    pub virtiofsd: PathBuf,
}

const VMM: &str = "cloud-hypervisor";

/// The command-line arguments for `spec`. `vsock_uds` is the hybrid vsock socket,
/// `fs_sockets` the virtiofsd sockets (one per share, in order).
pub fn cloud_hypervisor_args(
    spec: &VmSpec,
    vsock_uds: &Path,
    fs_sockets: &[PathBuf],
    serial_log: &Path,
    api_socket: &Path,
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--kernel".into(),
        spec.vmlinux.display().to_string(),
        "--initramfs".into(),
        spec.initrd.display().to_string(),
        "--cmdline".into(),
        spec.kernel_cmdline(),
        "--cpus".into(),
        format!("boot={}", spec.vcpus),
        // vhost-user (virtiofsd) needs memory it can map.
        "--memory".into(),
        format!("size={}M,shared=on", spec.memory_mib),
        "--vsock".into(),
        format!("cid={},socket={}", spec.cid, vsock_uds.display()),
    ];
    for (share, socket) in spec.shares.iter().zip(fs_sockets) {
        args.extend([
            "--fs".into(),
            format!("tag={},socket={}", share.tag, socket.display()),
        ]);
    }
    if let Some(rootfs) = &spec.rootfs {
        args.extend([
            "--disk".into(),
            format!("path={},readonly=on", rootfs.display()),
        ]);
    }
    args.extend([
        "--serial".into(),
        format!("file={}", serial_log.display()),
        "--console".into(),
        "off".into(),
        "--api-socket".into(),
        format!("path={}", api_socket.display()),
    ]);
    args
}

/// Why this machine cannot run cloud-hypervisor guests, or `None` if it may.
/// `/dev/kvm` existing is not enough (nested or PVM-only KVM hangs normal guests):
/// callers that get `None` still boot with a deadline.
pub fn kvm_unusable(binary: &Path) -> Option<String> {
    if which(binary).is_none() {
        return Some(format!("{} is not installed", binary.display()));
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Err(e) => Some(format!("/dev/kvm cannot be opened ({e})")),
        Ok(_) => None,
    }
}

fn which(binary: &Path) -> Option<PathBuf> {
    if binary.components().count() > 1 {
        return binary.is_file().then(|| binary.to_path_buf());
    }
    super::find_program(&binary.to_string_lossy(), &[])
}

impl Vmm for CloudHypervisor {
    fn name(&self) -> &'static str {
        VMM
    }

    fn boot(&self, spec: &VmSpec, state_root: &Path) -> Result<Box<dyn Vm>, VmmError> {
        let mut vm = RunningVm::new(VMM, create_vm_dir(state_root)?);
        let d = vm.state_dir().to_path_buf();
        vm.host_listeners = bind_host_listeners(vm.vsock_uds(), &spec.host_ports)?;
        let fs_sockets = start_virtiofsd(&mut vm.helpers, &self.virtiofsd, spec, &d)?;
        let mut cmd = Command::new(&self.binary);
        cmd.args(cloud_hypervisor_args(
            spec,
            vm.vsock_uds(),
            &fs_sockets,
            vm.serial_log(),
            &d.join("api.sock"),
        ));
        log_to(&mut cmd, &d.join("cloud-hypervisor.log"))?;
        vm.helpers.start(cmd, VMM)?;
        Ok(Box::new(vm))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::Share;

    #[test]
    fn the_arguments_follow_the_documented_cli() {
        let spec = VmSpec {
            kernel: "/i/vmlinuz".into(),
            initrd: "/i/initramfs.cpio.gz".into(),
            cmdline: "console=ttyS0 quiet panic=-1".into(),
            cid: 9,
            vcpus: 2,
            memory_mib: 512,
            rootfs: Some("/i/rootfs.erofs".into()),
            vmlinux: "/i/vmlinux".into(),
            host_ports: vec![],
            shares: vec![
                Share {
                    tag: "m0".into(),
                    host_dir: "/srv/a".into(),
                    read_only: true,
                    owner: (0, 0),
                },
                Share {
                    tag: "m1".into(),
                    host_dir: "/srv/b".into(),
                    read_only: false,
                    owner: (0, 0),
                },
            ],
        };
        let args = cloud_hypervisor_args(
            &spec,
            Path::new("/d/vsock"),
            &[
                PathBuf::from("/d/fs-m0.sock"),
                PathBuf::from("/d/fs-m1.sock"),
            ],
            Path::new("/d/serial.log"),
            Path::new("/d/api.sock"),
        );
        let pairs: Vec<(&str, &str)> = args
            .chunks(2)
            .map(|c| (c[0].as_str(), c[1].as_str()))
            .collect();
        // The command line carries a TSC rate read from the host: checked by its content,
        // not by computing it again (the reading may differ between calls).
        let cmdline = pairs
            .iter()
            .find(|(k, _)| *k == "--cmdline")
            .map(|(_, v)| v.to_string())
            .expect("a --cmdline");
        assert!(cmdline.contains("tsc=reliable no_timer_check"), "{cmdline}");
        let want: Vec<(&str, &str)> = vec![
            ("--kernel", "/i/vmlinux"),
            ("--initramfs", "/i/initramfs.cpio.gz"),
            ("--cmdline", &cmdline),
            ("--cpus", "boot=2"),
            ("--memory", "size=512M,shared=on"),
            ("--vsock", "cid=9,socket=/d/vsock"),
            ("--fs", "tag=m0,socket=/d/fs-m0.sock"),
            ("--fs", "tag=m1,socket=/d/fs-m1.sock"),
            ("--disk", "path=/i/rootfs.erofs,readonly=on"),
            ("--serial", "file=/d/serial.log"),
            ("--console", "off"),
            ("--api-socket", "path=/d/api.sock"),
        ];
        assert_eq!(pairs, want);
        assert!(!args.iter().any(|a| a == "--net"), "no network device");
        assert!(cmdline.starts_with("console=ttyS0 quiet panic=-1"));
    }

    /// A real cloud-hypervisor boot needs the binary and working KVM; say why not.
    #[test]
    fn kvm_check_names_what_is_missing() {
        let why = kvm_unusable(Path::new("/nonexistent/cloud-hypervisor")).unwrap();
        assert!(why.contains("not installed"), "{why}");
    }
}
