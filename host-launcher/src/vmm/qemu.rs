//! The QEMU backend: `-M microvm`, KVM only when a probe boot proved it works (else
//! TCG), a fresh vhost-device-vsock per VM for hybrid vsock, one virtiofsd per shared
//! directory, the root filesystem (if any) as a read-only virtio-blk disk, no network
//! device, `-nodefaults`, the serial console captured to a per-VM log.

use super::helpers::{bind_host_listeners, log_to, start_virtiofsd, wait_for_socket};
use super::running::RunningVm;
use super::state_dir::create_vm_dir;
use super::{Vm, VmSpec, Vmm, VmmError};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The programs this backend runs.
#[derive(Debug, Clone)]
pub struct QemuTools {
    /// `qemu-system-x86_64`.
    pub qemu: PathBuf,
    /// `vhost-device-vsock`.
    pub vhost_device_vsock: PathBuf,
    /// `virtiofsd` (needed only for VMs with shares).
    pub virtiofsd: PathBuf,
}

/// How QEMU runs the guest's CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Software emulation: works everywhere, slower.
    Tcg,
    /// Hardware virtualisation (only after a probe boot proved it works).
    Kvm,
}

/// The QEMU backend.
#[derive(Debug, Clone)]
pub struct Qemu {
    /// Programs.
    pub tools: QemuTools,
    /// CPU mode.
    pub accel: Accel,
}

const QEMU: &str = "qemu-system-x86_64";
const VSOCK_DAEMON: &str = "vhost-device-vsock";

/// The QEMU command line for `spec` (separate so it can be checked without a VM).
/// `fs_sockets` are the virtiofsd sockets, one per share, in share order.
pub fn qemu_args(
    spec: &VmSpec,
    accel: Accel,
    vhost_socket: &Path,
    fs_sockets: &[PathBuf],
    serial_log: &Path,
) -> Vec<String> {
    let mem = format!("{}M", spec.memory_mib);
    let mut args: Vec<String> = vec![
        "-M".into(),
        "microvm,memory-backend=mem".into(),
        "-accel".into(),
        match accel {
            Accel::Tcg => "tcg".into(),
            Accel::Kvm => "kvm".into(),
        },
    ];
    // `max` under TCG emulates RDRAND, so the guest kernel seeds its CRNG at boot
    // instead of blocking the enforcer's first getrandom (the Hello challenge) for
    // about a second; under KVM the host CPU's own.
    args.extend([
        "-cpu".into(),
        match accel {
            Accel::Tcg => "max".into(),
            Accel::Kvm => "host".into(),
        },
    ]);
    args.extend([
        "-smp".into(),
        spec.vcpus.to_string(),
        "-m".into(),
        mem.clone(),
        // vhost-user devices need guest memory the daemons can map.
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={mem},share=on"),
        "-chardev".into(),
        format!("socket,id=vsock0,path={}", vhost_socket.display()),
        "-device".into(),
        "vhost-user-vsock-device,chardev=vsock0".into(),
    ]);
    for (i, (share, socket)) in spec.shares.iter().zip(fs_sockets).enumerate() {
        args.extend([
            "-chardev".into(),
            format!("socket,id=fs{i},path={}", socket.display()),
            "-device".into(),
            format!("vhost-user-fs-device,chardev=fs{i},tag={}", share.tag),
        ]);
    }
    if let Some(rootfs) = &spec.rootfs {
        args.extend([
            "-drive".into(),
            format!(
                "file={},if=none,id=root,format=raw,readonly=on",
                rootfs.display()
            ),
            "-device".into(),
            "virtio-blk-device,drive=root".into(),
        ]);
    }
    args.extend([
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-nographic".into(),
        "-no-reboot".into(),
        "-serial".into(),
        format!("file:{}", serial_log.display()),
        "-kernel".into(),
        spec.kernel.display().to_string(),
        "-initrd".into(),
        spec.initrd.display().to_string(),
        "-append".into(),
        spec.kernel_cmdline(),
    ]);
    args
}

impl Qemu {
    /// QEMU with TCG.
    pub fn tcg(tools: QemuTools) -> Qemu {
        Qemu {
            tools,
            accel: Accel::Tcg,
        }
    }
}

use airlock_proto::ENFORCER_LISTENING_LINE as ENFORCER_LISTENING;

