//! Pool semantics against real Postgres: limits, waits, reserve, warm connections, retirement,
//! reuse after errors and restarts, transaction boundaries, session state and prepared
//! statements carried across server connections.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio_postgres::error::SqlState;

async fn setup(prefix: &str, extra: &str) -> (Usher, String) {
    let db = topology().create_db(prefix);
    let usher = start_usher(&config(&db, extra)).await;
    (usher, db)
}

fn counts(u: &Usher) -> usher::pool::PoolCounts {
    let pools = u.app.pools.all();
    assert_eq!(pools.len(), 1, "one pool expected");
    pools[0].counts()
}

async fn backend_pid(c: &tokio_postgres::Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_share_few_servers() {
    let (u, db) = setup("share", "default_pool_size = 3").await;
    let mut clients = Vec::new();
    for _ in 0..30 {
        clients.push(connect(u.port, "app", &db).await.unwrap());
    }
    let mut pids = std::collections::HashSet::new();
    for c in &clients {
        pids.insert(backend_pid(c).await);
    }
    assert!(pids.len() <= 3, "{} server connections used", pids.len());
    let c = counts(&u);
    assert!(c.open <= 3 && c.active == 0, "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_holds_its_server_until_commit() {
    let (u, db) = setup("txhold", "default_pool_size = 2").await;
    let a = connect(u.port, "app", &db).await.unwrap();
    let b = connect(u.port, "app", &db).await.unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    let pid1 = backend_pid(&a).await;
    // Another client's work cannot take a's server while a is in a transaction.
    for _ in 0..5 {
        assert_ne!(backend_pid(&b).await, pid1);
    }
    assert_eq!(backend_pid(&a).await, pid1);
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(counts(&u).active, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_mid_transaction_leaves_nothing_open() {
    let (u, db) = setup("midtx", "default_pool_size = 1").await;
    let admin = topology();
    let a = connect(u.port, "app", &db).await.unwrap();
    a.batch_execute("CREATE TABLE t (id int)").await.unwrap();
    a.batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = connect(u.port, "app", &db).await.unwrap();
    let n: i64 = b
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the insert of the vanished client was rolled back");
    let open = admin.primary.psql(
        "postgres",
        &format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND state LIKE 'idle in transaction%'"),
    );
    assert_eq!(open, "0");
    // A client that vanishes while a query runs: the server connection is closed, not reused.
    let c = connect(u.port, "app", &db).await.unwrap();
    let h = tokio::spawn(async move { c.simple_query("SELECT pg_sleep(2)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.abort();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let d = connect(u.port, "app", &db).await.unwrap();
    assert_eq!(
        d.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_client_times_out_with_error() {
    let (u, db) = setup(
        "waitto",
        "default_pool_size = 1\nquery_wait_timeout = \"500ms\"",
    )
    .await;
    let a = connect(u.port, "app", &db).await.unwrap();
    let b = connect(u.port, "app", &db).await.unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    let started = Instant::now();
    let err = b.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
    let message = err.as_db_error().unwrap().message();
    assert!(message.contains("query_wait_timeout"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // b is still connected and works once a's transaction ends; also in the extended protocol.
    let err = b.query("SELECT $1::int", &[&1i32]).await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED));
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        b.query_one("SELECT $1::int", &[&5i32])
            .await
            .unwrap()
            .get::<_, i32>(0),
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_pool_after_timeout() {
    let (u, db) = setup(
        "reserve",
        "default_pool_size = 1\nreserve_pool_size = 1\nreserve_pool_timeout = \"300ms\"\nquery_wait_timeout = \"10s\"",
    )
    .await;
    let a = connect(u.port, "app", &db).await.unwrap();
    let b = connect(u.port, "app", &db).await.unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    let started = Instant::now();
    b.batch_execute("SELECT 1").await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "used the reserve too early: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "reserve not used: {waited:?}"
    );
    assert_eq!(counts(&u).open, 2);
    a.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_served_in_turn() {
    let (u, db) = setup(
        "fifo",
        "default_pool_size = 2\nquery_wait_timeout = \"30s\"",
    )
    .await;
    let mut handles = Vec::new();
    for _ in 0..20 {
        let c = connect(u.port, "app", &db).await.unwrap();
        handles.push(tokio::spawn(async move {
            c.simple_query("SELECT pg_sleep(0.05)").await.unwrap();
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let c = counts(&u);
    assert!(c.open <= 2 && c.waiting == 0, "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_that_gave_up_are_swept_and_skipped() {
    // Enough waiters give up to cross the queue's sweep threshold several times; a live waiter
    // behind them still gets the connection as soon as it comes back.
    let (u, db) = setup(
        "gaveup",
        "default_pool_size = 1\nquery_wait_timeout = \"1s\"",
    )
    .await;
    let holder = connect(u.port, "app", &db).await.unwrap();
    holder.batch_execute("BEGIN").await.unwrap();
    let mut handles = Vec::new();
    for _ in 0..150 {
        let c = connect(u.port, "app", &db).await.unwrap();
        handles.push(tokio::spawn(async move {
            let err = c.simple_query("SELECT 1").await.unwrap_err();
            assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(counts(&u).waiting, 0);
    let late = connect(u.port, "app", &db).await.unwrap();
    let late = tokio::spawn(async move {
        let started = Instant::now();
        backend_pid(&late).await;
        started.elapsed()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(counts(&u).waiting, 1);
    holder.batch_execute("COMMIT").await.unwrap();
    let waited = late.await.unwrap();
    assert!(
        waited < Duration::from_secs(1),
        "late waiter waited {waited:?}"
    );
    let c = counts(&u);
    assert!(c.open == 1 && c.waiting == 0 && c.active == 0, "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_pool_size_kept_warm_and_idle_retired() {
    let (u, db) = setup(
        "warm",
        "default_pool_size = 5\nmin_pool_size = 2\nserver_idle_timeout = \"1s\"",
    )
    .await;
    // Five concurrent transactions open five connections.
    let mut clients = Vec::new();
    for _ in 0..5 {
        let c = connect(u.port, "app", &db).await.unwrap();
        c.batch_execute("BEGIN").await.unwrap();
        clients.push(c);
    }
    assert_eq!(counts(&u).open, 5);
    for c in &clients {
        c.batch_execute("COMMIT").await.unwrap();
    }
    drop(clients);
    // Idle ones above min_pool_size are closed after server_idle_timeout.
    let deadline = Instant::now() + Duration::from_secs(10);
    while counts(&u).open != 2 {
        assert!(
            Instant::now() < deadline,
            "idle connections not retired: {:?}",
            counts(&u)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let live = topology().primary.psql(
        "postgres",
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND usename = 'app' AND application_name <> 'usher-monitor'"
        ),
    );
    assert_eq!(live, "2");
    // Kill the warm ones from the server side: usher notices and reopens up to min_pool_size.
    topology().primary.psql(
        "postgres",
        &format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}' AND usename = 'app' AND application_name <> 'usher-monitor'"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let live = topology().primary.psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND usename = 'app' AND application_name <> 'usher-monitor'"
            ),
        );
        if live == "2" && counts(&u).idle == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "min_pool_size not restored: {live} live, {:?}",
            counts(&u)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_lifetime_retires_old_connections() {
    let (u, db) = setup(
        "lifetime",
        "default_pool_size = 1\nserver_lifetime = \"1s\"",
    )
    .await;
    let c = connect(u.port, "app", &db).await.unwrap();
    let first = backend_pid(&c).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = backend_pid(&c).await;
    assert_ne!(first, second, "an aged connection was reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_server_connections_are_not_reused() {
    let (u, db) = setup("broken", "default_pool_size = 2").await;
    let c = connect(u.port, "app", &db).await.unwrap();
    let pid = backend_pid(&c).await;
    topology()
        .primary
        .psql("postgres", &format!("SELECT pg_terminate_backend({pid})"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The idle connection was killed; the next transaction gets a fresh one, no error.
    let pid2 = backend_pid(&c).await;
    assert_ne!(pid, pid2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_parameters_follow_the_client() {
    let (u, db) = setup("params", "default_pool_size = 2").await;
    let a = connect_dsn(&format!(
        "{} options='-c search_path=alpha,public -c statement_timeout=1234'",
        dsn(u.port, "app", &db)
    ))
    .await
    .unwrap();
    let b = connect(u.port, "app", &db).await.unwrap();
    a.batch_execute("SET TimeZone = 'Asia/Tokyo'; SET DateStyle = 'SQL, DMY'")
        .await
        .unwrap();
    b.batch_execute("SET TimeZone = 'America/New_York'")
        .await
        .unwrap();
    for _ in 0..10 {
        // Interleave, so each client lands on servers the other one changed.
        let ra = a
            .query_one("SELECT current_setting('TimeZone'), current_setting('search_path'), current_setting('statement_timeout'), current_setting('DateStyle'), current_setting('application_name')", &[])
            .await
            .unwrap();
        let rb = b
            .query_one("SELECT current_setting('TimeZone'), current_setting('search_path'), current_setting('statement_timeout'), current_setting('DateStyle')", &[])
            .await
            .unwrap();
        assert_eq!(ra.get::<_, &str>(0), "Asia/Tokyo");
        assert_eq!(ra.get::<_, &str>(1), "alpha,public");
        assert_eq!(ra.get::<_, &str>(2), "1234ms");
        assert_eq!(ra.get::<_, &str>(3), "SQL, DMY");
        assert_eq!(ra.get::<_, &str>(4), "usher_test");
        assert_eq!(rb.get::<_, &str>(0), "America/New_York");
        assert_eq!(rb.get::<_, &str>(1), "\"$user\", public");
        assert_eq!(rb.get::<_, &str>(2), "0");
        assert_eq!(rb.get::<_, &str>(3), "ISO, MDY");
    }
    // SET of a parameter the server does not report, then RESET back to the startup value.
    a.batch_execute("SET search_path = beta").await.unwrap();
    for _ in 0..4 {
        let sp: String = a
            .query_one("SELECT current_setting('search_path')", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(sp, "beta");
        let spb: String = b
            .query_one("SELECT current_setting('search_path')", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(spb, "\"$user\", public");
    }
    a.batch_execute("RESET search_path").await.unwrap();
    let sp: String = a
        .query_one("SELECT current_setting('search_path')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sp, "alpha,public");
    // SET LOCAL does not outlive its transaction.
    a.batch_execute("BEGIN; SET LOCAL TimeZone = 'UTC'; COMMIT")
        .await
        .unwrap();
    let tz: String = a
        .query_one("SELECT current_setting('TimeZone')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tz, "Asia/Tokyo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_survive_server_changes() {
    let (u, db) = setup("prep", "default_pool_size = 3").await;
    let a = connect(u.port, "app", &db).await.unwrap();
    let s = a
        .prepare("SELECT $1::int + 1, pg_backend_pid()")
        .await
        .unwrap();
    let mut pids = std::collections::HashSet::new();
    let mut holders = Vec::new();
    for i in 0..30i32 {
        // Other clients hold servers in transactions so a's next transaction moves around.
        if i % 10 == 0 {
            let h = connect(u.port, "app", &db).await.unwrap();
            h.batch_execute("BEGIN").await.unwrap();
            holders.push(h);
            if holders.len() == 3 {
                holders.clear();
            }
        }
        let row = a.query_one(&s, &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i + 1);
        pids.insert(row.get::<_, i32>(1));
    }
    assert!(
        pids.len() >= 2,
        "the statement should have run on several servers"
    );
    // Closing the statement (drop) then preparing the same text again works.
    drop(s);
    let s2 = a
        .prepare("SELECT $1::int + 1, pg_backend_pid()")
        .await
        .unwrap();
    assert_eq!(
        a.query_one(&s2, &[&1i32]).await.unwrap().get::<_, i32>(0),
        2
    );
    // Two clients preparing the same text share it on the server without clashing.
    let b = connect(u.port, "app", &db).await.unwrap();
    let sb = b
        .prepare("SELECT $1::int + 1, pg_backend_pid()")
        .await
        .unwrap();
    assert_eq!(
        b.query_one(&sb, &[&41i32]).await.unwrap().get::<_, i32>(0),
        42
    );
    // DISCARD ALL from a client: its statements are gone, usher re-prepares for others.
    b.batch_execute("DISCARD ALL").await.unwrap();
    assert_eq!(
        a.query_one(&s2, &[&9i32]).await.unwrap().get::<_, i32>(0),
        10
    );
    let err = b.query_one(&sb, &[&1i32]).await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(&SqlState::INVALID_SQL_STATEMENT_NAME),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statement_lru_evicts_and_reprepares() {
    let (u, db) = setup("lru", "default_pool_size = 1\nmax_prepared_statements = 3").await;
    let c = connect(u.port, "app", &db).await.unwrap();
    let stmts: Vec<_> = futures_util::future::join_all((0..6).map(|i| {
        let c = &c;
        async move { c.prepare(&format!("SELECT {i} + $1::int")).await.unwrap() }
    }))
    .await;
    for round in 0..3 {
        for (i, s) in stmts.iter().enumerate() {
            let v: i32 = c.query_one(s, &[&round]).await.unwrap().get(0);
            assert_eq!(v, i as i32 + round);
        }
    }
    let n = topology().primary.psql(
        "postgres",
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND usename = 'app' AND application_name <> 'usher-monitor'"
        ),
    );
    assert_eq!(n, "1");
    let prepared: i64 = c
        .query_one("SELECT count(*) FROM pg_prepared_statements", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        prepared <= 3,
        "server holds {prepared} statements, LRU is 3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_resets_on_release() {
    let (u, db) = setup("sessmode", "pool_mode = \"session\"\ndefault_pool_size = 1").await;
    let a = connect(u.port, "app", &db).await.unwrap();
    a.batch_execute("SET statement_timeout = 4321; PREPARE p AS SELECT 1")
        .await
        .unwrap();
    let pid = backend_pid(&a).await;
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = connect(u.port, "app", &db).await.unwrap();
    assert_eq!(
        backend_pid(&b).await,
        pid,
        "the same server connection is reused"
    );
    let t: String = b
        .query_one("SELECT current_setting('statement_timeout')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(t, "0", "DISCARD ALL ran on release");
    let n: i64 = b
        .query_one(
            "SELECT count(*) FROM pg_prepared_statements WHERE name = 'p'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_server_restart() {
    // Runs on its own cluster so the restart does not disturb other tests.
    let t = topology();
    let db = t.create_db("restart");
    let u = start_usher(&config(
        &db,
        "default_pool_size = 2\nserver_connect_timeout = \"2s\"",
    ))
    .await;
    let c = connect(u.port, "app", &db).await.unwrap();
    c.batch_execute("SELECT 1").await.unwrap();
    // Kill every server connection of this database (as a restart would) ...
    t.primary.psql(
        "postgres",
        &format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ... the client keeps working on fresh connections.
    for _ in 0..3 {
        assert_eq!(
            c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
            1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syntax_errors_surface_at_prepare() {
    let (u, db) = setup("prepsyntax", "default_pool_size = 1").await;
    let c = connect(u.port, "app", &db).await.unwrap();
    let err = c.prepare("SELEC 1").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::SYNTAX_ERROR), "{err:?}");
    // A bare named Parse + Sync (no Describe) is answered by usher when it parses, and gets the
    // server's syntax error when it does not.
    use tokio::io::AsyncWriteExt;
    let mut raw = raw_login(u.port, "trust_user", &db).await;
    let parse = |name: &str, sql: &str| {
        let body = format!("{name}\0{sql}\0\0\0");
        let mut m = vec![b'P'];
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body.as_bytes());
        m
    };
    raw.write_all(
        &[
            parse("ok", "SELECT 1"),
            parse("bad", "SELEC 1"),
            vec![b'S', 0, 0, 0, 4],
        ]
        .concat(),
    )
    .await
    .unwrap();
    let got = read_until_ready(&mut raw, 1).await;
    assert_eq!(
        &got[..5],
        &[b'1', 0, 0, 0, 4],
        "ParseComplete for the good statement first: {got:?}"
    );
    assert_eq!(got[5], b'E', "then the syntax error: {got:?}");
    assert!(got.windows(6).any(|w| w == b"C42601"), "{got:?}");
    assert_eq!(
        c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
}
