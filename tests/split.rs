//! Read/write splitting against a primary and two streaming replicas (plus one that applies
//! WAL 2 s late): where each statement ran is asserted with inet_server_port(), in the simple
//! and the extended protocol.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use tokio_postgres::{Client, SimpleQueryMessage};

struct Split {
    _usher: Usher,
    client: Client,
    primary: String,
    replicas: HashSet<String>,
}

async fn setup(prefix: &str, db_extra: &str) -> Split {
    let t = topology();
    let (r1, r2) = (t.replica().port, t.replica2().port);
    let db = t.create_db(prefix);
    t.primary.psql(
        &db,
        "CREATE TABLE t (id serial PRIMARY KEY, v int); INSERT INTO t (v) VALUES (1); \
         CREATE SEQUENCE s; GRANT ALL ON ALL TABLES IN SCHEMA public TO app; GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO app; \
         CREATE FUNCTION bump() RETURNS int LANGUAGE sql VOLATILE AS 'INSERT INTO t (v) VALUES (2) RETURNING inet_server_port()'; \
         CREATE FUNCTION pure(x int) RETURNS int LANGUAGE sql STABLE AS 'SELECT x';",
    );
    t.wait_replicas_caught_up();
    // Lag is not what these tests are about: under a loaded test machine it can exceed any
    // small limit. `replicas_past_max_lag_get_no_reads` covers it.
    let db_extra = format!("max_replica_lag = \"0\"\n{db_extra}");
    let usher = start_usher(&split_config(
        &db,
        &[r1, r2],
        "default_pool_size = 4\nlag_check_interval = \"100ms\"",
        &db_extra,
    ))
    .await;
    let client = connect(usher.port, "app", &db).await.unwrap();
    let split = Split {
        _usher: usher,
        client,
        primary: t.primary.port.to_string(),
        replicas: [r1.to_string(), r2.to_string()].into(),
    };
    // The monitor needs one round of lag measurements before replicas take reads.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !split
        .replicas
        .contains(&split.simple("SELECT inet_server_port()").await)
    {
        assert!(Instant::now() < deadline, "reads never reached a replica");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    split
}

impl Split {
    /// First column of the last row, simple protocol.
    async fn simple(&self, sql: &str) -> String {
        let msgs = self
            .client
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        msgs.iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(r.get(r.len() - 1).unwrap_or("").to_string()),
                _ => None,
            })
            .next_back()
            .unwrap_or_default()
    }

    /// Last column of the first row, extended protocol, as text.
    async fn extended(&self, sql: &str) -> String {
        let rows = self
            .client
            .query(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        let row = &rows[0];
        let i = row.len() - 1;
        row.try_get::<_, i32>(i)
            .map(|v| v.to_string())
            .or_else(|_| row.try_get::<_, String>(i))
            .unwrap()
    }

    async fn assert_replica(&self, sql: &str) {
        let s = self.simple(sql).await;
        assert!(
            self.replicas.contains(&s),
            "simple: {sql} ran on {s}, expected a replica"
        );
        let e = self.extended(sql).await;
        assert!(
            self.replicas.contains(&e),
            "extended: {sql} ran on {e}, expected a replica"
        );
    }

    async fn assert_primary(&self, sql: &str) {
        assert_eq!(self.simple(sql).await, self.primary, "simple: {sql}");
        assert_eq!(self.extended(sql).await, self.primary, "extended: {sql}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_are_routed_by_the_grammar() {
    let s = setup("rules", "").await;
    for sql in [
        "SELECT inet_server_port()",
        "VALUES (inet_server_port())",
        "SELECT inet_server_port() FROM t LIMIT 1",
        "WITH x AS (SELECT 1) SELECT inet_server_port() FROM x",
        "SELECT pure(1), inet_server_port()",
        "SELECT random(), clock_timestamp(), gen_random_uuid(), pg_is_in_recovery(), inet_server_port()",
        "SELECT * FROM (SELECT inet_server_port() UNION ALL SELECT inet_server_port()) u",
    ] {
        s.assert_replica(sql).await;
    }
    assert!(s.replicas.contains(&s.simple("SHOW port").await));
    for sql in [
        "SELECT inet_server_port() FROM t LIMIT 1 FOR UPDATE",
        "SELECT inet_server_port() FROM t LIMIT 1 FOR SHARE",
        "SELECT inet_server_port() FROM t LIMIT 1 FOR NO KEY UPDATE",
        "SELECT inet_server_port() FROM t LIMIT 1 FOR KEY SHARE",
        "SELECT nextval('s'), inet_server_port()",
        "SELECT setval('s', 5), inet_server_port()",
        "SELECT pg_advisory_lock(7), pg_advisory_unlock(7), inet_server_port()",
        "SELECT pg_notify('c', 'x'), inet_server_port()",
        "SELECT txid_current(), inet_server_port()",
        "SELECT bump()",
        "WITH ins AS (INSERT INTO t (v) VALUES (3) RETURNING id) SELECT inet_server_port() FROM ins",
        "INSERT INTO t (v) VALUES (4) RETURNING inet_server_port()",
        "UPDATE t SET v = v WHERE id = 1 RETURNING inet_server_port()",
        "WITH d AS (DELETE FROM t WHERE v = 4) SELECT inet_server_port()",
        "/* usher: role=primary */ SELECT inet_server_port()",
        "SELEC inet_server_port()",
    ] {
        if sql.starts_with("SELEC ") {
            // Unparsable: routed to the primary, whose parser reports the error.
            let err = s.client.simple_query(sql).await.unwrap_err();
            assert_eq!(err.code().unwrap().code(), "42601");
            continue;
        }
        s.assert_primary(sql).await;
    }
    // Statements that would fail on a standby succeed: they went to the primary.
    for sql in [
        "CREATE TABLE made_here (a int)",
        "ALTER TABLE made_here ADD COLUMN b int",
        "CREATE INDEX ON made_here (a)",
        "TRUNCATE made_here",
        "SELECT * INTO copied FROM t",
        "MERGE INTO t USING (SELECT 1 AS id) src ON t.id = src.id WHEN MATCHED THEN UPDATE SET v = 5",
        "BEGIN; LOCK TABLE t IN SHARE MODE; COMMIT",
        "VACUUM made_here",
        "ANALYZE made_here",
        "LISTEN chan",
        "UNLISTEN chan",
        "DROP TABLE made_here",
    ] {
        s.client.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
    // COPY TO reads from a replica (once the replicas replayed this client's writes above:
    // read-your-writes); COPY FROM writes to the primary.
    topology().wait_replicas_caught_up();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out: Vec<bytes::Bytes> = futures_util::TryStreamExt::try_collect(
        s.client
            .copy_out("COPY (SELECT inet_server_port()) TO STDOUT")
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert!(s
        .replicas
        .contains(String::from_utf8_lossy(&out.concat()).trim()));
    let sink = s.client.copy_in("COPY t (v) FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    futures_util::SinkExt::send(&mut sink, bytes::Bytes::from_static(b"9\n"))
        .await
        .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_stay_on_one_server() {
    let s = setup("txn", "").await;
    // Conservative: an explicit transaction goes to the primary, READ ONLY ones to a replica.
    for begin in [
        "BEGIN",
        "START TRANSACTION",
        "BEGIN ISOLATION LEVEL REPEATABLE READ",
    ] {
        s.client.batch_execute(begin).await.unwrap();
        assert_eq!(
            s.simple("SELECT inet_server_port()").await,
            s.primary,
            "{begin}"
        );
        assert_eq!(
            s.extended("SELECT inet_server_port()").await,
            s.primary,
            "{begin}"
        );
        s.client.batch_execute("COMMIT").await.unwrap();
    }
    for begin in ["BEGIN READ ONLY", "START TRANSACTION READ ONLY"] {
        s.client.batch_execute(begin).await.unwrap();
        let first = s.simple("SELECT inet_server_port()").await;
        assert!(s.replicas.contains(&first), "{begin} ran on {first}");
        for _ in 0..5 {
            assert_eq!(
                s.extended("SELECT inet_server_port()").await,
                first,
                "stays on one replica"
            );
        }
        let err = s
            .client
            .simple_query("INSERT INTO t (v) VALUES (1)")
            .await
            .unwrap_err();
        assert_eq!(err.code().unwrap().code(), "25006");
        s.client.batch_execute("ROLLBACK").await.unwrap();
    }
    // A multi-statement string with any write goes to the primary.
    assert_eq!(
        s.simple("SELECT 1; INSERT INTO t (v) VALUES (8); SELECT inet_server_port()")
            .await,
        s.primary
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_role_override() {
    let s = setup("override", "").await;
    s.client
        .batch_execute("SET usher.role = 'primary'")
        .await
        .unwrap();
    s.assert_primary("SELECT inet_server_port()").await;
    s.client
        .batch_execute("SET usher.role = 'auto'")
        .await
        .unwrap();
    s.assert_replica("SELECT inet_server_port()").await;
    s.client
        .batch_execute("SET usher.role = 'primary'")
        .await
        .unwrap();
    s.client.batch_execute("RESET usher.role").await.unwrap();
    s.assert_replica("SELECT inet_server_port()").await;
    // A replica hint never sends a write to a replica.
    assert_eq!(
        s.simple(
            "/* usher: role=replica */ INSERT INTO t (v) VALUES (1) RETURNING inet_server_port()"
        )
        .await,
        s.primary
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_off_sends_everything_to_the_primary() {
    let t = topology();
    let db = t.create_db("nosplit");
    let cfg = split_config(&db, &[t.replica().port], "", "")
        .replace("read_write_split = true", "read_write_split = false");
    let u = start_usher(&cfg).await;
    let c = connect(u.port, "app", &db).await.unwrap();
    for _ in 0..5 {
        let port: i32 = c
            .query_one("SELECT inet_server_port()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(port, t.primary.port as i32);
    }
}

async fn read_your_writes(enabled: bool) -> bool {
    let t = topology();
    let delayed = t.delayed_replica().port;
    let db = t.create_db(if enabled { "ryw_on" } else { "ryw_off" });
    t.primary
        .psql(&db, "CREATE TABLE w (id int); GRANT ALL ON w TO app");
    // max_replica_lag = 0: only read-your-writes can keep this client off the delayed replica.
    let cfg = split_config(
        &db,
        &[delayed],
        "lag_check_interval = \"100ms\"",
        &format!("max_replica_lag = \"0\"\nread_your_writes = {enabled}"),
    );
    let u = start_usher(&cfg).await;
    let c = connect(u.port, "app", &db).await.unwrap();
    // Wait until the delayed replica has the table and takes reads.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(row) = c
            .query_one(
                "SELECT inet_server_port() FROM w UNION ALL SELECT inet_server_port() LIMIT 1",
                &[],
            )
            .await
        {
            if row.get::<_, i32>(0) == delayed as i32 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "delayed replica never took reads"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.execute("INSERT INTO w VALUES (1)", &[]).await.unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM w", &[])
        .await
        .unwrap()
        .get(0);
    n == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_sees_own_write() {
    assert!(
        read_your_writes(true).await,
        "the read after the write missed it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_read_your_writes_the_read_is_stale() {
    // Proves the test above can fail: the same sequence reads stale data when the feature is off.
    assert!(
        !read_your_writes(false).await,
        "expected a stale read from the delayed replica"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_past_max_lag_get_no_reads() {
    let t = topology();
    let delayed = t.delayed_replica().port;
    let db = t.create_db("lag");
    t.primary
        .psql(&db, "CREATE TABLE l (id int); GRANT ALL ON l TO app");
    let cfg = split_config(
        &db,
        &[delayed],
        "lag_check_interval = \"100ms\"",
        "max_replica_lag = \"500ms\"\nread_your_writes = false",
    );
    let u = start_usher(&cfg).await;
    let c = connect(u.port, "app", &db).await.unwrap();
    let port = || async {
        c.query_one("SELECT inet_server_port()", &[])
            .await
            .unwrap()
            .get::<_, i32>(0)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while port().await != delayed as i32 {
        assert!(
            Instant::now() < deadline,
            "the delayed replica never took reads while idle"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Keep writing (through another client): the delayed replica falls 2 s behind and must get
    // no reads; the primary takes them (primary_reads = "fallback").
    let writer = connect(u.port, "app", &db).await.unwrap();
    let mut saw_primary = false;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        writer
            .execute("INSERT INTO l VALUES (1)", &[])
            .await
            .unwrap();
        let p = port().await;
        if started.elapsed() > Duration::from_millis(1500) {
            assert_eq!(
                p, t.primary.port as i32,
                "a read reached the replica 2 s behind"
            );
            saw_primary = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(saw_primary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggressive_strategy_routes_by_first_statement() {
    let s = setup("aggressive", "read_write_strategy = \"aggressive\"").await;
    // A transaction that starts with a read runs on a replica, all of it.
    s.client.batch_execute("BEGIN").await.unwrap();
    let first = s.simple("SELECT inet_server_port()").await;
    assert!(s.replicas.contains(&first), "ran on {first}");
    assert_eq!(s.extended("SELECT inet_server_port()").await, first);
    s.client.batch_execute("COMMIT").await.unwrap();
    // One that starts with a write runs on the primary.
    s.client.batch_execute("BEGIN").await.unwrap();
    assert_eq!(
        s.simple("INSERT INTO t (v) VALUES (1) RETURNING inet_server_port()")
            .await,
        s.primary
    );
    assert_eq!(s.simple("SELECT inet_server_port()").await, s.primary);
    s.client.batch_execute("COMMIT").await.unwrap();
    // (Read-your-writes keeps this client's reads on the primary until the replicas replay it.)
    topology().wait_replicas_caught_up();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A read-started transaction that then writes gets a clear error naming the setting.
    s.client.batch_execute("BEGIN").await.unwrap();
    assert!(s
        .replicas
        .contains(&s.simple("SELECT inet_server_port()").await));
    let err = s
        .client
        .simple_query("INSERT INTO t (v) VALUES (1)")
        .await
        .unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "25006");
    assert!(
        db.message()
            .contains("read_write_strategy = \"aggressive\""),
        "{}",
        db.message()
    );
    s.client.batch_execute("ROLLBACK").await.unwrap();
    // An empty transaction is answered without a server; the session stays usable.
    s.client.batch_execute("BEGIN").await.unwrap();
    s.client.batch_execute("COMMIT").await.unwrap();
    assert!(s
        .replicas
        .contains(&s.simple("SELECT inet_server_port()").await));
}

/// The only server that may take a read sends FATAL as its first answer (an administrator
/// terminated its backend) and no other server can take the retry: the client gets the
/// server's own FATAL, the session does not panic, and usher keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fatal_first_answer_with_no_other_server_reaches_the_client() {
    let t = topology();
    let db = t.create_db("fatal_noretry");
    t.primary.psql(
        &db,
        "CREATE TABLE locked (x int); GRANT ALL ON locked TO app",
    );
    t.wait_replicas_caught_up();
    let u = start_usher(&split_config(
        &db,
        &[t.replica().port],
        "default_pool_size = 2\nlag_check_interval = \"200ms\"\nban_time = \"1s\"",
        "primary_reads = \"never\"",
    ))
    .await;
    let c = connect(u.port, "app", &db).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match c.query_one("SELECT inet_server_port()", &[]).await {
            Ok(r) if r.get::<_, i32>(0) == t.replica().port as i32 => break,
            _ => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the replica never took reads"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    // A read whose server says nothing before it is killed: it waits for a lock the replica
    // replays from the primary (taken at parse analysis, before any RowDescription), so the
    // FATAL is its first answer and usher tries to replay it elsewhere.
    let direct = connect(t.primary.port, "app", &db).await.unwrap();
    direct
        .batch_execute("BEGIN; LOCK TABLE locked IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    // The lock's WAL record goes out with the next flush: a committed transaction forces one.
    t.primary.psql(&db, "SELECT pg_current_xact_id()");
    until_nonzero(
        t.replica(),
        &db,
        "SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND relation = 'locked'::regclass",
        "the replica never replayed the lock",
    )
    .await;
    let sleeper = tokio::spawn(async move {
        c.simple_query("SELECT x AS fatal_noretry FROM locked")
            .await
            .map(drop)
    });
    until_nonzero(
        t.replica(),
        &db,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query LIKE '%AS fatal_noretry%' AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()",
        "the read never waited for the lock",
    )
    .await;
    let err = tokio::time::timeout(std::time::Duration::from_secs(10), sleeper)
        .await
        .expect("the client gets an answer")
        .unwrap()
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::ADMIN_SHUTDOWN),
        "the server's FATAL, relayed: {err:?}"
    );
    direct.batch_execute("ROLLBACK").await.unwrap();
    // usher itself is fine: a new client is served once the ban is over.
    let c2 = connect(u.port, "app", &db).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while c2.query_one("SELECT 1", &[]).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the replica never came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Runs `sql` on `pg` until it returns something other than 0 (10 s at most, else `what`).
async fn until_nonzero(pg: &Pg, db: &str, sql: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while pg.psql(db, sql) == "0" {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Lookups in usher's shared classification cache so far.
fn shared_lookups(u: &Usher) -> u64 {
    let cache = &u.app.query_cache;
    cache.hits.load(std::sync::atomic::Ordering::Relaxed)
        + cache.misses.load(std::sync::atomic::Ordering::Relaxed)
}

/// Routing classifies a statement once: one lookup in the shared classification cache per
/// new statement text (role choice and read-your-writes tracking share it), and none for a
/// text the session sent recently (before the session memo, every statement cost one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_is_classified_once() {
    let s = setup("classify_once", "").await;
    let lookups = || shared_lookups(&s._usher);
    let before = lookups();
    for i in 0..10 {
        s.simple(&format!("UPDATE t SET v = {i} WHERE id = 1 RETURNING v"))
            .await;
        s.simple(&format!("SELECT v + {i} FROM t")).await;
    }
    assert_eq!(lookups() - before, 20, "one per new statement text");
    let before = lookups();
    for _ in 0..10 {
        s.simple("UPDATE t SET v = 9 WHERE id = 1 RETURNING v")
            .await;
        s.simple("SELECT v + 9 FROM t").await;
    }
    assert_eq!(
        lookups() - before,
        0,
        "repeated texts come from the session's memo"
    );
}

/// The extended protocol: usher answers the Parse itself (checking the text parses), routes
/// at the Bind and tracks writes; all of it is one shared lookup per text, then none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_statement_is_classified_once() {
    let s = setup("classify_once_ext", "").await;
    let lookups = || shared_lookups(&s._usher);
    let before = lookups();
    for _ in 0..10 {
        s.client
            .query("UPDATE t SET v = v + 1 WHERE id = 1 RETURNING v", &[])
            .await
            .unwrap();
        s.client
            .query("SELECT v FROM t WHERE id = $1", &[&1])
            .await
            .unwrap();
    }
    assert_eq!(lookups() - before, 2, "one per text for 20 executions");
}
