//! A manifest is resolved against the guest image before anything runs; whatever it
//! names that does not exist is refused with the field that named it.

use airlock_enforcer::identity::AgentIdentity;
use airlock_enforcer::manifest_layers::{plan_agent, GuestLayout, ManifestApplyError};
use airlock_proto::manifest::{
    Access, Command, Egress, Manifest, Mount, Resources, MANIFEST_VERSION,
};
use airlock_proto::tool_rules::ToolGrant;
use airlock_proto::verdict::Verdict;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

struct Guest {
    _dir: tempfile::TempDir,
    root: PathBuf,
    layout: GuestLayout,
}

/// A fake guest tree: usr/bin/git (0755), shims/git, work/ (rw), docs/ (ro).
fn guest() -> Guest {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    for d in ["usr/bin", "shims", "work", "docs", "tmp", "lib"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let git = root.join("usr/bin/git");
    std::fs::copy("/bin/true", &git).unwrap();
    std::fs::set_permissions(&git, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("/bin/true", root.join("shims/git")).unwrap();
    let layout = GuestLayout {
        tool_dirs: vec![root.join("usr/bin")],
        shim_dir: root.join("shims"),
        loaders: vec![],
        system_read_only: vec![root.join("lib")],
        scratch: vec![root.join("tmp")],
        devices: vec![],
        agent: AgentIdentity {
            uid: 1000,
            gid: 1000,
            groups: vec![],
        },
        nofile: 1024,
        external_entrypoints: None,
    };
    Guest {
        _dir: dir,
        root,
        layout,
    }
}

fn manifest(root: &Path) -> Manifest {
    Manifest {
        manifest_version: MANIFEST_VERSION,
        protocol_version: airlock_proto::PROTOCOL_VERSION,
        session_id: "0123456789abcdef0123456789abcdef".into(),
        vm_cid: 3,
        image_id: "img".into(),
        nonce: "00112233445566778899aabbccddeeff".into(),
        issued_at: 1,
        not_before: 1,
        expires_at: 2,
        policy_digest: format!("sha256:{}", "0".repeat(64)),
        command: Command {
            argv: vec!["git".into(), "status".into()],
            cwd: root.join("work").display().to_string(),
            env: BTreeMap::new(),
        },
        mounts: vec![
            Mount {
                tag: "m0".into(),
                guest_path: root.join("work").display().to_string(),
                mode: Access::Rw,
            },
            Mount {
                tag: "m1".into(),
                guest_path: root.join("docs").display().to_string(),
                mode: Access::Ro,
            },
        ],
        egress: Egress::default(),
        tools: vec![ToolGrant {
            program: "git".into(),
            rules: vec![],
            default: Verdict::Deny,
            profile: Default::default(),
        }],
        resources: Resources {
            vcpus: 1,
            memory_mib: 512,
            disk_mib: 64,
            pids: 128,
            wall_time_secs: 60,
            net_connections: 32,
            net_mib: 1024,
        },
    }
}

fn field_of(e: ManifestApplyError) -> String {
    match e {
        ManifestApplyError::Field { field, .. } => field,
        other => panic!("expected a field error, got {other}"),
    }
}

#[test]
fn a_good_manifest_resolves_into_layers_and_open_tools() {
    let g = guest();
    let plan = plan_agent(&manifest(&g.root), &g.layout).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.tools.len(), 1);
    assert_eq!(plan.entrypoint, g.root.join("shims/git"));
    let ll = plan.sandbox.landlock.as_ref().unwrap();
    assert!(ll.read_write_no_specials.contains(&g.root.join("work")));
    assert!(!ll.read_write.contains(&g.root.join("work")));
    assert!(ll.read_only.contains(&g.root.join("docs")));
    assert!(
        !ll.read_only
            .iter()
            .chain(&ll.executable)
            .any(|p| p.starts_with(g.root.join("usr/bin"))),
        "the agent must neither read nor execute the real tool binaries"
    );
    assert_eq!(ll.executable, vec![g.root.join("shims")]);
    // A tool executes its own binary, the shims and its profile; never its directory.
    let git = plan.tool_sandboxes.get("git").expect("git has a sandbox");
    let tl = git.landlock.as_ref().unwrap();
    assert_eq!(
        tl.executable,
        vec![g.root.join("shims"), g.root.join("usr/bin/git")]
    );
    assert_eq!(tl.read_write, ll.read_write);
    assert!(git.seccomp);
    let r = plan.sandbox.rlimits.unwrap();
    assert_eq!((r.nproc, r.fsize_bytes), (Some(128), Some(64 << 20)));
    assert!(plan.sandbox.seccomp);
}

#[test]
fn a_tool_profile_adds_exactly_its_paths_and_skips_what_the_image_lacks() {
    let g = guest();
    std::fs::create_dir_all(g.root.join("usr/lib/git-core")).unwrap();
    std::fs::copy("/bin/true", g.root.join("usr/lib/git-core/git-remote-http")).unwrap();
    let mut m = manifest(&g.root);
    m.tools[0].profile = airlock_proto::tool_rules::ToolProfile {
        name: "git".into(),
        executes: vec![
            g.root
                .join("usr/lib/git-core/git-remote-http")
                .display()
                .to_string(),
            g.root.join("usr/lib/git-core/absent").display().to_string(),
        ],
        reads: vec![g.root.join("docs").display().to_string()],
    };
    let plan = plan_agent(&m, &g.layout).unwrap_or_else(|e| panic!("{e}"));
    let tl = plan
        .tool_sandboxes
        .get("git")
        .unwrap()
        .landlock
        .clone()
        .unwrap();
    assert_eq!(
        tl.executable,
        vec![
            g.root.join("shims"),
            g.root.join("usr/bin/git"),
            g.root.join("usr/lib/git-core/git-remote-http")
        ]
    );
    let agent = plan.sandbox.landlock.unwrap();
    assert_eq!(
        agent.executable,
        vec![g.root.join("shims")],
        "the agent gains nothing"
    );
}

#[test]
fn an_entrypoint_that_is_a_granted_tool_runs_through_its_shim() {
    let g = guest();
    let mut m = manifest(&g.root);
    // By absolute path: still the shim, so every call is decided by the rules.
    m.command.argv[0] = g.root.join("usr/bin/git").display().to_string();
    let plan = plan_agent(&m, &g.layout).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.entrypoint, g.root.join("shims/git"));
    let ll = plan.sandbox.landlock.unwrap();
    assert!(!ll.executable.contains(&g.root.join("usr/bin/git")));
    // Another spelling of the same name is the shim too.
    std::fs::create_dir_all(g.root.join("usr/lib/git-core")).unwrap();
    std::fs::copy(
        g.root.join("usr/bin/git"),
        g.root.join("usr/lib/git-core/git"),
    )
    .unwrap();
    let mut m = manifest(&g.root);
    m.command.argv[0] = g.root.join("usr/lib/git-core/git").display().to_string();
    let plan = plan_agent(&m, &g.layout).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        plan.entrypoint,
        g.root.join("shims/git"),
        "named git: the shim"
    );
}

