//! The cloud-hypervisor backend held against the real binary (v54, built from source;
//! `make ch-tools` copies it and `ch-remote` into the tool cache).
//!
//! Where KVM cannot run a normal guest (these machines: a nested, PVM-only KVM), CH
//! still parses its whole command line, creates the VM and its devices, serves its API
//! and reports the VM `Running`; only the guest kernel makes no progress. So what the
//! backend asks of CH is checked against CH's own view (`ch-remote info`), and the
//! backend's lifecycle (an API shutdown, destroy, a crashed launcher and the next
//! launcher's sweep) against the real processes. Only the guest boot needs working
//! KVM: where it is missing, that one test is recorded as skipped, with the reason.

#[path = "vm_support.rs"]
mod vm_support;

use airlock_launcher::image::{build, ImageDescriptor, Profile};
use airlock_launcher::launcher::{ExecEnd, ExecSpec, Launcher, LauncherConfig};
use airlock_launcher::plan::Plan;
use airlock_launcher::vmm::cloud_hypervisor::{kvm_unusable, CloudHypervisor};
use airlock_launcher::vmm::state_dir::Sweep;
use airlock_launcher::vmm::{host_tsc_khz, Share, Vm, VmSpec, Vmm, VM_CLOCK_ARGS};
use airlock_proto::HOST_VSOCK_PORT;
use serde_json::Value;
use std::io::{BufRead, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vm_support::{setup, workspace_root, ONE_VM};

/// The guest CID, vCPUs and memory the tests grant: none of them CH's defaults (CID
/// none, 1 vCPU, 512 MiB), so CH reporting them proves it took them from the backend.
const CID: u32 = 42;
const VCPUS: u32 = 2;
const MEMORY_MIB: u64 = 384;

/// How long CH gets to create the VM and report it `Running`.
const RUNNING_TIMEOUT: Duration = Duration::from_secs(30);

/// A program from the tool cache; panics naming it when absent (never a skip:
/// `make test` runs `make ch-tools` first).
fn cached_tool(name: &str) -> PathBuf {
    let path = workspace_root()
        .join("target/airlock-cache/tools/bin")
        .join(name);
    assert!(
        path.is_file(),
        "{} is missing: `make ch-tools` copies cloud-hypervisor and ch-remote there",
        path.display()
    );
    path
}

/// The backend under test, with the cached cloud-hypervisor and virtiofsd.
fn backend() -> CloudHypervisor {
    let virtiofsd = vm_support::qemu_tools().virtiofsd;
    vm_support::require_present(&[&virtiofsd]);
    CloudHypervisor {
        binary: cached_tool("cloud-hypervisor"),
        virtiofsd,
    }
}

/// A minimal image signed for a fresh key, and the host side of the grants, in a
/// temporary directory.
struct Fixture {
    dir: tempfile::TempDir,
    image: ImageDescriptor,
}

impl Fixture {
    /// Builds the minimal image (panics naming a missing tool) and the grants' files.
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (inputs, _) = setup(dir.path());
        let (image, _) = build(Profile::Minimal, &inputs, &|_| {})
            .unwrap_or_else(|e| panic!("building the minimal image: {e}"));
        for (d, file) in [("ro-share", Some("readme")), ("rw-share", None)] {
            let d = dir.path().join(d);
            std::fs::create_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
            if let Some(f) = file {
                std::fs::write(d.join(f), "read me\n").expect("a file in the share");
            }
        }
        // Any small file will do as a disk: the guest never reads it here.
        let rootfs = dir.path().join("rootfs.img");
        std::fs::write(&rootfs, vec![0u8; 1 << 20])
            .unwrap_or_else(|e| panic!("{}: {e}", rootfs.display()));
        Fixture { dir, image }
    }

    fn base(&self) -> &Path {
        self.dir.path()
    }

    fn state_root(&self) -> PathBuf {
        self.base().join("vms")
    }

    fn spec(&self) -> VmSpec {
        spec_in(self.base(), &self.image)
    }

    /// A launcher on the CH backend over the fixture's image and state root, and what
    /// its start-up sweep did.
    fn ch_launcher(&self) -> (Launcher, Sweep) {
        let key = self.base().join("keys/airlock.key");
        let signer = airlock_launcher::keys::load_signer(&key)
            .unwrap_or_else(|e| panic!("{}: {e}", key.display()));
        Launcher::new(LauncherConfig {
            policy: Arc::new(vm_support::vm_policy()),
            signer: Arc::new(signer),
            image: self.image.clone(),
            vmm: Arc::new(backend()),
            state_root: self.state_root(),
            boot_timeout: Duration::from_secs(30),
            egress_pins: Default::default(),
            approvals: airlock_launcher::approval_broker::ApprovalBroker::configured(
                std::time::Duration::from_secs(60),
                Some(airlock_launcher::approval_broker::AutoAnswer {
                    answer: airlock_launcher::approval_broker::Answer::Deny,
                    approver: "--on-ask deny".into(),
                }),
                None,
            ),
        })
        .unwrap_or_else(|e| panic!("a launcher on cloud-hypervisor: {e}"))
    }

    /// Boots [`Fixture::spec`] on the real CH and waits until CH reports it running.
    fn boot_running(&self) -> (Box<dyn Vm>, Value) {
        let mut vm = backend()
            .boot(&self.spec(), &self.state_root())
            .unwrap_or_else(|e| panic!("booting cloud-hypervisor: {e}"));
        let info = wait_running(vm.as_mut());
        (vm, info)
    }
}

