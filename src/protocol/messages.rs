//! Builders for the messages usher writes itself (errors, auth requests, status), and a reader
//! for ErrorResponse / NoticeResponse fields.

use bytes::{BufMut, Bytes, BytesMut};

/// Appends a message with `tag` whose body is written by `body`.
fn message(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_u8(tag);
    out.put_i32(0);
    body(out);
    let len = (out.len() - start - 1) as i32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

fn cstr(out: &mut BytesMut, s: &str) {
    out.put_slice(s.as_bytes());
    out.put_u8(0);
}

/// ErrorResponse with severity, SQLSTATE and message (and an optional detail).
pub fn error_response(severity: &str, code: &str, text: &str, detail: Option<&str>) -> Bytes {
    report(b'E', severity, code, text, detail)
}

/// NoticeResponse (a WARNING, NOTICE, ...) with SQLSTATE `code`.
pub fn notice_response(severity: &str, code: &str, text: &str) -> Bytes {
    report(b'N', severity, code, text, None)
}

/// An ErrorResponse or NoticeResponse (`tag`).
fn report(tag: u8, severity: &str, code: &str, text: &str, detail: Option<&str>) -> Bytes {
    let mut out = BytesMut::new();
    message(&mut out, tag, |b| {
        b.put_u8(b'S');
        cstr(b, severity);
        b.put_u8(b'V');
        cstr(b, severity);
        b.put_u8(b'C');
        cstr(b, code);
        b.put_u8(b'M');
        cstr(b, text);
        if let Some(d) = detail {
            b.put_u8(b'D');
            cstr(b, d);
        }
        b.put_u8(0);
    });
    out.freeze()
}

/// AuthenticationOk.
pub fn auth_ok(out: &mut BytesMut) {
    message(out, b'R', |b| b.put_i32(0));
}

/// AuthenticationMD5Password with `salt`.
pub fn auth_md5(out: &mut BytesMut, salt: [u8; 4]) {
    message(out, b'R', |b| {
        b.put_i32(5);
        b.put_slice(&salt);
    });
}

/// AuthenticationSASL offering SCRAM-SHA-256.
pub fn auth_sasl(out: &mut BytesMut) {
    message(out, b'R', |b| {
        b.put_i32(10);
        cstr(b, "SCRAM-SHA-256");
        b.put_u8(0);
    });
}

/// AuthenticationSASLContinue (`final_ == false`) or AuthenticationSASLFinal.
pub fn auth_sasl_data(out: &mut BytesMut, final_: bool, data: &[u8]) {
    message(out, b'R', |b| {
        b.put_i32(if final_ { 12 } else { 11 });
        b.put_slice(data);
    });
}

/// ParameterStatus.
pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    message(out, b'S', |b| {
        cstr(b, name);
        cstr(b, value);
    });
}

/// BackendKeyData.
pub fn backend_key_data(out: &mut BytesMut, pid: i32, key: i32) {
    message(out, b'K', |b| {
        b.put_i32(pid);
        b.put_i32(key);
    });
}

/// DataRow of `values` (None is NULL), in the formats they are already in: the one row
/// usher makes itself, the combined aggregates of a query across shards.
pub fn data_row(values: &[Option<Bytes>]) -> Bytes {
    let mut out = BytesMut::new();
    message(&mut out, b'D', |b| {
        b.put_i16(values.len() as i16);
        for v in values {
            match v {
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.extend_from_slice(v);
                }
                None => b.put_i32(-1),
            }
        }
    });
    out.freeze()
}

/// ReadyForQuery with transaction status `I`, `T` or `E`.
pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    message(out, b'Z', |b| b.put_u8(status));
}

/// NegotiateProtocolVersion: we speak 3.0 and none of the `_pq_` options asked for.
pub fn negotiate_protocol_version(out: &mut BytesMut, unsupported: &[&str]) {
    message(out, b'v', |b| {
        b.put_i32(0);
        b.put_i32(unsupported.len() as i32);
        for opt in unsupported {
            cstr(b, opt);
        }
    });
}

