//! The layers together, in the enforcer's order: cgroup → rlimits → identity →
//! Landlock → seccomp. Used for the agent and, through the broker's [`ToolSandbox`] hook, for each
//! tool the broker runs.

use crate::broker::{PreparedToolSandbox, ToolSandbox};
use crate::cgroup::CgroupMembership;
use crate::identity::{AgentIdentity, PreparedIdentity};
use crate::landlock::{LandlockPolicy, PreparedLandlock};
use crate::limits::Rlimits;
use crate::seccomp::{
    compile_agent_filters, compile_tool_filters_running_no_program, AgentFilters,
};
use std::io;
use std::sync::Arc;

/// What to apply to a process. `None` skips a layer (tests; the VM applies all four).
#[derive(Debug, Clone, Default)]
pub struct Sandbox {
    /// The cgroup the process joins first (so everything after counts against it).
    pub cgroup: Option<Arc<CgroupMembership>>,
    /// rlimits.
    pub rlimits: Option<Rlimits>,
    /// Unprivileged identity.
    pub identity: Option<AgentIdentity>,
    /// Landlock rules.
    pub landlock: Option<LandlockPolicy>,
    /// Whether to install the agent's seccomp filter.
    pub seccomp: bool,
}

/// Why a sandbox could not be prepared. Nothing runs.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Identity.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// Landlock.
    #[error(transparent)]
    Landlock(#[from] crate::landlock::LandlockError),
    /// seccomp.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
}

/// A sandbox ready to apply between fork and exec.
#[derive(Debug)]
pub struct PreparedSandbox {
    cgroup: Option<Arc<CgroupMembership>>,
    rlimits: Option<Rlimits>,
    identity: Option<PreparedIdentity>,
    landlock: Option<PreparedLandlock>,
    seccomp: Option<AgentFilters>,
    /// A call that runs no program: the filter and where its listener goes.
    no_exec: Option<(crate::no_exec::NoExecFilter, std::os::fd::RawFd)>,
}

impl Sandbox {
    /// Prepares every layer; the first failure names the layer and the input.
    pub fn prepare(&self) -> Result<PreparedSandbox, SandboxError> {
        Ok(PreparedSandbox {
            cgroup: self.cgroup.clone(),
            rlimits: self.rlimits,
            identity: self
                .identity
                .as_ref()
                .map(AgentIdentity::prepare)
                .transpose()?,
            landlock: self
                .landlock
                .as_ref()
                .map(LandlockPolicy::prepare)
                .transpose()?,
            seccomp: self.seccomp.then(compile_agent_filters).transpose()?,
            no_exec: None,
        })
    }

    /// Prepares the layers for a tool call that may run no program after its binary:
    /// the agent's filter without its `execveat(AT_EMPTY_PATH)` entry (the no-exec
    /// filter allows exactly that exec, of `binary_fd`, and refuses every other).
    pub fn prepare_running_no_program(
        &self,
        binary_fd: std::os::fd::RawFd,
        report: std::os::fd::RawFd,
    ) -> Result<PreparedSandbox, SandboxError> {
        let mut prepared = self.prepare()?;
        if self.seccomp {
            prepared.seccomp = Some(compile_tool_filters_running_no_program()?);
        }
        prepared.no_exec = Some((
            crate::no_exec::NoExecFilter::allowing_only(binary_fd),
            report,
        ));
        Ok(prepared)
    }
}

impl PreparedSandbox {
    /// Applies the layers to the calling thread, in order. No allocation on success;
    /// errors are raw OS errors (`EPROTO` for a layer without one).
    pub fn apply_on_current_thread(&mut self) -> io::Result<()> {
        let proto = || io::Error::from_raw_os_error(libc::EPROTO);
        if let Some(c) = &self.cgroup {
            c.join_on_current_process()?;
        }
        if let Some(r) = &self.rlimits {
            r.apply_to_current_process()?;
        }
        if let Some(id) = &self.identity {
            id.drop_privileges_on_current_thread()?;
        }
        if let Some(ll) = self.landlock.take() {
            ll.restrict_current_thread().map_err(|_| proto())?;
        }
        if let Some(f) = &self.seccomp {
            f.install_on_current_thread().map_err(|_| proto())?;
        }
        if let Some((filter, report)) = &self.no_exec {
            filter.install_on_current_thread(*report)?;
        }
        Ok(())
    }
}

impl PreparedToolSandbox for PreparedSandbox {
    fn apply(&mut self) -> io::Result<()> {
        self.apply_on_current_thread()
    }
}

impl ToolSandbox for Sandbox {
    fn prepare(&self, _program: &str) -> io::Result<Box<dyn PreparedToolSandbox>> {
        Sandbox::prepare(self)
            .map(|p| Box::new(p) as Box<dyn PreparedToolSandbox>)
            .map_err(io::Error::other)
    }

    fn prepare_running_no_program(
        &self,
        _program: &str,
        binary_fd: std::os::fd::RawFd,
        report: std::os::fd::RawFd,
    ) -> io::Result<Box<dyn PreparedToolSandbox>> {
        Sandbox::prepare_running_no_program(self, binary_fd, report)
            .map(|p| Box::new(p) as Box<dyn PreparedToolSandbox>)
            .map_err(io::Error::other)
    }
}
