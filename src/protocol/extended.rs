//! Rewriting extended-protocol messages: swapping the statement name a [`client`] view found
//! without touching the rest of the body, and building the Parse usher sends on a client's
//! behalf.
//!
//! [`client`]: super::client
//!
//! Only the few bytes naming a statement are looked at; parameter values in a Bind are never
//! decoded, so a Bind whose parameter lengths lie is forwarded for Postgres to reject.

use bytes::{BufMut, Bytes, BytesMut};

use super::Frame;

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
        body.get(self.start..self.end).unwrap_or_default()
    }
}

/// Appends `frame` to `out` with the name at `span` replaced by `name`.
pub fn put_renamed(out: &mut BytesMut, frame: &Frame, span: NameSpan, name: &[u8]) {
    let body = frame.body();
    let (Some(head), Some(tail)) = (body.get(..span.start), body.get(span.end..)) else {
        // A span always comes from a view of this frame; forward it untouched otherwise.
        out.put_slice(&frame.raw);
        return;
    };
    let len = 4 + head.len() + name.len() + tail.len();
    out.reserve(len + 1);
    out.put_u8(frame.tag);
    out.put_i32(len as i32);
    out.put_slice(head);
    out.put_slice(name);
    out.put_slice(tail);
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

/// A Describe of portal `name` (frontend).
pub fn describe_portal(out: &mut BytesMut, name: &[u8]) {
    out.put_u8(b'D');
    out.put_i32((4 + 1 + name.len() + 1) as i32);
    out.put_u8(b'P');
    out.put_slice(name);
    out.put_u8(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::client;

    #[test]
    fn describe_portal_is_a_valid_describe() {
        let mut out = BytesMut::new();
        describe_portal(&mut out, b"p1");
        let f = crate::protocol::frame::split_frame(&mut out, 100)
            .unwrap()
            .unwrap();
        let d = client::Targeted::new(&f).unwrap();
        assert_eq!((d.target, d.name()), (client::Target::Portal, &b"p1"[..]));
    }

    #[test]
    fn parse_and_rename_round_trip() {
        let f = Frame::new(b'P', b"s1\0SELECT $1\0\0\x01\0\0\0\x17");
        let p = client::Parse::new(&f).unwrap();
        let mut out = BytesMut::new();
        put_renamed(&mut out, &f, p.name_span(), b"usher_42");
        let mut buf = out.clone();
        let g = super::super::split_frame(&mut buf, 1 << 20)
            .unwrap()
            .unwrap();
        let q = client::Parse::new(&g).unwrap();
        assert_eq!(
            (q.name(), q.query_bytes()),
            (&b"usher_42"[..], &b"SELECT $1"[..])
        );
        let rebuilt = parse_message(b"usher_42", b"SELECT $1", &p.param_types());
        assert_eq!(rebuilt, g.raw);
    }

    #[test]
    fn bind_rename() {
        let f = Frame::new(b'B', b"portal\0stmt\0\0\0\0\0\0\0");
        let span = client::Bind::new(&f).unwrap().statement_span();
        assert_eq!(span.of(f.body()), b"stmt");
        let mut out = BytesMut::new();
        put_renamed(&mut out, &f, span, b"x");
        assert_eq!(&out[5..], b"portal\0x\0\0\0\0\0\0\0");
    }

    #[test]
    fn out_of_range_span_forwards_untouched() {
        let f = Frame::new(b'B', b"p\0s\0");
        let mut out = BytesMut::new();
        put_renamed(&mut out, &f, NameSpan { start: 9, end: 12 }, b"x");
        assert_eq!(out, f.raw);
        assert_eq!(NameSpan { start: 3, end: 1 }.of(b"ab"), b"");
    }
}
