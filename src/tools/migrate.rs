//! `usher migrate`: applies `migrations/NNNN_name.sql` in version order to every shard
//! primary of a database, each file in its own transaction together with a row in
//! `usher_schema_migrations` on that shard, so re-running is a no-op and a shard that is
//! behind (new, restored, recreated) catches up. A failure stops the run and names the
//! database, shard, server, file (with line) and the Postgres error. Concurrent runs on one
//! shard wait for each other (advisory lock). A file whose first line is
//! `-- usher: no-transaction` runs outside a transaction (for `CREATE INDEX CONCURRENTLY`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::config::{Config, ServerAddr};
use crate::router::probes::{control_config, probe_user};

/// Name of the table recording applied versions on each shard.
pub const TABLE: &str = "usher_schema_migrations";

/// One migration file.
#[derive(Debug, Clone)]
pub struct Migration {
    /// The number before the first `_`.
    pub version: i64,
    /// File name.
    pub file: String,
    /// Contents.
    pub sql: String,
    /// xxh3 of the contents (hex), to notice files edited after they were applied.
    pub checksum: String,
}

/// Why a migration run stopped.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The migrations directory is unusable.
    #[error("migrations: {0}")]
    Files(String),
    /// The config does not say where to go.
    #[error("config: {0}")]
    Config(String),
    /// A shard could not be reached.
    #[error("database {database:?} shard {shard} ({addr}): cannot connect: {error}")]
    Connect {
        /// Database.
        database: String,
        /// Shard number.
        shard: usize,
        /// Server.
        addr: String,
        /// Why.
        error: String,
    },
    /// A migration failed on a shard (nothing of that file was kept there).
    #[error("database {database:?} shard {shard} ({addr}): {file}: {error}")]
    Failed {
        /// Database.
        database: String,
        /// Shard number.
        shard: usize,
        /// Server.
        addr: String,
        /// The migration file (and line, when Postgres gave a position).
        file: String,
        /// The Postgres error.
        error: String,
    },
}

/// Reads the migration files of `dir`, in version order.
pub fn load_dir(dir: &Path) -> Result<Vec<Migration>, MigrateError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| MigrateError::Files(format!("cannot read {}: {e}", dir.display())))?;
    let mut out: Vec<Migration> = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| MigrateError::Files(e.to_string()))?
            .path();
        let Some(file) = path
            .file_name()
            .and_then(|f| f.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        if !file.ends_with(".sql") {
            continue;
        }
        let digits: String = file.chars().take_while(|c| c.is_ascii_digit()).collect();
        let version = match (digits.parse::<i64>(), file[digits.len()..].starts_with('_')) {
            (Ok(v), true) => v,
            _ => {
                return Err(MigrateError::Files(format!(
                    "{}: migration files are named NNNN_name.sql",
                    path.display()
                )))
            }
        };
        if let Some(other) = out.iter().find(|m| m.version == version) {
            return Err(MigrateError::Files(format!(
                "{} and {} have the same version {version}",
                other.file, file
            )));
        }
        let sql = std::fs::read_to_string(&path)
            .map_err(|e| MigrateError::Files(format!("cannot read {}: {e}", path.display())))?;
        let checksum = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(sql.as_bytes()));
        out.push(Migration {
            version,
            file,
            sql,
            checksum,
        });
    }
    if out.is_empty() {
        return Err(MigrateError::Files(format!(
            "no NNNN_name.sql files in {}",
            dir.display()
        )));
    }
    out.sort_by_key(|m| m.version);
    Ok(out)
}

/// Options of one run.
pub struct Options {
    /// Only this database (default: all).
    pub database: Option<String>,
    /// The migrations directory.
    pub dir: PathBuf,
    /// Config user whose server credentials are used (default: `health_check_user`, else the
    /// first user).
    pub user: Option<String>,
}

