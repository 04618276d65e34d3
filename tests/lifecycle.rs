//! Hot reload and graceful shutdown against real Postgres: pgbench keeps running with zero
//! failed transactions while the config is reloaded five times (pool size, a replica added
//! and removed) and once rejected; the real binary on SIGTERM stops accepting, lets a
//! transaction finish, tells idle clients 57P01 and exits 0; SIGHUP with a broken file keeps
//! the running config.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn pgbench(port: u16, db: &str, secs: u32) -> std::thread::JoinHandle<String> {
    let db = db.to_string();
    std::thread::spawn(move || {
        let out = Command::new(pg_bin("pgbench"))
            .args([
                "-S",
                "-n",
                "-M",
                "extended",
                "-c",
                "16",
                "-j",
                "2",
                "-T",
                &secs.to_string(),
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "app",
                &db,
            ])
            .env("PGPASSWORD", PASSWORD)
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_lose_nothing() {
    let t = topology();
    let db = t.create_db("reload");
    t.pgbench_init(&db);
    let replica = t.replica().port;
    t.wait_replicas_caught_up();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usher.toml");
    let versions = [
        split_config(&db, &[], "default_pool_size = 4", ""),
        split_config(&db, &[replica], "default_pool_size = 4", ""),
        split_config(&db, &[replica], "default_pool_size = 8", ""),
        split_config(&db, &[], "default_pool_size = 2", ""),
        split_config(
            &db,
            &[replica],
            "default_pool_size = 6\nquery_wait_timeout = \"30s\"",
            "",
        ),
        split_config(&db, &[], "default_pool_size = 5", ""),
    ];
    std::fs::write(&path, &versions[0]).unwrap();
    let u = start_usher(&versions[0]).await;
    u.app.set_config_path(path.clone());
    let bench = pgbench(u.port, &db, 8);
    for v in &versions[1..] {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        std::fs::write(&path, v).unwrap();
        u.app.reload().unwrap();
    }
    // A broken file is rejected with usher check's message; the running config stays.
    std::fs::write(
        &path,
        versions[5].replace("default_pool_size = 5", "default_pool_size = \"five\""),
    )
    .unwrap();
    let e = u.app.reload().unwrap_err();
    assert!(
        e.contains("usher.toml:") && e.contains("general.default_pool_size"),
        "{e}"
    );
    assert_eq!(u.app.config().general.default_pool_size, 5);
    let out = bench.join().unwrap();
    assert!(out.contains("number of failed transactions: 0"), "{out}");
    let processed: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.split('/').next()?.trim().parse().ok())
        .unwrap_or(0);
    assert!(processed > 100, "{out}");
    let metrics = http_get(u.metrics_port, "/metrics").await.1;
    assert_eq!(
        metric(&metrics, "usher_config_reloads_total", &["result=\"ok\""]),
        5.0
    );
    assert_eq!(
        metric(
            &metrics,
            "usher_config_reloads_total",
            &["result=\"error\""]
        ),
        1.0
    );
    // The new pool size is in force, and the removed replica has no pool any more.
    let pools = usher::stats::collect::pool_rows(&u.app);
    assert!(pools.iter().all(|p| p.size == 5), "{pools:?}");
    assert!(
        pools
            .iter()
            .all(|p| !p.server.contains(&replica.to_string())),
        "{pools:?}"
    );
}

/// The usher binary running with a config file.
struct Running {
    child: std::process::Child,
    port: u16,
    metrics_port: u16,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn spawn_usher(db: &str, extra: &str) -> Running {
    spawn_usher_logging(db, extra, Stdio::null())
}

fn spawn_usher_logging(db: &str, extra: &str, stderr: Stdio) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usher.toml");
    let (port, metrics_port) = (free_port(), free_port());
    let text = config(
        db,
        &format!("metrics_listen = \"127.0.0.1:{metrics_port}\"\n{extra}"),
    )
    .replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    std::fs::write(&path, text).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_usher"))
        .args(["--config", path.to_str().unwrap()])
        .env("USHER_LOG", "info")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    // Both listeners: clients and the HTTP endpoint (bound a moment later).
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
        || std::net::TcpStream::connect(("127.0.0.1", metrics_port)).is_err()
    {
        assert!(Instant::now() < deadline, "usher did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Running {
        child,
        port,
        metrics_port,
        path,
        _dir: dir,
    }
}

fn signal(child: &std::process::Child, sig: i32) {
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_transactions_finish_and_exits_zero() {
    let db = topology().create_db("shutdown");
    let mut u = spawn_usher(&db, "shutdown_timeout = \"10s\"");
    // SIGHUP with a broken file: rejected, counted, still serving.
    let good = std::fs::read_to_string(&u.path).unwrap();
    std::fs::write(&u.path, good.replace("[[users]]", "[[userz]]")).unwrap();
    signal(&u.child, libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = http_get(u.metrics_port, "/metrics").await.1;
    assert_eq!(
        metric(&m, "usher_config_reloads_total", &["result=\"error\""]),
        1.0,
        "{m}"
    );
    std::fs::write(&u.path, &good).unwrap();

    let open = |port: u16| {
        let db = db.clone();
        async move {
            let (client, conn) =
                tokio_postgres::connect(&dsn(port, "app", &db), tokio_postgres::NoTls)
                    .await
                    .unwrap();
            (client, tokio::spawn(conn))
        }
    };
    let (idle, idle_conn) = open(u.port).await;
    idle.simple_query("SELECT 1").await.unwrap();
    let (busy, busy_conn) = open(u.port).await;
    busy.batch_execute("BEGIN; SELECT 1").await.unwrap();
    signal(&u.child, libc::SIGTERM);
    // The idle client is told why and disconnected.
    let e = tokio::time::timeout(Duration::from_secs(5), idle_conn)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(
        e.as_db_error().map(|d| d.code().code()),
        Some("57P01"),
        "{e:?}"
    );
    // No new clients.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        tokio_postgres::connect(&dsn(u.port, "app", &db), tokio_postgres::NoTls)
            .await
            .is_err()
    );
    // The transaction finishes normally, then that client is disconnected too.
    assert_eq!(
        busy.query_one("SELECT 2", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        2
    );
    busy.batch_execute("COMMIT").await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), busy_conn)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("57P01"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = u.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "usher did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    // Its server connections were closed, not leaked.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = topology().primary.psql("postgres", &format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND application_name <> 'usher-monitor'"));
        if left.trim() == "0" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} server connections left open"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_name_the_client_and_never_the_secrets() {
    let db = topology().create_db("logs");
    let u = spawn_usher_logging(&db, "log_format = \"json\"", Stdio::piped());
    let client = connect(u.port, "app", &db).await.unwrap();
    client
        .simple_query("SELECT 'sensitive literal 7731'")
        .await
        .unwrap();
    client
        .query("SELECT $1::text", &[&"sensitive parameter 8842"])
        .await
        .unwrap();
    let _ = connect_dsn(&format!(
        "host=127.0.0.1 port={} user=app password=wrongpass99 dbname={db}",
        u.port
    ))
    .await;
    drop(client);
    tokio::time::sleep(Duration::from_millis(200)).await;
    signal(&u.child, libc::SIGTERM);
    let out = u.child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let login = lines
        .iter()
        .find(|l| l["fields"]["message"] == "client logged in")
        .unwrap_or_else(|| panic!("no login line in {text}"));
    let spans = login["spans"].to_string();
    assert!(
        spans.contains("\"peer\":\"127.0.0.1:")
            && spans.contains(&db)
            && spans.contains("\"user\":\"app\""),
        "{login}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "login refused" && l["level"] == "WARN"),
        "a refused login is a WARN an operator can alert on: {text}"
    );
    for secret in [
        PASSWORD,
        "wrongpass99",
        "sensitive literal",
        "sensitive parameter",
        "SCRAM-SHA-256$",
    ] {
        assert!(
            !text.contains(secret),
            "{secret:?} appears in the info log:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_to_a_file_have_no_colour_codes() {
    let db = topology().create_db("plainlogs");
    let u = spawn_usher_logging(&db, "", Stdio::piped());
    let client = connect(u.port, "app", &db).await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    drop(client);
    tokio::time::sleep(Duration::from_millis(200)).await;
    signal(&u.child, libc::SIGTERM);
    let out = u.child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("usher listening"), "{text}");
    assert!(
        !text.contains('\x1b'),
        "ANSI escapes in a piped log:\n{text}"
    );
}
