//! Statement classification on the real PostgreSQL grammar (libpg_query via the `pg_query`
//! crate): does a statement (or multi-statement string) need the primary, does it open a
//! transaction, which functions does it call, and which routing hints does it carry.
//!
//! The rule is "primary unless provably read-only": anything unknown, unparsable or
//! side-effecting goes to the primary, so a misparse costs a replica's share, never a write
//! sent to a replica.

use pg_query::protobuf::TransactionStmtKind;
use pg_query::{Context, NodeEnum};

use super::fanout::{self, Shape};
use super::normalize::literal_spans;
use super::shard::facts::{statement_facts, StatementFacts};
use super::shard::ShardHint;

/// A role asked for by a hint or `SET usher.role`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleHint {
    /// Force the primary.
    Primary,
    /// Prefer a replica (a write still goes to the primary).
    Replica,
    /// Decide from the SQL (the default).
    Auto,
}

impl RoleHint {
    fn parse(v: &str) -> Option<RoleHint> {
        match v
            .trim()
            .trim_matches('\'')
            .trim_matches('"')
            .to_ascii_lowercase()
            .as_str()
        {
            "primary" => Some(RoleHint::Primary),
            "replica" => Some(RoleHint::Replica),
            "auto" => Some(RoleHint::Auto),
            _ => None,
        }
    }
}

/// What routing needs to know about a query string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Classification {
    /// Must run on the primary.
    pub write: bool,
    /// Opens an explicit transaction: `Some(read_only)`.
    pub begins: Option<bool>,
    /// Functions called that are neither known writes nor known built-ins; user-defined
    /// VOLATILE ones among them make the statement a write (checked against pg_proc).
    pub functions: Vec<String>,
    /// `/* usher: role=... */` on the statement.
    pub hint: Option<RoleHint>,
    /// `SET usher.role = ...` (Some) or `RESET usher.role` (Some(Auto)).
    pub set_role: Option<RoleHint>,
    /// The whole string is only `SET/RESET usher.*` statements (answered by usher itself).
    pub only_usher_settings: bool,
    /// libpg_query could not parse it (routed to the primary).
    pub parse_error: bool,
    /// Number of statements in the string.
    pub statements: usize,
    /// The string is a single COMMIT/END (`Some(true)`) or ROLLBACK/ABORT (`Some(false)`).
    pub ends: Option<bool>,
    /// `/* usher: shard=N */` or `/* usher: key=V */` on the statement.
    pub shard_hint: Option<ShardHint>,
    /// `SET usher.shard` / `SET usher.sharding_key` (Some(Some)) or their RESET (Some(None)).
    pub set_shard: Option<Option<ShardHint>>,
    /// Sharding facts, one entry per statement.
    pub shard: Vec<StatementFacts>,
    /// For a string that is one SELECT: how its rows combine when it runs on several shards.
    pub fanout: Option<Shape>,
}

/// Built-in functions with side effects: a call sends the statement to the primary.
const WRITE_FUNCTIONS: &[&str] = &[
    "nextval",
    "setval",
    "pg_notify",
    "txid_current",
    "pg_current_xact_id",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_drop_replication_slot",
    "lo_create",
    "lo_creat",
    "lo_import",
    "lo_unlink",
    "lo_put",
    "lo_from_bytea",
    "lo_open",
    "lowrite",
    "lo_write",
    "lo_truncate",
    "lo_truncate64",
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_advisory_xact_lock",
    "pg_advisory_xact_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
    "pg_try_advisory_xact_lock",
    "pg_try_advisory_xact_lock_shared",
    "pg_advisory_unlock",
    "pg_advisory_unlock_shared",
    "pg_advisory_unlock_all",
    "pg_logical_emit_message",
    "pg_replication_origin_create",
    "pg_replication_origin_drop",
    "pg_import_system_collations",
];

fn is_write_function(name: &str) -> bool {
    WRITE_FUNCTIONS.contains(&name.strip_prefix("pg_catalog.").unwrap_or(name))
}

/// True when `function` (as called) is one of the configured `write_functions` (given as
/// `name` or `schema.name`).
pub fn is_configured_write(function: &str, configured: &[String]) -> bool {
    let base = function.rsplit('.').next().unwrap_or(function);
    configured
        .iter()
        .any(|w| w.eq_ignore_ascii_case(function) || w.eq_ignore_ascii_case(base))
}

