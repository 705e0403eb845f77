//! Decision latency: a 1,000-rule policy through the native engine and the same rules
//! and decisions through the Rego engine, then the ratio of their medians.
//!
//! Run with `make bench` (or `cargo bench -p airlock-launcher --bench decide`).
//! Targets (issue 2): native median ≤ 2 µs per decision; native ≥ 20× faster than Rego.

use airlock_launcher::policy::capability::Capability;
use airlock_launcher::policy::rego::RegoEngine;
use airlock_launcher::policy::{DecisionEngine, Policy};
use criterion::{criterion_group, Criterion};
use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

const RULES: usize = 1000;

/// One synthetic rule in a form both engines can express.
enum Synth {
    Fs {
        dir: String,
        verdict: &'static str,
    },
    Net {
        host: String,
        port: u16,
        verdict: &'static str,
    },
    Tool {
        program: String,
        sub: String,
        verdict: &'static str,
    },
}

fn verdict(i: usize) -> &'static str {
    ["allow", "ask", "deny"][i % 3]
}

fn synth_rules() -> Vec<Synth> {
    (0..RULES)
        .map(|i| match i % 10 {
            0..=3 => Synth::Fs {
                dir: format!("/srv/team{}/project{}", i % 37, i),
                verdict: verdict(i),
            },
            4..=6 => Synth::Net {
                host: format!("svc{i}.zone{}.example.com", i % 13),
                port: 443,
                verdict: verdict(i),
            },
            _ => Synth::Tool {
                program: format!("tool{}", i % 50),
                sub: format!("sub{i}"),
                verdict: verdict(i),
            },
        })
        .collect()
}

fn native_policy(rules: &[Synth]) -> String {
    let mut t = String::from("version = 1\ndefault = \"deny\"\n");
    for (i, r) in rules.iter().enumerate() {
        let (m, v) = match r {
            Synth::Fs { dir, verdict } => {
                (format!("match.fs = {{ path = \"{dir}/**\" }}"), verdict)
            }
            Synth::Net {
                host,
                port,
                verdict,
            } => (
                format!("match.net = {{ host = \"{host}\", port = {port} }}"),
                verdict,
            ),
            Synth::Tool {
                program,
                sub,
                verdict,
            } => (
                format!("match.tool = {{ program = \"{program}\", argv = \"{sub} **\" }}"),
                verdict,
            ),
        };
        writeln!(
            t,
            "[[rule]]\nid = \"r{i}\"\ndecision = \"{v}\"\nreason = \"rule {i}\"\n{m}"
        )
        .unwrap();
    }
    t.push_str("[[rule]]\nid = \"res\"\ndecision = \"allow\"\nreason = \"fits\"\nmatch.resources = { vcpus = 4 }\n");
    t
}

