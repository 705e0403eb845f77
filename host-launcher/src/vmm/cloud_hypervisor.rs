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
/// `/dev/kvm` existing is not enough: a PVM-only KVM (as on nested cloud hosts) lets
/// cloud-hypervisor create the VM and report it running while a normal guest kernel
/// makes no progress, so the kind of KVM is checked too ([`KvmHost`]). Callers that
/// get `None` still boot with a deadline (nested KVM can hang in ways no fact shows).
pub fn kvm_unusable(binary: &Path) -> Option<String> {
    if super::find_program(binary, &[]).is_none() {
        return Some(format!("{} is not installed", binary.display()));
    }
    if let Err(why) = super::open_kvm() {
        return Some(why);
    }
    KvmHost::this_host().unusable()
}

/// What decides whether this host's KVM can run a normal (non-PVM) guest: which KVM
/// modules are loaded and whether the CPU shows hardware virtualisation. Kept apart
/// from reading `/sys` and `/proc` so the decision is testable with any facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvmHost {
    /// `/sys/module/kvm_pvm` exists: KVM for PVM guests, without hardware support.
    pub kvm_pvm: bool,
    /// `/sys/module/kvm_intel` exists (VT-x KVM; present when built in, too).
    pub kvm_intel: bool,
    /// `/sys/module/kvm_amd` exists (AMD-V KVM).
    pub kvm_amd: bool,
    /// `/proc/cpuinfo` lists `vmx` or `svm` among the CPU flags.
    pub virt_flag: bool,
}

impl KvmHost {
    /// The facts of this host.
    pub fn this_host() -> KvmHost {
        let module = |m: &str| Path::new("/sys/module").join(m).exists();
        KvmHost {
            kvm_pvm: module("kvm_pvm"),
            kvm_intel: module("kvm_intel"),
            kvm_amd: module("kvm_amd"),
            virt_flag: std::fs::read_to_string("/proc/cpuinfo")
                .is_ok_and(|c| cpuinfo_has_virt_flag(&c)),
        }
    }

    /// Why KVM with these facts cannot run a normal guest, or `None`.
    pub fn unusable(&self) -> Option<String> {
        if self.kvm_pvm && !self.kvm_intel && !self.kvm_amd {
            return Some(
                "/dev/kvm is a PVM-only KVM (kvm_pvm is loaded, neither kvm_intel nor \
                 kvm_amd): cloud-hypervisor creates the VM, but a normal guest kernel \
                 makes no progress"
                    .into(),
            );
        }
        if !self.virt_flag {
            return Some(
                "the CPU shows no hardware virtualisation (no vmx or svm flag in \
                 /proc/cpuinfo): /dev/kvm here cannot run a normal guest"
                    .into(),
            );
        }
        None
    }
}

/// Whether a `/proc/cpuinfo` text lists `vmx` (Intel VT-x) or `svm` (AMD-V) among a
/// CPU's flags.
pub fn cpuinfo_has_virt_flag(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim() == "flags")
        .any(|(_, v)| v.split_whitespace().any(|f| f == "vmx" || f == "svm"))
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

    /// A PVM-only KVM, or a CPU without vmx/svm, cannot run a normal guest, and the
    /// reason says which; hardware KVM with the flag can.
    #[test]
    fn a_pvm_only_or_flagless_kvm_is_unusable_for_a_normal_guest() {
        let hardware = KvmHost {
            kvm_pvm: false,
            kvm_intel: true,
            kvm_amd: false,
            virt_flag: true,
        };
        assert_eq!(hardware.unusable(), None);
        let amd = KvmHost {
            kvm_intel: false,
            kvm_amd: true,
            ..hardware
        };
        assert_eq!(amd.unusable(), None);
        // Both KVMs loaded: the hardware one serves normal guests.
        let both = KvmHost {
            kvm_pvm: true,
            ..hardware
        };
        assert_eq!(both.unusable(), None);
        // These machines: kvm_pvm only, no vmx/svm.
        let pvm_only = KvmHost {
            kvm_pvm: true,
            kvm_intel: false,
            kvm_amd: false,
            virt_flag: false,
        };
        let why = pvm_only.unusable().expect("PVM-only KVM is unusable");
        assert!(why.contains("PVM-only") && why.contains("kvm_pvm"), "{why}");
        // No flag, whatever the modules claim.
        let flagless = KvmHost {
            virt_flag: false,
            ..hardware
        };
        let why = flagless.unusable().expect("no vmx/svm is unusable");
        assert!(why.contains("vmx") && why.contains("svm"), "{why}");
    }

    #[test]
    fn cpu_flags_are_read_from_the_flags_lines_only() {
        let intel = "processor\t: 0\nflags\t\t: fpu vme vmx sse2\nbugs\t\t: spectre_v1\n";
        assert!(cpuinfo_has_virt_flag(intel));
        assert!(cpuinfo_has_virt_flag("flags : fpu svm\n"));
        // A flag that merely contains the letters, or a non-flags field, does not count.
        assert!(!cpuinfo_has_virt_flag(
            "flags\t\t: fpu vmx_ept avx\nvmx flags\t: ept vpid\nmodel name : svm box\n"
        ));
        assert!(!cpuinfo_has_virt_flag(""));
    }
}
