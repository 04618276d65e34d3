//! Transaction blocks that span shards (`BEGIN`, statements for two families, `COMMIT`),
//! judged against one plain database running the same statements: every answer (rows, tags,
//! errors) the same, the rows left afterwards the same, all or nothing on every shard, its
//! own writes visible to its reads on every shard, and no prepared transaction left behind.

mod common;

use common::learning::*;
use common::sharded::*;
use common::{connect, raw_login, topology};

/// Runs each statement through usher and on the plain database, one simple Query each:
/// the same answers (rows sorted where the statement does not order them).
async fn same_steps(b: &Both, steps: &[&str]) -> Vec<Simple> {
    let mut answers = Vec::new();
    for sql in steps {
        let (mut u, mut p) = (simple(&b.usher, sql).await, simple(&b.plain, sql).await);
        if !sql.contains("ORDER BY") {
            for r in [&mut u, &mut p].into_iter().flatten() {
                r.1.sort();
            }
        }
        assert_eq!(u, p, "{sql}");
        answers.push(u);
    }
    answers
}

/// Families on shards 0, 1 and 2.
fn three_families(config: &str) -> (String, String, String) {
    let on = |shard: usize| {
        (0..120)
            .map(family)
            .find(|f| shard_of(config, None, f) == shard)
            .unwrap()
    };
    (on(0), on(1), on(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_across_shards_answers_as_one_database() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("2pc.log");
    let b = load(
        "xtxn",
        "xtplain",
        TWO_PHASE_MAP,
        &two_phase_general("t1", &log),
    )
    .await;
    let (f0, f1, f2) = three_families(&b.s.config);
    // Commit: writes on three shards, reads by key and without one see them.
    let steps = [
        "BEGIN".to_string(),
        format!("UPDATE children SET grade = grade + 1 WHERE family_id = '{f0}' RETURNING name, grade"),
        format!("UPDATE children SET name = name || ' (moved)' WHERE family_id = '{f1}'"),
        format!("SELECT name, grade FROM children WHERE family_id = '{f0}' ORDER BY name"),
        "SELECT count(*), sum(grade) FROM children WHERE name LIKE '%(moved)'".to_string(),
        format!("INSERT INTO children (id, family_id, name, grade) VALUES ('00000000-0000-4000-b000-000000000001', '{f2}', 'new', 3)"),
        "SELECT id, name FROM children WHERE grade = 3 ORDER BY id LIMIT 5".to_string(),
        "UPDATE children SET deleted_at = timestamptz '2026-06-01 00:00:00+00' WHERE grade = 12".to_string(),
        "BEGIN".to_string(),
        "COMMIT".to_string(),
    ];
    let steps: Vec<&str> = steps.iter().map(String::as_str).collect();
    same_steps(&b, &steps).await;
    assert_eq!(contents(&b.usher).await, contents(&b.plain).await);
    assert!(prepared_left(&b.s).is_empty());

    // Rollback: nothing of it stays, on any shard.
    let before = contents(&b.usher).await;
    let steps = [
        "BEGIN".to_string(),
        format!("DELETE FROM user_progress WHERE family_id = '{f2}'"),
        format!("UPDATE children SET grade = 0 WHERE family_id = '{f0}'"),
        "DELETE FROM user_progress WHERE status = 'completed'".to_string(),
        "SELECT count(*) FROM user_progress".to_string(),
        "ROLLBACK".to_string(),
    ];
    let steps: Vec<&str> = steps.iter().map(String::as_str).collect();
    same_steps(&b, &steps).await;
    assert_eq!(contents(&b.usher).await, before);

    // An error on one shard aborts the whole transaction: 25P02 until its end, COMMIT
    // answers ROLLBACK, and no shard keeps anything.
    let steps = [
        "BEGIN".to_string(),
        format!("UPDATE children SET grade = 5 WHERE family_id = '{f0}'"),
        format!("UPDATE children SET grade = 99 WHERE family_id = '{f1}'"),
        format!("SELECT count(*) FROM children WHERE family_id = '{f0}'"),
        "COMMIT".to_string(),
    ];
    let steps: Vec<&str> = steps.iter().map(String::as_str).collect();
    let answers = same_steps(&b, &steps).await;
    assert_eq!(answers[2].as_ref().unwrap_err(), "23514");
    assert_eq!(answers[3].as_ref().unwrap_err(), "25P02");
    assert_eq!(contents(&b.usher).await, before);
    assert!(prepared_left(&b.s).is_empty());

    // The extended protocol (tokio-postgres prepares, binds binary parameters, and runs
    // everything inside its transaction).
    let mut seen = Vec::new();
    for client in [&b.usher, &b.plain] {
        client.batch_execute("BEGIN").await.unwrap();
        let moved = client
            .execute(
                "UPDATE children SET grade = grade + $1 WHERE family_id = $2::text::uuid",
                &[&1i16, &f1],
            )
            .await
            .unwrap();
        let moved2 = client
            .execute(
                "UPDATE children SET grade = grade + $1 WHERE family_id = $2::text::uuid",
                &[&1i16, &f2],
            )
            .await
            .unwrap();
        let total: i64 = client
            .query_one("SELECT count(*) FROM children WHERE grade > $1", &[&4i16])
            .await
            .unwrap()
            .get(0);
        client.batch_execute("COMMIT").await.unwrap();
        seen.push((moved, moved2, total));
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(contents(&b.usher).await, contents(&b.plain).await);
    assert!(prepared_left(&b.s).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_transactions_across_shards_match_one_database() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("2pc.log");
    let mut b = load(
        "xtxe",
        "xteplain",
        TWO_PHASE_MAP,
        &two_phase_general("t2", &log),
    )
    .await;
    let (f0, f1, _) = three_families(&b.s.config);
    let mut answers = Vec::new();
    for client in [&mut b.usher, &mut b.plain] {
        let tx = client.transaction().await.unwrap();
        let stmt = tx
            .prepare("UPDATE children SET grade = grade + $1 WHERE family_id = $2::text::uuid RETURNING name")
            .await
            .unwrap();
        let mut a: Vec<String> = Vec::new();
        for f in [&f0, &f1] {
            for row in tx.query(&stmt, &[&2i16, f]).await.unwrap() {
                a.push(row.get(0));
            }
        }
        let n: i64 = tx
            .query_one("SELECT count(*) FROM children WHERE grade >= $1", &[&2i16])
            .await
            .unwrap()
            .get(0);
        a.push(n.to_string());
        let names: Vec<String> = tx
            .query(
                "SELECT name, id FROM children WHERE family_id IN ($1::text::uuid, $2::text::uuid) ORDER BY id",
                &[&f0, &f1],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        a.extend(names);
        tx.commit().await.unwrap();
        answers.push(a);
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(contents(&b.usher).await, contents(&b.plain).await);
    assert!(prepared_left(&b.s).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_span_shards_is_refused_and_aborts_the_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("2pc.log");
    let b = load(
        "xtxr",
        "xtrplain",
        TWO_PHASE_MAP,
        &two_phase_general("t3", &log),
    )
    .await;
    let (f0, f1, _) = three_families(&b.s.config);
    let before = contents(&b.usher).await;
    // A statement that would change one shard's part only.
    for refused in [
        "SET LOCAL statement_timeout = '5s'",
        "SAVEPOINT a",
        "LOCK children",
    ] {
        b.usher.batch_execute("BEGIN").await.unwrap();
        b.usher
            .batch_execute(&format!(
                "UPDATE children SET grade = 1 WHERE family_id = '{f0}'"
            ))
            .await
            .unwrap();
        b.usher
            .batch_execute(&format!(
                "UPDATE children SET grade = 1 WHERE family_id = '{f1}'"
            ))
            .await
            .unwrap();
        let e = b.usher.batch_execute(refused).await.unwrap_err();
        assert_eq!(code(&e), "0A000", "{refused}: {e}");
        let e = b.usher.batch_execute("SELECT 1").await.unwrap_err();
        assert_eq!(code(&e), "25P02");
        let end = simple(&b.usher, "COMMIT").await.unwrap();
        assert_eq!(end.2, 0);
        assert_eq!(contents(&b.usher).await, before);
    }
    // REPEATABLE READ: every shard's own snapshot is not one database's.
    b.usher
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    b.usher
        .batch_execute(&format!("SELECT * FROM children WHERE family_id = '{f0}'"))
        .await
        .unwrap();
    let e = b
        .usher
        .batch_execute(&format!("SELECT * FROM children WHERE family_id = '{f1}'"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "0A000", "{e}");
    b.usher.batch_execute("ROLLBACK").await.unwrap();
    assert!(prepared_left(&b.s).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_two_phase_commit_a_transaction_reads_across_shards_and_writes_on_one() {
    let map = TWO_PHASE_MAP.replace("two_phase_commit = true", "two_phase_commit = false");
    let b = load("xtxn1", "xt1plain", &map, "").await;
    let (f0, f1, _) = three_families(&b.s.config);
    let steps = [
        "BEGIN".to_string(),
        format!("UPDATE children SET grade = 2 WHERE family_id = '{f0}'"),
        format!("SELECT name FROM children WHERE family_id = '{f1}' ORDER BY name"),
        "SELECT count(*) FROM children WHERE grade = 2".to_string(),
        "COMMIT".to_string(),
    ];
    let steps: Vec<&str> = steps.iter().map(String::as_str).collect();
    same_steps(&b, &steps).await;
    assert_eq!(contents(&b.usher).await, contents(&b.plain).await);
    b.usher.batch_execute("BEGIN").await.unwrap();
    b.usher
        .batch_execute(&format!(
            "UPDATE children SET grade = 3 WHERE family_id = '{f0}'"
        ))
        .await
        .unwrap();
    let e = b
        .usher
        .batch_execute(&format!(
            "UPDATE children SET grade = 3 WHERE family_id = '{f1}'"
        ))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "0A000", "{e}");
    b.usher.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(contents(&b.usher).await, contents(&b.plain).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clock_and_a_keyless_first_statement() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("2pc.log");
    let b = load(
        "xtxc",
        "xtcplain",
        TWO_PHASE_MAP,
        &two_phase_general("t4", &log),
    )
    .await;
    let (f0, f1, f2) = three_families(&b.s.config);
    // A transaction whose first statement needs every shard starts across shards at once.
    let steps = [
        "BEGIN".to_string(),
        "SELECT count(*), min(grade), max(grade) FROM children".to_string(),
        format!("UPDATE children SET grade = 0 WHERE family_id = '{f0}'"),
        format!("DELETE FROM user_progress WHERE family_id = '{f1}'"),
        "SELECT count(*) FROM user_progress".to_string(),
        "COMMIT".to_string(),
    ];
    let steps: Vec<&str> = steps.iter().map(String::as_str).collect();
    same_steps(&b, &steps).await;
    assert_eq!(contents(&b.usher).await, contents(&b.plain).await);
    // now() is the transaction's start on every shard, as in one database, also for the
    // clock defaults of the rows it inserts.
    let c = &b.usher;
    c.batch_execute("BEGIN").await.unwrap();
    let first = simple(
        c,
        &format!("SELECT now()::text FROM families WHERE id = '{f0}'"),
    )
    .await
    .unwrap();
    let other = simple(
        c,
        &format!("SELECT now()::text FROM families WHERE id = '{f2}'"),
    )
    .await
    .unwrap();
    c.batch_execute(&format!("INSERT INTO families (id, name) VALUES ('00000000-0000-4000-9000-000000000001', 'x'); UPDATE families SET name = 'y' WHERE id = '{f1}'"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(first.1, other.1);
    let stored = simple(
        c,
        "SELECT created_at::text FROM families WHERE id = '00000000-0000-4000-9000-000000000001'",
    )
    .await
    .unwrap();
    assert_eq!(stored.1, first.1);
    assert!(prepared_left(&b.s).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadlock_across_shards_ends_in_one_transaction_and_the_other_commits() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("2pc.log");
    let map = format!("{TWO_PHASE_MAP}two_phase_lock_timeout = \"300ms\"\n");
    let b = load("xtxl", "xtlplain", &map, &two_phase_general("t5", &log)).await;
    let (f0, f1, _) = three_families(&b.s.config);
    let a = connect(b.s.usher.port, "app", b.s.db).await.unwrap();
    let other = connect(b.s.usher.port, "app", b.s.db).await.unwrap();
    // A holds f0's row on one shard, B f1's on another; each then wants the other's: a
    // cycle no shard sees.
    for (c, f) in [(&a, &f0), (&other, &f1)] {
        c.batch_execute("BEGIN").await.unwrap();
        c.batch_execute(&format!(
            "UPDATE families SET name = 'mine' WHERE id = '{f}'"
        ))
        .await
        .unwrap();
    }
    let a = std::sync::Arc::new(a);
    let waiter = {
        let (a, f1) = (a.clone(), f1.clone());
        tokio::spawn(async move {
            a.batch_execute(&format!("UPDATE families SET name = 'a' WHERE id = '{f1}'"))
                .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    // B waits on A; A's wait, older, ends first (lock_timeout), A's transaction is rolled
    // back on every shard at once, and B goes on.
    other
        .batch_execute(&format!("UPDATE families SET name = 'b' WHERE id = '{f0}'"))
        .await
        .unwrap();
    let e = waiter.await.unwrap().unwrap_err();
    assert_eq!(code(&e), "55P03", "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    let e = a.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(code(&e), "25P02");
    assert_eq!(simple(&a, "COMMIT").await.unwrap().2, 0);
    other.batch_execute("COMMIT").await.unwrap();
    let mut got: Vec<String> = simple(
        &b.usher,
        &format!("SELECT name FROM families WHERE id IN ('{f0}', '{f1}')"),
    )
    .await
    .unwrap()
    .1
    .into_iter()
    .map(|r| r[0].clone().unwrap())
    .collect();
    got.sort();
    assert_eq!(got, vec!["b", "mine"]);
    assert!(prepared_left(&b.s).is_empty());
}

/// A driver that prepares named statements with Parse, Describe and Flush before it binds
/// them (asyncpg, node-postgres), inside a transaction that widens across shards: the frames
/// usher answers are the plain database's, message for message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statements_prepared_with_flush_inside_a_transaction_across_shards() {
    use common::fake_server::frame;
    use common::wire::*;
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("2pc.log");
    let b = load(
        "xtxp",
        "xtpplain",
        TWO_PHASE_MAP,
        &two_phase_general("t6", &log),
    )
    .await;
    topology().primary.psql(
        &b.plain_db,
        "GRANT ALL ON ALL TABLES IN SCHEMA public TO trust_user",
    );
    let (f0, f1, f2) = three_families(&b.s.config);
    let query = |sql: &str| frame(b'Q', format!("{sql}\0").as_bytes());
    let prepare = |name: &str, sql: &str| {
        let mut out = parse(name, sql);
        out.extend(frame(b'D', format!("S{name}\0").as_bytes()));
        out.extend(frame(b'H', b""));
        out
    };
    let run = |name: &str, key: &str| {
        let mut out = bind(name, &[key]);
        out.extend(describe_execute());
        out.extend(frame(b'S', b""));
        out
    };
    let select = "SELECT id, name, grade FROM children WHERE family_id = $1 ORDER BY id";
    let update = "UPDATE children SET grade = grade + 1 WHERE family_id = $1 RETURNING id, grade";
    // (bytes, ends with a ReadyForQuery, else read up to this frame type)
    let steps: Vec<(Vec<u8>, Option<u8>)> = vec![
        (query("BEGIN"), None),
        (
            query(&format!(
                "UPDATE children SET grade = 1 WHERE family_id = '{f0}'"
            )),
            None,
        ),
        (prepare("s1", select), Some(b'T')),
        (run("s1", &f1), None),
        (prepare("s2", update), Some(b'T')),
        (run("s2", &f2), None),
        (run("s1", &f2), None),
        (run("s1", &f0), None),
        (
            {
                let mut out = frame(b'C', b"Ss1\0");
                out.extend(frame(b'S', b""));
                out
            },
            None,
        ),
        (query("COMMIT"), None),
    ];
    let mut answers = Vec::new();
    for (port, db) in [
        (b.s.usher.port, b.s.db),
        (topology().primary.port, b.plain_db.as_str()),
    ] {
        let mut s = raw_login(port, "trust_user", db).await;
        let mut got = Vec::new();
        for (bytes, until) in &steps {
            s.write_all(bytes).await.unwrap();
            let frames = match until {
                Some(tag) => read_until_tag(&mut s, *tag).await,
                None => read_readies(&mut s, 1).await,
            };
            got.push(
                frames
                    .into_iter()
                    .map(|(t, body)| (t, if t == b'T' { untabled(&body) } else { body }))
                    .collect::<Vec<_>>(),
            );
        }
        answers.push(got);
    }
    for (i, (u, p)) in answers[0].iter().zip(&answers[1]).enumerate() {
        assert_eq!(u, p, "step {i}");
    }
    assert_eq!(contents(&b.usher).await, contents(&b.plain).await);
    assert!(prepared_left(&b.s).is_empty());
}
