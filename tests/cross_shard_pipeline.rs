//! Pipelines whose statements belong to different shards (what psycopg's `executemany` and
//! libpq's pipeline mode send: Parse/Bind/Describe/Execute per statement, one Sync), judged
//! against one plain database: the same raw messages are sent to usher over four shards and
//! to the plain database, and the frames that come back must be the same (RowDescriptions
//! compared without their table OIDs), as must the rows left afterwards. A failing statement
//! rolls the whole pipeline back on every shard, and no prepared transaction is left.

mod common;

use common::fake_server::frame;
use common::learning::*;
use common::sharded::*;
use common::wire::*;
use common::*;

/// The learning platform's shard map, committing across shards.
const MAP: &str = TWO_PHASE_MAP;

const INSERT: &str = "INSERT INTO children (id, family_id, name, grade) VALUES ($1, $2, $3, $4)";

/// Sends `bytes` to usher and to the plain database: the same frames, and the same rows
/// left in every table. Returns the frames' tags.
async fn same_pipeline(b: &Both, bytes: &[u8]) -> Vec<u8> {
    let u = answer(b.s.usher.port, b.s.db, bytes).await;
    let p = answer(topology().primary.port, &b.plain_db, bytes).await;
    assert_eq!(u, p);
    assert_eq!(contents(&b.usher).await, contents(&b.plain).await);
    assert!(prepared_left(&b.s).is_empty());
    u.iter().map(|(t, _)| *t).collect()
}

async fn contents(c: &tokio_postgres::Client) -> Vec<Simple> {
    sorted_rows(
        c,
        &[
            "SELECT id, family_id, name, grade FROM children",
            "SELECT id, name FROM families",
        ],
    )
    .await
}

/// Families of at least two different shards.
fn spread(s: &Sharded) -> Vec<u32> {
    let mut seen = std::collections::BTreeSet::new();
    let picked: Vec<u32> = (1..120)
        .filter(|i| seen.insert(shard_of(&s.config, Some("children"), &family(*i))))
        .take(3)
        .collect();
    assert!(picked.len() >= 2, "the families span shards");
    picked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_across_shards_runs_as_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let general = format!(
        "instance_name = \"p1\"\ntwo_phase_log = \"{}\"",
        dir.path().join("2pc.log").display()
    );
    let b = load("xpipe", "xpipeplain", MAP, &general).await;
    topology().primary.psql(
        &b.plain_db,
        "GRANT ALL ON ALL TABLES IN SCHEMA public TO trust_user",
    );
    let fams = spread(&b.s);
    // executemany without a prepared statement: one Parse per row, rows on several shards,
    // a read in the middle, answered in the order sent.
    let mut bytes = Vec::new();
    for (j, f) in fams.iter().enumerate() {
        let (id, fid) = (child(*f, 40), family(*f));
        bytes.extend(statement(INSERT, &[&id, &fid, &format!("new {j}"), "3"]));
        if j == 0 {
            let q = "SELECT name, grade FROM children WHERE family_id = $1 ORDER BY id";
            bytes.extend(statement(q, &[&family(fams[1])]));
        }
    }
    bytes.extend(frame(b'S', b""));
    let tags = same_pipeline(&b, &bytes).await;
    assert!(tags.contains(&b'T') && tags.contains(&b'D'), "{tags:?}");
    let done = tags.iter().filter(|t| **t == b'C').count();
    assert_eq!(done, fams.len() + 1, "every statement ran: {tags:?}");
    // One transaction, one clock: created_at DEFAULT now() is the same on every shard.
    let times: std::collections::BTreeSet<String> = per_shard(
        &b.s,
        "SELECT DISTINCT created_at::text FROM children WHERE name LIKE 'new %'",
    )
    .into_iter()
    .flatten()
    .collect();
    assert_eq!(times.len(), 1, "{times:?}");
    // executemany with a named statement, parsed once and bound per row.
    let mut bytes = parse("ins", INSERT);
    for (j, f) in fams.iter().enumerate() {
        let (id, fid) = (child(*f, 41), family(*f));
        bytes.extend(bind("ins", &[&id, &fid, &format!("named {j}"), "4"]));
        bytes.extend(describe_execute());
    }
    bytes.extend(frame(b'S', b""));
    same_pipeline(&b, &bytes).await;
    // A failing row in the middle (its Bind fails): the error where one database raises it,
    // nothing of the pipeline kept on any shard.
    let mut bytes = Vec::new();
    for (j, f) in fams.iter().enumerate() {
        let (id, fid) = (child(*f, 42), family(*f));
        let grade = if j == 1 { "x" } else { "5" };
        bytes.extend(statement(INSERT, &[&id, &fid, "bad", grade]));
    }
    bytes.extend(frame(b'S', b""));
    let tags = same_pipeline(&b, &bytes).await;
    assert_eq!(tags.iter().filter(|t| **t == b'E').count(), 1, "{tags:?}");
    // A duplicate key on the last shard's row, after the others succeeded.
    let mut bytes = Vec::new();
    for f in &fams {
        let (id, fid) = (child(*f, 43), family(*f));
        bytes.extend(statement(INSERT, &[&id, &fid, "dup", "1"]));
    }
    let last = fams[fams.len() - 1];
    bytes.extend(statement(
        INSERT,
        &[&child(last, 43), &family(last), "dup", "1"],
    ));
    bytes.extend(frame(b'S', b""));
    same_pipeline(&b, &bytes).await;
    // What the pipelines committed is there, each row on its family's shard, and what
    // failed is not.
    let count = |sql: &str| -> usize {
        per_shard(&b.s, sql)
            .iter()
            .flatten()
            .map(|n| n.trim().parse::<usize>().unwrap())
            .sum()
    };
    assert_eq!(
        count("SELECT count(*) FROM children WHERE name LIKE 'named %' OR name LIKE 'new %'"),
        2 * fams.len()
    );
    assert_eq!(
        count("SELECT count(*) FROM children WHERE name IN ('bad', 'dup')"),
        0
    );
}