/// The grants every CH VM here gets, for the fixture in `base`: one read-only and one
/// read-write share (tags `m0`, `m1`, as the launcher names them), the small file as a
/// read-only disk, and the host port the launcher's `Host` service listens on.
fn spec_in(base: &Path, image: &ImageDescriptor) -> VmSpec {
    let share = |tag: &str, dir: &str, read_only: bool| {
        let host_dir = base.join(dir);
        let meta =
            std::fs::metadata(&host_dir).unwrap_or_else(|e| panic!("{}: {e}", host_dir.display()));
        Share {
            tag: tag.into(),
            host_dir,
            read_only,
            owner: (meta.uid(), meta.gid()),
        }
    };
    let mut spec = VmSpec::for_image(image, CID, VCPUS, MEMORY_MIB);
    spec.shares = vec![
        share("m0", "ro-share", true),
        share("m1", "rw-share", false),
    ];
    spec.rootfs = Some(base.join("rootfs.img"));
    spec.host_ports = vec![HOST_VSOCK_PORT];
    spec
}

/// The VM's API socket (the backend keeps it in the VM directory).
fn api_socket(vm: &dyn Vm) -> PathBuf {
    vm.state_dir().join("api.sock")
}

/// What CH wrote to its own log, for failure messages.
fn ch_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("cloud-hypervisor.log")).unwrap_or_default()
}

/// `ch-remote --api-socket <api> <args>`: its stdout, or why it failed.
fn ch_remote(api: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cached_tool("ch-remote"))
        .arg("--api-socket")
        .arg(api)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running ch-remote: {e}"));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ch-remote {args:?} {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// CH's own view of the VM (`ch-remote info`, JSON).
fn ch_info(api: &Path) -> Result<Value, String> {
    let text = ch_remote(api, &["info"])?;
    serde_json::from_str(&text).map_err(|e| format!("ch-remote info is not JSON ({e}): {text}"))
}

/// Waits until CH reports the VM `Running`; panics with CH's log if CH exits first or
/// the time runs out.
fn wait_running(vm: &mut dyn Vm) -> Value {
    let deadline = Instant::now() + RUNNING_TIMEOUT;
    let api = api_socket(vm);
    loop {
        let last = match ch_info(&api) {
            Ok(info) if info["state"] == "Running" => return info,
            Ok(info) => format!("state {}", info["state"]),
            Err(e) => e,
        };
        if let Some(st) = vm.exited() {
            panic!(
                "cloud-hypervisor exited ({st}) before reporting the VM running; its log:\n{}",
                ch_log(vm.state_dir())
            );
        }
        assert!(
            Instant::now() < deadline,
            "cloud-hypervisor did not report the VM running within {RUNNING_TIMEOUT:?} \
             (last: {last}); its log:\n{}",
            ch_log(vm.state_dir())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `pid` is a live process. A zombie is not: it has exited, and only its
/// parent (the test, or whoever adopted an orphan) has yet to collect the status.
fn running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}

/// Live processes whose command line names `dir`: the VM's CH and virtiofsd, and any
/// process they forked (virtiofsd's sandbox child) that `Vm::pids` does not list.
fn processes_naming(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            (cmdline.contains(&needle) && running(pid)).then_some((pid, cmdline))
        })
        .collect()
}

