//! Replica failures under load: a replica stopped in the middle of a pgbench -S run costs no
//! failed transaction (reads are retried on another server before any byte reached the client),
//! and with every replica gone reads fall back to the primary and are counted; a server that
//! never answers stalls only its own probe. Its own test binary: it stops servers of its
//! topology.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_die_under_load_without_failed_transactions() {
    let t = topology();
    let (r1, r2) = (t.replica(), t.replica2());
    let db = t.create_db("failover");
    t.pgbench_init(&db);
    t.wait_replicas_caught_up();
    let u = start_usher(&split_config(
        &db,
        &[r1.port, r2.port],
        "default_pool_size = 10\nmax_client_conn = 200\nlag_check_interval = \"200ms\"\nban_time = \"60s\"",
        "max_replica_lag = \"0\"",
    ))
    .await;
    // Wait for the first lag measurements so replicas take reads.
    let c = connect(u.port, "app", &db).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while c
        .query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap()
        .get::<_, i32>(0)
        == t.primary.port as i32
    {
        assert!(Instant::now() < deadline, "replicas never took reads");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let port = u.port.to_string();
    let db2 = db.clone();
    let bench = tokio::task::spawn_blocking(move || {
        std::process::Command::new(pg_bin("pgbench"))
            .args([
                "-S",
                "-M",
                "simple",
                "-c",
                "20",
                "-j",
                "2",
                "-T",
                "30",
                "-n",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "app",
                &db2,
            ])
            .env("PGPASSWORD", PASSWORD)
            .output()
            .unwrap()
    });
    tokio::time::sleep(Duration::from_secs(8)).await;
    r2.stop();
    let out = bench.await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pgbench failed:\n{stdout}\n{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("number of failed transactions: 0 ")),
        "{stdout}\n{stderr}"
    );
    assert!(!stderr.contains("error"), "{stderr}");

    // With every replica gone, reads fall back to the primary and are counted.
    r1.stop();
    let topology = u.app.topology();
    let shard = &topology.databases[&db][0];
    let before = shard.fallback_reads.load(Ordering::Relaxed);
    for _ in 0..5 {
        let port: i32 = c
            .query_one("SELECT inet_server_port()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(port, t.primary.port as i32);
    }
    assert!(shard.fallback_reads.load(Ordering::Relaxed) >= before + 5);
}

/// A server that accepts TCP connections and never answers (a black-holed host) stalls only
/// its own probe: a control query to a healthy server meanwhile completes. Before, one lock
/// over every control connection was held across the connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswering_server_does_not_stall_other_probes() {
    let t = topology();
    let db = t.create_db("probes");
    let u = start_usher(&config(&db, "server_connect_timeout = \"5s\"")).await;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr =
        usher::config::ServerAddr::parse(&format!("{}/x", silent.local_addr().unwrap())).unwrap();
    // Accepts and holds the sockets, never writing a byte.
    let _held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            sockets.push(s);
        }
    });
    let app = u.app.clone();
    let stuck = tokio::spawn(async move {
        let config = app.config();
        app.probes
            .query(&config, &silent_addr, "SELECT 1", &[])
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let config = u.app.config();
    let healthy =
        usher::config::ServerAddr::parse(&format!("127.0.0.1:{}/{db}", t.primary.port)).unwrap();
    let rows = u
        .app
        .probes
        .query(&config, &healthy, "SELECT 1", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert!(
        !stuck.is_finished(),
        "the healthy server's query should have finished while the silent one still waits"
    );
    let e = stuck.await.unwrap().unwrap_err();
    assert!(e.contains("timed out"), "{e}");
}
