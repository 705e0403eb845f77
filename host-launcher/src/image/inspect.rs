//! What an image offers (`airlock image inspect`): its tool directories and the
//! programs in each, the interpreters with their library trees, the loaders its tools
//! ask for, the libc, and for a rootfs built from a team's source, what the source was,
//! what its config said and what `--allow` let through. Taken at build time from the
//! same tree model the rootfs was checked with, and kept next to `image.json`.

use super::rootfs_source::{
    check_contract, AllowList, ContractReport, Finding, Inventory, LayerFormat, OciConfigReport,
    SourceDescription, SourceLimits, Tree,
};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The report's file, next to `image.json` (and next to a cached rootfs).
pub const REPORT_FILE: &str = "inventory.json";

/// What a rootfs offers and what its checks said.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootfsReport {
    /// Tools, interpreters, loaders, libc.
    pub inventory: Inventory,
    /// The image contract's findings that are not refusals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<ContractReport>,
    /// Set-id files, capabilities, devices, unknown owners `--allow` accepted (for
    /// `debian`, everything its recipe installs is accepted and listed here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed: Vec<Finding>,
    /// Where a team's rootfs came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceDescription>,
    /// What an OCI or docker config said about running the image: reported, never a
    /// grant (the plan and the policy decide the environment, directory and user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci_config: Option<OciConfigReport>,
}

impl RootfsReport {
    /// The report as written to [`REPORT_FILE`].
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("reports serialize");
        v.push(b'\n');
        v
    }

    /// Reads a report; `None` when the image has none (built by an older airlock).
    pub fn read(dir: &Path) -> Result<Option<RootfsReport>, String> {
        let path = dir.join(REPORT_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// The report of the `debian` recipe's tarball (`staging` holds the tree's blobs
    /// while it is read; they are removed before this returns).
    pub fn of_debian_tarball(
        tarball: &Path,
        staging: &Path,
    ) -> Result<RootfsReport, super::debian::RootfsError> {
        use super::debian::RootfsError;
        let stage = staging.join("inventory-stage");
        std::fs::create_dir_all(&stage)
            .map_err(|e| RootfsError::Inventory(format!("{}: {e}", stage.display())))?;
        let taken = (|| {
            let mut tree = Tree::new(&stage, &SourceLimits::default())?;
            tree.load_tar_file(tarball, "the debian recipe's tarball", LayerFormat::Rootfs)?;
            let everything: Vec<String> = ["setid", "capability", "device", "owner"]
                .iter()
                .map(|k| format!("{k}:/**"))
                .collect();
            let allowed =
                super::rootfs_source::findings::check(&tree, &AllowList::parse(&everything)?)?;
            let contract = check_contract(&tree)?;
            Ok::<_, super::rootfs_source::SourceError>(RootfsReport {
                inventory: Inventory::of(&tree),
                contract: Some(contract),
                allowed,
                source: None,
                oci_config: None,
            })
        })();
        let _ = std::fs::remove_dir_all(&stage);
        taken.map_err(|e| RootfsError::Inventory(e.to_string()))
    }

    /// The `minimal` image's report: busybox's applets in `/bin`, statically linked
    /// (no loader, no libc), and busybox's `sh` the only interpreter.
    pub fn of_minimal(applets: &[String]) -> RootfsReport {
        use super::rootfs_source::inventory::{Interpreter, ToolDir};
        let mut executables: Vec<String> = applets.to_vec();
        executables.push("busybox".into());
        executables.sort();
        let interpreters = ["ash", "sh"]
            .iter()
            .filter(|n| applets.iter().any(|a| a == *n))
            .map(|n| Interpreter {
                name: n.to_string(),
                path: format!("/bin/{n}"),
                resolved: "/bin/busybox".into(),
                library_dirs: Vec::new(),
            })
            .collect();
        RootfsReport {
            inventory: Inventory {
                tool_dirs: vec![ToolDir {
                    path: "/bin".into(),
                    resolved: "/bin".into(),
                    executables,
                }],
                interpreters,
                loaders: Vec::new(),
                libc: Vec::new(),
            },
            ..RootfsReport::default()
        }
    }
}