/// A simple Query of several statements (what psycopg2's `execute_batch` sends: the
/// statements joined by `;`), each of one shard, runs as the one implicit transaction
/// Postgres makes of it: the same frames, the same rows, all or nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_of_statements_across_shards_runs_as_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let general = format!(
        "instance_name = \"p2\"\ntwo_phase_log = \"{}\"",
        dir.path().join("2pc.log").display()
    );
    let b = load("xqpipe", "xqpipeplain", MAP, &general).await;
    topology().primary.psql(
        &b.plain_db,
        "GRANT ALL ON ALL TABLES IN SCHEMA public TO trust_user",
    );
    let fams = spread(&b.s);
    let insert = |f: u32, j: u32, name: &str, grade: &str| {
        format!(
            "INSERT INTO children (id, family_id, name, grade) VALUES ('{}', '{}', '{name}', {grade})",
            child(f, j),
            family(f)
        )
    };
    let mut sql: Vec<String> = fams.iter().map(|f| insert(*f, 50, "batch", "2")).collect();
    sql.insert(
        1,
        format!(
            "SELECT name, grade FROM children WHERE family_id = '{}' ORDER BY id",
            family(fams[1])
        ),
    );
    let q = |sql: &[String]| {
        let mut body = sql.join("; ").into_bytes();
        body.push(0);
        frame(b'Q', &body)
    };
    let tags = same_pipeline(&b, &q(&sql)).await;
    assert_eq!(
        tags.iter().filter(|t| **t == b'C').count(),
        sql.len(),
        "every statement answered: {tags:?}"
    );
    // A failing statement in the middle (a duplicate key): nothing of the batch kept.
    let sql: Vec<String> = fams
        .iter()
        .enumerate()
        .map(|(j, f)| insert(*f, if j == 1 { 50 } else { 51 }, "failed", "3"))
        .collect();
    let tags = same_pipeline(&b, &q(&sql)).await;
    assert_eq!(tags.iter().filter(|t| **t == b'E').count(), 1, "{tags:?}");
    let left: usize = per_shard(&b.s, "SELECT count(*) FROM children WHERE name = 'failed'")
        .iter()
        .flatten()
        .map(|n| n.trim().parse::<usize>().unwrap())
        .sum();
    assert_eq!(left, 0);
}
