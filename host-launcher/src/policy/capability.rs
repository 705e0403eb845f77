//! Capabilities: the unit every policy decision is about.
//!
//! Both engines (native and Rego) decide the same [`Capability`] values; the JSON form
//! (`{"kind": "fs", "path": …, "mode": …}`) is what Rego policies see as `input`.
//!
//! The text form is used by rule examples, `airlock policy decide` and the data-driven
//! cases files:
//!
//! | kind | text | example |
//! |---|---|---|
//! | fs | `fs [ro\|rw] PATH` | `fs rw /home/a/work/x` |
//! | net | `net HOST[:PORT]` (port defaults to 443) | `net github.com:22` |
//! | tool | `tool ARGV…` (shell words; one capability for the arguments, one per `-c`) | `tool git -c core.pager=x log` |
//! | resources | `resources KEY=N…` | `resources vcpus=2 memory_mib=1024` |

use airlock_proto::manifest::{validate_abs_path, Access, Resources};
use airlock_proto::tool_invocation::Invocation;
use serde::{Deserialize, Serialize};
use std::fmt;

/// One thing an agent may be granted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Capability {
    /// Access to a host path (absolute, normalized, symlinks already resolved).
    Fs {
        /// The path.
        path: String,
        /// Access wanted.
        mode: Access,
    },
    /// A TCP connection to a named host.
    Net {
        /// Lower-case DNS name.
        host: String,
        /// Port.
        port: u16,
    },
    /// Running a program with these (normalized) arguments.
    Tool {
        /// Program name (basename of argv[0]).
        program: String,
        /// Arguments after program-specific global options.
        args: Vec<String>,
    },
    /// A configuration setting made on a program's command line (`git -c key=…`).
    ToolConfig {
        /// Program name.
        program: String,
        /// Normalized key.
        key: String,
    },
    /// Resources for the session.
    Resources(Resources),
}

/// What a plan gets when it names no resources.
pub fn default_resources() -> Resources {
    Resources {
        vcpus: 1,
        memory_mib: 512,
        disk_mib: 256,
        pids: 256,
        wall_time_secs: 600,
        net_connections: 32,
        net_mib: 1024,
    }
}

/// A capability string that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("capability `{text}`: {problem}")]
pub struct CapabilityParseError {
    /// The text as given.
    pub text: String,
    /// What is wrong.
    pub problem: String,
}

impl Capability {
    /// The kind name (`fs`, `net`, `tool`, `tool_config`, `resources`).
    pub fn kind(&self) -> &'static str {
        match self {
            Capability::Fs { .. } => "fs",
            Capability::Net { .. } => "net",
            Capability::Tool { .. } => "tool",
            Capability::ToolConfig { .. } => "tool_config",
            Capability::Resources(_) => "resources",
        }
    }

    /// Capabilities of one invocation: the arguments, then each configuration setting.
    pub fn of_invocation(inv: &Invocation) -> Vec<Capability> {
        let mut caps = vec![Capability::Tool {
            program: inv.program.clone(),
            args: inv.args.clone(),
        }];
        caps.extend(inv.config.iter().map(|c| Capability::ToolConfig {
            program: inv.program.clone(),
            key: c.key.clone(),
        }));
        caps
    }

    /// Parses the text form (see the module docs). A `tool` text may yield several.
    pub fn parse_text(text: &str) -> Result<Vec<Capability>, CapabilityParseError> {
        let err = |problem: String| CapabilityParseError {
            text: text.to_string(),
            problem,
        };
        let trimmed = text.trim();
        let (kind, rest) = trimmed
            .split_once(char::is_whitespace)
            .unwrap_or((trimmed, ""));
        let rest = rest.trim();
        match kind {
            "fs" => Ok(vec![parse_fs(rest, None).map_err(err)?]),
            "net" => Ok(vec![parse_net(rest).map_err(err)?]),
            "tool" => parse_tool(rest).map_err(err),
            "resources" => Ok(vec![parse_resources(rest).map_err(err)?]),
            other => Err(err(format!(
                "unknown kind `{other}`: expected fs, net, tool or resources"
            ))),
        }
    }
}

/// `[ro|rw|rw-live] PATH`; `default_mode` applies when no mode is written (else `ro`).
pub fn parse_fs(text: &str, default_mode: Option<Access>) -> Result<Capability, String> {
    let (mode, path) = match text.split_once(char::is_whitespace) {
        Some((word, p)) if Access::parse(word).is_some() => {
            (Access::parse(word).expect("checked"), p.trim())
        }
        _ => (default_mode.unwrap_or(Access::Ro), text.trim()),
    };
    validate_abs_path(path)?;
    Ok(Capability::Fs {
        path: path.to_string(),
        mode,
    })
}

/// `HOST[:PORT]`, port 443 when omitted.
pub fn parse_net(text: &str) -> Result<Capability, String> {
    let (host, port) = match text.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("`{p}` is not a port (1-65535)"))?,
        ),
        None => (text, 443),
    };
    Ok(Capability::Net {
        host: normalize_requested_host(host)?,
        port,
    })
}