/// Whether KVM can run `spec`'s guest: `/dev/kvm` must open *and* a probe boot with
/// `-accel kvm` must reach the enforcer within `timeout` (a nested or PVM-only KVM
/// opens fine and then hangs a normal guest). The answer is cached in `cache_file`
/// for this host boot (`/proc/sys/kernel/random/boot_id`), so only the first launcher
/// after a reboot pays for the probe.
pub fn probe_kvm(
    tools: &QemuTools,
    spec: &VmSpec,
    state_root: &Path,
    cache_file: &Path,
    timeout: Duration,
) -> KvmProbe {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let key = format!("{} {}", boot_id.trim(), tools.qemu.display());
    if let Ok(cached) = std::fs::read_to_string(cache_file) {
        if let Some((k, verdict)) = cached.split_once('\n') {
            if k == key {
                let accel = if verdict.starts_with("kvm") {
                    Accel::Kvm
                } else {
                    Accel::Tcg
                };
                return KvmProbe {
                    accel,
                    why: verdict.trim().to_string(),
                    cached: true,
                };
            }
        }
    }
    let (accel, why) = probe_kvm_uncached(tools, spec, state_root, timeout);
    let verdict = match accel {
        Accel::Kvm => format!("kvm: {why}"),
        Accel::Tcg => format!("tcg: {why}"),
    };
    if let Some(dir) = cache_file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(cache_file, format!("{key}\n{verdict}\n"));
    KvmProbe {
        accel,
        why: verdict,
        cached: false,
    }
}

/// What [`probe_kvm`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmProbe {
    /// The mode to run guests in.
    pub accel: Accel,
    /// Why (`kvm: …` or `tcg: …`).
    pub why: String,
    /// Whether the answer came from this boot's cache rather than a probe now.
    pub cached: bool,
}

impl KvmProbe {
    /// One plain sentence for the user when KVM is unusable and this launcher just
    /// found out (a cached answer was said before, once per host boot); `None`
    /// otherwise.
    pub fn news(&self) -> Option<String> {
        if self.cached || self.accel == Accel::Kvm {
            return None;
        }
        let why = self.why.strip_prefix("tcg: ").unwrap_or(&self.why);
        Some(format!(
            "KVM cannot run guests on this host ({why}), so VMs run under QEMU's software emulation (TCG): slower, and as isolated. Checked once per host boot."
        ))
    }
}