/// Polls `done` until it holds or `timeout` passes; whether it held.
fn eventually(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The sockets a CH VM of [`spec_in`] has in its directory: the API, hybrid vsock, the
/// host port's listener and one virtiofsd socket per share.
fn vm_sockets(vm: &dyn Vm) -> Vec<PathBuf> {
    let d = vm.state_dir();
    vec![
        api_socket(vm),
        vm.vsock_uds().to_path_buf(),
        PathBuf::from(format!("{}_{HOST_VSOCK_PORT}", vm.vsock_uds().display())),
        d.join("virtiofsd-m0.sock"),
        d.join("virtiofsd-m1.sock"),
    ]
}

/// After a VM is gone: its directory, sockets and every process are.
fn assert_nothing_left(dir: &Path, sockets: &[PathBuf], pids: &[u32]) {
    for pid in pids {
        assert!(!running(*pid), "process {pid} of the VM still runs");
    }
    let left = processes_naming(dir);
    assert!(left.is_empty(), "processes of the VM still run: {left:?}");
    for s in sockets {
        assert!(!s.exists(), "{} is still there", s.display());
    }
    assert!(
        !dir.exists(),
        "the VM directory {} is still there",
        dir.display()
    );
}

/// The arguments `pid` was started with.
fn argv_of(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_else(|e| panic!("the command line of process {pid}: {e}"));
    raw.split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The string after `--cmdline` in the command line CH was started with.
fn passed_cmdline(ch_pid: u32) -> String {
    let args = argv_of(ch_pid);
    let at = args
        .iter()
        .position(|a| a == "--cmdline")
        .unwrap_or_else(|| panic!("cloud-hypervisor was started without --cmdline: {args:?}"));
    args.get(at + 1).cloned().expect("a value after --cmdline")
}

/// CH's own view of the VM is exactly what the spec grants: its vCPUs and memory
/// (shared, as vhost-user needs), its CID on the VM's hybrid vsock socket, one
/// virtio-fs device per share on that share's virtiofsd socket, the disk read-only, the
/// PVH kernel, initramfs and the command line the backend passed, the serial console
/// into the VM's log, and no network device at all.
#[test]
fn ch_reports_exactly_the_granted_devices() {
    let fx = Fixture::new();
    let _one = ONE_VM.blocking_lock();
    let spec = fx.spec();
    let (vm, info) = fx.boot_running();
    let d = vm.state_dir().to_path_buf();
    let pids = vm.pids();
    assert_eq!(pids.len(), 3, "two virtiofsd and CH: {pids:?}");
    for pid in &pids {
        assert!(running(*pid), "process {pid} of the VM is not running");
    }
    let ch_pid = *pids.last().expect("CH is started last");
    let config = &info["config"];
    let why = |what: &str| format!("{what} in CH's view: {info:#}");

    assert_eq!(info["state"], "Running", "{}", why("state"));
    assert_eq!(
        config["cpus"]["boot_vcpus"],
        u64::from(spec.vcpus),
        "{}",
        why("boot vCPUs")
    );
    assert_eq!(
        config["memory"]["size"],
        spec.memory_mib << 20,
        "{}",
        why("memory size (bytes)")
    );
    assert_eq!(
        config["memory"]["shared"],
        true,
        "{}",
        why("shared memory (virtiofsd maps it)")
    );
    assert_eq!(
        config["vsock"]["cid"],
        u64::from(spec.cid),
        "{}",
        why("vsock CID")
    );
    assert_eq!(
        config["vsock"]["socket"],
        vm.vsock_uds().display().to_string(),
        "{}",
        why("hybrid vsock socket")
    );

    let fs: Vec<(&str, &str)> = config["fs"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", why("no fs devices")))
        .iter()
        .map(|f| {
            (
                f["tag"].as_str().unwrap_or_default(),
                f["socket"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    let want_fs: Vec<(String, String)> = spec
        .shares
        .iter()
        .map(|s| {
            let socket = d.join(format!("virtiofsd-{}.sock", s.tag));
            (s.tag.clone(), socket.display().to_string())
        })
        .collect();
    let want_fs: Vec<(&str, &str)> = want_fs
        .iter()
        .map(|(t, s)| (t.as_str(), s.as_str()))
        .collect();
    assert_eq!(fs, want_fs, "{}", why("virtio-fs devices (one per share)"));
    // CH has no read-only flag for virtio-fs: the host side is virtiofsd's, one per
    // share (started first, in share order), serving that share's directory and
    // refusing writes to the read-only one.
    for (share, pid) in spec.shares.iter().zip(&pids) {
        let argv = argv_of(*pid);
        let has = |a: &str| argv.iter().any(|x| x == a);
        assert!(
            has(&format!("--shared-dir={}", share.host_dir.display()))
                && has(&format!("--tag={}", share.tag))
                && has("--readonly") == share.read_only,
            "virtiofsd for {share:?} runs as {argv:?}"
        );
    }

    let disks = config["disks"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", why("no disks")));
    let rootfs = spec.rootfs.as_ref().expect("the spec has a rootfs");
    assert_eq!(disks.len(), 1, "{}", why("disks"));
    assert_eq!(
        disks[0]["path"],
        rootfs.display().to_string(),
        "{}",
        why("disk path")
    );
    assert_eq!(disks[0]["readonly"], true, "{}", why("disk read-only"));

    let payload = &config["payload"];
    assert_eq!(
        payload["kernel"],
        spec.vmlinux.display().to_string(),
        "{}",
        why("kernel (the PVH vmlinux)")
    );
    assert_eq!(
        payload["initramfs"],
        spec.initrd.display().to_string(),
        "{}",
        why("initramfs")
    );
    // The command line as the backend passed it (it carries a TSC rate read from the
    // host when it was built, so it is taken from CH's argv, then checked for its form).
    let passed = passed_cmdline(ch_pid);
    assert_eq!(payload["cmdline"], passed, "{}", why("kernel command line"));
    let base = format!("{} {VM_CLOCK_ARGS}", spec.cmdline);
    match host_tsc_khz() {
        None => assert_eq!(passed, spec.kernel_cmdline()),
        Some(_) => {
            let khz = passed
                .strip_prefix(&format!("{base} tsc_early_khz="))
                .unwrap_or_else(|| panic!("{passed:?} is not {base:?} with tsc_early_khz"));
            assert!(
                !khz.is_empty() && khz.bytes().all(|b| b.is_ascii_digit()),
                "{passed:?}: tsc_early_khz is not a number"
            );
        }
    }

    assert_eq!(
        (&config["serial"]["mode"], &config["serial"]["file"]),
        (
            &Value::from("File"),
            &Value::from(vm.serial_log().display().to_string())
        ),
        "{}",
        why("serial console (to the VM's log)")
    );
    assert_eq!(
        config["console"]["mode"],
        "Off",
        "{}",
        why("virtio console")
    );

    let net = &config["net"];
    assert!(
        net.is_null() || net.as_array().is_some_and(|n| n.is_empty()),
        "{}",
        why("a network device")
    );
    vm.destroy()
        .unwrap_or_else(|e| panic!("destroying the VM: {e}"));
    assert!(!d.exists(), "{} outlived destroy", d.display());
}

/// `shutdown-vmm` over CH's API ends CH (the VM reports its exit), and destroy then
/// leaves nothing: no socket, no directory, no virtiofsd.
#[test]
fn an_api_shutdown_ends_ch_and_destroy_leaves_nothing() {
    let fx = Fixture::new();
    let _one = ONE_VM.blocking_lock();
    let (mut vm, _) = fx.boot_running();
    let d = vm.state_dir().to_path_buf();
    let pids = vm.pids();
    let sockets = vm_sockets(vm.as_ref());
    for s in &sockets {
        assert!(s.exists(), "{} missing while the VM runs", s.display());
    }
    assert!(vm.exited().is_none(), "CH exited before it was asked to");

    ch_remote(&api_socket(vm.as_ref()), &["shutdown-vmm"])
        .unwrap_or_else(|e| panic!("{e}; CH's log:\n{}", ch_log(&d)));
    let status = vm
        .wait_for_exit(Duration::from_secs(10))
        .unwrap_or_else(|| {
            panic!(
                "CH still runs 10 s after shutdown-vmm; its log:\n{}",
                ch_log(&d)
            )
        });
    assert!(
        status.success(),
        "CH ended with {status} after shutdown-vmm; its log:\n{}",
        ch_log(&d)
    );
    let ch_pid = *pids.last().expect("CH is started last");
    assert!(!running(ch_pid), "CH ({ch_pid}) still runs");
    // Its virtiofsd daemons lose their only client; whether or not they exit on their
    // own, destroy must not leave them.
    vm.destroy()
        .unwrap_or_else(|e| panic!("destroying a VM whose CH exited: {e}"));
    assert_nothing_left(&d, &sockets, &pids);
}

/// Destroying a VM whose CH still runs kills CH and every helper and removes the
/// directory with its sockets.
#[test]
fn destroying_a_running_ch_vm_kills_every_process_and_removes_its_directory() {
    let fx = Fixture::new();
    let _one = ONE_VM.blocking_lock();
    let (vm, _) = fx.boot_running();
    let d = vm.state_dir().to_path_buf();
    let pids = vm.pids();
    let sockets = vm_sockets(vm.as_ref());
    for pid in &pids {
        assert!(running(*pid), "process {pid} of the VM is not running");
    }
    for s in &sockets {
        assert!(s.exists(), "{} missing while the VM runs", s.display());
    }
    vm.destroy()
        .unwrap_or_else(|e| panic!("destroying a running VM: {e}"));
    assert_nothing_left(&d, &sockets, &pids);
}

/// Selects the crashed-launcher test's child mode: the fixture directory to boot in.
const CRASHED_LAUNCHER_ENV: &str = "AIRLOCK_TEST_CH_CRASHED_LAUNCHER";
/// The test that has a child mode (run again, alone, by its own binary).
const CRASHED_LAUNCHER_TEST: &str = "a_crashed_launchers_ch_vm_dies_with_it_and_is_swept";
/// How the child announces its VM: `<marker> <vm dir> <pid>...` (on a line the
/// harness may have begun).
const BOOTED_MARKER: &str = "airlock-test-ch-booted";

/// Kills and reaps the launcher child if the test fails before it does.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The crashed-launcher test's child: a launcher that boots a CH VM under the state
/// root in `base`, says where, and waits to be killed (a safety limit ends it, its VM
/// destroyed, should the parent never do so).
fn crashed_launcher_child(base: &Path) {
    let descriptor = base.join("images/minimal/image.json");
    let text = std::fs::read_to_string(&descriptor)
        .unwrap_or_else(|e| panic!("{}: {e}", descriptor.display()));
    let image: ImageDescriptor =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", descriptor.display()));
    let vm = backend()
        .boot(&spec_in(base, &image), &base.join("vms"))
        .unwrap_or_else(|e| panic!("booting cloud-hypervisor: {e}"));
    let pids: Vec<String> = vm.pids().iter().map(u32::to_string).collect();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{BOOTED_MARKER} {} {}",
        vm.state_dir().display(),
        pids.join(" ")
    )
    .and_then(|()| out.flush())
    .expect("writing to the parent test");
    drop(out);
    std::thread::sleep(Duration::from_secs(120));
    drop(vm);
}

/// A launcher SIGKILLed with a CH VM up: CH and its virtiofsd daemons die with it
/// (their parent-death signal), and the next launcher's start-up sweep removes the
/// VM directory it left, with nothing left to kill.
#[test]
fn a_crashed_launchers_ch_vm_dies_with_it_and_is_swept() {
    if let Some(base) = std::env::var_os(CRASHED_LAUNCHER_ENV) {
        return crashed_launcher_child(Path::new(&base));
    }
    let fx = Fixture::new();
    let _one = ONE_VM.blocking_lock();
    let exe = std::env::current_exe().expect("the test binary's path");
    let child_log = fx.base().join("launcher-child.log");
    let stderr = std::fs::File::create(&child_log)
        .unwrap_or_else(|e| panic!("{}: {e}", child_log.display()));
    let mut child = ChildGuard(
        Command::new(&exe)
            .args([CRASHED_LAUNCHER_TEST, "--exact", "--nocapture"])
            .args(["--test-threads", "1"])
            .env(CRASHED_LAUNCHER_ENV, fx.base())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("re-running {}: {e}", exe.display())),
    );
    let launcher_pid = child.0.id();
    let stdout = child.0.stdout.take().expect("the child's stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // With one test thread the harness's `test <name> ... ` precedes it.
            if let Some(at) = line.find(BOOTED_MARKER) {
                let _ = tx.send(line[at..].to_string());
                break;
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(90))
        .unwrap_or_else(|_| {
            panic!(
                "the launcher child never reported its VM; its stderr:\n{}",
                std::fs::read_to_string(&child_log).unwrap_or_default()
            )
        });
    let mut fields = line.split_whitespace().skip(1);
    let d = PathBuf::from(fields.next().expect("the VM directory"));
    let pids: Vec<u32> = fields
        .map(|p| p.parse().expect("a pid"))
        .collect::<Vec<_>>();
    assert_eq!(pids.len(), 3, "two virtiofsd and CH: {line}");
    // CH is up (its API answers the parent too), and the directory is the child's.
    let deadline = Instant::now() + RUNNING_TIMEOUT;
    while ch_info(&d.join("api.sock")).map_or(true, |i| i["state"] != "Running") {
        assert!(
            Instant::now() < deadline,
            "the child's CH never reported the VM running; its log:\n{}",
            ch_log(&d)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let owner = std::fs::read_to_string(d.join("owner")).unwrap_or_default();
    assert!(
        owner.starts_with(&format!("{launcher_pid} ")),
        "the VM directory is stamped {owner:?}, not with the launcher child {launcher_pid}"
    );

    child.0.kill().expect("SIGKILL to the launcher child");
    let status = child.0.wait().expect("reaping the launcher child");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    let gone = eventually(Duration::from_secs(15), || {
        pids.iter().all(|p| !running(*p)) && processes_naming(&d).is_empty()
    });
    assert!(
        gone,
        "processes outlived their SIGKILLed launcher: {:?} of {pids:?} run; naming the VM directory: {:?}",
        pids.iter().filter(|p| running(**p)).collect::<Vec<_>>(),
        processes_naming(&d)
    );
    assert!(d.exists(), "the VM directory vanished before any sweep");

    // The next launcher on that state root sweeps what the crashed one left.
    let (_launcher, sweep) = fx.ch_launcher();
    assert_eq!(sweep.removed, vec![d.clone()], "{sweep:?}");
    assert!(
        sweep.killed.is_empty(),
        "the sweep had to kill helpers that survived their launcher: {sweep:?}"
    );
    assert!(!d.exists(), "{} outlived the sweep", d.display());
}

fn plan(text: &str) -> Plan {
    Plan::parse("plan.toml", text, false).unwrap_or_else(|e| panic!("{e}"))
}

/// A whole session on cloud-hypervisor (the cached binary), where KVM can boot a
/// normal guest. Elsewhere (these machines: a nested, PVM-only KVM) it records a skip
/// with the reason; the tests above still hold CH itself to the backend's contract.
#[tokio::test(flavor = "current_thread")]
async fn a_session_on_cloud_hypervisor_where_kvm_works() {
    let binary = cached_tool("cloud-hypervisor");
    if let Some(why) = kvm_unusable(&binary) {
        airlock_tests::skip(&format!("cloud-hypervisor guest boot: {why}"));
        return;
    }
    let fx = Fixture::new();
    let _one = ONE_VM.lock().await;
    let (launcher, _) = fx.ch_launcher();
    let mut s = launcher
        .create_session(&plan(
            "command = [\"/bin/sh\"]\n[resources]\nmemory_mib = 128\n",
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let spec = ExecSpec {
        argv: vec!["/bin/sh".into(), "-c".into(), "echo on-ch".into()],
        ..Default::default()
    };
    let (end, out, err) = vm_support::run_captured(&mut s, spec).await;
    let end = end.unwrap_or_else(|e| panic!("{e}\n{}", s.serial_output()));
    assert_eq!(
        (end, out.as_str()),
        (ExecEnd::Exited(0), "on-ch\n"),
        "{err}"
    );
    s.destroy().await.unwrap_or_else(|e| panic!("{e}"));
}
