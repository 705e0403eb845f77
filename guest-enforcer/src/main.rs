//! `airlock-enforcer`: the guest side of Airlock (PID 1 inside the microVM).
//!
//! This step ships the manifest check the enforcer runs before it applies anything:
//!
//! ```text
//! airlock-enforcer verify-manifest --pub KEY.pub --cid N --image-id ID --nonce HEX
//!                                  [--session-id HEX] [--now UNIX_SECS] ENVELOPE
//! ```
//!
//! Unlike `airlock manifest verify` (an operator's inspection tool), every binding is
//! mandatory here: the guest knows its CID, its image and the nonce it handed out, and a
//! manifest that is not bound to all three is refused. Exit 0 and the manifest (JSON) on
//! stdout when valid; exit 1 and the failed check on stderr otherwise; exit 2 on usage
//! errors. Built statically for `x86_64-unknown-linux-musl`.

use airlock_proto::envelope::{Expect, Expectations, Verifier};
use std::process::ExitCode;

const USAGE: &str = "usage: airlock-enforcer verify-manifest --pub KEY.pub --cid N --image-id ID --nonce HEX [--session-id HEX] [--now UNIX_SECS] ENVELOPE";

/// Parsed `verify-manifest` arguments.
#[derive(Debug, Default)]
struct VerifyArgs {
    public_key: Option<String>,
    cid: Option<u32>,
    image_id: Option<String>,
    nonce: Option<String>,
    session_id: Option<String>,
    now: Option<u64>,
    envelope: Option<String>,
}

fn parse_verify_args(args: &[String]) -> Result<VerifyArgs, String> {
    let mut out = VerifyArgs::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "--pub" => out.public_key = Some(value("--pub")?),
            "--cid" => {
                let v = value("--cid")?;
                out.cid = Some(
                    v.parse()
                        .map_err(|_| format!("--cid `{v}` is not a number"))?,
                );
            }
            "--image-id" => out.image_id = Some(value("--image-id")?),
            "--nonce" => out.nonce = Some(value("--nonce")?),
            "--session-id" => out.session_id = Some(value("--session-id")?),
            "--now" => {
                let v = value("--now")?;
                out.now = Some(
                    v.parse()
                        .map_err(|_| format!("--now `{v}` is not a number"))?,
                );
            }
            flag if flag.starts_with('-') && flag != "-" => {
                return Err(format!("unknown option `{flag}`"))
            }
            path => {
                if out.envelope.replace(path.to_string()).is_some() {
                    return Err("more than one envelope given".into());
                }
            }
        }
    }
    Ok(out)
}

fn verify_manifest(args: VerifyArgs) -> Result<String, (u8, String)> {
    let usage = |what: &str| (2u8, format!("{what} is required\n{USAGE}"));
    let pub_path = args.public_key.ok_or_else(|| usage("--pub"))?;
    let cid = args.cid.ok_or_else(|| usage("--cid"))?;
    let image_id = args.image_id.ok_or_else(|| usage("--image-id"))?;
    let nonce = args.nonce.ok_or_else(|| usage("--nonce"))?;
    let envelope_path = args.envelope.ok_or_else(|| usage("ENVELOPE"))?;
    let pem = std::fs::read_to_string(&pub_path).map_err(|e| (1, format!("{pub_path}: {e}")))?;
    let verifier =
        Verifier::from_public_key_pem(&pem).map_err(|e| (1, format!("{pub_path}: {e}")))?;
    let envelope =
        std::fs::read(&envelope_path).map_err(|e| (1, format!("{envelope_path}: {e}")))?;
    let now = match args.now {
        Some(n) => n,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| {
                (
                    1,
                    "system clock is before 1970; refusing to judge expiry".to_string(),
                )
            })?
            .as_secs(),
    };
    let expect = Expectations {
        now,
        session_id: args.session_id.map_or(Expect::Unchecked, Expect::Exactly),
        vm_cid: Expect::Exactly(cid),
        image_id: Expect::Exactly(image_id),
        nonce: Expect::Exactly(nonce),
    };
    let manifest = verifier
        .verify(&envelope, &expect)
        .map_err(|e| (1, format!("manifest refused: {e}")))?;
    serde_json::to_string_pretty(&manifest).map_err(|e| (1, e.to_string()))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.split_first() {
        Some((cmd, rest)) if cmd == "verify-manifest" => parse_verify_args(rest)
            .map_err(|e| (2, format!("{e}\n{USAGE}")))
            .and_then(verify_manifest),
        _ => Err((2, USAGE.to_string())),
    };
    match result {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err((code, msg)) => {
            eprintln!("airlock-enforcer: {msg}");
            ExitCode::from(code)
        }
    }
}