/// Reads `/* usher: role=primary */` style hints; the last one wins.
pub fn parse_hint(sql: &str) -> Option<RoleHint> {
    parse_hints(sql).0
}

/// Reads `/* usher: role=..., shard=N, key=V */` hints; the last of each kind wins.
pub fn parse_hints(sql: &str) -> (Option<RoleHint>, Option<ShardHint>) {
    let mut hint = None;
    let mut shard = None;
    let mut rest = sql;
    while let Some(start) = rest.find("/*") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("*/") else { break };
        let body = after[..end].trim();
        if let Some(kv) = body.strip_prefix("usher:") {
            for pair in kv.split([',', ' ']).filter(|p| !p.is_empty()) {
                let pair = pair.trim();
                if let Some(v) = pair.strip_prefix("role=") {
                    hint = RoleHint::parse(v).or(hint);
                } else if let Some(v) = pair.strip_prefix("shard=") {
                    shard = v.parse().ok().map(ShardHint::Shard).or(shard);
                } else if let Some(v) = pair.strip_prefix("key=") {
                    let v = v.trim_matches('\'').trim_matches('"');
                    if !v.is_empty() {
                        shard = Some(ShardHint::Key(v.to_string()));
                    }
                }
            }
        }
        rest = &after[end + 2..];
    }
    (hint, shard)
}

/// The value of `SET usher.shard` / `SET usher.sharding_key` (None for RESET or SET DEFAULT).
fn shard_setting(name: &str, args: &[pg_query::protobuf::Node]) -> Option<ShardHint> {
    use pg_query::protobuf::a_const::Val;
    let value = match args.first().and_then(|a| a.node.as_ref()) {
        Some(NodeEnum::AConst(k)) => match &k.val {
            Some(Val::Sval(s)) => s.sval.clone(),
            Some(Val::Ival(i)) => i.ival.to_string(),
            Some(Val::Fval(f)) => f.fval.clone(),
            _ => return None,
        },
        _ => return None,
    };
    if name == "usher.shard" {
        // An unparsable number becomes an out-of-range shard, reported when used.
        Some(ShardHint::Shard(value.trim().parse().unwrap_or(usize::MAX)))
    } else {
        Some(ShardHint::Key(value))
    }
}

