//! The egress funnel against the same client run directly on the host, side by side:
//! - bulk throughput: one HTTP download of N MiB (64 MiB in a VM, 256 MiB under process
//!   isolation) from a server on this host's loopback, read by a python3 `recv_into`
//!   loop, through the funnel (transparent: the agent connects to `allowed.test`, the
//!   stub DNS answers, nftables redirects, the enforcer forwards, the host's egress
//!   service decides, dials 127.0.0.1 and splices) vs the same program on the host
//!   connecting to 127.0.0.1 (target: funnel ≥ 50 % of direct, under TCG);
//! - connection setup: connect() start to the first response byte of a tiny request,
//!   one new connection each (100 in a VM, 200 under process isolation), p50 and p99;
//! - diagnostics: where the CPU goes while the VM downloads (QEMU's vCPU thread, the
//!   vsock device, this process's egress service), how busy the guest is, and how fast
//!   the same program moves bytes over an AF_UNIX socketpair on each side (the copy
//!   ceiling of a TCG guest, no network involved).
//!
//! One VM session (the debian image; boot excluded) runs every funnel round as an exec;
//! under process isolation each round is a session of its own (its start excluded: the
//! client times itself). The client prints its measurements as JSON lines. Direct and
//! funnel runs interleave (A B A B …) so machine noise hits both.
//!
//! `make bench` builds the static enforcer, the release enforcer and the tools first.
//! AIRLOCK_BENCH_ROUNDS (default 5), AIRLOCK_BENCH_VM_MIB (64),
//! AIRLOCK_BENCH_PROCESS_MIB (256).

#[path = "../vm_support.rs"]
mod vm_support;

