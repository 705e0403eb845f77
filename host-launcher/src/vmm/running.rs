//! A running VM, whatever its VMM: its directory, its helpers (the VMM last) and the
//! listeners for the guest's host ports. Both backends hand back this one type.

use super::helpers::{take_listener, Helpers};
use super::{Vm, VmmError};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

/// A VM's processes and files. Dropping it destroys it.
#[derive(Debug)]
pub struct RunningVm {
    // Field order is drop order: helpers die before the directory goes.
    pub(super) helpers: Helpers,
    pub(super) host_listeners: Vec<(u32, UnixListener)>,
    vmm: &'static str,
    vsock_uds: PathBuf,
    serial_log: PathBuf,
    dir_path: PathBuf,
    dir: Option<tempfile::TempDir>,
}

impl RunningVm {
    /// A VM about to be started by `vmm` in `dir`: the hybrid vsock socket is
    /// `dir/vsock` and the console `dir/serial.log`.
    pub(super) fn new(vmm: &'static str, dir: tempfile::TempDir) -> RunningVm {
        let d = dir.path().to_path_buf();
        RunningVm {
            helpers: Helpers::recorded_in(&d),
            host_listeners: Vec::new(),
            vmm,
            vsock_uds: d.join("vsock"),
            serial_log: d.join("serial.log"),
            dir_path: d,
            dir: Some(dir),
        }
    }

    fn teardown(&mut self) -> Result<(), VmmError> {
        self.helpers.kill_all();
        self.host_listeners.clear();
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_path_buf();
            dir.close().map_err(|e| VmmError::Io { path, source: e })?;
        }
        Ok(())
    }
}

impl Vm for RunningVm {
    fn vsock_uds(&self) -> &Path {
        &self.vsock_uds
    }

    fn serial_log(&self) -> &Path {
        &self.serial_log
    }

    fn state_dir(&self) -> &Path {
        &self.dir_path
    }

    fn pids(&self) -> Vec<u32> {
        self.helpers.pids()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.helpers.get_mut(self.vmm)?.try_wait().ok().flatten()
    }

    fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.exited() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn take_host_listener(&mut self, port: u32) -> Option<UnixListener> {
        take_listener(&mut self.host_listeners, port)
    }

    fn destroy(mut self: Box<Self>) -> Result<(), VmmError> {
        self.teardown()
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}
