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

/// One column of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field<'a> {
    /// Column name.
    pub name: &'a [u8],
    /// Type OID.
    pub type_oid: u32,
    /// Format code: 0 text, 1 binary.
    pub format: i16,
}

/// RowDescription: every column's name, type and format.
pub fn row_description(body: &[u8]) -> Result<Vec<Field<'_>>, ProtocolError> {
    let what = "RowDescription";
    let bad = || ProtocolError::Malformed { what };
    let n = row_description_columns(body)?;
    let mut at = 2;
    let mut fields = Vec::with_capacity(n);
    for _ in 0..n {
        let (name, next) = read_cstr(body, at, what)?;
        // table oid (4), attnum (2), type oid (4), typlen (2), typmod (4), format (2)
        let rest = body.get(next..next + 18).ok_or_else(bad)?;
        let word = |i: usize| rest.get(i..i + 4).and_then(|w| <[u8; 4]>::try_from(w).ok());
        let type_oid = u32::from_be_bytes(word(6).ok_or_else(bad)?);
        let format = rest
            .get(16..18)
            .and_then(|f| <[u8; 2]>::try_from(f).ok())
            .map(i16::from_be_bytes)
            .ok_or_else(bad)?;
        fields.push(Field {
            name,
            type_oid,
            format,
        });
        at = next + 18;
    }
    if at != body.len() {
        return Err(bad());
    }
    Ok(fields)
}

/// A whole RowDescription frame with only the first `n` columns of `body` (a
/// RowDescription's body): what the client gets when the shards return hidden columns after
/// its own.
pub fn row_description_prefix(body: &[u8], n: usize) -> Result<bytes::Bytes, ProtocolError> {
    let what = "RowDescription";
    let bad = || ProtocolError::Malformed { what };
    if row_description_columns(body)? < n {
        return Err(bad());
    }
    let mut at = 2;
    for _ in 0..n {
        let (_, next) = read_cstr(body, at, what)?;
        at = next
            .checked_add(18)
            .filter(|e| *e <= body.len())
            .ok_or_else(bad)?;
    }
    let fields = body.get(2..at).ok_or_else(bad)?;
    let count = i16::try_from(n).map_err(|_| bad())?;
    let len = i32::try_from(4 + 2 + fields.len()).map_err(|_| bad())?;
    let mut out = bytes::BytesMut::with_capacity(fields.len() + 7);
    out.extend_from_slice(b"T");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    out.extend_from_slice(fields);
    Ok(out.freeze())
}

/// A whole RowDescription frame like `body` (a RowDescription's body) with every format
/// code 0: how a statement (not a portal) is described, before result formats are chosen.
pub fn row_description_unformatted(body: &[u8]) -> Result<bytes::Bytes, ProtocolError> {
    let what = "RowDescription";
    let bad = || ProtocolError::Malformed { what };
    let n = row_description_columns(body)?;
    let mut out = bytes::BytesMut::with_capacity(body.len() + 5);
    out.extend_from_slice(b"T");
    out.extend_from_slice(
        &i32::try_from(body.len() + 4)
            .map_err(|_| bad())?
            .to_be_bytes(),
    );
    out.extend_from_slice(body);
    let mut at = 2;
    for _ in 0..n {
        let (_, next) = read_cstr(body, at, what)?;
        let format = next
            .checked_add(16)
            .filter(|f| f + 2 <= body.len())
            .ok_or_else(bad)?;
        if let Some(f) = out.get_mut(5 + format..5 + format + 2) {
            f.copy_from_slice(&[0, 0]);
        }
        at = next + 18;
    }
    Ok(out.freeze())
}

/// DataRow: the value of column `index` (None = NULL), checking every length up to it.
pub fn data_row_value(body: &[u8], index: usize) -> Result<Option<&[u8]>, ProtocolError> {
    let bad = || ProtocolError::Malformed { what: "DataRow" };
    let count = body
        .get(..2)
        .and_then(|c| <[u8; 2]>::try_from(c).ok())
        .map(i16::from_be_bytes)
        .ok_or_else(bad)?;
    if usize::try_from(count).map_or(true, |c| index >= c) {
        return Err(bad());
    }
    let mut at = 2;
    for i in 0..=index {
        let len = body
            .get(at..at + 4)
            .and_then(|l| <[u8; 4]>::try_from(l).ok())
            .map(i32::from_be_bytes)
            .ok_or_else(bad)?;
        at += 4;
        let value = match usize::try_from(len) {
            Err(_) if len == -1 => None,
            Err(_) => return Err(bad()),
            Ok(n) => {
                let v = body.get(at..at + n).ok_or_else(bad)?;
                at += n;
                Some(v)
            }
        };
        if i == index {
            return Ok(value);
        }
    }
    Err(bad())
}