/// The same rules as Rego data, with a first-match evaluator over them.
fn rego_policy(rules: &[Synth]) -> String {
    let mut t = String::from(
        r#"package airlock
import rego.v1

matches(r, c) if {
	r.kind == "fs"
	c.kind == "fs"
	c.path == r.dir
}
matches(r, c) if {
	r.kind == "fs"
	c.kind == "fs"
	startswith(c.path, concat("", [r.dir, "/"]))
}
matches(r, c) if {
	r.kind == "net"
	c.kind == "net"
	c.host == r.host
	c.port == r.port
}
matches(r, c) if {
	r.kind == "tool"
	c.kind == "tool"
	c.program == r.program
	count(c.args) > 0
	c.args[0] == r.sub
}
matches(r, c) if {
	r.kind == "resources"
	c.kind == "resources"
	c.vcpus <= r.vcpus
}

hits := [i | some i, r in rules; r.kind == input.kind; matches(r, input)]

decision := {"verdict": rules[hits[0]].verdict, "rule_id": rules[hits[0]].id, "reason": rules[hits[0]].reason} if {
	count(hits) > 0
}
decision := {"verdict": "deny", "rule_id": "default", "reason": "no rule"} if {
	count(hits) == 0
	input.kind != "resources"
}
decision := {"verdict": "deny", "rule_id": "no-ceiling", "reason": "above"} if {
	count(hits) == 0
	input.kind == "resources"
}

rules := [
"#,
    );
    for (i, r) in rules.iter().enumerate() {
        let body = match r {
            Synth::Fs { dir, verdict } => {
                format!(r#""kind": "fs", "dir": "{dir}", "verdict": "{verdict}""#)
            }
            Synth::Net {
                host,
                port,
                verdict,
            } => {
                format!(
                    r#""kind": "net", "host": "{host}", "port": {port}, "verdict": "{verdict}""#
                )
            }
            Synth::Tool {
                program,
                sub,
                verdict,
            } => format!(
                r#""kind": "tool", "program": "{program}", "sub": "{sub}", "verdict": "{verdict}""#
            ),
        };
        writeln!(
            t,
            "\t{{\"id\": \"r{i}\", \"reason\": \"rule {i}\", {body}}},"
        )
        .unwrap();
    }
    t.push_str("\t{\"id\": \"res\", \"reason\": \"fits\", \"kind\": \"resources\", \"vcpus\": 4, \"verdict\": \"allow\"},\n]\n");
    t
}

/// Capabilities that hit rules early, late, and not at all.
fn probes(rules: &[Synth]) -> Vec<Capability> {
    let mut caps = Vec::new();
    for i in (0..RULES).step_by(41) {
        caps.push(match &rules[i] {
            Synth::Fs { dir, .. } => Capability::Fs {
                path: format!("{dir}/src/main.rs"),
                mode: airlock_proto::manifest::Access::Rw,
            },
            Synth::Net { host, port, .. } => Capability::Net {
                host: host.clone(),
                port: *port,
            },
            Synth::Tool { program, sub, .. } => Capability::Tool {
                program: program.clone(),
                args: vec![sub.clone(), "--flag".into(), "x".into()],
            },
        });
    }
    caps.push(Capability::Fs {
        path: "/home/nobody/.ssh/id_rsa".into(),
        mode: airlock_proto::manifest::Access::Ro,
    });
    caps.push(Capability::Net {
        host: "unknown.example.org".into(),
        port: 443,
    });
    caps.push(Capability::Tool {
        program: "tool7".into(),
        args: vec!["nope".into()],
    });
    caps
}

struct Setup {
    native: Policy,
    rego: RegoEngine,
    caps: Vec<Capability>,
}

fn setup() -> Setup {
    let rules = synth_rules();
    let native =
        Policy::from_toml("bench-1000.toml", &native_policy(&rules)).expect("native policy loads");
    let rego = RegoEngine::from_source("bench-1000.rego", &rego_policy(&rules))
        .expect("rego policy loads");
    let caps = probes(&rules);
    for c in &caps {
        let (a, b) = (native.decide(c), rego.decide(c).expect("rego decides"));
        assert_eq!(
            (a.verdict, &a.rule_id),
            (b.verdict, &b.rule_id),
            "engines disagree on {c}"
        );
    }
    Setup { native, rego, caps }
}

fn bench_decide(c: &mut Criterion) {
    let s = setup();
    let mut g = c.benchmark_group("decide-1000-rules");
    g.measurement_time(Duration::from_secs(4));
    let mut i = 0;
    g.bench_function("native", |b| {
        b.iter(|| {
            i = (i + 1) % s.caps.len();
            black_box(s.native.decide(black_box(&s.caps[i])))
        })
    });
    let mut i = 0;
    g.bench_function("rego", |b| {
        b.iter(|| {
            i = (i + 1) % s.caps.len();
            black_box(s.rego.decide(black_box(&s.caps[i])).unwrap())
        })
    });
    g.finish();

    let policy = Policy::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/policies/coding-agent.toml"),
    )
    .expect("coding-agent loads");
    let caps: Vec<Capability> = [
        "tool git -C /w push origin main",
        "fs rw /home/a/work/app",
        "net static.crates.io:443",
        "net evil.example:80",
    ]
    .iter()
    .flat_map(|t| Capability::parse_text(t).unwrap())
    .collect();
    let mut i = 0;
    c.bench_function("decide-coding-agent/native", |b| {
        b.iter(|| {
            i = (i + 1) % caps.len();
            black_box(policy.decide(black_box(&caps[i])))
        })
    });
    c.bench_function("load-1000-rule-policy", |b| {
        let text = native_policy(&synth_rules());
        b.iter(|| black_box(Policy::from_toml("x", black_box(&text)).unwrap()))
    });
}

criterion_group!(benches, bench_decide);

fn median_ns(id: &str) -> Option<f64> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/criterion")
        .join(id)
        .join("new/estimates.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir).ok()?).ok()?;
    v["median"]["point_estimate"].as_f64()
}

fn main() {
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
    if let (Some(n), Some(r)) = (
        median_ns("decide-1000-rules/native"),
        median_ns("decide-1000-rules/rego"),
    ) {
        println!(
            "\nsummary: 1,000-rule policy, median per decision: native {:.0} ns, rego {:.1} µs; native is {:.0}x faster (targets: native <= 2000 ns, >= 20x)",
            n,
            r / 1000.0,
            r / n
        );
    }
}
