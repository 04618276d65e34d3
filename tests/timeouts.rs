//! Client timeouts against real Postgres, with PgBouncer's names: client_idle_timeout,
//! idle_transaction_timeout, query_timeout and transaction_timeout each end the session with
//! the SQLSTATE Postgres uses for its own equivalent, roll back what was open, cancel what was
//! running, and leave the pool and other clients as they were; a per-user setting overrides
//! `[general]`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio_postgres::Client;

/// A client and the task driving its connection (it ends with the FATAL usher sent).
struct Watched {
    client: Client,
    conn: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
}

async fn watched(port: u16, db: &str) -> Watched {
    let (client, conn) = tokio_postgres::connect(&dsn(port, "app", db), tokio_postgres::NoTls)
        .await
        .unwrap();
    Watched {
        client,
        conn: tokio::spawn(conn),
    }
}

fn code(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_string())
        .unwrap_or_else(|| format!("no server error: {e}"))
}

impl Watched {
    /// The SQLSTATE the connection was closed with, within `limit`.
    async fn closed_with(self, limit: Duration) -> String {
        let ended = tokio::time::timeout(limit, self.conn)
            .await
            .expect("the connection was closed in time")
            .unwrap();
        code(&ended.expect_err("closed with an error"))
    }
}

async fn setup(prefix: &str, general: &str) -> (Usher, String) {
    let t = topology();
    let db = t.create_db(prefix);
    t.primary
        .psql(&db, "CREATE TABLE t (v int); GRANT ALL ON t TO app");
    (start_usher(&config(&db, general)).await, db)
}

/// Server connections of the database that are not idle (waits up to 5 s for them to go).
fn busy_backends(db: &str) -> String {
    let sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state <> 'idle' AND pid <> pg_backend_pid()";
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = topology().primary.psql(db, sql);
        if n == "0" || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_idle_timeout_frees_a_session_mode_server() {
    let (u, db) = setup(
        "cl_idle",
        "pool_mode = \"session\"\nclient_idle_timeout = \"1s\"",
    )
    .await;
    let idle = watched(u.port, &db).await;
    idle.client.simple_query("SELECT 1").await.unwrap();
    // A client whose query runs longer than the timeout is not idle.
    let busy = connect(u.port, "app", &db).await.unwrap();
    busy.simple_query("SELECT pg_sleep(1.6)").await.unwrap();
    assert_eq!(idle.closed_with(Duration::from_secs(5)).await, "57P05");
    busy.simple_query("SELECT 1").await.unwrap();
    // Its server went back to the pool: one idle, one lent to `busy`.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pools = usher::stats::collect::pool_rows(&u.app);
        let (idle, active) = (pools[0].idle, pools[0].active);
        if (idle, active) == (1, 1) {
            break;
        }
        assert!(Instant::now() < deadline, "idle {idle}, active {active}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = http_get(u.metrics_port, "/metrics").await.1;
    assert_eq!(
        metric(
            &metrics,
            "usher_client_timeouts_total",
            &["setting=\"client_idle_timeout\""]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_transaction_timeout_rolls_back_and_keeps_the_server() {
    let (u, db) = setup("idle_tx", "idle_transaction_timeout = \"1s\"").await;
    let w = watched(u.port, &db).await;
    w.client
        .batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    assert_eq!(w.closed_with(Duration::from_secs(5)).await, "25P03");
    assert_eq!(topology().primary.psql(&db, "SELECT count(*) FROM t"), "0");
    assert_eq!(busy_backends(&db), "0", "nothing left idle in transaction");
    // The server was rolled back and returned, not closed: the next client reuses it.
    let before = usher::stats::collect::pool_rows(&u.app)[0].idle;
    assert_eq!(before, 1);
    let c = connect(u.port, "app", &db).await.unwrap();
    c.batch_execute("INSERT INTO t VALUES (2)").await.unwrap();
    assert_eq!(topology().primary.psql(&db, "SELECT count(*) FROM t"), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_timeout_cancels_the_query_and_spares_others() {
    let (u, db) = setup("q_timeout", "query_timeout = \"1s\"").await;
    let bystander = connect(u.port, "app", &db).await.unwrap();
    let w = watched(u.port, &db).await;
    let started = Instant::now();
    let e = w
        .client
        .simple_query("SELECT pg_sleep(30)")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "57014", "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(20));
    // Canceled on the server, not left running to its end.
    assert_eq!(busy_backends(&db), "0");
    let row = bystander.query_one("SELECT 2", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 2);
    // Fast queries are not affected.
    for _ in 0..5 {
        bystander
            .simple_query("SELECT pg_sleep(0.1)")
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_timeout_ends_a_busy_transaction() {
    let (u, db) = setup(
        "tx_timeout",
        "transaction_timeout = \"2s\"\nidle_transaction_timeout = \"10s\"",
    )
    .await;
    let w = watched(u.port, &db).await;
    w.client
        .batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    // Never idle for long, but the transaction as a whole is too long.
    let client = w.client;
    let poke = tokio::spawn(async move {
        loop {
            if client.simple_query("SELECT 1").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let ended = tokio::time::timeout(Duration::from_secs(6), w.conn)
        .await
        .expect("closed in time")
        .unwrap();
    assert_eq!(code(&ended.unwrap_err()), "25P04");
    poke.await.unwrap();
    assert_eq!(topology().primary.psql(&db, "SELECT count(*) FROM t"), "0");
    // Outside a transaction the clock does not run.
    let c = connect(u.port, "app", &db).await.unwrap();
    for _ in 0..8 {
        c.simple_query("SELECT 1").await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_setting_overrides_general() {
    let t = topology();
    let db = t.create_db("tm_user");
    let text = config(&db, "client_idle_timeout = \"1s\"").replace(
        "name = \"app\"\n",
        "name = \"app\"\nclient_idle_timeout = \"0\"\n",
    );
    assert!(text.contains("client_idle_timeout = \"0\""));
    let u = start_usher(&text).await;
    let app = connect(u.port, "app", &db).await.unwrap();
    let other = watched_as(u.port, "plain_user", &db).await;
    tokio::time::sleep(Duration::from_millis(1800)).await;
    app.simple_query("SELECT 1").await.unwrap();
    assert!(other.is_finished(), "plain_user keeps the general timeout");
}

/// The connection task of a client logged in as `user`.
async fn watched_as(
    port: u16,
    user: &str,
    db: &str,
) -> tokio::task::JoinHandle<Result<(), tokio_postgres::Error>> {
    let (_client, conn) = tokio_postgres::connect(&dsn(port, user, db), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _keep = _client;
        conn.await
    })
}
