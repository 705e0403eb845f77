//! `airlock image build --profile minimal` for real: the pinned Debian kernel fetched
//! with apt (cached under target/airlock-cache), its modules resolved from their own
//! `depends`, the static enforcer and shim, busybox-static and the launcher's key packed
//! into a reproducible initramfs.

use airlock_launcher::image::cpio::read_newc;
use airlock_launcher::image::{build, BuildInputs, ImageError, Profile};
use std::io::Read;
use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The inputs, or why this machine cannot build an image (a failure under CI).
fn inputs(out: &Path, key_dir: &Path) -> Option<BuildInputs> {
    let musl = workspace_root().join("target/x86_64-unknown-linux-musl/release");
    let missing: Vec<String> = [
        musl.join("airlock-enforcer"),
        musl.join("airlock-shim"),
        PathBuf::from("/bin/busybox"),
    ]
    .into_iter()
    .filter(|p| !p.exists())
    .map(|p| p.display().to_string())
    .collect();
    if !missing.is_empty() {
        let why = format!(
            "missing {} (make enforcer-static; apt-get install busybox-static)",
            missing.join(", ")
        );
        assert!(std::env::var_os("CI").is_none(), "{why}");
        eprintln!("skipped: {why}");
        return None;
    }
    airlock_launcher::keys::keygen(key_dir, true).unwrap();
    Some(BuildInputs {
        enforcer: musl.join("airlock-enforcer"),
        shim: musl.join("airlock-shim"),
        busybox: PathBuf::from("/bin/busybox"),
        public_key: key_dir.join("airlock.pub"),
        cache: workspace_root().join("target/airlock-cache"),
        out: out.to_path_buf(),
    })
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
    let Some(inp) = inputs(&dir.path().join("out"), &dir.path().join("keys")) else {
        return;
    };
    let quiet = |_: &str| {};
    let (d, changed) = build(Profile::Minimal, &inp, &quiet).unwrap_or_else(|e| panic!("{e}"));
    assert!(changed);
    assert_eq!(d.landlock_abi, 6);
    assert!(d.image_id.starts_with("sha256:") && d.image_id.len() == 71);
    // The modules come in dependency order, vsock before its transports.
    let pos = |m: &str| d.modules.iter().position(|x| x == m).unwrap();
    assert!(pos("vsock") < pos("vmw_vsock_virtio_transport_common"));
    assert!(pos("vmw_vsock_virtio_transport_common") < pos("vmw_vsock_virtio_transport"));

    let entries = read_newc(&gunzip(&d.initrd)).unwrap();
    let get = |name: &str| {
        entries
            .iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("{name} missing from the initramfs"))
    };
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
    let Some(inp) = inputs(&dir.path().join("out"), &dir.path().join("keys")) else {
        return;
    };
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

/// The image boots under QEMU (`-M microvm`, TCG, no devices) to the enforcer as PID 1,
/// which mounts the guest filesystems, loads the modules in the image's order, reads the
/// baked key and image id, and starts serving its vsock port (`tests/vm_channel.rs`
/// talks to it).
#[test]
fn the_minimal_image_boots_to_the_enforcer_as_pid_1() {
    let dir = tempfile::tempdir().unwrap();
    let Some(inp) = inputs(&dir.path().join("out"), &dir.path().join("keys")) else {
        return;
    };
    let qemu = Path::new("/usr/bin/qemu-system-x86_64");
    if !qemu.exists() {
        let why = "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)";
        assert!(std::env::var_os("CI").is_none(), "{why}");
        eprintln!("skipped: {why}");
        return;
    }
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