/// Classifies `sql`. The result depends only on the text (configured write functions are
/// checked against [`Classification::functions`] when routing), so it can be cached for all
/// databases alike.
pub fn classify(sql: &str) -> Classification {
    let (hint, shard_hint) = parse_hints(sql);
    let mut c = Classification {
        hint,
        shard_hint,
        ..Classification::default()
    };
    let parsed = match pg_query::parse(sql, pg_query::ParserOptions::default()) {
        Ok(p) => p,
        Err(_) => {
            c.write = true;
            c.parse_error = true;
            return c;
        }
    };
    let mut statements = 0;
    let mut usher_settings = 0;
    let spans = literal_spans(sql.as_bytes());
    for raw in &parsed.protobuf.stmts {
        let Some(node) = raw.stmt.as_ref().and_then(|s| s.node.as_ref()) else {
            continue;
        };
        statements += 1;
        c.shard.push(statement_facts(node, sql.as_bytes(), &spans));
        match node {
            NodeEnum::SelectStmt(_) | NodeEnum::VariableShowStmt(_) | NodeEnum::ExplainStmt(_) => {}
            NodeEnum::DeclareCursorStmt(_)
            | NodeEnum::FetchStmt(_)
            | NodeEnum::ClosePortalStmt(_) => {}
            NodeEnum::CopyStmt(copy) => c.write |= copy.is_from,
            NodeEnum::VariableSetStmt(set) => {
                if set.name.eq_ignore_ascii_case("usher.role") {
                    usher_settings += 1;
                    c.set_role = match set.args.first().and_then(|a| a.node.as_ref()) {
                        Some(NodeEnum::AConst(k)) => match &k.val {
                            Some(pg_query::protobuf::a_const::Val::Sval(s)) => {
                                RoleHint::parse(&s.sval)
                            }
                            _ => None,
                        },
                        None => Some(RoleHint::Auto),
                        _ => None,
                    }
                    .or(Some(RoleHint::Auto));
                } else if set.name.eq_ignore_ascii_case("usher.shard")
                    || set.name.eq_ignore_ascii_case("usher.sharding_key")
                {
                    usher_settings += 1;
                    c.set_shard = Some(shard_setting(&set.name.to_ascii_lowercase(), &set.args));
                } else if set.name.to_ascii_lowercase().starts_with("usher.") {
                    usher_settings += 1;
                }
            }
            NodeEnum::TransactionStmt(t) => match TransactionStmtKind::try_from(t.kind) {
                Ok(TransactionStmtKind::TransStmtBegin | TransactionStmtKind::TransStmtStart) => {
                    c.begins = Some(read_only_option(&t.options));
                }
                Ok(TransactionStmtKind::TransStmtCommit) => c.ends = Some(true),
                Ok(TransactionStmtKind::TransStmtRollback) => c.ends = Some(false),
                Ok(TransactionStmtKind::TransStmtPrepare)
                | Ok(TransactionStmtKind::TransStmtCommitPrepared)
                | Ok(TransactionStmtKind::TransStmtRollbackPrepared) => c.write = true,
                _ => {}
            },
            // Everything else (DML, DDL, VACUUM, ANALYZE, LOCK, LISTEN, NOTIFY, CALL, DO, ...).
            _ => c.write = true,
        }
    }
    // Nested writes: writable CTEs, SELECT INTO, locking clauses (also in a VALUES row or
    // RETURNING subquery, where pg_query's iterator does not look), EXPLAIN ANALYZE of DML.
    // pg_query's list of calls leaves out those in the same places: every FuncCall of the
    // tree is added below.
    let tree = super::walk::tree(&parsed.protobuf);
    super::walk::each(&tree, &mut |n| match n.kind {
        "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" => c.write = true,
        "SelectStmt" if n.has("into_clause") || n.has("locking_clause") => c.write = true,
        _ => {}
    });
    let mut calls: Vec<String> = parsed
        .functions
        .iter()
        .filter(|(_, context)| *context == Context::Call)
        .map(|(name, _)| name.clone())
        .collect();
    super::walk::each(&tree, &mut |n| {
        if n.kind == "FuncCall" {
            let name = n.func_name().join(".");
            if !name.is_empty() && !calls.contains(&name) {
                calls.push(name);
            }
        }
    });
    for name in &calls {
        if is_write_function(name) {
            c.write = true;
        } else if !name.starts_with("pg_catalog.") && !c.functions.contains(name) {
            c.functions.push(name.clone());
        }
    }
    if let [raw] = parsed.protobuf.stmts.as_slice() {
        match raw.stmt.as_ref().and_then(|s| s.node.as_ref()) {
            Some(NodeEnum::SelectStmt(s)) if !s.from_clause.is_empty() => {
                c.fanout = Some(fanout::shape(&parsed.protobuf, s));
            }
            Some(stmt) => c.fanout = super::fanout_write::shape(&parsed.protobuf, stmt),
            None => {}
        }
    }
    c.only_usher_settings = statements > 0 && usher_settings == statements;
    c.statements = statements;
    if statements != 1 {
        c.ends = None;
    }
    c
}

