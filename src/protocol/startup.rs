//! The untagged first packet a client sends: StartupMessage, SSLRequest, GSSENCRequest or
//! CancelRequest.

use bytes::{Buf, BytesMut};

use super::{read_cstr, ProtocolError};

/// Largest startup packet accepted (the same limit Postgres applies).
pub const MAX_STARTUP_PACKET: usize = 10_000;

const SSL_REQUEST: u32 = 80877103;
const GSSENC_REQUEST: u32 = 80877104;
const CANCEL_REQUEST: u32 = 80877102;

/// A decoded first packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// Client asks for TLS.
    SslRequest,
    /// Client asks for GSSAPI encryption.
    GssEncRequest,
    /// Out-of-band cancel of the query running on the connection with this key.
    Cancel {
        /// Process id the client was given in BackendKeyData.
        pid: i32,
        /// Secret key the client was given.
        key: i32,
    },
    /// A session start with protocol version and parameters (user, database, options, ...).
    Startup {
        /// Minor protocol version requested (major is always 3).
        minor: u16,
        /// Parameters in the order sent.
        params: Vec<(String, String)>,
    },
}

impl StartupPacket {
    /// Value of a startup parameter.
    pub fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Cuts and decodes a startup packet from `buf`; `None` until it is all there.
pub fn split_startup(buf: &mut BytesMut) -> Result<Option<StartupPacket>, ProtocolError> {
    let Some(&[a, b, c, d]) = buf.get(..4) else {
        return Ok(None);
    };
    let len = i32::from_be_bytes([a, b, c, d]);
    if len < 8 || len as usize > MAX_STARTUP_PACKET {
        return Err(ProtocolError::BadLength {
            tag: '\0',
            len: len as i64,
            max: MAX_STARTUP_PACKET,
        });
    }
    let len = len as usize;
    if buf.len() < len {
        return Ok(None);
    }
    let mut packet = buf.split_to(len);
    packet.advance(4);
    let code = packet.get_u32();
    match code {
        SSL_REQUEST if len == 8 => Ok(Some(StartupPacket::SslRequest)),
        GSSENC_REQUEST if len == 8 => Ok(Some(StartupPacket::GssEncRequest)),
        CANCEL_REQUEST if len == 16 => Ok(Some(StartupPacket::Cancel {
            pid: packet.get_i32(),
            key: packet.get_i32(),
        })),
        SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST => Err(ProtocolError::Malformed {
            what: "startup request",
        }),
        _ if code >> 16 == 3 => {
            let mut params = Vec::new();
            let mut pos = 0;
            loop {
                let (name, next) = read_cstr(&packet, pos, "startup")?;
                if name.is_empty() {
                    break;
                }
                let (value, next) = read_cstr(&packet, next, "startup")?;
                let text = |b: &[u8]| {
                    String::from_utf8(b.to_vec())
                        .map_err(|_| ProtocolError::Malformed { what: "startup" })
                };
                params.push((text(name)?, text(value)?));
                pos = next;
            }
            Ok(Some(StartupPacket::Startup {
                minor: (code & 0xffff) as u16,
                params,
            }))
        }
        _ => Err(ProtocolError::Violation(format!(
            "unsupported frontend protocol {}.{}: server supports 3.0",
            code >> 16,
            code & 0xffff
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: u32, body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.extend_from_slice(&((8 + body.len()) as i32).to_be_bytes());
        b.extend_from_slice(&code.to_be_bytes());
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn startup_params() {
        let mut b = packet(196608, b"user\0app\0database\0db\0\0");
        match split_startup(&mut b).unwrap().unwrap() {
            StartupPacket::Startup { minor, params } => {
                assert_eq!(minor, 0);
                assert_eq!(StartupPacket::param(&params, "user"), Some("app"));
                assert_eq!(StartupPacket::param(&params, "database"), Some("db"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ssl_and_cancel() {
        assert_eq!(
            split_startup(&mut packet(SSL_REQUEST, b"")).unwrap(),
            Some(StartupPacket::SslRequest)
        );
        let mut body = Vec::new();
        body.extend_from_slice(&7i32.to_be_bytes());
        body.extend_from_slice(&(-9i32).to_be_bytes());
        assert_eq!(
            split_startup(&mut packet(CANCEL_REQUEST, &body)).unwrap(),
            Some(StartupPacket::Cancel { pid: 7, key: -9 })
        );
    }

    #[test]
    fn bad_packets() {
        let mut huge = BytesMut::from(&100_000i32.to_be_bytes()[..]);
        assert!(split_startup(&mut huge).is_err());
        let mut tiny = BytesMut::from(&3i32.to_be_bytes()[..]);
        assert!(split_startup(&mut tiny).is_err());
        assert!(split_startup(&mut packet(196608, b"user\0app")).is_err());
        assert!(split_startup(&mut packet(2 << 16, b"")).is_err());
        let mut partial = packet(196608, b"user\0app\0\0");
        partial.truncate(6);
        assert_eq!(split_startup(&mut partial).unwrap(), None);
    }
}
