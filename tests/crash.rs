//! usher killed with SIGKILL in the middle of writes across shards, over and over: each
//! time, at a chosen moment (every other round the moment a part is seen prepared, the
//! others at varied times before, between or after the prepares and the commits), the
//! process is killed while a client runs two-phase-commit UPDATEs of two families on
//! different shards (one UPDATE across shards, or a BEGIN ... COMMIT block updating each
//! family in turn), then started again on the same decision log. Afterwards no prepared
//! transaction is left on any shard, each UPDATE is all or nothing (both families carry the
//! same value), and no acknowledged UPDATE is lost. Its own test binary: it starts and kills
//! usher processes.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::learning::{family, TWO_PHASE_MAP};
use common::sharded::*;
use common::*;

/// The learning platform's shard map, committing across shards.
const MAP: &str = TWO_PHASE_MAP;

/// Starts the usher binary on `config` and waits until it takes connections.
async fn start(config: &std::path::Path, port: u16) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_usher"))
        .args(["--config", config.to_str().unwrap()])
        .env("USHER_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "usher did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_two_phase_commits_leaves_every_write_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("2pc.log");
    let general = format!(
        "instance_name = \"crash\"\ntwo_phase_log = \"{}\"",
        log.display()
    );
    let s = setup_with("xcrash", MAP, &general).await;
    // Two families on different shards; every UPDATE gives both the same new name.
    let (a, b) = (1..100u32)
        .flat_map(|i| (i + 1..100).map(move |j| (i, j)))
        .map(|(i, j)| (family(i), family(j)))
        .find(|(a, b)| {
            shard_of(&s.config, Some("families"), a) != shard_of(&s.config, Some("families"), b)
        })
        .unwrap();
    let c = connect(s.usher.port, "app", s.db).await.unwrap();
    for f in [&a, &b] {
        c.batch_execute(&format!(
            "INSERT INTO families (id, name) VALUES ('{f}', 'v0')"
        ))
        .await
        .unwrap();
    }
    let port = free_port();
    let file = dir.path().join("usher.toml");
    std::fs::write(
        &file,
        s.config.replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
            1,
        ),
    )
    .unwrap();
    let names = || {
        let mut n: Vec<String> = per_shard(
            &s,
            &format!("SELECT name FROM families WHERE id IN ('{a}', '{b}')"),
        )
        .into_iter()
        .flatten()
        .collect();
        n.sort();
        n
    };
    let mut committed_somewhere = 0;
    let mut in_doubt = 0;
    // Of them, left by transaction blocks.
    let mut in_doubt_blocks = 0;
    // Watches the shards' server for prepared parts (every shard database is on it).
    let watcher = connect(topology().primary.port, "app", &s.shards[0])
        .await
        .unwrap();
    for round in 0..20u64 {
        let mut usher = start(&file, port).await;
        let client = connect(port, "app", s.db).await.unwrap();
        let (ia, ib) = (a.clone(), b.clone());
        let writer = tokio::spawn(async move {
            for k in 0.. {
                // Half the rounds write with one UPDATE across shards, half with a
                // transaction block that updates each family on its own shard.
                let steps = if round % 4 < 2 {
                    vec![format!(
                        "UPDATE families SET name = 'r{round}k{k}' WHERE id IN ('{ia}', '{ib}')"
                    )]
                } else {
                    vec![
                        "BEGIN".to_string(),
                        format!("UPDATE families SET name = 'r{round}k{k}' WHERE id = '{ia}'"),
                        format!("UPDATE families SET name = 'r{round}k{k}' WHERE id = '{ib}'"),
                        "COMMIT".to_string(),
                    ]
                };
                for sql in &steps {
                    if client.batch_execute(sql).await.is_err() {
                        return k;
                    }
                }
            }
            0
        });
        if round % 2 == 0 {
            // A different moment of the commit each round.
            tokio::time::sleep(Duration::from_millis(40 + round * 17 % 90)).await;
        } else {
            // The moment a part is prepared, before its COMMIT PREPARED (or after 2 s).
            let deadline = Instant::now() + Duration::from_secs(2);
            tokio::time::sleep(Duration::from_millis(20)).await;
            while Instant::now() < deadline {
                let prepared = watcher
                    .query_one(
                        "SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE 'usher:crash:%'",
                        &[],
                    )
                    .await
                    .unwrap()
                    .get::<_, i64>(0);
                if prepared > 0 {
                    break;
                }
            }
        }
        usher.kill().unwrap();
        usher.wait().unwrap();
        let done = writer.await.unwrap();
        committed_somewhere += done;
        // Parts the kill left prepared: what the restart must finish (by the log).
        let left = prepared_left(&s).len();
        in_doubt += left;
        if round % 4 >= 2 {
            in_doubt_blocks += left;
        }
        // Started again on the same log, usher finishes what was in doubt.
        let mut usher = start(&file, port).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !prepared_left(&s).is_empty() {
            assert!(
                Instant::now() < deadline,
                "round {round}: prepared transactions left: {:?}",
                prepared_left(&s)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let now = names();
        assert_eq!(now.len(), 2, "round {round}: {now:?}");
        assert_eq!(now[0], now[1], "round {round}: a write was half applied");
        // No acknowledged write is lost: the last one stands, or the one in flight won.
        if done > 0 {
            let (last, next) = (format!("r{round}k{}", done - 1), format!("r{round}k{done}"));
            assert!(
                now[0] == last || now[0] == next,
                "round {round}: {now:?} after {last} was acknowledged"
            );
        }
        usher.kill().unwrap();
        usher.wait().unwrap();
    }
    assert!(committed_somewhere > 0, "the writer committed some UPDATEs");
    eprintln!(
        "{committed_somewhere} UPDATEs acknowledged, {in_doubt} parts left prepared by the kills ({in_doubt_blocks} by transaction blocks)"
    );
    assert!(
        in_doubt > 0,
        "some kill fell between PREPARE and COMMIT PREPARED"
    );
}
