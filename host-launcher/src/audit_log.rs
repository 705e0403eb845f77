//! The host-side audit log: one JSON line per decision, hash-chained, sealed by signed
//! checkpoints.
//!
//! Every decision the launcher takes (plan-time and run-time, by policy or by a person)
//! is appended and flushed (`fdatasync`) *before* it takes effect; a write that fails is
//! an error and the caller denies. A log that does not verify is never continued:
//! [`AuditLog::open`] refuses it, except for a torn last line (a crash mid-write), which
//! it cuts off and notes in a `recovered` record.
//!
//! # Record format
//!
//! One record per line, fields in this order: `seq`, `time_unix_ms`, `prev`, `kind`
//! (`decision` | `checkpoint` | `recovered`), the kind's fields (see [`RecordKind`]),
//! `hash`. Optional fields are written as `null`, never left out. For example (hashes
//! shortened):
//!
//! ```text
//! {"seq":5,"time_unix_ms":1764910235458,"prev":"sha256:2038…","kind":"decision","session_id":"s2","phase":"run_time","capability":"tool git push origin main (cwd /work)","verdict":"approved","rule_id":"git-push","reason":"pushes leave the host","approver":"alice","scope":"once","approval_id":"a-7","action_digest":"sha256:9c1e…","manifest_digest":null,"hash":"sha256:f382…"}
//! {"seq":6,"time_unix_ms":1764910235459,"prev":"sha256:f382…","kind":"checkpoint","session_id":"s2","covers_seq":5,"head":"sha256:f382…","records":2,"key_id":"85274b6c09f5826d7af43e0a7af86717","signature":"IRva…Bg==","hash":"sha256:893f…"}
//! ```
//!
//! # Hash chain
//!
//! - `hash = "sha256:" + hex(sha256(canonical JSON of the record without "hash"))`, where
//!   canonical JSON is serde_json's compact serialization of the record's fields in the
//!   declared order above (structs only, no maps, no whitespace). A line must be exactly
//!   the canonical JSON of its record with `hash` last, so no byte can change unnoticed.
//! - `prev` of record n is the `hash` of record n-1; the first record's `prev` is
//!   [`GENESIS`] (`"sha256:"` and 64 zeros). `seq` starts at 1 and grows by 1, so line n
//!   holds seq n.
//!
//! The chain shows edits, deletions and reordering, but whoever can write the file can
//! also recompute every hash. Checkpoints close that gap.
//!
//! # Checkpoints
//!
//! At the end of every session the launcher appends a `checkpoint` record with
//! `session_id`, `covers_seq` (seq of the record before it), `head` (that record's hash,
//! equal to the checkpoint's own `prev`), `records` (the session's decision records since
//! its previous checkpoint), `key_id` (the launcher key's id) and `signature`: standard
//! base64 of an ed25519 signature over the DSSE encoding
//! `PAE(`[`CHECKPOINT_PAYLOAD_TYPE`]`, message)` with message
//! `"airlock-audit-checkpoint-v1\n{covers_seq}\n{head}\n{records}\n{session_id}"` (the
//! session id is last, and nothing before it contains a newline, so the message reads
//! one way only). The head commits to every earlier record: rewriting any of them breaks
//! the signature of every later checkpoint, which [`verify`] with the public key shows.
//!
//! The latest checkpoint record is also kept in `<log>.checkpoint`, replaced atomically
//! (temp file, fsync, rename): a log that no longer holds that checkpoint was truncated.
//! Limits: no signature covers the records after the last checkpoint
//! ([`VerifySummary`] counts them), and whoever can write both files can roll both back
//! to an earlier consistent state; only a copy of a checkpoint kept elsewhere shows that.
//!
//! Several launchers may append to one log: every append holds an exclusive `flock` on
//! it, first checks and adopts what others appended, then writes.

use crate::approval_broker::{ActionKind, Decided, DecisionRecorder, Scope};
use airlock_proto::envelope::{pae, Signer, Verifier};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::pkcs8::DecodePublicKey as _;
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// `prev` of the first record.
pub const GENESIS: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// DSSE payload type a checkpoint signature is made under (never a manifest's).
pub const CHECKPOINT_PAYLOAD_TYPE: &str = "application/vnd.airlock.audit-checkpoint; version=1";

/// Where the log goes by default: `$XDG_STATE_HOME/airlock/audit.jsonl`, else
/// `$HOME/.local/state/airlock/audit.jsonl`.
pub fn default_audit_path() -> Result<PathBuf, AuditError> {
    // XDG says relative values are invalid and must be ignored.
    match std::env::var_os("XDG_STATE_HOME").filter(|v| Path::new(v).is_absolute()) {
        Some(dir) => Ok(PathBuf::from(dir).join("airlock/audit.jsonl")),
        None => std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| PathBuf::from(h).join(".local/state/airlock/audit.jsonl"))
            .ok_or(AuditError::NoStateDir),
    }
}

/// When in a session's life a decision was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Evaluating the plan, before anything runs.
    Plan,
    /// While the agent runs (tool asks, egress).
    RunTime,
    /// About the session as a whole (start, end, merge-back).
    Session,
}

impl Phase {
    /// The name used in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Plan => "plan",
            Phase::RunTime => "run_time",
            Phase::Session => "session",
        }
    }
}

/// One decision, as callers describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Session the decision belongs to.
    pub session_id: String,
    /// When it was taken.
    pub phase: Phase,
    /// What was decided about, in text (`tool git push origin main`, `fs rw /home/a/w`).
    pub capability: String,
    /// `allow`, `deny`, `ask`, `approved`, `denied`, ...
    pub verdict: String,
    /// Rule that decided (or asked).
    pub rule_id: String,
    /// Why.
    pub reason: String,
    /// `policy` for automatic decisions, else who answered.
    pub approver: String,
    /// How far an approval reaches: `once` or `session`.
    pub scope: Option<String>,
    /// The approval's id, for answered asks.
    pub approval_id: Option<String>,
    /// Digest of the exact action decided.
    pub action_digest: Option<String>,
    /// Digest of the manifest the decision went into.
    pub manifest_digest: Option<String>,
    /// Who made the API call this record is about (`uid 1000 gid 1000 (pid 42)`,
    /// `certificate CN=ci (sha256:…)`), when it came through the Launcher API.
    /// Absent from records made before callers were recorded, and from others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
}

/// What a record says; its fields are flattened into the record, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RecordKind {
    /// A decision.
    Decision(AuditEntry),
    /// A signed seal over everything before it.
    Checkpoint {
        /// Session that ended.
        session_id: String,
        /// Seq of the record before this one.
        covers_seq: u64,
        /// Hash of that record.
        head: String,
        /// The session's decision records since its previous checkpoint.
        records: u64,
        /// Id of the signing key.
        key_id: String,
        /// Standard base64 ed25519 signature (see the module docs).
        signature: String,
    },
    /// A torn last line was cut off when the log was opened.
    Recovered {
        /// Line it was on.
        dropped_line: u64,
        /// Its length.
        dropped_bytes: u64,
        /// `sha256:` of its bytes.
        dropped_sha256: String,
    },
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the log, from 1.
    pub seq: u64,
    /// When it was written (Unix milliseconds).
    pub time_unix_ms: u64,
    /// Hash of the record before it ([`GENESIS`] for the first).
    pub prev: String,
    /// What it says.
    #[serde(flatten)]
    pub kind: RecordKind,
    /// `sha256:` over the record's canonical JSON without this field.
    pub hash: String,
}

