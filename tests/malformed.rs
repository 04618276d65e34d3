//! Malformed client messages on a logged-in connection: each is answered as Postgres answers
//! it (ERROR 08P01, the rest of an extended batch skipped up to its Sync, the connection kept),
//! on every routing path (plain, read/write split, inside a transaction on a server), and the
//! same socket goes on working afterwards.

mod common;

use common::*;
use tokio::io::AsyncWriteExt;

use common::fake_server::{error_code, frame as msg, frames};

/// Parse, Bind (bodies as given), Execute of the unnamed portal, Sync: one extended batch.
fn parse_bind_execute_sync(parse: &[u8], bind: &[u8]) -> Vec<u8> {
    [
        msg(b'P', parse),
        msg(b'B', bind),
        msg(b'E', b"\0\0\0\0\0"),
        msg(b'S', b""),
    ]
    .concat()
}

fn query(sql: &str) -> Vec<u8> {
    msg(b'Q', format!("{sql}\0").as_bytes())
}

/// Tags and error codes of an answer, e.g. `["1", "E 08P01", "Z I"]`.
fn shape(bytes: &[u8]) -> Vec<String> {
    frames(bytes)
        .into_iter()
        .filter(|(t, _)| !matches!(t, b'N' | b'S'))
        .map(|(t, b)| match t {
            b'E' => format!("E {}", error_code(&b)),
            b'Z' => format!("Z {}", b[0] as char),
            t => (t as char).to_string(),
        })
        .collect()
}

async fn exchange(s: &mut tokio::net::TcpStream, bytes: &[u8], ready: usize) -> Vec<String> {
    s.write_all(bytes).await.unwrap();
    shape(&read_until_ready_any(s, ready).await)
}

/// Reads until `n` ReadyForQuery frames of any status arrived.
async fn read_until_ready_any(s: &mut tokio::net::TcpStream, n: usize) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    while frames(&got).iter().filter(|(t, _)| *t == b'Z').count() < n {
        let r = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("usher answers within 5 s")
            .unwrap();
        assert!(r > 0, "usher closed the connection: {:?}", shape(&got));
        got.extend_from_slice(&buf[..r]);
    }
    got
}

async fn check_every_path(config_text: &str, db: &str) {
    let u = start_usher(config_text).await;
    let mut s = raw_login(u.port, "trust_user", db).await;
    // An empty simple Query (no terminator): an error, not a dead session.
    let empty_q = msg(b'Q', b"");
    assert_eq!(exchange(&mut s, &empty_q, 1).await, ["E 08P01", "Z I"]);
    assert_eq!(
        exchange(&mut s, &query("SELECT 1"), 1).await,
        ["T", "D", "C", "Z I"]
    );
    // A Query with bytes after its terminator.
    let trailing = msg(b'Q', b"SELECT 1\0junk");
    assert_eq!(exchange(&mut s, &trailing, 1).await, ["E 08P01", "Z I"]);
    // A truncated Parse at the start of a batch: the rest is skipped up to Sync.
    let batch = parse_bind_execute_sync(b"s\0SELECT 1", b"\0\0\0\0\0\0\0\0");
    assert_eq!(exchange(&mut s, &batch, 1).await, ["E 08P01", "Z I"]);
    // A good Parse then a broken Bind in one batch.
    let batch = parse_bind_execute_sync(b"\0SELECT 1\0\0\0", b"\0");
    let got = exchange(&mut s, &batch, 1).await;
    assert_eq!(got.last().map(String::as_str), Some("Z I"), "{got:?}");
    assert!(got.contains(&"E 08P01".to_string()), "{got:?}");
    assert!(!got.contains(&"D".to_string()), "nothing ran: {got:?}");
    // Inside a transaction that holds a server: the transaction is now aborted, as Postgres
    // leaves it, and ROLLBACK ends it.
    assert_eq!(
        exchange(&mut s, &query("BEGIN; SELECT 1"), 1).await,
        ["C", "T", "D", "C", "Z T"]
    );
    assert_eq!(exchange(&mut s, &empty_q, 1).await, ["E 08P01", "Z E"]);
    assert_eq!(
        exchange(&mut s, &query("SELECT 1"), 1).await,
        ["E 25P02", "Z E"]
    );
    assert_eq!(exchange(&mut s, &query("ROLLBACK"), 1).await, ["C", "Z I"]);
    // A Sync with a body, a Describe of neither statement nor portal.
    let bad = [msg(b'D', b"X\0"), msg(b'S', b"")].concat();
    assert_eq!(exchange(&mut s, &bad, 1).await, ["E 08P01", "Z I"]);
    assert_eq!(
        exchange(&mut s, &query("SELECT 2"), 1).await,
        ["T", "D", "C", "Z I"]
    );
    let (_, metrics) = http_get(u.metrics_port, "/metrics").await;
    assert!(
        metric(&metrics, "usher_client_protocol_violations_total", &[]) >= 6.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_on_a_plain_database() {
    let db = topology().create_db("malformed");
    check_every_path(&config(&db, "default_pool_size = 2"), &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_with_read_write_split() {
    let t = topology();
    let db = t.create_db("malformed_split");
    t.wait_replicas_caught_up();
    for mode in ["transaction", "session"] {
        let config = split_config(
            &db,
            &[t.replica().port],
            &format!("default_pool_size = 2\npool_mode = \"{mode}\""),
            "",
        );
        check_every_path(&config, &db).await;
    }
}