fn probe_kvm_uncached(
    tools: &QemuTools,
    spec: &VmSpec,
    state_root: &Path,
    timeout: Duration,
) -> (Accel, String) {
    if let Err(why) = super::open_kvm() {
        return (Accel::Tcg, why);
    }
    let probe = Qemu {
        tools: tools.clone(),
        accel: Accel::Kvm,
    };
    let mut spec = spec.clone();
    spec.shares.clear();
    let mut vm = match probe.boot_vm(&spec, state_root) {
        Ok(vm) => vm,
        Err(e) => {
            return (
                Accel::Tcg,
                format!("the KVM probe boot failed to start: {e}"),
            )
        }
    };
    let deadline = Instant::now() + timeout;
    loop {
        if vm.serial_output().contains(ENFORCER_LISTENING) {
            return (
                Accel::Kvm,
                "a probe boot under KVM reached the enforcer".into(),
            );
        }
        if let Some(st) = vm.exited() {
            return (Accel::Tcg, format!("QEMU with -accel kvm exited ({st})"));
        }
        if Instant::now() > deadline {
            return (
                Accel::Tcg,
                format!(
                    "a probe boot under KVM did not reach the enforcer within {} s",
                    timeout.as_secs()
                ),
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Vmm for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn boot(&self, spec: &VmSpec, state_root: &Path) -> Result<Box<dyn Vm>, VmmError> {
        Ok(Box::new(self.boot_vm(spec, state_root)?))
    }
}

impl Qemu {
    /// Starts the helpers and QEMU for `spec` in a fresh directory under `state_root`.
    /// Returns once QEMU runs (the guest is still booting).
    pub fn boot_vm(&self, spec: &VmSpec, state_root: &Path) -> Result<RunningVm, VmmError> {
        let mut vm = RunningVm::new(QEMU, create_vm_dir(state_root)?);
        let d = vm.state_dir().to_path_buf();
        vm.host_listeners = bind_host_listeners(vm.vsock_uds(), &spec.host_ports)?;
        let tools = &self.tools;
        let vhost_socket = d.join("vhost-vsock.sock");
        let mut daemon = Command::new(&tools.vhost_device_vsock);
        daemon
            .arg(format!("--guest-cid={}", spec.cid))
            .arg(format!("--socket={}", vhost_socket.display()))
            .arg(format!("--uds-path={}", vm.vsock_uds().display()));
        log_to(&mut daemon, &d.join("vhost-device-vsock.log"))?;
        let child = vm.helpers.start(daemon, VSOCK_DAEMON)?;
        wait_for_socket(&vhost_socket, Duration::from_secs(10), child, VSOCK_DAEMON)?;
        let fs_sockets = start_virtiofsd(&mut vm.helpers, &tools.virtiofsd, spec, &d)?;
        let mut qemu = Command::new(&tools.qemu);
        qemu.args(qemu_args(
            spec,
            self.accel,
            &vhost_socket,
            &fs_sockets,
            vm.serial_log(),
        ));
        log_to(&mut qemu, &d.join("qemu.log"))?;
        qemu.stdin(Stdio::null());
        vm.helpers.start(qemu, QEMU)?;
        Ok(vm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::Share;

    #[test]
    fn an_unusable_kvm_is_said_once_per_boot_in_plain_words() {
        let fresh = KvmProbe {
            accel: Accel::Tcg,
            why: "tcg: QEMU with -accel kvm exited (signal: 6 (SIGABRT))".into(),
            cached: false,
        };
        let news = fresh.news().expect("said when first found");
        assert!(
            news.starts_with("KVM cannot run guests on this host (QEMU with -accel kvm exited")
                && news.contains("(TCG)"),
            "{news}"
        );
        assert_eq!(
            KvmProbe {
                cached: true,
                ..fresh.clone()
            }
            .news(),
            None,
            "a cached answer was said before"
        );
        assert_eq!(
            KvmProbe {
                accel: Accel::Kvm,
                why: "kvm: a probe boot under KVM reached the enforcer".into(),
                cached: false,
            }
            .news(),
            None
        );
    }

    fn spec() -> VmSpec {
        VmSpec {
            kernel: "/i/vmlinuz".into(),
            initrd: "/i/initramfs.cpio.gz".into(),
            cmdline: "console=ttyS0".into(),
            cid: 7,
            vcpus: 2,
            memory_mib: 512,
            rootfs: Some("/i/rootfs.erofs".into()),
            vmlinux: "/i/vmlinux".into(),
            host_ports: vec![],
            shares: vec![Share {
                tag: "m0".into(),
                host_dir: "/srv/repo".into(),
                read_only: true,
                owner: (0, 0),
            }],
        }
    }

    fn joined(args: &[String]) -> String {
        args.join(" ")
    }

    #[test]
    fn the_command_line_has_no_network_and_shares_memory_with_the_daemons() {
        let a = qemu_args(
            &spec(),
            Accel::Tcg,
            Path::new("/d/vhost-vsock.sock"),
            &[PathBuf::from("/d/virtiofsd-m0.sock")],
            Path::new("/d/serial.log"),
        );
        let s = joined(&a);
        for want in [
            "-M microvm,memory-backend=mem",
            "-accel tcg -cpu max",
            "-smp 2 -m 512M",
            "memory-backend-memfd,id=mem,size=512M,share=on",
            "-chardev socket,id=vsock0,path=/d/vhost-vsock.sock -device vhost-user-vsock-device,chardev=vsock0",
            "-chardev socket,id=fs0,path=/d/virtiofsd-m0.sock -device vhost-user-fs-device,chardev=fs0,tag=m0",
            "-drive file=/i/rootfs.erofs,if=none,id=root,format=raw,readonly=on -device virtio-blk-device,drive=root",
            "-nodefaults",
            "-serial file:/d/serial.log",
            "-kernel /i/vmlinuz -initrd /i/initramfs.cpio.gz",
        ] {
            assert!(s.contains(want), "{want:?} missing from {s}");
        }
        assert!(!s.contains("-netdev") && !s.contains("-nic"), "{s}");
        assert!(!s.contains("-cpu host"), "{s}");
        let kvm = joined(&qemu_args(
            &spec(),
            Accel::Kvm,
            Path::new("/d/v"),
            &[PathBuf::from("/d/f")],
            Path::new("/d/s"),
        ));
        assert!(kvm.contains("-accel kvm -cpu host"), "{kvm}");
    }
}
