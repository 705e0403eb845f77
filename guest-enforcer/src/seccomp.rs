//! seccomp: the system calls the agent's process tree may not make.
//!
//! A deny list, not an allow list: the agent runs arbitrary user programs (compilers,
//! package managers, language runtimes) whose syscall needs we cannot enumerate, and the
//! filesystem, network and IPC boundaries come from Landlock, namespaces and the VM. What
//! this filter removes is kernel attack surface and the escape hatches those layers do
//! not cover. Denied calls fail with `EPERM` (not a kill), so tools print a readable
//! error instead of vanishing.
//!
//! Three filters are stacked (the kernel applies the strictest answer):
//! 1. x32 guard: any syscall number with the x32 bit is refused with `ENOSYS` (x32
//!    numbers would otherwise slip past a deny list keyed on x86-64 numbers);
//! 2. `clone3` answers `ENOSYS`, so libc falls back to `clone`, whose flags a filter can
//!    inspect (clone3 passes them in memory);
//! 3. the deny list below, each entry with why.
//!
//! Every filter also kills the process on a non-x86-64 syscall ABI (int 0x80).
//! Filters are compiled in the enforcer ([`compile_agent_filters`]) and installed in the
//! agent's process just before exec ([`AgentFilters::install_on_current_thread`]: no
//! allocation, safe between `fork` and `exec`).

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op,
    SeccompCondition as Cond, SeccompFilter, SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// Why a filter could not be built or installed. The agent must not start.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The filter could not be compiled.
    #[error("seccomp: cannot build the {which} filter: {message}")]
    Build {
        /// Which filter.
        which: &'static str,
        /// Compiler error.
        message: String,
    },
    /// The kernel refused the filter.
    #[error("seccomp: cannot install the {which} filter: {message}")]
    Install {
        /// Which filter.
        which: &'static str,
        /// Kernel error.
        message: String,
    },
}

/// Compiled filters for the agent.
#[derive(Debug, Clone)]
pub struct AgentFilters {
    x32_guard: BpfProgram,
    clone3: BpfProgram,
    deny: BpfProgram,
}

const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE (linux/audit.h).
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;

/// `(nr >= X32_SYSCALL_BIT) ? ERRNO(ENOSYS) : ALLOW`, after the x86-64 arch check.
fn x32_guard_program() -> BpfProgram {
    let stmt = |code: u32, k: u32| sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code: u32, k: u32, jt: u8, jf: u8| sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    vec![
        // seccomp_data.arch must be x86-64, else kill.
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 4),
        jump(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            AUDIT_ARCH_X86_64,
            1,
            0,
        ),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_KILL_PROCESS),
        // seccomp_data.nr
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
        jump(
            libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K,
            X32_SYSCALL_BIT,
            0,
            1,
        ),
        stmt(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        ),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ]
}

fn cond(arg: u8, len: Len, op: Op, value: u64) -> Result<Cond, SeccompError> {
    Cond::new(arg, len, op, value).map_err(|e| SeccompError::Build {
        which: "deny-list",
        message: e.to_string(),
    })
}

fn rule(conds: Vec<Cond>) -> Result<SeccompRule, SeccompError> {
    SeccompRule::new(conds).map_err(|e| SeccompError::Build {
        which: "deny-list",
        message: e.to_string(),
    })
}

/// `arg & flag == flag`: the call sets this flag.
fn sets_flag(arg: u8, flag: u64) -> Result<SeccompRule, SeccompError> {
    rule(vec![cond(arg, Len::Qword, Op::MaskedEq(flag), flag)?])
}

