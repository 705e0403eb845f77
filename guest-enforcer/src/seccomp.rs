//! seccomp: the system calls the agent's process tree may not make.
//!
//! A deny list, not an allow list: the agent runs arbitrary user programs (compilers,
//! package managers, language runtimes) whose syscall needs we cannot enumerate, and the
//! filesystem, network and IPC boundaries come from Landlock, namespaces and the VM. What
//! this filter removes is kernel attack surface and the escape hatches those layers do
//! not cover. Denied calls fail with `EPERM` (not a kill), so tools print a readable
//! error instead of vanishing.
//!
//! One BPF program, in this order:
//! 1. a non-x86-64 syscall ABI (int 0x80) kills the process;
//! 2. x32 guard: any syscall number with the x32 bit answers `ENOSYS` (x32 numbers
//!    would otherwise slip past a deny list keyed on x86-64 numbers);
//! 3. `clone3` answers `ENOSYS`, so libc falls back to `clone`, whose flags a filter can
//!    inspect (clone3 passes them in memory);
//! 4. the deny list below, each entry with why, answering `EPERM`.
//!
//! Steps 2 and 3 are spliced in front of seccompiler's program for the deny list (one
//! program, one BPF run per syscall, instead of three stacked filters).
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

/// The compiled filter for the agent.
#[derive(Debug, Clone)]
pub struct AgentFilters {
    program: BpfProgram,
}

const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// Instructions seccompiler emits first: load arch, compare, kill on mismatch.
const ARCH_CHECK_LEN: usize = 3;

fn stmt(code: u32, k: u32) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// One entry of the agent's filter: the unit the tests prove necessary, each by showing
/// that its refusal disappears when the filter is built without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FilterEntry {
    /// The x32 guard: any syscall number with the x32 bit answers `ENOSYS`.
    X32,
    /// `clone3` answers `ENOSYS`.
    Clone3,
    /// One syscall of the deny list, with all of its rules (its number).
    Denied(i64),
}

/// Every entry of the agent's filter, in filter order.
pub fn agent_filter_entries() -> Result<Vec<FilterEntry>, SeccompError> {
    let mut entries = vec![FilterEntry::X32, FilterEntry::Clone3];
    entries.extend(deny_rules()?.into_keys().map(FilterEntry::Denied));
    Ok(entries)
}

/// `nr & X32 ? ENOSYS : nr == clone3 ? ENOSYS : (fall through)`, with the checks left
/// out that `x32` / `clone3` say to leave out.
fn enosys_prologue(x32: bool, clone3: bool) -> Vec<sock_filter> {
    let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    let checks: Vec<(u32, u32)> = [
        (x32, libc::BPF_JGE, X32_SYSCALL_BIT),
        (clone3, libc::BPF_JEQ, libc::SYS_clone3 as u32),
    ]
    .into_iter()
    .filter_map(|(keep, op, k)| keep.then_some((op, k)))
    .collect();
    if checks.is_empty() {
        return vec![];
    }
    // seccomp_data.nr
    let mut out = vec![stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0)];
    let last = checks.len() - 1;
    for (i, (op, k)) in checks.into_iter().enumerate() {
        // A match jumps over the remaining checks to the ENOSYS return; the last check's
        // miss skips that return.
        let (jt, jf) = if i == last {
            (0, 1)
        } else {
            ((last - i) as u8, 0)
        };
        out.push(jump(libc::BPF_JMP | op | libc::BPF_K, k, jt, jf));
    }
    out.push(stmt(libc::BPF_RET | libc::BPF_K, enosys));
    // Falls through to seccompiler's program, which starts by loading nr.
    out
}