use airlock_launcher::plan::{Plan, PlanEndpoint, PlanResources};
use std::collections::BTreeMap;
use std::io::{Read, Seek, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The name the sessions are granted, pinned to 127.0.0.1.
const NAME: &str = "allowed.test";
/// The host's python, for the direct runs (process isolation runs the same binary).
const HOST_PYTHON: &str = "/usr/bin/python3";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// The client, after a header assigning HOST, PORT, BULK, CONNS, WARM and CEIL. It
/// prints one JSON object per line: `bulk` (one download of BULK bytes), `conn` (one
/// connection's setup, µs), `ceil` (BULK bytes over an AF_UNIX socketpair).
const CLIENT: &str = r#"
import json, socket, threading, time
def cpu():
    try:
        with open('/proc/stat') as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[:8]
    except Exception:
        return None
addr = socket.getaddrinfo(HOST, PORT, socket.AF_INET, socket.SOCK_STREAM)[0][4]
def request(path):
    return ('GET %s HTTP/1.1\r\nHost: allowed.test:%d\r\nConnection: close\r\n\r\n' % (path, PORT)).encode()
def drain(s, buf):
    got = 0
    while True:
        k = s.recv_into(buf)
        if not k:
            return got
        got += k
out = []
buf = bytearray(1 << 20)
if BULK:
    c0, p0 = cpu(), time.process_time()
    t0 = time.perf_counter()
    s = socket.create_connection(addr)
    s.sendall(request('/bytes/%d' % BULK))
    got = drain(s, buf)
    secs = time.perf_counter() - t0
    p1, c1 = time.process_time(), cpu()
    s.close()
    if got < BULK:
        raise SystemExit('short download: %d of %d bytes' % (got, BULK))
    rec = {'kind': 'bulk', 'bytes': BULK, 'secs': secs, 'client_cpu': p1 - p0}
    if c0 and c1:
        d = [b - a for a, b in zip(c0, c1)]
        t = max(1, sum(d))
        rec['busy'] = 1 - (d[3] + d[4]) / t
        rec['user'] = (d[0] + d[1]) / t
        rec['system'] = d[2] / t
        rec['irq'] = (d[5] + d[6]) / t
    out.append(rec)
for i in range(WARM + CONNS):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t0 = time.perf_counter()
    s.connect(addr)
    s.sendall(request('/tiny'))
    first = s.recv(1)
    t1 = time.perf_counter()
    drain(s, buf)
    s.close()
    if not first:
        raise SystemExit('connection %d: no response' % i)
    if i >= WARM:
        out.append({'kind': 'conn', 'us': round((t1 - t0) * 1e6)})
if CEIL:
    a, b = socket.socketpair()
    chunk = memoryview(bytes(1 << 20))
    def feed():
        left = CEIL
        while left > 0:
            n = min(left, len(chunk))
            a.sendall(chunk[:n])
            left -= n
        a.close()
    t0 = time.perf_counter()
    th = threading.Thread(target=feed)
    th.start()
    got = drain(b, buf)
    secs = time.perf_counter() - t0
    th.join()
    out.append({'kind': 'ceil', 'bytes': got, 'secs': secs})
for r in out:
    print(json.dumps(r))
"#;

fn client_script(host: &str, port: u16, bulk: usize, conns: usize, warm: usize) -> String {
    format!("HOST = {host:?}\nPORT = {port}\nBULK = {bulk}\nCONNS = {conns}\nWARM = {warm}\nCEIL = {bulk}\n{CLIENT}")
}

/// What one client run measured.
#[derive(Default)]
struct Run {
    /// MB/s (10^6 bytes) of the download.
    bulk_mbs: Option<f64>,
    /// Fractions of all CPUs during the download (the side's /proc/stat): busy, in
    /// user mode, in the kernel (system), in interrupts (hard and soft).
    busy: Option<f64>,
    user: Option<f64>,
    system: Option<f64>,
    irq: Option<f64>,
    /// The client's own CPU seconds / wall seconds of the download.
    client_cpu: Option<f64>,
    /// Connection setup times, µs.
    conn_us: Vec<f64>,
    /// MB/s over a socketpair.
    ceil_mbs: Option<f64>,
}

fn parse_run(what: &str, stdout: &str, stderr: &str) -> Run {
    let mut run = Run::default();
    for line in stdout.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{what}: {line:?}: {e}"));
        let f = |k: &str| v[k].as_f64();
        match v["kind"].as_str() {
            Some("bulk") => {
                let secs = f("secs").unwrap();
                run.bulk_mbs = Some(f("bytes").unwrap() / secs / 1e6);
                run.busy = f("busy");
                run.user = f("user");
                run.system = f("system");
                run.irq = f("irq");
                run.client_cpu = f("client_cpu").map(|c| c / secs);
            }
            Some("conn") => run.conn_us.push(f("us").unwrap()),
            Some("ceil") => run.ceil_mbs = Some(f("bytes").unwrap() / f("secs").unwrap() / 1e6),
            _ => panic!("{what}: unexpected line {line:?}"),
        }
    }
    assert!(
        run.bulk_mbs.is_some() && !run.conn_us.is_empty(),
        "{what}: the client printed no measurements\nstdout: {stdout}\nstderr: {stderr}"
    );
    run
}

/// The client run directly on the host against 127.0.0.1.
fn direct(port: u16, bulk: usize, conns: usize, warm: usize) -> Run {
    let out = std::process::Command::new(HOST_PYTHON)
        .arg("-c")
        .arg(client_script("127.0.0.1", port, bulk, conns, warm))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("python3 on the host");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "direct run failed: {stderr}");
    parse_run("direct", &stdout, &stderr)
}

// ---------------------------------------------------------------------------------
// CPU accounting: per-thread utime + stime from /proc.

/// (thread id, thread name, CPU seconds) of every thread of `pid`.
fn thread_cpu(pid: u32) -> Vec<(u32, String, f64)> {
    // SAFETY: sysconf has no failure mode for this name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return vec![];
    };
    tasks
        .flatten()
        .filter_map(|t| {
            let tid = t.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            let name = head.split_once('(')?.1.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            // Fields 14 and 15 of stat (utime, stime); `rest` starts at field 3.
            let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            Some((tid, name, ticks as f64 / hz))
        })
        .collect()
}

