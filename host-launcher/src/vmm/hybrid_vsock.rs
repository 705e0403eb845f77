//! Hybrid vsock, host side: reaching a guest's vsock port through the Unix socket of
//! vhost-device-vsock (QEMU) or cloud-hypervisor, and the gRPC channel to the enforcer
//! over it.
//!
//! The protocol (Firecracker's, which both implement): connect to the Unix socket,
//! send `CONNECT <port>\n` in full, read `OK <host port>\n`; the stream is then the
//! guest's connection. Before the guest listens the daemon closes the connection (the
//! guest refused it) or says nothing (the guest's driver is not up yet), so the host
//! retries until a deadline, never closing a request the guest may still accept.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::task::JoinSet;

/// How long the attempts in flight may all go unanswered before another is started
/// beside them (a request can wait in the daemon's queue until the guest's vsock driver
/// is up; a starved TCG guest can take seconds to answer one).
const STALLED_AFTER: Duration = Duration::from_secs(1);
/// Attempts in flight at most.
const MAX_IN_FLIGHT: usize = 4;
/// Pause after an attempt the guest refused before the next.
const RETRY_EVERY: Duration = Duration::from_millis(25);
/// How long a connection no longer needed is held open for its reply before it is
/// closed (see [`InFlight`]).
const HOLD_FOR: Duration = Duration::from_secs(30);

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

/// One attempt at the handshake. It waits for the reply however long it takes: the
/// caller bounds it, and never closes it unanswered (see [`InFlight`]).
async fn attempt(uds: PathBuf, port: u32) -> Attempt {
    let mut s = match UnixStream::connect(&uds).await {
        Ok(s) => s,
        Err(e) => return Attempt::NotYet(e.to_string()),
    };
    if let Err(e) = s.write_all(format!("CONNECT {port}\n").as_bytes()).await {
        return Attempt::NotYet(e.to_string());
    }
    // Read the reply byte by byte: anything after the newline is the guest's data.
    let mut line = Vec::with_capacity(16);
    let read = loop {
        let mut b = [0u8; 1];
        match s.read(&mut b).await {
            Ok(0) => break Ok(false),
            Ok(_) if b[0] == b'\n' => break Ok(true),
            Ok(_) if line.len() < 64 => line.push(b[0]),
            Ok(_) => break Err(None),
            Err(e) => break Err(Some(e.to_string())),
        }
    };
    match read {
        Err(Some(e)) => Attempt::NotYet(e),
        Err(None) => Attempt::Broken("handshake reply longer than 64 bytes".into()),
        Ok(false) => Attempt::NotYet("the guest closed the connection (not listening yet)".into()),
        Ok(true) => {
            let reply = String::from_utf8_lossy(&line).into_owned();
            if reply.starts_with("OK ") {
                Attempt::Connected(s)
            } else {
                Attempt::Broken(reply)
            }
        }
    }
}

/// The attempts in flight. Dropping it (a connection made, an error, or the caller's
/// future dropped) keeps those still unanswered open until each has its reply, or
/// [`HOLD_FOR`] has passed, and only then closes them.
///
/// vhost-device-vsock (0.3) writes `OK` to the host's stream when the guest accepts,
/// and its worker thread panics if that stream is already closed (`EPIPE` unwrapped).
/// The VM's whole vsock then goes silent: every later `CONNECT`, the session's own
/// included, waits forever. So a `CONNECT` is never closed while the guest may still
/// accept it; one that got its `OK` (or the guest's refusal) is safe to close.
#[derive(Default)]
struct InFlight(JoinSet<Attempt>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut rest = std::mem::take(&mut self.0);
        if rest.is_empty() {
            return;
        }
        // Outside a runtime the tasks are gone already (the runtime dropped them).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = tokio::time::timeout(HOLD_FOR, async {
                    while rest.join_next().await.is_some() {}
                })
                .await;
            });
        }
    }
}

