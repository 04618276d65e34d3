//! A scripted fake PostgreSQL server, for the faults a real one cannot be made to produce on
//! demand (a FATAL in the middle of a result, an ErrorResponse with a broken length, a close
//! between Parse and Bind). It complements the real servers of the harness, never replaces
//! them. It logs any user in (AuthenticationOk, a few ParameterStatus, BackendKeyData) and then
//! answers each message usher forwards with what the script returns.
//!
//! Also used by the `session` fuzz target (included by path), so it depends on tokio only.

#![allow(dead_code)]

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the fake server does in answer to one message.
pub enum Action {
    /// Writes these bytes.
    Send(Vec<u8>),
    /// Closes the connection.
    Close,
}

/// Decides the answer to a message: (connection number from 0, tag, body).
pub type Script = Arc<dyn Fn(usize, u8, &[u8]) -> Vec<Action> + Send + Sync>;

/// A running fake server.
pub struct FakeServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeServer {
    /// Starts a fake server answering with `script`.
    pub async fn start(script: Script) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut n = 0;
            while let Ok((stream, _)) = listener.accept().await {
                let script = script.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, n, script).await;
                });
                n += 1;
            }
        });
        FakeServer { port, task }
    }
}

/// One connection: login, then message by message.
async fn serve(mut s: TcpStream, n: usize, script: Script) -> std::io::Result<()> {
    loop {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await?;
        let len = u32::from_be_bytes(len) as usize;
        let mut body = vec![0u8; len.saturating_sub(4)];
        s.read_exact(&mut body).await?;
        if body.starts_with(&[0x04, 0xd2, 0x16, 0x2f]) {
            s.write_all(b"N").await?; // SSLRequest: no TLS here
            continue;
        }
        break;
    }
    // The script may refuse the login itself (it sees tag 0).
    let at_login = script(n, 0, &[]);
    if at_login.is_empty() {
        s.write_all(&login_ok()).await?;
    } else if !run(&mut s, at_login).await? {
        return Ok(());
    }
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 8192];
        let r = s.read(&mut chunk).await?;
        if r == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..r]);
        while buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() < 1 + len {
                break;
            }
            let tag = buf[0];
            let body = buf[5..1 + len].to_vec();
            buf.drain(..1 + len);
            if tag == b'X' {
                return Ok(());
            }
            if !run(&mut s, script(n, tag, &body)).await? {
                return Ok(());
            }
        }
    }
}

