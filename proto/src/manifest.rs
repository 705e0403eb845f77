//! The manifest: the concrete, short-lived contract for one session.
//!
//! Policy is abstract and reusable; the manifest is what one run was granted, bound to
//! one VM (CID), one image, one nonce and a validity window. It travels signed inside a
//! DSSE envelope ([`crate::envelope`]). Unknown fields are rejected everywhere: a field
//! this enforcer does not understand could be a restriction it would silently skip.

use crate::tool_rules::ToolGrant;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Version of the manifest schema; bump on any change of meaning. 2: each tool grant
/// carries its execution profile. 3: `rw` is a copy-on-write workspace merged back
/// through the host's gate; direct write-through is `rw-live`. 4: egress is real: address
/// pins (`egress.pins`) and the network limits (`resources.net_connections`, `net_mib`).
pub const MANIFEST_VERSION: u32 = 4;

/// The signed contract for one session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Schema version of this document ([`MANIFEST_VERSION`]).
    pub manifest_version: u32,
    /// Host/guest protocol version ([`crate::PROTOCOL_VERSION`]) the launcher speaks.
    pub protocol_version: u32,
    /// Session this manifest belongs to (32 lowercase hex characters).
    pub session_id: String,
    /// vsock context id of the one VM allowed to accept it (>= 3).
    pub vm_cid: u32,
    /// Id of the guest image allowed to accept it.
    pub image_id: String,
    /// Single-use value (hex, >= 16 bytes) that ties the manifest to one boot.
    pub nonce: String,
    /// When it was minted, seconds since the Unix epoch (host clock).
    pub issued_at: u64,
    /// Not valid before this time (Unix seconds).
    pub not_before: u64,
    /// Not valid at or after this time (Unix seconds).
    pub expires_at: u64,
    /// `sha256:<hex>` of the policy file the decisions came from (for audit).
    pub policy_digest: String,
    /// What to run.
    pub command: Command,
    /// Host directories shared into the guest.
    pub mounts: Vec<Mount>,
    /// Network endpoints the agent may reach.
    pub egress: Egress,
    /// Programs the agent may invoke, each with its ordered run-time rules.
    pub tools: Vec<ToolGrant>,
    /// Resource limits for the agent.
    pub resources: Resources,
}

/// The command the agent runs as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// Argument vector; `argv[0]` is resolved inside the guest.
    pub argv: Vec<String>,
    /// Working directory in the guest (absolute).
    pub cwd: String,
    /// Environment for the command (the enforcer adds nothing else but `PATH`/`HOME`).
    pub env: BTreeMap<String, String>,
}

/// How a host directory is shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// Read-only: enforced on the host (virtiofsd) and in the guest (mount + Landlock).
    Ro,
    /// Copy-on-write (never executable): the host directory is the read-only lower
    /// layer, the agent writes to a disposable layer sized by `disk_mib`, and nothing
    /// reaches the host except through the launcher's merge-back gate.
    Rw,
    /// Live write-through (never executable): the agent writes the host directory
    /// itself. Set-id bits and special files are refused where the sandbox can, but
    /// nothing is reviewed, bounded in total or undone.
    RwLive,
}

impl Access {
    /// `ro`, `rw` or `rw-live`.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Ro => "ro",
            Access::Rw => "rw",
            Access::RwLive => "rw-live",
        }
    }

    /// Can the agent write (to a layer or to the host)?
    pub fn writable(self) -> bool {
        self != Access::Ro
    }

    /// `ro`, `rw` or `rw-live` as written.
    pub fn parse(word: &str) -> Option<Access> {
        match word {
            "ro" => Some(Access::Ro),
            "rw" => Some(Access::Rw),
            "rw-live" => Some(Access::RwLive),
            _ => None,
        }
    }
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One shared directory. The host path stays on the host; the guest sees a tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    /// virtio-fs tag the launcher exports the host directory under.
    pub tag: String,
    /// Where it appears in the guest (absolute, normalized).
    pub guest_path: String,
    /// Access granted.
    pub mode: Access,
}

