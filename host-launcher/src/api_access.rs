//! Who may call the Launcher API, and as whom.
//!
//! Each way in is authenticated by the kernel or by cryptography, never by anything the
//! caller says about itself:
//! - **the Unix socket**: the peer's uid, gid and supplementary groups as the kernel
//!   recorded them when it connected (`SO_PEERCRED`, `SO_PEERGROUPS`), checked against
//!   the allowed uids and gids (default: the launcher's own uid only);
//! - **TCP**: mutual TLS only. The client certificate must chain to the configured
//!   client CA (rustls checks that during the handshake) and its subject CN names the
//!   caller; a connection without one never reaches a handler.
//!
//! A caller owns the sessions it creates and sees only those; an **operator** (by
//! default the launcher's own uid) sees and controls every session. Every call carries
//! an [`Authenticated`] in its request extensions, put there by [`authenticate_call`]
//! before any handler runs; a handler that finds none refuses (fail closed).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::{Request, Status};

/// A local peer as the kernel saw it at `connect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixPeer {
    /// Effective uid.
    pub uid: u32,
    /// Effective gid.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Process id (for the records only: a pid can be reused, ids cannot be forged).
    pub pid: i32,
}

/// Who made a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A process on this host, over the Unix socket.
    Local {
        /// Its uid.
        uid: u32,
        /// Its gid.
        gid: u32,
        /// Its pid at connect time.
        pid: i32,
    },
    /// A client certificate over mutual TLS.
    Certificate {
        /// The subject CN.
        common_name: String,
        /// `sha256:` of the certificate's DER.
        fingerprint: String,
    },
}

impl Caller {
    /// The stable name sessions are owned by: `uid:1000` or `cn:orchestrator`.
    pub fn principal(&self) -> String {
        match self {
            Caller::Local { uid, .. } => format!("uid:{uid}"),
            Caller::Certificate { common_name, .. } => format!("cn:{common_name}"),
        }
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Local { uid, gid, pid } => write!(f, "uid {uid} gid {gid} (pid {pid})"),
            Caller::Certificate {
                common_name,
                fingerprint,
            } => write!(f, "certificate CN={common_name} ({fingerprint})"),
        }
    }
}

/// A call's authenticated caller and what it may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// Who.
    pub caller: Caller,
    /// Sees and controls every session, not only its own.
    pub operator: bool,
}

impl Authenticated {
    /// Whether this caller may see and control a session owned by `owner` (a
    /// [`Caller::principal`]).
    pub fn may_control(&self, owner: &str) -> bool {
        self.operator || self.caller.principal() == owner
    }
}

/// Who is let in, and who is an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessPolicy {
    /// The launcher's own effective uid: always admitted, an operator unless
    /// `own_uid_is_operator` is off.
    pub own_uid: u32,
    /// Whether the launcher's own uid is an operator.
    pub own_uid_is_operator: bool,
    /// More uids admitted on the Unix socket.
    pub allow_uids: Vec<u32>,
    /// Gids admitted on the Unix socket (the peer's gid or any supplementary group).
    pub allow_gids: Vec<u32>,
    /// Uids that are operators (admitted too).
    pub operator_uids: Vec<u32>,
    /// Gids whose members are operators (admitted too).
    pub operator_gids: Vec<u32>,
    /// Client-certificate CNs that are operators.
    pub operator_names: Vec<String>,
}

impl AccessPolicy {
    /// The default: the launcher's own uid only, as operator.
    pub fn own_uid_only() -> AccessPolicy {
        AccessPolicy {
            own_uid: nix::unistd::geteuid().as_raw(),
            own_uid_is_operator: true,
            allow_uids: Vec::new(),
            allow_gids: Vec::new(),
            operator_uids: Vec::new(),
            operator_gids: Vec::new(),
            operator_names: Vec::new(),
        }
    }