#[test]
fn every_unusable_name_is_refused_with_its_field() {
    let g = guest();
    type Mutation = Box<dyn Fn(&mut Manifest, &Path)>;
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "tools[0].program",
            Box::new(|m, _| m.tools[0].program = "nonexistent-tool".into()),
        ),
        (
            "mounts[1].guest_path",
            Box::new(|m, r| m.mounts[1].guest_path = r.join("nope").display().to_string()),
        ),
        (
            "command.cwd",
            Box::new(|m, r| m.command.cwd = r.join("nowhere").display().to_string()),
        ),
        (
            "command.argv[0]",
            Box::new(|m, _| m.command.argv[0] = "python3".into()),
        ),
        (
            "command.argv[0]",
            Box::new(|m, r| m.command.argv[0] = r.join("usr/bin/missing").display().to_string()),
        ),
    ];
    for (want, mutate) in cases {
        let mut m = manifest(&g.root);
        mutate(&mut m, &g.root);
        let err = plan_agent(&m, &g.layout).unwrap_err();
        let msg = err.to_string();
        assert_eq!(field_of(err), want, "{msg}");
    }
    // A tool with a binary but no shim.
    std::fs::remove_file(g.root.join("shims/git")).unwrap();
    let err = plan_agent(&manifest(&g.root), &g.layout).unwrap_err();
    assert!(err.to_string().contains("no shim for `git`"), "{err}");
}

