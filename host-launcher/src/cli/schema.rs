//! `airlock schema`: write the JSON Schemas of policy, plan and manifest.

use super::output::outln;
use super::{fail, Failure};
use std::path::Path;

pub fn exec(out: &Path) -> Result<u8, Failure> {
    std::fs::create_dir_all(out).map_err(|e| fail(1, format!("{}: {e}", out.display())))?;
    for (name, text) in airlock_launcher::schema::all() {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(|e| fail(1, format!("{}: {e}", path.display())))?;
        outln!("wrote {}", path.display());
    }
    Ok(0)
}