/// True when BEGIN/START TRANSACTION options say READ ONLY.
fn read_only_option(options: &[pg_query::protobuf::Node]) -> bool {
    let mut read_only = false;
    for opt in options {
        if let Some(NodeEnum::DefElem(d)) = opt.node.as_ref() {
            if d.defname == "transaction_read_only" {
                if let Some(NodeEnum::AConst(k)) = d.arg.as_ref().and_then(|a| a.node.as_ref()) {
                    read_only = match &k.val {
                        Some(pg_query::protobuf::a_const::Val::Ival(i)) => i.ival != 0,
                        Some(pg_query::protobuf::a_const::Val::Boolval(b)) => b.boolval,
                        _ => read_only,
                    };
                }
            }
        }
    }
    read_only
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(sql: &str) -> bool {
        let c = classify(sql);
        c.write
            || c.functions
                .iter()
                .any(|f| is_configured_write(f, &["audit_log".to_string()]))
    }

    #[test]
    fn writes() {
        for sql in [
            "INSERT INTO t VALUES (1)",
            "UPDATE t SET a = 1",
            "DELETE FROM t",
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
            "COPY t FROM STDIN",
            "TRUNCATE t",
            "CREATE TABLE x (a int)",
            "ALTER TABLE x ADD COLUMN b int",
            "DROP TABLE x",
            "CREATE INDEX ON x (a)",
            "SELECT * FROM t FOR UPDATE",
            "SELECT * FROM (VALUES (nextval('s'))) v",
            "SELECT * FROM t FOR SHARE",
            "SELECT * FROM t FOR NO KEY UPDATE",
            "SELECT * FROM t FOR KEY SHARE",
            "SELECT * INTO y FROM t",
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            "LOCK TABLE t",
            "LISTEN c",
            "NOTIFY c",
            "UNLISTEN *",
            "SELECT nextval('s')",
            "SELECT pg_catalog.setval('s', 1)",
            "SELECT pg_advisory_lock(1)",
            "SELECT pg_notify('c', 'x')",
            "SELECT lo_create(0)",
            "SELECT txid_current()",
            "SELECT audit_log('x')",
            "VACUUM t",
            "ANALYZE t",
            "PREPARE TRANSACTION 'x'",
            "COMMIT PREPARED 'x'",
            "SELECT 1; INSERT INTO t VALUES (1)",
            "SELEC broken",
            "EXPLAIN ANALYZE INSERT INTO t VALUES (1)",
            "SELECT * FROM (SELECT * FROM t FOR UPDATE) s",
            "SELECT * FROM (VALUES ((SELECT a FROM t FOR UPDATE))) v",
            "SELECT (ARRAY[1])[(SELECT a FROM t LIMIT 1 FOR SHARE)]",
            "DO $$ BEGIN END $$",
            "CALL p()",
        ] {
            assert!(w(sql), "should be a write: {sql}");
        }
    }

    #[test]
    fn reads() {
        for sql in [
            "SELECT 1",
            "SELECT * FROM t WHERE a = $1",
            "VALUES (1), (2)",
            "TABLE t",
            "SHOW search_path",
            "EXPLAIN SELECT * FROM t",
            "COPY t TO STDOUT",
            "COPY (SELECT 1) TO STDOUT",
            "SELECT random(), clock_timestamp(), gen_random_uuid(), pg_is_in_recovery(), now()",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "SELECT 1; SELECT 2",
        ] {
            assert!(!w(sql), "should be a read: {sql}");
        }
    }

    #[test]
    fn transactions_and_hints() {
        assert_eq!(classify("BEGIN").begins, Some(false));
        assert_eq!(classify("BEGIN READ ONLY").begins, Some(true));
        assert_eq!(
            classify("START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").begins,
            Some(true)
        );
        assert_eq!(classify("BEGIN READ WRITE").begins, Some(false));
        assert_eq!(
            classify("/* usher: role=primary */ SELECT 1").hint,
            Some(RoleHint::Primary)
        );
        assert_eq!(
            classify("SELECT /* usher: role=replica */ 1").hint,
            Some(RoleHint::Replica)
        );
        let set = classify("SET usher.role = 'primary'");
        assert_eq!(
            (set.set_role, set.only_usher_settings, set.write),
            (Some(RoleHint::Primary), true, false)
        );
        assert_eq!(classify("RESET usher.role").set_role, Some(RoleHint::Auto));
        assert_eq!(
            classify("/* usher: shard=2 */ SELECT 1").shard_hint,
            Some(ShardHint::Shard(2))
        );
        assert_eq!(
            classify("SELECT 1 /* usher: key='abc', role=replica */").shard_hint,
            Some(ShardHint::Key("abc".into()))
        );
        assert_eq!(
            classify("SET usher.shard = 3").set_shard,
            Some(Some(ShardHint::Shard(3)))
        );
        assert_eq!(
            classify("SET usher.sharding_key = '42'").set_shard,
            Some(Some(ShardHint::Key("42".into())))
        );
        assert_eq!(classify("RESET usher.shard").set_shard, Some(None));
        assert_eq!(
            classify("SELECT my_fn(1)").functions,
            vec!["my_fn".to_string()]
        );
    }
}
