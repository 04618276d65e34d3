//! The client side: authentication methods, refusals with the right SQLSTATE, connection
//! limits, malformed input, and the `usher check` command.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::error::SqlState;

async fn setup(prefix: &str, extra: &str) -> (Usher, String) {
    let db = topology().create_db(prefix);
    for user in ["md5_user", "plain_user", "trust_user"] {
        topology()
            .primary
            .psql(&db, &format!("GRANT ALL ON SCHEMA public TO {user}"));
    }
    let usher = start_usher(&config(&db, extra)).await;
    (usher, db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_methods_both_sides() {
    // Client side: app uses SCRAM, md5_user md5, trust_user trust. Server side: app SCRAM,
    // md5_user md5, plain_user cleartext ("password"), trust_user trust.
    let (u, db) = setup("auth", "").await;
    for user in ["app", "md5_user", "plain_user", "trust_user"] {
        let c = connect(u.port, user, &db)
            .await
            .unwrap_or_else(|e| panic!("{user}: {e:?}"));
        let who: String = c
            .query_one("SELECT current_user", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(who, user);
    }
    // A SCRAM verifier in the config works for clients too (server_password given separately).
    let verifier = postgres_protocol::password::scram_sha_256(PASSWORD.as_bytes());
    let cfg = config(&db, "").replacen(
        &format!("name = \"app\"\npassword = \"{PASSWORD}\""),
        &format!("name = \"app\"\npassword = \"{verifier}\"\nserver_password = \"{PASSWORD}\""),
        1,
    );
    let u2 = start_usher(&cfg).await;
    connect(u2.port, "app", &db)
        .await
        .unwrap()
        .simple_query("SELECT 1")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_have_sqlstates() {
    let (u, db) = setup("refuse", "").await;
    let wrong = connect_dsn(&format!(
        "host=127.0.0.1 port={} user=app password=nope dbname={db}",
        u.port
    ))
    .await
    .unwrap_err();
    assert_eq!(wrong.code(), Some(&SqlState::INVALID_PASSWORD), "{wrong:?}");
    let md5_wrong = connect_dsn(&format!(
        "host=127.0.0.1 port={} user=md5_user password=nope dbname={db}",
        u.port
    ))
    .await
    .unwrap_err();
    assert_eq!(
        md5_wrong.code(),
        Some(&SqlState::INVALID_PASSWORD),
        "{md5_wrong:?}"
    );
    let unknown = connect(u.port, "nobody", &db).await.unwrap_err();
    assert_eq!(
        unknown.code(),
        Some(&SqlState::INVALID_PASSWORD),
        "{unknown:?}"
    );
    let nodb = connect(u.port, "app", "no_such_db").await.unwrap_err();
    assert_eq!(
        nodb.code(),
        Some(&SqlState::INVALID_CATALOG_NAME),
        "{nodb:?}"
    );
    // psql gets the same errors (no dropped socket).
    let out = std::process::Command::new(pg_bin("psql"))
        .args([
            "-X",
            "-h",
            "127.0.0.1",
            "-p",
            &u.port.to_string(),
            "-U",
            "app",
            "-d",
            &db,
            "-c",
            "SELECT 1",
        ])
        .env("PGPASSWORD", "nope")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("password authentication failed for user \"app\""),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_works_through_usher() {
    let (u, db) = setup("psql", "").await;
    let out = std::process::Command::new(pg_bin("psql"))
        .args([
            "-X",
            "-A",
            "-t",
            "-h",
            "127.0.0.1",
            "-p",
            &u.port.to_string(),
            "-U",
            "app",
            "-d",
            &db,
        ])
        .args([
            "-c",
            "CREATE TABLE p (x int)",
            "-c",
            "\\copy p FROM PROGRAM 'seq 1 100'",
            "-c",
            "SELECT sum(x) FROM p",
        ])
        .env("PGPASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("5050"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_client_conn_refuses_with_53300() {
    let (u, db) = setup("maxconn", "max_client_conn = 5\ndefault_pool_size = 2").await;
    let mut ok = Vec::new();
    for _ in 0..5 {
        ok.push(connect(u.port, "app", &db).await.unwrap());
    }
    for _ in 0..3 {
        let err = connect(u.port, "app", &db).await.unwrap_err();
        assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{err:?}");
    }
    // Existing clients are unaffected; a slot frees when one leaves.
    for c in &ok {
        c.simple_query("SELECT 1").await.unwrap();
    }
    ok.pop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    connect(u.port, "app", &db).await.unwrap();
}

/// Thousands of sockets that connect and say nothing: sockets still logging in count against
/// max_client_conn, the ones over it are closed within about a second (or at once beyond
/// usher's refusal backlog), so the open sockets stay bounded, a logged-in client is not
/// disturbed, and new clients are served again once the silent ones time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_sockets_stays_bounded() {
    let max = 50;
    let (u, db) = setup(
        "flood",
        &format!("max_client_conn = {max}\nclient_login_timeout = \"8s\""),
    )
    .await;
    let bystander = connect(u.port, "app", &db).await.unwrap();
    let app = u.app.clone();
    let peak = Arc::new(AtomicUsize::new(0));
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (peak, watching) = (peak.clone(), watching.clone());
        tokio::spawn(async move {
            while watching.load(Ordering::Relaxed) {
                peak.fetch_max(app.clients.load(Ordering::Relaxed), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let mut silent = Vec::new();
    for _ in 0..30 {
        let batch = join_all((0..100).map(|_| TcpStream::connect(("127.0.0.1", u.port)))).await;
        silent.extend(batch.into_iter().filter_map(Result::ok));
    }
    assert!(silent.len() > 2500, "{} sockets connected", silent.len());
    bystander.simple_query("SELECT 1").await.unwrap();
    // Over the limit: closed (EOF) well before the login timeout (8 s), which keeps the ones
    // within the limit open meanwhile.
    let closed = join_all(silent.iter_mut().map(|s| async move {
        let mut b = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_millis(5000), s.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }))
    .await;
    let closed = closed.into_iter().filter(|c| *c).count();
    assert!(
        closed >= silent.len() - max,
        "{closed} of {} closed",
        silent.len()
    );
    watching.store(false, Ordering::Relaxed);
    watcher.await.unwrap();
    let peak = peak.load(Ordering::Relaxed);
    // (+1: the socket being closed at accept is counted for an instant.)
    assert!(
        peak <= max + usher::frontend::listener::MAX_REFUSING + 1,
        "{peak} sockets held at once"
    );
    // Once the silent ones within the limit time out, new clients get in.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match connect(u.port, "app", &db).await {
            Ok(c) => {
                c.simple_query("SELECT 1").await.unwrap();
                break;
            }
            Err(e) => {
                assert_eq!(e.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{e:?}");
                assert!(Instant::now() < deadline, "never served again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    bystander.simple_query("SELECT 1").await.unwrap();
    let metrics = http_get(u.metrics_port, "/metrics").await.1;
    let refused = metric(
        &metrics,
        "usher_client_connections_refused_total",
        &["reason=\"flood\""],
    ) + metric(
        &metrics,
        "usher_client_connections_refused_total",
        &["reason=\"max_client_conn\""],
    );
    assert!(refused >= (silent.len() - max) as f64, "{refused}");
}

/// Reads until EOF (or 2 s) and returns the bytes.
async fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
    out
}

fn sqlstate_of(bytes: &[u8]) -> Option<String> {
    let pos = bytes.iter().position(|b| *b == b'E')?;
    let body = &bytes[pos + 5..];
    let c = body.windows(1).position(|w| w[0] == b'C')?;
    let end = body[c + 1..].iter().position(|b| *b == 0)?;
    Some(String::from_utf8_lossy(&body[c + 1..c + 1 + end]).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_08p01_and_others_are_unaffected() {
    let (u, db) = setup("badinput", "max_message_size = 1048576").await;
    let bystander = connect(u.port, "app", &db).await.unwrap();
    // A startup packet with an absurd length.
    let mut s = TcpStream::connect(("127.0.0.1", u.port)).await.unwrap();
    s.write_all(&[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0])
        .await
        .unwrap();
    assert_eq!(
        sqlstate_of(&read_all(&mut s).await).as_deref(),
        Some("08P01")
    );
    // SSLRequest is declined with 'N'.
    let mut s = TcpStream::connect(("127.0.0.1", u.port)).await.unwrap();
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .unwrap();
    let mut n = [0u8; 1];
    s.read_exact(&mut n).await.unwrap();
    assert_eq!(&n, b"N");
    // A logged-in client (trust) sending an unknown message type, a negative length, a message
    // over max_message_size, and a truncated Parse.
    let cases: Vec<Vec<u8>> = vec![
        vec![b'!', 0, 0, 0, 4],
        vec![b'Q', 0xff, 0xff, 0xff, 0xf0],
        vec![b'Q', 0x10, 0, 0, 0],
        vec![b'P', 0, 0, 0, 8, b's', 0, b'x', b'x'],
    ];
    for case in cases {
        let mut s = raw_login(u.port, "trust_user", &db).await;
        s.write_all(&case).await.unwrap();
        s.write_all(&[b'S', 0, 0, 0, 4]).await.unwrap();
        let reply = read_all(&mut s).await;
        assert_eq!(
            sqlstate_of(&reply).as_deref(),
            Some("08P01"),
            "case {case:?}: {reply:?}"
        );
    }
    assert_eq!(
        bystander
            .query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
}

#[test]
fn usher_check_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, include_str!("../config/usher.toml")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_usher"))
        .args(["check", "--config", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let cases = [
        (
            "pool_mode = \"transaction\"",
            "pool_mod = \"transaction\"",
            "unknown field `pool_mod`",
        ),
        (
            "reserve_pool_timeout = \"5s\"",
            "reserve_pool_timeout = \"5 fortnights\"",
            "general.reserve_pool_timeout",
        ),
        (
            "default_pool_size = 25",
            "default_pool_size = \"lots\"",
            "general.default_pool_size",
        ),
        (
            "{ primary = \"127.0.0.1:5432/app\", replicas = [] }",
            "{ replicas = [] }",
            "missing field `primary`",
        ),
    ];
    for (from, to, expect) in cases {
        let text = include_str!("../config/usher.toml");
        assert!(text.contains(from), "example config lacks {from}");
        let bad = dir.path().join("bad.toml");
        let mut f = std::fs::File::create(&bad).unwrap();
        f.write_all(text.replacen(from, to, 1).as_bytes()).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_usher"))
            .args(["check", "--config", bad.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{to} accepted");
        let line = text.lines().position(|l| l.contains(from)).unwrap() + 1;
        assert!(
            stderr.contains(&format!("bad.toml:{line}:")),
            "{to}: {stderr}"
        );
        assert!(stderr.contains(expect), "{to}: {stderr}");
    }
}

#[test]
fn usher_check_reports_shard_map_errors() {
    let text = include_str!("../config/usher.sharded.toml");
    let dir = tempfile::tempdir().unwrap();
    for (from, to, key, expect) in [
        (
            "default_shard = 0 ",
            "default_shard = 4 ",
            "databases.app.sharding.default_shard",
            "has 4 shard(s)",
        ),
        (
            "global_tables = [\"lessons\"]",
            "global_tables = [\"families\"]",
            "databases.app.sharding.tables[0].name",
            "both sharded and in global_tables",
        ),
        (
            "{ name = \"user_progress\", column = \"family_id\" },",
            "{ name = \"children\", column = \"family_id\" },",
            "databases.app.sharding.tables[2].name",
            "listed twice",
        ),
        (
            "key_type = \"uuid\"",
            "key_type = \"float\"",
            "databases.app.sharding.key_type",
            "unknown variant `float`",
        ),
        (
            "two_phase_log = \"/var/lib/usher/two_phase.log\"",
            "",
            "databases.app.sharding.two_phase_commit",
            "needs general.two_phase_log",
        ),
    ] {
        assert!(text.contains(from), "example lacks {from}");
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, text.replacen(from, to, 1)).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_usher"))
            .args(["check", "--config", bad.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{to} accepted: {stderr}");
        assert!(
            stderr.contains(key) && stderr.contains(expect),
            "{to}: {stderr}"
        );
        let line = stderr
            .split(':')
            .nth(1)
            .and_then(|l| l.parse::<usize>().ok());
        assert!(line.is_some_and(|l| l > 0), "{to}: no line in {stderr}");
    }
}

#[test]
fn shard_of_explains_the_shard() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_usher"))
        .args([
            "shard-of",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/usher.sharded.toml"),
            "--database",
            "app",
            "{A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11}",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("shard ")
            && stdout.contains("xxh3 of uuid a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        "{stdout}"
    );
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_usher"))
        .args([
            "shard-of",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/usher.sharded.toml"),
            "42",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a valid uuid"));
}

#[test]
fn example_configs_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            usher::config::load_file(&path).unwrap_or_else(|e| panic!("{e}"));
            checked += 1;
        }
    }
    assert!(checked >= 2);
}