/// Every process below `pid`.
fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        for task in std::fs::read_dir(format!("/proc/{p}/task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let kids = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for k in kids.split_whitespace().filter_map(|k| k.parse().ok()) {
                out.push(k);
                stack.push(k);
            }
        }
    }
    out
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Whose CPU a download is accounted to.
#[derive(Clone, Default)]
enum Watch {
    /// This process only.
    #[default]
    Launcher,
    /// And a VM: its helpers and its VMM (last).
    Vm(Vec<u32>),
    /// And the process-isolated session below this process.
    Process,
}

/// Where CPU time goes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Part {
    /// QEMU, all threads: the emulated guest (agent, guest kernel, enforcer) and the
    /// device model.
    Qemu,
    /// The VM's helper daemons (vhost-device-vsock).
    Helpers,
    /// The enforcer's funnel thread (process isolation).
    Funnel,
    /// The rest of the session's processes (the client, the enforcer's other threads).
    Sandbox,
    /// This process but the server: the launcher, whose egress service splices.
    Launcher,
    /// The bench's loopback server.
    Server,
}

/// CPU seconds of every watched thread: (part, tid) → seconds.
fn cpu_snapshot(watch: &Watch) -> BTreeMap<(Part, u32), f64> {
    let me = std::process::id();
    let mut snap = BTreeMap::new();
    for (tid, name, s) in thread_cpu(me) {
        let part = if name.starts_with("bench-server") {
            Part::Server
        } else {
            Part::Launcher
        };
        snap.insert((part, tid), s);
    }
    match watch {
        Watch::Launcher => {}
        Watch::Vm(pids) => {
            if let Some((qemu, helpers)) = pids.split_last() {
                for (tid, _, s) in thread_cpu(*qemu) {
                    snap.insert((Part::Qemu, tid), s);
                }
                for h in helpers {
                    for (tid, _, s) in thread_cpu(*h) {
                        snap.insert((Part::Helpers, tid), s);
                    }
                }
            }
        }
        Watch::Process => {
            for p in descendants(me) {
                let enforcer = comm(p).starts_with("airlock-enforce");
                for (tid, name, s) in thread_cpu(p) {
                    let part = if enforcer && name == "egress-funnel" {
                        Part::Funnel
                    } else {
                        Part::Sandbox
                    };
                    snap.insert((part, tid), s);
                }
            }
        }
    }
    snap
}

/// CPU seconds spent between two snapshots, by part, and the busiest thread of each.
#[derive(Clone, Default)]
struct Cpu(BTreeMap<Part, (f64, f64)>);

impl Cpu {
    fn between(a: &BTreeMap<(Part, u32), f64>, b: &BTreeMap<(Part, u32), f64>) -> Cpu {
        let mut c = Cpu::default();
        for (key, after) in b {
            let d = after - a.get(key).copied().unwrap_or(0.0);
            let e = c.0.entry(key.0).or_insert((0.0, 0.0));
            e.0 += d;
            e.1 = e.1.max(d);
        }
        c
    }

    fn plus(mut self, o: &Cpu) -> Cpu {
        for (part, (sum, max)) in &o.0 {
            let e = self.0.entry(*part).or_insert((0.0, 0.0));
            e.0 += sum;
            e.1 += max;
        }
        self
    }
}

// ---------------------------------------------------------------------------------
// The loopback server: `GET /bytes/N` answers N zero bytes, `GET /tiny` two bytes; both
// close the connection after the answer.

static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

/// One `/bytes/N` answer: wall seconds from the request to the last byte written, and
/// the CPU spent meanwhile.
struct Served {
    secs: f64,
    cpu: Cpu,
}

#[derive(Clone)]
struct Server {
    port: u16,
    /// Whose CPU a download is accounted to.
    watch: Arc<Mutex<Watch>>,
    served: Arc<Mutex<Vec<Served>>>,
}

impl Server {
    fn start() -> Server {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = Server {
            port: l.local_addr().unwrap().port(),
            watch: Arc::default(),
            served: Arc::default(),
        };
        let s = server.clone();
        std::thread::Builder::new()
            .name("bench-server".into())
            .spawn(move || {
                for conn in l.incoming().flatten() {
                    let s = s.clone();
                    std::thread::Builder::new()
                        .name("bench-server-c".into())
                        .spawn(move || s.answer(conn))
                        .unwrap();
                }
            })
            .unwrap();
        server
    }

