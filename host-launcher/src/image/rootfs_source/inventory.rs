//! What a rootfs offers an agent (`airlock image inspect`): the tools in each tool
//! directory, the interpreters and their library trees, the loaders and the libc.
//! Everything is looked up in the tree model, symlinks resolved inside it
//! (`/bin -> usr/bin` included).

use super::contract::{tool_files, LIBC_NAMES, LIB_DIRS};
use super::elf;
use super::tree::{shown, EntryKind, Tree};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where tools are looked for, in `PATH` order.
pub const TOOL_DIRS: [&str; 5] = ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"];

/// Interpreter families: the program name (a version may follow: `python3.11`,
/// `perl5.36.0`) and where their libraries live (`*` only at the end of a name; `{v}`
/// is the resolved program's name).
const INTERPRETERS: [(&str, &[&str]); 16] = [
    (
        "python",
        &[
            "/usr/lib/{v}",
            "/usr/local/lib/{v}",
            "/usr/lib/python3/dist-packages",
        ],
    ),
    (
        "perl",
        &[
            "/usr/share/perl*",
            "/usr/lib/x86_64-linux-gnu/perl*",
            "/usr/local/share/perl*",
            "/usr/local/lib/x86_64-linux-gnu/perl*",
        ],
    ),
    (
        "node",
        &[
            "/usr/lib/node_modules",
            "/usr/local/lib/node_modules",
            "/usr/share/nodejs",
        ],
    ),
    (
        "nodejs",
        &[
            "/usr/lib/node_modules",
            "/usr/local/lib/node_modules",
            "/usr/share/nodejs",
        ],
    ),
    ("ruby", &["/usr/lib/ruby", "/usr/local/lib/ruby"]),
    ("php", &["/usr/share/php*", "/usr/lib/php*"]),
    (
        "lua",
        &[
            "/usr/share/lua",
            "/usr/lib/x86_64-linux-gnu/lua",
            "/usr/local/share/lua",
            "/usr/local/lib/lua",
        ],
    ),
    (
        "luajit",
        &["/usr/share/luajit*", "/usr/local/share/luajit*"],
    ),
    ("java", &["/usr/lib/jvm"]),
    ("tclsh", &["/usr/share/tcltk", "/usr/lib/tcltk"]),
    ("bash", &[]),
    ("sh", &[]),
    ("dash", &[]),
    ("zsh", &["/usr/share/zsh"]),
    ("busybox", &[]),
    ("Rscript", &["/usr/lib/R", "/usr/local/lib/R"]),
];

/// A tool directory and what it offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolDir {
    /// The directory (`/bin`).
    pub path: String,
    /// Where it resolves in the tree (`/usr/bin`).
    pub resolved: String,
    /// Executables in it: regular files with an x bit, or symlinks resolving to one.
    pub executables: Vec<String>,
}

/// An interpreter found in a tool directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interpreter {
    /// Its name (`python3`).
    pub name: String,
    /// Where it was found (`/usr/bin/python3`).
    pub path: String,
    /// The file it resolves to (`/usr/bin/python3.11`).
    pub resolved: String,
    /// Its library trees present in the tree.
    pub library_dirs: Vec<String>,
}

/// A program loader a tool asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Loader {
    /// Its `PT_INTERP` path.
    pub path: String,
    /// Whether the tree has it.
    pub present: bool,
    /// How many tools ask for it.
    pub tools: usize,
}

/// What a rootfs offers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    /// Tool directories present, in `PATH` order.
    pub tool_dirs: Vec<ToolDir>,
    /// Interpreters, in `PATH` order (the first of a name wins).
    pub interpreters: Vec<Interpreter>,
    /// Loaders named by the tools' `PT_INTERP`.
    pub loaders: Vec<Loader>,
    /// libc files present (the paths they resolve to).
    pub libc: Vec<String>,
}

