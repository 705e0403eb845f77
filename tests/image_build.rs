//! `airlock image build` for real: the pinned Debian kernel fetched with apt (cached
//! under target/airlock-cache), its modules resolved from their own `depends`, the
//! static enforcer and shim, busybox-static and the launcher's key packed into a
//! reproducible initramfs (`minimal`); and the `debian` profile's trixie rootfs, built
//! with mmdebstrap, packed as erofs (cached there too), booted into by the enforcer.

use airlock_launcher::image::cpio::read_newc;
use airlock_launcher::image::{build, BuildInputs, ImageError, Profile};
use std::io::Read;
use std::path::{Path, PathBuf};

#[path = "vm_support.rs"]
mod vm_support;
use vm_support::workspace_root;

/// The inputs, or why this machine cannot build an image (a failure under CI).
/// The static binaries come from `target/x86_64-unknown-linux-musl/release`
/// (`make enforcer-static`), or from `AIRLOCK_TEST_MUSL_DIR` when set (a build in
/// another target directory).
fn inputs(out: &Path, key_dir: &Path) -> BuildInputs {
    let musl = std::env::var_os("AIRLOCK_TEST_MUSL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/x86_64-unknown-linux-musl/release"));
    vm_support::require_present(&[
        &musl.join("airlock-enforcer"),
        &musl.join("airlock-shim"),
        Path::new("/bin/busybox"),
    ]);
    airlock_launcher::keys::keygen(key_dir, true).unwrap();
    BuildInputs {
        enforcer: musl.join("airlock-enforcer"),
        shim: musl.join("airlock-shim"),
        busybox: PathBuf::from("/bin/busybox"),
        public_key: key_dir.join("airlock.pub"),
        cache: workspace_root().join("target/airlock-cache"),
        out: out.to_path_buf(),
        added: vec![],
    }
}

type CpioEntry = (String, u32, Vec<u8>);

/// The initramfs entry `name`: (path, mode, bytes).
fn entry<'a>(entries: &'a [CpioEntry], name: &str) -> &'a CpioEntry {
    entries
        .iter()
        .find(|(n, _, _)| n == name)
        .unwrap_or_else(|| panic!("{name} missing from the initramfs"))
}

fn gunzip(path: &Path) -> Vec<u8> {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut raw)
        .unwrap();
    raw
}

#[test]
fn the_minimal_image_is_complete_bound_and_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let inp = inputs(&dir.path().join("out"), &dir.path().join("keys"));
    let quiet = |_: &str| {};
    let (d, changed) = build(Profile::Minimal, &inp, &quiet).unwrap_or_else(|e| panic!("{e}"));
    assert!(changed);
    assert_eq!(d.landlock_abi, 6);
    assert!(d.image_id.starts_with("sha256:") && d.image_id.len() == 71);
    // The modules come in dependency order, vsock before its transports.
    let pos = |m: &str| d.modules.iter().position(|x| x == m).unwrap();
    assert!(pos("vsock") < pos("vmw_vsock_virtio_transport_common"));
    assert!(pos("vmw_vsock_virtio_transport_common") < pos("vmw_vsock_virtio_transport"));
    // Copy-on-write workspaces are overlays: every image carries overlayfs.
    pos("overlay");

    let entries = read_newc(&gunzip(&d.initrd)).unwrap();
    let get = |name: &str| entry(&entries, name);
    assert_eq!(get("init").2, std::fs::read(&inp.enforcer).unwrap());
    assert_eq!(get("init").1 & 0o777, 0o755);
    assert_eq!(
        get("etc/airlock/launcher.pub").2,
        std::fs::read(&inp.public_key).unwrap()
    );
    assert_eq!(
        String::from_utf8_lossy(&get("etc/airlock/image-id").2).trim(),
        d.image_id
    );
    let order = String::from_utf8_lossy(
        &get(&format!(
            "lib/modules/{}/airlock-load-order",
            d.kernel_release
        ))
        .2,
    )
    .into_owned();
    let listed: Vec<&str> = order.lines().collect();
    let want: Vec<String> = d.modules.iter().map(|m| format!("{m}.ko")).collect();
    assert_eq!(listed, want);
    for m in &want {
        let elf = &get(&format!("lib/modules/{}/{m}", d.kernel_release)).2;
        assert!(
            elf.starts_with(b"\x7fELF"),
            "{m} is not a decompressed module"
        );
    }
    assert_eq!(get("bin/sh").2, b"busybox");
    assert!(std::fs::read(&d.vmlinux).unwrap().starts_with(b"\x7fELF"));

    // Same inputs: same bytes, same id, nothing written.
    let before = std::fs::read(&d.initrd).unwrap();
    let (again, changed) = build(Profile::Minimal, &inp, &quiet).unwrap();
    assert!(!changed, "a rebuild with nothing changed wrote something");
    assert_eq!(again, d);
    assert_eq!(std::fs::read(&d.initrd).unwrap(), before);

    // Another key is another image.
    let other_keys = dir.path().join("other-keys");
    airlock_launcher::keys::keygen(&other_keys, true).unwrap();
    let other = BuildInputs {
        public_key: other_keys.join("airlock.pub"),
        out: dir.path().join("out2"),
        ..inp.clone()
    };
    let (d2, _) = build(Profile::Minimal, &other, &quiet).unwrap();
    assert_ne!(d2.image_id, d.image_id);
}