/// Connects to the guest's `port`, retrying until `deadline`.
///
/// A request the guest has not answered stays open: a slow guest is waited for, not
/// abandoned (see [`InFlight`]). When all attempts in flight have been
/// unanswered for [`STALLED_AFTER`], another starts beside them, up to
/// [`MAX_IN_FLIGHT`], in case a request was lost before the guest's driver came up.
pub async fn connect_guest_port(
    uds: &Path,
    port: u32,
    deadline: Instant,
    serial_log: &Path,
) -> Result<UnixStream, VsockError> {
    let start = Instant::now();
    let deadline = tokio::time::Instant::from_std(deadline);
    let mut in_flight = InFlight::default();
    in_flight.0.spawn(attempt(uds.to_path_buf(), port));
    let mut another_at = tokio::time::Instant::now() + STALLED_AFTER;
    let mut last = String::new();
    let timeout = |last: String, waiting: usize| VsockError::Timeout {
        port,
        uds: uds.to_path_buf(),
        waited_ms: start.elapsed().as_millis(),
        last: match waiting {
            0 => last,
            n => format!("no handshake reply on {n} connection(s) still waiting"),
        },
        serial_log: serial_log.to_path_buf(),
    };
    loop {
        tokio::select! {
            done = in_flight.0.join_next() => {
                let outcome = match done {
                    Some(Ok(outcome)) => outcome,
                    Some(Err(e)) => Attempt::NotYet(format!("attempt task: {e}")),
                    None => Attempt::NotYet("no attempt in flight".into()),
                };
                match outcome {
                    Attempt::Connected(s) => return Ok(s),
                    Attempt::Broken(reply) => return Err(VsockError::Handshake { port, reply }),
                    Attempt::NotYet(why) => last = why,
                }
                if in_flight.0.is_empty() {
                    if tokio::time::Instant::now() + RETRY_EVERY >= deadline {
                        return Err(timeout(last, 0));
                    }
                    tokio::time::sleep(RETRY_EVERY).await;
                    in_flight.0.spawn(attempt(uds.to_path_buf(), port));
                    another_at = tokio::time::Instant::now() + STALLED_AFTER;
                }
            }
            _ = tokio::time::sleep_until(another_at) => {
                if in_flight.0.len() < MAX_IN_FLIGHT {
                    in_flight.0.spawn(attempt(uds.to_path_buf(), port));
                }
                another_at = tokio::time::Instant::now() + STALLED_AFTER;
            }
            _ = tokio::time::sleep_until(deadline) => {
                return Err(timeout(last, in_flight.0.len()));
            }
        }
    }
}