/// One network endpoint, by name: the host resolves names itself. `host` may be
/// `*.name`: every name strictly under `name` (not `name` itself).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// DNS name (lower case, no trailing dot), or `*.name`.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// Network grants.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Egress {
    /// Endpoints that may be connected to.
    pub allow: Vec<Endpoint>,
    /// Endpoints whose connections are decided by a human at connect time (the host
    /// proxy asks; no answer means refused).
    pub ask: Vec<Endpoint>,
    /// Names the host dials at a fixed address instead of resolving them (curl's
    /// `--resolve`): name → IP address. A pin is the explicit grant of its address, even
    /// in ranges the host otherwise refuses (loopback, private, link-local).
    pub pins: BTreeMap<String, String>,
}

/// Resource limits (all are ceilings the enforcer applies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Guest memory, MiB.
    pub memory_mib: u64,
    /// Writable scratch space, MiB.
    pub disk_mib: u64,
    /// Maximum number of processes/threads of the agent.
    pub pids: u32,
    /// Wall-clock limit for the session, seconds.
    pub wall_time_secs: u64,
    /// Most network connections open at once (the host's egress service counts them).
    pub net_connections: u32,
    /// Most network traffic in total, both directions, MiB (counted on the host).
    pub net_mib: u64,
}

/// Most network connections one session may hold open, whatever a policy admits: the
/// launcher holds descriptors for each (the agent's end and the dialled one), and every
/// session shares its descriptor limit.
pub const MAX_NET_CONNECTIONS: u32 = 1024;

impl Resources {
    /// Why a limit is above what the host allows any session, naming it.
    pub fn over_host_cap(&self) -> Option<(&'static str, String)> {
        (self.net_connections > MAX_NET_CONNECTIONS).then(|| {
            (
                "net_connections",
                format!(
                    "{} is over {MAX_NET_CONNECTIONS}, the most any session holds open (the launcher keeps descriptors for each)",
                    self.net_connections
                ),
            )
        })
    }

    /// The first limit that is zero but must not be (disk may be zero: no scratch).
    pub fn first_zero_field(&self) -> Option<&'static str> {
        [
            ("vcpus", self.vcpus == 0),
            ("memory_mib", self.memory_mib == 0),
            ("pids", self.pids == 0),
            ("wall_time_secs", self.wall_time_secs == 0),
            ("net_connections", self.net_connections == 0),
            ("net_mib", self.net_mib == 0),
        ]
        .into_iter()
        .find_map(|(name, zero)| zero.then_some(name))
    }
}

/// A manifest field that parsed but cannot be right.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("manifest field `{field}`: {problem}")]
pub struct ManifestFieldError {
    /// Dotted path of the field (`mounts[1].guest_path`).
    pub field: String,
    /// What is wrong.
    pub problem: String,
}

fn field_err(field: impl Into<String>, problem: impl Into<String>) -> ManifestFieldError {
    ManifestFieldError {
        field: field.into(),
        problem: problem.into(),
    }
}

/// Is `s` lowercase hex of exactly `len` characters?
fn is_hex(s: &str, len: std::ops::RangeInclusive<usize>) -> bool {
    len.contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks an image id: 1–128 characters of `[A-Za-z0-9:._-]`.
pub fn validate_image_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err(format!("image id `{id}` must be 1-128 characters"));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '.' | '_' | '-'))
    {
        return Err(format!(
            "image id `{id}` may only contain A-Z a-z 0-9 : . _ -"
        ));
    }
    Ok(())
}

/// Checks that `p` is absolute and normalized: no `.`/`..` components, no `//`, no
/// trailing slash (except `/` itself), no NUL.
pub fn validate_abs_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("`{p}` is not an absolute path"));
    }
    if p.contains('\0') {
        return Err(format!("`{}` contains a NUL byte", p.escape_debug()));
    }
    if p == "/" {
        return Ok(());
    }
    if p.ends_with('/') {
        return Err(format!("`{p}` has a trailing slash"));
    }
    for comp in p[1..].split('/') {
        match comp {
            "" => return Err(format!("`{p}` contains an empty component (`//`)")),
            "." | ".." => return Err(format!("`{p}` contains a `{comp}` component")),
            _ => {}
        }
    }
    Ok(())
}