/// A simple Query message (frontend).
pub fn query(out: &mut BytesMut, sql: &str) {
    message(out, b'Q', |b| cstr(b, sql));
}

/// ParseComplete, as sent for a Parse usher answers itself.
pub const PARSE_COMPLETE: &[u8] = &[b'1', 0, 0, 0, 4];
/// BindComplete.
pub const BIND_COMPLETE: &[u8] = &[b'2', 0, 0, 0, 4];
/// CloseComplete.
pub const CLOSE_COMPLETE: &[u8] = &[b'3', 0, 0, 0, 4];
/// NoData (a Describe of a statement or portal that returns no rows).
pub const NO_DATA: &[u8] = &[b'n', 0, 0, 0, 4];
/// ParameterDescription with no parameters.
pub const NO_PARAMETERS: &[u8] = &[b't', 0, 0, 0, 6, 0, 0];
/// Sync (frontend).
pub const SYNC: &[u8] = &[b'S', 0, 0, 0, 4];
/// CopyDone.
pub const COPY_DONE: &[u8] = &[b'c', 0, 0, 0, 4];
/// Execute of the unnamed portal, all rows (frontend).
pub const EXECUTE_UNNAMED: &[u8] = &[b'E', 0, 0, 0, 9, 0, 0, 0, 0, 0];
/// Terminate (frontend), for writing without a buffer.
pub const TERMINATE: &[u8] = &[b'X', 0, 0, 0, 4];

/// CloseComplete into `out`.
pub fn close_complete(out: &mut BytesMut) {
    out.extend_from_slice(CLOSE_COMPLETE);
}

/// CommandComplete with `tag` (`BEGIN`, `DEALLOCATE`, `SELECT 1`, ...).
pub fn command_complete(out: &mut BytesMut, tag: &[u8]) {
    message(out, b'C', |b| {
        b.extend_from_slice(tag);
        b.put_u8(0);
    });
}

/// Terminate (frontend).
pub fn terminate(out: &mut BytesMut) {
    message(out, b'X', |_| {});
}

/// Parsed fields of an ErrorResponse or NoticeResponse body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields {
    /// Severity (`ERROR`, `FATAL`, ...).
    pub severity: String,
    /// SQLSTATE.
    pub code: String,
    /// Primary message.
    pub message: String,
}

impl ErrorFields {
    /// Reads the fields of an ErrorResponse/NoticeResponse body (after the 5-byte header).
    pub fn parse(body: &[u8]) -> ErrorFields {
        let mut f = ErrorFields::default();
        let mut pos = 0;
        while pos < body.len() && body[pos] != 0 {
            let kind = body[pos];
            let Ok((value, next)) = super::read_cstr(body, pos + 1, "ErrorResponse") else {
                break;
            };
            let value = String::from_utf8_lossy(value).into_owned();
            match kind {
                b'V' => f.severity = value,
                b'S' if f.severity.is_empty() => f.severity = value,
                b'C' => f.code = value,
                b'M' => f.message = value,
                _ => {}
            }
            pos = next;
        }
        f
    }
}

impl std::fmt::Display for ErrorFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)
    }
}

/// A CopyData message with `body`.
pub fn copy_data(body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() + 5);
    out.put_u8(b'd');
    out.put_u32(u32::try_from(body.len() + 4).unwrap_or(u32::MAX));
    out.put_slice(body);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_round_trip() {
        let raw = error_response("FATAL", "28P01", "password authentication failed", None);
        assert_eq!(raw[0], b'E');
        let len = i32::from_be_bytes([raw[1], raw[2], raw[3], raw[4]]) as usize;
        assert_eq!(len + 1, raw.len());
        let f = ErrorFields::parse(&raw[5..]);
        assert_eq!((f.severity.as_str(), f.code.as_str()), ("FATAL", "28P01"));
        assert_eq!(f.message, "password authentication failed");
    }

    #[test]
    fn ready_for_query_shape() {
        let mut b = BytesMut::new();
        ready_for_query(&mut b, b'I');
        assert_eq!(&b[..], &[b'Z', 0, 0, 0, 5, b'I']);
    }
}
