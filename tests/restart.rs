//! A real server restart (pg_ctl stop / start) under usher. Its own test binary, so stopping
//! the primary cannot disturb other suites' tests.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_recover_after_server_restart() {
    let t = topology();
    let db = t.create_db("restart");
    let u = start_usher(&config(
        &db,
        "default_pool_size = 3\nmin_pool_size = 2\nserver_connect_timeout = \"2s\"",
    ))
    .await;
    let c = connect(u.port, "app", &db).await.unwrap();
    let before: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);

    t.primary.stop();
    // While the server is down the client gets a clear error, not a hang.
    let started = Instant::now();
    let err = c.simple_query("SELECT 1").await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let db_err = err
        .as_db_error()
        .expect("an ErrorResponse, not a dropped socket");
    assert_eq!(db_err.code().code(), "08006", "{db_err:?}");

    t.primary.restart();
    // The same client connection works again on a fresh server connection.
    let deadline = Instant::now() + Duration::from_secs(15);
    let after: i32 = loop {
        match c.query_one("SELECT pg_backend_pid()", &[]).await {
            Ok(row) => break row.get(0),
            Err(e) => {
                assert!(Instant::now() < deadline, "never recovered: {e:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_ne!(before, after);
    // And min_pool_size is restored in the background.
    let deadline = Instant::now() + Duration::from_secs(10);
    while u.app.pools.all()[0].counts().open < 2 {
        assert!(Instant::now() < deadline, "min_pool_size not restored");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
