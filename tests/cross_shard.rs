//! Reads across shards, judged against one plain database holding every row: the same
//! learning-platform data is loaded through usher into four shards and directly into one
//! database, and a corpus of queries is run on both, in the simple protocol (text results)
//! and the extended one (tokio-postgres: binary results, prepared statements). Rows (in
//! order where the query orders them), column names and types, row counts and SQLSTATEs
//! must match; what usher cannot merge exactly must be refused with 0A000.

mod common;

use common::learning::*;
use common::*;

const MAP: &str = r#"hasher = "xxh3"
key_type = "uuid"
default_shard = 0
tables = [
  { name = "families", column = "id" },
  { name = "children", column = "family_id" },
  { name = "user_progress", column = "family_id" },
  { name = "readings", column = "family_no", key_type = "bigint" },
]
global_tables = ["lessons"]
"#;

/// Checks that `sql`, which runs on the plain database, is refused through usher with 0A000
/// naming `named`.
async fn refused(b: &Both, sql: &str, named: &str) {
    assert!(simple(&b.plain, sql).await.is_ok(), "{sql}");
    let err = b.usher.simple_query(sql).await.unwrap_err();
    assert_eq!(code(&err), "0A000", "{sql}");
    let text = err.as_db_error().unwrap().message().to_string();
    assert!(text.contains(named), "{sql}: {text}");
}

