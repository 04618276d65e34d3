//! Operations against real Postgres: the numbers on `/metrics` and `/pools` are true (clients
//! held in transactions and waiting, server connections, counters that match what the test
//! sent), and `/health` and `/ready` answer.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_tell_the_truth() {
    let db = topology().create_db("ops");
    let u = start_usher(&config(
        &db,
        "default_pool_size = 3\nquery_wait_timeout = \"30s\"",
    ))
    .await;
    let (status, body) = http_get(u.metrics_port, "/health").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    // Three clients hold a server each in a transaction; two more wait for one; one is idle.
    let mut holders = Vec::new();
    for _ in 0..3 {
        let c = connect(u.port, "app", &db).await.unwrap();
        c.batch_execute("BEGIN; SELECT 1").await.unwrap();
        holders.push(c);
    }
    let mut waiters = Vec::new();
    for _ in 0..2 {
        let c = connect(u.port, "app", &db).await.unwrap();
        waiters.push(tokio::spawn(async move {
            c.batch_execute("SELECT 1").await.unwrap();
            c
        }));
    }
    let _idle = connect(u.port, "app", &db).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, text) = http_get(u.metrics_port, "/metrics").await;
    assert_eq!(status, 200);
    let d = format!("database=\"{db}\"");
    let d = d.as_str();
    assert_eq!(
        metric(&text, "usher_clients", &[d, "state=\"active\""]),
        3.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "usher_clients", &[d, "state=\"waiting\""]),
        2.0
    );
    assert_eq!(metric(&text, "usher_clients", &[d, "state=\"idle\""]), 1.0);
    assert_eq!(
        metric(
            &text,
            "usher_server_connections",
            &[d, "state=\"active\"", "role=\"primary\"", "shard=\"0\""]
        ),
        3.0
    );
    assert_eq!(
        metric(&text, "usher_server_connections", &[d, "state=\"idle\""]),
        0.0
    );
    assert_eq!(metric(&text, "usher_pool_size", &[d]), 3.0);
    assert!(
        metric(&text, "usher_pool_max_wait_seconds", &[d]) >= 0.4,
        "{text}"
    );
    let (_, pools) = http_get(u.metrics_port, "/pools").await;
    let pools: serde_json::Value = serde_json::from_str(&pools).unwrap();
    let row = &pools["pools"][0];
    assert_eq!(
        (
            row["active"].as_u64(),
            row["waiting"].as_u64(),
            row["role"].as_str()
        ),
        (Some(3), Some(2), Some("primary"))
    );
    // Release: the waiters get their turn.
    for c in &holders {
        c.batch_execute("COMMIT").await.unwrap();
    }
    for w in waiters {
        w.await.unwrap();
    }
    // Counters match what one client sends.
    let before = http_get(u.metrics_port, "/metrics").await.1;
    let c = connect(u.port, "app", &db).await.unwrap();
    let login_done = http_get(u.metrics_port, "/metrics").await.1;
    for _ in 0..10 {
        c.simple_query("SELECT 1").await.unwrap();
    }
    c.batch_execute("BEGIN; SELECT 1; SELECT 2; COMMIT")
        .await
        .unwrap();
    assert!(c
        .batch_execute("SELECT * FROM no_such_table")
        .await
        .is_err());
    let after = http_get(u.metrics_port, "/metrics").await.1;
    let delta = |name: &str| metric(&after, name, &[d]) - metric(&login_done, name, &[d]);
    assert_eq!(
        delta("usher_queries_total"),
        12.0,
        "ten queries, one multi-statement string, one error"
    );
    assert_eq!(delta("usher_transactions_total"), 12.0);
    assert_eq!(delta("usher_errors_total"), 1.0);
    // Each "SELECT 1" Query message is 14 bytes; the other two strings are 1 + 4 + len + 1.
    let sent = 10 * 14
        + (5 + "BEGIN; SELECT 1; SELECT 2; COMMIT".len() + 1)
        + (5 + "SELECT * FROM no_such_table".len() + 1);
    assert_eq!(delta("usher_client_received_bytes_total"), sent as f64);
    assert!(delta("usher_client_sent_bytes_total") > 10.0 * 30.0);
    assert_eq!(
        metric(&after, "usher_query_duration_seconds_count", &[d])
            - metric(&login_done, "usher_query_duration_seconds_count", &[d]),
        12.0
    );
    assert!(
        metric(
            &after,
            "usher_route_decisions_total",
            &[d, "outcome=\"primary\""]
        ) > metric(
            &before,
            "usher_route_decisions_total",
            &[d, "outcome=\"primary\""]
        )
    );
    assert!(
        metric(&after, "usher_query_cache_hits_total", &[])
            + metric(&after, "usher_query_cache_misses_total", &[])
            >= 0.0
    );
    // Ready: the primary is reachable. Unknown paths are 404.
    assert_eq!(http_get(u.metrics_port, "/ready").await.0, 200);
    assert_eq!(http_get(u.metrics_port, "/nope").await.0, 404);
    // Not ready while a shard's primary is unreachable; the body says which.
    let dead = free_port();
    let text = config(&db, "")
        + &format!("\n[databases.gone]\nshards = [ {{ primary = \"127.0.0.1:{dead}/gone\" }} ]\n");
    let u2 = start_usher(&text).await;
    let (status, body) = http_get(u2.metrics_port, "/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains(&format!(
            "database gone shard 0: primary 127.0.0.1:{dead}/gone unreachable"
        )),
        "{body}"
    );
}