#[test]
fn a_dynamically_linked_enforcer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let inp = inputs(&dir.path().join("out"), &dir.path().join("keys"));
    let dynamic = BuildInputs {
        enforcer: PathBuf::from("/bin/true"),
        ..inp
    };
    let err = build(Profile::Minimal, &dynamic, &|_| {}).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::Input {
                what: "enforcer",
                ..
            }
        ) && err.to_string().contains("dynamically linked"),
        "{err}"
    );
    assert!(!dir.path().join("out/minimal/initramfs.cpio.gz").exists());
}

/// `--add`: an added file lands at its guest path with 0755 or 0644 (by the host
/// file's exec bits), is listed for the debian init and in the descriptor, and changes
/// the image id; one that would replace part of the image, a reserved path or a
/// directory is refused before anything is written.
#[test]
fn added_files_are_covered_by_the_image_id_and_never_replace_the_image() {
    use airlock_launcher::image::AddedFile;
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let inp = inputs(&dir.path().join("out"), &dir.path().join("keys"));
    let tool = dir.path().join("tool");
    std::fs::write(&tool, b"#!/bin/sh\necho tool\n").unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o700)).unwrap();
    let data = dir.path().join("data");
    std::fs::write(&data, b"some data\n").unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (plain, _) = build(Profile::Minimal, &inp, &|_| {}).unwrap_or_else(|e| panic!("{e}"));
    let with = BuildInputs {
        added: vec![
            AddedFile::parse(&format!("{}:/srv/data", data.display())).unwrap(),
            AddedFile::parse(&format!("{}:/opt/tools/tool", tool.display())).unwrap(),
        ],
        out: dir.path().join("out-added"),
        ..inp.clone()
    };
    let (d, _) = build(Profile::Minimal, &with, &|_| {}).unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(d.image_id, plain.image_id, "added files are not in the id");
    let paths: Vec<(&str, u32)> = d.added.iter().map(|a| (a.path.as_str(), a.mode)).collect();
    assert_eq!(paths, [("/opt/tools/tool", 0o755), ("/srv/data", 0o644)]);
    let entries = read_newc(&gunzip(&d.initrd)).unwrap();
    let get = |name: &str| entry(&entries, name);
    assert_eq!(get("opt/tools/tool").2, std::fs::read(&tool).unwrap());
    assert_eq!(get("opt/tools/tool").1 & 0o7777, 0o755);
    assert_eq!(get("srv/data").1 & 0o7777, 0o644);
    assert_eq!(
        String::from_utf8_lossy(&get("etc/airlock/added-files").2),
        "755 /opt/tools/tool\n644 /srv/data\n"
    );
    // Same inputs again: the same image.
    let (again, changed) = build(Profile::Minimal, &with, &|_| {}).unwrap();
    assert!(!changed);
    assert_eq!(again, d);

    for (guest, why) in [
        ("/bin/sh", "the image already has /bin/sh"),
        (
            "/etc/airlock/launcher.pub",
            "which the image provides itself",
        ),
        (
            "/usr/lib/airlock/bin/git",
            "which the image provides itself",
        ),
        ("/opt/../init", "normalized"),
    ] {
        let bad = BuildInputs {
            added: vec![AddedFile {
                host: tool.clone(),
                guest: guest.into(),
            }],
            out: dir.path().join("out-bad"),
            ..inp.clone()
        };
        let err = build(Profile::Minimal, &bad, &|_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains(why), "{guest}: {err}");
        assert!(
            AddedFile::parse(&format!("{}:{guest}", tool.display())).is_err() || guest == "/bin/sh"
        );
    }
    let bad = BuildInputs {
        added: vec![AddedFile {
            host: dir.path().to_path_buf(),
            guest: "/opt/dir".into(),
        }],
        out: dir.path().join("out-bad"),
        ..inp.clone()
    };
    let err = build(Profile::Minimal, &bad, &|_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not a regular file"), "{err}");
    assert!(!dir
        .path()
        .join("out-bad/minimal/initramfs.cpio.gz")
        .exists());
}

