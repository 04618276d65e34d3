//! Raw extended-protocol messages for tests that compare usher's frames with Postgres's:
//! built by hand so that a test controls exactly what is pipelined before a Sync.

use super::fake_server::frame;
use super::{raw_login, read_until_ready};
use tokio::io::AsyncWriteExt;

/// A Parse of `sql` as statement `name`, without parameter types.
pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut p = format!("{name}\0{sql}\0").into_bytes();
    p.extend_from_slice(&0i16.to_be_bytes());
    frame(b'P', &p)
}

/// Bind of `stmt` to the unnamed portal with text parameters and text results.
pub fn bind(stmt: &str, params: &[&str]) -> Vec<u8> {
    bind_results(stmt, params, &[])
}

/// Bind of `stmt` to the unnamed portal with text parameters and the result format codes
/// `results` (none: all text; one: every column; else one per column).
pub fn bind_results(stmt: &str, params: &[&str], results: &[i16]) -> Vec<u8> {
    let mut b = format!("\0{stmt}\0").into_bytes();
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        b.extend_from_slice(&(p.len() as i32).to_be_bytes());
        b.extend_from_slice(p.as_bytes());
    }
    b.extend_from_slice(&(results.len() as i16).to_be_bytes());
    for r in results {
        b.extend_from_slice(&r.to_be_bytes());
    }
    frame(b'B', &b)
}

/// Describe of the unnamed portal, then Execute of it.
pub fn describe_execute() -> Vec<u8> {
    let mut out = frame(b'D', b"P\0");
    out.extend(frame(b'E', b"\0\0\0\0\0"));
    out
}

/// One statement as libpq's PQsendQueryParams sends it in pipeline mode.
pub fn statement(sql: &str, params: &[&str]) -> Vec<u8> {
    let mut out = parse("", sql);
    out.extend(bind("", params));
    out.extend(describe_execute());
    out
}

/// The frames answering `bytes` (ended by one Sync) on a raw connection to `port`/`db`,
/// RowDescriptions without table OIDs and column numbers (which differ between databases).
pub async fn answer(port: u16, db: &str, bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut s = raw_login(port, "trust_user", db).await;
    s.write_all(bytes).await.unwrap();
    let got = read_until_ready(&mut s, 1).await;
    super::fake_server::frames(&got)
        .into_iter()
        .map(|(tag, body)| (tag, if tag == b'T' { untabled(&body) } else { body }))
        .collect()
}

/// A RowDescription body without table OIDs and column numbers.
pub fn untabled(body: &[u8]) -> Vec<u8> {
    let n = i16::from_be_bytes([body[0], body[1]]) as usize;
    let mut out = body[..2].to_vec();
    let mut at = 2;
    for _ in 0..n {
        let end = at + body[at..].iter().position(|b| *b == 0).unwrap() + 1;
        out.extend_from_slice(&body[at..end]);
        out.extend_from_slice(&body[end + 6..end + 18]);
        at = end + 18;
    }
    out
}