    fn answer(&self, mut conn: TcpStream) {
        let mut head = Vec::new();
        let mut chunk = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
            }
            if head.len() > 16384 {
                return;
            }
        }
        let head = String::from_utf8_lossy(&head);
        let path = head.split_whitespace().nth(1).unwrap_or("");
        if let Some(n) = path.strip_prefix("/bytes/") {
            let Ok(mut left) = n.parse::<usize>() else {
                return;
            };
            let watch = self.watch.lock().unwrap().clone();
            let (t0, c0) = (Instant::now(), cpu_snapshot(&watch));
            let reply =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {left}\r\nConnection: close\r\n\r\n");
            if conn.write_all(reply.as_bytes()).is_err() {
                return;
            }
            while left > 0 {
                let k = left.min(ZEROS.len());
                if conn.write_all(&ZEROS[..k]).is_err() {
                    return;
                }
                left -= k;
            }
            let cpu = Cpu::between(&c0, &cpu_snapshot(&watch));
            self.served.lock().unwrap().push(Served {
                secs: t0.elapsed().as_secs_f64(),
                cpu,
            });
        } else {
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
        // Wait for the client's close, so the connection ends with a FIN, never a reset.
        let _ = conn.shutdown(std::net::Shutdown::Write);
        let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
        while matches!(conn.read(&mut chunk), Ok(n) if n > 0) {}
    }
}

// ---------------------------------------------------------------------------------

