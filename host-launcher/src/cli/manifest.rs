//! `airlock manifest`: mint a plan's signed manifest; verify a signed envelope.

use super::output::{errln, outln};
use super::{fail, Failure};
use airlock_launcher::keys::{self, PRIVATE_KEY_FILE, PUBLIC_KEY_FILE};
use airlock_launcher::mint::{self, parse_duration_secs, MintOptions};
use airlock_launcher::plan::Plan;
use airlock_launcher::policy::Policy;
use airlock_proto::envelope::{Expect, Expectations};
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum ManifestCmd {
    /// Evaluate a plan and print the signed envelope (JSON) of its manifest on stdout.
    Mint(MintArgs),
    /// Verify a signed envelope (exit 0 valid, 1 invalid with the reason).
    Verify(VerifyArgs),
}

pub fn exec(cmd: ManifestCmd) -> Result<u8, Failure> {
    match cmd {
        ManifestCmd::Mint(a) => mint(a),
        ManifestCmd::Verify(a) => verify(a),
    }
}

#[derive(Args)]
pub struct MintArgs {
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

#[derive(Args)]
pub struct VerifyArgs {
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

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn mint(a: MintArgs) -> Result<u8, Failure> {
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
    outln!("{}", serde_json::to_string_pretty(&envelope).expect("json"));
    errln!(
        "airlock: minted manifest for session {} (cid {}, image {}, expires in {}s, key {})",
        manifest.session_id,
        manifest.vm_cid,
        manifest.image_id,
        ttl_secs,
        signer.key_id()
    );
    Ok(0)
}

fn verify(a: VerifyArgs) -> Result<u8, Failure> {
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
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "valid": true, "key_id": verifier.key_id(), "unchecked": unchecked, "manifest": m
                    }))
                    .expect("json")
                );
            } else {
                outln!(
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
                    outln!("not checked (no flag given): {}", unchecked.join(", "));
                }
            }
            Ok(0)
        }
        Err(e) => {
            if a.json {
                outln!(
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
