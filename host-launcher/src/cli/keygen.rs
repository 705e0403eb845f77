//! `airlock keygen`: the launcher's signing key pair.

use super::output::outln;
use super::{fail, Failure};
use airlock_launcher::keys::{self, PRIVATE_KEY_FILE, PUBLIC_KEY_FILE};
use std::path::PathBuf;

pub fn exec(out: Option<PathBuf>, force: bool) -> Result<u8, Failure> {
    let dir = match out {
        Some(d) => d,
        None => keys::default_key_dir().map_err(|e| fail(1, e))?,
    };
    let id = keys::keygen(&dir, force).map_err(|e| fail(1, e))?;
    outln!(
        "wrote {} and {} (key id {id})",
        dir.join(PRIVATE_KEY_FILE).display(),
        dir.join(PUBLIC_KEY_FILE).display()
    );
    Ok(0)
}
