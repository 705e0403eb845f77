//! DSSE envelopes around manifests: signing on the host, ordered verification in the
//! guest.
//!
//! The signature covers the DSSE pre-authentication encoding
//! `PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body` (LEN is the
//! byte length in ASCII decimal), so the payload type is signed too and cannot be
//! swapped. Keys are ed25519; a key id is the first 16 bytes of SHA-256 over the raw
//! public key, in hex.
//!
//! [`Verifier::verify`] checks, in this order, and stops at the first failure, each with
//! its own [`VerifyError`] variant: envelope shape, key id, signature over PAE, payload
//! parse (and field validation), protocol version, validity window against the
//! caller's clock, session id, VM CID, image id, nonce.

use crate::manifest::{Manifest, ManifestFieldError, MANIFEST_VERSION};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes,
};
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// DSSE payload type of an Airlock manifest.
pub const PAYLOAD_TYPE: &str = "application/vnd.airlock.manifest+json; version=1";

/// Envelopes larger than this are refused before parsing.
pub const MAX_ENVELOPE_BYTES: usize = 1 << 20;

/// A DSSE envelope (JSON form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Standard base64 of the manifest JSON.
    pub payload: String,
    /// Must be [`PAYLOAD_TYPE`].
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// Exactly one signature.
    pub signatures: Vec<EnvelopeSignature>,
}

/// One DSSE signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeSignature {
    /// Id of the signing key ([`key_id`]).
    pub keyid: String,
    /// Standard base64 of the 64-byte ed25519 signature over PAE.
    pub sig: String,
}

/// The DSSE pre-authentication encoding.
pub fn pae(payload_type: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload_type.len() + payload.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type);
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

/// Key id of a public key: hex of the first 16 bytes of SHA-256 over its 32 raw bytes.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..16])
}

/// Errors loading, generating or using keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The OS random source failed.
    #[error("cannot read the OS random source: {0}")]
    Random(String),
    /// A private key file is not PKCS#8 PEM ed25519.
    #[error("private key is not a PKCS#8 PEM ed25519 key: {0}")]
    BadPrivateKey(String),
    /// A public key file is not SPKI PEM ed25519.
    #[error("public key is not an SPKI PEM ed25519 key: {0}")]
    BadPublicKey(String),
    /// Encoding a key failed.
    #[error("cannot encode key: {0}")]
    Encode(String),
    /// The manifest cannot be serialized (should not happen for valid manifests).
    #[error("cannot serialize manifest: {0}")]
    Serialize(String),
    /// Refusing to sign a manifest that would not verify.
    #[error("refusing to sign an invalid manifest: {0}")]
    InvalidManifest(#[from] ManifestFieldError),
}

/// The launcher's signing key.
pub struct Signer {
    key: SigningKey,
    key_id: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A fresh key from the OS random source.
    pub fn generate() -> Result<Signer, KeyError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut *seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Signer::from_signing_key(SigningKey::from_bytes(&seed)))
    }

    fn from_signing_key(key: SigningKey) -> Signer {
        let key_id = key_id(&key.verifying_key());
        Signer { key, key_id }
    }

    /// Loads a PKCS#8 PEM private key.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Signer, KeyError> {
        SigningKey::from_pkcs8_pem(pem)
            .map(Signer::from_signing_key)
            .map_err(|e| KeyError::BadPrivateKey(e.to_string()))
    }

    /// The private key as PKCS#8 v1 PEM (RFC 5208 `PrivateKeyInfo`, no public key; wiped
    /// on drop). v2 (RFC 5958, with the public key) is what `SigningKey` writes by
    /// default, and OpenSSL 3.0 and Python's `cryptography` refuse to load it;
    /// [`Signer::from_pkcs8_pem`] reads both.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, KeyError> {
        let v1 = KeypairBytes {
            secret_key: self.key.to_bytes(),
            public_key: None,
        };
        v1.to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| KeyError::Encode(e.to_string()))
    }

    /// The matching verifier.
    pub fn verifier(&self) -> Verifier {
        Verifier::new(self.key.verifying_key())
    }

    /// This key's id.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Signs a manifest (after checking it is valid) into an envelope.
    pub fn sign_manifest(&self, manifest: &Manifest) -> Result<Envelope, KeyError> {
        manifest.validate()?;
        let payload =
            serde_json::to_vec(manifest).map_err(|e| KeyError::Serialize(e.to_string()))?;
        Ok(self.sign_payload(PAYLOAD_TYPE, &payload))
    }

    /// Signs arbitrary bytes under a payload type (tests build hostile envelopes with it).
    pub fn sign_payload(&self, payload_type: &str, payload: &[u8]) -> Envelope {
        let sig = self.key.sign(&pae(payload_type.as_bytes(), payload));
        Envelope {
            payload: B64.encode(payload),
            payload_type: payload_type.to_string(),
            signatures: vec![EnvelopeSignature {
                keyid: self.key_id.clone(),
                sig: B64.encode(sig.to_bytes()),
            }],
        }
    }
}

