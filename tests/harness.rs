//! The harness itself: the streaming replica follows the primary, and shard databases exist
//! side by side, ready for the read/write splitting and sharding suites.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn replica_streams_from_primary() {
    let t = topology();
    let db = t.create_db("harness");
    t.primary
        .psql(&db, "CREATE TABLE r (x int); INSERT INTO r VALUES (42)");
    let replica = t.replica();
    assert_eq!(replica.psql("postgres", "SELECT pg_is_in_recovery()"), "t");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = std::process::Command::new(pg_bin("psql"))
            .args([
                "-X",
                "-A",
                "-t",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-p",
                &replica.port.to_string(),
                "-d",
                &db,
            ])
            .args(["-c", "SELECT x FROM r"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&got.stdout).trim() == "42" {
            break;
        }
        assert!(Instant::now() < deadline, "replica never caught up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let shards: Vec<String> = (0..4).map(|_| t.create_db("shard")).collect();
    for s in &shards {
        assert_eq!(t.primary.psql(s, "SELECT current_database()"), *s);
    }
}
