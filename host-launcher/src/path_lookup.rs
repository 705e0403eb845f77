//! Finding the host programs the launcher runs (VMMs and their helpers, the image
//! build's tools) the way a shell would: a name with a `/` is a path; any other name is
//! looked up in the given directories first, then on `PATH`. A candidate counts only if
//! it is a regular file with an execute bit, so a stray non-executable file of that
//! name is passed over as `execvp` would.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The search path when `PATH` is not set.
const DEFAULT_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// Finds `name`: the path itself if it contains a `/`, else the first match in `dirs`,
/// then in `PATH` (`/usr/sbin:/usr/bin:/sbin:/bin` when unset). `None` if nothing
/// executable is there.
pub fn find_program(name: impl AsRef<Path>, dirs: &[PathBuf]) -> Option<PathBuf> {
    let name = name.as_ref();
    if name.as_os_str().as_encoded_bytes().contains(&b'/') {
        return is_executable_file(name).then(|| name.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from(DEFAULT_PATH));
    dirs.iter()
        .cloned()
        .chain(std::env::split_paths(&path))
        .map(|d| d.join(name))
        .find(|p| is_executable_file(p))
}

fn is_executable_file(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_in_the_given_directories_first_and_passes_over_what_cannot_run() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (first, second) = (d.join("first"), d.join("second"));
        for sub in [&first, &second] {
            std::fs::create_dir(sub).unwrap();
        }
        let write = |p: &Path, mode: u32| {
            std::fs::write(p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        write(&first.join("tool"), 0o644);
        write(&second.join("tool"), 0o755);
        std::fs::create_dir(first.join("dir-not-file")).unwrap();
        let dirs = [first.clone(), second.clone()];
        assert_eq!(find_program("tool", &dirs), Some(second.join("tool")));
        write(&first.join("tool"), 0o700);
        assert_eq!(find_program("tool", &dirs), Some(first.join("tool")));
        assert_eq!(find_program("dir-not-file", &dirs), None);
        // A path is taken as it is, never searched for.
        let path = first.join("tool");
        assert_eq!(find_program(&path, &[]), Some(path.clone()));
        assert_eq!(find_program(second.join("missing"), &dirs), None);
        // PATH is searched after the directories (every test machine has `sh`).
        let sh = find_program("sh", &[]).expect("sh on PATH");
        assert!(sh.ends_with("sh"), "{sh:?}");
        assert_eq!(find_program("no-such-program-airlock", &dirs), None);
    }
}
