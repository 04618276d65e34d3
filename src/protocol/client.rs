//! Typed, lazy views over a cut client frame: Query, Parse, Bind, Describe, Close, Execute and
//! the COPY messages. Each view checks the message's lengths and terminators once, when it is
//! built, and returns [`ProtocolError`] for anything malformed; afterwards its accessors are
//! plain range reads that cannot fail. Fields that are only forwarded (a Bind's parameter
//! values, a CopyData payload) are never decoded; text fields come back as zero-copy
//! [`Bytes`] slices of the frame.

use std::ops::Range;

use bytes::Bytes;

use super::{read_cstr, Frame, ProtocolError};

/// Header length of a regular frame: the tag byte and the 4-byte length.
pub const HEADER: usize = 5;

/// A byte range within a frame's body.
fn span(start: usize, end: usize) -> Range<usize> {
    start..end
}

/// The length of the string at `pos` that must end the body (its NUL is the last byte).
fn last_cstr(body: &[u8], pos: usize, what: &'static str) -> Result<usize, ProtocolError> {
    let (s, end) = read_cstr(body, pos, what)?;
    if end != body.len() {
        return Err(ProtocolError::Malformed { what });
    }
    Ok(s.len())
}

/// A range of the raw frame as a range of its body (past the 5-byte header).
fn body_span(raw: &Range<usize>) -> super::extended::NameSpan {
    super::extended::NameSpan {
        start: raw.start.saturating_sub(HEADER),
        end: raw.end.saturating_sub(HEADER),
    }
}

/// `Query`: one string, the SQL text (possibly several statements).
#[derive(Debug, Clone)]
pub struct Query {
    raw: Bytes,
    sql: Range<usize>,
}

impl Query {
    /// Checks a `'Q'` frame: its body must be one NUL-terminated string and nothing after it.
    pub fn new(frame: &Frame) -> Result<Query, ProtocolError> {
        let sql = Self::locate(frame.body())?;
        Ok(Query {
            raw: frame.raw.clone(),
            sql: span(HEADER, HEADER + sql),
        })
    }

    /// The length of the SQL text, once the body is checked.
    fn locate(body: &[u8]) -> Result<usize, ProtocolError> {
        last_cstr(body, 0, "Query")
    }

    /// The SQL text, without its terminator (zero-copy).
    pub fn sql(&self) -> Bytes {
        self.raw.slice(self.sql.clone())
    }

    /// The SQL text as a borrowed slice.
    pub fn sql_bytes(&self) -> &[u8] {
        self.raw.get(self.sql.clone()).unwrap_or_default()
    }
}

/// `Parse`: statement name, query text and parameter type OIDs.
#[derive(Debug, Clone)]
pub struct Parse {
    raw: Bytes,
    name: Range<usize>,
    query: Range<usize>,
    /// The parameter-type section: the i16 count and the OIDs.
    types: Range<usize>,
}

impl Parse {
    /// Checks a `'P'` frame: two strings, a non-negative count and exactly that many OIDs.
    pub fn new(frame: &Frame) -> Result<Parse, ProtocolError> {
        let (name, next, query, after) = Self::locate(frame.body())?;
        Ok(Parse {
            raw: frame.raw.clone(),
            name: span(HEADER, HEADER + name),
            query: span(HEADER + next, HEADER + next + query),
            types: span(HEADER + after, frame.raw.len()),
        })
    }

    /// (name length, query start, query length, start of the types section) in the body.
    fn locate(body: &[u8]) -> Result<(usize, usize, usize, usize), ProtocolError> {
        let what = "Parse";
        let (name, next) = read_cstr(body, 0, what)?;
        let (query, after) = read_cstr(body, next, what)?;
        let count = body
            .get(after..after + 2)
            .ok_or(ProtocolError::Malformed { what })?;
        let n = i16::from_be_bytes(
            count
                .try_into()
                .map_err(|_| ProtocolError::Malformed { what })?,
        );
        if n < 0 || body.len() != after + 2 + 4 * n as usize {
            return Err(ProtocolError::Malformed { what });
        }
        Ok((name.len(), next, query.len(), after))
    }

    /// The client's statement name (empty for the unnamed statement).
    pub fn name(&self) -> &[u8] {
        self.raw.get(self.name.clone()).unwrap_or_default()
    }

    /// Where the name sits in the body (for renaming it without touching the rest).
    pub fn name_span(&self) -> super::extended::NameSpan {
        super::extended::NameSpan {
            start: 0,
            end: self.name.len(),
        }
    }

