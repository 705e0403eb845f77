//! `airlock`: the command-line interface over `airlock_launcher`.
//!
//! Exit codes: 0 success / all allowed / valid; 1 invalid input or failed check;
//! 2 usage error; 3 needs approval; 4 denied.

use airlock_launcher::image::AddedFile;
use airlock_launcher::keys::{self, PRIVATE_KEY_FILE, PUBLIC_KEY_FILE};
use airlock_launcher::mint::{self, parse_duration_secs, MintOptions};
use airlock_launcher::plan::{evaluate, Outcome, Plan, Report};
use airlock_launcher::policy::capability::Capability;
use airlock_launcher::policy::lint::lint;
use airlock_launcher::policy::rego::RegoEngine;
use airlock_launcher::policy::{decide_or_deny, DecisionEngine, Policy};
use airlock_proto::envelope::{Expect, Expectations};
use airlock_proto::tool_rules::combine_parts;
use airlock_proto::verdict::Verdict;
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "airlock",
    version,
    about = "Give LLM agents tools without ambient authority."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load, check and lint policies; decide capabilities.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Decide every request of a plan (exit 0 all allowed, 3 needs approval, 4 denied).
    Plan {
        /// Policy file (TOML).
        #[arg(long)]
        policy: PathBuf,
        /// Plan file (TOML or JSON).
        #[arg(long)]
        plan: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Generate the launcher's signing key pair.
    Keygen {
        /// Directory for airlock.key and airlock.pub (default: $XDG_CONFIG_HOME/airlock).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replace an existing key pair.
        #[arg(long)]
        force: bool,
    },
    /// Mint and verify signed manifests.
    #[command(subcommand)]
    Manifest(ManifestCmd),
    /// Build guest images.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Run a command in a sandbox under a policy (exit: the command's status; 4 plan
    /// denied, nothing ran; 125 airlock's own failure).
    Run(RunArgs),
    /// Serve the Launcher gRPC service (with health and reflection) for orchestrators.
    Serve(ServeArgs),
    /// Watch and answer asks of a running `airlock serve` (gRPC client).
    #[command(subcommand)]
    Approvals(ApprovalsCmd),
    /// Check and read the audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Write the JSON Schemas of policy, plan and manifest.
    Schema {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check the log's hash chain and checkpoints; exit 1 naming the first bad record.
    Verify {
        /// Check the checkpoints' signatures with this launcher public key.
        #[arg(long = "pub")]
        public_key: Option<PathBuf>,
        /// The log.
        file: PathBuf,
    },
    /// Print the log's records (of one session).
    Show {
        /// Only this session's records.
        #[arg(long)]
        session: Option<String>,
        /// The records as they are, one JSON object per line.
        #[arg(long)]
        json: bool,
        /// The log.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum ApprovalsCmd {
    /// Print asks waiting now, then every new ask and every resolution as they happen.
    Watch {
        /// Only this session's asks.
        #[arg(long)]
        session: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Answer one ask (the first answer wins; a second one is refused).
    Resolve {
        /// The ask's id (`ap-000001`).
        id: String,
        /// Approve it.
        #[arg(long, conflicts_with = "deny", required_unless_present = "deny")]
        approve: bool,
        /// Deny it.
        #[arg(long)]
        deny: bool,
        /// How far an approval reaches: this ask, or this action for the rest of the
        /// session.
        #[arg(long, value_enum, default_value = "once")]
        scope: ScopeArg,
        /// Who answers, for the audit log [default: the login name].
        #[arg(long)]
        approver: Option<String>,
        /// A comment the agent sees with a denial.
        #[arg(long, default_value = "")]
        comment: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// List a session's `session`-scoped approvals.
    Grants {
        /// The session.
        session: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Revoke one `session`-scoped approval (by its digest).
    Revoke {
        /// The session.
        session: String,
        /// The action digest (`sha256:…`, from `grants`).
        digest: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ScopeArg {
    /// This ask only.
    Once,
    /// This exact action, for the rest of the session.
    Session,
}

#[derive(Args)]
struct ConnectArgs {
    /// The server: unix:PATH or tcp:ADDR [default: unix:$XDG_RUNTIME_DIR/airlock/launcher.sock].
    #[arg(long)]
    connect: Option<String>,
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Load each policy (syntax, types, ids, globs, examples) and lint it.
    Check {
        /// Policy files (.toml native, .rego Rego).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Exit 1 on lint warnings too.
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Decide capabilities given as text (`fs ro /p`, `net host:443`, `tool git push`,
    /// `resources vcpus=2`).
    Decide {
        /// Policy file (.toml or .rego).
        #[arg(long)]
        policy: PathBuf,
        /// Capabilities.
        #[arg(required = true)]
        capabilities: Vec<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ManifestCmd {
    /// Evaluate a plan and print the signed envelope (JSON) of its manifest on stdout.
    Mint(MintArgs),
    /// Verify a signed envelope (exit 0 valid, 1 invalid with the reason).
    Verify(VerifyArgs),
}

#[derive(Args)]
struct MintArgs {
    /// Policy file (TOML).
    #[arg(long)]
    policy: PathBuf,
    /// Plan file.
    #[arg(long)]
    plan: PathBuf,
    /// Signing key (default: $XDG_CONFIG_HOME/airlock/airlock.key).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Approve every `ask` (an operator answering yes to all).
    #[arg(long)]
    approve_asks: bool,
    /// Validity (e.g. 90s, 10m, 2h).
    #[arg(long, default_value = "10m")]
    ttl: String,
    /// CID of the VM that will receive the manifest.
    #[arg(long, default_value_t = 3)]
    cid: u32,
    /// Id of the image the VM boots.
    #[arg(long)]
    image_id: String,
    /// The guest's challenge nonce (hex); random if absent.
    #[arg(long)]
    nonce: Option<String>,
    /// Session id (32 hex); random if absent.
    #[arg(long)]
    session_id: Option<String>,
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Build a guest image (kernel, initramfs, descriptor); a rebuild with nothing
    /// changed writes nothing.
    Build(ImageBuildArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ProfileArg {
    /// initramfs: enforcer, shim, busybox, modules, key.
    Minimal,
    /// Debian trixie rootfs with git, curl, python3 (read-only erofs, tmpfs overlay).
    Debian,
}

#[derive(Args)]
struct ImageBuildArgs {
    /// Which image.
    #[arg(long, value_enum)]
    profile: ProfileArg,
    /// Output directory; the image goes to OUT/<profile>/ (default: $XDG_CACHE_HOME/airlock/images).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Launcher public key the image trusts (default: $XDG_CONFIG_HOME/airlock/airlock.pub).
    #[arg(long = "pub")]
    public_key: Option<PathBuf>,
    /// Static enforcer binary (default: airlock-enforcer next to airlock).
    #[arg(long)]
    enforcer: Option<PathBuf>,
    /// Static shim binary (default: airlock-shim next to airlock).
    #[arg(long)]
    shim: Option<PathBuf>,
    /// Static busybox (from Debian's busybox-static).
    #[arg(long, default_value = "/bin/busybox")]
    busybox: PathBuf,
    /// Add a host file to the image at an absolute guest path (repeatable), e.g. a
    /// static tool: `--add ./mytool:/opt/tools/mytool`. Covered by the image id.
    #[arg(long = "add", value_name = "HOST:GUEST", value_parser = AddedFile::parse)]
    added: Vec<AddedFile>,
    /// Print the descriptor as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Isolation {
    /// A disposable microVM (the default).
    Vm,
    /// Fresh namespaces on the host kernel (weaker: the kernel is shared).
    Process,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum MergeArg {
    /// Merge when the command exited on its own, whatever its status.
    Exited,
    /// Merge only when the command exited 0.
    Success,
    /// Report what would be merged; change nothing on the host.
    DryRun,
    /// Merge nothing (the write layer is discarded with the sandbox).
    Never,
}

impl From<MergeArg> for airlock_launcher::workspace_merge::MergeWhen {
    fn from(a: MergeArg) -> Self {
        use airlock_launcher::workspace_merge::MergeWhen as W;
        match a {
            MergeArg::Exited => W::Exited,
            MergeArg::Success => W::Success,
            MergeArg::DryRun => W::DryRun,
            MergeArg::Never => W::Never,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnAskArg {
    /// Ask on the controlling terminal (/dev/tty), beside the command's output.
    Prompt,
    /// Approve every ask, once (automation that trusts its policy's ask rules).
    Allow,
    /// Deny every ask.
    Deny,
    /// Let asks wait for an approver (gRPC WatchApprovals, the web page,
    /// --approver-cmd) until their deadline.
    Wait,
}

/// Who answers asks (shared by `run` and `serve`).
#[derive(Args)]
struct ApprovalArgs {
    /// Who answers asks [run: prompt when there is a controlling terminal, wait with
    /// --approver-cmd, else deny; serve: wait].
    #[arg(long, value_enum)]
    on_ask: Option<OnAskArg>,
    /// Run PROG for each ask: the ask as JSON on stdin, the answer as JSON on stdout
    /// (`{"answer":"once|session|deny"}`); a failure or a malformed answer denies.
    #[arg(long, value_name = "PROG")]
    approver_cmd: Option<PathBuf>,
    /// How long an ask waits for an answer before it is denied (at most 100s)
    /// [default: the policy's `ask_timeout`, else 60s].
    #[arg(long)]
    ask_timeout: Option<String>,
    /// The audit log every decision is written to before it takes effect
    /// [default: $XDG_STATE_HOME/airlock/audit.jsonl].
    #[arg(long, value_name = "FILE")]
    audit_log: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum VmmArg {
    /// QEMU `-M microvm` (KVM when a probe boot proves it works, else TCG).
    Qemu,
    /// cloud-hypervisor (needs working KVM).
    CloudHypervisor,
}

/// How VM sessions are made (shared by `run` and `serve`).
#[derive(Args)]
struct VmArgs {
    /// VM image descriptor (`image.json`, or its directory) [default:
    /// $XDG_CACHE_HOME/airlock/images/minimal/image.json].
    #[arg(long)]
    image: Option<PathBuf>,
    /// VM monitor.
    #[arg(long, value_enum, default_value = "qemu")]
    vmm: VmmArg,
    /// The launcher's private key [default: $XDG_CONFIG_HOME/airlock/airlock.key].
    #[arg(long)]
    key: Option<PathBuf>,
    /// Where vhost-device-vsock, virtiofsd (and cloud-hypervisor) are, before PATH.
    #[arg(long)]
    tools_dir: Option<PathBuf>,
    /// Dial NAME at IP instead of resolving it, like curl's --resolve (repeatable);
    /// recorded in the manifest of sessions granted NAME, and the explicit grant of that
    /// address even in loopback or private ranges.
    #[arg(long = "resolve", value_name = "NAME=IP")]
    resolve: Vec<String>,
}

#[derive(Args)]
struct ServeArgs {
    /// Policy file (TOML) every plan is decided against.
    #[arg(long)]
    policy: PathBuf,
    /// Endpoint: unix:PATH or tcp:ADDR (loopback only) [default:
    /// unix:$XDG_RUNTIME_DIR/airlock/launcher.sock].
    #[arg(long)]
    listen: Option<String>,
    /// Where collected files go (a directory per session) [default: the state
    /// directory's `outputs`].
    #[arg(long)]
    outputs: Option<PathBuf>,
    #[command(flatten)]
    vm: VmArgs,
    #[command(flatten)]
    approvals: ApprovalArgs,
    /// Serve the approvals web page on this loopback address (e.g. 127.0.0.1:8765);
    /// the address to open, with its access token, is printed at start.
    #[arg(long, value_name = "ADDR")]
    approvals_http: Option<std::net::SocketAddr>,
}

#[derive(Args)]
struct RunArgs {
    /// Sandbox kind: a disposable microVM, or namespaces on the host kernel (weaker).
    #[arg(long, value_enum, default_value = "vm")]
    isolation: Isolation,
    #[command(flatten)]
    vm: VmArgs,
    /// Copy this guest file back to the host when the command ends (repeatable).
    #[arg(long = "collect", value_name = "GUEST_PATH")]
    collect: Vec<String>,
    /// Where collected files go.
    #[arg(long, default_value = "airlock-collected")]
    collect_dir: PathBuf,
    /// Policy file (TOML).
    #[arg(long)]
    policy: PathBuf,
    /// Plan file; the flags below add to it, and CMD replaces its command.
    #[arg(long)]
    plan: Option<PathBuf>,
    /// Share a host directory: HOST:GUEST[:ro|rw|rw-live] (default ro; rw is
    /// copy-on-write, merged back through the gate; rw-live writes the host directly).
    #[arg(long = "mount", value_name = "HOST:GUEST[:ro|rw|rw-live]")]
    mounts: Vec<String>,
    /// Grant a tool (its rules come from the policy).
    #[arg(long = "tool", value_name = "NAME")]
    tools: Vec<String>,
    /// Ask for a network endpoint, HOST[:PORT] (port 443 when omitted; the policy
    /// decides it like a plan's [[net]]).
    #[arg(long = "net", value_name = "HOST[:PORT]")]
    net: Vec<String>,
    #[command(flatten)]
    approvals: ApprovalArgs,
    /// When the changes in copy-on-write (`rw`) workspaces reach the host, through the
    /// merge-back gate.
    #[arg(long, value_enum, default_value = "exited")]
    merge: MergeArg,
    /// Print the decisions (when denied) and a summary as JSON.
    #[arg(long)]
    json: bool,
    /// The enforcer binary (default: airlock-enforcer next to airlock).
    #[arg(long)]
    enforcer: Option<PathBuf>,
    /// The shim binary (default: airlock-shim next to airlock).
    #[arg(long)]
    shim: Option<PathBuf>,
    /// Command and arguments.
    #[arg(last = true)]
    command: Vec<String>,
}

#[derive(Args)]
struct VerifyArgs {
    /// Trusted public key (default: $XDG_CONFIG_HOME/airlock/airlock.pub).
    #[arg(long = "pub")]
    public_key: Option<PathBuf>,
    /// Require this VM CID.
    #[arg(long)]
    cid: Option<u32>,
    /// Require this image id.
    #[arg(long)]
    image_id: Option<String>,
    /// Require this nonce.
    #[arg(long)]
    nonce: Option<String>,
    /// Require this session id.
    #[arg(long)]
    session_id: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    /// Envelope file (`-` for stdin).
    file: PathBuf,
}

/// A failure with the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

fn fail(code: u8, message: impl std::fmt::Display) -> Failure {
    Failure {
        code,
        message: message.to_string(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("airlock: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn run(cmd: Command) -> Result<u8, Failure> {
    match cmd {
        Command::Policy(PolicyCmd::Check {
            files,
            json,
            deny_warnings,
        }) => policy_check(&files, json, deny_warnings),
        Command::Policy(PolicyCmd::Decide {
            policy,
            capabilities,
            json,
        }) => policy_decide(&policy, &capabilities, json),
        Command::Plan { policy, plan, json } => {
            let policy = Policy::load(&policy).map_err(|e| fail(1, e))?;
            let plan = Plan::load(&plan).map_err(|e| fail(1, e))?;
            let report = evaluate(&policy, &plan);
            print_report(&report, json);
            Ok(report.outcome.exit_code() as u8)
        }
        Command::Keygen { out, force } => {
            let dir = match out {
                Some(d) => d,
                None => keys::default_key_dir().map_err(|e| fail(1, e))?,
            };
            let id = keys::keygen(&dir, force).map_err(|e| fail(1, e))?;
            println!(
                "wrote {} and {} (key id {id})",
                dir.join(PRIVATE_KEY_FILE).display(),
                dir.join(PUBLIC_KEY_FILE).display()
            );
            Ok(0)
        }
        Command::Manifest(ManifestCmd::Mint(a)) => manifest_mint(a),
        Command::Run(a) => run_sandboxed(a),
        Command::Serve(a) => serve(a),
        Command::Approvals(c) => approvals_cmd(c),
        Command::Audit(AuditCmd::Verify { public_key, file }) => {
            let key = match &public_key {
                Some(p) => Some(keys::load_verifier(p).map_err(|e| fail(1, e))?),
                None => None,
            };
            match airlock_launcher::audit_log::verify(&file, key.as_ref()) {
                Ok(summary) => {
                    println!("{}: {summary}", file.display());
                    Ok(0)
                }
                Err(e) => Err(fail(1, format!("{}: {e}", file.display()))),
            }
        }
        Command::Audit(AuditCmd::Show {
            session,
            json,
            file,
        }) => {
            let text = airlock_launcher::audit_log::show(&file, session.as_deref(), json)
                .map_err(|e| fail(1, e))?;
            use std::io::Write;
            let _ = std::io::stdout().write_all(text.as_bytes());
            Ok(0)
        }
        Command::Image(ImageCmd::Build(a)) => image_build(a),
        Command::Manifest(ManifestCmd::Verify(a)) => manifest_verify(a),
        Command::Schema { out } => {
            std::fs::create_dir_all(&out)
                .map_err(|e| fail(1, format!("{}: {e}", out.display())))?;
            for (name, text) in airlock_launcher::schema::all() {
                let path = out.join(name);
                std::fs::write(&path, text)
                    .map_err(|e| fail(1, format!("{}: {e}", path.display())))?;
                println!("wrote {}", path.display());
            }
            Ok(0)
        }
    }
}

fn is_rego(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "rego")
}

fn policy_check(files: &[PathBuf], json: bool, deny_warnings: bool) -> Result<u8, Failure> {
    let mut code = 0;
    let mut results = Vec::new();
    for file in files {
        let mut protected = Vec::new();
        let (ok, rules, lints, profiles, error) = if is_rego(file) {
            match RegoEngine::load(file) {
                Ok(_) => (true, None, Vec::new(), Vec::new(), None),
                Err(e) => (false, None, Vec::new(), Vec::new(), Some(e.to_string())),
            }
        } else {
            match Policy::load(file) {
                Ok(p) => {
                    let profiles = p.effective_profiles();
                    protected = p.protected.clone();
                    (true, Some(p.rules.len()), lint(&p), profiles, None)
                }
                Err(e) => (false, None, Vec::new(), Vec::new(), Some(e.to_string())),
            }
        };
        if !ok || (deny_warnings && !lints.is_empty()) {
            code = 1;
        }
        if json {
            results.push(serde_json::json!({
                "file": file.display().to_string(),
                "valid": ok,
                "rules": rules,
                "error": error,
                "warnings": lints,
                "profiles": profiles,
                "protected": protected.iter().map(|g| serde_json::json!({
                    "path": g.glob, "decision": g.decision, "source": g.source, "reason": g.reason,
                })).collect::<Vec<_>>(),
            }));
        } else {
            match (&error, rules) {
                (Some(e), _) => println!("invalid  {e}"),
                (None, Some(n)) => println!(
                    "ok       {} ({n} rules, {} warnings)",
                    file.display(),
                    lints.len()
                ),
                (None, None) => println!("ok       {} (rego)", file.display()),
            }
            for p in profiles.iter().filter(|p| p.granted) {
                println!("  {p}");
            }
            if !protected.is_empty() {
                let own: Vec<&str> = protected
                    .iter()
                    .filter(|g| g.source != "default")
                    .map(|g| g.glob.as_str())
                    .collect();
                println!(
                    "  protected in writable grants: {} shipped{}",
                    protected.len() - own.len(),
                    if own.is_empty() {
                        String::new()
                    } else {
                        format!(", and the policy's {}", own.join(", "))
                    }
                );
            }
            for l in &lints {
                println!("  {}:{l}", file.display());
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&results).expect("json"));
    }
    Ok(code)
}

fn policy_decide(policy: &Path, texts: &[String], json: bool) -> Result<u8, Failure> {
    let engine: Box<dyn DecisionEngine> = if is_rego(policy) {
        Box::new(RegoEngine::load(policy).map_err(|e| fail(1, e))?)
    } else {
        Box::new(Policy::load(policy).map_err(|e| fail(1, e))?)
    };
    let mut worst = Verdict::Allow;
    let mut out = Vec::new();
    for text in texts {
        let caps = Capability::parse_text(text).map_err(|e| fail(1, e))?;
        let parts = caps
            .iter()
            .map(|c| (c.to_string(), decide_or_deny(engine.as_ref(), c)))
            .collect();
        let d = combine_parts(parts).decisive;
        worst = worst.most_restrictive(d.verdict);
        if json {
            out.push(
                serde_json::json!({"capability": text, "engine": engine.name(), "decision": d}),
            );
        } else {
            println!(
                "{:<5}  {text}  [rule {}: {}]",
                d.verdict, d.rule_id, d.reason
            );
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out).expect("json"));
    }
    Ok(match worst {
        Verdict::Allow => 0,
        Verdict::Ask => 3,
        Verdict::Deny => 4,
    })
}

fn print_report(report: &Report, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(report).expect("json"));
        return;
    }
    println!("policy {} ({})", report.policy, report.policy_digest);
    for i in &report.items {
        println!(
            "{:<5}  {:<9} {}  [rule {}: {}]",
            i.decision.verdict,
            i.kind.as_str(),
            i.request,
            i.decision.rule_id,
            i.decision.reason
        );
        if let Some(n) = &i.note {
            println!("       {:<9} note: {n}", "");
        }
    }
    println!(
        "outcome: {}",
        match report.outcome {
            Outcome::Allowed => "allowed",
            Outcome::NeedsApproval => "needs approval",
            Outcome::Denied => "denied",
        }
    );
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn manifest_mint(a: MintArgs) -> Result<u8, Failure> {
    let policy = Policy::load(&a.policy).map_err(|e| fail(1, e))?;
    let plan = Plan::load(&a.plan).map_err(|e| fail(1, e))?;
    let key_path = match a.key {
        Some(k) => k,
        None => keys::default_key_dir()
            .map_err(|e| fail(1, e))?
            .join(PRIVATE_KEY_FILE),
    };
    let signer = keys::load_signer(&key_path).map_err(|e| fail(1, e))?;
    let ttl_secs = parse_duration_secs(&a.ttl).map_err(|e| fail(1, format!("--ttl: {e}")))?;
    let opts = MintOptions {
        now: now_unix(),
        ttl_secs,
        vm_cid: a.cid,
        image_id: a.image_id,
        nonce: a.nonce,
        session_id: a.session_id,
        approve_asks: a.approve_asks,
    };
    let manifest = mint::mint(&policy, &plan, &opts).map_err(|e| fail(e.exit_code() as u8, e))?;
    let envelope = signer.sign_manifest(&manifest).map_err(|e| fail(1, e))?;
    println!("{}", serde_json::to_string_pretty(&envelope).expect("json"));
    eprintln!(
        "airlock: minted manifest for session {} (cid {}, image {}, expires in {}s, key {})",
        manifest.session_id,
        manifest.vm_cid,
        manifest.image_id,
        ttl_secs,
        signer.key_id()
    );
    Ok(0)
}

fn manifest_verify(a: VerifyArgs) -> Result<u8, Failure> {
    let pub_path = match a.public_key {
        Some(p) => p,
        None => keys::default_key_dir()
            .map_err(|e| fail(1, e))?
            .join(PUBLIC_KEY_FILE),
    };
    let verifier = keys::load_verifier(&pub_path).map_err(|e| fail(1, e))?;
    let bytes = if a.file.as_os_str() == "-" {
        let mut buf = Vec::new();
        use std::io::Read;
        std::io::stdin()
            .take(airlock_proto::envelope::MAX_ENVELOPE_BYTES as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(|e| fail(1, format!("stdin: {e}")))?;
        buf
    } else {
        std::fs::read(&a.file).map_err(|e| fail(1, format!("{}: {e}", a.file.display())))?
    };
    let pin = |o: Option<String>| o.map_or(Expect::Unchecked, Expect::Exactly);
    let unchecked: Vec<&str> = [
        ("session id", a.session_id.is_none()),
        ("cid", a.cid.is_none()),
        ("image id", a.image_id.is_none()),
        ("nonce", a.nonce.is_none()),
    ]
    .iter()
    .filter(|(_, u)| *u)
    .map(|(n, _)| *n)
    .collect();
    let expect = Expectations {
        now: now_unix(),
        session_id: pin(a.session_id),
        vm_cid: a.cid.map_or(Expect::Unchecked, Expect::Exactly),
        image_id: pin(a.image_id),
        nonce: pin(a.nonce),
    };
    match verifier.verify(&bytes, &expect) {
        Ok(m) => {
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "valid": true, "key_id": verifier.key_id(), "unchecked": unchecked, "manifest": m
                    }))
                    .expect("json")
                );
            } else {
                println!(
                    "valid: session {} for cid {} image {} (key {}), expires at {} ({}s left); {} mounts, {} egress allowed, {} tools",
                    m.session_id,
                    m.vm_cid,
                    m.image_id,
                    verifier.key_id(),
                    m.expires_at,
                    m.expires_at.saturating_sub(expect.now),
                    m.mounts.len(),
                    m.egress.allow.len(),
                    m.tools.len()
                );
                if !unchecked.is_empty() {
                    println!("not checked (no flag given): {}", unchecked.join(", "));
                }
            }
            Ok(0)
        }
        Err(e) => {
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"valid": false, "error": e.to_string()})
                    )
                    .expect("json")
                );
                Ok(1)
            } else {
                Err(fail(1, format!("invalid manifest: {e}")))
            }
        }
    }
}

/// Parses `HOST:GUEST[:ro|rw|rw-live]`.
fn parse_mount(text: &str) -> Result<airlock_launcher::plan::PlanMount, String> {
    use airlock_proto::manifest::Access;
    let parts: Vec<&str> = text.split(':').collect();
    let (host, guest, mode) = match parts.as_slice() {
        [h, g] => (*h, *g, Access::Ro),
        [h, g, "ro"] => (*h, *g, Access::Ro),
        [h, g, "rw"] => (*h, *g, Access::Rw),
        [h, g, "rw-live"] => (*h, *g, Access::RwLive),
        [_, _, m] => return Err(format!("--mount `{text}`: mode `{m}` is not ro or rw")),
        _ => {
            return Err(format!(
                "--mount `{text}` is not HOST:GUEST[:ro|rw|rw-live]"
            ))
        }
    };
    let host = std::path::absolute(host)
        .map_err(|e| format!("--mount `{text}`: {e}"))?
        .display()
        .to_string();
    Ok(airlock_launcher::plan::PlanMount {
        host,
        guest: guest.to_string(),
        mode,
    })
}

fn run_sandboxed(a: RunArgs) -> Result<u8, Failure> {
    use airlock_launcher::process_session::{run_process_isolated, ProcessRunOptions, RunError};
    // Bad input is airlock's own failure here (125), as the command's codes are the
    // command's.
    let bad = |e: &dyn std::fmt::Display| fail(125, e);
    let policy = Policy::load(&a.policy).map_err(|e| bad(&e))?;
    let mut plan = match &a.plan {
        Some(p) => Plan::load(p).map_err(|e| bad(&e))?,
        None => Plan {
            command: vec![],
            cwd: None,
            env: Default::default(),
            mounts: vec![],
            net: vec![],
            tools: vec![],
            resources: Default::default(),
        },
    };
    if !a.command.is_empty() {
        plan.command = a.command.clone();
    }
    for m in &a.mounts {
        plan.mounts.push(parse_mount(m).map_err(|e| bad(&e))?);
    }
    plan.tools.extend(a.tools.iter().cloned());
    for n in &a.net {
        let airlock_launcher::policy::capability::Capability::Net { host, port } =
            airlock_launcher::policy::capability::parse_net(n)
                .map_err(|e| bad(&format!("--net {n}: {e}")))?
        else {
            unreachable!("parse_net gives a net capability")
        };
        plan.net
            .push(airlock_launcher::plan::PlanEndpoint { host, port });
    }
    if plan.command.is_empty() {
        return Err(fail(2, "no command: give one after `--` or in --plan"));
    }
    plan.validate("command line").map_err(|e| bad(&e))?;
    if a.isolation == Isolation::Vm {
        return run_in_vm(&a, policy, &plan);
    }
    let mut opts = ProcessRunOptions::next_to_current_exe().map_err(|e| bad(&e))?;
    if let Some(e) = a.enforcer {
        opts.enforcer = e;
    }
    if let Some(s) = a.shim {
        opts.shim = s;
    }
    // The audit log's checkpoints are signed with the launcher's key when there is one
    // (process isolation needs none otherwise); else with a key made for this run: the
    // checkpoint names that key's id, so `audit verify --pub` says whose it is not.
    let signer = match launcher_signer(&a.vm) {
        Ok(s) => s,
        Err(_) => std::sync::Arc::new(
            airlock_proto::envelope::Signer::generate().map_err(|e| fail(125, e))?,
        ),
    };
    let approvers = Approvers::from_args(&a.approvals, false, &policy, signer)
        .map_err(|f| fail(125, f.message))?;
    opts.approvals = approvers.broker.clone();
    opts.merge = a.merge.into();
    opts.egress_pins = egress_pins(&a.vm.resolve)?;
    // The approver channels live on their own runtime: the session blocks this thread.
    let channel_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| fail(125, format!("tokio runtime: {e}")))?;
    let _channels = {
        let _entered = channel_rt.enter();
        approvers.start().map_err(|f| fail(125, f.message))?
    };
    // Terminal interrupts belong to the agent (same process group); the enforcer
    // restores default dispositions for it.
    // SAFETY: sets signal dispositions to ignore; no handler involved.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
    }
    match run_process_isolated(&policy, &plan, &opts) {
        Ok(out) => {
            if a.json {
                eprintln!(
                    "{}",
                    serde_json::json!({
                        "session_id": out.session_id,
                        "isolation": "process",
                        "exit_code": out.exit_code,
                        "outcome": out.report.outcome,
                        "merge": out.merge.as_ref().map(|m| m.to_json()),
                    })
                );
            } else if let Some(m) = &out.merge {
                eprintln!("airlock: workspace: {}", m.summary_line());
            }
            Ok(u8::try_from(out.exit_code).unwrap_or(125))
        }
        Err(RunError::Denied { report, denials }) => {
            if a.json {
                print_report(&report, true);
            } else {
                for d in &denials {
                    eprintln!("airlock: denied: {d}");
                }
            }
            Err(fail(4, "plan denied; nothing ran"))
        }
        Err(e) => Err(fail(125, e)),
    }
}

/// `--resolve NAME=IP` flags, parsed (a bad one is named).
fn egress_pins(
    flags: &[String],
) -> Result<std::collections::BTreeMap<String, std::net::IpAddr>, Failure> {
    flags
        .iter()
        .map(|f| {
            airlock_launcher::egress::address_ranges::parse_resolve_pin(f)
                .map_err(|e| fail(125, format!("--resolve {f}: {e}")))
        })
        .collect()
}

/// The VM image a run uses: `--image` (a descriptor or its directory), else the
/// minimal image in the cache.
fn load_image(arg: Option<&Path>) -> Result<airlock_launcher::image::ImageDescriptor, Failure> {
    let path = match arg {
        Some(p) if p.is_dir() => p.join("image.json"),
        Some(p) => p.to_path_buf(),
        None => keys::default_cache_dir()
            .map_err(|e| fail(125, e))?
            .join("images/minimal/image.json"),
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        fail(
            125,
            format!(
                "VM image {}: {e} (build one with `airlock image build --profile minimal`, or pass --image)",
                path.display()
            ),
        )
    })?;
    serde_json::from_str(&text)
        .map_err(|e| fail(125, format!("VM image descriptor {}: {e}", path.display())))
}

/// Where per-VM directories go: `$XDG_RUNTIME_DIR/airlock/vms`, else `/run/airlock/vms`
/// for root, else a per-user directory under the temporary directory.
fn vm_state_root() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("airlock/vms");
    }
    // SAFETY: geteuid has no failure mode.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        PathBuf::from("/run/airlock/vms")
    } else {
        std::env::temp_dir().join(format!("airlock-{uid}/vms"))
    }
}

/// A launcher for `vm` args and `policy`; reports a sweep of a crashed launcher's VMs.
/// The launcher's signing key (`--key`, else the default).
fn launcher_signer(
    vm: &VmArgs,
) -> Result<std::sync::Arc<airlock_proto::envelope::Signer>, Failure> {
    let key = match &vm.key {
        Some(k) => k.clone(),
        None => keys::default_key_dir()
            .map_err(|e| fail(125, e))?
            .join(PRIVATE_KEY_FILE),
    };
    keys::load_signer(&key)
        .map(std::sync::Arc::new)
        .map_err(|e| fail(125, e))
}

fn vm_launcher(
    vm: &VmArgs,
    policy: Policy,
    signer: std::sync::Arc<airlock_proto::envelope::Signer>,
    approvals: std::sync::Arc<airlock_launcher::approval_broker::ApprovalBroker>,
    quiet: bool,
) -> Result<airlock_launcher::launcher::Launcher, Failure> {
    use airlock_launcher::launcher::{Launcher, LauncherConfig};
    use airlock_launcher::vmm::{cloud_hypervisor, find_program, qemu};
    let image = load_image(vm.image.as_deref())?;
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    // The Makefile's tool cache, for a launcher run from the build tree.
    let mut dirs: Vec<PathBuf> = vm.tools_dir.iter().cloned().collect();
    dirs.push(exe_dir.join("../airlock-cache/tools/bin"));
    let need = |name: &str| {
        find_program(name, &dirs).ok_or_else(|| {
            fail(
                125,
                format!("{name} not found in --tools-dir or PATH (make tools installs it)"),
            )
        })
    };
    let state_root = vm_state_root();
    let virtiofsd = find_program("virtiofsd", &dirs).unwrap_or_else(|| PathBuf::from("virtiofsd"));
    let vmm: std::sync::Arc<dyn airlock_launcher::vmm::Vmm> = match vm.vmm {
        VmmArg::Qemu => {
            let tools = qemu::QemuTools {
                qemu: need("qemu-system-x86_64")?,
                vhost_device_vsock: need("vhost-device-vsock")?,
                virtiofsd,
            };
            let spec = airlock_launcher::vmm::VmSpec::for_image(&image, 3, 1, 256);
            let cache = keys::default_cache_dir()
                .map_err(|e| fail(125, e))?
                .join("kvm-probe");
            let (accel, why) = qemu::probe_kvm(
                &tools,
                &spec,
                &state_root,
                &cache,
                std::time::Duration::from_secs(15),
            );
            if !quiet {
                eprintln!("airlock: qemu: {why}");
            }
            std::sync::Arc::new(qemu::Qemu { tools, accel })
        }
        VmmArg::CloudHypervisor => {
            let binary = need("cloud-hypervisor")?;
            if let Some(why) = cloud_hypervisor::kvm_unusable(&binary) {
                return Err(fail(
                    125,
                    format!("cloud-hypervisor cannot run here: {why}"),
                ));
            }
            std::sync::Arc::new(cloud_hypervisor::CloudHypervisor { binary, virtiofsd })
        }
    };
    let (launcher, sweep) = Launcher::new(LauncherConfig {
        policy: std::sync::Arc::new(policy),
        signer,
        image,
        vmm,
        state_root,
        boot_timeout: airlock_launcher::launcher::DEFAULT_BOOT_TIMEOUT,
        egress_pins: egress_pins(&vm.resolve)?,
        approvals,
    })
    .map_err(|e| fail(125, e))?;
    for d in &sweep.removed {
        eprintln!(
            "airlock: removed {} (left by a launcher that crashed)",
            d.display()
        );
    }
    Ok(launcher)
}

fn serve(a: ServeArgs) -> Result<u8, Failure> {
    use airlock_launcher::server::{serve, LauncherService, Listen};
    let policy = Policy::load(&a.policy).map_err(|e| fail(1, e))?;
    let listen: Listen = match &a.listen {
        Some(l) => l
            .parse()
            .map_err(|e: String| fail(2, format!("--listen: {e}")))?,
        None => default_listen(),
    };
    let signer = launcher_signer(&a.vm)?;
    let approvers = Approvers::from_args(&a.approvals, true, &policy, signer.clone())?;
    let launcher = vm_launcher(&a.vm, policy, signer, approvers.broker.clone(), false)?;
    let outputs = a.outputs.clone().unwrap_or_else(|| {
        vm_state_root()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
            .join("outputs")
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| fail(1, format!("tokio runtime: {e}")))?;
    let shown = match &listen {
        Listen::Unix(p) => format!("unix:{}", p.display()),
        Listen::Tcp(t) => format!("tcp:{t}"),
    };
    rt.block_on(async move {
        let _channels = approvers.start()?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|&s| s).await;
        };
        let page = match a.approvals_http {
            Some(addr) => {
                let page = airlock_launcher::approvals_http::start_approvals_http(
                    addr,
                    approvers.broker.clone(),
                    stopped(stop_rx.clone()),
                )
                .await
                .map_err(|e| fail(1, format!("--approvals-http: {e}")))?;
                // Like a notebook server: the address carries the access token.
                eprintln!("airlock: approvals page: {}", page.url);
                Some(page)
            }
            None => None,
        };
        let service = LauncherService::new(std::sync::Arc::new(launcher), outputs);
        let shutdown = async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("a SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            eprintln!("airlock: serve: shutting down; live sessions are destroyed");
            let _ = stop_tx.send(true);
        };
        serve(
            service,
            &listen,
            || eprintln!("airlock: serving the Launcher service on {shown}"),
            shutdown,
        )
        .await
        .map_err(|e| fail(1, e))?;
        if let Some(page) = page {
            page.finished().await;
        }
        Ok(())
    })?;
    Ok(0)
}

/// What a VM command gets on stdin: ours, read whole when it is a pipe or a file
/// (an Exec carries it in one message), nothing when it is a terminal (interactive
/// input needs the tty stream, which VM sessions do not have yet).
fn stdin_for_vm() -> Result<Vec<u8>, Failure> {
    use airlock_launcher::launcher::MAX_EXEC_STDIN_BYTES;
    use std::io::{IsTerminal, Read};
    let input = std::io::stdin();
    if input.is_terminal() {
        return Ok(Vec::new());
    }
    let mut bytes = Vec::new();
    match input
        .lock()
        .take(MAX_EXEC_STDIN_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
    {
        Ok(_) => {}
        // No stdin at all (a closed descriptor) is an empty one.
        Err(e) if e.raw_os_error() == Some(libc::EBADF) => return Ok(Vec::new()),
        Err(e) => return Err(fail(125, format!("reading stdin: {e}"))),
    }
    if bytes.len() > MAX_EXEC_STDIN_BYTES {
        return Err(fail(
            125,
            format!("stdin is more than the {MAX_EXEC_STDIN_BYTES} bytes a command in a VM takes; pass large inputs as a --mount"),
        ));
    }
    Ok(bytes)
}

fn run_in_vm(a: &RunArgs, policy: Policy, plan: &Plan) -> Result<u8, Failure> {
    use airlock_launcher::launcher::{ExecOutput, ExecSpec};
    use std::io::Write;
    // Read before anything boots: a bad stdin costs no VM.
    let stdin = stdin_for_vm()?;
    let signer = launcher_signer(&a.vm)?;
    let approvers = Approvers::from_args(&a.approvals, false, &policy, signer.clone())
        .map_err(|f| fail(125, f.message))?;
    let launcher = vm_launcher(&a.vm, policy, signer, approvers.broker.clone(), a.json)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(125, format!("tokio runtime: {e}")))?;
    rt.block_on(async {
        let _channels = approvers.start().map_err(|f| fail(125, f.message))?;
        let mut session = match launcher.create_session(plan).await {
            Ok(s) => s,
            Err(airlock_launcher::launcher::SessionError::Refused(
                airlock_launcher::approval::Refusal::Denied { report, denials },
            )) => {
                if a.json {
                    print_report(&report, true);
                } else {
                    for d in &denials {
                        eprintln!("airlock: denied: {d}");
                    }
                }
                return Err(fail(4, "plan denied; nothing ran"));
            }
            Err(e) => return Err(fail(e.exit_code() as u8, e)),
        };
        let argv = session.manifest().command.argv.clone();
        let mut stream = session
            .exec(ExecSpec {
                argv,
                stdin,
                ..Default::default()
            })
            .await
            .map_err(|e| fail(e.exit_code() as u8, e))?;
        let mut exec_id = String::new();
        let mut interrupts = 0u32;
        let end = loop {
            let ev = tokio::select! {
                ev = stream.next() => ev,
                _ = tokio::signal::ctrl_c() => {
                    interrupts += 1;
                    if interrupts > 1 {
                        break Err(fail(130, "interrupted twice: the session is destroyed"));
                    }
                    eprintln!("airlock: interrupt: passed to the command (again to destroy the session)");
                    Some(Ok(ExecOutput::Started(String::new())))
                }
            };
            match ev {
                None => break Err(fail(125, "the command's stream ended without an exit")),
                Some(Err(e)) => break Err(fail(e.exit_code() as u8, e)),
                Some(Ok(ExecOutput::Started(id))) if id.is_empty() => {
                    let _ = session.signal(&exec_id, libc::SIGINT).await;
                }
                Some(Ok(ExecOutput::Started(id))) => exec_id = id,
                Some(Ok(ExecOutput::Stdout(b))) => {
                    let _ = std::io::stdout().write_all(&b);
                    let _ = std::io::stdout().flush();
                }
                Some(Ok(ExecOutput::Stderr(b))) => {
                    let _ = std::io::stderr().write_all(&b);
                }
                Some(Ok(ExecOutput::Ended(end))) => break Ok(end),
            }
        };
        drop(stream);
        let mut collected = Vec::new();
        if end.is_ok() && !a.collect.is_empty() {
            std::fs::create_dir_all(&a.collect_dir)
                .map_err(|e| fail(125, format!("{}: {e}", a.collect_dir.display())))?;
            collected = session
                .collect(&a.collect, &a.collect_dir)
                .await
                .map_err(|e| fail(125, e))?;
        }
        let merge = if session.has_workspaces() {
            let ended = match &end {
                Ok(e) => e.command_end(),
                Err(_) => airlock_launcher::workspace_merge::CommandEnd::Stopped(
                    "the session failed".into(),
                ),
            };
            Some(session.merge_after(&ended, a.merge.into()).await)
        } else {
            None
        };
        let id = session.id().to_string();
        let ttr = session.time_to_ready();
        session.destroy().await.map_err(|e| fail(125, e))?;
        let end = end?;
        if a.json {
            eprintln!(
                "{}",
                serde_json::json!({
                    "session_id": id,
                    "isolation": "vm",
                    "exit_code": end.exit_code(),
                    "time_to_ready_ms": ttr.as_millis() as u64,
                    "collected": collected.iter().map(|c| serde_json::json!({
                        "guest_path": c.guest_path, "host_path": c.host_path,
                        "size": c.size, "sha256": c.sha256,
                    })).collect::<Vec<_>>(),
                    "merge": merge.as_ref().map(|m| m.to_json()),
                })
            );
        } else {
            if let airlock_launcher::launcher::ExecEnd::Stopped(why) = &end {
                eprintln!("airlock: the sandbox stopped the command: {why}");
            }
            if let Some(m) = &merge {
                eprintln!("airlock: workspace: {}", m.summary_line());
            }
        }
        Ok(u8::try_from(end.exit_code()).unwrap_or(125))
    })
}

/// The approval broker of this launcher and the channels that answer it.
struct Approvers {
    broker: std::sync::Arc<airlock_launcher::approval_broker::ApprovalBroker>,
    tty: Option<PathBuf>,
    command: Option<PathBuf>,
}

impl Approvers {
    /// The broker and channels `a` asks for (`serving`: defaults for `airlock serve`).
    fn from_args(
        a: &ApprovalArgs,
        serving: bool,
        policy: &Policy,
        signer: std::sync::Arc<airlock_proto::envelope::Signer>,
    ) -> Result<Approvers, Failure> {
        use airlock_launcher::approval_broker::{
            Answer, ApprovalBroker, AutoAnswer, Scope, DEFAULT_APPROVAL_TIMEOUT,
        };
        use airlock_launcher::audit_log::{default_audit_path, AuditLog};
        use airlock_launcher::policy::MAX_ASK_TIMEOUT_SECS;
        let secs = match &a.ask_timeout {
            Some(t) => {
                let secs =
                    parse_duration_secs(t).map_err(|e| fail(2, format!("--ask-timeout: {e}")))?;
                if !(1..=MAX_ASK_TIMEOUT_SECS).contains(&secs) {
                    return Err(fail(
                        2,
                        format!("--ask-timeout {secs}s is outside 1s..={MAX_ASK_TIMEOUT_SECS}s"),
                    ));
                }
                secs
            }
            None => policy
                .ask_timeout_secs
                .unwrap_or(DEFAULT_APPROVAL_TIMEOUT.as_secs()),
        };
        const TTY: &str = "/dev/tty";
        // Interactive use: a controlling terminal, and input from it (a launcher run
        // by a script or a test, stdin elsewhere, is not prompting anyone).
        let has_tty = || {
            use std::io::IsTerminal;
            std::io::stdin().is_terminal()
                && std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(TTY)
                    .is_ok()
        };
        let on_ask = match a.on_ask {
            Some(o) => o,
            None if serving || a.approver_cmd.is_some() => OnAskArg::Wait,
            None if has_tty() => OnAskArg::Prompt,
            None => OnAskArg::Deny,
        };
        let auto = |answer, name: &str| {
            Some(AutoAnswer {
                answer,
                approver: name.to_string(),
            })
        };
        let (auto, tty) = match on_ask {
            OnAskArg::Allow => (auto(Answer::Approve(Scope::Once), "--on-ask allow"), None),
            OnAskArg::Deny => (auto(Answer::Deny, "--on-ask deny"), None),
            OnAskArg::Wait => (None, None),
            OnAskArg::Prompt => (None, Some(PathBuf::from(TTY))),
        };
        if auto.is_some() && a.approver_cmd.is_some() {
            return Err(fail(
                2,
                "--approver-cmd answers asks, and so does --on-ask allow|deny: give one",
            ));
        }
        // Fail closed: a launcher that cannot keep its log decides nothing.
        let refused = |e: &dyn std::fmt::Display| {
            fail(
                125,
                format!("audit log: {e} (give another with --audit-log, or move this one aside after checking it with `airlock audit verify`)"),
            )
        };
        let log = match &a.audit_log {
            Some(path) => AuditLog::open(path, signer).map_err(|e| refused(&e))?,
            // The default place may be missing or unwritable (no home directory, a
            // read-only one): the runtime directory then holds the log, and the run
            // says where. A log that exists and does not verify is never passed over.
            None => match default_audit_path().and_then(|p| AuditLog::open(&p, signer.clone())) {
                Ok(log) => log,
                Err(e @ airlock_launcher::audit_log::AuditError::Corrupt { .. }) => {
                    return Err(refused(&e))
                }
                Err(e) => {
                    let fallback = vm_state_root()
                        .parent()
                        .map(Path::to_path_buf)
                        .unwrap_or_default()
                        .join("audit.jsonl");
                    let log = AuditLog::open(&fallback, signer).map_err(|e| refused(&e))?;
                    eprintln!(
                        "airlock: audit log: the default place is unusable ({e}); writing to {}",
                        fallback.display()
                    );
                    log
                }
            },
        };
        let broker = ApprovalBroker::configured(
            std::time::Duration::from_secs(secs),
            auto,
            Some(std::sync::Arc::new(log)),
        );
        Ok(Approvers {
            broker,
            tty,
            command: a.approver_cmd.clone(),
        })
    }

    /// Starts the channels (inside a runtime); they stop when the handles drop.
    fn start(&self) -> Result<Vec<airlock_launcher::approver_channels::ChannelHandle>, Failure> {
        use airlock_launcher::approver_channels::{
            spawn_command_approver, spawn_terminal_approver,
        };
        let mut handles = Vec::new();
        if let Some(tty) = &self.tty {
            handles.push(
                spawn_terminal_approver(self.broker.clone(), tty)
                    .map_err(|e| fail(125, format!("--on-ask prompt: {}: {e}", tty.display())))?,
            );
        }
        if let Some(cmd) = &self.command {
            handles.push(spawn_command_approver(self.broker.clone(), cmd.clone()));
        }
        Ok(handles)
    }
}

/// Where `airlock serve` listens by default, and where its clients connect.
fn default_listen() -> airlock_launcher::server::Listen {
    airlock_launcher::server::Listen::Unix(
        vm_state_root()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
            .join("launcher.sock"),
    )
}

fn approvals_cmd(c: ApprovalsCmd) -> Result<u8, Failure> {
    use airlock_launcher::approver_channels::sanitize_for_terminal as shown;
    use airlock_proto::pb::launcher_client::LauncherClient;
    use airlock_proto::pb::{approval_event, ApprovalScope};
    let connect_to = |c: &ConnectArgs| -> Result<airlock_launcher::server::Listen, Failure> {
        match &c.connect {
            Some(l) => l
                .parse()
                .map_err(|e: String| fail(2, format!("--connect: {e}"))),
            None => Ok(default_listen()),
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(1, format!("tokio runtime: {e}")))?;
    let rpc_failed = |e: tonic::Status| fail(1, format!("{:?}: {}", e.code(), e.message()));
    rt.block_on(async {
        let client = |l: airlock_launcher::server::Listen| async move {
            airlock_launcher::server::connect(&l)
                .await
                .map(LauncherClient::new)
                .map_err(|e| fail(1, e))
        };
        match c {
            ApprovalsCmd::Watch {
                session,
                json,
                connect,
            } => {
                let mut c = client(connect_to(&connect)?).await?;
                let mut stream = c
                    .watch_approvals(airlock_proto::pb::WatchApprovalsRequest {
                        session_id: session.unwrap_or_default(),
                    })
                    .await
                    .map_err(rpc_failed)?
                    .into_inner();
                use std::io::Write;
                while let Some(ev) = stream.message().await.map_err(rpc_failed)? {
                    let line = match ev.event {
                        Some(approval_event::Event::Pending(p)) => {
                            let what = p.capability.clone().unwrap_or_default();
                            if json {
                                serde_json::json!({
                                    "event": "pending", "id": p.approval_id,
                                    "session_id": p.session_id, "kind": p.kind,
                                    "rule_id": what.rule_id, "reason": what.reason,
                                    "capability": what.capability, "program": p.program,
                                    "argv": p.argv, "cwd": p.cwd,
                                    "binary_sha256": p.binary_sha256, "digest": p.digest,
                                    "deadline_unix_ms": p.expires_at_unix_millis,
                                })
                                .to_string()
                            } else {
                                let cwd = if p.cwd.is_empty() {
                                    String::new()
                                } else {
                                    format!(" (cwd {})", shown(&p.cwd))
                                };
                                format!(
                                    "pending {} session {} rule {} ({}): {}{cwd}",
                                    p.approval_id,
                                    p.session_id,
                                    shown(&what.rule_id),
                                    shown(&what.reason),
                                    shown(&what.capability)
                                )
                            }
                        }
                        Some(approval_event::Event::Resolved(r)) => {
                            if json {
                                serde_json::json!({
                                    "event": "resolved", "id": r.approval_id,
                                    "session_id": r.session_id, "approved": r.approved,
                                    "scope": match ApprovalScope::try_from(r.scope) {
                                        Ok(ApprovalScope::Session) => "session",
                                        Ok(ApprovalScope::Once) => "once",
                                        _ => "",
                                    },
                                    "approver": r.approver, "message": r.message,
                                    "digest": r.digest,
                                })
                                .to_string()
                            } else {
                                format!("resolved {}: {}", r.approval_id, shown(&r.message))
                            }
                        }
                        None => continue,
                    };
                    let mut out = std::io::stdout().lock();
                    if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                        return Ok(0);
                    }
                }
                Ok(0)
            }
            ApprovalsCmd::Resolve {
                id,
                approve,
                deny: _,
                scope,
                approver,
                comment,
                connect,
            } => {
                let approver = approver
                    .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
                    .unwrap_or_else(|| {
                        // SAFETY: getuid has no failure mode.
                        format!("uid {}", unsafe { libc::getuid() })
                    });
                let mut c = client(connect_to(&connect)?).await?;
                let r = c
                    .resolve_approval(airlock_proto::pb::ResolveApprovalRequest {
                        approval_id: id,
                        approve,
                        approver,
                        comment,
                        scope: match scope {
                            ScopeArg::Once => ApprovalScope::Once,
                            ScopeArg::Session => ApprovalScope::Session,
                        } as i32,
                    })
                    .await
                    .map_err(rpc_failed)?
                    .into_inner();
                println!("{}", r.message);
                Ok(0)
            }
            ApprovalsCmd::Grants {
                session,
                json,
                connect,
            } => {
                let mut c = client(connect_to(&connect)?).await?;
                let grants = c
                    .list_session_grants(airlock_proto::pb::ListSessionGrantsRequest {
                        session_id: session,
                    })
                    .await
                    .map_err(rpc_failed)?
                    .into_inner()
                    .grants;
                for g in grants {
                    let what = g
                        .action
                        .and_then(|a| a.capability)
                        .map(|c| c.capability)
                        .unwrap_or_default();
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"digest": g.digest, "approver": g.approver, "action": what})
                        );
                    } else {
                        println!("{} {} (approved by {})", g.digest, shown(&what), shown(&g.approver));
                    }
                }
                Ok(0)
            }
            ApprovalsCmd::Revoke {
                session,
                digest,
                connect,
            } => {
                let mut c = client(connect_to(&connect)?).await?;
                let r = c
                    .revoke_session_grant(airlock_proto::pb::RevokeSessionGrantRequest {
                        session_id: session,
                        digest: digest.clone(),
                    })
                    .await
                    .map_err(rpc_failed)?
                    .into_inner();
                if r.revoked {
                    println!("revoked {digest}");
                    Ok(0)
                } else {
                    Err(fail(1, format!("no session grant {digest} in that session")))
                }
            }
        }
    })
}

