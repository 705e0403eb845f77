//! Kernel modules for the initramfs: which files, in which load order.
//!
//! The order comes from the modules themselves: each `.ko` carries `depends=` in its
//! `.modinfo` ELF section (what `modinfo -F depends` prints). Modules built into the
//! kernel (`modules.builtin`) need no file. Nothing is hard-coded but the names asked
//! for; a module that is neither a file nor built in is an error naming it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Why a module set cannot be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// Reading the module tree failed.
    #[error("kernel modules: {path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A module is neither a file nor built in.
    #[error("kernel module `{name}` (needed by {needed_by}) is neither in {root} nor built into the kernel")]
    Missing {
        /// Module.
        name: String,
        /// What asked for it.
        needed_by: String,
        /// Module tree.
        root: PathBuf,
    },
    /// A module file is not a readable ELF module.
    #[error("kernel module {path}: {problem}")]
    Malformed {
        /// File.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// Dependencies form a cycle.
    #[error("kernel modules: dependency cycle through `{0}`")]
    Cycle(String),
}

/// A module to put in the image, decompressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleFile {
    /// Canonical name (`-` → `_`).
    pub name: String,
    /// The module's ELF bytes.
    pub elf: Vec<u8>,
    /// Its `depends=` (canonical names).
    pub depends: Vec<String>,
}

/// A kernel's `lib/modules/<version>` tree.
#[derive(Debug)]
pub struct ModuleTree {
    root: PathBuf,
    files: BTreeMap<String, PathBuf>,
    builtin: BTreeSet<String>,
}

/// `virtio-mmio` and `virtio_mmio` name one module.
pub fn canonical_name(name: &str) -> String {
    name.replace('-', "_")
}

fn module_name_of(file: &str) -> Option<&str> {
    [".ko.xz", ".ko.zst", ".ko.gz", ".ko"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ModuleError> {
    let io = |source| ModuleError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io)?
        .collect::<Result<_, _>>()
        .map_err(io)?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let ft = e.file_type().map_err(io)?;
        if ft.is_dir() {
            walk(&e.path(), out)?;
        } else if ft.is_file() {
            out.push(e.path());
        }
    }
    Ok(())
}

impl ModuleTree {
    /// Indexes `root` (`…/lib/modules/<version>`).
    pub fn scan(root: &Path) -> Result<ModuleTree, ModuleError> {
        let mut paths = Vec::new();
        walk(&root.join("kernel"), &mut paths)?;
        let mut files = BTreeMap::new();
        for p in paths {
            let Some(name) = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(module_name_of)
            else {
                continue;
            };
            files.entry(canonical_name(name)).or_insert(p.clone());
        }
        let builtin_path = root.join("modules.builtin");
        let builtin = match std::fs::read_to_string(&builtin_path) {
            Ok(text) => text
                .lines()
                .filter_map(|l| l.rsplit('/').next().and_then(module_name_of))
                .map(canonical_name)
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(source) => {
                return Err(ModuleError::Io {
                    path: builtin_path,
                    source,
                })
            }
        };
        Ok(ModuleTree {
            root: root.to_path_buf(),
            files,
            builtin,
        })
    }