/// Applies pending migrations everywhere; progress goes to `out`. Returns how many files were
/// applied in total.
pub async fn run(
    config: &Config,
    opts: &Options,
    out: &mut dyn Write,
) -> Result<usize, MigrateError> {
    let migrations = load_dir(&opts.dir)?;
    let user = match &opts.user {
        Some(u) => config.user(u),
        None => probe_user(config),
    }
    .ok_or_else(|| MigrateError::Config("no such user to run migrations as".into()))?;
    let databases: Vec<&String> = match &opts.database {
        Some(d) => vec![
            config
                .databases
                .get_key_value(d)
                .ok_or_else(|| MigrateError::Config(format!("no database {d:?}")))?
                .0,
        ],
        None => config.databases.keys().collect(),
    };
    let mut applied = 0;
    for name in databases {
        let db = &config.databases[name];
        for (i, shard) in db.shards.iter().enumerate() {
            let addr = &shard.primary.addr;
            let n = migrate_shard(name, i, addr, user, &migrations, config, out).await?;
            applied += n;
        }
    }
    Ok(applied)
}

async fn migrate_shard(
    database: &str,
    shard: usize,
    addr: &ServerAddr,
    user: &crate::config::User,
    migrations: &[Migration],
    config: &Config,
    out: &mut dyn Write,
) -> Result<usize, MigrateError> {
    let fail = |file: &str, error: String| MigrateError::Failed {
        database: database.to_string(),
        shard,
        addr: addr.to_string(),
        file: file.to_string(),
        error,
    };
    let pg = control_config(
        addr,
        user,
        "usher-migrate",
        config.general.server_connect_timeout.0,
    );
    let (mut client, conn) =
        pg.connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| MigrateError::Connect {
                database: database.to_string(),
                shard,
                addr: addr.to_string(),
                error: db_error(&e, None),
            })?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let setup = format!(
        "SELECT pg_advisory_lock(7305733); \
         CREATE TABLE IF NOT EXISTS {TABLE} (version bigint PRIMARY KEY, file text NOT NULL, \
         checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
    );
    client
        .batch_execute(&setup)
        .await
        .map_err(|e| fail(TABLE, db_error(&e, None)))?;
    let rows = client
        .query(&format!("SELECT version, file, checksum FROM {TABLE}"), &[])
        .await
        .map_err(|e| fail(TABLE, db_error(&e, None)))?;
    let done: Vec<(i64, String, String)> = rows
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(|e| fail(TABLE, format!("unexpected column types: {e}")))?;
    for (version, file, checksum) in &done {
        match migrations.iter().find(|m| m.version == *version) {
            Some(m) if m.checksum != *checksum => {
                return Err(fail(&m.file, format!("this file changed after it was applied here as {file} (checksum {checksum}, now {}); add a new migration instead of editing an applied one", m.checksum)));
            }
            Some(_) => {}
            None => {
                let _ = writeln!(out, "{database} shard {shard} ({addr}): warning: version {version} ({file}) is applied here but has no file");
            }
        }
    }
    let mut applied = 0;
    for m in migrations
        .iter()
        .filter(|m| !done.iter().any(|d| d.0 == m.version))
    {
        let started = Instant::now();
        let record = format!("INSERT INTO {TABLE} (version, file, checksum) VALUES ($1, $2, $3)");
        let no_txn = m
            .sql
            .lines()
            .next()
            .is_some_and(|l| l.trim().eq_ignore_ascii_case("-- usher: no-transaction"));
        if let Err(step) = apply(&mut client, m, no_txn, &record).await {
            let _ = writeln!(out, "{database} shard {shard} ({addr}): FAILED {}", m.file);
            let file = match step.line {
                Some(line) => format!("{} line {line}", m.file),
                None => m.file.clone(),
            };
            return Err(fail(
                &file,
                db_error(&step.error, step.statement.as_deref()),
            ));
        }
        applied += 1;
        let _ = writeln!(
            out,
            "{database} shard {shard} ({addr}): applied {} ({} ms)",
            m.file,
            started.elapsed().as_millis()
        );
    }
    if applied == 0 {
        let _ = writeln!(
            out,
            "{database} shard {shard} ({addr}): up to date ({} migration(s) applied)",
            done.len()
        );
    }
    drop(client);
    let _ = driver.await;
    Ok(applied)
}

/// A statement of a migration file that failed.
struct StepError {
    error: tokio_postgres::Error,
    /// Line of the failing statement in the file (None: recording the version failed).
    line: Option<usize>,
    statement: Option<String>,
}

