//! What a reload means for clients that are already connected: a removed database ends their
//! sessions with FATAL 3D000 (and nothing else is harmed), a shard map added by a reload is
//! what their next statement routes by, and clients waiting on a pool the reload dropped are
//! routed again instead of connecting to the removed server.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// usher running with its config in a file that `reload` rewrites.
struct Reloadable {
    usher: Usher,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Reloadable {
    async fn start(text: &str) -> Reloadable {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usher.toml");
        std::fs::write(&path, text).unwrap();
        let usher = start_usher(text).await;
        usher.app.set_config_path(path.clone());
        Reloadable {
            usher,
            path,
            _dir: dir,
        }
    }

    fn reload(&self, text: &str) {
        std::fs::write(&self.path, text).unwrap();
        self.usher.app.reload().unwrap();
    }
}

async fn port_of(c: &tokio_postgres::Client) -> i32 {
    let row = c.query_one("SELECT inet_server_port()", &[]).await.unwrap();
    row.get(0)
}

fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_string())
        .unwrap_or_else(|| format!("no server error: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_database_ends_its_sessions_with_3d000() {
    let t = topology();
    let (kept, gone) = (t.create_db("kept"), t.create_db("gone"));
    let both = format!(
        "{}\n[databases.{gone}]\nshards = [ {{ primary = \"127.0.0.1:{}/{gone}\" }} ]\n",
        config(&kept, ""),
        t.primary.port
    );
    let r = Reloadable::start(&both).await;
    let on_gone = connect(r.usher.port, "app", &gone).await.unwrap();
    let on_kept = connect(r.usher.port, "app", &kept).await.unwrap();
    on_gone.simple_query("SELECT 1").await.unwrap();
    r.reload(&config(&kept, ""));

    let e = on_gone.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), "3D000", "{e:?}");
    let e = connect(r.usher.port, "app", &gone).await.err().unwrap();
    assert_eq!(sqlstate(&e), "3D000", "{e:?}");
    // Nothing else is harmed.
    let row = on_kept.query_one("SELECT 41 + 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    let deadline = Instant::now() + Duration::from_secs(5);
    while r
        .usher
        .app
        .client_list
        .all()
        .iter()
        .any(|c| c.database == gone)
    {
        assert!(
            Instant::now() < deadline,
            "the ended session is still listed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_map_added_by_a_reload_routes_connected_sessions() {
    let shards = shard_dbs("addmap", 2);
    for s in &shards {
        topology().primary.psql(
            s,
            "CREATE TABLE items (family_no bigint, note text); GRANT ALL ON items TO app",
        );
    }
    let map = "hasher = \"xxh3\"\nkey_type = \"bigint\"\ntables = [ { name = \"items\", column = \"family_no\" } ]\n";
    let sharded = sharded_config("app", &shards, map);
    let unsharded = sharded_config("app", &shards[..1], map)
        .replace(&format!("\n[databases.app.sharding]\n{map}"), "\n");
    assert!(!unsharded.contains("sharding"), "{unsharded}");
    let r = Reloadable::start(&unsharded).await;
    let client = connect(r.usher.port, "app", "app").await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();

    r.reload(&sharded);
    let c = usher::config::load_str(&sharded, std::path::Path::new("t.toml")).unwrap();
    let key = (1..1000)
        .find(|k| {
            usher::tools::shard_of::shard_of(&c, Some("app"), Some("items"), &k.to_string())
                .unwrap()
                .0
                == 1
        })
        .unwrap();
    client
        .simple_query(&format!(
            "INSERT INTO items (family_no, note) VALUES ({key}, 'after reload')"
        ))
        .await
        .unwrap();
    let on = |db: &str| topology().primary.psql(db, "SELECT count(*) FROM items");
    assert_eq!(
        (on(&shards[0]), on(&shards[1])),
        ("0".to_string(), "1".to_string()),
        "the row went by the new shard map"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_of_a_dropped_pool_never_reach_the_removed_server() {
    let t = topology();
    let (r1, r2) = (t.replica().port, t.replica2().port);
    let db = t.create_db("dropped");
    t.wait_replicas_caught_up();
    let general = "default_pool_size = 1\nlag_check_interval = \"100ms\"";
    let db_extra = "max_replica_lag = \"0\"";
    let r = Reloadable::start(&split_config(&db, &[r1], general, db_extra)).await;
    let a = connect(r.usher.port, "app", &db).await.unwrap();
    let b = connect(r.usher.port, "app", &db).await.unwrap();
    // The monitor needs one round of lag measurements before the replica takes reads.
    let deadline = Instant::now() + Duration::from_secs(10);
    while port_of(&a).await != i32::from(r1) {
        assert!(Instant::now() < deadline, "reads never reached the replica");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // `a` holds the replica's only connection; `b` waits for it.
    let long = tokio::spawn(async move {
        a.query_one("SELECT inet_server_port(), pg_sleep(1.5)", &[])
            .await
            .unwrap()
            .get::<_, i32>(0)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The simple protocol: one message, so the one that waits is the one that runs.
    let waiting = tokio::spawn(async move {
        let answer = b.simple_query("SELECT inet_server_port()").await.unwrap();
        answer
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0)?.parse::<i32>().ok(),
                _ => None,
            })
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        usher::stats::collect::pool_rows(&r.usher.app)
            .iter()
            .map(|p| p.waiting)
            .sum::<usize>(),
        1,
        "b waits for the replica"
    );
    r.reload(&split_config(&db, &[r2], general, db_extra));

    let b_port = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiter was answered")
        .unwrap();
    assert_ne!(
        b_port,
        i32::from(r1),
        "the waiter reached the removed replica"
    );
    assert!(
        [i32::from(t.primary.port), i32::from(r2)].contains(&b_port),
        "{b_port}"
    );
    // The transaction already running on the removed replica finishes there.
    assert_eq!(long.await.unwrap(), i32::from(r1));
}
