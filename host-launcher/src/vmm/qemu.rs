//! The QEMU backend: `-M microvm` (TCG here; KVM only when a probe boot proves it works,
//! in a later step), a fresh vhost-device-vsock per VM for hybrid vsock, no network
//! device, `-nodefaults`, the serial console captured to a per-VM log.
//!
//! Every helper is a child of the launcher that dies with it (`PR_SET_PDEATHSIG`); on
//! destroy (or drop) all are killed and reaped and the per-VM directory is removed.

use super::{VmSpec, VmmError};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The programs this backend runs.
#[derive(Debug, Clone)]
pub struct QemuTools {
    /// `qemu-system-x86_64`.
    pub qemu: PathBuf,
    /// `vhost-device-vsock`.
    pub vhost_device_vsock: PathBuf,
}

/// A booted (or booting) VM and its helpers.
#[derive(Debug)]
pub struct QemuVm {
    dir: Option<tempfile::TempDir>,
    vsock_uds: PathBuf,
    serial_log: PathBuf,
    qemu: Option<Child>,
    vsock_daemon: Option<Child>,
}

fn dies_with_us(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl with integer arguments between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd
}

fn spawn(cmd: &mut Command, what: &str) -> Result<Child, VmmError> {
    dies_with_us(cmd).spawn().map_err(|e| VmmError::Spawn {
        what: what.to_string(),
        source: e,
    })
}

/// Waits until `path` exists (a daemon's socket), at most `timeout`.
fn wait_for_path(
    path: &Path,
    timeout: Duration,
    child: &mut Child,
    what: &str,
) -> Result<(), VmmError> {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        if let Ok(Some(st)) = child.try_wait() {
            return Err(VmmError::HelperDied {
                what: what.to_string(),
                status: st.to_string(),
            });
        }
        if Instant::now() > deadline {
            return Err(VmmError::HelperTimeout {
                what: what.to_string(),
                path: path.to_path_buf(),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// The QEMU command line for `spec` (separate so it can be checked without a VM).
pub fn qemu_args(spec: &VmSpec, vhost_socket: &Path, serial_log: &Path) -> Vec<String> {
    let mem = format!("{}M", spec.memory_mib);
    vec![
        "-M".into(),
        "microvm,memory-backend=mem".into(),
        "-smp".into(),
        spec.vcpus.to_string(),
        "-m".into(),
        mem.clone(),
        // vhost-user devices need guest memory the daemon can map.
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={mem},share=on"),
        "-chardev".into(),
        format!("socket,id=vsock0,path={}", vhost_socket.display()),
        "-device".into(),
        "vhost-user-vsock-device,chardev=vsock0".into(),
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
    ]
}

impl QemuVm {
    /// Starts vhost-device-vsock and QEMU for `spec` in a fresh directory under
    /// `state_root`. Returns once QEMU runs (the guest is still booting).
    pub fn boot(spec: &VmSpec, tools: &QemuTools, state_root: &Path) -> Result<QemuVm, VmmError> {
        std::fs::create_dir_all(state_root).map_err(|e| VmmError::Io {
            path: state_root.to_path_buf(),
            source: e,
        })?;
        let dir = tempfile::Builder::new()
            .prefix("vm-")
            .tempdir_in(state_root)
            .map_err(|e| VmmError::Io {
                path: state_root.to_path_buf(),
                source: e,
            })?;
        let vhost_socket = dir.path().join("vhost-vsock.sock");
        let vsock_uds = dir.path().join("vsock");
        let serial_log = dir.path().join("serial.log");
        let mut vm = QemuVm {
            dir: Some(dir),
            vsock_uds: vsock_uds.clone(),
            serial_log: serial_log.clone(),
            qemu: None,
            vsock_daemon: None,
        };
        let daemon_log = vm.dir().join("vhost-device-vsock.log");
        let log = std::fs::File::create(&daemon_log).map_err(|e| VmmError::Io {
            path: daemon_log.clone(),
            source: e,
        })?;
        let mut daemon = spawn(
            Command::new(&tools.vhost_device_vsock)
                .arg(format!("--guest-cid={}", spec.cid))
                .arg(format!("--socket={}", vhost_socket.display()))
                .arg(format!("--uds-path={}", vsock_uds.display()))
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(|e| VmmError::Io {
                    path: daemon_log.clone(),
                    source: e,
                })?)
                .stderr(log),
            "vhost-device-vsock",
        )?;
        let ready = wait_for_path(
            &vhost_socket,
            Duration::from_secs(10),
            &mut daemon,
            "vhost-device-vsock",
        );
        vm.vsock_daemon = Some(daemon);
        ready?;
        vm.qemu = Some(spawn(
            Command::new(&tools.qemu)
                .args(qemu_args(spec, &vhost_socket, &serial_log))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
            "qemu-system-x86_64",
        )?);
        Ok(vm)
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().expect("dir lives until destroy").path()
    }

    /// The hybrid vsock socket (host side of the guest's vsock).
    pub fn vsock_uds(&self) -> &Path {
        &self.vsock_uds
    }

    /// Where the guest's console goes.
    pub fn serial_log(&self) -> &Path {
        &self.serial_log
    }

    /// The console so far.
    pub fn serial_output(&self) -> String {
        std::fs::read_to_string(&self.serial_log).unwrap_or_default()
    }

    /// Pids of QEMU and its helpers (for tests that check they are reaped).
    pub fn pids(&self) -> Vec<u32> {
        self.qemu
            .iter()
            .chain(self.vsock_daemon.iter())
            .map(Child::id)
            .collect()
    }

    /// The per-VM directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir().to_path_buf()
    }

    /// Waits up to `timeout` for QEMU to exit on its own (the guest powered off).
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let qemu = self.qemu.as_mut()?;
        loop {
            if let Ok(Some(st)) = qemu.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills QEMU and every helper, reaps them and removes the per-VM directory.
    pub fn destroy(mut self) -> Result<(), VmmError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), VmmError> {
        for child in [self.qemu.take(), self.vsock_daemon.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_path_buf();
            dir.close().map_err(|e| VmmError::Io { path, source: e })?;
        }
        Ok(())
    }
}

impl Drop for QemuVm {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}
