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
    // The error goes first: tokio-postgres returns it as soon as the ErrorResponse arrives,
    // which Postgres flushes ahead of its ReadyForQuery, so the transaction is only over (and
    // counted) once usher relayed that ReadyForQuery. The next string's answer comes after it.
    assert!(c
        .batch_execute("SELECT * FROM no_such_table")
        .await
        .is_err());
    c.batch_execute("BEGIN; SELECT 1; SELECT 2; COMMIT")
        .await
        .unwrap();
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
    // A pipelining client: three transactions in one write, the middle one failing, each
    // counted on its own (never merged because the next was already queued).
    {
        use tokio::io::AsyncWriteExt;
        let mut raw = raw_login(u.port, "trust_user", &db).await;
        let before = http_get(u.metrics_port, "/metrics").await.1;
        let q = |sql: &str| {
            let mut m = vec![b'Q'];
            m.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
            m.extend_from_slice(sql.as_bytes());
            m.push(0);
            m
        };
        let batch = [
            q("SELECT 1"),
            q("SELECT * FROM no_such_table"),
            q("SELECT 2"),
        ]
        .concat();
        raw.write_all(&batch).await.unwrap();
        read_until_ready(&mut raw, 3).await;
        let now = http_get(u.metrics_port, "/metrics").await.1;
        let delta = |name: &str| metric(&now, name, &[d]) - metric(&before, name, &[d]);
        assert_eq!(delta("usher_transactions_total"), 3.0, "{now}");
        assert_eq!(delta("usher_queries_total"), 3.0);
        assert_eq!(delta("usher_errors_total"), 1.0);
        assert_eq!(delta("usher_query_duration_seconds_count"), 3.0);
        assert_eq!(delta("usher_transaction_duration_seconds_count"), 3.0);
    }
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

/// Rows of a simple query as (column names, values).
async fn rows(c: &tokio_postgres::Client, sql: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut cols = Vec::new();
    let mut out = Vec::new();
    for m in c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
    {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            cols = r.columns().iter().map(|c| c.name().to_string()).collect();
            out.push(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("").to_string())
                    .collect(),
            );
        }
    }
    (cols, out)
}

/// PAUSE of `db` from a second admin connection, running in a task.
async fn spawn_pause(
    port: u16,
    db: &str,
) -> tokio::task::JoinHandle<Result<(), tokio_postgres::Error>> {
    let admin = connect_dsn(&admin_dsn(port, "boss", "adminpw", "usher"))
        .await
        .unwrap();
    let db = db.to_string();
    tokio::spawn(async move { admin.simple_query(&format!("PAUSE {db}")).await.map(drop) })
}

