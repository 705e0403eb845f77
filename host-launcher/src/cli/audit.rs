//! `airlock audit`: check the audit log's chain and checkpoints; print its records.

use super::output::outln;
use super::{fail, Failure};
use airlock_launcher::keys;
use clap::Subcommand;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum AuditCmd {
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

pub fn exec(cmd: AuditCmd) -> Result<u8, Failure> {
    match cmd {
        AuditCmd::Verify { public_key, file } => verify(public_key.as_deref(), &file),
        AuditCmd::Show {
            session,
            json,
            file,
        } => show(&file, session.as_deref(), json),
    }
}

fn verify(public_key: Option<&Path>, file: &Path) -> Result<u8, Failure> {
    let key = match public_key {
        Some(p) => Some(keys::load_verifier(p).map_err(|e| fail(1, e))?),
        None => None,
    };
    match airlock_launcher::audit_log::verify(file, key.as_ref()) {
        Ok(summary) => {
            outln!("{}: {summary}", file.display());
            Ok(0)
        }
        Err(e) => Err(fail(1, format!("{}: {e}", file.display()))),
    }
}

fn show(file: &Path, session: Option<&str>, json: bool) -> Result<u8, Failure> {
    let text = airlock_launcher::audit_log::show(file, session, json).map_err(|e| fail(1, e))?;
    super::output::stdout_bytes(text.as_bytes());
    Ok(0)
}