fn policy(dir: &Path) -> airlock_launcher::policy::Policy {
    let path = dir.join("bench-egress.toml");
    std::fs::write(
        &path,
        r#"version = 1
default = "deny"

[[rule]]
id = "bench-server"
decision = "allow"
reason = "the bench's loopback server, by name"
match.net = { host = "allowed.test" }

[[rule]]
id = "python-agent"
decision = "allow"
reason = "the bench's client is a python script given with -c"
match.tool = { program = "python3", argv = "-c *" }

[[rule]]
id = "resources"
decision = "allow"
reason = "bench sessions"
match.resources = { vcpus = 1, memory_mib = 512, disk_mib = 256, pids = 256, wall_time_secs = 600, net_connections = 64, net_mib = 8192 }
"#,
    )
    .unwrap();
    airlock_launcher::policy::Policy::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn plan(command: Vec<String>, port: u16) -> Plan {
    Plan {
        command,
        cwd: None,
        env: BTreeMap::new(),
        mounts: vec![],
        net: vec![PlanEndpoint {
            host: NAME.into(),
            port,
        }],
        tools: vec!["python3".into()],
        resources: PlanResources {
            net_mib: Some(4096),
            net_connections: Some(64),
            ..Default::default()
        },
    }
}

fn pins() -> BTreeMap<String, IpAddr> {
    [(NAME.to_string(), "127.0.0.1".parse().unwrap())].into()
}

/// Both sides of one mode, every round.
#[derive(Default)]
struct Sides {
    direct: Vec<Run>,
    funnel: Vec<Run>,
    /// The server's view of each funnel download: wall seconds, CPU meanwhile.
    cpu: Vec<(f64, Cpu)>,
}

impl Sides {
    /// A warm-up of both sides, discarded, then `rounds` rounds of `mib` MiB over
    /// `conns` connections, interleaved: the direct client against `server`, then
    /// `funnel(bulk, conns, warm)`, the same client through the sandbox.
    fn interleaved(
        server: &Server,
        rounds: usize,
        mib: usize,
        conns: usize,
        mut funnel: impl FnMut(usize, usize, usize) -> (Run, Option<(f64, Cpu)>),
    ) -> Sides {
        direct(server.port, 8 << 20, 5, 3);
        funnel(8 << 20, 5, 3);
        let mut sides = Sides::default();
        for _ in 0..rounds {
            sides.direct.push(direct(server.port, mib << 20, conns, 3));
            let (run, cpu) = funnel(mib << 20, conns, 3);
            sides.funnel.push(run);
            sides.cpu.extend(cpu);
        }
        sides
    }
}

impl Server {
    /// Runs `f` (one funnel run) with downloads accounted to `watch`; the server's
    /// record of its last download.
    fn accounted<T>(&self, watch: Watch, f: impl FnOnce() -> T) -> (T, Option<(f64, Cpu)>) {
        self.served.lock().unwrap().clear();
        *self.watch.lock().unwrap() = watch;
        let out = f();
        *self.watch.lock().unwrap() = Watch::Launcher;
        let served = self.served.lock().unwrap().pop();
        (out, served.map(|s| (s.secs, s.cpu)))
    }
}

/// Runs `f` with this process's stdout and stderr (fds 1 and 2) going to files; returns
/// what was written there. A process-isolated session's command writes to the
/// launcher's stdio, and the launcher logs each egress decision on stderr.
fn capture_stdio<T>(f: impl FnOnce() -> T) -> (T, String, String) {
    use std::os::fd::AsRawFd;
    std::io::stdout().flush().unwrap();
    let files = [tempfile::tempfile().unwrap(), tempfile::tempfile().unwrap()];
    let mut saved = [0; 2];
    for (i, file) in files.iter().enumerate() {
        let fd = i as i32 + 1;
        // SAFETY: descriptor juggling on fds 1 and 2 and on descriptors this function
        // owns; every one is restored below.
        saved[i] = unsafe { libc::dup(fd) };
        assert!(saved[i] >= 0, "dup({fd})");
        assert!(unsafe { libc::dup2(file.as_raw_fd(), fd) } >= 0, "dup2");
    }
    let out = f();
    std::io::stdout().flush().unwrap();
    for (i, s) in saved.into_iter().enumerate() {
        // SAFETY: as above; `s` is ours.
        unsafe {
            libc::dup2(s, i as i32 + 1);
            libc::close(s);
        }
    }
    let [mut o, mut e] = files;
    let read = |f: &mut std::fs::File| {
        f.rewind().unwrap();
        let mut text = String::new();
        f.read_to_string(&mut text).unwrap();
        text
    };
    (out, read(&mut o), read(&mut e))
}

fn bin_dir() -> PathBuf {
    vm_support::workspace_root().join("target/release")
}

fn process_mode(dir: &Path, server: &Server, rounds: usize, mib: usize, conns: usize) -> Sides {
    use airlock_launcher::process_session::{run_process_isolated, ProcessRunOptions};
    vm_support::require_present(&[
        &bin_dir().join("airlock-enforcer"),
        &bin_dir().join("airlock-shim"),
    ]);
    let policy = policy(dir);
    let opts = ProcessRunOptions {
        enforcer: bin_dir().join("airlock-enforcer"),
        shim: bin_dir().join("airlock-shim"),
        approvals: airlock_launcher::approval_broker::ApprovalBroker::new(Duration::from_secs(5)),
        merge: Default::default(),
        egress_pins: pins(),
        forward_interrupts: false,
        prompt_on_the_terminal: false,
    };
    let funnel = |bulk: usize, conns: usize, warm: usize| {
        let script = client_script(NAME, server.port, bulk, conns, warm);
        let plan = plan(vec!["python3".into(), "-c".into(), script], server.port);
        let ((outcome, stdout, stderr), cpu) = server.accounted(Watch::Process, || {
            capture_stdio(|| run_process_isolated(&policy, &plan, &opts))
        });
        let outcome = outcome.unwrap_or_else(|e| panic!("process session: {e}\n{stderr}"));
        assert_eq!(
            outcome.exit_code, 0,
            "process session failed\nstdout: {stdout}\nstderr: {stderr}"
        );
        (parse_run("process isolation", &stdout, &stderr), cpu)
    };
    Sides::interleaved(server, rounds, mib, conns, funnel)
}

fn vm_mode(dir: &Path, server: &Server, rounds: usize, mib: usize, conns: usize) -> Sides {
    use airlock_launcher::launcher::{ExecSpec, Launcher, LauncherConfig};
    let t = Instant::now();
    let (inputs, tools) = vm_support::setup(dir);
    let (image, _) =
        airlock_launcher::image::build(airlock_launcher::image::Profile::Debian, &inputs, &|_| {})
            .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "egress bench: debian image ready in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let signer = airlock_launcher::keys::load_signer(&dir.join("keys/airlock.key")).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (launcher, _) = Launcher::new(LauncherConfig {
        policy: Arc::new(policy(dir)),
        signer: Arc::new(signer),
        image,
        vmm: Arc::new(airlock_launcher::vmm::qemu::Qemu::tcg(tools)),
        state_root: dir.join("vms"),
        boot_timeout: Duration::from_secs(180),
        egress_pins: pins(),
        approvals: airlock_launcher::approval_broker::ApprovalBroker::new(Duration::from_secs(5)),
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let plan = plan(
        vec!["python3".into(), "-c".into(), "pass".into()],
        server.port,
    );
    let t = Instant::now();
    let mut session = rt
        .block_on(launcher.create_session(&plan))
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "egress bench: VM session ready in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let watch = Watch::Vm(session.vm_info().pids);
    let funnel = |bulk: usize, conns: usize, warm: usize| {
        let spec = ExecSpec {
            argv: vec![
                "python3".into(),
                "-c".into(),
                client_script(NAME, server.port, bulk, conns, warm),
            ],
            ..Default::default()
        };
        let ((end, stdout, stderr), cpu) = server.accounted(watch.clone(), || {
            rt.block_on(vm_support::run_captured(&mut session, spec))
        });
        let end = end.unwrap_or_else(|e| panic!("VM exec: {e}"));
        assert_eq!(end.exit_code(), 0, "VM client failed: {stdout}\n{stderr}");
        (parse_run("VM", &stdout, &stderr), cpu)
    };
    let sides = Sides::interleaved(server, rounds, mib, conns, funnel);
    rt.block_on(session.destroy()).unwrap();
    sides
}

fn median_of(runs: &[Run], f: impl Fn(&Run) -> Option<f64>) -> Option<f64> {
    let v: Vec<f64> = runs.iter().filter_map(f).collect();
    (!v.is_empty()).then(|| pct(&v, 0.5))
}

/// The medians of `f` on the direct side and on the funnel side, if both have one.
fn medians(s: &Sides, f: impl Fn(&Run) -> Option<f64>) -> Option<(f64, f64)> {
    Some((median_of(&s.direct, &f)?, median_of(&s.funnel, &f)?))
}

fn report(mode: &str, mib: usize, s: &Sides) {
    let d_mbs = median_of(&s.direct, |r| r.bulk_mbs).unwrap();
    let f_mbs = median_of(&s.funnel, |r| r.bulk_mbs).unwrap();
    let ratio = f_mbs / d_mbs;
    println!("{mode}:");
    println!(
        "  {:<46} {:>12} {:>12} {:>9}",
        "", "direct", "funnel", "ratio"
    );
    println!(
        "  {:<46} {:>7.0} MB/s {:>7.0} MB/s {:>9.3}  target >= 0.50: {}",
        format!("bulk download, {mib} MiB (median of {})", s.funnel.len()),
        d_mbs,
        f_mbs,
        ratio,
        if ratio >= 0.5 { "met" } else { "MISSED" }
    );
    let lat = |runs: &[Run]| -> Vec<f64> { runs.iter().flat_map(|r| r.conn_us.clone()).collect() };
    let (dl, fl) = (lat(&s.direct), lat(&s.funnel));
    for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
        let (d, f) = (pct(&dl, p), pct(&fl, p));
        println!(
            "  {:<46} {:>9.0} µs {:>9.0} µs {:>8.1}×",
            format!("connect → first byte, {name} (of {})", fl.len()),
            d,
            f,
            f / d
        );
    }
    if let Some((d, f)) = medians(s, |r| r.ceil_mbs) {
        println!(
            "  {:<46} {:>7.0} MB/s {:>7.0} MB/s {:>9.3}  (no network: the side's copy ceiling)",
            format!("AF_UNIX socketpair, {mib} MiB"),
            d,
            f,
            f / d
        );
    }
    if let Some((d, f)) = medians(s, |r| r.client_cpu) {
        println!(
            "  {:<46} {:>10.0} % {:>10.0} %",
            "the client's own CPU during the download",
            d * 100.0,
            f * 100.0
        );
    }
    if let (true, Some(busy), Some(user), Some(system), Some(irq)) = (
        mode.starts_with("VM"),
        median_of(&s.funnel, |r| r.busy),
        median_of(&s.funnel, |r| r.user),
        median_of(&s.funnel, |r| r.system),
        median_of(&s.funnel, |r| r.irq),
    ) {
        println!(
            "  the guest's CPU during the download (its /proc/stat): {:.0} % busy: user {:.0} %, kernel {:.0} %, interrupts {:.0} %",
            busy * 100.0,
            user * 100.0,
            system * 100.0,
            irq * 100.0
        );
    }
    if s.cpu.is_empty() {
        return;
    }
    let wall: f64 = s.cpu.iter().map(|c| c.0).sum();
    let cpu = s.cpu.iter().fold(Cpu::default(), |a, c| a.plus(&c.1));
    let parts: Vec<String> = cpu
        .0
        .iter()
        .map(|(part, (sum, busiest))| {
            let name = match part {
                Part::Qemu => "QEMU",
                Part::Helpers => "vhost-device-vsock",
                Part::Funnel => "enforcer's funnel thread",
                Part::Sandbox => "client + rest of the sandbox",
                Part::Launcher => "launcher (egress service)",
                Part::Server => "server",
            };
            if *part == Part::Qemu {
                format!(
                    "{name} {:.0} % (busiest thread, the vCPU: {:.0} %)",
                    sum / wall * 100.0,
                    busiest / wall * 100.0
                )
            } else {
                format!("{name} {:.0} %", sum / wall * 100.0)
            }
        })
        .collect();
    println!(
        "  CPU while the server sent the funnel downloads ({wall:.1} s, % of one core): {}",
        parts.join(", ")
    );
}