/// The record without `hash`, in the same field order: what `hash` is computed over.
#[derive(Serialize)]
struct Unhashed<'a> {
    seq: u64,
    time_unix_ms: u64,
    prev: &'a str,
    #[serde(flatten)]
    kind: &'a RecordKind,
}

impl AuditRecord {
    /// The hash this record should carry.
    pub fn compute_hash(&self) -> String {
        let unhashed = Unhashed {
            seq: self.seq,
            time_unix_ms: self.time_unix_ms,
            prev: &self.prev,
            kind: &self.kind,
        };
        let json = serde_json::to_vec(&unhashed).expect("records are plain structs");
        format!("sha256:{}", hex::encode(Sha256::digest(json)))
    }

    /// The session a decision or checkpoint belongs to.
    pub fn session_id(&self) -> Option<&str> {
        match &self.kind {
            RecordKind::Decision(e) => Some(&e.session_id),
            RecordKind::Checkpoint { session_id, .. } => Some(session_id),
            RecordKind::Recovered { .. } => None,
        }
    }

    fn canonical_line(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("records are plain structs")
    }
}

fn checkpoint_message(covers_seq: u64, head: &str, records: u64, session_id: &str) -> Vec<u8> {
    format!("airlock-audit-checkpoint-v1\n{covers_seq}\n{head}\n{records}\n{session_id}")
        .into_bytes()
}

/// Why the log cannot be opened, written or read.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// No default location.
    #[error("cannot place the audit log: set XDG_STATE_HOME or HOME, or pass a path")]
    NoStateDir,
    /// A file operation failed.
    #[error("audit log {path}: {what}: {source}")]
    Io {
        /// File involved.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// Cause.
        source: io::Error,
    },
    /// The path is a directory, device or the like.
    #[error("audit log {path} is not a regular file")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The existing log (or its checkpoint file) does not verify; it is not continued.
    #[error("audit log {path} does not verify, refusing to continue it: {error} (check it with `airlock audit verify`; move it and its .checkpoint file aside to start a new log)")]
    Corrupt {
        /// The log.
        path: PathBuf,
        /// First problem.
        error: VerifyError,
    },
    /// A line `show` cannot read.
    #[error("audit log {path}: line {line}: {what}")]
    Unreadable {
        /// The log.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        what: String,
    },
    /// The log cannot take more records in this process.
    #[error("audit log {path}: {what}")]
    Unusable {
        /// The log.
        path: PathBuf,
        /// Why.
        what: String,
    },
}

fn io_err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> AuditError + 'a {
    move |source| AuditError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

/// The first bad record [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyError {
    /// 1-based line; 0 when the problem is not on a line (file unreadable, bad key).
    pub line: usize,
    /// Seq of the record, when known.
    pub seq: Option<u64>,
    /// What is wrong.
    pub what: String,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.seq) {
            (0, _) => write!(f, "{}", self.what),
            (line, Some(seq)) => write!(f, "line {line} (seq {seq}): {}", self.what),
            (line, None) => write!(f, "line {line}: {}", self.what),
        }
    }
}

impl std::error::Error for VerifyError {}

fn whole_file(what: String) -> VerifyError {
    VerifyError {
        line: 0,
        seq: None,
        what,
    }
}

/// What a log that verified holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifySummary {
    /// Records in the log.
    pub records: u64,
    /// Checkpoints among them.
    pub checkpoints: u64,
    /// Seq of the last checkpoint.
    pub last_checkpoint_seq: Option<u64>,
    /// Records after the last checkpoint (no signature covers them yet).
    pub unsealed_after_last_checkpoint: u64,
    /// Whether checkpoint signatures were checked against a public key.
    pub signatures_checked: bool,
    /// The key they were checked against.
    pub key_id: Option<String>,
    /// Hash of the last record.
    pub head: String,
    /// `recovered` records (torn lines cut off after crashes).
    pub recovered: u64,
    /// Seq of the checkpoint `<log>.checkpoint` names, if that file exists.
    pub sidecar_seq: Option<u64>,
    /// Sessions with decisions after their last checkpoint (still running, or crashed).
    pub unsealed_sessions: Vec<String>,
}

impl fmt::Display for VerifySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} records, hash chain intact", self.records)?;
        if self.records > 0 {
            write!(f, " (head {})", self.head)?;
        }
        match self.last_checkpoint_seq {
            Some(seq) => write!(
                f,
                "; {} checkpoints, the last at seq {seq}, unsealed records after it: {}",
                self.checkpoints, self.unsealed_after_last_checkpoint
            )?,
            None => write!(f, "; no checkpoint yet")?,
        }
        if !self.unsealed_sessions.is_empty() {
            let shown: Vec<&str> = self
                .unsealed_sessions
                .iter()
                .take(5)
                .map(String::as_str)
                .collect();
            let shown = shown.join(", ");
            let more = self.unsealed_sessions.len().saturating_sub(5);
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            write!(f, "; sessions without a closing checkpoint: {shown}{more}")?;
        }
        match &self.key_id {
            Some(id) => write!(f, ". Checkpoint signatures verified with key {id}")?,
            None => write!(
                f,
                ". Checkpoint signatures NOT checked (no public key given): whoever can write \
                 the log could have rewritten it and recomputed every hash"
            )?,
        }
        match self.sidecar_seq {
            Some(seq) => write!(
                f,
                ". The checkpoint file's checkpoint (seq {seq}) is in the log"
            )?,
            None => write!(
                f,
                ". No checkpoint file: truncation of the log cannot be detected"
            )?,
        }
        if self.recovered > 0 {
            write!(
                f,
                ". {} torn lines were cut off after crashes",
                self.recovered
            )?;
        }
        write!(f, ".")
    }
}

/// `<log>.checkpoint`.
fn sidecar_path(log: &Path) -> PathBuf {
    let mut p = log.as_os_str().to_owned();
    p.push(".checkpoint");
    PathBuf::from(p)
}

/// The checkpoint the sidecar names, checked for internal consistency.
fn read_sidecar(log: &Path) -> Result<Option<(PathBuf, AuditRecord)>, VerifyError> {
    let path = sidecar_path(log);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(whole_file(format!("cannot read {}: {e}", path.display()))),
    };
    let bad = |why: String| {
        whole_file(format!(
            "{} is not a checkpoint record: {why}",
            path.display()
        ))
    };
    let rec: AuditRecord = serde_json::from_slice(bytes.strip_suffix(b"\n").unwrap_or(&bytes))
        .map_err(|e| bad(e.to_string()))?;
    if !matches!(rec.kind, RecordKind::Checkpoint { .. }) {
        return Err(bad("kind is not checkpoint".into()));
    }
    if rec.compute_hash() != rec.hash {
        return Err(bad("its hash does not match its content".into()));
    }
    Ok(Some((path, rec)))
}

