//! Sharding against real Postgres: family-keyed rows written through usher land on the shard
//! `usher shard-of` names (checked by querying each shard directly, and by Postgres itself with
//! hash-partitioned check tables when hasher = "postgres"), reads and joins by key, every
//! refusal with its SQLSTATE, transaction pinning, hints, DDL broadcast and `usher migrate`.

mod common;

use std::collections::HashSet;

use bytes::BufMut;
use common::fake_server::{error_code, frame};
use common::sharded::*;
use common::*;
use futures_util::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

const MAP: &str = r#"hasher = "xxh3"
key_type = "uuid"
default_shard = 0
tables = [
  { name = "families", column = "id" },
  { name = "children", column = "family_id" },
  { name = "user_progress", column = "family_id" },
  { name = "items", column = "family_no", key_type = "bigint" },
]
global_tables = ["lessons"]
"#;

/// A uuid sent in binary (16 bytes), without pulling in a uuid crate.
#[derive(Debug, Clone, Copy)]
struct Uuid([u8; 16]);

impl Uuid {
    fn new(n: u64, salt: u64) -> Uuid {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(
            &xxhash_rust::xxh3::xxh3_64(&[n.to_le_bytes(), salt.to_le_bytes()].concat())
                .to_be_bytes(),
        );
        b[8..].copy_from_slice(&n.to_be_bytes());
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Uuid(b)
    }

    fn text(&self) -> String {
        let h: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    }
}

impl ToSql for Uuid {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.put_slice(&self.0);
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::UUID
    }
    to_sql_checked!();
}