fn admin_dsn(port: u16, user: &str, password: &str, db: &str) -> String {
    format!("host=127.0.0.1 port={port} user={user} password={password} dbname={db}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_console() {
    let db = topology().create_db("admin");
    let text = config(&db, "default_pool_size = 2")
        + "\n[admin]\nuser = \"boss\"\npassword = \"adminpw\"\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usher.toml");
    std::fs::write(&path, &text).unwrap();
    let u = start_usher(&text).await;
    u.app.set_config_path(path.clone());
    let admin = connect_dsn(&admin_dsn(u.port, "boss", "adminpw", "usher"))
        .await
        .unwrap();
    // Refusals: another user, a wrong password.
    let e = connect_dsn(&admin_dsn(u.port, "app", PASSWORD, "usher"))
        .await
        .unwrap_err();
    assert_eq!(
        e.as_db_error().map(|d| d.code().code()),
        Some("28000"),
        "{e:?}"
    );
    let e = connect_dsn(&admin_dsn(u.port, "boss", "nope", "pgbouncer"))
        .await
        .unwrap_err();
    assert_eq!(
        e.as_db_error().map(|d| d.code().code()),
        Some("28P01"),
        "{e:?}"
    );
    let alias = connect_dsn(&admin_dsn(u.port, "boss", "adminpw", "pgbouncer"))
        .await
        .unwrap();
    assert_eq!(
        rows(&alias, "SHOW VERSION").await.1[0][0],
        format!("usher {}", env!("CARGO_PKG_VERSION"))
    );

    let a = connect(u.port, "app", &db).await.unwrap();
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let (cols, pools) = rows(&admin, "SHOW POOLS").await;
    for c in [
        "database",
        "user",
        "cl_active",
        "cl_waiting",
        "sv_active",
        "sv_idle",
        "sv_login",
        "maxwait",
        "pool_mode",
        "shard",
        "role",
    ] {
        assert!(
            cols.contains(&c.to_string()),
            "SHOW POOLS lacks {c}: {cols:?}"
        );
    }
    let col = |name: &str| cols.iter().position(|c| c == name).unwrap();
    let mine = pools
        .iter()
        .find(|r| r[col("database")] == db)
        .expect("a pool row");
    assert_eq!(
        (
            mine[col("cl_active")].as_str(),
            mine[col("sv_active")].as_str(),
            mine[col("role")].as_str()
        ),
        ("1", "1", "primary")
    );
    let (cols, clients) = rows(&admin, "SHOW CLIENTS").await;
    let state = cols.iter().position(|c| c == "state").unwrap();
    let dbc = cols.iter().position(|c| c == "database").unwrap();
    assert!(
        clients.iter().any(|r| r[dbc] == db && r[state] == "active"),
        "{clients:?}"
    );
    let (cols, servers) = rows(&admin, "SHOW SERVERS").await;
    assert!(
        cols.contains(&"remote_pid".to_string())
            && servers.iter().any(|r| r.contains(&"active".to_string())),
        "{servers:?}"
    );
    for (cmd, needs) in [
        ("SHOW STATS", "total_xact_count"),
        ("SHOW STATS_TOTALS", "xact_count"),
        ("SHOW STATS_AVERAGES", "query_time"),
        ("SHOW DATABASES", "pool_size"),
        ("SHOW USERS", "pool_mode"),
        ("SHOW CONFIG", "changeable"),
        ("SHOW LISTS", "items"),
        ("SHOW SHARDS", "primary"),
        ("SHOW REPLICAS", "lag_ms"),
    ] {
        let (cols, r) = rows(&admin, cmd).await;
        assert!(
            cols.contains(&needs.to_string()) && !r.is_empty(),
            "{cmd}: {cols:?} {r:?}"
        );
    }
    let (_, config_rows) = rows(&admin, "show config").await;
    assert!(
        config_rows
            .iter()
            .any(|r| r[0] == "default_pool_size" && r[1] == "2"),
        "{config_rows:?}"
    );
    // Unknown commands and the extended protocol get clear errors; the console goes on.
    let e = admin.simple_query("SHOW NONSENSE").await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "42601");
    let e = admin.simple_query("DROP TABLE x").await.unwrap_err();
    assert!(e
        .as_db_error()
        .unwrap()
        .message()
        .contains("unknown admin command"));
    let e = admin.query("SHOW POOLS", &[]).await.unwrap_err();
    assert_eq!(
        e.as_db_error().map(|d| d.code().code()),
        Some("08P01"),
        "{e:?}"
    );

    // PAUSE waits for the running transaction, then holds new ones until RESUME.
    let pausing = spawn_pause(u.port, &db).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !pausing.is_finished(),
        "PAUSE returned while a transaction was running"
    );
    a.batch_execute("COMMIT").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), pausing)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let b = connect(u.port, "app", &db).await.unwrap();
    let held = tokio::spawn(async move {
        b.query_one("SELECT 42", &[])
            .await
            .map(|r| r.get::<_, i32>(0))
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !held.is_finished(),
        "a query ran while the database was paused"
    );
    admin.simple_query(&format!("RESUME {db}")).await.unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), held)
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        42
    );

    // RECONNECT: the next transaction gets a new server connection.
    let before: i32 = a
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    admin
        .simple_query(&format!("RECONNECT {db}"))
        .await
        .unwrap();
    let after: i32 = a
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(before, after);

    // RELOAD applies the file; a broken file is refused with usher check's words.
    std::fs::write(
        &path,
        text.replace("default_pool_size = 2", "default_pool_size = 7"),
    )
    .unwrap();
    admin.simple_query("RELOAD").await.unwrap();
    let (_, config_rows) = rows(&admin, "SHOW CONFIG").await;
    assert!(config_rows
        .iter()
        .any(|r| r[0] == "default_pool_size" && r[1] == "7"));
    std::fs::write(
        &path,
        text.replace("default_pool_size = 2", "default_pool_size = true"),
    )
    .unwrap();
    let e = admin.simple_query("RELOAD").await.unwrap_err();
    assert!(
        e.as_db_error()
            .unwrap()
            .message()
            .contains("general.default_pool_size"),
        "{e:?}"
    );
    assert_eq!(u.app.config().general.default_pool_size, 7);

    // SHUTDOWN: acknowledged, then no new clients.
    admin.simple_query("SHUTDOWN").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(connect(u.port, "app", &db).await.is_err());
}

/// PAUSE in session mode: clients keep their servers, so PAUSE waits for their transactions
/// (not for them to leave) and then holds their next one; with `pause_timeout` a PAUSE that
/// cannot finish fails with 57014 and resumes, leaving nothing held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_in_session_mode_and_its_timeout() {
    let db = topology().create_db("pause_sess");
    let text = config(&db, "pool_mode = \"session\"\npause_timeout = \"1s\"")
        + "\n[admin]\nuser = \"boss\"\npassword = \"adminpw\"\n";
    let u = start_usher(&text).await;
    let admin = connect_dsn(&admin_dsn(u.port, "boss", "adminpw", "usher"))
        .await
        .unwrap();
    let a = connect(u.port, "app", &db).await.unwrap();
    let idle = connect(u.port, "app", &db).await.unwrap();
    idle.simple_query("SELECT 1").await.unwrap(); // holds its server, idle
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();

    // A transaction longer than pause_timeout: PAUSE fails, and nothing stays held.
    let e = admin
        .simple_query(&format!("PAUSE {db}"))
        .await
        .unwrap_err();
    let e = e.as_db_error().unwrap();
    assert_eq!(e.code().code(), "57014", "{e:?}");
    assert!(e.message().contains("pause_timeout"), "{}", e.message());
    tokio::time::timeout(Duration::from_secs(2), idle.simple_query("SELECT 2"))
        .await
        .expect("not held after a failed PAUSE")
        .unwrap();

    // Once the transaction ends, PAUSE returns, though both clients keep their servers.
    let pausing = spawn_pause(u.port, &db).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !pausing.is_finished(),
        "PAUSE returned during a transaction"
    );
    a.batch_execute("COMMIT").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), pausing)
        .await
        .expect("PAUSE returned once the transaction ended")
        .unwrap()
        .unwrap();
    // The next transaction of a session-mode client waits for RESUME.
    let held = tokio::spawn(async move {
        let r = idle
            .query_one("SELECT 42", &[])
            .await
            .map(|r| r.get::<_, i32>(0));
        (r, idle)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "a query ran while paused");
    admin.simple_query(&format!("RESUME {db}")).await.unwrap();
    let (r, _idle) = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.unwrap(), 42);
    a.simple_query("SELECT 1").await.unwrap();
}