    /// Whether anyone but the launcher's own uid may be let in over the Unix socket:
    /// then the socket file must be connectable by others (`SO_PEERCRED` decides).
    pub fn admits_other_local_users(&self) -> bool {
        self.allow_uids.iter().any(|&u| u != self.own_uid)
            || self.operator_uids.iter().any(|&u| u != self.own_uid)
            || !self.allow_gids.is_empty()
            || !self.operator_gids.is_empty()
    }

    /// Admits a local peer, or says why not (naming the flags that would admit it).
    pub fn admit_local(&self, peer: &UnixPeer) -> Result<Authenticated, String> {
        let in_any = |gids: &[u32]| {
            gids.iter()
                .any(|g| *g == peer.gid || peer.groups.contains(g))
        };
        let operator = (peer.uid == self.own_uid && self.own_uid_is_operator)
            || self.operator_uids.contains(&peer.uid)
            || in_any(&self.operator_gids);
        let admitted = operator
            || peer.uid == self.own_uid
            || self.allow_uids.contains(&peer.uid)
            || in_any(&self.allow_gids);
        if !admitted {
            return Err(format!(
                "uid {} (gid {}) may not use this launcher: it admits uid {}{}{}; start `airlock serve` with `--allow-uid {}` or `--allow-gid GID` to admit it",
                peer.uid,
                peer.gid,
                self.own_uid,
                listed(" and uids ", &self.allow_uids),
                listed(" and members of gids ", &self.allow_gids),
                peer.uid,
            ));
        }
        Ok(Authenticated {
            caller: Caller::Local {
                uid: peer.uid,
                gid: peer.gid,
                pid: peer.pid,
            },
            operator,
        })
    }

    /// Admits the holder of a client certificate rustls has already verified against
    /// the client CA; its subject CN is its name.
    pub fn admit_certificate(&self, der: &[u8]) -> Result<Authenticated, String> {
        use sha2::Digest as _;
        let common_name = certificate_common_name(der)?;
        let operator = self.operator_names.contains(&common_name);
        Ok(Authenticated {
            caller: Caller::Certificate {
                common_name,
                fingerprint: format!("sha256:{}", hex::encode(sha2::Sha256::digest(der))),
            },
            operator,
        })
    }
}

fn listed(prefix: &str, ids: &[u32]) -> String {
    if ids.is_empty() {
        return String::new();
    }
    let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
    format!("{prefix}{}", ids.join(", "))
}

/// The subject CN of a DER certificate: the caller's name. A certificate without
/// exactly one CN is refused (the name must not be ambiguous).
pub fn certificate_common_name(der: &[u8]) -> Result<String, String> {
    use x509_cert::der::asn1::{Ia5StringRef, ObjectIdentifier, PrintableStringRef, Utf8StringRef};
    use x509_cert::der::Decode as _;
    const CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
    let cert = x509_cert::Certificate::from_der(der)
        .map_err(|e| format!("the client certificate does not parse: {e}"))?;
    let mut names = Vec::new();
    for rdn in cert.tbs_certificate.subject.0.iter() {
        for atv in rdn.0.iter().filter(|a| a.oid == CN) {
            let v = &atv.value;
            let text = v
                .decode_as::<Utf8StringRef<'_>>()
                .map(|s| s.as_str().to_string())
                .or_else(|_| {
                    v.decode_as::<PrintableStringRef<'_>>()
                        .map(|s| s.as_str().to_string())
                })
                .or_else(|_| {
                    v.decode_as::<Ia5StringRef<'_>>()
                        .map(|s| s.as_str().to_string())
                })
                .map_err(|_| "the client certificate's CN is not a text string".to_string())?;
            names.push(text);
        }
    }
    match names.as_slice() {
        [one] if !one.is_empty() && !one.chars().any(char::is_control) => Ok(one.clone()),
        [] => Err("the client certificate has no subject CN: the CN names the caller".into()),
        _ => Err("the client certificate's subject must hold exactly one printable CN".into()),
    }
}

