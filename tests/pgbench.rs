//! pgbench through usher: 50 clients on a pool of 10 for 10 s, read-only (-S) and write (-N)
//! workloads in every query protocol, with zero failed transactions.

mod common;

use common::*;

async fn pgbench_through_usher(builtin: &str, protocol: &str) {
    let t = topology();
    let db = t.create_db(&format!(
        "bench_{}",
        builtin.trim_start_matches('-').to_lowercase()
    ));
    t.pgbench_init(&db);
    let u = start_usher(&config(
        &db,
        "default_pool_size = 10\nmax_client_conn = 200\nquery_wait_timeout = \"20s\"",
    ))
    .await;
    let port = u.port.to_string();
    let args: Vec<String> = [
        builtin,
        "-M",
        protocol,
        "-c",
        &std::env::var("BENCH_CLIENTS").unwrap_or("50".into()),
        "-j",
        "2",
        "-T",
        &std::env::var("BENCH_SECS").unwrap_or("10".into()),
        "-n",
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-U",
        "app",
        &db,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(pg_bin("pgbench"))
            .args(&args)
            .env("PGPASSWORD", PASSWORD)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "pgbench {builtin} -M {protocol} failed:\n{stdout}\n{stderr}"
    );
    let processed: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no transaction count in:\n{stdout}"));
    assert!(processed > 0, "no transactions:\n{stdout}");
    let failed = stdout
        .lines()
        .find(|l| l.starts_with("number of failed transactions:"));
    if let Some(line) = failed {
        assert!(
            line.starts_with("number of failed transactions: 0 "),
            "{line}"
        );
    }
    let pools = u.app.pools.all();
    let counts = pools[0].counts();
    assert!(counts.open <= 10, "pool grew past its size: {counts:?}");
    eprintln!(
        "pgbench {builtin} -M {protocol}: {processed} transactions, {:?}",
        stdout.lines().find(|l| l.starts_with("tps"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_only_simple() {
    pgbench_through_usher("-S", "simple").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_only_extended() {
    pgbench_through_usher("-S", "extended").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_only_prepared() {
    pgbench_through_usher("-S", "prepared").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_simple() {
    pgbench_through_usher("-N", "simple").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_extended() {
    pgbench_through_usher("-N", "extended").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_prepared() {
    pgbench_through_usher("-N", "prepared").await;
}