/// A host a plan may request: a DNS name ([`normalize_host`]), or `*.NAME` for every
/// name strictly under NAME (decided by rules whose pattern covers all of them).
pub fn normalize_requested_host(host: &str) -> Result<String, String> {
    match host.strip_prefix("*.") {
        Some(rest) => {
            let rest = normalize_host(rest)?;
            if !rest.contains('.') {
                return Err(format!(
                    "host `{host}` would be every name under a top-level domain; name one below it"
                ));
            }
            Ok(format!("*.{rest}"))
        }
        None if host.contains('*') => Err(format!(
            "host `{host}`: `*` is only a whole leading label (`*.example.com`)"
        )),
        None => normalize_host(host),
    }
}

/// Lower-cases a DNS name, strips one trailing dot, and checks its characters.
pub fn normalize_host(host: &str) -> Result<String, String> {
    let h = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if h.is_empty() || h.len() > 253 {
        return Err(format!("host `{host}` must be 1-253 characters"));
    }
    // The last label of a DNS name is never all digits; if it is, this is an IPv4
    // address in some spelling (`10.0.0.1`, `2130706433`, `0x7f.1`). Egress is granted by
    // name and the host resolves names itself, so addresses are refused outright.
    if h.rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
        || h.rsplit('.').next().is_some_and(|l| {
            l.starts_with("0x") && l.len() > 2 && l[2..].bytes().all(|b| b.is_ascii_hexdigit())
        })
    {
        return Err(format!(
            "host `{host}` is an IP address; egress is granted by DNS name only"
        ));
    }
    for label in h.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("host `{host}` has an empty or over-long label"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!(
                "host `{host}` may only contain letters, digits, `-` and `.`"
            ));
        }
    }
    Ok(h)
}

/// Shell words of a command line with the program first.
pub fn parse_tool(text: &str) -> Result<Vec<Capability>, String> {
    let argv = shell_words::split(text).map_err(|e| format!("cannot split into words: {e}"))?;
    let inv = Invocation::parse(&argv).map_err(|e| e.to_string())?;
    Ok(Capability::of_invocation(&inv))
}

/// `KEY=N…`; unnamed keys take the plan defaults.
pub fn parse_resources(text: &str) -> Result<Capability, String> {
    let mut r = default_resources();
    for pair in text.split_whitespace() {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("`{pair}` is not KEY=N"))?;
        let n: u64 = v.parse().map_err(|_| format!("`{v}` is not a number"))?;
        let small = || u32::try_from(n).map_err(|_| format!("{k}={n} is too large"));
        match k {
            "vcpus" => r.vcpus = small()?,
            "memory_mib" => r.memory_mib = n,
            "disk_mib" => r.disk_mib = n,
            "pids" => r.pids = small()?,
            "wall_time_secs" => r.wall_time_secs = n,
            "net_connections" => r.net_connections = small()?,
            "net_mib" => r.net_mib = n,
            other => {
                return Err(format!(
                "unknown resource `{other}`: expected vcpus, memory_mib, disk_mib, pids, wall_time_secs, net_connections, net_mib"
            ))
            }
        }
    }
    Ok(Capability::Resources(r))
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Capability::Fs { path, mode } => write!(f, "fs {mode} {path}"),
            Capability::Net { host, port } => write!(f, "net {host}:{port}"),
            Capability::Tool { program, args } => {
                write!(
                    f,
                    "tool {}",
                    shell_words::join(std::iter::once(program).chain(args))
                )
            }
            Capability::ToolConfig { program, key } => write!(f, "tool {program} -c {key}"),
            Capability::Resources(r) => write!(
                f,
                "resources vcpus={} memory_mib={} disk_mib={} pids={} wall_time_secs={} net_connections={} net_mib={}",
                r.vcpus, r.memory_mib, r.disk_mib, r.pids, r.wall_time_secs, r.net_connections, r.net_mib
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms_parse() {
        assert_eq!(
            Capability::parse_text("fs rw /a/b").unwrap(),
            vec![Capability::Fs {
                path: "/a/b".into(),
                mode: Access::Rw
            }]
        );
        assert_eq!(
            Capability::parse_text("net GitHub.com.").unwrap(),
            vec![Capability::Net {
                host: "github.com".into(),
                port: 443
            }]
        );
        let caps = Capability::parse_text("tool git -c core.pager=less log").unwrap();
        assert_eq!(caps.len(), 2);
        assert_eq!(
            caps[1],
            Capability::ToolConfig {
                program: "git".into(),
                key: "core.pager".into()
            }
        );
        let r = Capability::parse_text("resources vcpus=4").unwrap();
        assert!(
            matches!(&r[0], Capability::Resources(req) if req.vcpus == 4 && req.memory_mib == 512)
        );
    }

    #[test]
    fn bad_text_names_the_problem() {
        for (text, needle) in [
            ("fs ro relative", "not an absolute path"),
            ("net a..b", "empty"),
            ("net host:0", "not a port"),
            ("net ex_ample.com", "may only contain"),
            ("net 169.254.169.254:80", "is an IP address"),
            ("net 2130706433", "is an IP address"),
            ("net 127.0x1", "is an IP address"),
            ("tool git --bogus x", "unrecognized global option"),
            ("resources cpus=2", "unknown resource"),
            ("disk /x", "unknown kind"),
        ] {
            let err = Capability::parse_text(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn json_form_is_tagged_by_kind() {
        let c = Capability::parse_text("resources vcpus=2")
            .unwrap()
            .remove(0);
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["kind"], "resources");
        assert_eq!(v["vcpus"], 2);
        assert_eq!(serde_json::from_value::<Capability>(v).unwrap(), c);
    }
}