/// Reads a Unix socket peer's credentials from the kernel.
pub fn unix_peer_of(stream: &tokio::net::UnixStream) -> std::io::Result<UnixPeer> {
    let cred = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(std::io::Error::from)?;
    Ok(UnixPeer {
        uid: cred.uid(),
        gid: cred.gid(),
        groups: peer_groups(stream.as_raw_fd())?,
        pid: cred.pid(),
    })
}

/// `SO_PEERGROUPS`: the supplementary groups the peer had when it connected.
fn peer_groups(fd: std::os::fd::RawFd) -> std::io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: `fd` is an open socket owned by the caller for the duration of the
        // call; `groups` is a writable buffer of `len` bytes, and the kernel writes at
        // most `len` bytes and stores the size it needs (or used) in `len`.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(count);
            return Ok(groups);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ERANGE) && count > groups.len() && count <= 65_536 {
            groups.resize(count, 0);
            continue;
        }
        return Err(err);
    }
}

/// An accepted Unix connection with its peer's credentials, read once at accept.
pub struct PeerUnixStream {
    stream: tokio::net::UnixStream,
    peer: Option<UnixPeer>,
}

impl PeerUnixStream {
    /// Wraps `stream`; a peer whose credentials cannot be read is admitted by nobody.
    pub fn accepted(stream: tokio::net::UnixStream) -> PeerUnixStream {
        let peer = unix_peer_of(&stream).ok();
        PeerUnixStream { stream, peer }
    }
}

/// What tonic puts in each request's extensions for a [`PeerUnixStream`].
#[derive(Debug, Clone)]
pub struct UnixPeerInfo(pub Option<UnixPeer>);

impl tonic::transport::server::Connected for PeerUnixStream {
    type ConnectInfo = UnixPeerInfo;

    fn connect_info(&self) -> UnixPeerInfo {
        UnixPeerInfo(self.peer.clone())
    }
}

impl AsyncRead for PeerUnixStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerUnixStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Authenticates one call (every service: Launcher, health, reflection) before any
/// handler sees it, and attaches the [`Authenticated`] caller.
pub fn authenticate_call(
    policy: &AccessPolicy,
    mut req: Request<()>,
) -> Result<Request<()>, Status> {
    let admitted = if let Some(UnixPeerInfo(peer)) = req.extensions().get::<UnixPeerInfo>() {
        let peer = peer.as_ref().ok_or_else(|| {
            Status::unauthenticated("the kernel did not give this connection's credentials")
        })?;
        policy
            .admit_local(peer)
            .map_err(Status::permission_denied)?
    } else if let Some(certs) = req.peer_certs() {
        let leaf = certs.first().ok_or_else(|| {
            Status::unauthenticated("this TLS connection presented no client certificate")
        })?;
        policy
            .admit_certificate(leaf.as_ref())
            .map_err(Status::unauthenticated)?
    } else {
        return Err(Status::unauthenticated(
            "this call came neither over the Unix socket nor with a client certificate over mutual TLS",
        ));
    };
    req.extensions_mut().insert(admitted);
    Ok(req)
}

/// The authenticated caller of a request (fails closed when the call was not
/// authenticated, e.g. a service served without [`authenticate_call`]).
pub fn caller_of<T>(req: &Request<T>) -> Result<Authenticated, Status> {
    req.extensions()
        .get::<Authenticated>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("the caller of this call was not authenticated"))
}

/// The server side of mutual TLS for a TCP endpoint: PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// The server's certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA that issues client certificates: only its certificates are admitted.
    pub client_ca: PathBuf,
}

/// The client side of mutual TLS: PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// The client's certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA the server's certificate must chain to.
    pub server_ca: PathBuf,
}

/// Why a TLS configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {source}", path.display())]
pub struct TlsFileError {
    what: &'static str,
    path: PathBuf,
    source: std::io::Error,
}

fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    let bytes = std::fs::read(path).map_err(|source| TlsFileError {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(TlsFileError {
            what,
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not a PEM file"),
        });
    }
    Ok(bytes)
}