/// The deny list: syscall → rules (an empty rule list denies every call).
fn deny_rules() -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    let mut m: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut always = |nr: libc::c_long| {
        m.insert(nr, vec![]);
    };
    // vsock reaches the host's per-VM sockets; only PID 1 talks to the host.
    // (socket(AF_VSOCK) is below; io_uring can create sockets without socket().)
    always(libc::SYS_io_uring_setup);
    always(libc::SYS_io_uring_enter);
    always(libc::SYS_io_uring_register);
    // Anonymous executable memory: exec without a file Landlock could judge.
    always(libc::SYS_memfd_create);
    // Reading or steering other processes.
    always(libc::SYS_ptrace);
    always(libc::SYS_process_vm_readv);
    always(libc::SYS_process_vm_writev);
    // Kernel attack surface with a long CVE record, no use to a coding agent.
    always(libc::SYS_bpf);
    always(libc::SYS_perf_event_open);
    always(libc::SYS_userfaultfd);
    // Replacing the kernel or loading code into it.
    always(libc::SYS_kexec_load);
    always(libc::SYS_kexec_file_load);
    always(libc::SYS_init_module);
    always(libc::SYS_finit_module);
    always(libc::SYS_delete_module);
    // Rearranging the filesystem view Landlock and the mounts were built on.
    always(libc::SYS_mount);
    always(libc::SYS_umount2);
    always(libc::SYS_pivot_root);
    always(libc::SYS_move_mount);
    always(libc::SYS_open_tree);
    always(libc::SYS_fsopen);
    always(libc::SYS_fsmount);
    always(libc::SYS_fsconfig);
    always(libc::SYS_fspick);
    always(libc::SYS_mount_setattr);
    // New namespaces are new privileges (user namespaces give capabilities inside).
    always(libc::SYS_unshare);
    always(libc::SYS_setns);
    // The kernel keyring is shared state outside the sandbox's view.
    always(libc::SYS_keyctl);
    always(libc::SYS_add_key);
    always(libc::SYS_request_key);

    // socket(): AF_VSOCK (host channel), AF_PACKET (raw frames), SOCK_RAW of any family.
    m.insert(
        libc::SYS_socket,
        vec![
            rule(vec![cond(0, Len::Dword, Op::Eq, libc::AF_VSOCK as u64)?])?,
            rule(vec![cond(0, Len::Dword, Op::Eq, libc::AF_PACKET as u64)?])?,
            // type may carry SOCK_NONBLOCK | SOCK_CLOEXEC; compare the low type bits.
            rule(vec![cond(
                1,
                Len::Dword,
                Op::MaskedEq(0xf),
                libc::SOCK_RAW as u64,
            )?])?,
        ],
    );
    // execveat(fd, "", ..., AT_EMPTY_PATH): executes an fd (e.g. a memfd) by itself.
    m.insert(
        libc::SYS_execveat,
        vec![sets_flag(4, libc::AT_EMPTY_PATH as u64)?],
    );
    // clone() with any namespace flag: the same as unshare.
    m.insert(
        libc::SYS_clone,
        [
            libc::CLONE_NEWNS,
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWPID,
            libc::CLONE_NEWNET,
            libc::CLONE_NEWIPC,
            libc::CLONE_NEWUTS,
            libc::CLONE_NEWCGROUP,
        ]
        .iter()
        .map(|f| sets_flag(0, *f as u64))
        .collect::<Result<_, _>>()?,
    );
    // ioctl TIOCSTI/TIOCLINUX push keystrokes into a terminal someone else reads.
    m.insert(
        libc::SYS_ioctl,
        vec![
            rule(vec![cond(1, Len::Dword, Op::Eq, libc::TIOCSTI)?])?,
            rule(vec![cond(
                1,
                Len::Dword,
                Op::Eq,
                0x541C, /* TIOCLINUX */
            )?])?,
        ],
    );
    // personality(): only the query (0xffffffff) and PER_LINUX (0); other personas
    // change how the kernel treats the process (e.g. READ_IMPLIES_EXEC).
    m.insert(
        libc::SYS_personality,
        vec![rule(vec![
            cond(0, Len::Dword, Op::Ne, 0xffff_ffff)?,
            cond(0, Len::Dword, Op::Ne, 0)?,
        ])?],
    );
    Ok(m)
}

fn compile(
    which: &'static str,
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    action: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    let build = |message: String| SeccompError::Build { which, message };
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, action, TargetArch::x86_64)
        .map_err(|e| build(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| build(e.to_string()))
}

/// Compiles the agent's filters (in the enforcer, before forking the agent).
pub fn compile_agent_filters() -> Result<AgentFilters, SeccompError> {
    let mut clone3 = BTreeMap::new();
    clone3.insert(libc::SYS_clone3, vec![]);
    Ok(AgentFilters {
        x32_guard: x32_guard_program(),
        clone3: compile("clone3", clone3, SeccompAction::Errno(libc::ENOSYS as u32))?,
        deny: compile(
            "deny-list",
            deny_rules()?,
            SeccompAction::Errno(libc::EPERM as u32),
        )?,
    })
}

impl AgentFilters {
    /// Sets `no_new_privs` and installs the filters on the calling thread (inherited by
    /// everything it executes and forks).
    pub fn install_on_current_thread(&self) -> Result<(), SeccompError> {
        for (which, prog) in [
            ("x32-guard", &self.x32_guard),
            ("clone3", &self.clone3),
            ("deny-list", &self.deny),
        ] {
            seccompiler::apply_filter(prog).map_err(|e| SeccompError::Install {
                which,
                message: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// Number of BPF instructions of each filter (for the ready report).
    pub fn instruction_counts(&self) -> [usize; 3] {
        [self.x32_guard.len(), self.clone3.len(), self.deny.len()]
    }
}