/// The interpreter family of a program name: a family name, optionally followed by
/// a version made of digits and dots.
fn family(name: &str) -> Option<&'static (&'static str, &'static [&'static str])> {
    INTERPRETERS.iter().find(|(base, _)| {
        name.strip_prefix(base)
            .is_some_and(|v| v.chars().all(|c| c.is_ascii_digit() || c == '.'))
    })
}

/// The directories matching a pattern of [`INTERPRETERS`] (after `{v}`).
fn matching_dirs(tree: &Tree, pattern: &str) -> Vec<String> {
    let dir_at = |p: &str| matches!(tree.resolve(p), Some((_, e)) if e.kind == EntryKind::Dir);
    match pattern.strip_suffix('*') {
        None => dir_at(pattern)
            .then(|| pattern.to_string())
            .into_iter()
            .collect(),
        Some(prefix) => {
            let (parent, start) = prefix.rsplit_once('/').unwrap_or(("", prefix));
            let Some((real_parent, _)) = tree.resolve(parent) else {
                return Vec::new();
            };
            tree.children(&real_parent)
                .filter_map(|(child, _)| {
                    let name = child.rsplit('/').next().unwrap_or(child);
                    let shown_path = format!("{parent}/{name}");
                    (name.starts_with(start) && dir_at(&shown_path)).then_some(shown_path)
                })
                .collect()
        }
    }
}

impl Inventory {
    /// The inventory of a tree.
    pub fn of(tree: &Tree) -> Inventory {
        let mut inv = Inventory::default();
        for dir in TOOL_DIRS {
            let Some((real, e)) = tree.resolve(dir) else {
                continue;
            };
            if e.kind != EntryKind::Dir {
                continue;
            }
            let mut executables = Vec::new();
            for (child, _) in tree.children(&real) {
                let name = child.rsplit('/').next().unwrap_or(child);
                if let Some((file, e)) = tree.resolve(child) {
                    if matches!(e.kind, EntryKind::File { .. }) && e.mode & 0o111 != 0 {
                        executables.push(name.to_string());
                        if let Some((_, libs)) = family(name) {
                            if !inv.interpreters.iter().any(|i| i.name == name) {
                                let v = file.rsplit('/').next().unwrap_or(&file);
                                let mut library_dirs: Vec<String> = libs
                                    .iter()
                                    .flat_map(|p| matching_dirs(tree, &p.replace("{v}", v)))
                                    .collect();
                                library_dirs.dedup();
                                inv.interpreters.push(Interpreter {
                                    name: name.to_string(),
                                    path: format!("{dir}/{name}"),
                                    resolved: shown(&file),
                                    library_dirs,
                                });
                            }
                        }
                    }
                }
            }
            inv.tool_dirs.push(ToolDir {
                path: dir.to_string(),
                resolved: shown(&real),
                executables,
            });
        }
        let mut loaders: BTreeMap<String, usize> = BTreeMap::new();
        for (_, real) in tool_files(tree) {
            if let Some(EntryKind::File { sha256, .. }) = tree.get(&real).map(|e| &e.kind) {
                if let Some(l) = elf::interpreter(&tree.blob_path(sha256)) {
                    *loaders.entry(l).or_default() += 1;
                }
            }
        }
        inv.loaders = loaders
            .into_iter()
            .map(|(path, tools)| Loader {
                present: matches!(tree.resolve(&path), Some((_, e)) if matches!(e.kind, EntryKind::File { .. })),
                path,
                tools,
            })
            .collect();
        // Each file once, by the path it resolves to (`/lib` is often `/usr/lib`).
        let mut libc_files = std::collections::BTreeSet::new();
        for d in LIB_DIRS {
            for n in LIBC_NAMES {
                if let Some((real, e)) = tree.resolve(&format!("{d}/{n}")) {
                    if matches!(e.kind, EntryKind::File { .. }) {
                        libc_files.insert(shown(&real));
                    }
                }
            }
        }
        inv.libc = libc_files.into_iter().collect();
        inv
    }
}
