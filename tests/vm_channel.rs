//! The host ↔ guest channel in a real VM: QEMU (microvm, TCG) with a fresh
//! vhost-device-vsock, the enforcer as PID 1 serving `Enforcer` on vsock, the launcher
//! dialing it through the hybrid vsock socket with the `CONNECT`/`OK` handshake.

use airlock_launcher::image::{build, Profile};
use airlock_launcher::vmm::hybrid_vsock::grpc_channel;
use airlock_launcher::vmm::qemu::{Qemu, QemuTools};
use airlock_launcher::vmm::running::RunningVm;
use airlock_launcher::vmm::{Vm, VmSpec};
use airlock_proto::pb::enforcer_client::EnforcerClient;
use airlock_proto::pb::{HelloRequest, ShutdownRequest};
use std::path::Path;
use std::time::{Duration, Instant};

#[path = "vm_support.rs"]
mod vm_support;
use vm_support::{enforcer_exec, setup, ONE_VM};

fn hello(max: u32, min: u32) -> HelloRequest {
    HelloRequest {
        host_protocol_version: max,
        host_min_protocol_version: min,
        host_software_version: "test".into(),
    }
}

/// Boots `image` as CID `cid` and connects to its enforcer (60 s for the boot).
async fn boot_and_connect(
    image: &airlock_launcher::image::ImageDescriptor,
    tools: &QemuTools,
    dir: &Path,
    cid: u32,
    shares: Vec<airlock_launcher::vmm::Share>,
) -> (RunningVm, EnforcerClient<tonic::transport::Channel>) {
    let mut spec = VmSpec::for_image(image, cid, 1, 256);
    spec.shares = shares;
    spec.host_ports = vec![airlock_proto::HOST_VSOCK_PORT];
    let vm = Qemu::tcg(tools.clone())
        .boot_vm(&spec, &dir.join("vms"))
        .unwrap();
    let channel = grpc_channel(
        vm.vsock_uds(),
        1024,
        Instant::now() + Duration::from_secs(60),
        vm.serial_log(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\nserial:\n{}", vm.serial_output()));
    (vm, EnforcerClient::new(channel))
}

fn plan_tools(plan: &airlock_launcher::plan::Plan) -> Vec<&str> {
    plan.tools.iter().map(String::as_str).collect()
}

fn alive(pid: u32) -> bool {
    // A reaped child is gone; a zombie would still have /proc/<pid>.
    Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test(flavor = "current_thread")]
async fn hello_over_vsock_then_shutdown_powers_the_vm_off_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (inputs, tools) = setup(dir.path());
    let _one = ONE_VM.lock().await;
    let (image, _) = build(Profile::Minimal, &inputs, &|_| {}).unwrap_or_else(|e| panic!("{e}"));
    let (mut vm, mut client) = boot_and_connect(&image, &tools, dir.path(), 3, vec![]).await;
    let (pids, state) = (vm.pids(), vm.state_dir().to_path_buf());

    // A host that only speaks a future protocol is refused, naming both versions.
    let err = client.hello(hello(9, 7)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message().contains("7..=9") && err.message().contains("speaks 1"),
        "{err}"
    );

    let v = airlock_proto::PROTOCOL_VERSION;
    let first = client.hello(hello(v, v)).await.unwrap().into_inner();
    assert_eq!(first.guest_protocol_version, v);
    assert_eq!(first.image_id, image.image_id);
    assert_eq!(first.landlock_abi, 6);
    assert_eq!(first.challenge_nonce.len(), 16);
    let again = client.hello(hello(v, v)).await.unwrap().into_inner();
    assert_ne!(
        again.challenge_nonce, first.challenge_nonce,
        "a challenge is fresh each time"
    );

    client
        .shutdown(ShutdownRequest {
            reason: "test over".into(),
        })
        .await
        .unwrap();
    drop(client);
    let status = vm
        .wait_for_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the VM did not power off\n{}", vm.serial_output()));
    assert!(status.success(), "qemu: {status}");
    let serial = vm.serial_output();
    assert!(
        serial.contains("shutdown requested by the host: test over"),
        "{serial}"
    );
    Box::new(vm).destroy().unwrap();
    for pid in pids {
        assert!(!alive(pid), "helper {pid} outlived its VM");
    }
    assert!(!state.exists(), "the VM's directory was left behind");
}

#[tokio::test(flavor = "current_thread")]
async fn a_guest_that_never_answers_is_an_error_naming_the_serial_log() {
    let dir = tempfile::tempdir().unwrap();
    let (inputs, tools) = setup(dir.path());
    let _one = ONE_VM.lock().await;
    let (image, _) = build(Profile::Minimal, &inputs, &|_| {}).unwrap_or_else(|e| panic!("{e}"));
    let vm = Qemu::tcg(tools.clone())
        .boot_vm(
            &VmSpec::for_image(&image, 4, 1, 256),
            &dir.path().join("vms"),
        )
        .unwrap();
    // Port 1025: nothing listens there, so the daemon never answers OK.
    let err = grpc_channel(
        vm.vsock_uds(),
        1025,
        Instant::now() + Duration::from_secs(3),
        vm.serial_log(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("did not answer") && err.contains("serial.log"),
        "{err}"
    );
    Box::new(vm).destroy().unwrap();
}

/// A guest too slow to answer a `CONNECT` at once (QEMU stopped here; a TCG guest
/// starved of CPU on a loaded host) is waited for. Closing the request unanswered makes
/// vhost-device-vsock's worker panic when the guest's accept arrives, and the VM's
/// vsock is silent from then on: CI saw a session's first connection time out that way
/// with the enforcer listening. Here the request is answered once QEMU runs again, and
/// the daemon still serves the channel opened before it.
#[tokio::test(flavor = "current_thread")]
async fn a_guest_too_slow_to_answer_at_once_is_waited_for_and_its_vsock_stays_up() {
    use airlock_launcher::vmm::hybrid_vsock::connect_guest_port;
    let dir = tempfile::tempdir().unwrap();
    let (inputs, tools) = setup(dir.path());
    let _one = ONE_VM.lock().await;
    let (image, _) = build(Profile::Minimal, &inputs, &|_| {}).unwrap_or_else(|e| panic!("{e}"));
    let (vm, mut client) = boot_and_connect(&image, &tools, dir.path(), 5, vec![]).await;
    let v = airlock_proto::PROTOCOL_VERSION;
    client.hello(hello(v, v)).await.unwrap();

    let qemu = *vm.pids().last().unwrap() as libc::pid_t;
    // SAFETY: plain kill(2) on our own child's pid; the VM outlives both calls.
    assert_eq!(unsafe { libc::kill(qemu, libc::SIGSTOP) }, 0);
    let (uds, serial) = (vm.vsock_uds().to_path_buf(), vm.serial_log().to_path_buf());
    let pending = tokio::spawn(async move {
        connect_guest_port(
            &uds,
            1024,
            Instant::now() + Duration::from_secs(60),
            &serial,
        )
        .await
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let waited = !pending.is_finished();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(qemu, libc::SIGCONT) }, 0);
    assert!(waited, "a connection was made to a stopped guest");
    pending
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\nserial:\n{}", vm.serial_output()));

    let again = tokio::time::timeout(Duration::from_secs(30), client.hello(hello(v, v)))
        .await
        .expect("the VM's vsock went silent after a slow accept");
    again.unwrap();
    let daemon_log =
        std::fs::read_to_string(vm.state_dir().join("vhost-device-vsock.log")).unwrap_or_default();
    assert!(!daemon_log.contains("panicked"), "{daemon_log}");
    Box::new(vm).destroy().unwrap();
}

/// `Apply` checks the manifest against this boot: the baked key, the VM's CID, the
/// image id, the challenge of the last `Hello`, the validity window on the clock the
/// host just set; each wrong one is refused for its own reason, and only the right one
/// gets a ready report. One `Apply` per boot.
#[tokio::test(flavor = "current_thread")]
async fn apply_accepts_only_a_manifest_bound_to_this_boot() {
    use airlock_launcher::mint::{mint, MintOptions};
    use airlock_launcher::plan::Plan;
    use airlock_proto::envelope::Signer;
    use airlock_proto::pb::ApplyRequest;
    let dir = tempfile::tempdir().unwrap();
    let (inputs, tools) = setup(dir.path());
    let _one = ONE_VM.lock().await;
    let (image, _) = build(Profile::Minimal, &inputs, &|_| {}).unwrap_or_else(|e| panic!("{e}"));
    let signer = airlock_launcher::keys::load_signer(&dir.path().join("keys/airlock.key")).unwrap();
    // A read-write share: a refused manifest must not get as far as letting the agent
    // write the marker; the accepted one must (so the marker check can fail).
    // A live share: the marker is watched on the host while the VM runs.
    let work = dir.path().join("live");
    std::fs::create_dir(&work).unwrap();
    let marker = work.join("marker");
    let share = airlock_launcher::vmm::Share {
        tag: "m0".into(),
        host_dir: work.clone(),
        read_only: false,
        owner: (0, 0),
    };
    let (mut vm, mut client) = boot_and_connect(&image, &tools, dir.path(), 5, vec![share]).await;
    let policy = vm_support::vm_policy();
    let plan = Plan::parse(
        "plan.toml",
        &format!(
            "command = [\"/bin/true\"]\ntools = [\"cat\", \"sh\"]\n\
             [[mounts]]\nhost = \"{}\"\nguest = \"/work\"\nmode = \"rw-live\"\n",
            work.display()
        ),
        false,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let touch_marker = airlock_proto::pb::EnforcerExecRequest {
        argv: vec!["sh".into(), "-c".into(), "echo x > /work/marker".into()],
        ..Default::default()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let envelope = |signer: &Signer, opts: MintOptions| {
        let m = mint(&policy, &plan, &opts).unwrap_or_else(|e| panic!("{e}"));
        serde_json::to_vec(&signer.sign_manifest(&m).unwrap()).unwrap()
    };
    let opts = |nonce: &str| MintOptions {
        now: now.as_secs(),
        ttl_secs: 60,
        vm_cid: 5,
        image_id: image.image_id.clone(),
        nonce: Some(nonce.to_string()),
        session_id: Some(vm_support::HAND_SESSION_ID.into()),
        approve_asks: false,
    };
    let other_key = Signer::generate().unwrap();
    let v = airlock_proto::PROTOCOL_VERSION;
    type Mutate = Box<dyn Fn(MintOptions) -> (MintOptions, bool)>;
    let cases: Vec<(&str, Mutate, &str)> = vec![
        ("other key", Box::new(|o| (o, true)), "key id"),
        (
            "other nonce",
            Box::new(|o| {
                (
                    MintOptions {
                        nonce: Some("00".repeat(16)),
                        ..o
                    },
                    false,
                )
            }),
            "nonce",
        ),
        (
            "other cid",
            Box::new(|o| (MintOptions { vm_cid: 6, ..o }, false)),
            "vm cid",
        ),
        (
            "other image",
            Box::new(|o| {
                (
                    MintOptions {
                        image_id: "sha256:other".into(),
                        ..o
                    },
                    false,
                )
            }),
            "image id",
        ),
        (
            "expired",
            Box::new(move |o| {
                (
                    MintOptions {
                        now: now.as_secs() - 3600,
                        ..o
                    },
                    false,
                )
            }),
            "expired",
        ),
        ("tampered", Box::new(|o| (o, false)), "signature"),
    ];
    for (what, mutate, want) in cases {
        let challenge = client
            .hello(hello(v, v))
            .await
            .unwrap()
            .into_inner()
            .challenge_nonce;
        let (o, wrong_key) = mutate(opts(&hex::encode(&challenge)));
        let mut env = envelope(if wrong_key { &other_key } else { &signer }, o);
        if what == "tampered" {
            // One byte inside the base64 payload.
            let at = env
                .windows(11)
                .position(|w| w == b"\"payload\":\"")
                .unwrap()
                + 40;
            env[at] = if env[at] == b'A' { b'B' } else { b'A' };
        }
        let err = client
            .apply(ApplyRequest {
                envelope: env,
                host_time_unix_millis: now.as_millis() as i64,
                session_secret: vec![1; 32],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{what}: {err}");
        assert!(err.message().contains(want), "{what}: {}", err.message());
        // The challenge was spent: the same Apply again has nothing to bind to.
        let again = client
            .apply(ApplyRequest {
                envelope: vec![],
                host_time_unix_millis: now.as_millis() as i64,
                session_secret: vec![1; 32],
            })
            .await
            .unwrap_err();
        assert_eq!(
            again.code(),
            tonic::Code::FailedPrecondition,
            "{what}: {again}"
        );
        // Nothing of the agent runs after a refusal.
        let exec = client.exec(touch_marker.clone()).await.unwrap_err();
        assert_eq!(
            exec.code(),
            tonic::Code::FailedPrecondition,
            "{what}: {exec}"
        );
        assert!(
            !marker.exists(),
            "{what}: the agent ran after a refused manifest"
        );
    }

    let challenge = client
        .hello(hello(v, v))
        .await
        .unwrap()
        .into_inner()
        .challenge_nonce;
    let _host = vm_support::serve_host_by_hand(&mut vm, &policy, &plan_tools(&plan));
    let ready = client
        .apply(ApplyRequest {
            envelope: envelope(&signer, opts(&hex::encode(&challenge))),
            host_time_unix_millis: now.as_millis() as i64,
            session_secret: vm_support::HAND_SESSION_SECRET.to_vec(),
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", vm.serial_output()))
        .into_inner();
    assert_eq!(ready.landlock_abi, 6);
    let (code, _, err) = enforcer_exec(&mut client, &["sh", "-c", "echo x > /work/marker"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        marker.exists(),
        "the accepted manifest's agent could not write its share"
    );
    let names: Vec<&str> = ready.layers.iter().map(|l| l.name.as_str()).collect();
    for layer in [
        "clock", "manifest", "mounts", "tools", "cgroup", "limits", "identity", "landlock",
        "seccomp",
    ] {
        assert!(names.contains(&layer), "{layer} missing from {names:?}");
    }
    let cgroup = &ready
        .layers
        .iter()
        .find(|l| l.name == "cgroup")
        .unwrap()
        .detail;
    assert!(
        cgroup.contains("v2"),
        "the VM's agent cgroup is cgroup2: {cgroup}"
    );
    // Commands run as the agent, under the layers, output streamed.
    let (code, out, err) = enforcer_exec(&mut client, &["cat", "/etc/airlock/image-id"]).await;
    assert_eq!((code, out.trim()), (0, image.image_id.as_str()), "{err}");
    let (code, out, _) = enforcer_exec(&mut client, &["cat", "/proc/self/status"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("Uid:\t1000\t1000\t1000\t1000"), "{out}");
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    // The enforcer (PID 1) is root and hidden from the agent (`hidepid=invisible`).
    let (code, _, err) = enforcer_exec(&mut client, &["cat", "/proc/1/environ"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("No such file or directory"), "{err}");
    let (code, out, _) = enforcer_exec(&mut client, &["sh", "-c", "echo /proc/[0-9]*"]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("/proc/") && !out.split_whitespace().any(|w| w == "/proc/1"),
        "the agent lists PID 1 in /proc: {out}"
    );
    let (code, _, _) = enforcer_exec(&mut client, &["/bin/true"]).await;
    assert_eq!(code, 0);
    // A process left behind holding stdout does not keep the exit from the host.
    let t = Instant::now();
    let (code, out, _) =
        enforcer_exec(&mut client, &["sh", "-c", "sleep 30 & echo left-behind"]).await;
    assert_eq!((code, out.trim()), (0, "left-behind"));
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "Exec waited for the background process"
    );
    // A program the manifest does not grant has no shim and is not the entrypoint.
    let refused = client
        .exec(airlock_proto::pb::EnforcerExecRequest {
            argv: vec!["ls".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused
            .message()
            .contains("neither the plan's entrypoint `/bin/true` nor a granted tool"),
        "{refused}"
    );

    // One manifest per VM: no second session in it.
    let err = client.hello(hello(v, v)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);

    client
        .shutdown(ShutdownRequest {
            reason: "test over".into(),
        })
        .await
        .unwrap();
    assert!(vm.wait_for_exit(Duration::from_secs(30)).is_some());
    Box::new(vm).destroy().unwrap();
}