/// A check the caller either pins to a value or explicitly skips. There is no default:
/// every caller states, for every binding, which one it means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect<T> {
    /// The manifest must carry exactly this value.
    Exactly(T),
    /// Not checked (only for offline inspection; the enforcer pins every binding).
    Unchecked,
}

impl<T: PartialEq> Expect<T> {
    fn admits(&self, value: &T) -> bool {
        match self {
            Expect::Exactly(v) => v == value,
            Expect::Unchecked => true,
        }
    }
}

/// What the verifier compares the manifest against.
#[derive(Debug, Clone)]
pub struct Expectations {
    /// Current time, seconds since the Unix epoch (in the guest: after the clock was set
    /// from the host).
    pub now: u64,
    /// Session this verifier serves.
    pub session_id: Expect<String>,
    /// This VM's CID.
    pub vm_cid: Expect<u32>,
    /// This image's id.
    pub image_id: Expect<String>,
    /// The nonce this boot handed out.
    pub nonce: Expect<String>,
}

/// Why an envelope was refused. Variants appear in the order checks run.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Bigger than [`MAX_ENVELOPE_BYTES`].
    #[error("envelope shape: {size} bytes is over the {max}-byte limit")]
    TooLarge {
        /// Size received.
        size: usize,
        /// Limit.
        max: usize,
    },
    /// Not a DSSE JSON envelope.
    #[error("envelope shape: not a DSSE envelope: {0}")]
    Shape(String),
    /// Wrong payload type.
    #[error("envelope shape: payloadType is `{found}`, expected `{PAYLOAD_TYPE}`")]
    PayloadType {
        /// The type found.
        found: String,
    },
    /// Zero or several signatures.
    #[error("envelope shape: {found} signatures, expected exactly 1")]
    SignatureCount {
        /// How many there were.
        found: usize,
    },
    /// Signed by a key we do not trust.
    #[error("key id: envelope signed by key `{found}`, trusted key is `{expected}`")]
    UnknownKey {
        /// Key id in the envelope.
        found: String,
        /// Key id we trust.
        expected: String,
    },
    /// Base64 or length of signature/payload is wrong.
    #[error("signature: {0}")]
    Encoding(String),
    /// The signature does not verify over PAE(payloadType, payload).
    #[error("signature: does not verify with key `{key_id}` (tampered or signed by another key)")]
    BadSignature {
        /// The key used.
        key_id: String,
    },
    /// Signed payload is not a manifest.
    #[error("payload: not a valid manifest: {0}")]
    Payload(String),
    /// Signed manifest has an impossible field.
    #[error("payload: {0}")]
    Field(#[from] ManifestFieldError),
    /// Manifest or protocol version this verifier does not implement.
    #[error("protocol version: manifest has manifest_version {manifest_version}, protocol_version {protocol_version}; this verifier implements manifest_version {MANIFEST_VERSION}, protocol_version {}", crate::PROTOCOL_VERSION)]
    Version {
        /// Manifest schema version found.
        manifest_version: u32,
        /// Protocol version found.
        protocol_version: u32,
    },
    /// Not valid yet.
    #[error(
        "validity: not valid before {not_before}, now is {now} (clock not set from the host?)"
    )]
    NotYetValid {
        /// Start of validity.
        not_before: u64,
        /// Caller's clock.
        now: u64,
    },
    /// Expired.
    #[error("validity: expired at {expires_at}, now is {now}")]
    Expired {
        /// End of validity.
        expires_at: u64,
        /// Caller's clock.
        now: u64,
    },
    /// Minted for another session.
    #[error("session id: manifest is for session `{found}`, this is session `{expected}`")]
    SessionMismatch {
        /// In the manifest.
        found: String,
        /// Expected.
        expected: String,
    },
    /// Minted for another VM.
    #[error("vm cid: manifest is for CID {found}, this VM is CID {expected}")]
    CidMismatch {
        /// In the manifest.
        found: u32,
        /// Expected.
        expected: u32,
    },
    /// Minted for another image.
    #[error("image id: manifest is for image `{found}`, this image is `{expected}`")]
    ImageMismatch {
        /// In the manifest.
        found: String,
        /// Expected.
        expected: String,
    },
    /// Replayed or minted for another boot.
    #[error("nonce: manifest nonce `{found}` is not this boot's nonce `{expected}` (replayed?)")]
    NonceMismatch {
        /// In the manifest.
        found: String,
        /// Expected.
        expected: String,
    },
}