/// Carries out actions; false once the connection was closed.
async fn run(s: &mut TcpStream, actions: Vec<Action>) -> std::io::Result<bool> {
    for a in actions {
        match a {
            Action::Send(bytes) => s.write_all(&bytes).await?,
            Action::Close => {
                let _ = s.shutdown().await;
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// A raw protocol 3.0 startup packet.
pub fn startup_packet(user: &str, db: &str) -> Vec<u8> {
    let mut body = 196608u32.to_be_bytes().to_vec();
    for (k, v) in [("user", user), ("database", db)] {
        cstr(&mut body, k);
        cstr(&mut body, v);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// The (tag, body) frames of bytes a server (or usher) sent; a cut-off frame at the end is
/// left out.
pub fn frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while let (Some(&tag), Some(len)) = (bytes.first(), bytes.get(1..5)) {
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let Some(body) = bytes.get(5..1 + len) else {
            break;
        };
        out.push((tag, body.to_vec()));
        bytes = &bytes[1 + len..];
    }
    out
}

/// The SQLSTATE of an ErrorResponse body (empty when it has none).
pub fn error_code(body: &[u8]) -> String {
    body.split(|b| *b == 0)
        .find_map(|f| f.strip_prefix(b"C"))
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .unwrap_or_default()
}

/// One message: tag, length, body.
pub fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// AuthenticationOk, the ParameterStatus a client expects, BackendKeyData, ReadyForQuery.
pub fn login_ok() -> Vec<u8> {
    let mut out = frame(b'R', &0u32.to_be_bytes());
    for (k, v) in [
        ("server_version", "15.0"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("TimeZone", "UTC"),
    ] {
        let mut b = Vec::new();
        cstr(&mut b, k);
        cstr(&mut b, v);
        out.extend(frame(b'S', &b));
    }
    out.extend(frame(b'K', &[0, 0, 0, 7, 0, 0, 0, 9]));
    out.extend(ready(b'I'));
    out
}

/// ReadyForQuery with `status`.
pub fn ready(status: u8) -> Vec<u8> {
    frame(b'Z', &[status])
}

/// An ErrorResponse.
pub fn error(severity: &str, code: &str, message: &str) -> Vec<u8> {
    let mut b = Vec::new();
    for (t, v) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', message),
    ] {
        b.push(t);
        cstr(&mut b, v);
    }
    b.push(0);
    frame(b'E', &b)
}

/// CommandComplete.
pub fn complete(tag: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, tag);
    frame(b'C', &b)
}

/// A RowDescription of text columns.
pub fn row_description(names: &[&str]) -> Vec<u8> {
    let mut b = (names.len() as u16).to_be_bytes().to_vec();
    for n in names {
        cstr(&mut b, n);
        b.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // table oid, column number
        b.extend_from_slice(&25u32.to_be_bytes()); // text
        b.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0]); // size, typmod, format
    }
    frame(b'T', &b)
}

/// A DataRow of text values.
pub fn data_row(values: &[&str]) -> Vec<u8> {
    let mut b = (values.len() as u16).to_be_bytes().to_vec();
    for v in values {
        b.extend_from_slice(&(v.len() as u32).to_be_bytes());
        b.extend_from_slice(v.as_bytes());
    }
    frame(b'D', &b)
}

/// What a Postgres answers to each message of a statement that returns one row `1`, so a
/// script only has to say where it differs.
pub fn generic(tag: u8, body: &[u8]) -> Vec<Action> {
    let one_row = || {
        [
            row_description(&["x"]),
            data_row(&["1"]),
            complete("SELECT 1"),
        ]
        .concat()
    };
    let send = |b: Vec<u8>| vec![Action::Send(b)];
    match tag {
        b'Q' => send([one_row(), ready(b'I')].concat()),
        b'P' => send(frame(b'1', b"")),
        b'B' => send(frame(b'2', b"")),
        b'D' if body.first() == Some(&b'S') => {
            send([frame(b't', &0u16.to_be_bytes()), row_description(&["x"])].concat())
        }
        b'D' => send(row_description(&["x"])),
        b'E' => send([data_row(&["1"]), complete("SELECT 1")].concat()),
        b'S' => send(ready(b'I')),
        b'C' => send(frame(b'3', b"")),
        b'F' => send(
            [
                error("ERROR", "0A000", "fake server: no function calls"),
                ready(b'I'),
            ]
            .concat(),
        ),
        _ => Vec::new(),
    }
}

/// The config text for usher with one database `fake` on the fake server at `port` (role
/// fixed: no probes) and a trust user `u`.
pub fn config(port: u16, general_extra: &str) -> String {
    format!(
        r#"
[general]
listen = "127.0.0.1:0"
server_check_delay = "0"
{general_extra}

[[users]]
name = "u"
auth_type = "trust"

[databases.fake]
shards = [ {{ primary = {{ addr = "127.0.0.1:{port}/fake", role = "primary" }} }} ]
"#
    )
}

/// Wraps `script` so that usher's monitor probe (`SELECT pg_is_in_recovery(), ...lsn::text`)
/// gets a real answer: the server says it is a replica when `in_recovery`, at LSN 0/1000000.
/// A connection is the monitor's once it parses that query; every other message goes to
/// `script`.
pub fn answering_probes(script: Script, in_recovery: bool) -> Script {
    let probing = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    Arc::new(move |conn, tag, body| {
        let is_probe = tag == b'P'
            && String::from_utf8_lossy(body).contains("pg_is_in_recovery()")
            && probing.lock().unwrap().insert(conn);
        if !is_probe && !probing.lock().unwrap().contains(&conn) {
            return script(conn, tag, body);
        }
        let send = |b: Vec<u8>| vec![Action::Send(b)];
        match tag {
            b'P' => send(frame(b'1', b"")),
            b'D' => {
                let mut rd = 2u16.to_be_bytes().to_vec();
                for (name, oid) in [("in_recovery", 16u32), ("lsn", 25)] {
                    cstr(&mut rd, name);
                    rd.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
                    rd.extend_from_slice(&oid.to_be_bytes());
                    rd.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0]);
                }
                send([frame(b't', &0u16.to_be_bytes()), frame(b'T', &rd)].concat())
            }
            b'B' => send(frame(b'2', b"")),
            b'E' => {
                // Binary results, as tokio-postgres asks for them.
                let mut row = 2u16.to_be_bytes().to_vec();
                for v in [&[in_recovery as u8][..], b"0/1000000"] {
                    row.extend_from_slice(&(v.len() as u32).to_be_bytes());
                    row.extend_from_slice(v);
                }
                send([frame(b'D', &row), complete("SELECT 1")].concat())
            }
            b'S' => send(ready(b'I')),
            b'C' => send(frame(b'3', b"")),
            _ => Vec::new(),
        }
    })
}
