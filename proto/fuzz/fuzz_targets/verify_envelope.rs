//! Envelope verification must never panic, and must never accept what it did not sign.
//!
//! Input byte 0 picks the path: even → the rest is an envelope verified as received;
//! odd → the rest is a payload the fuzzer's key signs, so the manifest parser and field
//! validation behind the signature check are reached too.
#![no_main]

use airlock_proto::envelope::{Expect, Expectations, Signer, PAYLOAD_TYPE};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// A fixed key so runs are reproducible (a test key: it signs nothing real).
const FUZZ_KEY: &str = "-----BEGIN PRIVATE KEY-----
MFECAQEwBQYDK2VwBCIEIKrcWmspHd2qYVZ7YGsvnwr7c5PA10vF3MlN/OG9FQf8
gSEA9fjjWUXMtaew8LeZWt5fdM6Qe24L82xGqfOFQkVW+V4=
-----END PRIVATE KEY-----
";

fn signer() -> &'static Signer {
    static SIGNER: OnceLock<Signer> = OnceLock::new();
    SIGNER.get_or_init(|| Signer::from_pkcs8_pem(FUZZ_KEY).expect("fuzz key parses"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let expect = Expectations {
        now: 1_000,
        session_id: Expect::Unchecked,
        vm_cid: Expect::Exactly(3),
        image_id: Expect::Unchecked,
        nonce: Expect::Unchecked,
    };
    let verifier = signer().verifier();
    if mode % 2 == 0 {
        if let Ok(m) = verifier.verify(rest, &expect) {
            // Only envelopes our key signed can verify; the fuzzer cannot forge one.
            panic!("unsigned input verified: {m:?}");
        }
    } else {
        let env = signer().sign_payload(PAYLOAD_TYPE, rest);
        let bytes = serde_json::to_vec(&env).expect("envelope serializes");
        if let Ok(m) = verifier.verify(&bytes, &expect) {
            assert_eq!(m.vm_cid, 3);
            m.validate().expect("a verified manifest is valid");
        }
    }
});
