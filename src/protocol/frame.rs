//! Cutting whole frames off a receive buffer without copying.
//!
//! A regular message is `tag:u8 len:i32 body`, where `len` counts itself but not the tag.
//! [`split_frame`] checks the length against a maximum before waiting for the body, so a
//! client announcing a 2 GB message is refused at once instead of being buffered.

use bytes::{Buf, Bytes, BytesMut};

use super::ProtocolError;

/// One complete message: the raw bytes including tag and length, ready to forward as is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The message type byte.
    pub tag: u8,
    /// The whole message, header included.
    pub raw: Bytes,
}

impl Frame {
    /// The body after the 5-byte header.
    pub fn body(&self) -> &[u8] {
        self.raw.get(5..).unwrap_or_default()
    }

    /// The body as a zero-copy handle.
    pub fn body_bytes(&self) -> Bytes {
        self.raw.slice(5.min(self.raw.len())..)
    }

    /// Builds a frame from a tag and body (used for messages usher writes itself).
    pub fn new(tag: u8, body: &[u8]) -> Frame {
        let mut raw = BytesMut::with_capacity(5 + body.len());
        raw.extend_from_slice(&[tag]);
        raw.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        raw.extend_from_slice(body);
        Frame {
            tag,
            raw: raw.freeze(),
        }
    }
}

/// Reads the header at the front of `buf`: (tag, total frame length including tag).
pub fn peek_header(buf: &[u8], max: usize) -> Result<Option<(u8, usize)>, ProtocolError> {
    let Some(&[tag, a, b, c, d]) = buf.get(..5) else {
        return Ok(None);
    };
    let len = i32::from_be_bytes([a, b, c, d]);
    if len < 4 || len as usize > max {
        return Err(ProtocolError::BadLength {
            tag: tag as char,
            len: len as i64,
            max,
        });
    }
    Ok(Some((tag, len as usize + 1)))
}

/// Cuts one whole frame off the front of `buf`, or returns `None` if it is not all there yet.
pub fn split_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, ProtocolError> {
    match peek_header(buf, max)? {
        Some((tag, total)) if buf.len() >= total => Ok(Some(Frame {
            tag,
            raw: buf.split_to(total).freeze(),
        })),
        Some((_, total)) => {
            buf.reserve(total - buf.len());
            Ok(None)
        }
        None => Ok(None),
    }
}

/// Skips `n` bytes at the front of `buf` (for swallowed frames).
pub fn skip(buf: &mut BytesMut, n: usize) {
    buf.advance(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_in_pieces() {
        let f = Frame::new(b'Q', b"SELECT 1\0");
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&f.raw);
        wire.extend_from_slice(&f.raw[..3]);
        let got = split_frame(&mut wire, 1 << 20).unwrap().unwrap();
        assert_eq!(got, f);
        assert_eq!(got.body(), b"SELECT 1\0");
        assert!(split_frame(&mut wire, 1 << 20).unwrap().is_none());
        wire.extend_from_slice(&f.raw[3..]);
        assert_eq!(split_frame(&mut wire, 1 << 20).unwrap().unwrap(), f);
        assert!(wire.is_empty());
    }

    #[test]
    fn rejects_bad_lengths_before_body_arrives() {
        let mut neg = BytesMut::from(&[b'Q', 0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            split_frame(&mut neg, 100),
            Err(ProtocolError::BadLength { .. })
        ));
        let mut small = BytesMut::from(&[b'Q', 0, 0, 0, 3][..]);
        assert!(split_frame(&mut small, 100).is_err());
        let mut huge = BytesMut::from(&[b'Q', 0x7f, 0, 0, 0][..]);
        assert!(split_frame(&mut huge, 1 << 20).is_err());
    }

    #[test]
    fn empty_body_frame() {
        let mut wire = BytesMut::from(&[b'S', 0, 0, 0, 4][..]);
        let f = split_frame(&mut wire, 100).unwrap().unwrap();
        assert_eq!((f.tag, f.body().len()), (b'S', 0));
    }
}