impl ServerTlsFiles {
    /// tonic's server TLS settings: client certificates required and checked against
    /// the client CA.
    pub fn load(&self) -> Result<tonic::transport::ServerTlsConfig, TlsFileError> {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let identity = Identity::from_pem(
            read_pem("the server certificate", &self.cert)?,
            read_pem("the server key", &self.key)?,
        );
        let ca = Certificate::from_pem(read_pem("the client CA", &self.client_ca)?);
        Ok(ServerTlsConfig::new()
            .identity(identity)
            .client_ca_root(ca)
            .client_auth_optional(false))
    }
}

impl ClientTlsFiles {
    /// tonic's client TLS settings.
    pub fn load(&self) -> Result<tonic::transport::ClientTlsConfig, TlsFileError> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let identity = Identity::from_pem(
            read_pem("the client certificate", &self.cert)?,
            read_pem("the client key", &self.key)?,
        );
        let ca = Certificate::from_pem(read_pem("the server CA", &self.server_ca)?);
        Ok(ClientTlsConfig::new().identity(identity).ca_certificate(ca))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> AccessPolicy {
        AccessPolicy {
            own_uid: 1000,
            own_uid_is_operator: true,
            allow_uids: vec![1001],
            allow_gids: vec![50],
            operator_uids: vec![],
            operator_gids: vec![60],
            operator_names: vec!["ops".into()],
        }
    }

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> UnixPeer {
        UnixPeer {
            uid,
            gid,
            groups: groups.to_vec(),
            pid: 7,
        }
    }

    #[test]
    fn local_peers_are_admitted_by_uid_gid_or_group_and_nobody_else() {
        let p = policy();
        let own = p.admit_local(&peer(1000, 1000, &[])).unwrap();
        assert!(own.operator, "the launcher's own uid is an operator");
        assert_eq!(own.caller.principal(), "uid:1000");
        let listed = p.admit_local(&peer(1001, 1001, &[])).unwrap();
        assert!(!listed.operator);
        assert!(p.admit_local(&peer(1002, 50, &[])).is_ok(), "primary gid");
        assert!(
            p.admit_local(&peer(1003, 1003, &[7, 50])).is_ok(),
            "supplementary"
        );
        let ops = p.admit_local(&peer(1004, 1004, &[60])).unwrap();
        assert!(ops.operator, "a member of an operator gid");
        let refused = p.admit_local(&peer(1005, 1005, &[1, 2])).unwrap_err();
        assert!(
            refused.contains("uid 1005") && refused.contains("--allow-uid 1005"),
            "{refused}"
        );
        // Ownership: a non-operator controls its own sessions only.
        assert!(listed.may_control("uid:1001"));
        assert!(!listed.may_control("uid:1000"));
        assert!(own.may_control("uid:1001"));
    }

    #[test]
    fn the_default_admits_only_the_launchers_uid() {
        let p = AccessPolicy::own_uid_only();
        assert!(!p.admits_other_local_users());
        let me = nix::unistd::geteuid().as_raw();
        assert!(p.admit_local(&peer(me, 0, &[])).is_ok());
        assert!(p.admit_local(&peer(me.wrapping_add(1), 0, &[0])).is_err());
        assert!(policy().admits_other_local_users());
    }

    #[test]
    fn calls_without_an_authenticated_transport_are_refused() {
        let e = authenticate_call(&policy(), Request::new(())).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        let mut r = Request::new(());
        r.extensions_mut().insert(UnixPeerInfo(None));
        assert_eq!(
            authenticate_call(&policy(), r).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let mut r = Request::new(());
        r.extensions_mut()
            .insert(UnixPeerInfo(Some(peer(9, 9, &[]))));
        assert_eq!(
            authenticate_call(&policy(), r).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert!(caller_of(&Request::new(())).is_err(), "fails closed");
    }

    #[test]
    fn a_certificate_names_its_caller_by_cn() {
        assert!(certificate_common_name(b"not der").is_err());
    }
}
