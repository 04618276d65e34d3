//! Faults real Postgres cannot be made to produce on demand, from the scripted fake server in
//! tests/common/fake_server.rs: a FATAL in the middle of a result, an ErrorResponse whose
//! length field is too short (at login and mid-session), and a server that closes between
//! Parse and Bind. Each reaches the client as an error naming the cause; usher never panics
//! and goes on serving the next client.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::fake_server::{self, Action, FakeServer};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Logs in to usher as the trust user `u` on the fake database.
async fn client(port: u16) -> tokio::net::TcpStream {
    raw_login(port, "u", "fake").await
}

/// Sends `bytes` and reads until the connection closes (5 s at most); returns what came.
async fn send_and_read_to_close(s: &mut tokio::net::TcpStream, bytes: &[u8]) -> Vec<u8> {
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(r.is_ok(), "usher neither answered nor closed: {out:?}");
    out
}

/// (tag, SQLSTATE or "") of each message.
fn shape(bytes: &[u8]) -> Vec<(char, String)> {
    fake_server::frames(bytes)
        .into_iter()
        .map(|(tag, body)| {
            let code = if tag == b'E' {
                fake_server::error_code(&body)
            } else {
                String::new()
            };
            (tag as char, code)
        })
        .collect()
}

fn query(sql: &str) -> Vec<u8> {
    fake_server::frame(b'Q', format!("{sql}\0").as_bytes())
}

