//! Merging a session's copy-on-write workspaces back to the host.
//!
//! The gate itself is [`crate::merge_gate`]; this module gathers its inputs from a
//! session (which grants are copy-on-write, their host directories and owners, the
//! quota from `disk_mib`, the policy's protected paths) and feeds it the change stream:
//! from `Enforcer.Changes` in a VM, or, in process isolation, from the scratch tmpfs
//! the sandbox handed over, walked here with the same reader the enforcer uses.

use crate::merge_gate::{GateRules, GrantTarget, MergeGate, MergeMode, MergeReport, ProtectedPath};
use airlock_proto::manifest::{Access, Manifest};
use airlock_proto::pb::{ChangeChunk, ChangeKind as PbKind};
use airlock_proto::workspace_changes::{
    open_layer_dir, scratch_inodes, walk_upper_layer, ChangeEntry, ChangeEvent, ChangeKind,
};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// When a finished command's workspace changes are merged back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MergeWhen {
    /// When the command exited on its own, whatever its status (not when it was killed
    /// by a signal, ran out of wall time or airlock failed: its writes may be half
    /// done).
    #[default]
    Exited,
    /// Only when it exited with status 0.
    Success,
    /// Never: report what the gate would do, write nothing.
    DryRun,
    /// Never, and do not even read the changes.
    Never,
}

impl MergeWhen {
    /// The gate mode for a command that ended so (`None`: do not merge).
    pub fn mode_for(self, end: &CommandEnd) -> Option<MergeMode> {
        match (self, end) {
            (MergeWhen::Never, _) => None,
            (MergeWhen::DryRun, _) => Some(MergeMode::DryRun),
            (MergeWhen::Exited, CommandEnd::Exited(_)) => Some(MergeMode::Apply),
            (MergeWhen::Success, CommandEnd::Exited(0)) => Some(MergeMode::Apply),
            _ => None,
        }
    }
}

/// How a session's command ended, as far as merging is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandEnd {
    /// Exited with this status.
    Exited(i32),
    /// Anything else (signal, wall time, airlock failure), described.
    Stopped(String),
}

impl CommandEnd {
    /// From what a process sandbox says on its channel when the agent has ended
    /// (`exited N`, `signaled N`, `wall-time`; nothing when it died first).
    pub fn from_marker(marker: Option<&str>) -> CommandEnd {
        let marker = marker.map(str::trim);
        match marker.and_then(|m| m.strip_prefix("exited ")) {
            Some(code) => code
                .trim()
                .parse()
                .map(CommandEnd::Exited)
                .unwrap_or_else(|_| CommandEnd::Stopped(format!("unreadable end `{code}`"))),
            None => CommandEnd::Stopped(match marker {
                Some(m) => m.trim().to_string(),
                None => "the sandbox ended without saying how the command did".into(),
            }),
        }
    }

    /// Why nothing is merged (for the summary line).
    pub fn not_merged_because(&self, when: MergeWhen) -> String {
        match (self, when) {
            (_, MergeWhen::Never) => "merging was not asked for".into(),
            (CommandEnd::Exited(c), _) => format!("the command exited {c} (--merge success)"),
            (CommandEnd::Stopped(why), _) => {
                format!("the command did not exit on its own ({why}); its writes may be half done")
            }
        }
    }
}

/// What became of a session's workspace changes.
#[derive(Debug)]
pub enum MergeOutcome {
    /// The gate ran (applied, or a dry run), taking `elapsed` from the first change read
    /// to the last rename.
    Merged {
        /// What it did.
        report: MergeReport,
        /// How long reading and applying took.
        elapsed: std::time::Duration,
    },
    /// Nothing was merged, and why.
    Skipped(String),
    /// The merge failed as a whole: the host tree is as it was.
    Failed(String),
}

impl MergeOutcome {
    /// One line for the terminal.
    pub fn summary_line(&self) -> String {
        match self {
            MergeOutcome::Merged { report, .. } => report.summary_line(),
            MergeOutcome::Skipped(why) => format!("nothing merged: {why}"),
            MergeOutcome::Failed(why) => {
                format!("merge refused, the host tree is as it was: {why}")
            }
        }
    }

    /// As JSON (`airlock run --json`).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            MergeOutcome::Merged { report, elapsed } => serde_json::json!({
                "status": "merged",
                "report": report,
                "elapsed_ms": elapsed.as_secs_f64() * 1000.0,
            }),
            MergeOutcome::Skipped(why) => serde_json::json!({"status": "skipped", "reason": why}),
            MergeOutcome::Failed(why) => serde_json::json!({"status": "failed", "error": why}),
        }
    }
}

/// What the gate needs to know about one session's workspaces.
#[derive(Debug, Clone)]
pub struct WorkspacePlan {
    targets: Vec<GrantTarget>,
    quota_bytes: u64,
    quota_entries: u64,
    protected: Vec<ProtectedPath>,
}

impl WorkspacePlan {
    /// The copy-on-write grants of `manifest` (host directories from `resolved_mounts`,
    /// in the manifest's mount order), with `disk_mib` as the quota.
    pub fn of(
        manifest: &Manifest,
        resolved_mounts: &[String],
        protected: &[ProtectedPath],
    ) -> Result<WorkspacePlan, String> {
        let mut targets = Vec::new();
        for (i, m) in manifest.mounts.iter().enumerate() {
            if m.mode != Access::Rw {
                continue;
            }
            let host = resolved_mounts
                .get(i)
                .ok_or_else(|| format!("mount {i} (`{}`) has no host directory", m.tag))?;
            let meta = std::fs::metadata(host).map_err(|e| format!("{host}: {e}"))?;
            targets.push(GrantTarget {
                mount: m.tag.clone(),
                host_root: PathBuf::from(host),
                owner: (meta.uid(), meta.gid()),
            });
        }
        let disk = manifest.resources.disk_mib;
        Ok(WorkspacePlan {
            targets,
            quota_bytes: disk << 20,
            quota_entries: scratch_inodes(disk),
            protected: protected.to_vec(),
        })
    }

