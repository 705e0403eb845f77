//! A temporary apt source for another Debian suite, derived from the machine's own.
//!
//! Both the kernel fetch and the `debian` rootfs need packages from a suite the machine
//! does not track (trixie on a bookworm host). Rather than touch the machine's sources,
//! the first Debian entry is copied with only its suite (and components) replaced: the
//! same mirror and the same `Signed-By`, so downloads are authenticated against the
//! same keyring as any installed package.

use std::path::{Path, PathBuf};

/// The machine's deb822 Debian sources.
pub const DEB822_SOURCES: &str = "/etc/apt/sources.list.d/debian.sources";
/// The machine's one-line sources.
pub const LEGACY_SOURCES: &str = "/etc/apt/sources.list";

/// Why no source for the suite could be derived.
#[derive(Debug, thiserror::Error)]
pub enum SourcesError {
    /// Neither sources file has a Debian entry to copy.
    #[error("no Debian entry in {DEB822_SOURCES} or {LEGACY_SOURCES} to fetch Debian {suite} through (need a deb822 `Types: deb` stanza or a `deb` line)")]
    NoDebianEntry {
        /// The suite asked for.
        suite: String,
    },
    /// Writing the derived file failed.
    #[error("writing the temporary {suite} sources {path}: {source}")]
    Write {
        /// The suite.
        suite: String,
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// A sources file for one suite, in the format of the entry it was derived from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuiteSources {
    /// The file's contents.
    pub text: String,
    /// Whether it is a deb822 stanza (`.sources`) rather than a `deb` line (`.list`).
    pub deb822: bool,
}

impl SuiteSources {
    /// The machine's first Debian entry with the suite replaced by `suite` and the
    /// components by `main`.
    pub fn from_machine(suite: &str) -> Result<SuiteSources, SourcesError> {
        let deb822 = std::fs::read_to_string(DEB822_SOURCES).unwrap_or_default();
        let legacy = std::fs::read_to_string(LEGACY_SOURCES).unwrap_or_default();
        derive(&deb822, &legacy, suite).ok_or_else(|| SourcesError::NoDebianEntry {
            suite: suite.to_string(),
        })
    }

    /// Writes the file into `dir` under the name its format needs (apt and mmdebstrap
    /// tell the formats apart by extension); returns its path.
    pub fn write_into(&self, dir: &Path, stem: &str) -> Result<PathBuf, SourcesError> {
        let path = dir.join(if self.deb822 {
            format!("{stem}.sources")
        } else {
            format!("{stem}.list")
        });
        std::fs::write(&path, &self.text).map_err(|source| SourcesError::Write {
            suite: stem.to_string(),
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }
}

/// The derivation itself, on the two files' contents (empty when absent).
fn derive(deb822: &str, legacy: &str, suite: &str) -> Option<SuiteSources> {
    let stanza: Vec<&str> = deb822
        .split("\n\n")
        .find(|s| s.lines().any(|l| l.trim() == "Types: deb"))
        .map(|s| s.lines().collect())
        .unwrap_or_default();
    if !stanza.is_empty() {
        let lines: Vec<String> = stanza
            .iter()
            .map(|l| {
                if l.starts_with("Suites:") {
                    format!("Suites: {suite}")
                } else if l.starts_with("Components:") {
                    "Components: main".to_string()
                } else {
                    l.to_string()
                }
            })
            .collect();
        return Some(SuiteSources {
            text: format!("{}\n", lines.join("\n")),
            deb822: true,
        });
    }
    let line = legacy
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("deb ") && l.contains("debian"))?;
    // deb [opts] URI suite components…
    let words: Vec<&str> = line.split_whitespace().collect();
    let uri_at = words.iter().position(|w| w.contains("://"))?;
    let mut out: Vec<String> = words[..=uri_at].iter().map(|s| s.to_string()).collect();
    out.push(suite.into());
    out.push("main".into());
    Some(SuiteSources {
        text: format!("{}\n", out.join(" ")),
        deb822: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_deb_stanza_is_copied_with_the_suite_replaced() {
        let machine = "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\nComponents: main contrib\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\n";
        let s = derive(machine, "", "trixie").unwrap();
        assert!(s.deb822);
        assert_eq!(
            s.text,
            "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        );
    }

    #[test]
    fn a_legacy_line_keeps_its_options_and_mirror() {
        let legacy = "# comment\ndeb [signed-by=/k.gpg] http://mirror.invalid/debian bookworm main non-free\n";
        let s = derive("", legacy, "trixie").unwrap();
        assert!(!s.deb822);
        assert_eq!(
            s.text,
            "deb [signed-by=/k.gpg] http://mirror.invalid/debian trixie main\n"
        );
        assert_eq!(
            derive("", "deb-src http://x/debian a main\n", "trixie"),
            None
        );
    }
}