/// The image boots under QEMU (`-M microvm`, TCG, no devices) to the enforcer as PID 1,
/// which mounts the guest filesystems, loads the modules in the image's order, reads the
/// baked key and image id, and starts serving its vsock port (`tests/vm_channel.rs`
/// talks to it).
#[test]
fn the_minimal_image_boots_to_the_enforcer_as_pid_1() {
    let dir = tempfile::tempdir().unwrap();
    let inp = inputs(&dir.path().join("out"), &dir.path().join("keys"));
    let qemu = Path::new("/usr/bin/qemu-system-x86_64");
    vm_support::require_present(&[qemu]);
    let (d, _) = build(Profile::Minimal, &inp, &|_| {}).unwrap_or_else(|e| panic!("{e}"));
    let spec = airlock_launcher::vmm::VmSpec::for_image(&d, 3, 1, 256);
    let serial_log = dir.path().join("serial.log");
    let mut child = std::process::Command::new(qemu)
        .args(["-M", "microvm", "-m", "256", "-smp", "1"])
        .args(["-nographic", "-nodefaults", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", serial_log.display()))
        .arg("-kernel")
        .arg(&d.kernel)
        .arg("-initrd")
        .arg(&d.initrd)
        .args(["-append", &spec.kernel_cmdline()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let serial = loop {
        let serial = std::fs::read_to_string(&serial_log).unwrap_or_default();
        if serial.contains("airlock-enforcer: listening on vsock port") {
            break serial;
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!("the VM stopped ({st}) before the enforcer listened:\n{serial}");
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the enforcer did not come up within 120 s:\n{serial}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    let line = serial
        .lines()
        .find(|l| l.starts_with("airlock-enforcer: init: mounted"))
        .unwrap_or_else(|| panic!("no init report on the console:\n{serial}"));
    assert!(
        line.contains("/proc /sys /dev /run /tmp /sys/fs/cgroup"),
        "{line}"
    );
    assert!(
        line.contains(&format!("modules {};", d.modules.join(" "))),
        "{line}"
    );
    assert!(line.contains("landlock abi 6"), "{line}");
    assert!(line.contains(&format!("image {};", d.image_id)), "{line}");
    assert!(
        line.contains(&format!("trusted key {}", d.trusted_key_id)),
        "{line}"
    );
}

/// The inputs of a `debian` build (panics naming a missing build tool: `make test`
/// installs them).
fn debian_inputs(out: &Path, key_dir: &Path) -> BuildInputs {
    let inp = inputs(out, key_dir);
    if let Some(missing) = airlock_launcher::image::debian::missing_tool() {
        panic!("{missing} (`make test` installs it)");
    }
    inp
}

/// sha256 of a file, by coreutils (the tests crate has no hash dependency of its own).
fn sha256_file(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn the_debian_image_is_complete_bound_and_a_no_op_the_second_time() {
    let dir = tempfile::tempdir().unwrap();
    let inp = debian_inputs(&dir.path().join("out"), &dir.path().join("keys"));
    let lines = std::sync::Mutex::new(Vec::<String>::new());
    let record = |l: &str| lines.lock().unwrap().push(l.to_string());
    let t = std::time::Instant::now();
    let (d, changed) = build(Profile::Debian, &inp, &record).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("debian build: {:.1} s", t.elapsed().as_secs_f64());
    assert!(changed);
    assert!(
        lines.lock().unwrap().iter().any(|l| l.contains("rootfs")),
        "no progress about the rootfs: {:?}",
        lines.lock().unwrap()
    );
    assert_eq!(d.profile, Profile::Debian);
    assert!(d
        .cmdline
        .contains("airlock.root=/dev/vda airlock.rootfstype=erofs"));
    let rootfs = d.rootfs.clone().expect("the debian image has a rootfs");
    let rootfs_bytes = std::fs::read(&rootfs).unwrap();
    assert_eq!(
        rootfs_bytes[1024..1028],
        0xE0F5_E1E2u32.to_le_bytes(),
        "not erofs"
    );
    // What mounts the rootfs is loaded, dependencies first.
    let pos = |m: &str| {
        d.modules
            .iter()
            .position(|x| x == m)
            .unwrap_or_else(|| panic!("{m} not in {:?}", d.modules))
    };
    pos("virtio_blk");
    pos("overlay");
    for dep in airlock_launcher::image::kmod::ModuleTree::scan(&inp.cache.join(format!(
        "kernel/{r}/usr/lib/modules/{r}",
        r = d.kernel_release
    )))
    .unwrap()
    .load_order(&["erofs"])
    .unwrap()
    {
        assert!(pos(&dep.name) <= pos("erofs"), "{} after erofs", dep.name);
    }

    let entries = read_newc(&gunzip(&d.initrd)).unwrap();
    let get = |name: &str| entry(&entries, name);
    assert_eq!(get("init").2, std::fs::read(&inp.enforcer).unwrap());
    assert_eq!(
        get("usr/lib/airlock/bin/airlock-shim").2,
        std::fs::read(&inp.shim).unwrap()
    );
    assert_eq!(
        get("etc/airlock/launcher.pub").2,
        std::fs::read(&inp.public_key).unwrap()
    );
    // The image id covers the rootfs's bytes: their digest is inside the initramfs.
    assert_eq!(
        String::from_utf8_lossy(&get("etc/airlock/rootfs-sha256").2).trim(),
        sha256_file(&rootfs)
    );
    assert_eq!(
        String::from_utf8_lossy(&get("etc/airlock/image-id").2).trim(),
        d.image_id
    );
    // The rootfs is the userland: no busybox in this initramfs.
    assert!(entries.iter().all(|(n, _, _)| !n.starts_with("bin/")));

    // Nothing changed: nothing written, same bytes.
    let mtime = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let (initrd_before, rootfs_before) = (mtime(&d.initrd), mtime(&rootfs));
    let t = std::time::Instant::now();
    let (again, changed) = build(Profile::Debian, &inp, &|_| {}).unwrap();
    eprintln!("debian rebuild: {:.1} s", t.elapsed().as_secs_f64());
    assert!(!changed, "a rebuild with nothing changed wrote something");
    assert_eq!(again, d);
    assert_eq!(mtime(&d.initrd), initrd_before);
    assert_eq!(mtime(&rootfs), rootfs_before);

    // Another key is another image over the same rootfs.
    let other_keys = dir.path().join("other-keys");
    airlock_launcher::keys::keygen(&other_keys, true).unwrap();
    let other = BuildInputs {
        public_key: other_keys.join("airlock.pub"),
        out: dir.path().join("out2"),
        ..inp.clone()
    };
    let (d2, _) = build(Profile::Debian, &other, &|_| {}).unwrap();
    assert_ne!(d2.image_id, d.image_id);
    assert_eq!(
        std::fs::read(d2.rootfs.as_ref().unwrap()).unwrap(),
        rootfs_bytes
    );
}

/// The debian image boots under QEMU (microvm, TCG, the rootfs as the read-only
/// `/dev/vda`): the enforcer as PID 1 switches into the rootfs under a tmpfs overlay,
/// reports it, serves its vsock port with the image's id, and runs the rootfs's git and
/// python3 as the agent under a manifest bound to this boot.
#[tokio::test(flavor = "current_thread")]
async fn the_debian_image_boots_into_its_rootfs_and_runs_its_tools() {
    use airlock_launcher::mint::{mint, MintOptions};
    use airlock_launcher::vmm::hybrid_vsock::grpc_channel;
    use airlock_launcher::vmm::qemu::Qemu;
    use airlock_launcher::vmm::{Vm, VmSpec};
    use airlock_proto::pb::{ApplyRequest, HelloRequest, ShutdownRequest};
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let inp = debian_inputs(&dir.path().join("out"), &dir.path().join("keys"));
    let tools = vm_support::qemu_tools();
    vm_support::require_present(&[&tools.qemu, &tools.vhost_device_vsock, &tools.virtiofsd]);
    let (d, _) = build(Profile::Debian, &inp, &|_| {}).unwrap_or_else(|e| panic!("{e}"));
    let cid = 7;
    let started = Instant::now();
    let mut spec = VmSpec::for_image(&d, cid, 1, 512);
    spec.host_ports = vec![airlock_proto::HOST_VSOCK_PORT];
    let mut vm = Qemu::tcg(tools)
        .boot_vm(&spec, &dir.path().join("vms"))
        .unwrap();
    let channel = grpc_channel(
        vm.vsock_uds(),
        1024,
        Instant::now() + Duration::from_secs(120),
        vm.serial_log(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\nserial:\n{}", vm.serial_output()));
    eprintln!(
        "debian image: enforcer answering {:.1} s after QEMU started",
        started.elapsed().as_secs_f64()
    );
    let mut client = airlock_proto::pb::enforcer_client::EnforcerClient::new(channel);
    let serial = vm.serial_output();
    let line = serial
        .lines()
        .find(|l| l.starts_with("airlock-enforcer: init: mounted"))
        .unwrap_or_else(|| panic!("no init report on the console:\n{serial}"));
    assert!(
        line.contains(
            "mounted /=overlay(erofs:/dev/vda:ro+tmpfs) /proc /sys /dev /run /tmp /sys/fs/cgroup /dev/pts;"
        ),
        "{line}"
    );
    assert!(
        line.contains(&format!("modules {};", d.modules.join(" "))),
        "{line}"
    );
    assert!(line.contains(&format!("image {};", d.image_id)), "{line}");
    assert!(
        line.contains(&format!("trusted key {}", d.trusted_key_id)),
        "{line}"
    );

    let v = airlock_proto::PROTOCOL_VERSION;
    let hello = client
        .hello(HelloRequest {
            host_protocol_version: v,
            host_min_protocol_version: v,
            host_software_version: "test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hello.image_id, d.image_id);
    let policy = vm_support::vm_policy();
    let plan = airlock_launcher::plan::Plan::parse(
        "plan.toml",
        "command = [\"/usr/bin/git\", \"--version\"]\ntools = [\"git\", \"python3\"]\n",
        false,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let manifest = mint(
        &policy,
        &plan,
        &MintOptions {
            now: now.as_secs(),
            ttl_secs: 60,
            vm_cid: cid,
            image_id: d.image_id.clone(),
            nonce: Some(hex::encode(&hello.challenge_nonce)),
            session_id: Some(vm_support::HAND_SESSION_ID.into()),
            approve_asks: false,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let signer = airlock_launcher::keys::load_signer(&dir.path().join("keys/airlock.key")).unwrap();
    let _host = vm_support::serve_host_by_hand(&mut vm, &policy, &["git", "python3"]);
    client
        .apply(ApplyRequest {
            envelope: serde_json::to_vec(&signer.sign_manifest(&manifest).unwrap()).unwrap(),
            host_time_unix_millis: now.as_millis() as i64,
            session_secret: vm_support::HAND_SESSION_SECRET.to_vec(),
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", vm.serial_output()));
    let (code, out, err) = vm_support::enforcer_exec(&mut client, &["git", "--version"]).await;
    assert_eq!(code, 0, "git --version: {err}\n{}", vm.serial_output());
    assert!(out.starts_with("git version 2."), "{out}");
    let (code, out, err) = vm_support::enforcer_exec(
        &mut client,
        &[
            "python3",
            "-c",
            "import ssl, sys; print(sys.version_info[0])",
        ],
    )
    .await;
    assert_eq!((code, out.trim()), (0, "3"), "{err}");
    // The baked identity is what the agent sees in the switched root too.
    let (code, out, err) = vm_support::enforcer_exec(
        &mut client,
        &[
            "python3",
            "-c",
            "print(open('/etc/airlock/image-id').read().strip())",
        ],
    )
    .await;
    assert_eq!((code, out.trim()), (0, d.image_id.as_str()), "{err}");

    client
        .shutdown(ShutdownRequest {
            reason: "test over".into(),
        })
        .await
        .unwrap();
    assert!(
        vm.wait_for_exit(Duration::from_secs(30)).is_some(),
        "the VM did not power off\n{}",
        vm.serial_output()
    );
    Box::new(vm).destroy().unwrap();
}

/// An added file the debian rootfs already has is not laid over it: the init refuses
/// the switch, names the file, and the VM powers off before the enforcer serves
/// anything. (Added files that do not collide are carried in: `vm_containment.rs`
/// runs its probe that way.)
#[test]
fn an_added_file_the_rootfs_already_has_stops_the_boot() {
    use airlock_launcher::image::AddedFile;
    use airlock_launcher::vmm::qemu::Qemu;
    use airlock_launcher::vmm::{VmSpec, Vmm};
    let dir = tempfile::tempdir().unwrap();
    let mut inp = debian_inputs(&dir.path().join("out"), &dir.path().join("keys"));
    let tools = vm_support::qemu_tools();
    vm_support::require_present(&[&tools.qemu, &tools.vhost_device_vsock, &tools.virtiofsd]);
    let fake = dir.path().join("git");
    std::fs::write(&fake, b"#!/bin/sh\necho not git\n").unwrap();
    inp.added = vec![AddedFile::parse(&format!("{}:/usr/bin/git", fake.display())).unwrap()];
    let (d, _) = build(Profile::Debian, &inp, &|_| {}).unwrap_or_else(|e| panic!("{e}"));
    let mut vm = Qemu::tcg(tools)
        .boot(&VmSpec::for_image(&d, 9, 1, 512), &dir.path().join("vms"))
        .unwrap();
    let status = vm.wait_for_exit(std::time::Duration::from_secs(120));
    let serial = vm.serial_output();
    assert!(status.is_some(), "the VM kept running:\n{serial}");
    assert!(
        serial.contains("/usr/bin/git") && serial.contains("File exists"),
        "the console does not name the collision:\n{serial}"
    );
    assert!(
        !serial.contains(airlock_proto::ENFORCER_LISTENING_LINE),
        "the enforcer served:\n{serial}"
    );
    vm.destroy().unwrap();
}