    /// Whether the kernel has `name` built in.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&canonical_name(name))
    }

    fn load(&self, name: &str, needed_by: &str) -> Result<Option<ModuleFile>, ModuleError> {
        if self.is_builtin(name) {
            return Ok(None);
        }
        let path = self.files.get(name).ok_or_else(|| ModuleError::Missing {
            name: name.to_string(),
            needed_by: needed_by.to_string(),
            root: self.root.clone(),
        })?;
        let raw = std::fs::read(path).map_err(|source| ModuleError::Io {
            path: path.clone(),
            source,
        })?;
        let malformed = |problem: String| ModuleError::Malformed {
            path: path.clone(),
            problem,
        };
        let elf = decompress(path, raw).map_err(malformed)?;
        let depends = modinfo(&elf, "depends")
            .map_err(malformed)?
            .into_iter()
            .flat_map(|v| {
                v.split(',')
                    .filter(|d| !d.is_empty())
                    .map(canonical_name)
                    .collect::<Vec<_>>()
            })
            .collect();
        Ok(Some(ModuleFile {
            name: name.to_string(),
            elf,
            depends,
        }))
    }

    /// The modules to load for `wanted`, dependencies first (ties in name order).
    pub fn load_order(&self, wanted: &[&str]) -> Result<Vec<ModuleFile>, ModuleError> {
        let mut done: BTreeMap<String, Option<ModuleFile>> = BTreeMap::new();
        let mut order = Vec::new();
        let mut visiting = BTreeSet::new();
        for w in wanted {
            self.visit(
                &canonical_name(w),
                "the image profile",
                &mut done,
                &mut visiting,
                &mut order,
            )?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        needed_by: &str,
        done: &mut BTreeMap<String, Option<ModuleFile>>,
        visiting: &mut BTreeSet<String>,
        order: &mut Vec<ModuleFile>,
    ) -> Result<(), ModuleError> {
        if done.contains_key(name) {
            return Ok(());
        }
        if !visiting.insert(name.to_string()) {
            return Err(ModuleError::Cycle(name.to_string()));
        }
        let module = self.load(name, needed_by)?;
        if let Some(m) = &module {
            let mut deps = m.depends.clone();
            deps.sort();
            for d in deps {
                self.visit(&d, &format!("`{name}`"), done, visiting, order)?;
            }
            order.push(m.clone());
        }
        visiting.remove(name);
        done.insert(name.to_string(), module);
        Ok(())
    }
}

fn decompress(path: &Path, raw: Vec<u8>) -> Result<Vec<u8>, String> {
    let name = path.to_string_lossy();
    if name.ends_with(".xz") {
        let mut out = Vec::new();
        lzma_rs::xz_decompress(&mut raw.as_slice(), &mut out).map_err(|e| format!("xz: {e}"))?;
        Ok(out)
    } else if name.ends_with(".zst") {
        use std::io::Read;
        let mut out = Vec::new();
        ruzstd::decoding::StreamingDecoder::new(raw.as_slice())
            .map_err(|e| format!("zstd: {e}"))?
            .read_to_end(&mut out)
            .map_err(|e| format!("zstd: {e}"))?;
        Ok(out)
    } else if name.ends_with(".gz") {
        use std::io::Read;
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| format!("gzip: {e}"))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn le_u16(b: &[u8], at: usize) -> Result<u16, String> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| format!("truncated ELF at {at}"))
}
fn le_u32(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
        .ok_or_else(|| format!("truncated ELF at {at}"))
}
fn le_u64(b: &[u8], at: usize) -> Result<u64, String> {
    b.get(at..at + 8)
        .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
        .ok_or_else(|| format!("truncated ELF at {at}"))
}

