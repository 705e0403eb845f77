//! `airlock approvals`: watch and answer the asks of a running `airlock serve`.

use super::output::outln;
use super::serve::default_listen;
use super::{fail, Failure};
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum ApprovalsCmd {
    /// Print asks waiting now, then every new ask and every resolution as they happen.
    Watch {
        /// Only this session's asks.
        #[arg(long)]
        session: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Answer one ask (the first answer wins; a second one is refused).
    Resolve {
        /// The ask's id (`ap-000001`).
        id: String,
        /// Approve it.
        #[arg(long, conflicts_with = "deny", required_unless_present = "deny")]
        approve: bool,
        /// Deny it.
        #[arg(long)]
        deny: bool,
        /// How far an approval reaches: this ask, or this action for the rest of the
        /// session.
        #[arg(long, value_enum, default_value = "once")]
        scope: ScopeArg,
        /// Who answers, for the audit log [default: the login name].
        #[arg(long)]
        approver: Option<String>,
        /// A comment the agent sees with a denial.
        #[arg(long, default_value = "")]
        comment: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// List a session's `session`-scoped approvals.
    Grants {
        /// The session.
        session: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Revoke one `session`-scoped approval (by its digest).
    Revoke {
        /// The session.
        session: String,
        /// The action digest (`sha256:…`, from `grants`).
        digest: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScopeArg {
    /// This ask only.
    Once,
    /// This exact action, for the rest of the session.
    Session,
}

#[derive(Args)]
pub struct ConnectArgs {
    /// The server: unix:PATH or tcp:ADDR [default: unix:$XDG_RUNTIME_DIR/airlock/launcher.sock].
    #[arg(long)]
    connect: Option<String>,
    /// For tcp: this client's certificate (PEM); its CN is who the server records.
    #[arg(long, value_name = "PEM", requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,
    /// For tcp: this client's private key (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// For tcp: the CA the server's certificate must chain to (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_ca: Option<PathBuf>,
}

impl ConnectArgs {
    fn tls(&self) -> Option<airlock_launcher::api_access::ClientTlsFiles> {
        Some(airlock_launcher::api_access::ClientTlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            server_ca: self.tls_ca.clone()?,
        })
    }
}

pub fn exec(c: ApprovalsCmd) -> Result<u8, Failure> {
    use airlock_launcher::approver_channels::sanitize_for_terminal as shown;
    use airlock_proto::pb::launcher_client::LauncherClient;
    use airlock_proto::pb::{approval_event, ApprovalScope};
    let connect_to = |c: &ConnectArgs| -> Result<airlock_launcher::server::Listen, Failure> {
        match &c.connect {
            Some(l) => l
                .parse()
                .map_err(|e: String| fail(2, format!("--connect: {e}"))),
            None => Ok(default_listen()),
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(1, format!("tokio runtime: {e}")))?;
    let rpc_failed = |e: tonic::Status| fail(1, format!("{:?}: {}", e.code(), e.message()));
    rt.block_on(async {
        let client = |l: airlock_launcher::server::Listen,
                      tls: Option<airlock_launcher::api_access::ClientTlsFiles>| async move {
            airlock_launcher::server::connect(&l, tls.as_ref())
                .await
                .map(LauncherClient::new)
                .map_err(|e| fail(1, e))
        };
        match c {
            ApprovalsCmd::Watch {
                session,
                json,
                connect,
            } => {
                let mut c = client(connect_to(&connect)?, connect.tls()).await?;
                let mut stream = c
                    .watch_approvals(airlock_proto::pb::WatchApprovalsRequest {
                        session_id: session.unwrap_or_default(),
                    })
                    .await
                    .map_err(rpc_failed)?
                    .into_inner();
                use std::io::Write;
                while let Some(ev) = stream.message().await.map_err(rpc_failed)? {
                    let line = match ev.event {
                        Some(approval_event::Event::Pending(p)) => {
                            let what = p.capability.clone().unwrap_or_default();
                            if json {
                                serde_json::json!({
                                    "event": "pending", "id": p.approval_id,
                                    "session_id": p.session_id, "kind": p.kind,
                                    "rule_id": what.rule_id, "reason": what.reason,
                                    "capability": what.capability, "program": p.program,
                                    "argv": p.argv, "cwd": p.cwd,
                                    "binary_sha256": p.binary_sha256, "reaches": p.reaches,
                                    "digest": p.digest,
                                    "deadline_unix_ms": p.expires_at_unix_millis,
                                })
                                .to_string()
                            } else {
                                let cwd = if p.cwd.is_empty() {
                                    String::new()
                                } else {
                                    format!(" (cwd {})", shown(&p.cwd))
                                };
                                // What runs, and the digest an answer is bound to.
                                let binary = if p.program.is_empty() {
                                    String::new()
                                } else {
                                    format!(
                                        " [program {} sha256 {}]",
                                        shown(&p.program),
                                        shown(&p.binary_sha256)
                                    )
                                };
                                // Where it goes by its configuration (a push's remotes).
                                let reaches: String = p
                                    .reaches
                                    .iter()
                                    .map(|r| format!(" [reaches {}]", shown(r)))
                                    .collect();
                                format!(
                                    "pending {} session {} rule {} ({}): {}{cwd}{binary}{reaches} digest {}",
                                    p.approval_id,
                                    p.session_id,
                                    shown(&what.rule_id),
                                    shown(&what.reason),
                                    shown(&what.capability),
                                    shown(&p.digest)
                                )
                            }
                        }
                        Some(approval_event::Event::Resolved(r)) => {
                            if json {
                                serde_json::json!({
                                    "event": "resolved", "id": r.approval_id,
                                    "session_id": r.session_id, "approved": r.approved,
                                    "scope": match ApprovalScope::try_from(r.scope) {
                                        Ok(ApprovalScope::Session) => "session",
                                        Ok(ApprovalScope::Once) => "once",
                                        _ => "",
                                    },
                                    "approver": r.approver, "message": r.message,
                                    "digest": r.digest,
                                })
                                .to_string()
                            } else {
                                format!("resolved {}: {}", r.approval_id, shown(&r.message))
                            }
                        }
                        None => continue,
                    };
                    let mut out = std::io::stdout().lock();
                    if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                        return Ok(0);
                    }
                }
                Ok(0)
            }
            ApprovalsCmd::Resolve {
                id,
                approve,
                deny: _,
                scope,
                approver,
                comment,
                connect,
            } => {
                let approver = approver
                    .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
                    .unwrap_or_else(|| {
                        // SAFETY: getuid has no failure mode.
                        format!("uid {}", unsafe { libc::getuid() })
                    });
                let mut c = client(connect_to(&connect)?, connect.tls()).await?;
                let r = c
                    .resolve_approval(airlock_proto::pb::ResolveApprovalRequest {
                        approval_id: id,
                        approve,
                        approver,
                        comment,
                        scope: match scope {
                            ScopeArg::Once => ApprovalScope::Once,
                            ScopeArg::Session => ApprovalScope::Session,
                        } as i32,
                    })
                    .await
                    .map_err(rpc_failed)?
                    .into_inner();
                outln!("{}", r.message);
                Ok(0)
            }
            ApprovalsCmd::Grants {
                session,
                json,
                connect,
            } => {
                let mut c = client(connect_to(&connect)?, connect.tls()).await?;
                let grants = c
                    .list_session_grants(airlock_proto::pb::ListSessionGrantsRequest {
                        session_id: session,
                    })
                    .await
                    .map_err(rpc_failed)?
                    .into_inner()
                    .grants;
                for g in grants {
                    let what = g
                        .action
                        .and_then(|a| a.capability)
                        .map(|c| c.capability)
                        .unwrap_or_default();
                    if json {
                        outln!(
                            "{}",
                            serde_json::json!({"digest": g.digest, "approver": g.approver, "action": what})
                        );
                    } else {
                        outln!("{} {} (approved by {})", g.digest, shown(&what), shown(&g.approver));
                    }
                }
                Ok(0)
            }
            ApprovalsCmd::Revoke {
                session,
                digest,
                connect,
            } => {
                let mut c = client(connect_to(&connect)?, connect.tls()).await?;
                let r = c
                    .revoke_session_grant(airlock_proto::pb::RevokeSessionGrantRequest {
                        session_id: session,
                        digest: digest.clone(),
                    })
                    .await
                    .map_err(rpc_failed)?
                    .into_inner();
                if r.revoked {
                    outln!("revoked {digest}");
                    Ok(0)
                } else {
                    Err(fail(1, format!("no session grant {digest} in that session")))
                }
            }
        }
    })
}
