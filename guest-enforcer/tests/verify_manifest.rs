//! The enforcer binary refuses every manifest not bound to this VM, image and boot,
//! and accepts the one that is. Manifests are minted by the real launcher library from
//! the shipped example plan.

use std::path::Path;
use std::process::{Command, Output};

#[path = "support/signed_envelope.rs"]
mod signed_envelope;
use signed_envelope::{fixture, Fixture, NONCE, NOW};

fn enforcer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_airlock-enforcer"))
        .args(args)
        .output()
        .unwrap()
}

fn verify(f: &Fixture, cid: &str, image: &str, nonce: &str, now: u64, envelope: &Path) -> Output {
    enforcer(&[
        "verify-manifest",
        "--pub",
        f.public_key.to_str().unwrap(),
        "--cid",
        cid,
        "--image-id",
        image,
        "--nonce",
        nonce,
        "--now",
        &now.to_string(),
        envelope.to_str().unwrap(),
    ])
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn the_bound_manifest_is_accepted() {
    let f = fixture();
    let out = verify(&f, "5", "img-1", NONCE, NOW + 1, &f.envelope);
    assert!(out.status.success(), "{}", stderr(&out));
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(m["vm_cid"], 5);
    assert_eq!(m["command"]["argv"][0], "git");
}

#[test]
fn each_wrong_binding_is_refused_with_its_own_reason() {
    let f = fixture();
    for (cid, image, nonce, now, want) in [
        (
            "6",
            "img-1",
            NONCE,
            NOW + 1,
            "vm cid: manifest is for CID 5, this VM is CID 6",
        ),
        (
            "5",
            "img-2",
            NONCE,
            NOW + 1,
            "image id: manifest is for image `img-1`",
        ),
        (
            "5",
            "img-1",
            "ffeeddccbbaa99887766554433221100",
            NOW + 1,
            "nonce: manifest nonce",
        ),
        ("5", "img-1", NONCE, NOW + 600, "validity: expired"),
        ("5", "img-1", NONCE, NOW - 1, "validity: not valid before"),
    ] {
        let out = verify(&f, cid, image, nonce, now, &f.envelope);
        assert_eq!(out.status.code(), Some(1), "{want}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(want),
            "want {want:?}, got {}",
            stderr(&out)
        );
        assert!(
            out.stdout.is_empty(),
            "nothing of a refused manifest may be printed"
        );
    }
}

#[test]
fn a_tampered_envelope_is_refused() {
    let f = fixture();
    let mut bad = f.envelope_bytes.clone();
    let pos = bad.len() / 3;
    bad[pos] = if bad[pos] == b'A' { b'B' } else { b'A' };
    let path = f.envelope.with_file_name("tampered.json");
    std::fs::write(&path, bad).unwrap();
    let out = verify(&f, "5", "img-1", NONCE, NOW + 1, &path);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("manifest refused"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn every_binding_is_mandatory_in_the_guest() {
    let f = fixture();
    let out = enforcer(&[
        "verify-manifest",
        "--pub",
        f.public_key.to_str().unwrap(),
        "--cid",
        "5",
        "--image-id",
        "img-1",
        f.envelope.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--nonce is required"),
        "{}",
        stderr(&out)
    );
    let out = enforcer(&["verify-manifest", "--bogus"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown option `--bogus`"));
}
