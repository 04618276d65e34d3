//! Everything passes through usher as on a direct connection: simple and extended protocol,
//! pipelining, COPY both ways, notices, errors mid-result, large rows, cancel.

mod common;

use common::*;
use futures_util::{pin_mut, SinkExt, StreamExt, TryStreamExt};

async fn setup(prefix: &str, extra: &str) -> (Usher, String) {
    let db = topology().create_db(prefix);
    let usher = start_usher(&config(&db, extra)).await;
    (usher, db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_query_with_several_statements() {
    let (u, db) = setup("simple", "default_pool_size = 2").await;
    let c = connect(u.port, "app", &db).await.unwrap();
    let msgs = c
        .simple_query("CREATE TABLE t (id int, v text); INSERT INTO t VALUES (1, 'a'), (2, 'b'); SELECT v FROM t ORDER BY id")
        .await
        .unwrap();
    let rows: Vec<String> = msgs
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(rows, vec!["a", "b"]);
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM t WHERE id = $1 OR id = $2",
            &[&1i32, &2i32],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_pipelined() {
    let (u, db) = setup("pipeline", "default_pool_size = 2").await;
    let c = connect(u.port, "app", &db).await.unwrap();
    let s = c.prepare("SELECT $1::int * 2").await.unwrap();
    // tokio-postgres pipelines concurrent queries on one connection.
    let futures: Vec<_> = (0..50i32)
        .map(|i| {
            let c = &c;
            let s = &s;
            async move { c.query_one(s, &[&i]).await.unwrap().get::<_, i32>(0) }
        })
        .collect();
    let results = futures_util::future::join_all(futures).await;
    assert_eq!(results, (0..50).map(|i| i * 2).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_mid_result_and_notices() {
    let (u, db) = setup("errors", "default_pool_size = 1").await;
    let c = connect(u.port, "app", &db).await.unwrap();
    let err = c
        .simple_query("SELECT 1/(3-g) FROM generate_series(1,5) g")
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::DIVISION_BY_ZERO)
    );
    let err = c
        .query("SELECT 1/(3-g) FROM generate_series(1,5) g", &[])
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::DIVISION_BY_ZERO)
    );
    // The connection is still usable, on the same one-connection pool.
    c.batch_execute("DO $$ BEGIN RAISE NOTICE 'hello'; END $$")
        .await
        .unwrap();
    assert_eq!(
        c.query_one("SELECT 7", &[]).await.unwrap().get::<_, i32>(0),
        7
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out() {
    let (u, db) = setup("copy", "default_pool_size = 2").await;
    let c = connect(u.port, "app", &db).await.unwrap();
    c.batch_execute("CREATE TABLE c (id int, v text)")
        .await
        .unwrap();
    let sink = c.copy_in("COPY c FROM STDIN").await.unwrap();
    pin_mut!(sink);
    let mut data = String::new();
    for i in 0..10_000 {
        data.push_str(&format!("{i}\tvalue {i}\n"));
    }
    sink.send(bytes::Bytes::from(data.clone())).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 10_000);
    let stream = c.copy_out("COPY c TO STDOUT").await.unwrap();
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
    let out: Vec<u8> = chunks.concat();
    assert_eq!(String::from_utf8(out).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabyte_row_streams() {
    let (u, db) = setup("bigrow", "default_pool_size = 1").await;
    let c = connect(u.port, "app", &db).await.unwrap();
    let rss_before = rss_kib();
    let row = c
        .query_one("SELECT repeat('x', 100 * 1024 * 1024)", &[])
        .await
        .unwrap();
    let v: &str = row.get(0);
    assert_eq!(v.len(), 100 * 1024 * 1024);
    assert!(v.bytes().all(|b| b == b'x'));
    drop(row);
    // The client (in this same process) holds the row; usher must not hold another copy
    // for long. We only check nothing exploded far beyond the row itself.
    assert!(
        rss_kib() < rss_before + 600 * 1024,
        "RSS grew by more than 600 MiB"
    );
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_running_query() {
    let (u, db) = setup("cancel", "default_pool_size = 2").await;
    let c = connect(u.port, "app", &db).await.unwrap();
    let token = c.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    });
    let started = std::time::Instant::now();
    let err = c.simple_query("SELECT pg_sleep(30)").await.unwrap_err();
    canceller.await.unwrap();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(
        c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_in_session_mode() {
    let (u, db) = setup("notify", "pool_mode = \"session\"\ndefault_pool_size = 3").await;
    let (listener, mut conn) =
        tokio_postgres::connect(&dsn(u.port, "app", &db), tokio_postgres::NoTls)
            .await
            .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(Ok(msg)) = stream.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = msg {
                let _ = tx.send(n.payload().to_string());
            }
        }
    });
    listener.batch_execute("LISTEN chan").await.unwrap();
    let sender = connect(u.port, "app", &db).await.unwrap();
    sender.batch_execute("NOTIFY chan, 'ping'").await.unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some("ping"));
}
