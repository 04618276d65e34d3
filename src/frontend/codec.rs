//! The client socket with its receive buffer: frames are cut whole off the buffer, and writes
//! go out as given (raw bytes, no re-encoding).

use std::net::SocketAddr;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::FrontendError;
use crate::protocol::{messages, split_frame, Frame};

/// A client connection.
pub struct ClientIo {
    /// The socket.
    pub stream: TcpStream,
    /// Bytes received and not yet processed.
    pub rbuf: BytesMut,
    /// Largest message accepted.
    pub max_message: usize,
    /// The client's address.
    pub peer: SocketAddr,
}

impl ClientIo {
    /// Wraps an accepted socket.
    pub fn new(stream: TcpStream, peer: SocketAddr, max_message: usize) -> ClientIo {
        let _ = stream.set_nodelay(true);
        ClientIo {
            stream,
            rbuf: BytesMut::with_capacity(8 * 1024),
            max_message,
            peer,
        }
    }

    /// Reads more bytes; `Ok(0)` means the client closed the connection.
    pub async fn fill(&mut self) -> std::io::Result<usize> {
        if self.rbuf.capacity() - self.rbuf.len() < 4096 {
            self.rbuf.reserve(16 * 1024);
        }
        self.stream.read_buf(&mut self.rbuf).await
    }

    /// Reads the next whole frame; `None` at end of stream.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, FrontendError> {
        loop {
            if let Some(f) = split_frame(&mut self.rbuf, self.max_message)? {
                return Ok(Some(f));
            }
            if self.fill().await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Writes bytes to the client.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Sends an ErrorResponse with severity FATAL (best effort: the connection is closing).
    pub async fn fatal(&mut self, code: &str, message: &str) {
        let e = messages::error_response("FATAL", code, message, None);
        let _ = self.stream.write_all(&e).await;
        let _ = self.stream.flush().await;
    }
}