/// Compares usher's answer with the plain database's, rows in order only when `ordered`.
async fn same(b: &Both, sql: &str, ordered: bool) {
    let (mut u, mut p) = (simple(&b.usher, sql).await, simple(&b.plain, sql).await);
    if !ordered {
        for r in [&mut u, &mut p].into_iter().flatten() {
            r.1.sort();
        }
    }
    assert_eq!(u, p, "simple protocol: {sql}");
    let (mut u, mut p) = (
        extended(&b.usher, sql, &[]).await,
        extended(&b.plain, sql, &[]).await,
    );
    if !ordered {
        for r in [&mut u, &mut p].into_iter().flatten() {
            r.1.sort();
        }
    }
    assert_eq!(u, p, "extended protocol: {sql}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_across_shards_answer_as_one_database() {
    let b = load("xshard", "xplain", MAP, "").await;
    let (f1, f2, f3) = (family(1), family(2), family(7));
    let unordered = [
        "SELECT id, name FROM families".to_string(),
        "SELECT * FROM children WHERE grade > 5".into(),
        "SELECT c.name, p.status, p.score FROM children c JOIN user_progress p ON p.family_id = c.family_id AND p.child_id = c.id WHERE p.status = 'completed'".into(),
        "SELECT c.id, l.title FROM user_progress p JOIN lessons l ON l.id = p.lesson_id JOIN children c ON c.family_id = p.family_id AND c.id = p.child_id WHERE l.grade < 6".into(),
        format!("SELECT id, name FROM families WHERE id IN ('{f1}', '{f2}', '{f3}')"),
        format!("SELECT * FROM children WHERE family_id = '{f1}' OR grade = 3"),
        "SELECT id FROM children WHERE false".into(),
        "SELECT id, score, completed_at FROM user_progress LIMIT 0".into(),
    ];
    for sql in &unordered {
        same(&b, sql, false).await;
    }
    let ordered = [
        "SELECT id, grade, birth_date FROM children ORDER BY grade DESC, id",
        "SELECT id, score FROM user_progress ORDER BY score NULLS FIRST, id LIMIT 17",
        "SELECT id, score, completed_at FROM user_progress ORDER BY completed_at DESC NULLS LAST, id LIMIT 10 OFFSET 5",
        "SELECT * FROM children ORDER BY birth_date, id OFFSET 20",
        "SELECT id, birth_date FROM children ORDER BY 2 DESC, 1 LIMIT 5",
        "SELECT p.id, p.lesson_id, p.score * 2 AS doubled FROM user_progress p ORDER BY doubled DESC NULLS LAST, p.id LIMIT 8",
        "SELECT id, grade FROM children ORDER BY grade, id LIMIT 0",
        "SELECT id, created_at FROM families ORDER BY created_at DESC LIMIT 3 OFFSET 200",
        "SELECT family_id, id, grade::float8 / 3 AS third FROM children ORDER BY third, id LIMIT 12",
    ];
    for sql in ordered {
        same(&b, sql, true).await;
    }
    // Errors the shards raise reach the client with their own SQLSTATE.
    for sql in [
        "SELECT id, 1 / (grade - grade) FROM children",
        "SELECT id FROM children ORDER BY id LIMIT -1",
        "SELECT nope FROM children",
    ] {
        same(&b, sql, false).await;
    }
    // LIMIT and OFFSET as bind parameters, merged under the same window.
    let sql = "SELECT id, score FROM user_progress WHERE score IS NOT NULL ORDER BY score DESC, id LIMIT $1 OFFSET $2";
    for (limit, offset) in [(5i64, 0i64), (7, 3), (1000, 40)] {
        let u = extended(&b.usher, sql, &[&limit, &offset]).await;
        let p = extended(&b.plain, sql, &[&limit, &offset]).await;
        assert_eq!(u, p, "{sql} with {limit}, {offset}");
    }
    let u = extended(&b.usher, sql, &[&3i64, &-1i64]).await;
    assert_eq!(u.unwrap_err(), "2201X");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_across_shards_combine_as_one_database() {
    let b = load("xshard", "xplain", MAP, "").await;
    let (f1, f2, f3) = (family(1), family(2), family(7));
    for sql in [
        "SELECT count(*) FROM children".to_string(),
        "SELECT count(*), count(birth_date), min(birth_date), max(birth_date) FROM children".into(),
        "SELECT sum(grade), min(grade), max(grade) FROM children WHERE grade > 2".into(),
        // sum(bigint) is numeric; sum(numeric) keeps the widest scale.
        "SELECT sum(lesson_id), sum(score), max(score), min(completed_at) FROM user_progress".into(),
        "SELECT count(*) AS n, sum(score) AS total FROM user_progress WHERE status = 'completed'".into(),
        "SELECT bool_and(score > 1), bool_or(score > 80), every(grade < 13) FROM user_progress p JOIN children c ON c.family_id = p.family_id AND c.id = p.child_id".into(),
        // No rows anywhere: count 0, the rest NULL.
        "SELECT count(*), sum(score), max(score), bool_or(true) FROM user_progress WHERE false".into(),
        format!("SELECT count(*), max(name::bytea) FROM families WHERE id IN ('{f1}', '{f2}', '{f3}')"),
        // LIMIT and OFFSET apply to the one combined row.
        "SELECT count(*) FROM children LIMIT 0".into(),
        "SELECT count(*) FROM children OFFSET 1".into(),
        "SELECT count(*) FROM children ORDER BY 1 LIMIT 5 OFFSET 0".into(),
        "SELECT pg_catalog.count(*) FROM children".into(),
        // avg() from the whole's sum and count, with numeric's digits: of an integer, of a
        // bigint (a numeric sum) and of a numeric, over no rows NULL.
        "SELECT avg(grade) FROM children".into(),
        "SELECT avg(score) AS mean, count(*), avg(lesson_id) FROM user_progress".into(),
        "SELECT avg(score), avg(grade) FROM user_progress p JOIN children c ON c.family_id = p.family_id AND c.id = p.child_id WHERE p.status = 'completed'".into(),
        "SELECT avg(score), sum(score) FROM user_progress WHERE false".into(),
        "SELECT avg(grade * 1000003) FROM children OFFSET 0".into(),
        // Expressions over aggregates: the aggregates combined, the expression finished by
        // Postgres over them (types, names, rounding and errors as one database's).
        "SELECT round(avg(score), 2) AS mean, count(*) * 2, coalesce(max(score), 0) FROM user_progress".into(),
        "SELECT count(*)::int, avg(grade)::numeric(10,3), CASE WHEN count(*) > 100 THEN 'many' ELSE 'few' END FROM children".into(),
        "SELECT max(birth_date) - min(birth_date), ARRAY[min(grade), max(grade)] FROM children WHERE grade > 2".into(),
        "SELECT sum(score) / count(*), round(100.0 * count(*) FILTER (WHERE status = 'completed') / count(*), 1) FROM user_progress".into(),
        "SELECT count(*) FILTER (WHERE grade > 5), avg(grade) FILTER (WHERE grade < 5), max(birth_date) FILTER (WHERE false) FROM children".into(),
        "SELECT count(*) / (count(*) - count(*)) FROM children".into(),
        "SELECT count(*) + 1 FROM children OFFSET 1".into(),
        "SELECT coalesce(sum(score), -1) FROM user_progress WHERE false".into(),
        // DISTINCT aggregates (and min/max beside them): finished over the distinct rows.
        "SELECT count(DISTINCT child_id), count(DISTINCT lesson_id) FROM user_progress".into(),
        "SELECT count(DISTINCT grade) FILTER (WHERE grade > 3), max(name) FROM children".into(),
        "SELECT count(DISTINCT family_id) FROM children WHERE grade > 100".into(),
        "SELECT string_agg(DISTINCT status, ',' ORDER BY status) FROM user_progress".into(),
        "SELECT count(DISTINCT lesson_id) * 2 AS twice, sum(DISTINCT lesson_id) FROM user_progress WHERE status = 'completed'".into(),
    ] {
        same(&b, &sql, true).await;
    }
    // What would not come out exactly the same is refused, naming it.
    for (sql, named) in [
        (
            "SELECT sum(score::float8) FROM user_progress",
            "sum() of double precision",
        ),
        ("SELECT min(name) FROM children", "min() or max() of text"),
        (
            "SELECT avg(score::float8) FROM user_progress",
            "avg() of double precision",
        ),
    ] {
        refused(&b, sql, named).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_by_the_key_are_whole_on_one_shard() {
    let b = load("xgroup", "xgplain", MAP, "").await;
    for sql in [
        "SELECT family_id, count(*), sum(grade), max(birth_date), avg(grade) FROM children GROUP BY family_id",
        "SELECT c.family_id, count(p.id), bool_or(p.status = 'completed') FROM children c JOIN user_progress p ON p.family_id = c.family_id AND p.child_id = c.id GROUP BY c.family_id HAVING count(p.id) > 1",
        "SELECT family_id, grade FROM children GROUP BY family_id, grade",
        "SELECT DISTINCT family_id, grade FROM children",
        "SELECT count(*) FROM user_progress GROUP BY family_id",
    ] {
        same(&b, sql, false).await;
    }
    for sql in [
        "SELECT family_id, count(*) AS n FROM user_progress GROUP BY family_id ORDER BY n DESC, family_id LIMIT 7",
        "SELECT DISTINCT ON (family_id) family_id, id, grade FROM children ORDER BY family_id, id",
        "SELECT family_id, sum(score) FROM user_progress GROUP BY 1 ORDER BY 2 DESC NULLS LAST, 1 OFFSET 3 LIMIT 10",
    ] {
        same(&b, sql, true).await;
    }
    for (sql, named) in [
        ("SELECT grade, stddev(grade) FROM children GROUP BY grade", "without the sharding key"),
        ("SELECT DISTINCT ON (grade) grade, id FROM children ORDER BY grade, id", "without the sharding key"),
        (
            "SELECT f.id, count(c.id) FROM families f LEFT JOIN children c ON c.family_id = f.id GROUP BY f.id",
            "outer join",
        ),
    ] {
        refused(&b, sql, named).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_merge_exactly_is_refused() {
    let b = load("xshard", "xplain", MAP, "").await;
    for (sql, named) in [
        (
            "SELECT stddev(grade) * 2 FROM children",
            "aggregate function stddev()",
        ),
        (
            "SELECT count(DISTINCT grade), count(*) FROM children",
            "aggregate function count()",
        ),
        (
            "SELECT id, name FROM children ORDER BY name, id",
            "type text",
        ),
        (
            "SELECT DISTINCT ON (grade) grade, id FROM children ORDER BY grade, id",
            "DISTINCT",
        ),
        (
            "SELECT c.id FROM children c JOIN user_progress p ON p.child_id = c.id",
            "not on their sharding keys",
        ),
        (
            "SELECT id FROM children WHERE grade > (SELECT avg(grade) FROM children)",
            "subqueries",
        ),
    ] {
        refused(&b, sql, named).await;
    }
    // The connection goes on, and a keyed read still runs on its shard.
    let f = family(5);
    same(
        &b,
        &format!("SELECT id, name FROM families WHERE id = '{f}'"),
        false,
    )
    .await;
}

/// An error on one shard, raised while the others are still sending rows: the client gets
/// that error (its SQLSTATE, as one database would raise it), the other shards' queries are
/// cancelled rather than run to their end, and the session and pools go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_on_one_shard_is_the_answer_and_the_others_are_cancelled() {
    let b = load("xshard", "xplain", MAP, "").await;
    let t = topology();
    for (k, db) in b.s.shards.iter().enumerate() {
        // Shard 1 fails at once; the others take long to finish.
        let bad = if k == 1 { 0 } else { 1 };
        t.primary.psql(
            db,
            &format!(
                "CREATE TABLE readings (family_no bigint, v int); \
                 INSERT INTO readings SELECT g, CASE WHEN g = 1 THEN {bad} ELSE 1 END FROM generate_series(1, 3) g; \
                 GRANT ALL ON readings TO app"
            ),
        );
    }
    let sql = "SELECT family_no, 1 / v, pg_sleep(CASE WHEN v = 0 THEN 0 ELSE 2 END) IS NULL FROM readings";
    let started = std::time::Instant::now();
    let err = b.usher.simple_query(sql).await.unwrap_err();
    assert_eq!(code(&err), "22012", "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "the other shards were cancelled, not waited for ({:?})",
        started.elapsed()
    );
    // Nothing of it is left running on the shards, and the next read across shards works.
    let mut running = String::new();
    for _ in 0..50 {
        running = t.primary.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%FROM readings%' AND state = 'active' AND pid <> pg_backend_pid()",
        );
        if running.trim() == "0" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(running.trim(), "0", "queries left running on the shards");
    same(&b, "SELECT id, name FROM families", false).await;
}

/// A key condition narrows only the rows of its own query level, where it filters them. The
/// ON of a LEFT JOIN keeps every family whatever it says, and a subquery beside `WHERE
/// family_id = ...` reads all children: before, both went to the key's one shard and
/// answered from its rows alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditions_pin_only_their_own_query_level() {
    let b = load("xlevel", "xlevelplain", MAP, "").await;
    let f = family(5);
    // Every family, with children only for the one: on every shard, merged.
    same(
        &b,
        &format!(
            "SELECT f.id, c.id FROM families f LEFT JOIN children c ON c.family_id = f.id AND f.id = '{f}'"
        ),
        false,
    )
    .await;
    refused(
        &b,
        &format!(
            "SELECT id FROM children WHERE family_id = '{f}' AND grade IN (SELECT grade FROM children WHERE name LIKE 'child 1%')"
        ),
        "subqueries",
    )
    .await;
    // Pinned at the outer level and carried into a correlated subquery: its one shard.
    same(
        &b,
        &format!(
            "SELECT f.id, (SELECT count(*) FROM children c WHERE c.family_id = f.id) FROM families f WHERE f.id = '{f}'"
        ),
        false,
    )
    .await;
}

/// GROUP BY without the key: every shard's partial groups are gathered, equal groups
/// combined (counts and sums added, min/max/bool_or of the partials), ordered and limited
/// by usher, as one database would group all the rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_groups_combine_as_one_database() {
    let b = load("xregroup", "xregplain", MAP, "").await;
    for sql in [
        "SELECT status, count(*), sum(score), min(score), max(completed_at) FROM user_progress GROUP BY status",
        "SELECT grade, count(*), sum(grade), bool_and(grade > 3), max(birth_date) FROM children GROUP BY grade",
        "SELECT c.grade, p.status, count(*), bool_or(p.score > 50) FROM children c JOIN user_progress p ON p.family_id = c.family_id AND p.child_id = c.id GROUP BY c.grade, p.status",
        "SELECT count(*), lesson_id FROM user_progress WHERE status = 'completed' GROUP BY 2",
        "SELECT grade, count(*) FROM children WHERE grade > 100 GROUP BY grade",
        "SELECT DISTINCT status, lesson_id FROM user_progress",
        "SELECT status, avg(score), count(*), avg(lesson_id) FROM user_progress GROUP BY status",
        "SELECT c.grade, avg(p.score) FROM children c JOIN user_progress p ON p.family_id = c.family_id AND p.child_id = c.id GROUP BY c.grade",
    ] {
        same(&b, sql, false).await;
    }
    for sql in [
        "SELECT lesson_id, count(*) AS n FROM user_progress GROUP BY lesson_id ORDER BY n DESC, lesson_id LIMIT 3",
        "SELECT grade, count(*) FROM children GROUP BY grade ORDER BY count(*) DESC, grade OFFSET 2 LIMIT 4",
        "SELECT lesson_id, sum(score) FROM user_progress GROUP BY 1 ORDER BY 2 DESC NULLS LAST, 1",
        "SELECT grade, avg(grade) AS mean FROM children GROUP BY grade ORDER BY avg(grade) DESC LIMIT 3",
        "SELECT lesson_id, avg(score) FROM user_progress GROUP BY 1 ORDER BY 2 DESC NULLS LAST, 1",
        // Finished by Postgres over the combined groups: HAVING, expressions, ORDER BY text
        // (the database's collation), LIMIT/OFFSET.
        "SELECT status, count(*) FROM user_progress GROUP BY status HAVING count(*) > 100 ORDER BY status",
        "SELECT status, round(avg(score), 2) AS mean, count(*) + 1 FROM user_progress GROUP BY status ORDER BY mean DESC NULLS FIRST",
        "SELECT name, count(*) FROM children GROUP BY name ORDER BY count(*) DESC, name LIMIT 5 OFFSET 2",
        "SELECT lower(name) AS n, max(grade) FROM children GROUP BY lower(name) HAVING max(grade) > 3 ORDER BY 1 LIMIT 10",
        "SELECT grade, count(*) FILTER (WHERE birth_date IS NULL), max(grade) > 3 FROM children GROUP BY grade HAVING count(*) > 1 ORDER BY grade NULLS FIRST",
        "SELECT grade, count(*) FROM children WHERE grade > 100 GROUP BY grade ORDER BY 1",
        "SELECT status, sum(score) / count(*) FROM user_progress GROUP BY status ORDER BY 1",
        // bytea has no array type usher knows: the groups go as a VALUES list instead.
        "SELECT status, max(status::bytea) FROM user_progress GROUP BY status HAVING count(*) > 0 ORDER BY 1",
        // DISTINCT without the key: a grouping by the whole select list.
        "SELECT DISTINCT grade FROM children ORDER BY grade NULLS FIRST",
        "SELECT DISTINCT lower(name) AS n, grade FROM children ORDER BY n, grade LIMIT 7",
    ] {
        same(&b, sql, true).await;
    }
    for (sql, named) in [
        (
            "SELECT status, stddev(score) FROM user_progress GROUP BY status",
            "stddev()",
        ),
        (
            "SELECT status, avg(score::float8) FROM user_progress GROUP BY status",
            "avg() of double precision",
        ),
        (
            "SELECT score, count(*) FROM user_progress GROUP BY score",
            "type oid 1700",
        ),
        (
            "SELECT status, string_agg(lesson_id::text, ',') FROM user_progress GROUP BY status ORDER BY 1",
            "string_agg()",
        ),
        (
            "SELECT status, count(DISTINCT lesson_id) FROM user_progress GROUP BY status ORDER BY 1",
            "count()",
        ),
    ] {
        refused(&b, sql, named).await;
    }
}

/// Parse, Describe of the statement, Bind (text, binary, or per-column result formats),
/// Describe of the portal and Execute in one batch, as pgx and psycopg send them: every frame
/// (descriptions without table OIDs) as one database sends it, for merged rows, averages
/// (whose hidden partial columns the client never sees) and expressions over aggregates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batch_is_described_and_answered_as_one_database() {
    use common::fake_server::frame;
    use common::wire::*;
    let b = load("xbatch", "xbatchplain", MAP, "").await;
    topology().primary.psql(
        &b.plain_db,
        "GRANT ALL ON ALL TABLES IN SCHEMA public TO trust_user",
    );
    for (sql, columns) in [
        ("SELECT id, grade FROM children ORDER BY id LIMIT 5", 2),
        ("SELECT avg(grade), count(*), avg(score) FROM children c JOIN user_progress p ON p.family_id = c.family_id AND p.child_id = c.id", 3),
        ("SELECT round(avg(score), 2) AS mean, count(*) * 2, max(completed_at) FROM user_progress", 3),
        ("SELECT status, avg(score), count(*) FROM user_progress GROUP BY status ORDER BY 3, 2", 3),
    ] {
        for results in [vec![], vec![1], vec![1; columns], {
            let mut v = vec![0; columns];
            v[0] = 1;
            v
        }] {
            let mut bytes = parse("", sql);
            bytes.extend(frame(b'D', b"S\0"));
            bytes.extend(bind_results("", &[], &results));
            bytes.extend(describe_execute());
            bytes.extend(frame(b'S', b""));
            let u = answer(b.s.usher.port, b.s.db, &bytes).await;
            let p = answer(topology().primary.port, &b.plain_db, &bytes).await;
            assert_eq!(u, p, "{sql} with result formats {results:?}");
            assert!(p.iter().any(|(t, _)| *t == b'D'), "{sql}: {p:?}");
        }
    }
}

/// A CancelRequest with the client's key, sent while a query runs on every shard, reaches
/// every shard's server: the client gets 57014 as from one database, no shard goes on
/// running it, and the session takes the next query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_stops_a_query_on_every_shard() {
    let b = load("xcancel", "xcancelplain", MAP, "").await;
    let client = std::sync::Arc::new(connect(b.s.usher.port, "app", b.s.db).await.unwrap());
    let token = client.cancel_token();
    let running = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .simple_query("SELECT pg_sleep(30), id FROM families")
                .await
        })
    };
    let shards = b.s.shards.len();
    assert!(sleeping(&b.s, shards).await, "every shard runs the query");
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = tokio::time::timeout(std::time::Duration::from_secs(20), running)
        .await
        .expect("the cancel stopped the query")
        .unwrap()
        .unwrap_err();
    assert_eq!(code(&err), "57014");
    assert!(sleeping(&b.s, 0).await, "no shard goes on running it");
    let rows = simple(&client, "SELECT count(*) FROM families")
        .await
        .unwrap();
    assert_eq!(rows.1, vec![vec![Some("120".to_string())]]);
}