/// A minimal ELF64 executable header asking for `loader` (its `PT_INTERP`).
fn dynamic_elf_asking_for(loader: &str) -> Vec<u8> {
    airlock_proto::program_interpreter::minimal_elf(Some(loader))
}

/// The image contract at boot: a granted tool or an entrypoint linked against a loader
/// the image lacks is refused naming both, before anything runs; the same binary asking
/// for a loader that is there is fine.
#[test]
fn a_dynamically_linked_binary_without_its_loader_is_refused_naming_it() {
    use std::os::unix::fs::PermissionsExt;
    let g = guest();
    let missing = g.root.join("lib/ld-missing.so.2").display().to_string();
    let present = g.root.join("lib/ld-present.so.2");
    std::fs::write(&present, b"").unwrap();
    let tool = g.root.join("usr/bin/git");
    std::fs::write(&tool, dynamic_elf_asking_for(&missing)).unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = plan_agent(&manifest(&g.root), &g.layout).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&missing) && msg.contains("usr/bin/git"),
        "{msg}"
    );
    assert_eq!(field_of(err), "tools[0].program");

    let entry = g.root.join("usr/bin/entry");
    std::fs::write(&entry, dynamic_elf_asking_for(&missing)).unwrap();
    std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        &tool,
        dynamic_elf_asking_for(&present.display().to_string()),
    )
    .unwrap();
    let mut m = manifest(&g.root);
    m.command.argv[0] = entry.display().to_string();
    let err = plan_agent(&m, &g.layout).unwrap_err();
    assert!(err.to_string().contains(&missing), "{err}");
    assert_eq!(field_of(err), "command.argv[0]");

    // The loader present: the same manifest resolves.
    std::fs::write(
        &entry,
        dynamic_elf_asking_for(&present.display().to_string()),
    )
    .unwrap();
    plan_agent(&m, &g.layout).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_writable_mount_over_an_executable_path_is_refused() {
    let g = guest();
    let mut m = manifest(&g.root);
    m.mounts[0].guest_path = g.root.join("shims").display().to_string();
    let err = plan_agent(&m, &g.layout).unwrap_err();
    assert!(matches!(err, ManifestApplyError::Layer(_)), "{err}");
    assert!(
        err.to_string().contains("writable") && err.to_string().contains("executable"),
        "{err}"
    );
}

#[test]
fn an_interpreter_entrypoint_gets_its_library_tree_and_nothing_else() {
    use airlock_enforcer::manifest_layers::runtime_library_trees;
    let dir = tempfile::tempdir().unwrap();
    // The system's python3 (a symlink to python3.N; `make test` installs it): the
    // standard library of that version.
    let python = Path::new("/usr/bin/python3");
    let real = std::fs::canonicalize(python).expect("/usr/bin/python3 (make test installs it)");
    let version = real.file_name().unwrap().to_str().unwrap().to_string();
    let trees = runtime_library_trees(python);
    assert!(
        trees.contains(&Path::new("/usr/lib").join(&version)),
        "{version}: {trees:?}"
    );
    for t in &trees {
        assert!(
            !["/usr", "/usr/lib", "/usr/bin", "/usr/lib/git-core"].contains(&t.to_str().unwrap()),
            "{t:?} is more than a library tree"
        );
    }
    // Anything else gets nothing: a shell, a tool, a name that only looks like python.
    for other in ["sh", "git", "python3.x", "python3.", "mypython3.11"] {
        let p = dir.path().join(other);
        std::fs::write(&p, "").unwrap();
        assert!(runtime_library_trees(&p).is_empty(), "{other}");
    }
}