/// The values of `key` in an ELF64 module's `.modinfo` section.
pub fn modinfo(elf: &[u8], key: &str) -> Result<Vec<String>, String> {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return Err("not a little-endian ELF64 file".into());
    }
    let shoff = le_u64(elf, 0x28)? as usize;
    let shentsize = le_u16(elf, 0x3a)? as usize;
    let shnum = le_u16(elf, 0x3c)? as usize;
    let shstrndx = le_u16(elf, 0x3e)? as usize;
    let section = |i: usize| -> Result<(u32, usize, usize), String> {
        let h = shoff + i * shentsize;
        Ok((
            le_u32(elf, h)?,
            le_u64(elf, h + 24)? as usize,
            le_u64(elf, h + 32)? as usize,
        ))
    };
    let bytes = |off: usize, size: usize| {
        elf.get(off..off.saturating_add(size))
            .ok_or_else(|| "section outside the file".to_string())
    };
    let (_, str_off, str_size) = section(shstrndx)?;
    let strtab = bytes(str_off, str_size)?;
    for i in 0..shnum {
        let (name_off, off, size) = section(i)?;
        let name = strtab
            .get(name_off as usize..)
            .and_then(|s| s.split(|&b| b == 0).next())
            .unwrap_or_default();
        if name == b".modinfo" {
            let prefix = format!("{key}=");
            return Ok(bytes(off, size)?
                .split(|&b| b == 0)
                .filter_map(|kv| std::str::from_utf8(kv).ok())
                .filter_map(|kv| kv.strip_prefix(&prefix))
                .map(str::to_string)
                .collect());
        }
    }
    Err("no .modinfo section".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 with a `.modinfo` section holding `entries`.
    fn fake_module(entries: &[&str]) -> Vec<u8> {
        let mut modinfo = Vec::new();
        for e in entries {
            modinfo.extend_from_slice(e.as_bytes());
            modinfo.push(0);
        }
        let strtab = b"\0.modinfo\0.shstrtab\0".to_vec();
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let modinfo_off = elf.len();
        elf.extend_from_slice(&modinfo);
        let strtab_off = elf.len();
        elf.extend_from_slice(&strtab);
        let shoff = elf.len();
        let sh = |name: u32, off: usize, size: usize| {
            let mut h = vec![0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[24..32].copy_from_slice(&(off as u64).to_le_bytes());
            h[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            h
        };
        let headers = [
            sh(0, 0, 0),
            sh(1, modinfo_off, modinfo.len()),
            sh(10, strtab_off, strtab.len()),
        ]
        .concat();
        elf.extend_from_slice(&headers);
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        elf
    }

    fn tree(mods: &[(&str, &str)], builtin: &[&str]) -> (tempfile::TempDir, ModuleTree) {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("kernel/drivers");
        std::fs::create_dir_all(&k).unwrap();
        for (name, deps) in mods {
            let elf = fake_module(&["license=GPL", &format!("depends={deps}"), "intree=Y"]);
            std::fs::write(k.join(format!("{name}.ko")), elf).unwrap();
        }
        let b: String = builtin
            .iter()
            .map(|n| format!("kernel/drivers/{n}.ko\n"))
            .collect();
        std::fs::write(dir.path().join("modules.builtin"), b).unwrap();
        let t = ModuleTree::scan(dir.path()).unwrap();
        (dir, t)
    }

    #[test]
    fn dependencies_load_first_and_builtins_are_skipped() {
        let (_d, t) = tree(
            &[
                ("vsock", ""),
                ("vmw_vsock_virtio_transport_common", "vsock,virtio"),
                (
                    "vmw_vsock_virtio_transport",
                    "vmw_vsock_virtio_transport_common,vsock,virtio_ring",
                ),
                ("virtio-mmio", "virtio,virtio_ring"),
            ],
            &["virtio", "virtio_ring"],
        );
        let order: Vec<String> = t
            .load_order(&["virtio_mmio", "vmw_vsock_virtio_transport"])
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(
            order,
            [
                "virtio_mmio",
                "vsock",
                "vmw_vsock_virtio_transport_common",
                "vmw_vsock_virtio_transport"
            ]
        );
    }

    #[test]
    fn a_missing_module_names_who_needed_it() {
        let (_d, t) = tree(&[("a", "b")], &[]);
        let err = t.load_order(&["a"]).unwrap_err().to_string();
        assert!(
            err.contains("`b`") && err.contains("needed by `a`"),
            "{err}"
        );
    }

    #[test]
    fn a_cycle_is_an_error() {
        let (_d, t) = tree(&[("a", "b"), ("b", "a")], &[]);
        assert!(matches!(t.load_order(&["a"]), Err(ModuleError::Cycle(_))));
    }

    #[test]
    fn modinfo_reads_only_the_modinfo_section() {
        let elf = fake_module(&["depends=x,y", "vermagic=6.12"]);
        assert_eq!(modinfo(&elf, "depends").unwrap(), ["x,y"]);
        assert_eq!(modinfo(&elf, "vermagic").unwrap(), ["6.12"]);
        assert!(modinfo(b"not an elf", "depends").is_err());
    }
}