fn environment() {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let kvm = Path::new("/dev/kvm").exists();
    let py = std::process::Command::new(HOST_PYTHON)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!(
        "egress: {cores} cores ({model}), load average {}; VMs: QEMU microvm, TCG (software emulation{}), 1 vCPU, debian image; host client {py}",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        if kvm { "; /dev/kvm exists but the bench uses TCG" } else { ", no KVM" },
    );
}

/// Runs one mode's rounds, says on stderr how long `what` took, and reports the
/// figures as `mode`'s (`mib` MiB downloads).
fn timed_report(mode: &str, what: &str, mib: usize, run: impl FnOnce() -> Sides) {
    let t = Instant::now();
    let s = run();
    eprintln!(
        "egress bench: {what} took {:.1} s",
        t.elapsed().as_secs_f64()
    );
    report(mode, mib, &s);
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rounds = env_or("AIRLOCK_BENCH_ROUNDS", 5).max(1);
    let vm_mib = env_or("AIRLOCK_BENCH_VM_MIB", 64);
    let process_mib = env_or("AIRLOCK_BENCH_PROCESS_MIB", 256);
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    environment();
    println!(
        "  {rounds} rounds, direct and funnel interleaved; direct: the same python3 client on the host against 127.0.0.1, funnel: the agent against {NAME} (pinned to 127.0.0.1)"
    );
    if airlock_tests::running_as_root() {
        let conns = 200_usize.div_ceil(rounds);
        timed_report(
            "process isolation",
            "process isolation",
            process_mib,
            || process_mode(dir.path(), &server, rounds, process_mib, conns),
        );
    } else {
        println!("process isolation: skipped (needs root)");
    }
    let conns = 100_usize.div_ceil(rounds);
    timed_report(
        "VM (QEMU/TCG, debian image)",
        "VM (image, boot, rounds)",
        vm_mib,
        || vm_mode(dir.path(), &server, rounds, vm_mib, conns),
    );
}