/// Verifies envelopes against one trusted public key.
#[derive(Debug, Clone)]
pub struct Verifier {
    key: VerifyingKey,
    key_id: String,
}

impl Verifier {
    /// Trusts exactly this key.
    pub fn new(key: VerifyingKey) -> Verifier {
        Verifier {
            key_id: key_id(&key),
            key,
        }
    }

    /// Loads an SPKI PEM public key.
    pub fn from_public_key_pem(pem: &str) -> Result<Verifier, KeyError> {
        VerifyingKey::from_public_key_pem(pem)
            .map(Verifier::new)
            .map_err(|e| KeyError::BadPublicKey(e.to_string()))
    }

    /// The public key as SPKI PEM.
    pub fn to_public_key_pem(&self) -> Result<String, KeyError> {
        self.key
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| KeyError::Encode(e.to_string()))
    }

    /// The trusted key's id.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Verifies an envelope (JSON bytes) and returns the manifest. See the module docs
    /// for the order of checks.
    pub fn verify(&self, envelope: &[u8], expect: &Expectations) -> Result<Manifest, VerifyError> {
        // 1. Envelope shape.
        if envelope.len() > MAX_ENVELOPE_BYTES {
            return Err(VerifyError::TooLarge {
                size: envelope.len(),
                max: MAX_ENVELOPE_BYTES,
            });
        }
        let env: Envelope =
            serde_json::from_slice(envelope).map_err(|e| VerifyError::Shape(e.to_string()))?;
        if env.payload_type != PAYLOAD_TYPE {
            return Err(VerifyError::PayloadType {
                found: env.payload_type,
            });
        }
        let [sig] = env.signatures.as_slice() else {
            return Err(VerifyError::SignatureCount {
                found: env.signatures.len(),
            });
        };
        // 2. Key id.
        if sig.keyid != self.key_id {
            return Err(VerifyError::UnknownKey {
                found: sig.keyid.clone(),
                expected: self.key_id.clone(),
            });
        }
        // 3. Signature over PAE.
        let sig_bytes = B64
            .decode(&sig.sig)
            .map_err(|e| VerifyError::Encoding(format!("sig is not standard base64: {e}")))?;
        let sig_bytes: [u8; 64] = sig_bytes.as_slice().try_into().map_err(|_| {
            VerifyError::Encoding(format!("sig is {} bytes, expected 64", sig_bytes.len()))
        })?;
        let payload = B64
            .decode(&env.payload)
            .map_err(|e| VerifyError::Encoding(format!("payload is not standard base64: {e}")))?;
        let signature = ed25519_dalek::Signature::from_bytes(&sig_bytes);
        self.key
            .verify_strict(&pae(env.payload_type.as_bytes(), &payload), &signature)
            .map_err(|_| VerifyError::BadSignature {
                key_id: self.key_id.clone(),
            })?;
        // 4. Payload parse (after the signature: never parse unauthenticated data deeper
        //    than the envelope).
        let manifest: Manifest = serde_json::from_slice(&payload).map_err(|e| {
            // A manifest from a newer launcher fails strict parsing on fields this
            // enforcer does not know; say "version" rather than "unknown field" then.
            #[derive(Deserialize)]
            struct Versions {
                manifest_version: u32,
                protocol_version: u32,
            }
            match serde_json::from_slice::<Versions>(&payload) {
                Ok(v)
                    if v.manifest_version != MANIFEST_VERSION
                        || v.protocol_version != crate::PROTOCOL_VERSION =>
                {
                    VerifyError::Version {
                        manifest_version: v.manifest_version,
                        protocol_version: v.protocol_version,
                    }
                }
                _ => VerifyError::Payload(e.to_string()),
            }
        })?;
        // 5. Versions come before field validation: a newer schema may have other rules.
        if manifest.manifest_version != MANIFEST_VERSION
            || manifest.protocol_version != crate::PROTOCOL_VERSION
        {
            return Err(VerifyError::Version {
                manifest_version: manifest.manifest_version,
                protocol_version: manifest.protocol_version,
            });
        }
        manifest.validate()?;
        // 6. Validity window.
        if expect.now < manifest.not_before {
            return Err(VerifyError::NotYetValid {
                not_before: manifest.not_before,
                now: expect.now,
            });
        }
        if expect.now >= manifest.expires_at {
            return Err(VerifyError::Expired {
                expires_at: manifest.expires_at,
                now: expect.now,
            });
        }
        // 7. Bindings.
        if !expect.session_id.admits(&manifest.session_id) {
            return Err(VerifyError::SessionMismatch {
                found: manifest.session_id,
                expected: pinned(&expect.session_id),
            });
        }
        if !expect.vm_cid.admits(&manifest.vm_cid) {
            return Err(VerifyError::CidMismatch {
                found: manifest.vm_cid,
                expected: pinned(&expect.vm_cid),
            });
        }
        if !expect.image_id.admits(&manifest.image_id) {
            return Err(VerifyError::ImageMismatch {
                found: manifest.image_id,
                expected: pinned(&expect.image_id),
            });
        }
        if !expect.nonce.admits(&manifest.nonce) {
            return Err(VerifyError::NonceMismatch {
                found: manifest.nonce,
                expected: pinned(&expect.nonce),
            });
        }
        Ok(manifest)
    }
}