/// The running state of a chain check; also the head an [`AuditLog`] appends after.
struct Chain {
    seq: u64,
    head: String,
    /// Decision records per session since that session's last checkpoint.
    open: HashMap<String, u64>,
    checkpoints: u64,
    last_checkpoint_seq: Option<u64>,
    recovered: u64,
    key: Option<(VerifyingKey, String)>,
    sidecar: Option<(PathBuf, AuditRecord)>,
}

impl Chain {
    fn new(key: Option<(VerifyingKey, String)>, sidecar: Option<(PathBuf, AuditRecord)>) -> Chain {
        Chain {
            seq: 0,
            head: GENESIS.to_string(),
            open: HashMap::new(),
            checkpoints: 0,
            last_checkpoint_seq: None,
            recovered: 0,
            key,
            sidecar,
        }
    }

    /// Line numbers follow from seq: in a good log line n holds seq n.
    fn next_line(&self) -> usize {
        self.seq as usize + 1
    }

    fn bad<T>(&self, seq: Option<u64>, what: impl Into<String>) -> Result<T, VerifyError> {
        Err(VerifyError {
            line: self.next_line(),
            seq,
            what: what.into(),
        })
    }

    /// Checks one line (without its newline) as the next record and moves on to it.
    fn feed(&mut self, bytes: &[u8]) -> Result<(), VerifyError> {
        if bytes.is_empty() {
            return self.bad(None, "empty line");
        }
        let rec: AuditRecord = match serde_json::from_slice(bytes) {
            Ok(rec) => rec,
            Err(e) => return self.bad(None, format!("not an audit record: {e}")),
        };
        let seq = Some(rec.seq);
        if rec.seq != self.seq + 1 {
            let what = format!(
                "seq is {}, expected {}: records were deleted, reordered or inserted here",
                rec.seq,
                self.seq + 1
            );
            return self.bad(seq, what);
        }
        if rec.prev != self.head {
            let what = format!(
                "prev {} is not the hash of the record before it ({}): records were deleted, \
                 reordered or rewritten here",
                rec.prev, self.head
            );
            return self.bad(seq, what);
        }
        let hash = rec.compute_hash();
        if rec.hash != hash {
            let what = format!(
                "hash {} does not match the record's content ({hash}): the record was edited",
                rec.hash
            );
            return self.bad(seq, what);
        }
        if rec.canonical_line() != bytes {
            let what = "the line is not the canonical JSON of its record (a field was added, \
                        reordered or reformatted)";
            return self.bad(seq, what);
        }
        self.check_checkpoint(&rec)?;
        if let Some((path, sc)) = &self.sidecar {
            if sc.seq == rec.seq && sc.hash != rec.hash {
                let what = format!(
                    "differs from the checkpoint {} holds for this seq: the log was rewritten",
                    path.display()
                );
                return self.bad(seq, what);
            }
        }
        self.advance(&rec);
        Ok(())
    }

    fn check_checkpoint(&self, rec: &AuditRecord) -> Result<(), VerifyError> {
        let RecordKind::Checkpoint {
            session_id,
            covers_seq,
            head,
            records,
            key_id,
            signature,
        } = &rec.kind
        else {
            return Ok(());
        };
        let seq = Some(rec.seq);
        if *covers_seq != self.seq || *head != self.head {
            let what = format!(
                "checkpoint claims head {head} at seq {covers_seq}, but the record before it \
                 is seq {} with hash {}",
                self.seq, self.head
            );
            return self.bad(seq, what);
        }
        let counted = self.open.get(session_id).copied().unwrap_or(0);
        if *records != counted {
            let what = format!(
                "checkpoint counts {records} decisions of session {session_id}, the log holds \
                 {counted} since its previous checkpoint"
            );
            return self.bad(seq, what);
        }
        let Some((key, trusted)) = &self.key else {
            return Ok(());
        };
        if key_id != trusted {
            let what =
                format!("checkpoint is signed by key {key_id}, the trusted key is {trusted}");
            return self.bad(seq, what);
        }
        let Some(sig) = B64
            .decode(signature)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
        else {
            return self.bad(seq, "checkpoint signature is not 64 bytes of base64");
        };
        let msg = pae(
            CHECKPOINT_PAYLOAD_TYPE.as_bytes(),
            &checkpoint_message(*covers_seq, head, *records, session_id),
        );
        let sig = ed25519_dalek::Signature::from_bytes(&sig);
        if key.verify_strict(&msg, &sig).is_err() {
            let what = format!(
                "checkpoint signature does not verify with key {trusted}: the records it seals \
                 (seq 1..={covers_seq}) were rewritten, or the signature was forged"
            );
            return self.bad(seq, what);
        }
        Ok(())
    }

    fn advance(&mut self, rec: &AuditRecord) {
        self.seq = rec.seq;
        self.head.clone_from(&rec.hash);
        match &rec.kind {
            RecordKind::Decision(e) => *self.open.entry(e.session_id.clone()).or_default() += 1,
            RecordKind::Checkpoint { session_id, .. } => {
                // Forgetting sealed sessions keeps a long-lived launcher's memory bounded.
                self.open.remove(session_id);
                self.checkpoints += 1;
                self.last_checkpoint_seq = Some(rec.seq);
            }
            RecordKind::Recovered { .. } => self.recovered += 1,
        }
    }

    /// A log shorter than the sidecar's checkpoint was truncated.
    fn check_sidecar_reached(&self) -> Result<(), VerifyError> {
        match &self.sidecar {
            Some((path, sc)) if sc.seq > self.seq => {
                let what = format!(
                    "the log ends at seq {}, but {} names checkpoint seq {} of session {}: the \
                     log was truncated, records {}..={} are missing",
                    self.seq,
                    path.display(),
                    sc.seq,
                    sc.session_id().unwrap_or("?"),
                    self.seq + 1,
                    sc.seq
                );
                self.bad(Some(self.seq + 1), what)
            }
            _ => Ok(()),
        }
    }
}

/// A last line without its newline.
struct Torn {
    line: usize,
    bytes: u64,
    sha256: String,
}

enum ScanError {
    Io(io::Error),
    Chain(VerifyError),
}

/// Feeds every complete line to `chain`; returns the bytes consumed and a torn tail.
fn scan(mut reader: impl BufRead, chain: &mut Chain) -> Result<(u64, Option<Torn>), ScanError> {
    let mut consumed = 0u64;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(ScanError::Io)?;
        match buf.split_last() {
            None => return Ok((consumed, None)),
            Some((b'\n', line)) => chain.feed(line).map_err(ScanError::Chain)?,
            Some(_) => {
                let torn = Torn {
                    line: chain.next_line(),
                    bytes: n as u64,
                    sha256: format!("sha256:{}", hex::encode(Sha256::digest(&buf))),
                };
                return Ok((consumed, Some(torn)));
            }
        }
        consumed += n as u64;
    }
}