fn image_build(a: ImageBuildArgs) -> Result<u8, Failure> {
    use airlock_launcher::image::{build, BuildInputs, Profile};
    let cache = keys::default_cache_dir().map_err(|e| fail(1, e))?;
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let public_key = match a.public_key {
        Some(p) => p,
        None => keys::default_key_dir()
            .map_err(|e| fail(1, e))?
            .join(PUBLIC_KEY_FILE),
    };
    let inputs = BuildInputs {
        enforcer: a
            .enforcer
            .unwrap_or_else(|| exe_dir.join("airlock-enforcer")),
        shim: a.shim.unwrap_or_else(|| exe_dir.join("airlock-shim")),
        busybox: a.busybox,
        public_key,
        out: a.out.unwrap_or_else(|| cache.join("images")),
        cache,
        added: a.added,
    };
    let profile = match a.profile {
        ProfileArg::Minimal => Profile::Minimal,
        ProfileArg::Debian => Profile::Debian,
    };
    let progress = |line: &str| eprintln!("airlock: image: {line}");
    let (descriptor, changed) = build(profile, &inputs, &progress).map_err(|e| fail(1, e))?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&descriptor).expect("json")
        );
    } else {
        println!(
            "{} image {} ({}): {}",
            profile.as_str(),
            descriptor.image_id,
            if changed {
                "built"
            } else {
                "up to date, nothing written"
            },
            inputs
                .out
                .join(profile.as_str())
                .join("image.json")
                .display()
        );
    }
    Ok(0)
}
