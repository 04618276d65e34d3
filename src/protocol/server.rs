//! Lazy views over the server messages usher reads rather than merely forwards:
//! ErrorResponse / NoticeResponse, ReadyForQuery, ParameterStatus, CommandComplete and
//! RowDescription, plus [`frame_at`] to look at one whole frame in a receive buffer without
//! cutting it. Every length is checked when the view is built; a server that sends a short,
//! negative or truncated length gets a [`ProtocolError`], never a slice out of range.

use super::frame::peek_header;
use super::messages::ErrorFields;
use super::{read_cstr, ProtocolError};

/// A whole frame found at the front of a buffer: its tag and body, and its total length.
#[derive(Debug, Clone, Copy)]
pub struct FrameAt<'a> {
    /// Message type.
    pub tag: u8,
    /// The body after the 5-byte header.
    pub body: &'a [u8],
    /// Header and body length (what to advance past it).
    pub total: usize,
}

/// The frame at the front of `buf` if it has arrived whole; `Ok(None)` while it is still
/// arriving; an error when its length field is impossible (below 4 or above `max`).
pub fn frame_at(buf: &[u8], max: usize) -> Result<Option<FrameAt<'_>>, ProtocolError> {
    let Some((tag, total)) = peek_header(buf, max)? else {
        return Ok(None);
    };
    Ok(buf.get(5..total).map(|body| FrameAt { tag, body, total }))
}

/// ErrorResponse or NoticeResponse: its severity, SQLSTATE and message.
pub fn error_fields(body: &[u8]) -> ErrorFields {
    ErrorFields::parse(body)
}

/// True when an ErrorResponse body is FATAL or PANIC (the server closes after it).
pub fn is_fatal(fields: &ErrorFields) -> bool {
    fields.severity == "FATAL" || fields.severity == "PANIC"
}

/// ReadyForQuery: the transaction status byte (`I`, `T` or `E`).
pub fn ready_status(body: &[u8]) -> Result<u8, ProtocolError> {
    match body {
        [s @ (b'I' | b'T' | b'E')] => Ok(*s),
        _ => Err(ProtocolError::Malformed {
            what: "ReadyForQuery",
        }),
    }
}

/// Rewrites the status byte of the whole ReadyForQuery frame at the front of `frame` (the
/// tag, length and status); does nothing to anything else.
pub fn set_ready_status(frame: &mut [u8], status: u8) {
    if let [b'Z', 0, 0, 0, 5, s, ..] = frame {
        *s = status;
    }
}

/// ParameterStatus: (name, value).
pub fn parameter_status(body: &[u8]) -> Result<(String, String), ProtocolError> {
    let what = "ParameterStatus";
    let (name, next) = read_cstr(body, 0, what)?;
    let (value, _) = read_cstr(body, next, what)?;
    Ok((
        String::from_utf8_lossy(name).into_owned(),
        String::from_utf8_lossy(value).into_owned(),
    ))
}

/// CommandComplete: the command tag (`SELECT 3`, `INSERT 0 1`, ...).
pub fn command_tag(body: &[u8]) -> Result<&[u8], ProtocolError> {
    read_cstr(body, 0, "CommandComplete").map(|(tag, _)| tag)
}

/// RowDescription: the number of columns it describes.
pub fn row_description_columns(body: &[u8]) -> Result<usize, ProtocolError> {
    match body {
        [a, b, ..] => {
            usize::try_from(i16::from_be_bytes([*a, *b])).map_err(|_| ProtocolError::Malformed {
                what: "RowDescription",
            })
        }
        _ => Err(ProtocolError::Malformed {
            what: "RowDescription",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::messages;

    #[test]
    fn short_and_negative_lengths_are_errors() {
        // Length 0..3 and negative lengths: never a slice.
        for len in [0i32, 1, 3, -1, i32::MIN] {
            let mut buf = vec![b'E'];
            buf.extend_from_slice(&len.to_be_bytes());
            buf.extend_from_slice(b"SFATAL\0\0");
            assert!(frame_at(&buf, 1 << 20).is_err(), "{len}");
        }
        let empty = [b'E', 0, 0, 0, 4];
        let f = frame_at(&empty, 100).unwrap().unwrap();
        assert_eq!((f.tag, f.body.len(), f.total), (b'E', 0, 5));
        assert_eq!(error_fields(f.body), ErrorFields::default());
        assert!(frame_at(&[b'E', 0, 0, 0, 9, b'S'], 100).unwrap().is_none());
    }

    #[test]
    fn fatal_round_trip() {
        let raw = messages::error_response("FATAL", "57P01", "bye", None);
        let f = frame_at(&raw, 1 << 20).unwrap().unwrap();
        let fields = error_fields(f.body);
        assert!(is_fatal(&fields));
        assert_eq!(fields.code, "57P01");
    }

    #[test]
    fn small_views() {
        assert_eq!(ready_status(b"T").unwrap(), b'T');
        assert!(ready_status(b"").is_err());
        assert!(ready_status(b"X").is_err());
        assert!(ready_status(b"II").is_err());
        assert_eq!(
            parameter_status(b"TimeZone\0UTC\0").unwrap(),
            ("TimeZone".into(), "UTC".into())
        );
        assert!(parameter_status(b"TimeZone\0UTC").is_err());
        assert_eq!(command_tag(b"SELECT 1\0").unwrap(), b"SELECT 1");
        assert_eq!(row_description_columns(&[0, 2]).unwrap(), 2);
        assert!(row_description_columns(&[0xff, 0xff]).is_err());
        assert!(row_description_columns(&[0]).is_err());
    }
}
