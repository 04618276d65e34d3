//! Lazy readers for the statement names inside extended-protocol messages (Parse, Bind,
//! Describe, Close) and a writer that swaps a name without touching the rest of the body.
//!
//! Only the few bytes naming a statement are looked at; parameter values in a Bind are never
//! decoded, so a Bind whose parameter lengths lie is forwarded for Postgres to reject.

use bytes::{BufMut, Bytes, BytesMut};

use super::{read_cstr, Frame, ProtocolError};

/// Where the prepared-statement name sits inside a message body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameSpan {
    /// First byte of the name within the body.
    pub start: usize,
    /// One past its last byte (the NUL terminator's position).
    pub end: usize,
}

impl NameSpan {
    /// The name bytes in `body`.
    pub fn of<'a>(&self, body: &'a [u8]) -> &'a [u8] {
        &body[self.start..self.end]
    }
}

/// Parse: the statement name and the query text.
pub fn parse_fields(body: &[u8]) -> Result<(NameSpan, &[u8]), ProtocolError> {
    let (name, next) = read_cstr(body, 0, "Parse")?;
    let (query, after) = read_cstr(body, next, "Parse")?;
    let nparams = body
        .get(after..after + 2)
        .ok_or(ProtocolError::Malformed { what: "Parse" })?;
    let n = i16::from_be_bytes([nparams[0], nparams[1]]);
    if n < 0 || body.len() != after + 2 + 4 * n as usize {
        return Err(ProtocolError::Malformed { what: "Parse" });
    }
    Ok((
        NameSpan {
            start: 0,
            end: name.len(),
        },
        query,
    ))
}

/// Bind: where the statement name (the second string, after the portal) is.
pub fn bind_statement(body: &[u8]) -> Result<NameSpan, ProtocolError> {
    let (_, next) = read_cstr(body, 0, "Bind")?;
    let (name, _) = read_cstr(body, next, "Bind")?;
    Ok(NameSpan {
        start: next,
        end: next + name.len(),
    })
}

/// Describe or Close: `(kind, name)` where kind is `b'S'` (statement) or `b'P'` (portal).
pub fn target(body: &[u8], what: &'static str) -> Result<(u8, NameSpan), ProtocolError> {
    let kind = *body.first().ok_or(ProtocolError::Malformed { what })?;
    if kind != b'S' && kind != b'P' {
        return Err(ProtocolError::Malformed { what });
    }
    let (name, end) = read_cstr(body, 1, what)?;
    if end != body.len() {
        return Err(ProtocolError::Malformed { what });
    }
    Ok((
        kind,
        NameSpan {
            start: 1,
            end: 1 + name.len(),
        },
    ))
}

/// Appends `frame` to `out` with the name at `span` replaced by `name`.
pub fn put_renamed(out: &mut BytesMut, frame: &Frame, span: NameSpan, name: &[u8]) {
    let body = frame.body();
    let len = 4 + body.len() - (span.end - span.start) + name.len();
    out.reserve(len + 1);
    out.put_u8(frame.tag);
    out.put_i32(len as i32);
    out.put_slice(&body[..span.start]);
    out.put_slice(name);
    out.put_slice(&body[span.end..]);
}

/// A Parse message (frontend) for `name` with `query` and raw parameter-type bytes.
pub fn parse_message(name: &[u8], query: &[u8], param_types: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(16 + name.len() + query.len() + param_types.len());
    out.put_u8(b'P');
    out.put_i32((4 + name.len() + 1 + query.len() + 1 + param_types.len()) as i32);
    out.put_slice(name);
    out.put_u8(0);
    out.put_slice(query);
    out.put_u8(0);
    out.put_slice(param_types);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Frame {
        Frame::new(tag, body)
    }

    #[test]
    fn parse_and_rename_round_trip() {
        let f = frame(b'P', b"s1\0SELECT $1\0\0\x01\0\0\0\x17");
        let (span, query) = parse_fields(f.body()).unwrap();
        assert_eq!((span.of(f.body()), query), (&b"s1"[..], &b"SELECT $1"[..]));
        let mut out = BytesMut::new();
        put_renamed(&mut out, &f, span, b"usher_42");
        let mut buf = out.clone();
        let g = super::super::split_frame(&mut buf, 1 << 20)
            .unwrap()
            .unwrap();
        let (span2, q2) = parse_fields(g.body()).unwrap();
        assert_eq!(
            (span2.of(g.body()), q2),
            (&b"usher_42"[..], &b"SELECT $1"[..])
        );
        let rebuilt = parse_message(b"usher_42", b"SELECT $1", &f.body()[13..]);
        assert_eq!(rebuilt, g.raw);
    }

    #[test]
    fn bind_name() {
        let f = frame(b'B', b"portal\0stmt\0\0\0\0\0\0\0");
        let span = bind_statement(f.body()).unwrap();
        assert_eq!(span.of(f.body()), b"stmt");
        let mut out = BytesMut::new();
        put_renamed(&mut out, &f, span, b"x");
        assert_eq!(&out[5..], b"portal\0x\0\0\0\0\0\0\0");
    }

    #[test]
    fn describe_close_targets() {
        let (kind, span) = target(b"Sabc\0", "Describe").unwrap();
        assert_eq!((kind, span.of(b"Sabc\0")), (b'S', &b"abc"[..]));
        assert!(target(b"Xabc\0", "Describe").is_err());
        assert!(target(b"Sabc", "Close").is_err());
        assert!(target(b"", "Close").is_err());
    }

    #[test]
    fn malformed_parse() {
        assert!(parse_fields(b"s1\0SELECT 1\0\0\x02\0\0\0\x17").is_err());
        assert!(parse_fields(b"s1\0SELECT 1").is_err());
        assert!(parse_fields(b"s1\0SELECT 1\0\xff\xff").is_err());
    }
}