/// Splices the ENOSYS prologue in after seccompiler's architecture check. Jumps in
/// seccompiler's code are relative and none crosses the splice point (the arch check
/// only skips its own kill instruction), so they stay valid.
fn splice_prologue(
    compiled: BpfProgram,
    prologue: Vec<sock_filter>,
) -> Result<BpfProgram, SeccompError> {
    let arch_ok = compiled.len() > ARCH_CHECK_LEN
        && compiled[0].code as u32 == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS
        && compiled[0].k == 4
        && compiled[2].code as u32 == libc::BPF_RET | libc::BPF_K
        && compiled[2].k == libc::SECCOMP_RET_KILL_PROCESS;
    if !arch_ok {
        return Err(SeccompError::Build {
            which: "deny-list",
            message: "seccompiler's program does not start with the expected architecture check"
                .into(),
        });
    }
    let mut out = Vec::with_capacity(compiled.len() + prologue.len());
    out.extend_from_slice(&compiled[..ARCH_CHECK_LEN]);
    out.extend_from_slice(&prologue);
    out.extend_from_slice(&compiled[ARCH_CHECK_LEN..]);
    Ok(out)
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
    // ioctl TIOCSTI/TIOCLINUX push keystrokes into a terminal someone else reads;
    // TIOCSETD swaps a terminal's line discipline (N_NULL leaves it dead for whoever
    // uses it next, and an unloaded discipline makes the kernel load its module). No
    // agent or tool needs one: a terminal's own discipline is set by whoever opened it.
    m.insert(
        libc::SYS_ioctl,
        vec![
            // TIOCSTI is a c_int on musl and a c_ulong on glibc.
            #[allow(clippy::unnecessary_cast)]
            rule(vec![cond(1, Len::Dword, Op::Eq, libc::TIOCSTI as u64)?])?,
            rule(vec![cond(
                1,
                Len::Dword,
                Op::Eq,
                0x541C, /* TIOCLINUX */
            )?])?,
            rule(vec![cond(
                1,
                Len::Dword,
                Op::Eq,
                0x5423, /* TIOCSETD */
            )?])?,
        ],
    );
    // Set-id bits: a set-id program the agent leaves in a live (`rw-live`) share runs
    // with its owner's ids for whoever starts it on the host, and a root-owned share
    // maps the agent's files to root. No agent or tool needs to make one; copy-on-write
    // shares refuse them again at the merge-back gate.
    let setid = [libc::S_ISUID as u64, libc::S_ISGID as u64];
    for (nr, mode_arg) in [
        (libc::SYS_chmod, 1),
        (libc::SYS_fchmod, 1),
        (libc::SYS_fchmodat, 2),
        (libc::SYS_fchmodat2, 2),
        (libc::SYS_creat, 1),
    ] {
        m.insert(
            nr,
            setid
                .iter()
                .map(|bit| sets_flag(mode_arg, *bit))
                .collect::<Result<_, _>>()?,
        );
    }
    // open(2)/openat(2) with O_CREAT and a set-id mode (openat2 passes its mode in a
    // struct seccomp cannot read; the chmod rules above and the gate still hold there).
    for (nr, flags_arg, mode_arg) in [(libc::SYS_open, 1, 2), (libc::SYS_openat, 2, 3)] {
        m.insert(
            nr,
            setid
                .iter()
                .map(|bit| {
                    rule(vec![
                        cond(
                            flags_arg,
                            Len::Dword,
                            Op::MaskedEq(libc::O_CREAT as u64),
                            libc::O_CREAT as u64,
                        )?,
                        cond(mode_arg, Len::Dword, Op::MaskedEq(*bit), *bit)?,
                    ])
                })
                .collect::<Result<_, _>>()?,
        );
    }
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

/// Compiles the agent's filter (in the enforcer, before forking the agent).
pub fn compile_agent_filters() -> Result<AgentFilters, SeccompError> {
    compile_agent_filters_leaving_out(None)
}

/// The agent's filter without its `execveat(AT_EMPTY_PATH)` entry, for a tool call
/// that runs no program: [`crate::no_exec::NoExecFilter`], installed on top, allows
/// exactly one exec (the broker's `execveat` of the tool's verified binary) and
/// refuses every other, so the pair is stricter than the agent's filter alone.
pub fn compile_tool_filters_running_no_program() -> Result<AgentFilters, SeccompError> {
    compile_agent_filters_leaving_out(Some(FilterEntry::Denied(libc::SYS_execveat)))
}

/// The agent's filter without `left_out`, for the tests that prove each entry is the
/// reason for its refusal (a mutation check: the refusal must go with the entry). Never
/// used to run an agent.
#[doc(hidden)]
pub fn compile_agent_filters_without(left_out: FilterEntry) -> Result<AgentFilters, SeccompError> {
    compile_agent_filters_leaving_out(Some(left_out))
}

fn compile_agent_filters_leaving_out(
    left_out: Option<FilterEntry>,
) -> Result<AgentFilters, SeccompError> {
    let mut rules = deny_rules()?;
    if let Some(FilterEntry::Denied(nr)) = left_out {
        if rules.remove(&nr).is_none() {
            return Err(SeccompError::Build {
                which: "deny-list",
                message: format!("syscall {nr} is not in the deny list"),
            });
        }
    }
    let deny = compile("deny-list", rules, SeccompAction::Errno(libc::EPERM as u32))?;
    let prologue = enosys_prologue(
        left_out != Some(FilterEntry::X32),
        left_out != Some(FilterEntry::Clone3),
    );
    Ok(AgentFilters {
        program: splice_prologue(deny, prologue)?,
    })
}

impl AgentFilters {
    /// Sets `no_new_privs` and installs the filter on the calling thread (inherited by
    /// everything it executes and forks).
    pub fn install_on_current_thread(&self) -> Result<(), SeccompError> {
        seccompiler::apply_filter(&self.program).map_err(|e| SeccompError::Install {
            which: "agent",
            message: e.to_string(),
        })
    }

    /// Number of BPF instructions (for the ready report).
    pub fn instruction_count(&self) -> usize {
        self.program.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_enosys_prologue_sits_right_after_the_arch_check() {
        let f = compile_agent_filters().unwrap();
        let p = &f.program;
        assert_eq!(p[0].k, 4, "loads seccomp_data.arch first");
        assert_eq!(p[2].k, libc::SECCOMP_RET_KILL_PROCESS);
        assert_eq!(p[4].k, X32_SYSCALL_BIT);
        assert_eq!(p[5].k, libc::SYS_clone3 as u32);
        assert_eq!(p[6].k, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32);
        assert_eq!(
            (p[7].code as u32, p[7].k),
            (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0)
        );
        assert_eq!(f.instruction_count(), p.len());
    }

    #[test]
    fn a_filter_without_one_prologue_check_keeps_the_other() {
        let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
        let p = compile_agent_filters_without(FilterEntry::X32)
            .unwrap()
            .program;
        assert_eq!((p[4].k, p[4].jt, p[4].jf), (libc::SYS_clone3 as u32, 0, 1));
        assert_eq!(p[5].k, enosys);
        let p = compile_agent_filters_without(FilterEntry::Clone3)
            .unwrap()
            .program;
        assert_eq!((p[4].k, p[4].jt, p[4].jf), (X32_SYSCALL_BIT, 0, 1));
        assert_eq!(p[5].k, enosys);
        let full = compile_agent_filters().unwrap().program;
        assert_eq!(
            (full[4].jt, full[4].jf),
            (1, 0),
            "x32 match jumps to ENOSYS"
        );
    }

    #[test]
    fn leaving_out_a_syscall_the_list_does_not_name_is_an_error() {
        let err = compile_agent_filters_without(FilterEntry::Denied(libc::SYS_getpid)).unwrap_err();
        assert!(err.to_string().contains("not in the deny list"), "{err}");
    }
}