    /// The query text (zero-copy).
    pub fn query(&self) -> Bytes {
        self.raw.slice(self.query.clone())
    }

    /// The query text as a borrowed slice.
    pub fn query_bytes(&self) -> &[u8] {
        self.raw.get(self.query.clone()).unwrap_or_default()
    }

    /// The raw parameter-type section (i16 count, then the OIDs), as a Parse carries it.
    pub fn param_types(&self) -> Bytes {
        self.raw.slice(self.types.clone())
    }

    /// Query text and parameter types copied out of the frame in one allocation, for keeping
    /// beyond the receive buffer's life (a zero-copy slice would pin the whole buffer).
    pub fn owned_query_and_types(&self) -> (Bytes, Bytes) {
        let both = self
            .raw
            .get(self.query.start..self.types.end)
            .unwrap_or_default();
        let copy = Bytes::copy_from_slice(both);
        let q = self.query.len();
        (copy.slice(..q), copy.slice((q + 1).min(copy.len())..))
    }
}

/// `Bind`: portal and statement names; parameter values are left undecoded.
#[derive(Debug, Clone)]
pub struct Bind {
    raw: Bytes,
    portal: Range<usize>,
    statement: Range<usize>,
}

impl Bind {
    /// Checks the two leading names of a `'B'` frame.
    pub fn new(frame: &Frame) -> Result<Bind, ProtocolError> {
        let (portal, next, statement) = Self::locate(frame.body())?;
        Ok(Bind {
            raw: frame.raw.clone(),
            portal: span(HEADER, HEADER + portal),
            statement: span(HEADER + next, HEADER + next + statement),
        })
    }

    /// (portal name length, statement name start, its length) in the body.
    fn locate(body: &[u8]) -> Result<(usize, usize, usize), ProtocolError> {
        let (portal, next) = read_cstr(body, 0, "Bind")?;
        let (statement, _) = read_cstr(body, next, "Bind")?;
        Ok((portal.len(), next, statement.len()))
    }

    /// The portal name.
    pub fn portal(&self) -> &[u8] {
        self.raw.get(self.portal.clone()).unwrap_or_default()
    }

    /// The statement name (empty for the unnamed statement).
    pub fn statement(&self) -> &[u8] {
        self.raw.get(self.statement.clone()).unwrap_or_default()
    }

    /// Where the statement name sits in the body.
    pub fn statement_span(&self) -> super::extended::NameSpan {
        body_span(&self.statement)
    }

    /// The body after the two names (formats, values, result formats), undecoded.
    pub fn rest(&self) -> &[u8] {
        self.raw.get(self.statement.end + 1..).unwrap_or_default()
    }
}

/// What a Describe or Close names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A prepared statement (`'S'`).
    Statement,
    /// A portal (`'P'`).
    Portal,
}

/// `Describe` or `Close`: a kind byte and a name.
#[derive(Debug, Clone)]
pub struct Targeted {
    raw: Bytes,
    /// Statement or portal.
    pub target: Target,
    name: Range<usize>,
}

impl Targeted {
    /// Checks a `'D'` or `'C'` frame: a kind byte `S`/`P` and one string, nothing after it.
    pub fn new(frame: &Frame) -> Result<Targeted, ProtocolError> {
        let (target, name) = Self::locate(frame.tag, frame.body())?;
        Ok(Targeted {
            raw: frame.raw.clone(),
            target,
            name: span(HEADER + 1, HEADER + 1 + name),
        })
    }

    /// The target and the name's length, once the body is checked.
    fn locate(tag: u8, body: &[u8]) -> Result<(Target, usize), ProtocolError> {
        let what = if tag == b'C' { "Close" } else { "Describe" };
        let target = match body.first() {
            Some(b'S') => Target::Statement,
            Some(b'P') => Target::Portal,
            _ => return Err(ProtocolError::Malformed { what }),
        };
        Ok((target, last_cstr(body, 1, what)?))
    }

    /// The statement or portal name.
    pub fn name(&self) -> &[u8] {
        self.raw.get(self.name.clone()).unwrap_or_default()
    }

    /// Where the name sits in the body (for renaming it without touching the rest).
    pub fn name_span(&self) -> super::extended::NameSpan {
        body_span(&self.name)
    }
}

/// `Execute`: a portal name and a row limit (0 = all rows).
#[derive(Debug, Clone)]
pub struct Execute {
    raw: Bytes,
    portal: Range<usize>,
    /// Rows to return at most; 0 means no limit.
    pub max_rows: i32,
}