/// Waits (10 s at most) until `want` shard backends run the test's pg_sleep query.
async fn sleeping(s: &common::sharded::Sharded, want: usize) -> bool {
    for _ in 0..100 {
        if per_shard_running(s, "pg_sleep(30)") == want {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

/// How many backends of the shards' databases are running a query containing `text`.
fn per_shard_running(s: &common::sharded::Sharded, text: &str) -> usize {
    common::sharded::per_shard(
        s,
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' AND query LIKE '%{text}%' AND pid <> pg_backend_pid()"
        ),
    )
    .iter()
    .flatten()
    .map(|n| n.trim().parse::<usize>().unwrap_or(0))
    .sum()
}

/// `query_timeout` bounds a statement across shards too: past it the client gets 57014,
/// every shard's query is cancelled, and the session takes the next query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_timeout_cancels_a_query_on_every_shard() {
    let b = load("xqtime", "xqtimeplain", MAP, "query_timeout = \"1s\"").await;
    let err = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        b.usher
            .simple_query("SELECT pg_sleep(30), id FROM families"),
    )
    .await
    .expect("query_timeout stopped the query")
    .unwrap_err();
    assert_eq!(code(&err), "57014");
    assert!(sleeping(&b.s, 0).await, "no shard goes on running it");
    let rows = simple(&b.usher, "SELECT count(*) FROM families")
        .await
        .unwrap();
    assert_eq!(rows.1, vec![vec![Some("120".to_string())]]);
}

