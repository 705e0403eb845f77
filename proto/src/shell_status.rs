//! How a command ended, as the one number a shell reports: its exit code, 128 + the
//! signal that killed it, [`EXIT_WALL_TIME`] when the sandbox stopped it for running out
//! of time. The launcher and the enforcer (in the VM, in process isolation and in the
//! shim) all report a command's end this way, so `airlock run`'s status means the same
//! whichever side computed it.

/// Exit status when the wall-time limit stopped the command (as `timeout` uses).
pub const EXIT_WALL_TIME: i32 = 124;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessEnd {
    /// Exited with this code.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
    /// Killed because its wall time ran out.
    WallTimeExceeded,
}

impl ProcessEnd {
    /// The exit status a shell would report: the code, 128 + signal, or
    /// [`EXIT_WALL_TIME`] on timeout.
    pub fn exit_code(self) -> i32 {
        match self {
            ProcessEnd::Exited(c) => c,
            ProcessEnd::Signaled(s) => s.saturating_add(128),
            ProcessEnd::WallTimeExceeded => EXIT_WALL_TIME,
        }
    }

    /// The end a `waitpid` status describes: killed by a signal, else exited.
    pub fn from_wait_status(status: libc::c_int) -> ProcessEnd {
        if libc::WIFSIGNALED(status) {
            ProcessEnd::Signaled(libc::WTERMSIG(status))
        } else {
            ProcessEnd::Exited(libc::WEXITSTATUS(status))
        }
    }
}

impl From<std::process::ExitStatus> for ProcessEnd {
    /// An exit code if there is one, else the signal (0 for a status that names
    /// neither, which `wait` never returns).
    fn from(status: std::process::ExitStatus) -> ProcessEnd {
        use std::os::unix::process::ExitStatusExt;
        match status.code() {
            Some(c) => ProcessEnd::Exited(c),
            None => ProcessEnd::Signaled(status.signal().unwrap_or(0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn codes_are_what_a_shell_reports() {
        assert_eq!(ProcessEnd::Exited(3).exit_code(), 3);
        assert_eq!(ProcessEnd::Signaled(libc::SIGKILL).exit_code(), 137);
        assert_eq!(ProcessEnd::WallTimeExceeded.exit_code(), 124);
        // A signal number from the wire cannot overflow it.
        assert_eq!(ProcessEnd::Signaled(i32::MAX).exit_code(), i32::MAX);
    }

    #[test]
    fn wait_statuses_and_exit_statuses_agree() {
        // Raw wait statuses: exit code in bits 8..16, terminating signal in 0..7.
        for (raw, end) in [
            (0, ProcessEnd::Exited(0)),
            (7 << 8, ProcessEnd::Exited(7)),
            (libc::SIGTERM, ProcessEnd::Signaled(libc::SIGTERM)),
            (libc::SIGSEGV | 0x80, ProcessEnd::Signaled(libc::SIGSEGV)),
        ] {
            assert_eq!(ProcessEnd::from_wait_status(raw), end, "{raw:#x}");
            let status = std::process::ExitStatus::from_raw(raw);
            assert_eq!(ProcessEnd::from(status), end, "{raw:#x}");
        }
    }
}
