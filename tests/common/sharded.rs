//! Helpers for tests of sharded databases: four shard databases on the shared primary with
//! the repository's migrations applied, usher in front of them, where a key lives, what each
//! shard holds, and raw-protocol reading.

use tokio::io::AsyncReadExt;

use super::fake_server::frames;
use super::*;

/// A sharded database `app` behind usher.
pub struct Sharded {
    pub usher: Usher,
    pub db: &'static str,
    pub shards: Vec<String>,
    pub config: String,
}

/// Four shard databases named after `prefix`, migrated, with the sharding body `map`.
pub async fn setup(prefix: &str, map: &str) -> Sharded {
    setup_with(prefix, map, "").await
}

/// [`setup`], with `general` lines added to the config's `[general]` section.
pub async fn setup_with(prefix: &str, map: &str, general: &str) -> Sharded {
    let shards = shard_dbs(prefix, 4);
    let config = sharded_config("app", &shards, map).replacen(
        "listen = \"127.0.0.1:0\"\n",
        &format!("listen = \"127.0.0.1:0\"\n{general}\n"),
        1,
    );
    migrate(&config, "migrations").await.unwrap();
    for s in &shards {
        topology()
            .primary
            .psql(s, "GRANT ALL ON ALL TABLES IN SCHEMA public TO trust_user");
    }
    let usher = start_usher(&config).await;
    Sharded {
        usher,
        db: "app",
        shards,
        config,
    }
}

/// The shard `usher shard-of` names for `key` (of `table`).
pub fn shard_of(config: &str, table: Option<&str>, key: &str) -> usize {
    let c = usher::config::load_str(config, std::path::Path::new("t.toml")).unwrap();
    usher::tools::shard_of::shard_of(&c, Some("app"), table, key)
        .unwrap()
        .0
}

/// Every row of `sql` on each shard, queried directly on the primary.
pub fn per_shard(s: &Sharded, sql: &str) -> Vec<Vec<String>> {
    s.shards
        .iter()
        .map(|db| {
            topology()
                .primary
                .psql(db, sql)
                .lines()
                .map(str::to_string)
                .filter(|l| !l.is_empty())
                .collect()
        })
        .collect()
}

/// Reads a raw connection until `n` ReadyForQuery frames (any status) arrived; returns the
/// frames.
pub async fn read_readies(s: &mut tokio::net::TcpStream, n: usize) -> Vec<(u8, Vec<u8>)> {
    let mut got = Vec::new();
    loop {
        let all = frames(&got);
        if all.iter().filter(|(t, _)| *t == b'Z').count() >= n {
            return all;
        }
        let mut chunk = [0u8; 4096];
        let r = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        assert!(r > 0, "closed: {all:?}");
        got.extend_from_slice(&chunk[..r]);
    }
}

/// Reads a raw connection until a frame of type `tag` arrived; returns the frames.
pub async fn read_until_tag(s: &mut tokio::net::TcpStream, tag: u8) -> Vec<(u8, Vec<u8>)> {
    let mut got = Vec::new();
    loop {
        let all = frames(&got);
        if all.iter().any(|(t, _)| *t == tag) {
            return all;
        }
        let mut chunk = [0u8; 4096];
        let r = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        assert!(r > 0, "closed: {all:?}");
        got.extend_from_slice(&chunk[..r]);
    }
}

/// Prepared transactions left in the shard databases (any name).
pub fn prepared_left(s: &Sharded) -> Vec<String> {
    per_shard(
        s,
        "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()",
    )
    .into_iter()
    .flatten()
    .collect()
}