/// Sends P/B/E/S with text-format parameters over a raw connection; returns the SQLSTATE of
/// an error, if any.
async fn raw_text_params(
    s: &mut tokio::net::TcpStream,
    sql: &str,
    params: &[&str],
) -> Option<String> {
    let mut out = Vec::new();
    let mut msg = |tag: u8, body: Vec<u8>| {
        out.push(tag);
        out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(&body);
    };
    let mut p = vec![0];
    p.extend_from_slice(sql.as_bytes());
    p.extend_from_slice(&[0, 0, 0]);
    msg(b'P', p);
    let mut b = vec![0, 0];
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for v in params {
        b.extend_from_slice(&(v.len() as i32).to_be_bytes());
        b.extend_from_slice(v.as_bytes());
    }
    b.extend_from_slice(&0i16.to_be_bytes());
    msg(b'B', b);
    msg(b'E', vec![0, 0, 0, 0, 0]);
    msg(b'S', vec![]);
    s.write_all(&out).await.unwrap();
    let mut buf = Vec::new();
    let mut error = None;
    loop {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
        while buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() < len + 1 {
                break;
            }
            let frame: Vec<u8> = buf.drain(..len + 1).collect();
            if frame[0] == b'E' {
                let body = &frame[5..];
                let mut i = 0;
                while i < body.len() && body[i] != 0 {
                    let end = i + 1 + body[i + 1..].iter().position(|b| *b == 0).unwrap();
                    if body[i] == b'C' {
                        error = Some(String::from_utf8_lossy(&body[i + 1..end]).into_owned());
                    }
                    i = end + 1;
                }
            }
            if frame[0] == b'Z' {
                return error;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_rows_land_where_shard_of_says() {
    let s = setup("shrows", MAP).await;
    let client = connect(s.usher.port, "app", s.db).await.unwrap();
    // DDL through usher runs on every shard.
    client
        .batch_execute(
            "CREATE TABLE items (family_no bigint NOT NULL, n int NOT NULL, how text NOT NULL)",
        )
        .await
        .unwrap();
    for db in &s.shards {
        topology()
            .primary
            .psql(db, "GRANT ALL ON items TO trust_user");
    }
    // 10,000 families, 2,500 by each way a key can arrive.
    for i in 0..2500u64 {
        let u = Uuid::new(i, 1);
        client
            .batch_execute(&format!(
                "INSERT INTO families (id, name) VALUES ('{}', 'simple {i}')",
                u.text().to_uppercase()
            ))
            .await
            .unwrap();
    }
    let binary = client
        .prepare("INSERT INTO families (id, name) VALUES ($1, $2)")
        .await
        .unwrap();
    for chunk in (2500..5000u64).collect::<Vec<_>>().chunks(50) {
        // Pipelined: each statement routes on its own bind values.
        let futs = chunk.iter().map(|i| {
            let (binary, client) = (&binary, &client);
            async move {
                let name = format!("binary {i}");
                client.execute(binary, &[&Uuid::new(*i, 1), &name]).await
            }
        });
        for r in join_all(futs).await {
            r.unwrap();
        }
    }
    for i in 5000..7500u64 {
        let text = format!("{{{}}}", Uuid::new(i, 1).text().replace('-', ""));
        client
            .query_typed(
                "INSERT INTO families (id, name) VALUES ($1::text::uuid, $2)",
                &[
                    (&text, Type::TEXT),
                    (&format!("typed text {i}"), Type::TEXT),
                ],
            )
            .await
            .unwrap();
    }
    let mut raw = raw_login(s.usher.port, "trust_user", s.db).await;
    for i in 7500..10000u64 {
        let id = Uuid::new(i, 1).text();
        assert_eq!(
            raw_text_params(
                &mut raw,
                "INSERT INTO families (id, name) VALUES ($1, $2)",
                &[&id, "text format"]
            )
            .await,
            None
        );
    }
    // bigint keys: literal, quoted literal, binary int8, binary int4, text format.
    for n in 0..400i64 {
        client
            .batch_execute(&format!(
                "INSERT INTO items (family_no, n, how) VALUES ({n}, 1, 'literal')"
            ))
            .await
            .unwrap();
        client
            .batch_execute(&format!(
                "INSERT INTO items (family_no, n, how) VALUES ('{n}', 2, 'quoted')"
            ))
            .await
            .unwrap();
        client
            .execute(
                "INSERT INTO items (family_no, n, how) VALUES ($1, 3, 'int8')",
                &[&n],
            )
            .await
            .unwrap();
        client
            .execute(
                "INSERT INTO items (family_no, n, how) VALUES ($1::int4, 4, 'int4')",
                &[&(n as i32)],
            )
            .await
            .unwrap();
        assert_eq!(
            raw_text_params(
                &mut raw,
                "INSERT INTO items (family_no, n, how) VALUES ($1, 5, 'text')",
                &[&n.to_string()]
            )
            .await,
            None
        );
    }
    // Each shard holds exactly the rows shard-of assigns to it; none missing, none twice.
    let mut seen = HashSet::new();
    for (shard, ids) in per_shard(&s, "SELECT id FROM families").iter().enumerate() {
        assert!(ids.len() > 2000, "shard {shard} has {} families", ids.len());
        for id in ids {
            assert_eq!(shard_of(&s.config, None, id), shard, "family {id}");
            assert!(seen.insert(id.clone()), "family {id} on two shards");
        }
    }
    assert_eq!(seen.len(), 10_000);
    let mut items = 0;
    for (shard, rows) in per_shard(
        &s,
        "SELECT family_no || ' ' || count(*) FROM items GROUP BY family_no",
    )
    .iter()
    .enumerate()
    {
        for row in rows {
            let (key, count) = row.split_once(' ').unwrap();
            assert_eq!(
                shard_of(&s.config, Some("items"), key),
                shard,
                "items key {key}"
            );
            assert_eq!(count, "5", "every form of key {key} on one shard");
            items += 5;
        }
    }
    assert_eq!(items, 2000);
    // Reads by key return exactly that family, whatever the form of the key.
    let u = Uuid::new(42, 1);
    let rows = client
        .query("SELECT name FROM families WHERE id = $1", &[&u])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let rows = client
        .simple_query(&format!(
            "SELECT name FROM families WHERE id = '{}'",
            u.text()
        ))
        .await
        .unwrap();
    let rows = rows
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(rows, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_hasher_agrees_with_hash_partitions() {
    let map = MAP.replace("hasher = \"xxh3\"", "hasher = \"postgres\"");
    let s = setup("shpg", &map).await;
    for (i, db) in s.shards.iter().enumerate() {
        // A table that only accepts the rows of partition (4, i): a misrouted row is an error.
        topology().primary.psql(db, &format!(
            "CREATE TABLE items (family_no bigint NOT NULL, n int) PARTITION BY HASH (family_no); \
             CREATE TABLE items_{i} PARTITION OF items FOR VALUES WITH (MODULUS 4, REMAINDER {i}); \
             CREATE TABLE fam_check (id uuid NOT NULL) PARTITION BY HASH (id); \
             CREATE TABLE fam_check_{i} PARTITION OF fam_check FOR VALUES WITH (MODULUS 4, REMAINDER {i}); \
             GRANT ALL ON items, fam_check TO app"
        ));
    }
    let client = connect(s.usher.port, "app", s.db).await.unwrap();
    for n in -500..500i64 {
        client
            .execute("INSERT INTO items (family_no, n) VALUES ($1, 1)", &[&n])
            .await
            .unwrap();
        client
            .batch_execute(&format!("INSERT INTO items (family_no, n) VALUES ({n}, 2)"))
            .await
            .unwrap();
    }
    // fam_check is not in the shard map: route it with a key hint, as an operator would.
    for i in 0..500u64 {
        let u = Uuid::new(i, 7).text();
        client
            .batch_execute(&format!(
                "/* usher: key={u} */ INSERT INTO fam_check (id) VALUES ('{u}')"
            ))
            .await
            .unwrap();
        client
            .batch_execute(&format!(
                "INSERT INTO families (id, name) VALUES ('{u}', 'f')"
            ))
            .await
            .unwrap();
    }
    let counts: Vec<usize> = per_shard(&s, "SELECT count(*) FROM items")
        .iter()
        .map(|r| r[0].parse().unwrap())
        .collect();
    assert_eq!(counts.iter().sum::<usize>(), 2000, "{counts:?}");
    assert!(counts.iter().all(|c| *c > 300), "{counts:?}");
    // families landed with their partition-check twins.
    for rows in per_shard(
        &s,
        "SELECT count(*) FROM families f LEFT JOIN fam_check c ON c.id = f.id WHERE c.id IS NULL",
    ) {
        assert_eq!(rows, vec!["0".to_string()]);
    }
}

/// The first column of the first row of a simple query.
async fn value(client: &tokio_postgres::Client, sql: &str) -> String {
    client
        .simple_query(sql)
        .await
        .unwrap()
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_string()),
            _ => None,
        })
        .expect("a row")
}

async fn sqlstate(client: &tokio_postgres::Client, sql: &str) -> (String, String) {
    let e = client.batch_execute(sql).await.expect_err(sql);
    let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e}"));
    (db.code().code().to_string(), db.message().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_errors_pinning_hints_and_ddl() {
    let s = setup("shrules", MAP).await;
    let client = connect(s.usher.port, "app", s.db).await.unwrap();
    // Two families on different shards.
    let a = Uuid::new(1, 3);
    let b = (2..100)
        .map(|i| Uuid::new(i, 3))
        .find(|u| shard_of(&s.config, None, &u.text()) != shard_of(&s.config, None, &a.text()))
        .unwrap();
    for (f, name) in [(a, "A"), (b, "B")] {
        let (f, c1, c2) = (
            f.text(),
            Uuid::new(100, f.0[15] as u64).text(),
            Uuid::new(101, f.0[15] as u64).text(),
        );
        client.batch_execute(&format!(
            "BEGIN; \
             INSERT INTO families (id, name) VALUES ('{f}', '{name}'); \
             INSERT INTO children (id, family_id, name, grade) VALUES ('{c1}', '{f}', '{name}1', 3), ('{c2}', '{f}', '{name}2', 4); \
             INSERT INTO user_progress (family_id, child_id, lesson_id, status, score, completed_at) \
               VALUES ('{f}', '{c1}', 1, 'completed', 90, now()), ('{f}', '{c2}', 2, 'in_progress', NULL, NULL); \
             COMMIT"
        )).await.unwrap();
    }
    // Joins on the key, with the global lessons table.
    let rows = client
        .query(
            "SELECT c.name, l.title, p.status FROM children c \
         JOIN user_progress p ON p.family_id = c.family_id AND p.child_id = c.id \
         JOIN lessons l ON l.id = p.lesson_id \
         WHERE c.family_id = $1 AND c.deleted_at IS NULL ORDER BY c.name",
            &[&a],
        )
        .await
        .unwrap();
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(names, vec!["A1", "A2"]);
    let lessons: i64 = client
        .query_one("SELECT count(*) FROM lessons WHERE active", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(lessons, 208);
    // Reads without one shard run on every shard (tests/cross_shard.rs compares them with
    // one database holding every row).
    let (at, bt) = (a.text(), b.text());
    for sql in [
        "SELECT * FROM children".to_string(),
        format!("SELECT * FROM children WHERE family_id IN ('{at}', '{bt}')"),
    ] {
        assert_eq!(client.query(&sql, &[]).await.unwrap().len(), 4, "{sql}");
    }
    // Every refusal, with its SQLSTATE and the table named.
    for (sql, code, words) in [
        ("SELECT DISTINCT ON (grade) grade, id FROM children ORDER BY grade, id".to_string(), "0A000", "DISTINCT"),
        (format!("INSERT INTO families (id, name) VALUES ('{at}', 'x'), ('{bt}', 'y')"), "0A000", "different shards"),
        (format!("UPDATE children SET family_id = '{bt}' WHERE family_id = '{at}'"), "0A000", "different shards"),
        ("UPDATE children SET family_id = gen_random_uuid() WHERE id = '00000000-0000-0000-0000-000000000000' AND family_id = '00000000-0000-0000-0000-000000000000'".to_string(), "0A000", "literal or a parameter"),
        ("INSERT INTO lessons (id, title, subject, grade) VALUES (999, 't', 's', 1)".to_string(), "0A000", "global table"),
        ("INSERT INTO families VALUES (gen_random_uuid(), 'x')".to_string(), "0A000", "literal or a parameter"),
        ("SELECT * FROM families WHERE id = 'not-a-uuid'".to_string(), "22P02", "not a valid uuid"),
        ("/* usher: shard=9 */ SELECT 1".to_string(), "22023", "shard 9 does not exist"),
    ] {
        let (got, message) = sqlstate(&client, &sql).await;
        assert_eq!(got, code, "{sql}: {message}");
        assert!(message.contains(words), "{sql}: {message}");
    }
    // A transaction starts on its first key's shard; another shard's key widens it across
    // shards (tests/cross_shard_txn.rs), and without two_phase_commit a second shard's
    // write is refused and aborts it.
    client.batch_execute("BEGIN").await.unwrap();
    client
        .query("SELECT * FROM families WHERE id = $1", &[&a])
        .await
        .unwrap();
    client
        .query(
            "SELECT * FROM children WHERE id = $1",
            &[&Uuid::new(100, a.0[15] as u64)],
        )
        .await
        .unwrap();
    let other = client
        .query("SELECT * FROM families WHERE id = $1", &[&b])
        .await
        .unwrap();
    assert_eq!(other.len(), 1);
    client
        .execute("UPDATE families SET name = name WHERE id = $1", &[&a])
        .await
        .unwrap();
    let e = client
        .execute("UPDATE families SET name = name WHERE id = $1", &[&b])
        .await
        .unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "0A000", "{e}");
    assert!(
        e.as_db_error()
            .unwrap()
            .message()
            .contains("two_phase_commit"),
        "{e:?}"
    );
    let (code, _) = sqlstate(&client, "SELECT 1").await;
    assert_eq!(code, "25P02", "aborted like Postgres");
    client.batch_execute("ROLLBACK").await.unwrap();
    // At REPEATABLE READ each shard's snapshot would not be one database's: refused.
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    client
        .query("SELECT * FROM families WHERE id = $1", &[&a])
        .await
        .unwrap();
    let e = client
        .query("SELECT * FROM families WHERE id = $1", &[&b])
        .await
        .unwrap_err();
    assert!(
        e.as_db_error()
            .unwrap()
            .message()
            .contains("pinned to shard"),
        "{e:?}"
    );
    client.batch_execute("ROLLBACK").await.unwrap();
    let (code, message) = sqlstate(&client, &format!("BEGIN; SELECT * FROM families WHERE id = '{at}'; SELECT * FROM families WHERE id = '{bt}'; COMMIT")).await;
    assert_eq!(code, "0A000", "{message}");
    client.batch_execute("ROLLBACK").await.ok();
    // A refused first statement leaves the held-back transaction aborted too.
    client.batch_execute("BEGIN").await.unwrap();
    assert_eq!(
        sqlstate(
            &client,
            "SELECT DISTINCT ON (grade) grade, id FROM children ORDER BY grade, id"
        )
        .await
        .0,
        "0A000"
    );
    assert_eq!(sqlstate(&client, "SELECT 1").await.0, "25P02");
    client.batch_execute("ROLLBACK").await.unwrap();
    // Hints and session settings.
    assert_eq!(
        value(&client, "/* usher: shard=2 */ SELECT current_database()").await,
        s.shards[2]
    );
    let want = s.shards[shard_of(&s.config, None, &bt)].clone();
    assert_eq!(
        value(
            &client,
            &format!("SELECT current_database() /* usher: key={bt} */")
        )
        .await,
        want
    );
    client.batch_execute("SET usher.shard = 3").await.unwrap();
    assert_eq!(
        value(&client, "SELECT current_database()").await,
        s.shards[3]
    );
    client
        .batch_execute(&format!("SET usher.sharding_key = '{bt}'"))
        .await
        .unwrap();
    assert_eq!(value(&client, "SELECT count(*) FROM children").await, "2");
    client
        .batch_execute("RESET usher.sharding_key")
        .await
        .unwrap();
    assert_eq!(
        value(&client, "SELECT current_database()").await,
        s.shards[0],
        "default shard"
    );
    // DDL: every shard, or an error naming each shard that failed.
    client
        .batch_execute("CREATE TABLE notes (family_id uuid, body text)")
        .await
        .unwrap();
    for rows in per_shard(
        &s,
        "SELECT count(*) FROM pg_tables WHERE tablename = 'notes'",
    ) {
        assert_eq!(rows, vec!["1".to_string()]);
    }
    topology().primary.psql(&s.shards[1], "DROP TABLE notes");
    let (code, message) = sqlstate(&client, "DROP TABLE notes").await;
    assert_eq!(code, "42P01", "{message}");
    assert!(
        message.contains("shard 1") && message.contains("succeeded on shard(s) 0, 2, 3"),
        "{message}"
    );
    client
        .execute("CREATE TABLE IF NOT EXISTS notes2 (a int)", &[])
        .await
        .unwrap();
    assert_eq!(
        per_shard(
            &s,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'notes2'"
        )
        .concat(),
        vec!["1"; 4]
    );
    let (code, _) = sqlstate(
        &client,
        &format!("BEGIN; SELECT * FROM families WHERE id = '{at}'; CREATE TABLE x (a int)"),
    )
    .await;
    assert_eq!(code, "0A000");
    client.batch_execute("ROLLBACK").await.unwrap();
    // Other clients never noticed any of this.
    let other = connect(s.usher.port, "app", s.db).await.unwrap();
    assert_eq!(
        other
            .query("SELECT * FROM families WHERE id = $1", &[&b])
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_is_idempotent_and_catches_up() {
    let shards = shard_dbs("shmig", 4);
    let config = sharded_config("app", &shards, MAP);
    let first = migrate(&config, "migrations").await.unwrap();
    assert_eq!(
        first.matches("applied 0001_learning_platform.sql").count(),
        4,
        "{first}"
    );
    assert_eq!(
        first.matches("applied 0002_lesson_catalogue.sql").count(),
        4,
        "{first}"
    );
    let again = migrate(&config, "migrations").await.unwrap();
    assert_eq!(
        again.matches("up to date (2 migration(s) applied)").count(),
        4,
        "{again}"
    );
    assert!(!again.contains("applied 0"), "{again}");
    // One shard dropped and recreated: only it catches up.
    let t = topology();
    t.primary.psql(
        "postgres",
        &format!("DROP DATABASE {} WITH (FORCE)", shards[2]),
    );
    t.primary.psql(
        "postgres",
        &format!("CREATE DATABASE {} OWNER app", shards[2]),
    );
    let catch_up = migrate(&config, "migrations").await.unwrap();
    assert_eq!(catch_up.matches("applied 0").count(), 2, "{catch_up}");
    assert!(
        catch_up.contains(&format!("{}): applied 0001", shards[2])),
        "{catch_up}"
    );
    assert_eq!(
        t.primary
            .psql(&shards[2], "SELECT count(*) FROM lessons")
            .trim(),
        "208"
    );
    // A failing file names the shard, the file, the line and the Postgres error, and stops.
    let dir = tempfile::tempdir().unwrap();
    for f in ["0001_learning_platform.sql", "0002_lesson_catalogue.sql"] {
        std::fs::copy(
            format!("{}/migrations/{f}", env!("CARGO_MANIFEST_DIR")),
            dir.path().join(f),
        )
        .unwrap();
    }
    std::fs::write(
        dir.path().join("0003_broken.sql"),
        "ALTER TABLE families ADD COLUMN note text;\n\nALTER TABLE nope ADD COLUMN x int;\n",
    )
    .unwrap();
    let e = migrate(&config, dir.path().to_str().unwrap())
        .await
        .unwrap_err();
    assert!(
        e.contains("shard 0")
            && e.contains("0003_broken.sql")
            && e.contains("42P01")
            && e.contains("line 3"),
        "{e}"
    );
    // The failed file left nothing behind on that shard.
    assert_eq!(t.primary.psql(&shards[0], "SELECT count(*) FROM information_schema.columns WHERE table_name = 'families' AND column_name = 'note'").trim(), "0");
}

/// The bench tables of benches/family.pgbench in the shard map (bigint keys).
const BENCH_TABLES: &str = r#"  { name = "bench_families", column = "id", key_type = "bigint" },
  { name = "bench_progress", column = "family_id", key_type = "bigint" },
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_family_script_over_four_shards() {
    let map = MAP.replace("tables = [\n", &format!("tables = [\n{BENCH_TABLES}"));
    let s = setup("shbench", &map).await;
    let client = connect(s.usher.port, "app", s.db).await.unwrap();
    client
        .batch_execute(include_str!("../benches/family_schema.sql"))
        .await
        .unwrap();
    for id in 1..=10_000i64 {
        client
            .execute(
                "INSERT INTO bench_families (id, name) VALUES ($1, 'f')",
                &[&id],
            )
            .await
            .unwrap();
    }
    let script = format!("{}/benches/family.pgbench", env!("CARGO_MANIFEST_DIR"));
    let mut total = 0;
    for protocol in ["simple", "extended", "prepared"] {
        let out = std::process::Command::new(pg_bin("pgbench"))
            .args([
                "-n",
                "-M",
                protocol,
                "-c",
                "8",
                "-j",
                "2",
                "-t",
                "100",
                "-f",
                &script,
                "-h",
                "127.0.0.1",
                "-p",
                &s.usher.port.to_string(),
                "-U",
                "app",
                "app",
            ])
            .env("PGPASSWORD", PASSWORD)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{protocol}: {text}");
        assert!(
            text.contains("number of failed transactions: 0"),
            "{protocol}: {text}"
        );
        assert!(
            text.contains("number of transactions actually processed: 800/800"),
            "{protocol}: {text}"
        );
        total += 800;
    }
    let mut rows = 0;
    for (shard, keys) in per_shard(&s, "SELECT DISTINCT family_id FROM bench_progress")
        .iter()
        .enumerate()
    {
        for k in keys {
            assert_eq!(
                shard_of(&s.config, Some("bench_progress"), k),
                shard,
                "family {k}"
            );
        }
    }
    for counts in per_shard(&s, "SELECT count(*) FROM bench_progress") {
        rows += counts[0].parse::<usize>().unwrap();
    }
    assert_eq!(rows, total, "one progress row per transaction, none lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_shard_reads_from_its_own_replica() {
    let t = topology();
    let shards = shard_dbs("shsplit", 2);
    let replica = t.replica().port;
    let mut config = sharded_config("app", &shards, MAP).replace(
        "[databases.app]\n",
        "[databases.app]\nread_write_split = true\n",
    );
    for db in &shards {
        let plain = format!("{{ primary = \"127.0.0.1:{}/{db}\" }}", t.primary.port);
        assert!(config.contains(&plain));
        config = config.replace(
            &plain,
            &format!(
                "{{ primary = \"127.0.0.1:{}/{db}\", replicas = [\"127.0.0.1:{replica}/{db}\"] }}",
                t.primary.port
            ),
        );
    }
    migrate(&config, "migrations").await.unwrap();
    let usher = start_usher(&config).await;
    let client = connect(usher.port, "app", "app").await.unwrap();
    let ids: Vec<Uuid> = (0..20).map(|i| Uuid::new(i, 9)).collect();
    for id in &ids {
        client
            .execute("INSERT INTO families (id, name) VALUES ($1, 'r')", &[id])
            .await
            .unwrap();
    }
    t.wait_replicas_caught_up();
    // A fresh client (no read-your-writes constraint) reads each family on its shard's replica.
    let reader = connect(usher.port, "app", "app").await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    for id in &ids {
        let want = &shards[shard_of(&config, None, &id.text())];
        loop {
            let row = reader
                .query_one("SELECT current_database(), pg_is_in_recovery(), count(*) FROM families WHERE id = $1 GROUP BY 1, 2", &[id])
                .await
                .unwrap();
            let (db, replica_read, n): (String, bool, i64) = (row.get(0), row.get(1), row.get(2));
            assert_eq!((&db, n), (want, 1));
            if replica_read {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "reads never reached the replica"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}

/// A transaction whose BEGIN usher holds, whose statement is prepared (Parse/Describe/Sync, a
/// trip to a server that only prepares) and executed (Bind/Execute/Sync) in one write: the
/// execution runs inside the client's transaction on its key's shard, so a ROLLBACK undoes it
/// and a COMMIT keeps it where shard-of says. Before, the execution was forwarded to the
/// preparing server (the default shard) in autocommit, outside the held transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_run_behind_its_prepare_trip_stays_in_the_held_transaction() {
    let s = setup("sidetrip", MAP).await;
    for db in &s.shards {
        topology().primary.psql(
            db,
            "CREATE TABLE items (family_no bigint NOT NULL, n int NOT NULL, how text NOT NULL); \
             GRANT ALL ON items TO trust_user",
        );
    }
    let insert = "INSERT INTO items (family_no, n, how) VALUES ($1, 9, 'side trip')";
    // A key on the preparing server's shard (the default one) and a key elsewhere.
    let on = |zero: bool| {
        (1..100i64)
            .find(|k| (shard_of(&s.config, Some("items"), &k.to_string()) == 0) == zero)
            .unwrap()
    };
    let mut raw = raw_login(s.usher.port, "trust_user", s.db).await;
    for (key, end) in [
        (on(true), "ROLLBACK"),
        (on(false), "ROLLBACK"),
        (on(true), "COMMIT"),
        (on(false), "COMMIT"),
    ] {
        raw.write_all(&frame(b'Q', b"BEGIN\0")).await.unwrap();
        let begun = read_readies(&mut raw, 1).await;
        assert_eq!(begun.last().unwrap().1, b"T");
        let mut out = Vec::new();
        let mut p = vec![0];
        p.extend_from_slice(insert.as_bytes());
        p.extend_from_slice(&[0, 0, 0]);
        out.extend(frame(b'P', &p));
        out.extend(frame(b'D', b"S\0"));
        out.extend(frame(b'S', b""));
        let v = key.to_string();
        let mut b = vec![0, 0, 0, 0, 0, 1];
        b.extend_from_slice(&(v.len() as i32).to_be_bytes());
        b.extend_from_slice(v.as_bytes());
        b.extend_from_slice(&[0, 0]);
        out.extend(frame(b'B', &b));
        out.extend(frame(b'E', &[0, 0, 0, 0, 0]));
        out.extend(frame(b'S', b""));
        raw.write_all(&out).await.unwrap();
        let answers = read_readies(&mut raw, 2).await;
        let errors: Vec<String> = answers
            .iter()
            .filter(|(t, _)| *t == b'E')
            .map(|(_, b)| error_code(b))
            .collect();
        assert!(errors.is_empty(), "{errors:?}");
        let statuses: Vec<&[u8]> = answers
            .iter()
            .filter(|(t, _)| *t == b'Z')
            .map(|(_, b)| b.as_slice())
            .collect();
        assert_eq!(
            statuses,
            [b"T", b"T"],
            "the client's transaction stays open"
        );
        raw.write_all(&frame(b'Q', format!("{end}\0").as_bytes()))
            .await
            .unwrap();
        let ended = read_readies(&mut raw, 1).await;
        assert_eq!(ended.last().unwrap().1, b"I");
        let rows: Vec<usize> = per_shard(&s, "SELECT count(*) FROM items WHERE how = 'side trip'")
            .iter()
            .map(|r| r[0].parse().unwrap())
            .collect();
        let mut want = vec![0; 4];
        if end == "COMMIT" {
            want[shard_of(&s.config, Some("items"), &key.to_string())] = 1;
        }
        assert_eq!(rows, want, "key {key}, after {end}");
        topology().primary.psql(
            &s.shards[want.iter().position(|n| *n > 0).unwrap_or(0)],
            "DELETE FROM items",
        );
    }
}
