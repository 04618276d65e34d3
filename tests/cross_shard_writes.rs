//! Writes across shards, judged against one plain database holding every row: an UPDATE or
//! DELETE without a key (or with keys on several shards) runs on the shards concerned and
//! commits with two-phase commit. Command tags, RETURNING rows, errors and the rows left
//! afterwards must match the plain database's; a failure on one shard leaves every shard
//! unchanged; no prepared transaction is left behind; and recovery finishes what a crash
//! left prepared, by the decision log.

mod common;

use common::learning::*;
use common::sharded::*;
use common::*;

/// The learning platform's shard map, committing across shards.
const MAP: &str = TWO_PHASE_MAP;

/// The row count of a write run on `c` alone.
async fn write_count(c: &tokio_postgres::Client, sql: &str) -> u64 {
    simple(c, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .2
}

/// Runs `sql` through usher and on the plain database: the same answer, rows compared
/// sorted (RETURNING rows come from the shards in any order).
async fn same_write(b: &Both, sql: &str) -> Simple {
    let (mut u, mut p) = (simple(&b.usher, sql).await, simple(&b.plain, sql).await);
    for r in [&mut u, &mut p].into_iter().flatten() {
        r.1.sort();
    }
    assert_eq!(u, p, "{sql}");
    u
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_across_shards_answer_as_one_database() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("2pc.log");
    let b = load("xwrite", "xwplain", MAP, &two_phase_general("w1", &log)).await;
    let families: Vec<(String, usize)> = (0..120)
        .map(|i| {
            let f = family(i);
            let shard = shard_of(&b.s.config, None, &f);
            (f, shard)
        })
        .collect();
    let on = |shard: usize| {
        families
            .iter()
            .filter(|(_, s)| *s == shard)
            .map(|(f, _)| f.clone())
            .collect::<Vec<_>>()
    };
    let (f0, f1, f2) = (on(0)[0].clone(), on(1)[0].clone(), on(2)[0].clone());
    let writes = [
        "UPDATE children SET grade = grade + 1 WHERE grade < 12 AND grade > 9".to_string(),
        format!("UPDATE children SET name = name || ' (moved)' WHERE family_id IN ('{f0}', '{f1}', '{f2}') RETURNING id, name, grade"),
        "DELETE FROM user_progress WHERE status = 'not_started' RETURNING id, family_id".into(),
        "UPDATE user_progress p SET score = 0 FROM lessons l WHERE l.id = p.lesson_id AND l.grade = 1 AND p.score IS NOT NULL".into(),
        "DELETE FROM children WHERE false".into(),
        "UPDATE children SET deleted_at = timestamptz '2026-06-01 00:00:00+00' WHERE birth_date IS NULL".into(),
        "DELETE FROM families WHERE name LIKE 'family 1_' RETURNING name".into(),
    ];
    for sql in &writes {
        let got = same_write(&b, sql).await;
        assert!(got.is_ok(), "{sql}: {got:?}");
    }
    assert_eq!(contents(&b.usher).await, contents(&b.plain).await);
    // now() is one time on every shard, as in one database.
    let tag = write_count(
        &b.usher,
        "UPDATE children SET deleted_at = now() WHERE grade = 0 AND deleted_at IS NULL",
    )
    .await;
    assert!(tag > 1, "rows on several shards");
    let stamps: std::collections::BTreeSet<String> = per_shard(
        &b.s,
        "SELECT DISTINCT deleted_at FROM children WHERE grade = 0 AND deleted_at > '2026-07-01'",
    )
    .into_iter()
    .flatten()
    .collect();
    assert_eq!(stamps.len(), 1, "{stamps:?}");
    let at = stamps.into_iter().next().unwrap();
    b.plain
        .batch_execute(&format!(
            "UPDATE children SET deleted_at = '{at}' WHERE grade = 0 AND deleted_at IS NULL"
        ))
        .await
        .unwrap();
    assert_eq!(contents(&b.usher).await, contents(&b.plain).await);
    // Multi-row INSERTs split by key: RETURNING rows in VALUES order, one created_at for all.
    let new: Vec<String> = (200..208).map(family).collect();
    assert!(
        new.iter()
            .map(|f| shard_of(&b.s.config, None, f))
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            > 1
    );
    let rows: Vec<String> = new
        .iter()
        .enumerate()
        .map(|(i, f)| format!("('{f}', 'new {i}')"))
        .collect();
    let insert = format!(
        "INSERT INTO families (id, name) VALUES {} RETURNING name, id",
        rows.join(", ")
    );
    let (u, p) = (
        simple(&b.usher, &insert).await,
        simple(&b.plain, &insert).await,
    );
    assert_eq!(u, p, "{insert}");
    let stamps: std::collections::BTreeSet<String> = per_shard(
        &b.s,
        "SELECT DISTINCT created_at FROM families WHERE name LIKE 'new %'",
    )
    .into_iter()
    .flatten()
    .collect();
    assert_eq!(stamps.len(), 1, "one transaction time: {stamps:?}");
    let kids: Vec<String> = new
        .iter()
        .enumerate()
        .map(|(i, f)| {
            format!(
                "('{}', '{f}', 'kid {i}', {})",
                child(200 + i as u32, 0),
                i % 12
            )
        })
        .collect();
    same_write(
        &b,
        &format!(
            "INSERT INTO children (id, family_id, name, grade) VALUES {}",
            kids.join(", ")
        ),
    )
    .await
    .unwrap();
    // The same through the extended protocol, binary results, parameters of every shard.
    let more: Vec<String> = (300..306).map(family).collect();
    let params: Vec<String> = (0..more.len())
        .map(|i| format!("(${}::text::uuid, ${})", 2 * i + 1, 2 * i + 2))
        .collect();
    let sql = format!(
        "INSERT INTO families (id, name) VALUES {} RETURNING id, name",
        params.join(", ")
    );
    let names: Vec<String> = (0..more.len()).map(|i| format!("more {i}")).collect();
    let mut values: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::new();
    for (f, n) in more.iter().zip(&names) {
        values.push(f);
        values.push(n);
    }
    let (u, p) = (
        extended(&b.usher, &sql, &values).await,
        extended(&b.plain, &sql, &values).await,
    );
    assert_eq!(u, p, "{sql}");
    assert_eq!(u.unwrap().1.len(), more.len());
    assert_eq!(contents(&b.usher).await, contents(&b.plain).await);
    // Rows that ON CONFLICT DO NOTHING skips would leave RETURNING out of order: refused,
    // and nothing of it stays.
    let conflict = format!(
        "INSERT INTO families (id, name) VALUES ('{}', 'again'), ('{}', 'fresh') ON CONFLICT (id) DO NOTHING RETURNING id",
        new[0],
        family(400)
    );
    let e = b.usher.simple_query(&conflict).await.unwrap_err();
    assert_eq!(code(&e), "0A000", "{e:?}");
    assert_eq!(contents(&b.usher).await, contents(&b.plain).await);
    let e = b
        .usher
        .simple_query(&format!(
            "INSERT INTO families (id, name) VALUES ('{}', 'a'), ('{}', DEFAULT)",
            family(401),
            family(402)
        ))
        .await
        .unwrap_err();
    assert!(
        e.as_db_error()
            .unwrap()
            .message()
            .contains("DEFAULT in a VALUES row"),
        "{e:?}"
    );
    // Global tables: every copy changes alike, with one clock, and the client sees one.
    for sql in [
        "INSERT INTO lessons (id, title, subject, grade) VALUES (900, 'Poetry 1', 'Reading', 3), (901, 'Poetry 2', 'Reading', 4) RETURNING id, title",
        "UPDATE lessons SET active = false WHERE id >= 900 RETURNING id, active",
        "DELETE FROM lessons WHERE id = 901 RETURNING title",
        "UPDATE lessons SET title = title || '!' WHERE grade = 12",
    ] {
        assert!(same_write(&b, sql).await.is_ok(), "{sql}");
    }
    let copies = per_shard(&b.s, // The catalogue `usher migrate` loaded got each shard's own now(); rows written
        // through usher get one.
        "SELECT id, title, active, CASE WHEN id >= 900 THEN created_at END FROM lessons WHERE id >= 900 OR grade = 12 ORDER BY id");
    assert!(
        copies.iter().all(|c| *c == copies[0]) && copies[0].len() > 1,
        "{copies:?}"
    );
    let all = "SELECT id, title, subject, grade, active FROM lessons ORDER BY id";
    assert_eq!(simple(&b.usher, all).await, simple(&b.plain, all).await);
    // Copies that differ are caught, and nothing changes.
    topology().primary.psql(
        &b.s.shards[2],
        "INSERT INTO lessons (id, title, subject, grade) VALUES (950, 'stray', 'x', 1)",
    );
    let e = b
        .usher
        .simple_query("DELETE FROM lessons WHERE id = 950")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "XX000", "{e:?}");
    assert_eq!(
        per_shard(&b.s, "SELECT count(*) FROM lessons WHERE id = 950")[2],
        vec!["1".to_string()]
    );
    topology()
        .primary
        .psql(&b.s.shards[2], "DELETE FROM lessons WHERE id = 950");
    // The extended protocol: parameters, a row count, RETURNING rows in binary.
    let update = "UPDATE children SET grade = $1 WHERE grade = $2";
    let (u, p) = (
        b.usher.execute(update, &[&5i16, &6i16]).await.unwrap(),
        b.plain.execute(update, &[&5i16, &6i16]).await.unwrap(),
    );
    assert_eq!(u, p);
    assert!(u > 1, "rows on several shards: {u}");
    let returning = "DELETE FROM user_progress WHERE score < $1 RETURNING id, score";
    let (mut u, mut p) = (
        extended(&b.usher, returning, &[&Numeric(3)]).await,
        extended(&b.plain, returning, &[&Numeric(3)]).await,
    );
    for r in [&mut u, &mut p].into_iter().flatten() {
        r.1.sort();
    }
    assert_eq!(u, p, "{returning}");
    // An error on some shards: the same SQLSTATE, and no shard keeps its part.
    let (full, other) = (on(0)[1].clone(), on(3)[0].clone());
    let set = format!("UPDATE children SET grade = 12 WHERE family_id = '{full}'");
    assert!(same_write(&b, &set).await.is_ok(), "{set}");
    let failing = format!(
        "UPDATE children SET grade = grade + 1, name = 'changed' WHERE family_id IN ('{full}', '{other}')"
    );
    assert_eq!(same_write(&b, &failing).await.unwrap_err(), "23514");
    assert_eq!(
        same_write(&b, "UPDATE children SET grade = 100 / (grade - grade)")
            .await
            .unwrap_err(),
        "22012"
    );
    assert_eq!(contents(&b.usher).await, contents(&b.plain).await);
    // Concurrent writes across shards neither deadlock nor lose updates.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let c = connect(b.s.usher.port, "app", b.s.db).await.unwrap();
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                c.batch_execute("UPDATE children SET grade = (grade + 1) % 13")
                    .await
                    .unwrap();
            }
        }));
    }
    tokio::time::timeout(std::time::Duration::from_secs(120), async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await
    .expect("concurrent writes across shards finish");
    for _ in 0..20 {
        b.plain
            .batch_execute("UPDATE children SET grade = (grade + 1) % 13")
            .await
            .unwrap();
    }
    assert_eq!(contents(&b.usher).await, contents(&b.plain).await);
    assert_eq!(prepared_left(&b.s), Vec::<String>::new());
    // Every decision was logged and marked done.
    let text = std::fs::read_to_string(&log).unwrap();
    let commits = text.lines().filter(|l| l.starts_with("commit ")).count();
    let done = text.lines().filter(|l| l.starts_with("done ")).count();
    assert!(commits >= writes.len(), "{text}");
    assert_eq!(commits, done, "{text}");
    // The metrics count them.
    let (_, metrics) = http_get(b.s.usher.metrics_port, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("outcome=\"fanout_write\"") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

/// A small integer sent as a numeric parameter in binary (tokio-postgres has no numeric
/// type of its own; the wire format is ndigits, weight, sign, dscale, base-10000 digits).
#[derive(Debug)]
struct Numeric(i32);

impl tokio_postgres::types::ToSql for Numeric {
    fn to_sql(
        &self,
        _: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use bytes::BufMut;
        assert!((0..10000).contains(&self.0));
        out.put_i16(1);
        out.put_i16(0);
        out.put_u16(0);
        out.put_i16(0);
        out.put_i16(self.0 as i16);
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        *ty == tokio_postgres::types::Type::NUMERIC
    }

    tokio_postgres::types::to_sql_checked!();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_that_cannot_run_exactly_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("2pc.log");
    let s = setup_with("xwref", MAP, &two_phase_general("w2", &log)).await;
    let c = connect(s.usher.port, "app", s.db).await.unwrap();
    let (a, bb) = (family(1), family(2));
    for (sql, named) in [
        (
            "UPDATE children SET grade = nextval('s')".to_string(),
            "nextval()",
        ),
        (
            "DELETE FROM children WHERE id IN (SELECT child_id FROM user_progress)".into(),
            "subqueries",
        ),
        (
            format!("UPDATE children SET family_id = '{bb}' WHERE family_id IN ('{a}', '{bb}')"),
            "sharding key family_id",
        ),
        (
            "WITH gone AS (SELECT 1) DELETE FROM families".into(),
            "WITH",
        ),
        (
            "UPDATE lessons l SET active = true FROM children c WHERE c.grade = l.grade".into(),
            "\"children\", which is not global",
        ),
        (
            "INSERT INTO lessons (id, title, subject, grade) VALUES (902, md5(random()::text), 'x', 1)".into(),
            "random()",
        ),
    ] {
        let e = c.batch_execute(&sql).await.unwrap_err();
        assert_eq!(code(&e), "0A000", "{sql}");
        let text = e.as_db_error().unwrap().message().to_string();
        assert!(text.contains(named), "{sql}: {text}");
    }
    // Inside a transaction block a write without a key runs on every shard, inside the
    // transaction (tests/cross_shard_txn.rs), and goes with its ROLLBACK.
    for (f, kid) in [(&a, child(1, 0)), (&bb, child(2, 0))] {
        c.batch_execute(&format!("INSERT INTO families (id, name) VALUES ('{f}', 'f'); INSERT INTO children (id, family_id, name, grade) VALUES ('{kid}', '{f}', 'k', 5)")).await.unwrap();
    }
    let before = per_shard(&s, "SELECT id, grade FROM children ORDER BY id");
    assert!(before.iter().filter(|rows| !rows.is_empty()).count() >= 1);
    c.batch_execute("BEGIN").await.unwrap();
    let n = c
        .execute("UPDATE children SET grade = 1", &[])
        .await
        .unwrap();
    let total: usize = before.iter().map(Vec::len).sum();
    assert_eq!((n as usize, total), (2, 2));
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        per_shard(&s, "SELECT id, grade FROM children ORDER BY id"),
        before
    );
    c.batch_execute("UPDATE children SET grade = 1")
        .await
        .unwrap();
    // Without two_phase_commit the same write is refused, naming the setting.
    let off = start_usher(&s.config.replace("two_phase_commit = true", "")).await;
    let c = connect(off.port, "app", s.db).await.unwrap();
    let e = c
        .batch_execute("UPDATE children SET grade = 1")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "0A000");
    assert!(
        e.as_db_error()
            .unwrap()
            .message()
            .contains("two_phase_commit"),
        "{e:?}"
    );
    let e = c
        .batch_execute("UPDATE lessons SET title = 'x'")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "0A000");
    let text = e.as_db_error().unwrap().message().to_string();
    assert!(
        text.contains("global table") && text.contains("two_phase_commit"),
        "{text}"
    );
    assert_eq!(prepared_left(&s), Vec::<String>::new());
}

