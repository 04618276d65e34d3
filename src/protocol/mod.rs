//! The PostgreSQL wire protocol (v3) as usher needs it: frame splitting on raw buffers, the
//! startup packet, builders for the few messages usher writes itself, and lazy readers for the
//! fields routing and prepared-statement rewriting look at. Bodies stay as [`bytes::Bytes`];
//! nothing on the data path is decoded that is merely forwarded.

pub mod client;
pub mod extended;
pub mod frame;
pub mod messages;
pub mod server;
pub mod startup;

#[cfg(test)]
mod robustness;

pub use frame::{peek_header, split_frame, Frame};

/// Something in a message was not valid protocol.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// A length field was negative, too small for its header, or beyond the configured maximum.
    #[error("invalid message length {len} for message type {tag:?} (maximum {max})")]
    BadLength {
        /// Message type byte (`'\0'` for startup packets).
        tag: char,
        /// The length read.
        len: i64,
        /// The configured maximum.
        max: usize,
    },
    /// A message type byte usher does not know in this direction.
    #[error("unknown message type {0:?}")]
    UnknownType(char),
    /// A message body was shorter than its fields or a string lacked its terminator.
    #[error("malformed {what} message")]
    Malformed {
        /// Which message.
        what: &'static str,
    },
    /// A message arrived where the protocol does not allow it.
    #[error("protocol violation: {0}")]
    Violation(String),
}

/// Reads a NUL-terminated string starting at `pos`; returns it and the position after the NUL.
pub fn read_cstr<'a>(
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
) -> Result<(&'a [u8], usize), ProtocolError> {
    let rest = buf.get(pos..).ok_or(ProtocolError::Malformed { what })?;
    // An empty string (the unnamed statement or portal, most names on the wire) is one
    // compare; otherwise memchr (SIMD), which benches/profile.sh measured cheaper per
    // transaction than a byte loop and than a loop-then-memchr hybrid.
    let end = if rest.first() == Some(&0) {
        0
    } else {
        memchr::memchr(0, rest).ok_or(ProtocolError::Malformed { what })?
    };
    let s = rest.get(..end).ok_or(ProtocolError::Malformed { what })?;
    Ok((s, pos + end + 1))
}
