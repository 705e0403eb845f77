//! Helper processes of a VM (the VMM itself, vhost-device-vsock, virtiofsd): started so
//! that they die with the launcher, recorded in the VM directory so a launcher that
//! restarts after a crash can find any that survived, and reaped on destroy.
//!
//! Each is forked by [`crate::dies_with_launcher`]'s long-lived spawner thread (with
//! `SIGKILL` as its death signal), never by the thread that asked: `PR_SET_PDEATHSIG`
//! fires when the *thread* that forked the child exits.

use super::VmmError;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The file in a VM directory listing its helpers: `pid start-time name` per line.
pub const HELPERS_FILE: &str = "helpers";

/// Starts `cmd` with `PR_SET_PDEATHSIG(SIGKILL)` through [`crate::dies_with_launcher`].
pub fn spawn_dies_with_launcher(cmd: Command, what: &str) -> Result<Child, VmmError> {
    crate::dies_with_launcher::spawn(cmd, libc::SIGKILL).map_err(|e| VmmError::Spawn {
        what: what.to_string(),
        source: e,
    })
}

/// Field 22 of `/proc/<pid>/stat`: when the process started, in clock ticks since
/// boot. With the pid it names one process even after pids are reused.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is parenthesised and may contain spaces.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// The helpers of one VM, in start order; killed and reaped in reverse.
#[derive(Debug, Default)]
pub struct Helpers {
    children: Vec<(String, Child)>,
    record: Option<PathBuf>,
}

impl Helpers {
    /// Helpers recorded in `vm_dir`'s [`HELPERS_FILE`].
    pub fn recorded_in(vm_dir: &Path) -> Helpers {
        Helpers {
            children: Vec::new(),
            record: Some(vm_dir.join(HELPERS_FILE)),
        }
    }

    /// Starts `cmd` as a helper named `what` and records it.
    pub fn start(&mut self, cmd: Command, what: &str) -> Result<&mut Child, VmmError> {
        let child = spawn_dies_with_launcher(cmd, what)?;
        let pid = child.id();
        self.children.push((what.to_string(), child));
        if let Some(record) = &self.record {
            use std::io::Write;
            let line = format!("{pid} {} {what}\n", process_start_time(pid).unwrap_or(0));
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(record)
                .and_then(|mut f| f.write_all(line.as_bytes()))
                .map_err(|e| VmmError::Io {
                    path: record.clone(),
                    source: e,
                })?;
        }
        Ok(&mut self.children.last_mut().expect("just pushed").1)
    }

    /// The helper named `what`.
    pub fn get_mut(&mut self, what: &str) -> Option<&mut Child> {
        self.children
            .iter_mut()
            .find(|(n, _)| n == what)
            .map(|(_, c)| c)
    }

