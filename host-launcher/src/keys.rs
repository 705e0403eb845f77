//! Key files and default locations.
//!
//! The launcher's signing key is PKCS#8 PEM (`airlock.key`, mode 0600, in a 0700
//! directory); the public key, which guest images embed, is SPKI PEM (`airlock.pub`).
//! Defaults follow XDG: keys under `$XDG_CONFIG_HOME/airlock` (else
//! `~/.config/airlock`), caches under `$XDG_CACHE_HOME/airlock` (else
//! `~/.cache/airlock`).

use airlock_proto::envelope::{KeyError, Signer, Verifier};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// File name of the private key.
pub const PRIVATE_KEY_FILE: &str = "airlock.key";
/// File name of the public key.
pub const PUBLIC_KEY_FILE: &str = "airlock.pub";

/// Problems with key files.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Refusing to overwrite.
    #[error("{path} already exists; pass --force to replace it (existing manifests will stop verifying)")]
    Exists {
        /// File.
        path: PathBuf,
    },
    /// A private key others can read is not trusted.
    #[error("{path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    TooOpen {
        /// File.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// Content is not a key.
    #[error("{path}: {source}")]
    Key {
        /// File.
        path: PathBuf,
        /// Cause.
        source: KeyError,
    },
    /// No default location could be determined.
    #[error("cannot find a default directory: set XDG_CONFIG_HOME or HOME, or pass a path")]
    NoHome,
}

fn xdg_dir(var: &str, fallback: &str) -> Result<PathBuf, KeyFileError> {
    match std::env::var_os(var).filter(|v| Path::new(v).is_absolute()) {
        Some(dir) => Ok(PathBuf::from(dir).join("airlock")),
        None => std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| PathBuf::from(h).join(fallback).join("airlock"))
            .ok_or(KeyFileError::NoHome),
    }
}

/// Default key directory.
pub fn default_key_dir() -> Result<PathBuf, KeyFileError> {
    xdg_dir("XDG_CONFIG_HOME", ".config")
}

/// Default cache directory (images, tool builds).
pub fn default_cache_dir() -> Result<PathBuf, KeyFileError> {
    xdg_dir("XDG_CACHE_HOME", ".cache")
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Generates a key pair into `dir`; returns the key id.
pub fn keygen(dir: &Path, force: bool) -> Result<String, KeyFileError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    let key_path = dir.join(PRIVATE_KEY_FILE);
    let pub_path = dir.join(PUBLIC_KEY_FILE);
    for p in [&key_path, &pub_path] {
        if !force && p.exists() {
            return Err(KeyFileError::Exists { path: p.clone() });
        }
    }
    let signer = Signer::generate().map_err(|source| KeyFileError::Key {
        path: key_path.clone(),
        source,
    })?;
    let private = signer.to_pkcs8_pem().map_err(|source| KeyFileError::Key {
        path: key_path.clone(),
        source,
    })?;
    let public = signer
        .verifier()
        .to_public_key_pem()
        .map_err(|source| KeyFileError::Key {
            path: pub_path.clone(),
            source,
        })?;
    write_new(&key_path, private.as_bytes(), 0o600, force)?;
    write_new(&pub_path, public.as_bytes(), 0o644, force)?;
    Ok(signer.key_id().to_string())
}

/// Writes through a temporary file and renames, so a crash never leaves half a key.
fn write_new(path: &Path, bytes: &[u8], mode: u32, force: bool) -> Result<(), KeyFileError> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    if !force && path.exists() {
        let _ = fs::remove_file(&tmp);
        return Err(KeyFileError::Exists {
            path: path.to_path_buf(),
        });
    }
    fs::rename(&tmp, path).map_err(io(path))
}

/// Loads the signing key, refusing one that group or others can read.
pub fn load_signer(path: &Path) -> Result<Signer, KeyFileError> {
    let meta = fs::metadata(path).map_err(io(path))?;
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    let pem = zeroize::Zeroizing::new(fs::read_to_string(path).map_err(io(path))?);
    Signer::from_pkcs8_pem(&pem).map_err(|source| KeyFileError::Key {
        path: path.to_path_buf(),
        source,
    })
}

/// Loads a public key.
pub fn load_verifier(path: &Path) -> Result<Verifier, KeyFileError> {
    let pem = fs::read_to_string(path).map_err(io(path))?;
    Verifier::from_public_key_pem(&pem).map_err(|source| KeyFileError::Key {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_a_private_key_only_the_owner_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("k");
        let id = keygen(&keys, false).unwrap();
        let mode = fs::metadata(keys.join(PRIVATE_KEY_FILE)).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::metadata(&keys).unwrap().mode() & 0o777, 0o700);
        assert_eq!(
            load_signer(&keys.join(PRIVATE_KEY_FILE)).unwrap().key_id(),
            id
        );
        assert_eq!(
            load_verifier(&keys.join(PUBLIC_KEY_FILE)).unwrap().key_id(),
            id
        );
        assert!(matches!(
            keygen(&keys, false),
            Err(KeyFileError::Exists { .. })
        ));
        let id2 = keygen(&keys, true).unwrap();
        assert_ne!(id, id2);
    }

    #[test]
    fn a_world_readable_private_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        keygen(dir.path(), false).unwrap();
        let key = dir.path().join(PRIVATE_KEY_FILE);
        fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let err = load_signer(&key).unwrap_err();
        assert!(
            matches!(err, KeyFileError::TooOpen { mode: 0o644, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