/// Waits until the enforcer says on the console (`serial_log`) that it listens: a
/// `CONNECT` made while the guest's vsock driver is still coming up can hang the
/// guest's device setup for good (see the README's "The host channel"), and CI saw
/// exactly that from tests that dialled at once.
async fn wait_for_listening_line(
    port: u32,
    uds: &Path,
    deadline: Instant,
    serial_log: &Path,
) -> Result<(), VsockError> {
    let start = Instant::now();
    loop {
        if crate::vmm::read_console(serial_log).contains(airlock_proto::ENFORCER_LISTENING_LINE) {
            return Ok(());
        }
        if Instant::now() + RETRY_EVERY >= deadline {
            return Err(VsockError::Timeout {
                port,
                uds: uds.to_path_buf(),
                waited_ms: start.elapsed().as_millis(),
                last: format!(
                    "the console never said `{}`, so no connection was tried",
                    airlock_proto::ENFORCER_LISTENING_LINE
                ),
                serial_log: serial_log.to_path_buf(),
            });
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}

/// A gRPC channel to the guest's `port`; the first connection is made (with retries),
/// once the enforcer has said on the console that it listens, before this returns.
pub async fn grpc_channel(
    uds: &Path,
    port: u32,
    deadline: Instant,
    serial_log: &Path,
) -> Result<tonic::transport::Channel, VsockError> {
    wait_for_listening_line(port, uds, deadline, serial_log).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::io::AsyncBufReadExt;
    use tokio::net::UnixListener;

    /// How a stand-in daemon answers its n-th connection (0-based).
    #[derive(Clone, Copy)]
    enum Answer {
        /// Close it: the guest refused (not listening yet).
        Refuse,
        /// `OK` after this long.
        OkAfter(Duration),
        /// Something that is not the protocol.
        Garbage,
        /// Nothing, ever.
        Silence,
    }

    /// What the stand-in saw: per connection, whether the host had already closed it
    /// when the reply was due.
    #[derive(Default)]
    struct Seen {
        connections: usize,
        closed_before_reply: Vec<usize>,
    }

    /// A stand-in for vhost-device-vsock's host side: reads `CONNECT <port>`, then
    /// answers as `answer(n)` says. Before an `OK` it checks that the host still holds
    /// the connection: the real daemon's worker panics writing to a closed one.
    fn stand_in_daemon(
        dir: &Path,
        answer: impl Fn(usize) -> Answer + Send + 'static,
    ) -> (PathBuf, Arc<Mutex<Seen>>) {
        let uds = dir.join("vsock");
        let listener = UnixListener::bind(&uds).unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                let n = {
                    let mut g = seen2.lock().unwrap();
                    g.connections += 1;
                    g.connections - 1
                };
                let how = answer(n);
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let mut s = tokio::io::BufReader::new(s);
                    let mut line = String::new();
                    s.read_line(&mut line).await.unwrap();
                    assert_eq!(line, "CONNECT 1024\n");
                    match how {
                        Answer::Refuse => {}
                        Answer::Garbage => s.get_mut().write_all(b"NO\n").await.unwrap(),
                        Answer::Silence => std::future::pending::<()>().await,
                        Answer::OkAfter(d) => {
                            tokio::time::sleep(d).await;
                            // A closed peer reads as EOF at once; an open one has
                            // nothing to say yet.
                            let mut b = [0u8; 1];
                            let closed = matches!(
                                tokio::time::timeout(Duration::from_millis(50), s.read(&mut b))
                                    .await,
                                Ok(Ok(0)) | Ok(Err(_))
                            );
                            if closed {
                                seen.lock().unwrap().closed_before_reply.push(n);
                            }
                            let _ = s.get_mut().write_all(b"OK 1024\n").await;
                            let _ = s.read(&mut b).await;
                        }
                    }
                });
            }
        });
        (uds, seen)
    }

    fn deadline_in(secs: u64) -> Instant {
        Instant::now() + Duration::from_secs(secs)
    }

    #[tokio::test]
    async fn a_slow_guest_is_waited_for_and_no_request_is_closed_unanswered() {
        let dir = tempfile::tempdir().unwrap();
        // The first request is answered after 2.5 s (a starved TCG guest); the ones
        // started beside it meanwhile are answered later still.
        let (uds, seen) = stand_in_daemon(dir.path(), |n| {
            Answer::OkAfter(Duration::from_millis(2500 + 500 * n as u64))
        });
        let mut s = connect_guest_port(&uds, 1024, deadline_in(20), Path::new("serial"))
            .await
            .unwrap();
        s.write_all(b"x").await.unwrap();
        // Give the others time to be answered: they must still be held open then.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let g = seen.lock().unwrap();
        assert!(
            (2..=MAX_IN_FLIGHT).contains(&g.connections),
            "{} connections",
            g.connections
        );
        assert!(
            g.closed_before_reply.is_empty(),
            "requests closed before the guest's reply: {:?}",
            g.closed_before_reply
        );
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_leaves_no_request_closed_unanswered() {
        let dir = tempfile::tempdir().unwrap();
        let (uds, seen) =
            stand_in_daemon(dir.path(), |_| Answer::OkAfter(Duration::from_millis(2500)));
        let gave_up = tokio::time::timeout(
            Duration::from_millis(1500),
            connect_guest_port(&uds, 1024, deadline_in(20), Path::new("serial")),
        )
        .await;
        assert!(gave_up.is_err(), "connected before the reply was due");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let g = seen.lock().unwrap();
        assert_eq!(
            g.connections, 2,
            "one attempt, then one more after a second"
        );
        assert!(
            g.closed_before_reply.is_empty(),
            "requests closed before the guest's reply: {:?}",
            g.closed_before_reply
        );
    }

    #[tokio::test]
    async fn refusals_are_retried_until_the_guest_listens() {
        let dir = tempfile::tempdir().unwrap();
        let (uds, seen) = stand_in_daemon(dir.path(), |n| match n {
            0..=4 => Answer::Refuse,
            _ => Answer::OkAfter(Duration::ZERO),
        });
        connect_guest_port(&uds, 1024, deadline_in(10), Path::new("serial"))
            .await
            .unwrap();
        assert_eq!(seen.lock().unwrap().connections, 6);
    }

    #[tokio::test]
    async fn a_silent_guest_times_out_naming_the_waiting_requests_and_the_serial_log() {
        let dir = tempfile::tempdir().unwrap();
        let (uds, seen) = stand_in_daemon(dir.path(), |_| Answer::Silence);
        let deadline = Instant::now() + Duration::from_millis(2500);
        let e = connect_guest_port(&uds, 1024, deadline, Path::new("/x/serial.log"))
            .await
            .unwrap_err()
            .to_string();
        // Attempts start 0 s, 1 s and 2 s in, and every one is still waiting.
        let n = seen.lock().unwrap().connections;
        assert!((2..=MAX_IN_FLIGHT).contains(&n), "{n} connections");
        assert!(
            e.contains("did not answer")
                && e.contains(&format!(
                    "no handshake reply on {n} connection(s) still waiting"
                ))
                && e.contains("/x/serial.log"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_daemon_that_does_not_speak_the_protocol_is_an_error_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (uds, _) = stand_in_daemon(dir.path(), |_| Answer::Garbage);
        let e = connect_guest_port(&uds, 1024, deadline_in(10), Path::new("serial"))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("unexpected handshake reply \"NO\""), "{e}");
    }

    #[tokio::test]
    async fn a_channel_is_not_dialled_before_the_enforcer_says_it_listens() {
        let dir = tempfile::tempdir().unwrap();
        let (uds, seen) = stand_in_daemon(dir.path(), |_| Answer::OkAfter(Duration::ZERO));
        let serial = dir.path().join("serial.log");
        std::fs::write(&serial, "booting\n").unwrap();
        let e = grpc_channel(
            &uds,
            1024,
            Instant::now() + Duration::from_millis(500),
            &serial,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("the console never said"), "{e}");
        assert_eq!(seen.lock().unwrap().connections, 0, "dialled too early");
        // Once the line is there, the channel comes up.
        let line = format!("{} 1024\n", airlock_proto::ENFORCER_LISTENING_LINE);
        std::fs::write(&serial, format!("booting\n{line}")).unwrap();
        grpc_channel(&uds, 1024, deadline_in(10), &serial)
            .await
            .unwrap();
        assert_eq!(seen.lock().unwrap().connections, 1);
    }

    #[tokio::test]
    async fn no_daemon_socket_yet_is_retried_until_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let e = connect_guest_port(
            &dir.path().join("absent"),
            1024,
            Instant::now() + Duration::from_millis(300),
            Path::new("serial"),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("No such file or directory"), "{e}");
    }
}