    /// Pids, in start order.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|(_, c)| c.id()).collect()
    }

    /// Kills and reaps every helper, last started first.
    pub fn kill_all(&mut self) {
        while let Some((_, mut child)) = self.children.pop() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Helpers {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Waits until `path` exists (a daemon's socket), at most `timeout`, failing early
/// when the daemon exits.
pub fn wait_for_socket(
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

/// Listeners for the guest's connections to host `ports`: hybrid vsock forwards a
/// guest connection to CID 2 port N to the Unix socket `<vsock_uds>_N`.
pub fn bind_host_listeners(
    vsock_uds: &Path,
    ports: &[u32],
) -> Result<Vec<(u32, std::os::unix::net::UnixListener)>, VmmError> {
    ports
        .iter()
        .map(|&port| {
            let path = PathBuf::from(format!("{}_{port}", vsock_uds.display()));
            std::os::unix::net::UnixListener::bind(&path)
                .map(|l| (port, l))
                .map_err(|e| VmmError::Io { path, source: e })
        })
        .collect()
}

/// Takes the listener for `port` out of `listeners`.
pub fn take_listener(
    listeners: &mut Vec<(u32, std::os::unix::net::UnixListener)>,
    port: u32,
) -> Option<std::os::unix::net::UnixListener> {
    let at = listeners.iter().position(|(p, _)| *p == port)?;
    Some(listeners.swap_remove(at).1)
}

/// A log file for a helper's stdout and stderr in the VM directory.
pub fn log_to(cmd: &mut Command, log: &Path) -> Result<(), VmmError> {
    let io = |e| VmmError::Io {
        path: log.to_path_buf(),
        source: e,
    };
    let f = std::fs::File::create(log).map_err(io)?;
    cmd.stdin(std::process::Stdio::null())
        .stdout(f.try_clone().map_err(io)?)
        .stderr(f);
    Ok(())
}

/// Starts one virtiofsd per share of `spec` in `vm_dir`, waiting for each socket;
/// returns the sockets in share order.
pub fn start_virtiofsd(
    helpers: &mut Helpers,
    binary: &Path,
    spec: &super::VmSpec,
    vm_dir: &Path,
) -> Result<Vec<PathBuf>, VmmError> {
    let mut sockets = Vec::new();
    for share in &spec.shares {
        let socket = vm_dir.join(format!("virtiofsd-{}.sock", share.tag));
        let mut cmd = virtiofsd_command(binary, share, &socket);
        log_to(
            &mut cmd,
            &vm_dir.join(format!("virtiofsd-{}.log", share.tag)),
        )?;
        let what = format!("virtiofsd ({})", share.tag);
        let child = helpers.start(cmd, &what)?;
        wait_for_socket(&socket, Duration::from_secs(10), child, &what)?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// How many ids lie above the agent's (virtiofsd ranges must not overlap or overflow).
const ABOVE_AGENT: u32 = u32::MAX - super::GUEST_AGENT_ID - 1;

/// The virtiofsd command for `share` on `socket`. Read-only shares are read-only in
/// virtiofsd itself (`--readonly`): the host refuses writes even if the guest kernel
/// were subverted. The agent's uid/gid map to the directory's owner; every other guest
/// id is refused for new files, so nothing lands on the host owned by root.
pub fn virtiofsd_command(binary: &Path, share: &super::Share, socket: &Path) -> Command {
    let (uid, gid) = share.owner;
    let agent = super::GUEST_AGENT_ID;
    let mut cmd = Command::new(binary);
    cmd.arg(format!("--socket-path={}", socket.display()))
        .arg(format!("--shared-dir={}", share.host_dir.display()))
        .arg(format!("--tag={}", share.tag))
        .arg("--sandbox=namespace")
        .arg("--cache=auto")
        .arg("--log-level=warn")
        .arg(format!("--translate-uid=map:{agent}:{uid}:1"))
        .arg(format!("--translate-gid=map:{agent}:{gid}:1"))
        .arg(format!("--translate-uid=forbid-guest:0:{agent}"))
        .arg(format!("--translate-gid=forbid-guest:0:{agent}"))
        .arg(format!(
            "--translate-uid=forbid-guest:{}:{ABOVE_AGENT}",
            agent + 1
        ))
        .arg(format!(
            "--translate-gid=forbid-guest:{}:{ABOVE_AGENT}",
            agent + 1
        ));
    if share.read_only {
        cmd.arg("--readonly");
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtiofsd_maps_the_agent_to_the_owner_and_enforces_read_only() {
        let share = crate::vmm::Share {
            tag: "m0".into(),
            host_dir: PathBuf::from("/srv/repo"),
            read_only: true,
            owner: (501, 20),
        };
        let cmd = virtiofsd_command(Path::new("/bin/virtiofsd"), &share, Path::new("/d/fs.sock"));
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        for want in [
            "--socket-path=/d/fs.sock",
            "--shared-dir=/srv/repo",
            "--tag=m0",
            "--sandbox=namespace",
            "--translate-uid=map:1000:501:1",
            "--translate-gid=map:1000:20:1",
            "--translate-uid=forbid-guest:0:1000",
            "--readonly",
        ] {
            assert!(
                args.iter().any(|a| a == want),
                "{want} missing from {args:?}"
            );
        }
        let rw = crate::vmm::Share {
            read_only: false,
            ..share
        };
        let cmd = virtiofsd_command(Path::new("/bin/virtiofsd"), &rw, Path::new("/d/fs.sock"));
        assert!(!cmd.get_args().any(|a| a == "--readonly"));
    }

    #[test]
    fn start_time_names_this_process() {
        let me = std::process::id();
        let mine = process_start_time(me).expect("our own start time");
        // Start times count clock ticks since boot. Wait several ticks (at least 50 ms)
        // so a child started now must carry a strictly later start time: a parser that
        // read the wrong field (or a constant) would not see it grow.
        // SAFETY: sysconf takes an integer and has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let hz = u64::try_from(hz).ok().filter(|&hz| hz > 0).unwrap_or(100);
        let wait = Duration::from_millis((5_000 / hz).max(50));
        std::thread::sleep(wait);
        let mut child = Command::new("sleep").arg("5").spawn().unwrap();
        let theirs = process_start_time(child.id()).expect("the child's start time");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            theirs > mine,
            "child started at tick {theirs}, not after us at tick {mine} ({hz} Hz, waited {wait:?})"
        );
        // A pid that does not exist has no start time.
        assert_eq!(process_start_time(u32::MAX), None);
    }

    #[test]
    fn a_helper_started_from_a_short_lived_thread_outlives_that_thread() {
        let child = std::thread::spawn(|| {
            let mut cmd = Command::new("sleep");
            cmd.arg("30");
            spawn_dies_with_launcher(cmd, "sleep").unwrap()
        })
        .join()
        .unwrap();
        // The forking thread (the spawner) is still alive, so no death signal came.
        std::thread::sleep(Duration::from_millis(200));
        let mut child = child;
        assert!(
            child.try_wait().unwrap().is_none(),
            "the helper died with its requesting thread"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