/// Prepares, directly on shard database `db` as the app user, a transaction that renames
/// child `id`'s family rows, under global id `gid`.
async fn leave_prepared(db: &str, gid: &str, family: &str, name: &str) {
    let c = connect(topology().primary.port, "app", db).await.unwrap();
    c.batch_execute(&format!(
        "BEGIN; INSERT INTO families (id, name) VALUES ('{family}', '{name}'); PREPARE TRANSACTION '{gid}'"
    ))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_commits_what_the_log_decided_and_rolls_back_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("2pc.log");
    let shards = shard_dbs("xwrec", 4);
    let config = sharded_config("app", &shards, MAP).replacen(
        "listen = \"127.0.0.1:0\"\n",
        &format!(
            "listen = \"127.0.0.1:0\"\n{}\n",
            two_phase_general("w3", &log)
        ),
        1,
    );
    migrate(&config, "migrations").await.unwrap();
    let f = |i: u32| family(1000 + i);
    // A crash after the decision: two parts prepared, the commit logged.
    leave_prepared(&shards[0], "usher:w3:aa-1:0", &f(1), "decided").await;
    leave_prepared(&shards[2], "usher:w3:aa-1:2", &f(2), "decided").await;
    // A crash before it: one part prepared, nothing logged.
    leave_prepared(&shards[1], "usher:w3:aa-2:1", &f(3), "undecided").await;
    // Another usher's part: not this one's to touch.
    leave_prepared(&shards[3], "usher:other:aa-1:3", &f(4), "other").await;
    std::fs::write(&log, "commit aa-0\ndone aa-0\ncommit aa-1\n").unwrap();
    // `usher recover` leaves parts younger than --older-than alone.
    let bin = env!("CARGO_BIN_EXE_usher");
    let config_file = dir.path().join("usher.toml");
    std::fs::write(&config_file, &config).unwrap();
    let out = std::process::Command::new(bin)
        .args(["recover", "--older-than", "3600", "--config"])
        .arg(&config_file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("0 committed, 0 rolled back, 3 left"),
        "{stdout}"
    );
    // A starting usher finishes them.
    let usher = start_usher(&config).await;
    let s = Sharded {
        usher,
        db: "app",
        shards: shards.clone(),
        config: config.clone(),
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while prepared_left(&s).len() > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            prepared_left(&s)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(prepared_left(&s), vec!["usher:other:aa-1:3".to_string()]);
    let c = connect(s.usher.port, "app", s.db).await.unwrap();
    let mut names = simple(&c, "SELECT name FROM families").await.unwrap().1;
    names.sort();
    assert_eq!(
        names,
        vec![
            vec![Some("decided".to_string())],
            vec![Some("decided".to_string())]
        ]
    );
    // The settled decisions left the log.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read_to_string(&log).unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // `usher recover` with nothing of its own left: success, and the other usher's part
    // stays.
    let out = std::process::Command::new(bin)
        .args(["recover", "--older-than", "0", "--config"])
        .arg(&config_file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("0 committed, 0 rolled back, 0 left"),
        "{stdout}"
    );
    topology()
        .primary
        .psql(&shards[3], "ROLLBACK PREPARED 'usher:other:aa-1:3'");
}

/// `usher check` asks the shards of a two-phase database whether they take prepared
/// transactions: silent when they do, a warning naming the shard when one cannot be asked,
/// and the file is valid either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usher_check_asks_two_phase_shards_for_prepared_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("2pc.log");
    let s = setup_with("xwcheck", MAP, &two_phase_general("w3", &log)).await;
    let check = |config: &str| {
        let file = dir.path().join("check.toml");
        std::fs::write(&file, config).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_usher"))
            .args(["check", "--config", file.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = check(&s.config);
    assert!(!out.contains("warning"), "{out}");
    // A shard nobody listens on: named, with the reason.
    let port = topology().primary.port;
    let dead = s
        .config
        .replacen(&format!("127.0.0.1:{port}/"), "127.0.0.1:1/", 1);
    assert_ne!(
        dead, s.config,
        "the config names the primary by its address"
    );
    let out = check(&dead);
    assert!(
        out.contains("warning: databases.app shard 0 (127.0.0.1:1/")
            && out.contains("could not check max_prepared_transactions"),
        "{out}"
    );
}

/// An INSERT without a column list into a sharded table finds the key's place in the
/// table from the catalog (looked up once, forgotten after DDL through usher) and runs on
/// the row's shard, in both protocols; one that needs several shards, or writes a global
/// table, is refused naming the missing column list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_without_a_column_list_find_the_key_in_the_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("2pc.log");
    let map = MAP.replace(
        "tables = [\n",
        "tables = [\n  { name = \"notes\", column = \"family_id\" },\n",
    );
    let s = setup_with("xwcols", &map, &two_phase_general("w4", &log)).await;
    let c = connect(s.usher.port, "app", s.db).await.unwrap();
    c.batch_execute("CREATE TABLE notes (a int, family_id uuid NOT NULL, body text)")
        .await
        .unwrap();
    let on_shard = |sql: &str| -> Vec<usize> {
        per_shard(&s, sql)
            .iter()
            .map(|rows| rows.first().map_or(0, |n| n.trim().parse().unwrap()))
            .collect()
    };
    let mut want = vec![0usize; s.shards.len()];
    for i in 300..312u32 {
        let f = family(i);
        c.batch_execute(&format!("INSERT INTO notes VALUES ({i}, '{f}', 'simple')"))
            .await
            .unwrap();
        c.execute(
            "INSERT INTO notes VALUES ($1::int4, $2::text::uuid, 'bound')",
            &[&(i as i32), &f],
        )
        .await
        .unwrap();
        want[shard_of(&s.config, Some("notes"), &f)] += 2;
    }
    assert_eq!(on_shard("SELECT count(*) FROM notes"), want);
    // DDL through usher moves the key: it is looked up again.
    c.batch_execute("ALTER TABLE notes DROP COLUMN a")
        .await
        .unwrap();
    let f = family(400);
    c.batch_execute(&format!("INSERT INTO notes VALUES ('{f}', 'after ddl')"))
        .await
        .unwrap();
    want[shard_of(&s.config, Some("notes"), &f)] += 1;
    assert_eq!(on_shard("SELECT count(*) FROM notes"), want);
    // Across shards, or into a global table: refused, named.
    let (a, b) = (family(1), family(2));
    assert_ne!(
        shard_of(&s.config, Some("notes"), &a),
        shard_of(&s.config, Some("notes"), &b)
    );
    for sql in [
        format!("INSERT INTO notes VALUES ('{a}', 'x'), ('{b}', 'y')"),
        "INSERT INTO lessons VALUES (9001, 't', 's', 3)".into(),
    ] {
        let e = c.batch_execute(&sql).await.unwrap_err();
        assert_eq!(code(&e), "0A000", "{sql}: {e}");
        let text = e.as_db_error().unwrap().message().to_string();
        assert!(text.contains("without a column list"), "{sql}: {text}");
    }
    assert_eq!(on_shard("SELECT count(*) FROM notes"), want);
}