impl Execute {
    /// Checks an `'E'` frame: one string and an i32, nothing after it.
    pub fn new(frame: &Frame) -> Result<Execute, ProtocolError> {
        let (portal, max_rows) = Self::locate(frame.body())?;
        Ok(Execute {
            raw: frame.raw.clone(),
            portal: span(HEADER, HEADER + portal),
            max_rows,
        })
    }

    /// The portal name's length and the row limit, once the body is checked.
    fn locate(body: &[u8]) -> Result<(usize, i32), ProtocolError> {
        let what = "Execute";
        let (portal, next) = read_cstr(body, 0, what)?;
        let rows = body
            .get(next..next + 4)
            .filter(|_| body.len() == next + 4)
            .and_then(|r| <[u8; 4]>::try_from(r).ok())
            .ok_or(ProtocolError::Malformed { what })?;
        Ok((portal.len(), i32::from_be_bytes(rows)))
    }

    /// The portal name.
    pub fn portal(&self) -> &[u8] {
        self.raw.get(self.portal.clone()).unwrap_or_default()
    }
}

/// `CopyFail`: the client's reason for aborting a COPY FROM STDIN.
#[derive(Debug, Clone)]
pub struct CopyFail {
    raw: Bytes,
    reason: Range<usize>,
}

impl CopyFail {
    /// Checks an `'f'` frame: one string.
    pub fn new(frame: &Frame) -> Result<CopyFail, ProtocolError> {
        let reason = Self::locate(frame.body())?;
        Ok(CopyFail {
            raw: frame.raw.clone(),
            reason: span(HEADER, HEADER + reason),
        })
    }

    /// The reason's length, once the body is checked.
    fn locate(body: &[u8]) -> Result<usize, ProtocolError> {
        last_cstr(body, 0, "CopyFail")
    }

    /// The reason text.
    pub fn reason(&self) -> &[u8] {
        self.raw.get(self.reason.clone()).unwrap_or_default()
    }
}

/// `SASLInitialResponse` (a `'p'` body during SCRAM): the mechanism and the client-first data.
#[derive(Debug, Clone, Copy)]
pub struct SaslInitial<'a> {
    /// The mechanism the client picked (`SCRAM-SHA-256`).
    pub mechanism: &'a [u8],
    /// The client-first message (empty when the length is -1).
    pub data: &'a [u8],
}

