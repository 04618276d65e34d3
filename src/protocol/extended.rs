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

/// A Bind like `bind` (a whole `'B'` frame) for statement `statement`, with the parameters
/// numbered in `nulls` (1-based) sent as NULL. Every length is checked; a malformed Bind is
/// an error.
pub fn bind_with_nulls(
    bind: &Frame,
    statement: &[u8],
    nulls: &[usize],
) -> Result<Bytes, super::ProtocolError> {
    bind_rewritten(bind, statement, nulls, Results::Keep)
}

/// The result formats a rewritten Bind asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Results {
    /// The client's.
    Keep,
    /// The client's, for a statement returning this many more columns than the client's:
    /// when the client gave each column its own format, the extra ones get text (one
    /// format, or none, already covers every column).
    Extra(usize),
    /// Text for every column, whatever the client asked.
    Text,
}

/// [`bind_with_nulls`], with the result formats `results`.
pub fn bind_rewritten(
    bind: &Frame,
    statement: &[u8],
    nulls: &[usize],
    results: Results,
) -> Result<Bytes, super::ProtocolError> {
    let bad = || super::ProtocolError::Malformed { what: "Bind" };
    let body = bind.body();
    let mut pos = 0usize;
    let mut take = |n: usize| -> Result<&[u8], super::ProtocolError> {
        let s = body
            .get(pos..pos.checked_add(n).ok_or_else(bad)?)
            .ok_or_else(bad)?;
        pos += n;
        Ok(s)
    };
    let cstr = |body: &[u8], from: usize| -> Result<usize, super::ProtocolError> {
        body.get(from..)
            .and_then(|b| b.iter().position(|c| *c == 0))
            .ok_or_else(bad)
    };
    let portal_len = cstr(body, 0)?;
    let portal = take(portal_len + 1)?.to_vec();
    let stmt_len = cstr(body, portal_len + 1)?;
    take(stmt_len + 1)?;
    let i16_of = |s: &[u8]| -> Result<i16, super::ProtocolError> {
        Ok(i16::from_be_bytes(s.try_into().map_err(|_| bad())?))
    };
    let nfmt = i16_of(take(2)?)?;
    let formats = take(usize::try_from(nfmt).map_err(|_| bad())? * 2)?.to_vec();
    let nparams = i16_of(take(2)?)?;
    let mut out = BytesMut::with_capacity(body.len() + statement.len() + 8);
    out.put_u8(b'B');
    out.put_i32(0);
    out.put_slice(&portal);
    out.put_slice(statement);
    out.put_u8(0);
    out.put_i16(nfmt);
    out.put_slice(&formats);
    out.put_i16(nparams);
    for n in 1..=usize::try_from(nparams).map_err(|_| bad())? {
        let len = i32::from_be_bytes(take(4)?.try_into().map_err(|_| bad())?);
        let value = match usize::try_from(len) {
            Ok(l) => Some(take(l)?),
            Err(_) => None,
        };
        match value {
            Some(v) if !nulls.contains(&n) => {
                out.put_i32(len);
                out.put_slice(v);
            }
            _ => out.put_i32(-1),
        }
    }
    let nres = i16_of(take(2)?)?;
    let formats = take(usize::try_from(nres).map_err(|_| bad())? * 2)?;
    match results {
        Results::Extra(extra) if nres > 1 && extra > 0 => {
            let total = usize::try_from(nres)
                .ok()
                .and_then(|n| n.checked_add(extra))
                .and_then(|n| i16::try_from(n).ok())
                .ok_or_else(bad)?;
            out.put_i16(total);
            out.put_slice(formats);
            out.put_bytes(0, 2 * extra);
        }
        Results::Text => out.put_i16(0),
        _ => {
            out.put_i16(nres);
            out.put_slice(formats);
        }
    }
    if pos != body.len() {
        return Err(bad());
    }
    let len = i32::try_from(out.len() - 1).map_err(|_| bad())?;
    if let Some(l) = out.get_mut(1..5) {
        l.copy_from_slice(&len.to_be_bytes());
    }
    Ok(out.freeze())
}

/// The result-format section of a Bind (count and codes), as the client sent it.
pub fn result_formats(bind: &Frame) -> Result<Bytes, super::ProtocolError> {
    let bad = || super::ProtocolError::Malformed { what: "Bind" };
    let body = bind.body();
    let mut at = 0usize;
    for _ in 0..2 {
        at += body
            .get(at..)
            .and_then(|b| b.iter().position(|c| *c == 0))
            .ok_or_else(bad)?
            + 1;
    }
    let word = |at: usize| -> Result<usize, super::ProtocolError> {
        let w = body.get(at..at + 2).ok_or_else(bad)?;
        usize::try_from(i16::from_be_bytes([w[0], w[1]])).map_err(|_| bad())
    };
    at += 2 + 2 * word(at)?;
    let nparams = word(at)?;
    at += 2;
    for _ in 0..nparams {
        let w = body.get(at..at + 4).ok_or_else(bad)?;
        let len = i32::from_be_bytes([w[0], w[1], w[2], w[3]]);
        at += 4 + usize::try_from(len).unwrap_or(0);
    }
    let n = word(at)?;
    let section = body.get(at..at + 2 + 2 * n).ok_or_else(bad)?;
    if at + 2 + 2 * n != body.len() {
        return Err(bad());
    }
    Ok(Bytes::copy_from_slice(section))
}

