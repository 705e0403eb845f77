//! A manifest minted by the real launcher library from the shipped example plan,
//! signed by a fresh key, bound to cid 5, image `img-1` and [`NONCE`], written out with
//! its public key (shared by the `verify-manifest` tests).

use airlock_launcher::mint::{mint, MintOptions};
use airlock_launcher::plan::Plan;
use airlock_launcher::policy::Policy;
use airlock_proto::envelope::Signer;
use std::path::{Path, PathBuf};

pub const NONCE: &str = "00112233445566778899aabbccddeeff";
pub const NOW: u64 = 1_800_000_000;

#[allow(dead_code)] // each test binary reads the fields it needs
pub struct Fixture {
    pub _dir: tempfile::TempDir,
    pub public_key: PathBuf,
    pub envelope: PathBuf,
    pub envelope_bytes: Vec<u8>,
}

pub fn fixture() -> Fixture {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let policy = Policy::load(&root.join("manifests/policies/coding-agent.toml")).unwrap();
    let plan = Plan::load(&root.join("manifests/plans/allowed-commit.toml")).unwrap();
    let manifest = mint(
        &policy,
        &plan,
        &MintOptions {
            now: NOW,
            ttl_secs: 600,
            vm_cid: 5,
            image_id: "img-1".into(),
            nonce: Some(NONCE.into()),
            session_id: None,
            approve_asks: false,
        },
    )
    .unwrap();
    let signer = Signer::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let public_key = dir.path().join("airlock.pub");
    std::fs::write(&public_key, signer.verifier().to_public_key_pem().unwrap()).unwrap();
    let envelope_bytes = serde_json::to_vec(&signer.sign_manifest(&manifest).unwrap()).unwrap();
    let envelope = dir.path().join("envelope.json");
    std::fs::write(&envelope, &envelope_bytes).unwrap();
    Fixture {
        _dir: dir,
        public_key,
        envelope,
        envelope_bytes,
    }
}
