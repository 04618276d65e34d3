//! The shape of a write that runs on several shards: one UPDATE or DELETE without a key (or
//! with keys on several shards) runs on each shard concerned, inside one distributed
//! transaction, and is exact when what it computes on a shard depends only on that shard's
//! rows. Read off the parse tree when the statement is classified. The transaction's clock
//! (`now()`, `CURRENT_DATE`, ...) is pinned to one constant before the statement is sent (see
//! `router::clock`); what would still compute a different value on each shard than one
//! database computes once (sequences, the transaction id) or reads rows of other shards
//! (subqueries, WITH) is named, so the statement is refused with that name instead of run.

use pg_query::protobuf;
use pg_query::NodeEnum;

use super::fanout::Shape;

/// Functions whose value one database computes once (per transaction, or from one sequence)
/// and each shard computes for itself: the rows of one statement would get other values.
const PER_TRANSACTION: &[(&str, &str)] = &[
    (
        "txid_current",
        "txid_current() (each shard has its own transaction ids)",
    ),
    (
        "txid_current_if_assigned",
        "txid_current_if_assigned() (each shard has its own transaction ids)",
    ),
    (
        "pg_current_xact_id",
        "pg_current_xact_id() (each shard has its own transaction ids)",
    ),
    (
        "pg_current_xact_id_if_assigned",
        "pg_current_xact_id_if_assigned() (each shard has its own transaction ids)",
    ),
    ("nextval", "nextval() (each shard has its own sequences)"),
    ("currval", "currval() (each shard has its own sequences)"),
    ("lastval", "lastval() (each shard has its own sequences)"),
    ("setval", "setval() (each shard has its own sequences)"),
];

/// The shape of the single statement `stmt` (parsed as `parsed`) when it is an UPDATE or a
/// DELETE; `None` for any other statement.
pub fn shape(parsed: &protobuf::ParseResult, stmt: &NodeEnum) -> Option<Shape> {
    let with = match stmt {
        NodeEnum::UpdateStmt(u) => u.with_clause.is_some(),
        NodeEnum::DeleteStmt(d) => d.with_clause.is_some(),
        NodeEnum::InsertStmt(i) => return super::fanout_insert::shape(parsed, i),
        NodeEnum::CopyStmt(c) => return super::fanout_copy::shape(c),
        _ => return None,
    };
    Some(match refused(parsed, with) {
        Some(construct) => Shape::Refused(construct),
        None => Shape::Write,
    })
}

/// What keeps the statement from running exactly on each shard, named.
pub fn refused(parsed: &protobuf::ParseResult, with: bool) -> Option<String> {
    if with {
        return Some("WITH (common table expressions)".into());
    }
    let tree = super::walk::tree(parsed);
    let mut found = None;
    super::walk::each(&tree, &mut |n| {
        if found.is_some() {
            return;
        }
        found = match n.kind {
            "SubLink" | "RangeSubselect" => Some("subqueries".to_string()),
            "CurrentOfExpr" => Some("WHERE CURRENT OF".into()),
            "FuncCall" => {
                let name = match n.func_name().as_slice() {
                    [name] | ["pg_catalog", name] => name.to_ascii_lowercase(),
                    _ => return,
                };
                PER_TRANSACTION
                    .iter()
                    .find(|(f, _)| *f == name)
                    .map(|(_, construct)| (*construct).to_string())
            }
            _ => None,
        };
    });
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(sql: &str) -> Option<Shape> {
        let parsed = pg_query::parse(sql, pg_query::ParserOptions::default()).unwrap();
        let stmt = parsed.protobuf.stmts[0]
            .stmt
            .as_ref()
            .and_then(|s| s.node.clone())
            .unwrap();
        shape(&parsed.protobuf, &stmt)
    }

    fn refusal(sql: &str) -> String {
        match of(sql) {
            Some(Shape::Refused(c)) => c,
            other => panic!("{sql}: {other:?}"),
        }
    }

    #[test]
    fn updates_and_deletes_that_run_per_shard() {
        for sql in [
            "UPDATE children SET grade = grade + 1",
            "UPDATE children SET name = upper(name) WHERE grade > 3 RETURNING id, name",
            "DELETE FROM user_progress WHERE score < 10",
            "DELETE FROM user_progress p USING lessons l WHERE l.id = p.lesson_id AND l.grade = 1",
            "UPDATE user_progress p SET score = 0 FROM lessons l WHERE l.id = p.lesson_id",
            "UPDATE children SET deleted_at = '2026-01-01' WHERE family_id IN ($1, $2)",
            "UPDATE children SET id = gen_random_uuid()",
            "UPDATE t SET u = current_user",
            "UPDATE children SET deleted_at = now() WHERE deleted_at < CURRENT_DATE",
        ] {
            assert_eq!(of(sql), Some(Shape::Write), "{sql}");
        }
        assert_eq!(of("SELECT 1"), None);
        assert_eq!(of("INSERT INTO t SELECT 1"), None);
        assert_eq!(of("INSERT INTO t VALUES (1), (2)"), Some(Shape::Insert));
    }

    #[test]
    fn what_one_database_computes_once_is_refused_named() {
        for (sql, named) in [
            ("UPDATE t SET n = pg_catalog.NEXTVAL('s')", "nextval()"),
            ("UPDATE t SET n = nextval('s')", "nextval()"),
            ("UPDATE t SET x = txid_current()", "transaction ids"),
            (
                "DELETE FROM children WHERE id IN (SELECT child_id FROM user_progress)",
                "subqueries",
            ),
            ("WITH x AS (SELECT 1) UPDATE children SET grade = 1", "WITH"),
            ("DELETE FROM t WHERE CURRENT OF c", "CURRENT OF"),
            ("UPDATE t SET a = 1 RETURNING nextval('s')", "nextval()"),
            ("UPDATE t SET a = 1 RETURNING (SELECT 1)", "subqueries"),
        ] {
            let got = refusal(sql);
            assert!(got.contains(named), "{sql}: {got}");
        }
    }
}
