//! Child processes that die with the launcher: every VM helper (the VMM,
//! vhost-device-vsock, virtiofsd) and the process-isolation enforcer.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the
//! process. A launcher embedded in a tokio program forks from whatever thread it runs
//! on, and tokio retires idle blocking threads after a few seconds, which would kill a
//! healthy child. So every such child is forked by one spawner thread that lives as long
//! as the process.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

type SpawnJob = (Command, mpsc::Sender<std::io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<SpawnJob>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("airlock-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("the spawner thread starts");
        Mutex::new(tx)
    })
}

/// Starts `cmd` from the long-lived spawner thread with `PR_SET_PDEATHSIG(death_signal)`:
/// the child gets `death_signal` when the launcher process exits, and not before. A
/// child that must clean up after itself (the enforcer: its sandbox and cgroup) asks
/// for `SIGTERM`; one with nothing to leave behind, `SIGKILL`. `cmd`'s own `pre_exec`
/// hooks run first.
pub fn spawn(mut cmd: Command, death_signal: libc::c_int) -> std::io::Result<Child> {
    let launcher = std::process::id() as libc::pid_t;
    // SAFETY: prctl/getppid with integer arguments between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, death_signal) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The launcher may have died between fork and prctl: then the parent is
            // whoever reaped us (init or a subreaper), not the launcher.
            if libc::getppid() != launcher {
                return Err(std::io::Error::other("the launcher exited"));
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    let sent = spawner()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((cmd, tx));
    match sent {
        Ok(()) => rx
            .recv()
            .unwrap_or_else(|_| Err(std::io::Error::other("the spawner thread is gone"))),
        Err(_) => Err(std::io::Error::other("the spawner thread is gone")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_child_started_from_a_short_lived_thread_outlives_that_thread() {
        for signal in [libc::SIGTERM, libc::SIGKILL] {
            let child = std::thread::spawn(move || {
                let mut cmd = Command::new("sleep");
                cmd.arg("30");
                spawn(cmd, signal).unwrap()
            })
            .join()
            .unwrap();
            // The forking thread (the spawner) is still alive, so no death signal came.
            std::thread::sleep(Duration::from_millis(200));
            let mut child = child;
            assert!(
                child.try_wait().unwrap().is_none(),
                "the child died with its requesting thread (death signal {signal})"
            );
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    #[test]
    fn the_callers_pre_exec_hooks_still_run() {
        let (mut r, w) = std::io::pipe().unwrap();
        let mut cmd = Command::new("sh");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&w);
        // Onto fd 3 (dash takes single-digit fds only, and tests run in parallel
        // threads, so the pipe's own number may be anything); dup2's copy is not
        // close-on-exec, so only the hook having run lets `sh` write to it.
        cmd.args(["-c", "echo ok >&3"]);
        // SAFETY: dup2 with integer arguments between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(fd, 3) != 3 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = spawn(cmd, libc::SIGTERM).unwrap();
        drop(w);
        let mut got = String::new();
        std::io::Read::read_to_string(&mut r, &mut got).unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(got, "ok\n");
    }
}