/// `COPY table TO STDOUT` of a sharded table: every shard's rows in one COPY, with one
/// header (CSV) or one binary file header and trailer, and the tag counting them all; the
/// rows (sorted, a table's order being unspecified) are those of one database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_to_stdout_streams_every_shard_as_one_copy() {
    use futures_util::StreamExt;
    let b = load("xcopy", "xcopyplain", MAP, "").await;
    async fn copied(c: &tokio_postgres::Client, sql: &str) -> Vec<u8> {
        let stream = c.copy_out(sql).await.unwrap();
        futures_util::pin_mut!(stream);
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }
    for (sql, header) in [
        ("COPY children TO STDOUT", false),
        (
            "COPY children (id, name, grade) TO STDOUT WITH CSV HEADER",
            true,
        ),
        (
            "COPY user_progress TO STDOUT (FORMAT csv, HEADER false)",
            false,
        ),
    ] {
        let (u, p) = (copied(&b.usher, sql).await, copied(&b.plain, sql).await);
        let lines = |bytes: &[u8]| -> (Option<String>, Vec<String>) {
            let text = String::from_utf8(bytes.to_vec()).unwrap();
            let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
            let head = header.then(|| lines.remove(0));
            lines.sort();
            (head, lines)
        };
        // created_at differs (each load ran its own now()): compared without it.
        let strip = |(h, l): (Option<String>, Vec<String>)| {
            let cut = |s: &String| {
                s.rsplit_once(['\t', ','])
                    .map_or(s.clone(), |(a, _)| a.to_string())
            };
            let mut l: Vec<String> = if sql.contains("(id, name, grade)") {
                l
            } else {
                l.iter().map(cut).collect()
            };
            l.sort();
            (h, l)
        };
        assert_eq!(strip(lines(&u)), strip(lines(&p)), "{sql}");
        assert!(!u.is_empty(), "{sql}");
    }
    // Binary: one file header, every shard's tuples, one trailer.
    let sql = "COPY children (id, family_id, grade) TO STDOUT (FORMAT binary)";
    let tuples = |bytes: &[u8]| -> Vec<Vec<u8>> {
        assert_eq!(&bytes[..11], b"PGCOPY\n\xff\r\n\0");
        let mut at = 19;
        let mut out = Vec::new();
        loop {
            let n = i16::from_be_bytes([bytes[at], bytes[at + 1]]);
            if n == -1 {
                assert_eq!(at + 2, bytes.len(), "the trailer ends the stream");
                break;
            }
            let start = at;
            at += 2;
            for _ in 0..n {
                let len = i32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
                at += 4 + usize::try_from(len).unwrap_or(0);
            }
            out.push(bytes[start..at].to_vec());
        }
        out.sort();
        out
    };
    let (u, p) = (copied(&b.usher, sql).await, copied(&b.plain, sql).await);
    assert_eq!(tuples(&u), tuples(&p));
    // The simple protocol, as psql sends it: the same rows, all of them.
    let psql = |port: u16, db: &str, sql: &str| -> (Vec<String>, String) {
        let out = std::process::Command::new(pg_bin("psql"))
            .args([
                &dsn(port, "app", db),
                "-X",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        lines.sort();
        (lines, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let sql = "COPY families (id, name) TO STDOUT WITH CSV HEADER";
    let (u, _) = psql(b.s.usher.port, b.s.db, sql);
    let (p, _) = psql(topology().primary.port, &b.plain_db, sql);
    assert_eq!(u, p);
    assert_eq!(u.len(), 121, "a header and every family");
}