impl From<tokio_postgres::Error> for StepError {
    fn from(error: tokio_postgres::Error) -> Self {
        StepError {
            error,
            line: None,
            statement: None,
        }
    }
}

/// Runs one file statement by statement and records its version: in one transaction, or
/// (for `-- usher: no-transaction` files) statement by statement with the record last.
async fn apply(
    client: &mut tokio_postgres::Client,
    m: &Migration,
    no_txn: bool,
    record: &str,
) -> Result<(), StepError> {
    async fn run_all(
        client: &impl tokio_postgres::GenericClient,
        sql: &str,
    ) -> Result<(), StepError> {
        for (line, stmt) in statements(sql) {
            if let Err(error) = client.batch_execute(stmt).await {
                return Err(StepError {
                    error,
                    line: Some(line),
                    statement: Some(stmt.to_string()),
                });
            }
        }
        Ok(())
    }
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
        [&m.version, &m.file, &m.checksum];
    if no_txn {
        run_all(client, &m.sql).await?;
        client.execute(record, &params).await?;
        return Ok(());
    }
    let tx = client.transaction().await?;
    run_all(&tx, &m.sql).await?;
    tx.execute(record, &params).await?;
    tx.commit().await?;
    Ok(())
}

/// The statements of a migration file with the line each starts on (split on the real
/// grammar, so semicolons in strings and function bodies are no trouble). A file the grammar
/// cannot split runs whole, and Postgres reports the syntax error.
fn statements(sql: &str) -> Vec<(usize, &str)> {
    let Ok(parts) = pg_query::split_with_parser(sql) else {
        return vec![(1, sql)];
    };
    parts
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let offset = p.as_ptr() as usize - sql.as_ptr() as usize;
            let lead = p.len() - p.trim_start().len();
            let mut line = sql[..offset + lead].matches('\n').count() + 1;
            // Comment lines above a statement belong to it; its line is the first code line.
            for l in p.trim_start().lines() {
                if l.trim_start().starts_with("--") || l.trim().is_empty() {
                    line += 1;
                } else {
                    break;
                }
            }
            (line, p)
        })
        .collect()
}

/// A Postgres error as `ERROR 42P07: message (at "text")`.
fn db_error(e: &tokio_postgres::Error, statement: Option<&str>) -> String {
    match e.as_db_error() {
        Some(db) => {
            let at = match (db.position(), statement) {
                (Some(tokio_postgres::error::ErrorPosition::Original(p)), Some(s)) => {
                    let near: String = s.chars().skip(*p as usize - 1).take(30).collect();
                    format!(
                        " (near \"{}\")",
                        near.split_whitespace().collect::<Vec<_>>().join(" ")
                    )
                }
                _ => String::new(),
            };
            format!(
                "{} {}: {}{at}",
                db.severity(),
                db.code().code(),
                db.message()
            )
        }
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_keep_their_lines() {
        let sql = "-- header\nCREATE TABLE a (x int);\n\n-- about b\nCREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;\nALTER TABLE a\n  ADD y int;\n";
        let lines: Vec<usize> = statements(sql).iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, vec![2, 5, 6]);
    }

    #[test]
    fn files_in_version_order_and_bad_names_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("0002_b.sql"), "SELECT 2").unwrap();
        std::fs::write(dir.path().join("0001_a.sql"), "SELECT 1").unwrap();
        std::fs::write(dir.path().join("README.md"), "x").unwrap();
        let m = load_dir(dir.path()).unwrap();
        assert_eq!(m.iter().map(|m| m.version).collect::<Vec<_>>(), vec![1, 2]);
        std::fs::write(dir.path().join("02_dup.sql"), "x").unwrap();
        assert!(load_dir(dir.path())
            .unwrap_err()
            .to_string()
            .contains("same version 2"));
        std::fs::remove_file(dir.path().join("02_dup.sql")).unwrap();
        std::fs::write(dir.path().join("init.sql"), "x").unwrap();
        assert!(load_dir(dir.path())
            .unwrap_err()
            .to_string()
            .contains("init.sql"));
        let empty = tempfile::tempdir().unwrap();
        assert!(load_dir(empty.path()).is_err());
    }
}
