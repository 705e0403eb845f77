//! Mint (sign) and verify one realistic manifest: a git grant with 26 rules, a mount,
//! two egress endpoints. Run with `make bench`.

use airlock_proto::argv_pattern::ArgvPattern;
use airlock_proto::envelope::{Expect, Expectations, Signer};
use airlock_proto::manifest::{
    Access, Command, Egress, Endpoint, Manifest, Mount, Resources, MANIFEST_VERSION,
};
use airlock_proto::tool_rules::{ToolGrant, ToolMatch, ToolRule};
use airlock_proto::verdict::Verdict;
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;

fn manifest() -> Manifest {
    let rules = (0..26)
        .map(|i| ToolRule {
            id: format!("git-rule-{i}"),
            matcher: ToolMatch::Argv(ArgvPattern::parse(&format!("sub{i} **")).unwrap()),
            decision: [Verdict::Allow, Verdict::Ask, Verdict::Deny][i % 3],
            reason: "a reason an agent can act on, about this long".into(),
        })
        .collect();
    Manifest {
        manifest_version: MANIFEST_VERSION,
        protocol_version: airlock_proto::PROTOCOL_VERSION,
        session_id: "0123456789abcdef0123456789abcdef".into(),
        vm_cid: 3,
        image_id: "sha256:4f2c".into(),
        nonce: "00112233445566778899aabbccddeeff".into(),
        issued_at: 1_800_000_000,
        not_before: 1_800_000_000,
        expires_at: 1_800_000_600,
        policy_digest: format!("sha256:{}", "ab".repeat(32)),
        command: Command {
            argv: vec!["git".into(), "commit".into(), "-am".into(), "fix".into()],
            cwd: "/workspace".into(),
            env: Default::default(),
        },
        mounts: vec![Mount {
            tag: "m0".into(),
            guest_path: "/workspace".into(),
            mode: Access::Rw,
        }],
        egress: Egress {
            allow: vec![
                Endpoint {
                    host: "github.com".into(),
                    port: 443,
                },
                Endpoint {
                    host: "static.crates.io".into(),
                    port: 443,
                },
            ],
            ask: vec![],
            pins: Default::default(),
        },
        tools: vec![ToolGrant {
            program: "git".into(),
            rules,
            default: Verdict::Deny,
            profile: Default::default(),
        }],
        resources: Resources {
            vcpus: 2,
            memory_mib: 2048,
            disk_mib: 1024,
            pids: 512,
            wall_time_secs: 1800,
            net_connections: 32,
            net_mib: 1024,
        },
    }
}

fn bench(c: &mut Criterion) {
    let signer = Signer::generate().unwrap();
    let verifier = signer.verifier();
    let m = manifest();
    let expect = Expectations {
        now: 1_800_000_001,
        session_id: Expect::Exactly(m.session_id.clone()),
        vm_cid: Expect::Exactly(3),
        image_id: Expect::Exactly(m.image_id.clone()),
        nonce: Expect::Exactly(m.nonce.clone()),
    };
    let envelope = serde_json::to_vec(&signer.sign_manifest(&m).unwrap()).unwrap();
    println!("envelope size: {} bytes", envelope.len());
    c.bench_function("manifest/mint", |b| {
        b.iter(|| serde_json::to_vec(&signer.sign_manifest(black_box(&m)).unwrap()).unwrap())
    });
    c.bench_function("manifest/verify", |b| {
        b.iter(|| verifier.verify(black_box(&envelope), &expect).unwrap())
    });
    c.bench_function("manifest/mint+verify", |b| {
        b.iter(|| {
            let env = serde_json::to_vec(&signer.sign_manifest(black_box(&m)).unwrap()).unwrap();
            verifier.verify(&env, &expect).unwrap()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