/// usher still serves: a fresh client's query gets its row.
async fn still_serves(port: u16) {
    let mut s = client(port).await;
    s.write_all(&query("SELECT 1")).await.unwrap();
    let got = read_until_ready(&mut s, 1).await;
    let tags: Vec<char> = shape(&got).into_iter().map(|(t, _)| t).collect();
    assert_eq!(tags, ['T', 'D', 'C', 'Z'], "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fatal_in_the_middle_of_a_result() {
    let fake = FakeServer::start(Arc::new(|_, tag, body| {
        if tag == b'Q' && body.starts_with(b"SELECT boom") {
            return vec![
                Action::Send(
                    [
                        fake_server::row_description(&["x"]),
                        fake_server::data_row(&["1"]),
                        fake_server::error("FATAL", "57P01", "terminating connection"),
                    ]
                    .concat(),
                ),
                Action::Close,
            ];
        }
        fake_server::generic(tag, body)
    }))
    .await;
    let u = start_usher(&fake_server::config(fake.port, "")).await;
    let mut s = client(u.port).await;
    let got = shape(&send_and_read_to_close(&mut s, &query("SELECT boom")).await);
    // The row that arrived, the server's own FATAL, then usher's word that the server is gone.
    assert_eq!(
        got,
        [
            ('T', String::new()),
            ('D', String::new()),
            ('E', "57P01".to_string()),
            ('E', "08006".to_string())
        ],
        "{got:?}"
    );
    still_serves(u.port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_response_with_a_short_length() {
    // Length 3: less than the length field itself.
    let broken = vec![b'E', 0, 0, 0, 3];
    let fake = {
        let broken = broken.clone();
        FakeServer::start(Arc::new(move |conn, tag, body| match (conn, tag) {
            (0, 0) => vec![Action::Send(broken.clone()), Action::Close],
            (1, b'Q') if body.starts_with(b"SELECT broken") => {
                vec![Action::Send(broken.clone())]
            }
            _ if tag == 0 => Vec::new(),
            _ => fake_server::generic(tag, body),
        }))
        .await
    };
    let u = start_usher(&fake_server::config(fake.port, "")).await;
    // At login (usher's first server connection): the client is told, with 08006.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", u.port))
        .await
        .unwrap();
    let got = shape(&send_and_read_to_close(&mut s, &startup_packet("u", "fake")).await);
    assert!(
        got.iter().any(|(t, c)| *t == 'E' && c.starts_with("08")),
        "{got:?}"
    );
    // Mid-session: the session ends with an error, and nothing else is harmed.
    let mut s = client(u.port).await;
    let got = shape(&send_and_read_to_close(&mut s, &query("SELECT broken")).await);
    assert!(
        matches!(got.last(), Some(('E', c)) if c.starts_with("08")),
        "{got:?}"
    );
    still_serves(u.port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_closes_between_parse_and_bind() {
    let fake = FakeServer::start(Arc::new(|_, tag, body| {
        if tag == b'P' && body.windows(10).any(|w| w == b"SELECT 'p'") {
            return vec![Action::Send(fake_server::frame(b'1', b"")), Action::Close];
        }
        fake_server::generic(tag, body)
    }))
    .await;
    let u = start_usher(&fake_server::config(fake.port, "")).await;
    let mut s = client(u.port).await;
    // Parse + Flush: the ParseComplete comes back, then the server is gone.
    let parse = fake_server::frame(b'P', b"\0SELECT 'p'\0\0\0");
    s.write_all(&[parse, fake_server::frame(b'H', b"")].concat())
        .await
        .unwrap();
    let mut first = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut first))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first[0], b'1');
    let rest = [
        fake_server::frame(b'B', b"\0\0\0\0\0\0\0\0"),
        fake_server::frame(b'E', b"\0\0\0\0\0"),
        fake_server::frame(b'S', b""),
    ]
    .concat();
    let got = shape(&send_and_read_to_close(&mut s, &rest).await);
    assert!(
        matches!(got.last(), Some(('E', c)) if c == "08006"),
        "{got:?}"
    );
    still_serves(u.port).await;
}

/// A replica shutting down flushes the rows it had buffered and then its FATAL: the read was
/// held back whole, so none of it reached the client and it is replayed on the primary, which
/// answers it. Before, the rows were relayed as they came and the client got the FATAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_cut_by_a_replica_shutdown_is_replayed_elsewhere() {
    let hit = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = hit.clone();
    let replica = FakeServer::start(fake_server::answering_probes(
        Arc::new(move |_, tag, body| {
            if tag == b'Q' && body.starts_with(b"SELECT boom") {
                seen.store(true, std::sync::atomic::Ordering::SeqCst);
                return vec![
                    Action::Send(
                        [
                            fake_server::row_description(&["x"]),
                            fake_server::data_row(&["replica"]),
                            fake_server::error("FATAL", "57P01", "terminating connection"),
                        ]
                        .concat(),
                    ),
                    Action::Close,
                ];
            }
            fake_server::generic(tag, body)
        }),
        true,
    ))
    .await;
    let primary = FakeServer::start(fake_server::answering_probes(
        Arc::new(|_, tag, body| {
            if tag == b'Q' && body.starts_with(b"SELECT boom") {
                return vec![Action::Send(
                    [
                        fake_server::row_description(&["x"]),
                        fake_server::data_row(&["primary"]),
                        fake_server::complete("SELECT 1"),
                        fake_server::ready(b'I'),
                    ]
                    .concat(),
                )];
            }
            fake_server::generic(tag, body)
        }),
        false,
    ))
    .await;
    let config = fake_server::config(primary.port, "").replace(
        &format!(
            "shards = [ {{ primary = {{ addr = \"127.0.0.1:{}/fake\", role = \"primary\" }} }} ]",
            primary.port
        ),
        &format!(
            "read_write_split = true\nmax_replica_lag = \"0\"\nshards = [ {{ primary = {{ addr = \"127.0.0.1:{}/fake\", role = \"primary\" }}, replicas = [ \"127.0.0.1:{}/fake\" ] }} ]",
            primary.port, replica.port
        ),
    );
    assert!(config.contains("read_write_split"), "{config}");
    let u = start_usher(&config.replace(
        "server_check_delay",
        "lag_check_interval = \"50ms\"\nserver_check_delay",
    ))
    .await;
    // The replica takes reads once the monitor measured it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while u.app.topology().databases["fake"][0].servers[1]
        .lag_ms
        .load(std::sync::atomic::Ordering::Relaxed)
        != 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the replica was never measured"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut s = client(u.port).await;
    s.write_all(&query("SELECT boom")).await.unwrap();
    let got = read_until_ready(&mut s, 1).await;
    let frames = fake_server::frames(&got);
    let tags: Vec<char> = frames.iter().map(|(t, _)| *t as char).collect();
    assert_eq!(tags, ['T', 'D', 'C', 'Z'], "{got:?}");
    assert!(
        hit.load(std::sync::atomic::Ordering::SeqCst),
        "the read went to the replica first"
    );
    assert!(
        frames[1].1.ends_with(b"primary"),
        "the primary's row, not the replica's: {got:?}"
    );
    still_serves(u.port).await;
}