/// A Bind of the unnamed statement to the unnamed portal with text `values` (None: NULL)
/// and the result-format section `results` (count and codes; empty: all text).
pub fn bind_message(
    values: &[Option<&[u8]>],
    results: &[u8],
) -> Result<Bytes, super::ProtocolError> {
    let bad = || super::ProtocolError::Malformed { what: "Bind" };
    let mut out = BytesMut::new();
    out.put_u8(b'B');
    out.put_i32(0);
    out.put_slice(b"\0\0");
    out.put_i16(0);
    // Postgres reads the count as unsigned 16 bits.
    out.put_u16(u16::try_from(values.len()).map_err(|_| bad())?);
    for v in values {
        match v {
            Some(v) => {
                out.put_i32(i32::try_from(v.len()).map_err(|_| bad())?);
                out.put_slice(v);
            }
            None => out.put_i32(-1),
        }
    }
    if results.is_empty() {
        out.put_i16(0);
    } else {
        out.put_slice(results);
    }
    let len = i32::try_from(out.len() - 1).map_err(|_| bad())?;
    if let Some(l) = out.get_mut(1..5) {
        l.copy_from_slice(&len.to_be_bytes());
    }
    Ok(out.freeze())
}

/// Parameter-type bytes (count + OIDs, as in a Parse) covering at least parameters `nulls`
/// (1-based), those left unspecified there given type text: a parameter the statement does
/// not use needs a type Postgres cannot infer.
pub fn types_with_text(param_types: &[u8], nulls: &[usize]) -> Result<Bytes, super::ProtocolError> {
    let bad = || super::ProtocolError::Malformed { what: "Parse" };
    let count = param_types
        .get(..2)
        .map(|c| i16::from_be_bytes([c[0], c[1]]))
        .unwrap_or(0);
    let mut oids: Vec<u32> = (0..usize::try_from(count).map_err(|_| bad())?)
        .map(|i| {
            param_types
                .get(2 + i * 4..6 + i * 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_be_bytes)
                .ok_or_else(bad)
        })
        .collect::<Result<_, _>>()?;
    let needed = nulls.iter().copied().max().unwrap_or(0);
    if oids.len() < needed {
        oids.resize(needed, 0);
    }
    for n in nulls {
        if let Some(o) = oids.get_mut(n - 1).filter(|o| **o == 0) {
            *o = 25;
        }
    }
    let mut out = BytesMut::with_capacity(2 + oids.len() * 4);
    out.put_i16(i16::try_from(oids.len()).map_err(|_| bad())?);
    for o in oids {
        out.put_u32(o);
    }
    Ok(out.freeze())
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
    fn binds_with_nulls_keep_everything_else() {
        let mut body = b"p\0s1\0".to_vec();
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&3i16.to_be_bytes());
        for v in [&b"aa"[..], b"b", b"ccc"] {
            body.extend_from_slice(&(v.len() as i32).to_be_bytes());
            body.extend_from_slice(v);
        }
        body.extend_from_slice(&[0, 1, 0, 1]);
        let bind = Frame::new(b'B', &body);
        let out = bind_with_nulls(&bind, b"", &[2]).unwrap();
        let mut want = b"p\0\0".to_vec();
        want.extend_from_slice(&[0, 1, 0, 1, 0, 3]);
        want.extend_from_slice(&[
            0, 0, 0, 2, b'a', b'a', 255, 255, 255, 255, 0, 0, 0, 3, b'c', b'c', b'c',
        ]);
        want.extend_from_slice(&[0, 1, 0, 1]);
        assert_eq!(&out[5..], &want[..]);
        assert_eq!(
            i32::from_be_bytes(out[1..5].try_into().unwrap()) as usize,
            out.len() - 1
        );
        // Lies about lengths are errors, never panics.
        for cut in 0..body.len() {
            let short = Frame::new(b'B', &body[..cut]);
            let _ = bind_with_nulls(&short, b"", &[1]);
        }
        let mut liar = body.clone();
        liar[11..15].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(bind_with_nulls(&Frame::new(b'B', &liar), b"", &[]).is_err());
        // Types: unspecified ones of unused parameters become text.
        let types = types_with_text(&[0, 1, 0, 0, 0, 23], &[3]).unwrap();
        assert_eq!(&types[..], &[0, 3, 0, 0, 0, 23, 0, 0, 0, 0, 0, 0, 0, 25]);
        assert!(types_with_text(&[0, 2, 0, 0], &[1]).is_err());
        // Extra result columns: per-column formats get text for them; one format covers all.
        let out = bind_rewritten(&bind, b"", &[], Results::Extra(2)).unwrap();
        assert_eq!(&out[out.len() - 4..], &[0, 1, 0, 1]);
        assert_eq!(&result_formats(&bind).unwrap()[..], &[0, 1, 0, 1]);
        let out = bind_rewritten(&bind, b"", &[], Results::Text).unwrap();
        assert_eq!(&out[out.len() - 2..], &[0, 0]);
        let built = bind_message(&[Some(b"7"), None], &[0, 1, 0, 1]).unwrap();
        let view = client::Bind::new(&Frame::new(b'B', &built[5..])).unwrap();
        assert_eq!((view.portal(), view.statement()), (&b""[..], &b""[..]));
        assert_eq!(
            &result_formats(&Frame::new(b'B', &built[5..])).unwrap()[..],
            &[0, 1, 0, 1]
        );
        for cut in 0..body.len() {
            let _ = result_formats(&Frame::new(b'B', &body[..cut]));
        }
        let mut each = body[..body.len() - 4].to_vec();
        each.extend_from_slice(&[0, 2, 0, 1, 0, 0]);
        let out = bind_rewritten(&Frame::new(b'B', &each), b"", &[], Results::Extra(2)).unwrap();
        assert_eq!(&out[out.len() - 10..], &[0, 4, 0, 1, 0, 0, 0, 0, 0, 0]);
        let mut trailing = body.clone();
        trailing.push(0);
        assert!(bind_rewritten(&Frame::new(b'B', &trailing), b"", &[], Results::Extra(2)).is_err());
    }

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