/// CommandComplete of a SELECT-like command: the row count in `SELECT n` (None for other tags).
pub fn rows_in_tag(tag: &[u8]) -> Option<u64> {
    let n = tag.strip_prefix(b"SELECT ")?;
    std::str::from_utf8(n).ok()?.parse().ok()
}

/// The command and row count of a CommandComplete tag that ends in a count (`UPDATE 3`,
/// `DELETE 0`, `SELECT 5`, `INSERT 0 2`): (`UPDATE`, 3). None for tags without one.
pub fn tag_count(tag: &[u8]) -> Option<(&[u8], u64)> {
    let space = tag.iter().rposition(|b| *b == b' ')?;
    let (verb, n) = (tag.get(..space)?, tag.get(space + 1..)?);
    Some((verb, std::str::from_utf8(n).ok()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::messages;

    #[test]
    fn a_row_description_keeps_its_first_columns() {
        let mut body = 3i16.to_be_bytes().to_vec();
        for name in [&b"a"[..], b"bb", b"ccc"] {
            body.extend_from_slice(name);
            body.push(0);
            body.extend_from_slice(&[0; 18]);
        }
        let t = row_description_prefix(&body, 2).unwrap();
        let names: Vec<&[u8]> = row_description(&t[5..])
            .unwrap()
            .iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(names, vec![&b"a"[..], b"bb"]);
        assert_eq!(
            i32::from_be_bytes(t[1..5].try_into().unwrap()) as usize,
            t.len() - 1
        );
        assert!(row_description_prefix(&body, 4).is_err());
        for cut in 0..body.len() {
            let _ = row_description_prefix(&body[..cut], 3);
        }
    }

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
    fn rows_and_their_description() {
        let mut rd = 2i16.to_be_bytes().to_vec();
        for (name, oid, format) in [(&b"id"[..], 23u32, 0i16), (b"name", 25, 1)] {
            rd.extend_from_slice(name);
            rd.push(0);
            rd.extend_from_slice(&[0; 6]);
            rd.extend_from_slice(&oid.to_be_bytes());
            rd.extend_from_slice(&[0; 6]);
            rd.extend_from_slice(&format.to_be_bytes());
        }
        let fields = row_description(&rd).unwrap();
        assert_eq!(
            fields[1],
            Field {
                name: b"name",
                type_oid: 25,
                format: 1
            }
        );
        for cut in 0..rd.len() {
            assert!(row_description(&rd[..cut]).is_err(), "{cut}");
        }
        let mut row = 3i16.to_be_bytes().to_vec();
        row.extend_from_slice(&1i32.to_be_bytes());
        row.push(b'7');
        row.extend_from_slice(&(-1i32).to_be_bytes());
        row.extend_from_slice(&2i32.to_be_bytes());
        row.extend_from_slice(b"ab");
        assert_eq!(data_row_value(&row, 0).unwrap(), Some(&b"7"[..]));
        assert_eq!(data_row_value(&row, 1).unwrap(), None);
        assert_eq!(data_row_value(&row, 2).unwrap(), Some(&b"ab"[..]));
        assert!(data_row_value(&row, 3).is_err());
        assert!(data_row_value(&row[..row.len() - 1], 2).is_err());
        let mut liar = 1i16.to_be_bytes().to_vec();
        liar.extend_from_slice(&(-7i32).to_be_bytes());
        assert!(data_row_value(&liar, 0).is_err());
        assert_eq!(rows_in_tag(b"SELECT 42"), Some(42));
        assert_eq!(rows_in_tag(b"INSERT 0 1"), None);
        assert_eq!(tag_count(b"UPDATE 12"), Some((&b"UPDATE"[..], 12)));
        assert_eq!(tag_count(b"INSERT 0 2"), Some((&b"INSERT 0"[..], 2)));
        assert_eq!(tag_count(b"BEGIN"), None);
        assert_eq!(tag_count(b"DELETE x"), None);
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
