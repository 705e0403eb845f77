//! Framing of the egress streams' first messages (`EgressOpen`, `EgressVerdict` in
//! `host.proto`): a 4-byte big-endian length, then the protobuf message. After the
//! verdict a stream is the connection's raw bytes, so there is exactly one frame each
//! way and no codec beyond this.

use prost::Message;
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest first frame either side accepts: a name is at most 253 bytes, a reason a
/// few hundred; anything bigger is not a peer speaking this protocol.
pub const MAX_FRAME: usize = 8 * 1024;

/// Writes `msg` as one frame.
pub async fn write_frame<W: AsyncWrite + Unpin, M: Message>(w: &mut W, msg: &M) -> io::Result<()> {
    let body = msg.encode_to_vec();
    if body.len() > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("egress frame of {} bytes exceeds {MAX_FRAME}", body.len()),
        ));
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf).await?;
    w.flush().await
}

/// Reads one frame and decodes it as `M`; a frame over [`MAX_FRAME`] or one that does
/// not decode is an `InvalidData` error naming which.
pub async fn read_frame<R: AsyncRead + Unpin, M: Message + Default>(r: &mut R) -> io::Result<M> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("egress frame of {len} bytes exceeds {MAX_FRAME}"),
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    M::decode(body.as_slice()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("egress frame does not decode: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{EgressOpen, EgressVerdict, EgressVia, Verdict};

    #[tokio::test]
    async fn frames_round_trip_and_oversized_frames_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        let open = EgressOpen {
            session_id: "s".into(),
            session_secret: vec![1; 32],
            host: "example.com".into(),
            port: 443,
            via: EgressVia::Transparent as i32,
            address: String::new(),
        };
        write_frame(&mut a, &open).await.unwrap();
        let got: EgressOpen = read_frame(&mut b).await.unwrap();
        assert_eq!(got, open);

        a.write_all(&(MAX_FRAME as u32 + 1).to_be_bytes())
            .await
            .unwrap();
        let err = read_frame::<_, EgressVerdict>(&mut b).await.unwrap_err();
        assert!(err.to_string().contains("exceeds"), "{err}");

        let huge = EgressVerdict {
            verdict: Verdict::Deny as i32,
            reason: "x".repeat(MAX_FRAME + 1),
            ..Default::default()
        };
        assert!(write_frame(&mut a, &huge).await.is_err());
    }
}