/// Checks the log at `path` and its checkpoint file; with `key`, also every checkpoint
/// signature. Returns the first bad record.
pub fn verify(path: &Path, key: Option<&Verifier>) -> Result<VerifySummary, VerifyError> {
    let key = match key {
        None => None,
        Some(v) => {
            let vk = v
                .to_public_key_pem()
                .ok()
                .and_then(|pem| VerifyingKey::from_public_key_pem(&pem).ok())
                .ok_or_else(|| whole_file(format!("unusable public key {}", v.key_id())))?;
            Some((vk, v.key_id().to_string()))
        }
    };
    let cannot = |e: io::Error| whole_file(format!("cannot read {}: {e}", path.display()));
    let file = File::open(path).map_err(cannot)?;
    // A FIFO or device could block or never end.
    if !file.metadata().map_err(cannot)?.is_file() {
        let what = format!("{} is not a regular file", path.display());
        return Err(whole_file(what));
    }
    // A launcher may be appending (and replacing the sidecar) right now.
    let _lock = FileLock::take(&file, libc::LOCK_SH).map_err(cannot)?;
    let sidecar = read_sidecar(path)?;
    let sidecar_seq = sidecar.as_ref().map(|(_, r)| r.seq);
    let mut chain = Chain::new(key, sidecar);
    let (_, torn) = scan(BufReader::new(&file), &mut chain).map_err(|e| match e {
        ScanError::Io(e) => cannot(e),
        ScanError::Chain(e) => e,
    })?;
    if let Some(t) = torn {
        return Err(VerifyError {
            line: t.line,
            seq: None,
            what: format!(
                "torn last line: {} bytes without a newline (a write cut short by a crash?); \
                 opening the log cuts it off and records that",
                t.bytes
            ),
        });
    }
    chain.check_sidecar_reached()?;
    let mut unsealed_sessions: Vec<String> = chain.open.keys().cloned().collect();
    unsealed_sessions.sort();
    Ok(VerifySummary {
        records: chain.seq,
        checkpoints: chain.checkpoints,
        last_checkpoint_seq: chain.last_checkpoint_seq,
        unsealed_after_last_checkpoint: chain.seq - chain.last_checkpoint_seq.unwrap_or(0),
        signatures_checked: chain.key.is_some(),
        key_id: chain.key.map(|(_, id)| id),
        head: chain.head,
        recovered: chain.recovered,
        sidecar_seq,
        unsealed_sessions,
    })
}

/// A `flock` on the log: writers hold it exclusively, so launchers in several processes
/// append in turn; readers hold it shared, so they never see a line half written.
struct FileLock<'a>(&'a File);

