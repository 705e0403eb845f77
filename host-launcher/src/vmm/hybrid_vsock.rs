//! Hybrid vsock, host side: reaching a guest's vsock port through the Unix socket of
//! vhost-device-vsock (QEMU) or cloud-hypervisor, and the gRPC channel to the enforcer
//! over it.
//!
//! The protocol (Firecracker's, which both implement): connect to the Unix socket,
//! send `CONNECT <port>\n` in full, read `OK <host port>\n`; the stream is then the
//! guest's connection. Before the guest listens the daemon closes the connection or
//! says nothing, so the host retries until a deadline.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// How long one attempt waits for `OK`.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);
/// Pause between attempts.
const RETRY_EVERY: Duration = Duration::from_millis(25);

/// Why the guest port could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// Nothing answered before the deadline.
    #[error("guest vsock port {port} did not answer through {uds} within {waited_ms} ms (last error: {last}); see the VM's serial log {serial_log}")]
    Timeout {
        /// The port.
        port: u32,
        /// The hybrid vsock socket.
        uds: PathBuf,
        /// How long we tried.
        waited_ms: u128,
        /// The last failure.
        last: String,
        /// Where the guest's console went.
        serial_log: PathBuf,
    },
    /// The daemon answered something other than `OK`.
    #[error("guest vsock port {port}: unexpected handshake reply {reply:?}")]
    Handshake {
        /// The port.
        port: u32,
        /// What came back.
        reply: String,
    },
    /// The gRPC channel could not be set up over the connection.
    #[error("gRPC over vsock port {port}: {message}")]
    Channel {
        /// The port.
        port: u32,
        /// What failed.
        message: String,
    },
}

/// How one attempt ended.
enum Attempt {
    /// Connected to the guest's listener.
    Connected(UnixStream),
    /// Worth retrying: the daemon or the guest is not ready yet.
    NotYet(String),
    /// The daemon answered something that is not the protocol: retrying cannot help.
    Broken(String),
}

/// One attempt at the handshake.
async fn attempt(uds: &Path, port: u32) -> Attempt {
    let mut s = match UnixStream::connect(uds).await {
        Ok(s) => s,
        Err(e) => return Attempt::NotYet(e.to_string()),
    };
    if let Err(e) = s.write_all(format!("CONNECT {port}\n").as_bytes()).await {
        return Attempt::NotYet(e.to_string());
    }
    // Read the reply byte by byte: anything after the newline is the guest's data.
    let mut line = Vec::with_capacity(16);
    let read = async {
        loop {
            let mut b = [0u8; 1];
            match s.read(&mut b).await {
                Ok(0) => return Ok(false),
                Ok(_) if b[0] == b'\n' => return Ok(true),
                Ok(_) if line.len() < 64 => line.push(b[0]),
                Ok(_) => return Err(None),
                Err(e) => return Err(Some(e.to_string())),
            }
        }
    };
    match tokio::time::timeout(ATTEMPT_TIMEOUT, read).await {
        Err(_) => Attempt::NotYet("no handshake reply".into()),
        Ok(Err(Some(e))) => Attempt::NotYet(e),
        Ok(Err(None)) => Attempt::Broken("handshake reply longer than 64 bytes".into()),
        Ok(Ok(false)) => {
            Attempt::NotYet("the guest closed the connection (not listening yet)".into())
        }
        Ok(Ok(true)) => {
            let reply = String::from_utf8_lossy(&line).into_owned();
            if reply.starts_with("OK ") {
                Attempt::Connected(s)
            } else {
                Attempt::Broken(reply)
            }
        }
    }
}

/// Connects to the guest's `port`, retrying until `deadline`.
pub async fn connect_guest_port(
    uds: &Path,
    port: u32,
    deadline: Instant,
    serial_log: &Path,
) -> Result<UnixStream, VsockError> {
    let start = Instant::now();
    loop {
        let last = match attempt(uds, port).await {
            Attempt::Connected(s) => return Ok(s),
            Attempt::Broken(reply) => return Err(VsockError::Handshake { port, reply }),
            Attempt::NotYet(why) => why,
        };
        if Instant::now() + RETRY_EVERY >= deadline {
            return Err(VsockError::Timeout {
                port,
                uds: uds.to_path_buf(),
                waited_ms: start.elapsed().as_millis(),
                last,
                serial_log: serial_log.to_path_buf(),
            });
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}

/// A gRPC channel to the guest's `port`; the first connection is made (with retries)
/// before this returns.
pub async fn grpc_channel(
    uds: &Path,
    port: u32,
    deadline: Instant,
    serial_log: &Path,
) -> Result<tonic::transport::Channel, VsockError> {
    // The first connection proves the guest is there and names the serial log if not.
    let first = connect_guest_port(uds, port, deadline, serial_log).await?;
    let first = std::sync::Mutex::new(Some(first));
    let (uds, serial) = (uds.to_path_buf(), serial_log.to_path_buf());
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let reuse = first.lock().unwrap_or_else(|p| p.into_inner()).take();
        let (uds, serial) = (uds.clone(), serial.clone());
        async move {
            let stream = match reuse {
                Some(s) => s,
                None => {
                    let again = Instant::now() + Duration::from_secs(10);
                    connect_guest_port(&uds, port, again, &serial)
                        .await
                        .map_err(std::io::Error::other)?
                }
            };
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    tonic::transport::Endpoint::from_static("http://guest.vsock")
        .connect_with_connector(connector)
        .await
        .map_err(|e| VsockError::Channel {
            port,
            message: e.to_string(),
        })
}