impl<'a> SaslInitial<'a> {
    /// Checks a password-message body: a string, an i32 length (-1 for none) and exactly that
    /// many bytes.
    pub fn new(body: &'a [u8]) -> Result<SaslInitial<'a>, ProtocolError> {
        let what = "SASLInitialResponse";
        let (mechanism, next) = read_cstr(body, 0, what)?;
        let len = body
            .get(next..next + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(i32::from_be_bytes)
            .ok_or(ProtocolError::Malformed { what })?;
        let data = body.get(next + 4..).unwrap_or_default();
        match usize::try_from(len) {
            Ok(n) if n == data.len() => Ok(SaslInitial { mechanism, data }),
            Err(_) if len == -1 && data.is_empty() => Ok(SaslInitial { mechanism, data }),
            _ => Err(ProtocolError::Malformed { what }),
        }
    }
}

/// Checks a body-less message (`Sync`, `Flush`, `CopyDone`, `Terminate`): anything after the
/// header is a protocol violation, as Postgres has it.
pub fn expect_empty(frame: &Frame, what: &'static str) -> Result<(), ProtocolError> {
    if frame.body().is_empty() {
        Ok(())
    } else {
        Err(ProtocolError::Malformed { what })
    }
}

/// The SQL text a Query or Parse carries, zero-copy; `None` for other messages (and for a
/// malformed one, which the caller rejects when it decodes the frame for real).
pub fn sql_of(frame: &Frame) -> Option<Bytes> {
    match frame.tag {
        b'Q' => Query::new(frame).ok().map(|q| q.sql()),
        b'P' => Parse::new(frame).ok().map(|p| p.query()),
        _ => None,
    }
}

/// Checks any client message of the extended or simple protocol once, before routing looks
/// at it: a message that fails here is answered with 08P01 and never reaches a server.
pub fn validate(frame: &Frame) -> Result<(), ProtocolError> {
    // The views' own checks, without building the views (no reference-count traffic).
    let body = frame.body();
    match frame.tag {
        b'Q' => Query::locate(body).map(drop),
        b'P' => Parse::locate(body).map(drop),
        b'B' => Bind::locate(body).map(drop),
        b'D' | b'C' => Targeted::locate(frame.tag, body).map(drop),
        b'E' => Execute::locate(body).map(drop),
        b'f' => CopyFail::locate(body).map(drop),
        b'S' => expect_empty(frame, "Sync"),
        b'H' => expect_empty(frame, "Flush"),
        b'c' => expect_empty(frame, "CopyDone"),
        b'd' | b'F' | b'X' => Ok(()),
        other => Err(ProtocolError::UnknownType(other as char)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_query_is_an_error_not_a_panic() {
        let f = Frame::new(b'Q', b"");
        assert!(matches!(
            Query::new(&f),
            Err(ProtocolError::Malformed { what: "Query" })
        ));
        assert!(Query::new(&Frame::new(b'Q', b"SELECT 1")).is_err());
        assert!(Query::new(&Frame::new(b'Q', b"SELECT 1\0x")).is_err());
        let q = Query::new(&Frame::new(b'Q', b"SELECT 1\0")).unwrap();
        assert_eq!(&q.sql()[..], b"SELECT 1");
        assert_eq!(q.sql_bytes(), b"SELECT 1");
        assert_eq!(
            &Query::new(&Frame::new(b'Q', b"\0")).unwrap().sql()[..],
            b""
        );
    }

    #[test]
    fn parse_fields() {
        let f = Frame::new(b'P', b"s1\0SELECT $1\0\0\x01\0\0\0\x17");
        let p = Parse::new(&f).unwrap();
        assert_eq!(p.name(), b"s1");
        assert_eq!(&p.query()[..], b"SELECT $1");
        assert_eq!(&p.param_types()[..], b"\0\x01\0\0\0\x17");
        assert_eq!(p.name_span().of(f.body()), b"s1");
        let (q, t) = p.owned_query_and_types();
        assert_eq!(
            (&q[..], &t[..]),
            (&b"SELECT $1"[..], &b"\0\x01\0\0\0\x17"[..])
        );
        for bad in [
            &b""[..],
            b"s1",
            b"s1\0SELECT",
            b"s1\0SELECT 1\0",
            b"s1\0SELECT 1\0\xff\xff",
            b"s1\0SELECT 1\0\0\x02\0\0\0\x17",
        ] {
            assert!(Parse::new(&Frame::new(b'P', bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bind_describe_close_execute() {
        let b = Bind::new(&Frame::new(b'B', b"p\0stmt\0\0\0\0\0\0\0")).unwrap();
        assert_eq!((b.portal(), b.statement()), (&b"p"[..], &b"stmt"[..]));
        assert_eq!(b.rest(), b"\0\0\0\0\0\0");
        assert!(Bind::new(&Frame::new(b'B', b"p\0stmt")).is_err());
        let d = Targeted::new(&Frame::new(b'D', b"Sabc\0")).unwrap();
        assert_eq!((d.target, d.name()), (Target::Statement, &b"abc"[..]));
        assert!(Targeted::new(&Frame::new(b'C', b"Xabc\0")).is_err());
        assert!(Targeted::new(&Frame::new(b'C', b"")).is_err());
        assert!(Targeted::new(&Frame::new(b'C', b"Pabc\0\0")).is_err());
        let e = Execute::new(&Frame::new(b'E', b"\0\0\0\0\x05")).unwrap();
        assert_eq!((e.portal(), e.max_rows), (&b""[..], 5));
        assert!(Execute::new(&Frame::new(b'E', b"\0\0\0")).is_err());
        assert!(CopyFail::new(&Frame::new(b'f', b"why\0")).is_ok());
        assert!(validate(&Frame::new(b'S', b"x")).is_err());
        let s = SaslInitial::new(b"SCRAM-SHA-256\0\0\0\0\x03abc").unwrap();
        assert_eq!((s.mechanism, s.data), (&b"SCRAM-SHA-256"[..], &b"abc"[..]));
        assert!(SaslInitial::new(b"SCRAM-SHA-256\0\0\0\0\x04abc").is_err());
        assert!(SaslInitial::new(b"SCRAM-SHA-256\0\0\0").is_err());
        assert!(SaslInitial::new(b"SCRAM-SHA-256\0\xff\xff\xff\xfe").is_err());
        assert!(SaslInitial::new(b"SCRAM-SHA-256\0\xff\xff\xff\xff").is_ok());
        assert!(validate(&Frame::new(b'Z', b"")).is_err());
    }
}