impl<'a> FileLock<'a> {
    /// Blocks until `op` (`LOCK_EX` or `LOCK_SH`) is held.
    fn take(file: &'a File, op: libc::c_int) -> io::Result<FileLock<'a>> {
        loop {
            // SAFETY: flock on a descriptor `file` keeps open for the guard's lifetime;
            // no memory is passed.
            if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
                return Ok(FileLock(file));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl Drop for FileLock<'_> {
    fn drop(&mut self) {
        // SAFETY: as in `take`; the borrow guarantees the descriptor is still open.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "cannot sync directory"))
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What an open log knows about its file's end.
struct Tail {
    /// Bytes of the file that are verified records.
    len: u64,
    chain: Chain,
    /// Set when a failed write could not be undone: the file's end is unknown.
    broken: Option<String>,
}

impl Tail {
    /// Adopts records other processes appended since we last looked (checked as a chain).
    fn catch_up(&mut self, file: &File, path: &Path) -> Result<(), AuditError> {
        let len = file.metadata().map_err(io_err(path, "cannot stat"))?.len();
        if len < self.len {
            return Err(AuditError::Unusable {
                path: path.to_path_buf(),
                what: format!(
                    "it shrank from {} to {len} bytes while open (truncated?)",
                    self.len
                ),
            });
        }
        if len == self.len {
            return Ok(());
        }
        let mut reader = file;
        reader
            .seek(SeekFrom::Start(self.len))
            .map_err(io_err(path, "cannot seek"))?;
        let (n, torn) = scan(BufReader::new(reader), &mut self.chain).map_err(|e| match e {
            ScanError::Io(e) => io_err(path, "cannot read")(e),
            ScanError::Chain(error) => AuditError::Corrupt {
                path: path.to_path_buf(),
                error,
            },
        })?;
        self.len += n;
        match torn {
            None => Ok(()),
            Some(t) => Err(AuditError::Unusable {
                path: path.to_path_buf(),
                what: format!(
                    "another writer left a torn line {}; reopen the log to recover",
                    t.line
                ),
            }),
        }
    }

    /// Writes and fsyncs the next record; on failure the file is cut back to where it was.
    fn write(
        &mut self,
        file: &File,
        path: &Path,
        kind: RecordKind,
    ) -> Result<AuditRecord, AuditError> {
        if let Some(why) = &self.broken {
            return Err(AuditError::Unusable {
                path: path.to_path_buf(),
                what: why.clone(),
            });
        }
        let mut rec = AuditRecord {
            seq: self.chain.seq + 1,
            time_unix_ms: unix_ms(),
            prev: self.chain.head.clone(),
            kind,
            hash: String::new(),
        };
        rec.hash = rec.compute_hash();
        let mut line = rec.canonical_line();
        line.push(b'\n');
        let mut w = file;
        if let Err(e) = w.write_all(&line).and_then(|()| file.sync_data()) {
            // A partial line would break the chain for every later record: undo it, and
            // when even that fails stop writing rather than guess where the file ends.
            if let Err(undo) = file.set_len(self.len).and_then(|()| file.sync_data()) {
                self.broken = Some(format!(
                    "a failed write could not be undone ({undo}); reopen the log to recover"
                ));
            }
            return Err(io_err(path, "cannot write")(e));
        }
        self.len += line.len() as u64;
        self.chain.advance(&rec);
        Ok(rec)
    }
}

struct State {
    file: File,
    tail: Tail,
}

/// The open audit log; share it (`Arc`) between threads.
pub struct AuditLog {
    path: PathBuf,
    signer: Arc<Signer>,
    state: Mutex<State>,
    /// Each live session's manifest digest (from its plan record), for its run-time
    /// records; dropped at the session's checkpoint.
    manifests: Mutex<std::collections::HashMap<String, String>>,
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens or creates the log (mode 0600, missing parent directories 0700) and
    /// continues its chain. Refuses a log that does not verify (without a key), naming
    /// the first bad line; a torn last line alone is cut off and noted in a `recovered`
    /// record.
    pub fn open(path: &Path, signer: Arc<Signer>) -> Result<AuditLog, AuditError> {
        let dir = parent_dir(path);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(path, "cannot create its directory"))?;
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(io_err(path, "cannot open for appending"))?;
        let meta = file.metadata().map_err(io_err(path, "cannot stat"))?;
        if !meta.is_file() {
            return Err(AuditError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        // Decisions name paths and commands: nobody else needs to read them.
        if meta.permissions().mode() & 0o077 != 0 {
            file.set_permissions(Permissions::from_mode(0o600))
                .map_err(io_err(path, "cannot restrict permissions of"))?;
        }
        // Make a newly created file's name durable along with its first record.
        sync_dir(dir)?;
        let mut tail = Tail {
            len: 0,
            chain: Chain::new(None, None),
            broken: None,
        };
        {
            let _lock =
                FileLock::take(&file, libc::LOCK_EX).map_err(io_err(path, "cannot lock"))?;
            let corrupt = |error| AuditError::Corrupt {
                path: path.to_path_buf(),
                error,
            };
            tail.chain.sidecar = read_sidecar(path).map_err(corrupt)?;
            let mut reader = &file;
            reader
                .seek(SeekFrom::Start(0))
                .map_err(io_err(path, "cannot seek"))?;
            let (len, torn) =
                scan(BufReader::new(reader), &mut tail.chain).map_err(|e| match e {
                    ScanError::Io(e) => io_err(path, "cannot read")(e),
                    ScanError::Chain(error) => corrupt(error),
                })?;
            tail.chain.check_sidecar_reached().map_err(corrupt)?;
            // Other launchers may replace the sidecar from now on; it was only for this check.
            tail.chain.sidecar = None;
            tail.len = len;
            if let Some(t) = torn {
                file.set_len(len)
                    .and_then(|()| file.sync_data())
                    .map_err(io_err(path, "cannot cut off the torn last line of"))?;
                let kind = RecordKind::Recovered {
                    dropped_line: t.line as u64,
                    dropped_bytes: t.bytes,
                    dropped_sha256: t.sha256,
                };
                tail.write(&file, path, kind)?;
            }
        }
        Ok(AuditLog {
            path: path.to_path_buf(),
            signer,
            state: Mutex::new(State { file, tail }),
            manifests: Mutex::new(Default::default()),
        })
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with the file locked against other processes and caught up with them.
    fn locked<T>(
        &self,
        f: impl FnOnce(&File, &mut Tail) -> Result<T, AuditError>,
    ) -> Result<T, AuditError> {
        // Nothing panics while holding the lock; if something did, the tail is suspect.
        let mut guard = self.state.lock().map_err(|_| AuditError::Unusable {
            path: self.path.clone(),
            what: "a writer panicked; reopen the log".into(),
        })?;
        let State { file, tail } = &mut *guard;
        let _lock =
            FileLock::take(file, libc::LOCK_EX).map_err(io_err(&self.path, "cannot lock"))?;
        tail.catch_up(file, &self.path)?;
        f(file, tail)
    }

    /// Appends one decision record, durably; returns the record written.
    pub fn append(&self, entry: AuditEntry) -> Result<AuditRecord, AuditError> {
        self.locked(|file, tail| tail.write(file, &self.path, RecordKind::Decision(entry)))
    }

    /// Appends a signed checkpoint sealing everything before it for `session_id`, and
    /// makes it the checkpoint `<log>.checkpoint` names.
    pub fn checkpoint(&self, session_id: &str) -> Result<AuditRecord, AuditError> {
        self.locked(|file, tail| {
            let covers_seq = tail.chain.seq;
            let head = tail.chain.head.clone();
            let records = tail.chain.open.get(session_id).copied().unwrap_or(0);
            let msg = checkpoint_message(covers_seq, &head, records, session_id);
            let envelope = self.signer.sign_payload(CHECKPOINT_PAYLOAD_TYPE, &msg);
            let signature = envelope
                .signatures
                .into_iter()
                .next()
                .map(|s| s.sig)
                .ok_or_else(|| AuditError::Unusable {
                    path: self.path.clone(),
                    what: "the signer returned no signature".into(),
                })?;
            let kind = RecordKind::Checkpoint {
                session_id: session_id.to_string(),
                covers_seq,
                head,
                records,
                key_id: self.signer.key_id().to_string(),
                signature,
            };
            let rec = tail.write(file, &self.path, kind)?;
            // Still under the flock, so launchers replace the sidecar in log order.
            write_sidecar(&self.path, &rec)?;
            Ok(rec)
        })
    }
}

/// Replaces `<log>.checkpoint` atomically: temp file, fsync, rename, fsync directory.
fn write_sidecar(log: &Path, rec: &AuditRecord) -> Result<(), AuditError> {
    let target = sidecar_path(log);
    let dir = parent_dir(log);
    let mut line = rec.canonical_line();
    line.push(b'\n');
    let mut tmp = tempfile::Builder::new()
        .prefix(".audit-checkpoint.")
        .tempfile_in(dir)
        .map_err(io_err(&target, "cannot create a temporary file for"))?;
    tmp.write_all(&line)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(io_err(&target, "cannot write"))?;
    tmp.persist(&target)
        .map_err(|e| io_err(&target, "cannot replace")(e.error))?;
    sync_dir(dir)
}

/// An action in the log's words.
fn action_text(kind: &ActionKind) -> String {
    match kind {
        // Quoted so that `a "b c"` and `a b c` read differently.
        ActionKind::Tool {
            argv, cwd, reaches, ..
        } => {
            let mut text = format!("tool {} (cwd {cwd})", shell_words::join(argv));
            // Where it went by its configuration (a push's remotes), as approved.
            for r in reaches {
                text.push_str(&format!(" [{}]", r.escape_debug()));
            }
            text
        }
        ActionKind::Net { host, port } => format!("net {host}:{port}"),
        ActionKind::Capability { capability } => capability.clone(),
    }
}

impl From<&Decided> for AuditEntry {
    /// An answered ask: plan-time for capabilities, run-time for tools.
    fn from(d: &Decided) -> AuditEntry {
        let kind = &d.pending.action.kind;
        let phase = match kind {
            ActionKind::Tool { .. } | ActionKind::Net { .. } => Phase::RunTime,
            ActionKind::Capability { .. } => Phase::Plan,
        };
        let capability = action_text(kind);
        let r = &d.resolution;
        let mut reason = d.pending.action.reason.clone();
        if !r.comment.is_empty() {
            reason = format!("{reason}; approver's comment: {}", r.comment);
        }
        AuditEntry {
            session_id: d.pending.action.session_id.clone(),
            phase,
            capability,
            verdict: if r.approved { "approved" } else { "denied" }.into(),
            rule_id: d.pending.action.rule_id.clone(),
            reason,
            approver: r.approver.clone(),
            scope: r.scope.map(|s| match s {
                Scope::Once => "once".into(),
                Scope::Session => "session".into(),
            }),
            approval_id: Some(r.id.clone()),
            action_digest: Some(r.digest.clone()),
            caller: r.authenticated_as.clone(),
            manifest_digest: None,
        }
    }
}

impl DecisionRecorder for AuditLog {
    fn record(&self, decided: &Decided) -> Result<(), String> {
        let mut entry = AuditEntry::from(decided);
        entry.manifest_digest = self
            .manifests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&entry.session_id)
            .cloned();
        self.append(entry).map(|_| ()).map_err(|e| e.to_string())
    }

    fn record_plan(&self, plan: &crate::approval_broker::PlanDecisions) -> Result<(), String> {
        if let Some(m) = &plan.manifest_digest {
            self.manifests
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(plan.session_id.clone(), m.clone());
        }
        for d in &plan.decisions {
            self.append(AuditEntry {
                session_id: plan.session_id.clone(),
                phase: Phase::Plan,
                capability: format!("{} {}", d.kind, d.capability),
                verdict: d.verdict.clone(),
                rule_id: d.rule_id.clone(),
                reason: d.reason.clone(),
                approver: "policy".into(),
                scope: None,
                approval_id: None,
                action_digest: None,
                manifest_digest: plan.manifest_digest.clone(),
                caller: plan.requested_by.clone(),
            })
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn record_call(&self, call: &crate::approval_broker::ApiCall) -> Result<(), String> {
        let manifest_digest = self
            .manifests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&call.session_id)
            .cloned();
        self.append(AuditEntry {
            session_id: call.session_id.clone(),
            phase: Phase::Session,
            capability: format!("api {}", call.call),
            verdict: "requested".into(),
            rule_id: String::new(),
            reason: String::new(),
            approver: call.caller.clone(),
            scope: None,
            approval_id: None,
            action_digest: None,
            manifest_digest,
            caller: Some(call.caller.clone()),
        })
        .map(|_| ())
        .map_err(|e| e.to_string())
    }

    fn record_automatic(
        &self,
        d: &crate::approval_broker::AutomaticDecision,
    ) -> Result<(), String> {
        let manifest_digest = self
            .manifests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&d.session_id)
            .cloned();
        self.append(AuditEntry {
            session_id: d.session_id.clone(),
            phase: Phase::RunTime,
            capability: action_text(&d.action.kind),
            verdict: d.verdict.clone(),
            rule_id: d.action.rule_id.clone(),
            reason: d.action.reason.clone(),
            approver: "policy".into(),
            scope: None,
            approval_id: None,
            action_digest: Some(d.action.digest()),
            manifest_digest,
            caller: None,
        })
        .map(|_| ())
        .map_err(|e| e.to_string())
    }

    fn session_ended(&self, session_id: &str) -> Result<(), String> {
        self.manifests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(session_id);
        self.checkpoint(session_id)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC) for Unix milliseconds.
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    // Days to civil date (H. Hinnant's algorithm), to avoid a date crate for one column.
    let z = (secs / 86_400) as i64 + 719_468;
    let (era, doe) = (z.div_euclid(146_097), z.rem_euclid(146_097));
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let s = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Agent-supplied text (argv) must not drive the terminal it is shown on.
/// What the agent wrote, as a terminal may show it: controls, bidi overrides, invisible
/// and look-alike blank characters escaped (the approval prompt's rules), so a record
/// cannot rearrange or hide its own text.
fn printable(s: &str) -> String {
    crate::approver_channels::sanitize_for_terminal(s)
}

/// The records of `session` (all when `None`): with `json`, the lines as they are;
/// else one aligned line per record under a header.
pub fn show(path: &Path, session: Option<&str>, json: bool) -> Result<String, AuditError> {
    let file = File::open(path).map_err(io_err(path, "cannot open"))?;
    let _lock = FileLock::take(&file, libc::LOCK_SH).map_err(io_err(path, "cannot lock"))?;
    let mut out = String::new();
    let mut rows: Vec<[String; 8]> = vec![[
        "SEQ", "TIME", "SESSION", "PHASE", "VERDICT", "APPROVER", "RULE", "WHAT",
    ]
    .map(String::from)];
    for (i, line) in BufReader::new(&file).split(b'\n').enumerate() {
        let line = line.map_err(io_err(path, "cannot read"))?;
        let unreadable = |what: String| AuditError::Unreadable {
            path: path.to_path_buf(),
            line: i + 1,
            what,
        };
        let rec: AuditRecord =
            serde_json::from_slice(&line).map_err(|e| unreadable(e.to_string()))?;
        if session.is_some_and(|s| rec.session_id() != Some(s)) {
            continue;
        }
        if json {
            // It parsed as JSON, so it is UTF-8.
            out.push_str(&String::from_utf8_lossy(&line));
            out.push('\n');
            continue;
        }
        let (sess, phase, verdict, approver, rule, what) = match &rec.kind {
            RecordKind::Decision(e) => (
                e.session_id.clone(),
                e.phase.as_str().into(),
                match &e.scope {
                    Some(scope) => format!("{} ({scope})", e.verdict),
                    None => e.verdict.clone(),
                },
                match &e.caller {
                    Some(c) if *c != e.approver => format!("{} [{c}]", e.approver),
                    _ => e.approver.clone(),
                },
                e.rule_id.clone(),
                e.capability.clone(),
            ),
            RecordKind::Checkpoint {
                session_id,
                covers_seq,
                records,
                key_id,
                ..
            } => (
                session_id.clone(),
                "checkpoint".into(),
                "sealed".into(),
                format!("key {}", key_id.get(..12).unwrap_or(key_id)),
                "-".into(),
                format!("seals seq 1..={covers_seq}; {records} decisions of this session"),
            ),
            RecordKind::Recovered {
                dropped_line,
                dropped_bytes,
                ..
            } => (
                "-".into(),
                "recovered".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                format!("cut off torn line {dropped_line} ({dropped_bytes} bytes) after a crash"),
            ),
        };
        rows.push(
            [
                rec.seq.to_string(),
                utc(rec.time_unix_ms),
                sess,
                phase,
                verdict,
                approver,
                rule,
                what,
            ]
            .map(|c| printable(&c)),
        );
    }
    if json {
        return Ok(out);
    }
    let mut widths = [0usize; 8];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approval_broker::{Action, Pending, Resolution};

    fn signer() -> Arc<Signer> {
        Arc::new(Signer::generate().expect("key"))
    }

    fn entry(session: &str, capability: &str, verdict: &str) -> AuditEntry {
        AuditEntry {
            session_id: session.into(),
            phase: Phase::Plan,
            capability: capability.into(),
            verdict: verdict.into(),
            rule_id: "r1".into(),
            reason: "because".into(),
            approver: "policy".into(),
            scope: None,
            approval_id: None,
            action_digest: None,
            manifest_digest: None,
            caller: None,
        }
    }

    /// Two sessions, each closed by a checkpoint, and one decision after: 3+1+2+1+1 records.
    fn sample(dir: &Path) -> (PathBuf, Arc<Signer>) {
        let path = dir.join("state/airlock/audit.jsonl");
        let s = signer();
        let log = AuditLog::open(&path, s.clone()).expect("open");
        for cap in ["fs rw /w", "net example.com:443", "tool git status"] {
            log.append(entry("s1", cap, "allow")).expect("append");
        }
        log.checkpoint("s1").expect("checkpoint");
        log.append(entry("s2", "fs ro /etc", "deny"))
            .expect("append");
        log.append(entry("s2", "tool ls", "allow")).expect("append");
        log.checkpoint("s2").expect("checkpoint");
        log.append(entry("s3", "fs ro /x", "allow"))
            .expect("append");
        (path, s)
    }

    fn records(path: &Path) -> Vec<AuditRecord> {
        fs::read_to_string(path)
            .expect("read")
            .lines()
            .map(|l| serde_json::from_str(l).expect("record"))
            .collect()
    }

    fn write_records(path: &Path, recs: &[AuditRecord]) {
        let text: String = recs
            .iter()
            .map(|r| format!("{}\n", serde_json::to_string(r).expect("json")))
            .collect();
        fs::write(path, text).expect("write");
    }

    /// What an attacker without the key can do: recompute prev, head and hash from `from` on,
    /// and replace the sidecar to match.
    fn rehash_from(path: &Path, recs: &mut [AuditRecord], from: usize) {
        for i in from..recs.len() {
            let prev = if i == 0 {
                GENESIS.to_string()
            } else {
                recs[i - 1].hash.clone()
            };
            if let RecordKind::Checkpoint { head, .. } = &mut recs[i].kind {
                head.clone_from(&prev);
            }
            recs[i].prev = prev;
            recs[i].hash = recs[i].compute_hash();
        }
        write_records(path, recs);
        if let Some(cp) = recs
            .iter()
            .rev()
            .find(|r| matches!(r.kind, RecordKind::Checkpoint { .. }))
        {
            fs::write(
                sidecar_path(path),
                format!("{}\n", serde_json::to_string(cp).expect("json")),
            )
            .expect("sidecar");
        }
    }

    fn fails_at(path: &Path, key: Option<&Verifier>, line: usize, needle: &str) -> VerifyError {
        let err = verify(path, key).expect_err("tampering must be detected");
        assert_eq!(err.line, line, "{err}");
        assert!(err.to_string().contains(needle), "{err}");
        err
    }

    #[test]
    fn clean_log_with_several_sessions_verifies() {
        let dir = tempfile::tempdir().expect("tmp");
        let (path, s) = sample(dir.path());
        let sum = verify(&path, Some(&s.verifier())).expect("verifies");
        assert_eq!((sum.records, sum.checkpoints), (8, 2));
        assert_eq!(sum.last_checkpoint_seq, Some(7));
        assert_eq!(sum.unsealed_after_last_checkpoint, 1);
        assert_eq!(sum.sidecar_seq, Some(7));
        assert_eq!(sum.unsealed_sessions, vec!["s3".to_string()]);
        assert!(sum.signatures_checked);
        assert!(sum.to_string().contains("verified with key"), "{sum}");
        assert!(!verify(&path, None).expect("verifies").signatures_checked);
        let mode = fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dmode = fs::metadata(path.parent().expect("dir"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(dmode & 0o777, 0o700);
        let recs = records(&path);
        assert_eq!(recs[0].prev, GENESIS);
        assert!(matches!(
            &recs[3].kind,
            RecordKind::Checkpoint {
                records: 3,
                covers_seq: 3,
                ..
            }
        ));
    }

    #[test]
    fn open_continues_an_existing_chain() {
        let dir = tempfile::tempdir().expect("tmp");
        let (path, s) = sample(dir.path());
        let last = records(&path).pop().expect("records");
        let log = AuditLog::open(&path, s.clone()).expect("reopen");
        let rec = log
            .append(entry("s3", "tool make", "allow"))
            .expect("append");
        assert_eq!((rec.seq, rec.prev), (9, last.hash));
        let cp = log.checkpoint("s3").expect("checkpoint");
        assert!(matches!(cp.kind, RecordKind::Checkpoint { records: 2, .. }));
        let sum = verify(&path, Some(&s.verifier())).expect("verifies");
        assert_eq!((sum.records, sum.unsealed_after_last_checkpoint), (10, 0));
    }

    #[test]
    fn edited_field_is_a_hash_mismatch() {
        let dir = tempfile::tempdir().expect("tmp");
        let (path, _) = sample(dir.path());
        let clean = fs::read_to_string(&path).expect("read");
        fs::write(&path, clean.replacen("\"deny\"", "\"allow\"", 1)).expect("write");
        fails_at(&path, None, 5, "line 5 (seq 5): hash");
        // A field added without changing any value is caught too.
        let added = clean.replacen("{\"seq\":2,", "{\"seq\":2,\"note\":1,", 1);
        fs::write(&path, added).expect("write");
        fails_at(&path, None, 2, "canonical");
    }

    #[test]
    fn reordered_records_are_named() {
        let dir = tempfile::tempdir().expect("tmp");
        let (path, _) = sample(dir.path());
        let mut recs = records(&path);
        recs.swap(1, 2);
        write_records(&path, &recs);
        fails_at(&path, None, 2, "seq is 3, expected 2");
    }

    #[test]
    fn deleted_record_is_named() {
        let dir = tempfile::tempdir().expect("tmp");
        let (path, _) = sample(dir.path());
        let mut recs = records(&path);
        recs.remove(4);
        write_records(&path, &recs);
        fails_at(&path, None, 5, "seq is 6, expected 5");
        // Renumbering does not help: the chain still skips.
        for (i, r) in recs.iter_mut().enumerate() {
            r.seq = i as u64 + 1;
            r.hash = r.compute_hash();
        }
        write_records(&path, &recs);
        fails_at(&path, None, 5, "prev");
    }

    #[test]
    fn truncation_below_the_last_checkpoint_is_named() {
        let dir = tempfile::tempdir().expect("tmp");
        let (path, s) = sample(dir.path());
        let recs = records(&path);
        write_records(&path, &recs[..5]);
        let err = fails_at(&path, None, 6, "checkpoint seq 7 of session s2");
        assert!(err.what.contains("truncated"), "{err}");
        // And the launcher will not continue it.
        let err = AuditLog::open(&path, s).expect_err("must refuse");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert!(err.to_string().contains("line 6"), "{err}");
    }

    #[test]
    fn torn_last_line_is_named_and_recovered_on_open() {
        let dir = tempfile::tempdir().expect("tmp");
        let (path, s) = sample(dir.path());
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"{\"seq\":9,\"time_un").expect("write");
        drop(f);
        fails_at(&path, None, 9, "torn last line");
        let log = AuditLog::open(&path, s.clone()).expect("a torn line alone is recovered");
        let rec = log
            .append(entry("s3", "tool make", "allow"))
            .expect("append");
        assert_eq!(rec.seq, 10);
        let recs = records(&path);
        assert!(matches!(
            recs[8].kind,
            RecordKind::Recovered {
                dropped_line: 9,
                dropped_bytes: 17,
                ..
            }
        ));
        assert_eq!(
            verify(&path, Some(&s.verifier()))
                .expect("verifies")
                .recovered,
            1
        );
    }

    #[test]
    fn corrupt_log_is_not_continued() {
        let dir = tempfile::tempdir().expect("tmp");
        let (path, s) = sample(dir.path());
        let text = fs::read_to_string(&path)
            .expect("read")
            .replacen("\"s2\"", "\"sX\"", 1);
        fs::write(&path, text).expect("write");
        let err = AuditLog::open(&path, s)
            .expect_err("must refuse")
            .to_string();
        assert!(
            err.contains(&path.display().to_string()) && err.contains("line 5 (seq 5)"),
            "{err}"
        );
    }

    #[test]
    fn forged_checkpoint_signature_fails_with_the_key() {
        let dir = tempfile::tempdir().expect("tmp");
        let (path, s) = sample(dir.path());
        let mut recs = records(&path);
        let other = signer();
        if let RecordKind::Checkpoint {
            signature,
            covers_seq,
            head,
            records,
            session_id,
            ..
        } = &mut recs[3].kind
        {
            let msg = checkpoint_message(*covers_seq, head, *records, session_id);
            let env = other.sign_payload(CHECKPOINT_PAYLOAD_TYPE, &msg);
            signature.clone_from(&env.signatures[0].sig);
        }
        rehash_from(&path, &mut recs, 3);
        verify(&path, None).expect("without the key only the chain is checked");
        fails_at(&path, Some(&s.verifier()), 4, "signature does not verify");
        // A checkpoint made with another key under its own id names both keys.
        recs[3] = AuditRecord {
            kind: match recs[3].kind.clone() {
                RecordKind::Checkpoint {
                    session_id,
                    covers_seq,
                    head,
                    records,
                    signature,
                    ..
                } => RecordKind::Checkpoint {
                    session_id,
                    covers_seq,
                    head,
                    records,
                    signature,
                    key_id: other.key_id().into(),
                },
                k => k,
            },
            ..recs[3].clone()
        };
        rehash_from(&path, &mut recs, 3);
        fails_at(&path, Some(&s.verifier()), 4, other.key_id());
    }

    #[test]
    fn checkpoint_head_must_be_the_previous_hash() {
        let dir = tempfile::tempdir().expect("tmp");
        let (path, _) = sample(dir.path());
        let mut recs = records(&path);
        let wrong = recs[1].hash.clone();
        if let RecordKind::Checkpoint { head, .. } = &mut recs[6].kind {
            *head = wrong;
        }
        recs[6].hash = recs[6].compute_hash();
        for i in 7..recs.len() {
            recs[i].prev = recs[i - 1].hash.clone();
            recs[i].hash = recs[i].compute_hash();
        }
        write_records(&path, &recs);
        fs::write(
            sidecar_path(&path),
            format!("{}\n", serde_json::to_string(&recs[6]).expect("json")),
        )
        .expect("sidecar");
        fails_at(&path, None, 7, "checkpoint claims head");
    }

    #[test]
    fn rehashed_rewrite_is_caught_by_the_next_signed_checkpoint() {
        let dir = tempfile::tempdir().expect("tmp");
        let (path, s) = sample(dir.path());
        let mut recs = records(&path);
        if let RecordKind::Decision(e) = &mut recs[4].kind {
            e.verdict = "allow".into();
        }
        rehash_from(&path, &mut recs, 4);
        // Consistent as a chain: only the signature can tell.
        verify(&path, None).expect("a full rehash passes the keyless check");
        fails_at(
            &path,
            Some(&s.verifier()),
            7,
            "line 7 (seq 7): checkpoint signature does not verify",
        );
        // Without updating the sidecar, the keyless check already sees it.
        let mut recs = records(&path);
        if let RecordKind::Decision(e) = &mut recs[1].kind {
            e.verdict = "deny".into();
        }
        let sidecar = fs::read(sidecar_path(&path)).expect("sidecar");
        rehash_from(&path, &mut recs, 1);
        fs::write(sidecar_path(&path), sidecar).expect("restore");
        fails_at(&path, None, 7, "differs from the checkpoint");
    }

    #[test]
    fn unwritable_logs_are_errors() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = signer();
        let err = AuditLog::open(dir.path(), s.clone()).expect_err("a directory");
        assert!(
            err.to_string().contains(&dir.path().display().to_string()),
            "{err}"
        );
        let file = dir.path().join("file");
        fs::write(&file, "").expect("write");
        AuditLog::open(&file.join("audit.jsonl"), s.clone()).expect_err("parent is a file");
        let ro = dir.path().join("ro.jsonl");
        fs::write(&ro, "").expect("write");
        fs::set_permissions(&ro, Permissions::from_mode(0o400)).expect("chmod");
        // Root (CI containers) writes read-only files anyway; then there is nothing to test.
        if OpenOptions::new().append(true).open(&ro).is_err() {
            let err = AuditLog::open(&ro, s).expect_err("read-only");
            assert!(err.to_string().contains("ro.jsonl"), "{err}");
        }
        assert!(verify(dir.path(), None).is_err());
    }

    #[test]
    fn concurrent_appends_make_one_chain() {
        fn shareable<T: Send + Sync>() {}
        shareable::<AuditLog>();
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("audit.jsonl");
        let s = signer();
        // Two handles stand in for two launcher processes (separate flocks), shared by threads.
        let logs = [
            Arc::new(AuditLog::open(&path, s.clone()).expect("open")),
            Arc::new(AuditLog::open(&path, s.clone()).expect("open")),
        ];
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let log = logs[t % 2].clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        log.append(entry(&format!("s{t}"), &format!("tool n{i}"), "allow"))
                            .expect("append");
                    }
                    log.checkpoint(&format!("s{t}")).expect("checkpoint");
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let sum = verify(&path, Some(&s.verifier())).expect("one valid chain");
        assert_eq!((sum.records, sum.checkpoints), (208, 8));
        assert!(sum.unsealed_sessions.is_empty());
    }

    #[test]
    fn decided_maps_to_an_entry_and_show_renders_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let (path, s) = sample(dir.path());
        let log = AuditLog::open(&path, s).expect("open");
        let action = Action {
            session_id: "s3".into(),
            rule_id: "git-push".into(),
            reason: "pushes leave the machine".into(),
            kind: ActionKind::Tool {
                program: "git".into(),
                argv: vec![
                    "git".into(),
                    "commit".into(),
                    "-m".into(),
                    "a b\u{1b}[2J".into(),
                ],
                cwd: "/work".into(),
                binary_sha256: "00".into(),
                reaches: vec!["remote.origin.url = /srv/r.git".into()],
            },
        };
        let digest = action.digest();
        let decided = Decided {
            pending: Pending {
                id: "a-1".into(),
                action,
                digest: digest.clone(),
                asked_at_ms: 0,
                deadline_ms: 0,
            },
            resolution: Resolution {
                id: "a-1".into(),
                session_id: "s3".into(),
                digest: digest.clone(),
                approved: true,
                scope: Some(Scope::Session),
                approver: "alice".into(),
                comment: "ok".into(),
                message: String::new(),
                authenticated_as: Some("uid 1000 gid 1000 (pid 7)".into()),
            },
        };
        log.record(&decided).expect("record");
        let RecordKind::Decision(e) = records(&path).pop().expect("record").kind else {
            panic!("not a decision");
        };
        assert_eq!(e.phase, Phase::RunTime);
        assert_eq!(
            e.capability,
            "tool git commit -m 'a b\u{1b}[2J' (cwd /work) [remote.origin.url = /srv/r.git]"
        );
        assert_eq!(
            (e.verdict.as_str(), e.scope.as_deref()),
            ("approved", Some("session"))
        );
        assert_eq!(
            (e.approval_id.as_deref(), e.action_digest),
            (Some("a-1"), Some(digest))
        );
        assert_eq!(e.caller.as_deref(), Some("uid 1000 gid 1000 (pid 7)"));
        let human = show(&path, Some("s3"), false).expect("show");
        assert_eq!(human.lines().count(), 3, "{human}");
        assert!(
            human.contains("approved (session)") && human.contains("\\x1b[2J"),
            "{human}"
        );
        assert!(!human.contains('\u{1b}'));
        let json = show(&path, Some("s1"), true).expect("show");
        assert_eq!(json.lines().count(), 4);
        assert!(json.lines().all(|l| l.contains("\"session_id\":\"s1\"")));
    }

    #[test]
    fn default_path_and_time_format() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_700_000_000_123), "2023-11-14T22:13:20Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert!(default_audit_path().map_or(true, |p| p.ends_with("airlock/audit.jsonl")));
    }
}