fn pinned<T: Clone + Default>(e: &Expect<T>) -> T {
    match e {
        Expect::Exactly(v) => v.clone(),
        Expect::Unchecked => T::default(),
    }
}

/// A fresh random value as lowercase hex (`bytes` bytes of entropy).
pub fn random_hex(bytes: usize) -> Result<String, KeyError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(hex::encode(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::tests::sample;

    fn expect_all(m: &Manifest) -> Expectations {
        Expectations {
            now: m.issued_at + 1,
            session_id: Expect::Exactly(m.session_id.clone()),
            vm_cid: Expect::Exactly(m.vm_cid),
            image_id: Expect::Exactly(m.image_id.clone()),
            nonce: Expect::Exactly(m.nonce.clone()),
        }
    }

    fn signed() -> (Signer, Manifest, Vec<u8>) {
        let signer = Signer::generate().unwrap();
        let m = sample();
        let env = serde_json::to_vec(&signer.sign_manifest(&m).unwrap()).unwrap();
        (signer, m, env)
    }

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        // The DSSE protocol document's worked example.
        assert_eq!(
            pae(b"http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
        assert_eq!(pae(b"", b""), b"DSSEv1 0  0 ".to_vec());
    }

    #[test]
    fn a_valid_envelope_verifies_and_round_trips() {
        let (signer, m, env) = signed();
        let got = signer.verifier().verify(&env, &expect_all(&m)).unwrap();
        assert_eq!(got, m);
    }

    #[test]
    fn keys_round_trip_through_pem() {
        let signer = Signer::generate().unwrap();
        let pem = signer.to_pkcs8_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let again = Signer::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(again.key_id(), signer.key_id());
        let pubpem = signer.verifier().to_public_key_pem().unwrap();
        let v = Verifier::from_public_key_pem(&pubpem).unwrap();
        assert_eq!(v.key_id(), signer.key_id());
        assert!(Verifier::from_public_key_pem(&pem).is_err());
    }

    #[test]
    fn private_keys_are_written_as_pkcs8_v1_and_v2_still_loads() {
        use base64::Engine as _;
        let signer = Signer::generate().unwrap();
        let pem = signer.to_pkcs8_pem().unwrap();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = B64.decode(body).unwrap();
        // SEQUENCE (short form, 46 bytes) { INTEGER 0 = v1, AlgorithmIdentifier, OCTET STRING }
        // with no `[1] publicKey`: exactly the 48-byte RFC 8410 example shape.
        assert_eq!(
            der.len(),
            48,
            "v1 Ed25519 PrivateKeyInfo is 48 bytes: {der:02x?}"
        );
        assert_eq!(&der[..5], &[0x30, 0x2e, 0x02, 0x01, 0x00]);
        // A v2 file (what earlier `airlock keygen` wrote) keeps working.
        let v2 = signer.key.to_pkcs8_pem(LineEnding::LF).unwrap();
        assert_ne!(v2.as_str(), pem.as_str());
        assert_eq!(
            Signer::from_pkcs8_pem(&v2).unwrap().key_id(),
            signer.key_id()
        );
    }

    #[test]
    fn each_binding_mismatch_has_its_own_error() {
        let (signer, m, env) = signed();
        let v = signer.verifier();
        let mut e = expect_all(&m);
        e.now = m.expires_at;
        assert!(matches!(
            v.verify(&env, &e),
            Err(VerifyError::Expired { .. })
        ));
        let mut e = expect_all(&m);
        e.now = m.not_before - 1;
        assert!(matches!(
            v.verify(&env, &e),
            Err(VerifyError::NotYetValid { .. })
        ));
        let mut e = expect_all(&m);
        e.session_id = Expect::Exactly("f".repeat(32));
        assert!(matches!(
            v.verify(&env, &e),
            Err(VerifyError::SessionMismatch { .. })
        ));
        let mut e = expect_all(&m);
        e.vm_cid = Expect::Exactly(4);
        assert!(matches!(
            v.verify(&env, &e),
            Err(VerifyError::CidMismatch {
                found: 3,
                expected: 4
            })
        ));
        let mut e = expect_all(&m);
        e.image_id = Expect::Exactly("other".into());
        assert!(matches!(
            v.verify(&env, &e),
            Err(VerifyError::ImageMismatch { .. })
        ));
        let mut e = expect_all(&m);
        e.nonce = Expect::Exactly("ab".repeat(16));
        let err = v.verify(&env, &e).unwrap_err();
        assert!(matches!(err, VerifyError::NonceMismatch { .. }));
        assert!(err.to_string().starts_with("nonce:"), "{err}");
    }

    #[test]
    fn checks_run_in_the_documented_order() {
        // Expired *and* wrong CID *and* wrong nonce: the validity window is reported first.
        let (signer, m, env) = signed();
        let mut e = expect_all(&m);
        e.now = m.expires_at + 10;
        e.vm_cid = Expect::Exactly(99);
        e.nonce = Expect::Exactly("ab".repeat(16));
        assert!(matches!(
            signer.verifier().verify(&env, &e),
            Err(VerifyError::Expired { .. })
        ));
        // Another key *and* expired: the key id is reported first.
        let other = Signer::generate().unwrap();
        assert!(matches!(
            other.verifier().verify(&env, &e),
            Err(VerifyError::UnknownKey { .. })
        ));
    }

    #[test]
    fn hostile_envelopes_fail_at_the_right_check() {
        let (signer, m, _) = signed();
        let v = signer.verifier();
        let e = expect_all(&m);
        let payload = serde_json::to_vec(&m).unwrap();

        let wrong_type = signer.sign_payload("application/json", &payload);
        let err = v
            .verify(&serde_json::to_vec(&wrong_type).unwrap(), &e)
            .unwrap_err();
        assert!(matches!(err, VerifyError::PayloadType { .. }), "{err}");

        let mut two = signer.sign_payload(PAYLOAD_TYPE, &payload);
        two.signatures.push(two.signatures[0].clone());
        let err = v
            .verify(&serde_json::to_vec(&two).unwrap(), &e)
            .unwrap_err();
        assert!(
            matches!(err, VerifyError::SignatureCount { found: 2 }),
            "{err}"
        );

        // Valid signature over a payload with an unknown field: refused at parse.
        let mut value = serde_json::to_value(&m).unwrap();
        value["allow_everything"] = serde_json::json!(true);
        let smuggled = signer.sign_payload(PAYLOAD_TYPE, &serde_json::to_vec(&value).unwrap());
        let err = v
            .verify(&serde_json::to_vec(&smuggled).unwrap(), &e)
            .unwrap_err();
        assert!(matches!(err, VerifyError::Payload(_)), "{err}");
        assert!(err.to_string().contains("allow_everything"), "{err}");

        // Valid signature, a newer manifest with a field this verifier does not know:
        // reported as a version mismatch, not as an unknown field.
        let mut newer = serde_json::to_value(&m).unwrap();
        newer["manifest_version"] = serde_json::json!(MANIFEST_VERSION + 1);
        newer["gpu"] = serde_json::json!(true);
        let env = signer.sign_payload(PAYLOAD_TYPE, &serde_json::to_vec(&newer).unwrap());
        let err = v
            .verify(&serde_json::to_vec(&env).unwrap(), &e)
            .unwrap_err();
        assert!(
            matches!(
                err,
                VerifyError::Version {
                    manifest_version,
                    ..
                } if manifest_version == MANIFEST_VERSION + 1
            ),
            "{err}"
        );

        // Valid signature, future protocol.
        let mut future = m.clone();
        future.protocol_version = 2;
        let env = signer.sign_payload(PAYLOAD_TYPE, &serde_json::to_vec(&future).unwrap());
        let err = v
            .verify(&serde_json::to_vec(&env).unwrap(), &e)
            .unwrap_err();
        assert!(
            matches!(
                err,
                VerifyError::Version {
                    protocol_version: 2,
                    ..
                }
            ),
            "{err}"
        );

        // Payload swapped for another validly-encoded one under the same signature.
        let mut swapped = signer.sign_manifest(&m).unwrap();
        let mut other = m.clone();
        other.command.argv = vec!["sh".into()];
        swapped.payload = B64.encode(serde_json::to_vec(&other).unwrap());
        let err = v
            .verify(&serde_json::to_vec(&swapped).unwrap(), &e)
            .unwrap_err();
        assert!(matches!(err, VerifyError::BadSignature { .. }), "{err}");

        let big = vec![b' '; MAX_ENVELOPE_BYTES + 1];
        assert!(matches!(
            v.verify(&big, &e),
            Err(VerifyError::TooLarge { .. })
        ));
        assert!(matches!(v.verify(b"{}", &e), Err(VerifyError::Shape(_))));
    }

    #[test]
    fn signing_refuses_invalid_manifests() {
        let signer = Signer::generate().unwrap();
        let mut m = sample();
        m.vm_cid = 1;
        assert!(matches!(
            signer.sign_manifest(&m),
            Err(KeyError::InvalidManifest(_))
        ));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// Any single-byte change anywhere in the envelope makes verification fail.
        #[test]
        fn any_single_byte_change_fails_verification(pos in 0usize..100_000, byte in 0u8..=255) {
            thread_local! {
                static FIXTURE: (Signer, Manifest, Vec<u8>) = signed();
            }
            FIXTURE.with(|(signer, m, env)| {
                let pos = pos % env.len();
                proptest::prop_assume!(env[pos] != byte);
                let mut bad = env.clone();
                bad[pos] = byte;
                let result = signer.verifier().verify(&bad, &expect_all(m));
                proptest::prop_assert!(result.is_err(), "byte {pos} -> {byte:#x} still verified");
                Ok(())
            })?;
        }
    }
}
