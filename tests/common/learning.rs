//! The learning platform's data for tests that judge usher over shards against one plain
//! database: the same families, children and progress loaded through usher into the shards
//! and directly into one database, and the answers of both in the simple protocol (text) and
//! the extended one (binary values, column types).

use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage};

use super::sharded::*;
use super::*;

/// A value's bytes as the server sent them, whatever its type.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone)]
pub struct Raw(pub Vec<u8>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

pub fn family(i: u32) -> String {
    let h = xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes());
    format!(
        "{:08x}-{:04x}-4{:03x}-8000-{:012x}",
        h >> 32,
        (h >> 16) & 0xffff,
        h & 0xfff,
        i
    )
}

pub fn child(i: u32, j: u32) -> String {
    format!("00000000-0000-4000-a000-{:06x}{:06x}", i, j)
}

/// The data: families, their children and progress, by family (the lessons, a global
/// table, come with the migrations).
pub fn data() -> Vec<String> {
    let mut keyed = Vec::new();
    for i in 0..120u32 {
        let f = family(i);
        let mut sql = format!(
            "INSERT INTO families (id, name, created_at) VALUES ('{f}', 'family {i}', timestamptz '2026-01-01 00:00:00+00' + interval '{i} hours');"
        );
        let kids: Vec<String> = (0..(i % 3 + 1))
            .map(|j| {
                let birth = if (i + j) % 11 == 0 {
                    "NULL".to_string()
                } else {
                    format!("date '2012-01-01' + {}", (i * 37 + j * 101) % 2000)
                };
                format!(
                    "('{}', '{f}', 'child {i}.{j}', {}, {birth}, timestamptz '2026-02-01 00:00:00+00' + interval '{} seconds')",
                    child(i, j),
                    (i * 7 + j) % 13,
                    i * 10 + j
                )
            })
            .collect();
        sql += &format!(
            "INSERT INTO children (id, family_id, name, grade, birth_date, created_at) VALUES {};",
            kids.join(", ")
        );
        let mut progress = Vec::new();
        for j in 0..(i % 3 + 1) {
            for k in 0..(i + j) % 4 {
                let n = i * 10 + j * 3 + k;
                let (status, score, done) = match n % 3 {
                    0 => (
                        "completed",
                        format!("{}.{:02}", n % 100, (n * 7) % 100),
                        format!(
                            "timestamptz '2026-03-01 12:00:00+00' + interval '{} minutes'",
                            n * 13
                        ),
                    ),
                    1 => ("in_progress", format!("{}.5", n % 90), "NULL".into()),
                    _ => ("not_started", "NULL".into(), "NULL".into()),
                };
                progress.push(format!(
                    "('{}', '{f}', '{}', {}, '{status}', {score}, {done}, timestamptz '2026-02-02 00:00:00+00')",
                    child(n, 99),
                    child(i, j),
                    (i + j + k) % 10 + 1
                ));
            }
        }
        if !progress.is_empty() {
            sql += &format!(
                "INSERT INTO user_progress (id, family_id, child_id, lesson_id, status, score, completed_at, created_at) VALUES {};",
                progress.join(", ")
            );
        }
        keyed.push(sql);
    }
    keyed
}

/// usher over four shards, and one plain database, holding the same rows.
pub struct Both {
    /// A client of usher.
    pub usher: Client,
    /// A client of the plain database.
    pub plain: Client,
    /// The plain database's name.
    pub plain_db: String,
    /// The shards and usher.
    pub s: Sharded,
}

/// Loads [`data`] through usher (shards named after `prefix`, shard map `map`, `general`
/// lines added to `[general]`) and into a plain database named after `plain`.
pub async fn load(prefix: &str, plain: &str, map: &str, general: &str) -> Both {
    let s = setup_with(prefix, map, general).await;
    let t = topology();
    let plain_db = t.create_db(plain);
    for m in ["0001_learning_platform.sql", "0002_lesson_catalogue.sql"] {
        let sql = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(m),
        )
        .unwrap();
        t.primary.psql(&plain_db, &sql);
    }
    t.primary
        .psql(&plain_db, "GRANT ALL ON ALL TABLES IN SCHEMA public TO app");
    let usher = connect(s.usher.port, "app", s.db).await.unwrap();
    let plain = connect(t.primary.port, "app", &plain_db).await.unwrap();
    for sql in &data() {
        usher.batch_execute(sql).await.unwrap();
        plain.batch_execute(sql).await.unwrap();
    }
    Both {
        usher,
        plain,
        plain_db,
        s,
    }
}

/// A query's answer in the simple protocol: column names, rows as text, row count; or the
/// SQLSTATE.
pub type Simple = Result<(Vec<String>, Vec<Vec<Option<String>>>, u64), String>;

pub async fn simple(c: &Client, sql: &str) -> Simple {
    let messages = c.simple_query(sql).await.map_err(|e| code(&e))?;
    let mut names = Vec::new();
    let mut rows = Vec::new();
    let mut count = None;
    for m in messages {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                names = cols.iter().map(|c| c.name().to_string()).collect();
            }
            SimpleQueryMessage::Row(r) => {
                rows.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            SimpleQueryMessage::CommandComplete(n) => count = Some(n),
            _ => {}
        }
    }
    Ok((names, rows, count.expect("a CommandComplete")))
}

/// The same in the extended protocol: column names and types, rows as binary values.
pub type Extended = Result<(Vec<(String, Type)>, Vec<Vec<Option<Raw>>>), String>;

pub async fn extended(
    c: &Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Extended {
    let stmt = c.prepare(sql).await.map_err(|e| code(&e))?;
    let rows = c.query(&stmt, params).await.map_err(|e| code(&e))?;
    let cols = stmt
        .columns()
        .iter()
        .map(|c| (c.name().to_string(), c.type_().clone()))
        .collect();
    let rows = rows
        .iter()
        .map(|r| (0..r.len()).map(|i| r.get::<_, Option<Raw>>(i)).collect())
        .collect();
    Ok((cols, rows))
}

pub fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map_or_else(|| e.to_string(), |c| c.code().to_string())
}

/// The learning platform's shard map (uuid family keys, lessons global) with
/// `two_phase_commit = true`: what the tests of writes across shards run on.
pub const TWO_PHASE_MAP: &str = r#"hasher = "xxh3"
key_type = "uuid"
default_shard = 0
two_phase_commit = true
tables = [
  { name = "families", column = "id" },
  { name = "children", column = "family_id" },
  { name = "user_progress", column = "family_id" },
]
global_tables = ["lessons"]
"#;

/// `[general]` lines naming a test's usher instance and its two-phase decision log.
pub fn two_phase_general(instance: &str, log: &std::path::Path) -> String {
    format!(
        "instance_name = \"{instance}\"\ntwo_phase_log = \"{}\"",
        log.display()
    )
}

/// Every row of the family tables, sorted, through `c`.
pub async fn contents(c: &Client) -> Vec<Simple> {
    sorted_rows(
        c,
        &[
            "SELECT id, family_id, name, grade, birth_date, deleted_at FROM children",
            "SELECT id, family_id, child_id, lesson_id, status, score, completed_at FROM user_progress",
            "SELECT id, name FROM families",
        ],
    )
    .await
}

/// The answer of each of `queries` through `c`, rows sorted.
pub async fn sorted_rows(c: &Client, queries: &[&str]) -> Vec<Simple> {
    let mut out = Vec::new();
    for sql in queries {
        let mut r = simple(c, sql).await;
        if let Ok(r) = &mut r {
            r.1.sort();
        }
        out.push(r);
    }
    out
}
