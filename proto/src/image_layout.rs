//! What an image builder and the guest's init agree on about files added to an image
//! (`airlock image build --add HOST:GUEST`): where they may go and how the image lists
//! them. Both sides check a path with the same function, so the builder cannot write a
//! list the init would read differently.

use std::path::Path;

/// The list of added files inside the image: `<octal mode> <path>` a line, sorted.
pub const ADDED_FILES_LIST: &str = "/etc/airlock/added-files";

/// Where added files may not go: what the image itself provides (the enforcer, its
/// identity, the shims, the modules) and what the enforcer mounts over at boot.
pub const ADDED_FILE_RESERVED: [&str; 10] = [
    "/init",
    "/etc/airlock",
    "/usr/lib/airlock",
    "/lib/modules",
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/tmp",
    "/.airlock",
];

/// Modes an added file may have: executable or not, never setuid, setgid or writable
/// by others.
pub const ADDED_FILE_MODES: [u32; 2] = [0o755, 0o644];

/// Why `guest` cannot be where an added file goes, if it cannot.
pub fn check_added_guest_path(guest: &str) -> Result<(), String> {
    let normal = guest.len() > 1
        && guest.starts_with('/')
        && !guest.contains('\0')
        && !guest.contains(char::is_whitespace)
        && guest[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if !normal {
        return Err(format!(
            "guest path `{guest}` must be absolute and normalized (no `.`, `..`, `//` or spaces)"
        ));
    }
    let path = Path::new(guest);
    if let Some(r) = ADDED_FILE_RESERVED
        .iter()
        .find(|r| path.starts_with(r) || Path::new(r).starts_with(path))
    {
        return Err(format!(
            "guest path `{guest}` would cover or sit inside {r}, which the image provides itself"
        ));
    }
    Ok(())
}

/// One line of the list.
pub fn added_files_list_line(mode: u32, guest: &str) -> String {
    format!("{mode:o} {guest}\n")
}

/// Parses the list: (mode, path) per line, every path checked, no path twice.
pub fn parse_added_files_list(text: &str) -> Result<Vec<(u32, String)>, String> {
    let mut out: Vec<(u32, String)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let bad = |why: String| format!("{ADDED_FILES_LIST} line {}: {why}", n + 1);
        let (mode, path) = line
            .split_once(' ')
            .ok_or_else(|| bad(format!("`{line}` is not `<mode> <path>`")))?;
        let mode = u32::from_str_radix(mode, 8)
            .ok()
            .filter(|m| ADDED_FILE_MODES.contains(m))
            .ok_or_else(|| bad(format!("mode `{mode}` is not 755 or 644")))?;
        check_added_guest_path(path).map_err(bad)?;
        if out.iter().any(|(_, p)| p == path) {
            return Err(bad(format!("{path} is listed twice")));
        }
        out.push((mode, path.to_string()));
    }
    Ok(out)
}

/// What a root filesystem must not bring (an image built from a team's rootfs, or
/// `debian`): the enforcer's own places, where the initramfs's key, ids and shims go
/// at boot, and where the enforcer itself sits. The image builder refuses a rootfs
/// holding any of them (even through a symlink); the enforcer refuses to switch into
/// one at boot.
pub const ROOTFS_RESERVED: [&str; 3] = ["/etc/airlock", "/usr/lib/airlock", "/init"];

/// Directories a root filesystem must have (real directories, not symlinks): the
/// enforcer carries the key, ids and shims into them at boot.
pub const ROOTFS_REQUIRED_DIRS: [&str; 3] = ["/etc", "/usr", "/usr/lib"];

/// Where the enforcer mounts or moves filesystems at boot: absent, or real
/// directories (a symlink there would point the mount somewhere else).
pub const ROOTFS_MOUNT_POINTS: [&str; 5] = ["/dev", "/proc", "/sys", "/run", "/tmp"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_files_go_only_where_the_image_does_not_provide_or_mount() {
        for ok in [
            "/opt/probe/hostile_probe",
            "/usr/local/bin/tool",
            "/workspace/x",
        ] {
            check_added_guest_path(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, why) in [
            ("relative/x", "absolute"),
            ("/", "absolute"),
            ("/opt/../etc/airlock/launcher.pub", "normalized"),
            ("/opt//x", "normalized"),
            ("/opt/a b", "spaces"),
            ("/etc/airlock/launcher.pub", "/etc/airlock"),
            ("/usr/lib/airlock/bin/git", "/usr/lib/airlock"),
            ("/init", "/init"),
            ("/usr/lib", "/usr/lib/airlock"),
            ("/tmp/x", "/tmp"),
            ("/dev/vda", "/dev"),
        ] {
            let e = check_added_guest_path(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn the_list_round_trips_and_bad_lines_are_refused() {
        let text = added_files_list_line(0o755, "/opt/a") + &added_files_list_line(0o644, "/opt/b");
        assert_eq!(
            parse_added_files_list(&text).unwrap(),
            vec![(0o755, "/opt/a".into()), (0o644, "/opt/b".into())]
        );
        for (bad, why) in [
            ("4755 /opt/a\n", "mode"),
            ("777 /opt/a\n", "mode"),
            ("755\n", "is not"),
            ("755 /etc/airlock/x\n", "/etc/airlock"),
            ("755 /opt/a\n644 /opt/a\n", "twice"),
        ] {
            let e = parse_added_files_list(bad).unwrap_err();
            assert!(e.contains(why) && e.contains("line"), "{bad:?}: {e}");
        }
    }
}
