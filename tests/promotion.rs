//! Promotion with `role = "auto"`: after the primary is gone and a replica is promoted with
//! pg_ctl promote, writes through usher reach the new primary within seconds, no restart. Its
//! own test binary: it stops its primary.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_follow_a_promoted_replica() {
    let t = topology();
    let replica = t.replica();
    let db = t.create_db("promote");
    t.primary
        .psql(&db, "CREATE TABLE p (v int); GRANT ALL ON p TO app");
    t.wait_replicas_caught_up();
    let cfg = split_config(&db, &[], "lag_check_interval = \"200ms\"\nban_time = \"2s\"", "").replace(
        &format!("shards = [ {{ primary = \"127.0.0.1:{}/{db}\", replicas = [] }} ]", t.primary.port),
        &format!(
            "shards = [ {{ primary = {{ addr = \"127.0.0.1:{}/{db}\", role = \"auto\" }}, replicas = [ {{ addr = \"127.0.0.1:{}/{db}\", role = \"auto\" }} ] }} ]",
            t.primary.port, replica.port
        ),
    );
    assert!(cfg.contains("role = \"auto\""), "{cfg}");
    let u = start_usher(&cfg).await;
    let c = connect(u.port, "app", &db).await.unwrap();
    let write_port = || async {
        c.query_one("INSERT INTO p VALUES (1) RETURNING inet_server_port()", &[])
            .await
            .map(|r| r.get::<_, i32>(0))
    };
    assert_eq!(write_port().await.unwrap(), t.primary.port as i32);

    t.primary.stop();
    replica.promote();
    let promoted = Instant::now();
    let deadline = promoted + Duration::from_secs(15);
    loop {
        match write_port().await {
            Ok(port) => {
                assert_eq!(
                    port, replica.port as i32,
                    "a write reached something other than the promoted replica"
                );
                break;
            }
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "writes never followed the promotion: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    eprintln!(
        "writes reached the promoted replica {:?} after pg_ctl promote",
        promoted.elapsed()
    );
    assert!(promoted.elapsed() < Duration::from_secs(10));
}
