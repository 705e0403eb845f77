//! `airlock serve`: the Launcher gRPC service (and the approvals web page).

use super::output::errln;
use super::session_setup::{launcher_signer, vm_launcher, vm_state_root, Approvers};
use super::{fail, ApprovalArgs, Failure, VmArgs};
use airlock_launcher::policy::Policy;
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct ServeArgs {
    /// Policy file (TOML) every plan is decided against.
    #[arg(long)]
    policy: PathBuf,
    /// Endpoint: unix:PATH or tcp:ADDR (tcp with mutual TLS only: --tls-cert,
    /// --tls-key, --tls-client-ca) [default: unix:$XDG_RUNTIME_DIR/airlock/launcher.sock].
    #[arg(long)]
    listen: Option<String>,
    #[command(flatten)]
    access: AccessArgs,
    /// Where collected files go (a directory per session) [default: the state
    /// directory's `outputs`].
    #[arg(long)]
    outputs: Option<PathBuf>,
    #[command(flatten)]
    vm: VmArgs,
    #[command(flatten)]
    approvals: ApprovalArgs,
    /// Serve the approvals web page on this loopback address (e.g. 127.0.0.1:8765);
    /// the address to open, with its access token, is printed at start.
    #[arg(long, value_name = "ADDR")]
    approvals_http: Option<std::net::SocketAddr>,
}

/// Who may call the API (see `airlock_launcher::api_access`).
#[derive(Args)]
pub struct AccessArgs {
    /// Also admit this uid on the Unix socket (repeatable; the launcher's own uid is
    /// always admitted). The kernel's record of the peer (SO_PEERCRED) decides.
    #[arg(long, value_name = "UID")]
    allow_uid: Vec<u32>,
    /// Also admit members of this group (primary or supplementary) on the Unix socket
    /// (repeatable).
    #[arg(long, value_name = "GID")]
    allow_gid: Vec<u32>,
    /// This uid sees and controls every session, not only its own (repeatable; the
    /// launcher's own uid is an operator).
    #[arg(long, value_name = "UID")]
    operator_uid: Vec<u32>,
    /// Members of this group are operators (repeatable).
    #[arg(long, value_name = "GID")]
    operator_gid: Vec<u32>,
    /// The client certificate with this subject CN is an operator (repeatable; tcp).
    #[arg(long, value_name = "CN")]
    operator_cn: Vec<String>,
    /// tcp: the server's certificate chain (PEM).
    #[arg(long, value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// tcp: the server's private key (PEM).
    #[arg(long, value_name = "PEM")]
    tls_key: Option<PathBuf>,
    /// tcp: the CA that issues client certificates (PEM). Only its certificates are
    /// admitted, and each one's subject CN names its caller.
    #[arg(long, value_name = "PEM")]
    tls_client_ca: Option<PathBuf>,
}

impl AccessArgs {
    /// The access settings for `listen`, refusing combinations that cannot be what the
    /// user meant (TCP without mutual TLS above all).
    fn resolve(
        &self,
        listen: &airlock_launcher::server::Listen,
    ) -> Result<airlock_launcher::server::ApiAccess, Failure> {
        use airlock_launcher::api_access::{AccessPolicy, ServerTlsFiles};
        use airlock_launcher::server::Listen;
        let tls = match (&self.tls_cert, &self.tls_key, &self.tls_client_ca) {
            (Some(cert), Some(key), Some(client_ca)) => Some(ServerTlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: client_ca.clone(),
            }),
            (None, None, None) => None,
            _ => {
                return Err(fail(
                    2,
                    "mutual TLS needs all three of --tls-cert, --tls-key and --tls-client-ca",
                ))
            }
        };
        match (listen, &tls) {
            (Listen::Tcp(addr), None) => {
                return Err(fail(
                    2,
                    format!("--listen tcp:{addr}: the Launcher API is served over TCP with mutual TLS only; give --tls-cert, --tls-key and --tls-client-ca, or use a unix: socket"),
                ))
            }
            (Listen::Unix(_), Some(_)) => {
                return Err(fail(2, "--tls-* are for a tcp: endpoint; a unix: socket is authenticated by the kernel (see --allow-uid, --allow-gid)"))
            }
            (Listen::Unix(_), None) if !self.operator_cn.is_empty() => {
                return Err(fail(2, "--operator-cn names client certificates, which only a tcp: endpoint takes"))
            }
            _ => {}
        }
        let mut policy = AccessPolicy::own_uid_only();
        policy.allow_uids = self.allow_uid.clone();
        policy.allow_gids = self.allow_gid.clone();
        policy.operator_uids = self.operator_uid.clone();
        policy.operator_gids = self.operator_gid.clone();
        policy.operator_names = self.operator_cn.clone();
        Ok(airlock_launcher::server::ApiAccess { policy, tls })
    }
}

pub fn exec(a: ServeArgs) -> Result<u8, Failure> {
    use airlock_launcher::server::{serve, LauncherService, Listen};
    let listen: Listen = match &a.listen {
        Some(l) => l
            .parse()
            .map_err(|e: String| fail(2, format!("--listen: {e}")))?,
        None => default_listen(),
    };
    let access = a.access.resolve(&listen)?;
    let policy = Policy::load(&a.policy).map_err(|e| fail(1, e))?;
    let signer = launcher_signer(&a.vm)?;
    let approvers = Approvers::from_args(&a.approvals, true, &policy, signer.clone())?;
    let launcher = vm_launcher(&a.vm, policy, signer, approvers.broker.clone(), false)?;
    let outputs = a.outputs.clone().unwrap_or_else(|| {
        vm_state_root()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
            .join("outputs")
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| fail(1, format!("tokio runtime: {e}")))?;
    let shown = match &listen {
        Listen::Unix(p) => format!("unix:{}", p.display()),
        Listen::Tcp(t) => format!("tcp:{t}"),
    };
    rt.block_on(async move {
        let _channels = approvers.start()?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|&s| s).await;
        };
        let page = match a.approvals_http {
            Some(addr) => {
                let page = airlock_launcher::approvals_http::start_approvals_http(
                    addr,
                    approvers.broker.clone(),
                    stopped(stop_rx.clone()),
                )
                .await
                .map_err(|e| fail(1, format!("--approvals-http: {e}")))?;
                // Like a notebook server: the address carries the access token.
                errln!("airlock: approvals page: {}", page.url);
                Some(page)
            }
            None => None,
        };
        let service = LauncherService::new(std::sync::Arc::new(launcher), outputs);
        let shutdown = async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("a SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            errln!("airlock: serve: shutting down; live sessions are destroyed");
            let _ = stop_tx.send(true);
        };
        serve(
            service,
            &listen,
            access,
            || errln!("airlock: serving the Launcher service on {shown}"),
            shutdown,
        )
        .await
        .map_err(|e| fail(1, e))?;
        if let Some(page) = page {
            page.finished().await;
        }
        Ok(())
    })?;
    Ok(0)
}

/// Where `airlock serve` listens by default, and where its clients connect.
pub fn default_listen() -> airlock_launcher::server::Listen {
    airlock_launcher::server::Listen::Unix(
        vm_state_root()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
            .join("launcher.sock"),
    )
}