impl Manifest {
    /// Checks invariants serde cannot express. Run by the verifier after parsing.
    pub fn validate(&self) -> Result<(), ManifestFieldError> {
        if !is_hex(&self.session_id, 32..=32) {
            return Err(field_err(
                "session_id",
                "must be 32 lowercase hex characters",
            ));
        }
        if self.vm_cid < 3 {
            return Err(field_err(
                "vm_cid",
                format!("{} is reserved (guest CIDs start at 3)", self.vm_cid),
            ));
        }
        validate_image_id(&self.image_id).map_err(|p| field_err("image_id", p))?;
        if !is_hex(&self.nonce, 32..=128) {
            return Err(field_err(
                "nonce",
                "must be 32-128 lowercase hex characters",
            ));
        }
        if self.expires_at <= self.not_before {
            return Err(field_err(
                "expires_at",
                format!(
                    "{} is not after not_before {}",
                    self.expires_at, self.not_before
                ),
            ));
        }
        if !self
            .policy_digest
            .strip_prefix("sha256:")
            .is_some_and(|h| is_hex(h, 64..=64))
        {
            return Err(field_err("policy_digest", "must be sha256:<64 hex>"));
        }
        if self.command.argv.is_empty() || self.command.argv[0].is_empty() {
            return Err(field_err("command.argv", "must name a program"));
        }
        validate_abs_path(&self.command.cwd).map_err(|p| field_err("command.cwd", p))?;
        for k in self.command.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(field_err(
                    format!("command.env.{k}"),
                    "invalid variable name",
                ));
            }
        }
        let mut tags = std::collections::BTreeSet::new();
        let mut guest_paths = std::collections::BTreeSet::new();
        for (i, m) in self.mounts.iter().enumerate() {
            if m.tag.is_empty()
                || m.tag.len() > 36
                || !m.tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            {
                return Err(field_err(
                    format!("mounts[{i}].tag"),
                    "must be 1-36 characters of [A-Za-z0-9-]",
                ));
            }
            if !tags.insert(&m.tag) {
                return Err(field_err(
                    format!("mounts[{i}].tag"),
                    format!("duplicate tag `{}`", m.tag),
                ));
            }
            validate_abs_path(&m.guest_path)
                .map_err(|p| field_err(format!("mounts[{i}].guest_path"), p))?;
            if m.guest_path == "/" {
                return Err(field_err(
                    format!("mounts[{i}].guest_path"),
                    "cannot mount over `/`",
                ));
            }
            if !guest_paths.insert(&m.guest_path) {
                return Err(field_err(
                    format!("mounts[{i}].guest_path"),
                    format!("`{}` is mounted twice", m.guest_path),
                ));
            }
        }
        for (list, eps) in [("allow", &self.egress.allow), ("ask", &self.egress.ask)] {
            for (i, e) in eps.iter().enumerate() {
                if e.host.is_empty()
                    || e.host != e.host.to_ascii_lowercase()
                    || e.host.ends_with('.')
                {
                    return Err(field_err(
                        format!("egress.{list}[{i}].host"),
                        "must be a lowercase DNS name without a trailing dot",
                    ));
                }
                if e.port == 0 {
                    return Err(field_err(format!("egress.{list}[{i}].port"), "port 0"));
                }
            }
        }
        for (name, ip) in &self.egress.pins {
            if name.is_empty() || *name != name.to_ascii_lowercase() || name.ends_with('.') {
                return Err(field_err(
                    format!("egress.pins.{name}"),
                    "must be a lowercase DNS name without a trailing dot",
                ));
            }
            if ip.parse::<std::net::IpAddr>().is_err() {
                return Err(field_err(
                    format!("egress.pins.{name}"),
                    format!("`{ip}` is not an IP address"),
                ));
            }
        }
        let mut programs = std::collections::BTreeSet::new();
        for (i, t) in self.tools.iter().enumerate() {
            if t.program.is_empty() || t.program.contains('/') {
                return Err(field_err(
                    format!("tools[{i}].program"),
                    "must be a bare program name",
                ));
            }
            if !programs.insert(&t.program) {
                return Err(field_err(
                    format!("tools[{i}].program"),
                    format!("`{}` granted twice", t.program),
                ));
            }
        }
        if let Some(name) = self.resources.first_zero_field() {
            return Err(field_err(
                format!("resources.{name}"),
                "must be greater than 0",
            ));
        }
        if let Some((name, why)) = self.resources.over_host_cap() {
            return Err(field_err(format!("resources.{name}"), why));
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid manifest for tests across the crate.
    pub(crate) fn sample() -> Manifest {
        Manifest {
            manifest_version: MANIFEST_VERSION,
            protocol_version: crate::PROTOCOL_VERSION,
            session_id: "0123456789abcdef0123456789abcdef".into(),
            vm_cid: 3,
            image_id: "sha256:abc".into(),
            nonce: "00112233445566778899aabbccddeeff".into(),
            issued_at: 1_000,
            not_before: 1_000,
            expires_at: 1_600,
            policy_digest: format!("sha256:{}", "0".repeat(64)),
            command: Command {
                argv: vec!["git".into(), "status".into()],
                cwd: "/workspace".into(),
                env: BTreeMap::new(),
            },
            mounts: vec![Mount {
                tag: "m0".into(),
                guest_path: "/workspace".into(),
                mode: Access::Rw,
            }],
            egress: Egress::default(),
            tools: vec![],
            resources: Resources {
                vcpus: 1,
                memory_mib: 512,
                disk_mib: 256,
                pids: 128,
                wall_time_secs: 600,
                net_connections: 32,
                net_mib: 1024,
            },
        }
    }

    #[test]
    fn sample_is_valid() {
        sample().validate().unwrap();
    }

    #[test]
    fn invalid_fields_are_named() {
        type Mutation = Box<dyn Fn(&mut Manifest)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("session_id", Box::new(|m| m.session_id = "XYZ".into())),
            ("vm_cid", Box::new(|m| m.vm_cid = 2)),
            ("image_id", Box::new(|m| m.image_id = "a b".into())),
            ("nonce", Box::new(|m| m.nonce = "00".into())),
            ("expires_at", Box::new(|m| m.expires_at = m.not_before)),
            (
                "command.cwd",
                Box::new(|m| m.command.cwd = "/a/../b".into()),
            ),
            (
                "mounts[0].guest_path",
                Box::new(|m| m.mounts[0].guest_path = "rel".into()),
            ),
            ("resources.pids", Box::new(|m| m.resources.pids = 0)),
            (
                "resources.net_connections",
                Box::new(|m| m.resources.net_connections = MAX_NET_CONNECTIONS + 1),
            ),
        ];
        for (field, mutate) in cases {
            let mut m = sample();
            mutate(&mut m);
            let err = m.validate().unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[test]
    fn unknown_fields_are_rejected_at_every_level() {
        let json = serde_json::to_value(sample()).unwrap();
        for pointer in ["", "/command", "/mounts/0", "/egress", "/resources"] {
            let mut v = json.clone();
            v.pointer_mut(pointer)
                .unwrap()
                .as_object_mut()
                .unwrap()
                .insert("extra".into(), serde_json::json!(true));
            let err = serde_json::from_value::<Manifest>(v).unwrap_err();
            assert!(
                err.to_string().contains("unknown field `extra`"),
                "{pointer}: {err}"
            );
        }
    }

    #[test]
    fn path_validation() {
        for ok in ["/", "/a", "/a/b.c"] {
            validate_abs_path(ok).unwrap();
        }
        for bad in ["", "a", "/a/", "//a", "/a/./b", "/a/.."] {
            assert!(validate_abs_path(bad).is_err(), "{bad}");
        }
    }
}