    /// No copy-on-write grant: nothing ever to merge.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Tags of the copy-on-write grants.
    pub fn tags(&self) -> Vec<String> {
        self.targets.iter().map(|t| t.mount.clone()).collect()
    }

    /// A gate for one merge.
    pub fn gate(&self, mode: MergeMode) -> Result<MergeGate, String> {
        MergeGate::new(
            self.targets.clone(),
            GateRules {
                protected: self.protected.clone(),
                quota_bytes: self.quota_bytes,
                quota_entries: self.quota_entries,
            },
            mode,
        )
        .map_err(|e| e.to_string())
    }
}

/// One `Enforcer.Changes` chunk as a change event (the stream is the guest's: a chunk
/// that opens no entry and carries no data, or an unknown kind, is refused).
pub fn event_of_chunk(c: ChangeChunk) -> Result<ChangeEvent, String> {
    let kind = match PbKind::try_from(c.kind) {
        Ok(PbKind::Unspecified) => {
            return if c.path.is_empty() && c.mount.is_empty() {
                Ok(ChangeEvent::Data(c.data))
            } else {
                Err(format!("a change chunk for `{}` has no kind", c.path))
            };
        }
        Ok(PbKind::Dir) => ChangeKind::Dir,
        Ok(PbKind::File) => ChangeKind::File,
        Ok(PbKind::Symlink) => ChangeKind::Symlink,
        Ok(PbKind::Delete) => ChangeKind::Delete,
        Ok(PbKind::OpaqueDir) => ChangeKind::OpaqueDir,
        Ok(PbKind::Special) => ChangeKind::Special,
        Err(_) => return Err(format!("change kind {} is not one the host knows", c.kind)),
    };
    if !c.data.is_empty() {
        return Err(format!("the entry chunk for `{}` carries data", c.path));
    }
    Ok(ChangeEvent::Entry(ChangeEntry {
        mount: c.mount,
        path: c.path,
        kind,
        mode: c.mode,
        size: c.size,
        symlink_target: c.symlink_target,
        special: c.special,
    }))
}

/// Runs the gate over the upper layers in a process sandbox's scratch (`upper/<tag>`).
pub fn merge_from_scratch(
    plan: &WorkspacePlan,
    scratch: &OwnedFd,
    mode: MergeMode,
) -> Result<MergeReport, String> {
    let mut gate = plan.gate(mode)?;
    for tag in plan.tags() {
        let upper = PathBuf::from(format!("/proc/self/fd/{}/upper/{tag}", scratch.as_raw_fd()));
        let dir = open_layer_dir(&upper).map_err(|e| format!("the write layer of `{tag}`: {e}"))?;
        let mut failed = None;
        let walked = walk_upper_layer(&dir, &tag, &mut |ev| {
            gate.feed(ev).map_err(|e| {
                let text = e.to_string();
                failed = Some(text.clone());
                text
            })
        });
        if let Some(e) = failed {
            return Err(e);
        }
        walked.map_err(|e| e.to_string())?;
    }
    gate.finish().map_err(|e| e.to_string())
}

/// Receives the scratch descriptor a process sandbox sends over `socket` (`None` when
/// it closed the socket without sending one: no workspace, or it failed first).
pub fn receive_scratch(socket: &std::os::unix::net::UnixStream) -> Option<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ok()?;
    for c in msg.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            let mut owned: Vec<OwnedFd> = fds
                .into_iter()
                // SAFETY: SCM_RIGHTS delivered these descriptors to us; we own them.
                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
                .collect();
            if owned.len() == 1 {
                return owned.pop();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_command_that_exited_is_merged_and_the_marker_says_which() {
        let exited = CommandEnd::from_marker(Some("exited 3"));
        assert_eq!(exited, CommandEnd::Exited(3));
        assert_eq!(MergeWhen::Exited.mode_for(&exited), Some(MergeMode::Apply));
        assert_eq!(MergeWhen::Success.mode_for(&exited), None);
        let killed = CommandEnd::from_marker(Some("signaled 9"));
        assert_eq!(MergeWhen::Exited.mode_for(&killed), None);
        assert_eq!(MergeWhen::DryRun.mode_for(&killed), Some(MergeMode::DryRun));
        assert!(matches!(
            CommandEnd::from_marker(None),
            CommandEnd::Stopped(_)
        ));
        assert!(matches!(
            CommandEnd::from_marker(Some("exited x")),
            CommandEnd::Stopped(_)
        ));
    }

    #[test]
    fn a_chunk_is_an_entry_or_data_never_both() {
        let data = ChangeChunk {
            data: b"abc".to_vec(),
            ..Default::default()
        };
        assert_eq!(
            event_of_chunk(data).unwrap(),
            ChangeEvent::Data(b"abc".to_vec())
        );
        let both = ChangeChunk {
            mount: "m0".into(),
            path: "a".into(),
            kind: PbKind::File as i32,
            data: b"x".to_vec(),
            ..Default::default()
        };
        assert!(event_of_chunk(both).is_err());
        let unknown = ChangeChunk {
            mount: "m0".into(),
            path: "a".into(),
            kind: 99,
            ..Default::default()
        };
        assert!(event_of_chunk(unknown).unwrap_err().contains("99"));
    }
}
