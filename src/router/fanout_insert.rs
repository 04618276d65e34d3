//! A multi-row `INSERT ... VALUES` whose rows belong to different shards, split into one
//! INSERT per shard holding that shard's rows in their order. Column defaults that one
//! database evaluates once per transaction (`DEFAULT now()`) are written into each shard's
//! statement as the same constant (see `router::clock`), so every row gets the value one
//! database would give it; defaults that would differ per shard (sequences, identity
//! columns, user-defined functions) are refused, named. Bind parameters keep their numbers:
//! those only other shards' rows use are sent as NULL typed text.

use std::collections::BTreeSet;

use pg_query::protobuf::{self, Node};
use pg_query::NodeEnum;

use super::fanout::Shape;

/// The shape of an INSERT: one that splits by row (`VALUES` rows, nothing that reads other
/// rows), or the construct that stops it.
pub fn shape(parsed: &protobuf::ParseResult, insert: &protobuf::InsertStmt) -> Option<Shape> {
    let values = match insert.select_stmt.as_deref().and_then(|n| n.node.as_ref()) {
        Some(NodeEnum::SelectStmt(s)) if !s.values_lists.is_empty() => s,
        _ => return None,
    };
    if values.with_clause.is_some() {
        return Some(Shape::Refused("WITH (common table expressions)".into()));
    }
    if let Some(construct) = super::fanout_write::refused(parsed, insert.with_clause.is_some()) {
        return Some(Shape::Refused(construct));
    }
    let tree = super::walk::tree(parsed);
    if super::walk::nodes(&tree)
        .iter()
        .any(|n| n.kind == "SetToDefault")
    {
        return Some(Shape::Refused(
            "DEFAULT in a VALUES row (give the value, or leave the column out)".into(),
        ));
    }
    Some(Shape::Insert)
}

/// A column default, as the catalog shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDefault {
    /// The column.
    pub column: String,
    /// `pg_get_expr` of its default (None for an identity column).
    pub expr: Option<String>,
    /// It is an identity column (`GENERATED ... AS IDENTITY`).
    pub identity: bool,
}

/// One shard's INSERT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInsert {
    /// Its text.
    pub sql: String,
    /// Parameters (1-based) only other shards' rows use: sent as NULL.
    pub unused: Vec<usize>,
}

/// The INSERT `sql` with every row kept and the `pinned` defaults added: what each copy of
/// a global table is given.
pub fn with_defaults(sql: &str, pinned: &[(String, Node)]) -> Result<String, String> {
    let rows = pg_query::parse(sql, pg_query::ParserOptions::default())
        .ok()
        .and_then(|p| {
            let stmt = p
                .protobuf
                .stmts
                .first()?
                .stmt
                .as_ref()?
                .node
                .as_ref()?
                .clone();
            let NodeEnum::InsertStmt(i) = stmt else {
                return None;
            };
            match i.select_stmt.as_deref()?.node.as_ref()? {
                NodeEnum::SelectStmt(s) => Some(s.values_lists.len()),
                _ => None,
            }
        })
        .ok_or("an INSERT without VALUES")?;
    Ok(for_shard(sql, &vec![0; rows], 0, pinned)?.sql)
}

/// The table an INSERT writes (schema, name), when `sql` is one INSERT.
pub fn insert_table(sql: &str) -> Option<(Option<String>, String)> {
    let parsed = pg_query::parse(sql, pg_query::ParserOptions::default()).ok()?;
    let stmt = parsed
        .protobuf
        .stmts
        .first()?
        .stmt
        .as_ref()?
        .node
        .as_ref()?;
    let NodeEnum::InsertStmt(i) = stmt else {
        return None;
    };
    let r = i.relation.as_ref()?;
    Some((
        (!r.schemaname.is_empty()).then(|| r.schemaname.clone()),
        r.relname.clone(),
    ))
}

/// The clock defaults (`now()`, `CURRENT_TIMESTAMP`, ...) the INSERT `sql` leaves out,
/// pinned to `at`: what a one-shard INSERT of a pipeline across shards is given so that its
/// rows get the pipeline's one transaction time, as on one database. Other defaults
/// (sequences, identity, functions) run on the row's shard as for any one-shard INSERT.
pub fn pin_clock_defaults(
    sql: &str,
    defaults: &[ColumnDefault],
    at: &str,
) -> Result<Vec<(String, Node)>, String> {
    let Some(listed) = listed_columns(sql)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for d in defaults {
        let Some(expr) = &d.expr else { continue };
        if listed.contains(&d.column) {
            continue;
        }
        let Some(value) = pinned_clock(&d.column, expr, at)? else {
            continue;
        };
        if listed.is_empty() {
            return Err(format!(
                "an INSERT without a column list into a table whose column {} defaults to the clock (list the columns)",
                d.column
            ));
        }
        out.push((d.column.clone(), value));
    }
    Ok(out)
}

/// The columns an INSERT leaves to their defaults that each shard must be given as one
/// value, and the functions those defaults call.
#[derive(Debug, Clone, Default)]
pub struct Defaults {
    /// Columns added to every row, with the pinned default.
    pub columns: Vec<(String, Node)>,
    /// Functions the defaults the INSERT uses call (a VOLATILE user-defined one is refused).
    pub functions: Vec<String>,
}

/// What the INSERT `sql` leaves to the defaults `defaults`: those one database evaluates
/// once per transaction, pinned to the time `at`; an error names a default that would differ
/// from shard to shard.
pub fn pin_defaults(sql: &str, defaults: &[ColumnDefault], at: &str) -> Result<Defaults, String> {
    let listed = listed_columns(sql)?.ok_or("a statement that is not one INSERT")?;
    if listed.is_empty() {
        // Which columns the rows leave to their defaults would take the table's column
        // order, and each shard's statement a column list of its own.
        return Err("an INSERT without a column list (list the columns)".into());
    }
    pinned_defaults(defaults, &listed, at)
}

/// The column list of the INSERT `sql` (empty when it has none); `None` when `sql` is not
/// one INSERT.
fn listed_columns(sql: &str) -> Result<Option<Vec<String>>, String> {
    let parsed = pg_query::parse(sql, pg_query::ParserOptions::default())
        .map_err(|e| format!("a statement usher could not parse ({e})"))?;
    let Some(NodeEnum::InsertStmt(insert)) = parsed
        .protobuf
        .stmts
        .first()
        .and_then(|r| r.stmt.as_ref())
        .and_then(|n| n.node.as_ref())
    else {
        return Ok(None);
    };
    Ok(Some(
        insert
            .cols
            .iter()
            .filter_map(|c| match &c.node {
                Some(NodeEnum::ResTarget(t)) => Some(t.name.clone()),
                _ => None,
            })
            .collect(),
    ))
}

/// Column `column`'s default `expr` with its clock calls pinned to `at`, as an expression;
/// `None` when it reads no clock.
fn pinned_clock(column: &str, expr: &str, at: &str) -> Result<Option<Node>, String> {
    let Some(pinned) = super::clock::pin(&format!("SELECT {expr}"), at)? else {
        return Ok(None);
    };
    let tree = pg_query::parse(&pinned, pg_query::ParserOptions::default())
        .map_err(|e| format!("column {column}'s default {expr} ({e})"))?;
    first_target(&tree.protobuf)
        .map(Some)
        .ok_or_else(|| format!("column {column}'s default {expr}"))
}

/// The INSERT `sql` for `shard`, whose rows are those `rows` (the shard of each VALUES row,
/// in order) assigns to it, with the `pinned` defaults added to each row. `sql` already has
/// its own clock calls pinned.
pub fn for_shard(
    sql: &str,
    rows: &[usize],
    shard: usize,
    pinned: &[(String, Node)],
) -> Result<ShardInsert, String> {
    let parsed = pg_query::parse(sql, pg_query::ParserOptions::default())
        .map_err(|e| format!("a statement usher could not parse ({e})"))?;
    let mut tree = parsed.protobuf;
    let Some(NodeEnum::InsertStmt(insert)) = tree
        .stmts
        .first_mut()
        .and_then(|r| r.stmt.as_mut())
        .and_then(|n| n.node.as_mut())
    else {
        return Err("a statement that is not one INSERT".into());
    };
    // Parameters used outside the VALUES rows stay with every shard.
    let outside = {
        let mut copy = (**insert).clone();
        copy.select_stmt = None;
        params(&NodeEnum::InsertStmt(Box::new(copy)))
    };
    let Some(NodeEnum::SelectStmt(values)) = insert
        .select_stmt
        .as_deref_mut()
        .and_then(|n| n.node.as_mut())
    else {
        return Err("an INSERT without VALUES".into());
    };
    if values.values_lists.len() != rows.len() {
        return Err("VALUES rows usher could not count".into());
    }
    let (mut kept, mut dropped) = (BTreeSet::new(), BTreeSet::new());
    let all = std::mem::take(&mut values.values_lists);
    for (row, owner) in all.into_iter().zip(rows) {
        let used = row.node.as_ref().map(params).unwrap_or_default();
        if *owner == shard {
            kept.extend(used);
            values.values_lists.push(row);
        } else {
            dropped.extend(used);
        }
    }
    for (column, expr) in pinned {
        insert.cols.push(Node {
            node: Some(NodeEnum::ResTarget(Box::new(protobuf::ResTarget {
                name: column.clone(),
                location: -1,
                ..Default::default()
            }))),
        });
        for row in &mut values.values_lists {
            if let Some(NodeEnum::List(items)) = row.node.as_mut() {
                items.items.push(expr.clone());
            }
        }
    }
    let sql = pg_query::deparse(&tree, pg_query::DeparseOptions::default())
        .map_err(|e| format!("an INSERT usher could not write for one shard ({e})"))?;
    let unused = dropped
        .difference(&kept)
        .filter(|p| !outside.contains(p))
        .copied()
        .collect();
    Ok(ShardInsert { sql, unused })
}

/// The columns left out of an INSERT whose defaults one database evaluates once per
/// transaction, with the default pinned to `at`; an error names a default that would differ
/// from shard to shard.
fn pinned_defaults(
    defaults: &[ColumnDefault],
    listed: &[String],
    at: &str,
) -> Result<Defaults, String> {
    let mut out = Defaults::default();
    for d in defaults {
        if listed.iter().any(|c| c == &d.column) {
            continue;
        }
        let Some(expr) = &d.expr else {
            return Err(format!(
                "identity column {} left to its default (each shard has its own sequence)",
                d.column
            ));
        };
        let select = format!("SELECT {expr}");
        let class = super::classify::classify(&select);
        let parsed = pg_query::parse(&select, pg_query::ParserOptions::default())
            .map_err(|e| format!("column {}'s default {expr} ({e})", d.column))?;
        if let Some(construct) = super::fanout_write::refused(&parsed.protobuf, false) {
            return Err(format!("column {}'s default {expr}: {construct}", d.column));
        }
        for f in class.functions {
            if !out.functions.contains(&f) {
                out.functions.push(f);
            }
        }
        let Some(value) = pinned_clock(&d.column, expr, at)? else {
            continue;
        };
        out.columns.push((d.column.clone(), value));
    }
    Ok(out)
}

/// The expression of `SELECT expr`.
fn first_target(tree: &protobuf::ParseResult) -> Option<Node> {
    let Some(NodeEnum::SelectStmt(s)) = tree
        .stmts
        .first()
        .and_then(|r| r.stmt.as_ref())
        .and_then(|n| n.node.as_ref())
    else {
        return None;
    };
    match s.target_list.first().and_then(|t| t.node.as_ref()) {
        Some(NodeEnum::ResTarget(r)) => r.val.as_deref().cloned(),
        _ => None,
    }
}

/// The parameter numbers under `node`.
fn params(node: &NodeEnum) -> BTreeSet<usize> {
    let tree = serde_json::to_value(Node {
        node: Some(node.clone()),
    })
    .unwrap_or_default();
    super::walk::nodes(&tree)
        .iter()
        .filter(|n| n.kind == "ParamRef")
        .filter_map(|n| usize::try_from(n.int("number")?).ok())
        .collect()
}

/// Whether the INSERT `sql` returns rows.
pub fn returns_rows(sql: &str) -> bool {
    pg_query::parse(sql, pg_query::ParserOptions::default()).is_ok_and(|p| {
        p.protobuf.stmts.first().is_some_and(|r| {
            matches!(
                r.stmt.as_ref().and_then(|n| n.node.as_ref()),
                Some(NodeEnum::InsertStmt(i)) if i.returning_clause.as_ref().is_some_and(|c| !c.exprs.is_empty())
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: &str = "2026-12-04 03:35:43.123456+00";

    fn default(column: &str, expr: &str) -> ColumnDefault {
        ColumnDefault {
            column: column.into(),
            expr: Some(expr.into()),
            identity: false,
        }
    }

    #[test]
    fn rows_go_to_their_shards_with_one_clock() {
        let sql =
            "INSERT INTO families (id, name) VALUES (1, 'a'), (2, 'b'), (3, 'c') RETURNING id";
        let defaults = [
            default("created_at", "now()"),
            default("token", "gen_random_uuid()"),
            default("name", "'x'::text"),
        ];
        let pinned = pin_defaults(sql, &defaults, AT).unwrap();
        assert_eq!(
            pinned.functions,
            vec!["now".to_string(), "gen_random_uuid".to_string()]
        );
        let s0 = for_shard(sql, &[0, 1, 0], 0, &pinned.columns).unwrap();
        assert_eq!(
            s0.sql,
            "INSERT INTO families (id, name, created_at) VALUES (1, 'a', '2026-12-04 03:35:43.123456+00'::timestamp with time zone), (3, 'c', '2026-12-04 03:35:43.123456+00'::timestamp with time zone) RETURNING id"
        );
        let s1 = for_shard(sql, &[0, 1, 0], 1, &[]).unwrap();
        assert_eq!(
            s1.sql,
            "INSERT INTO families (id, name) VALUES (2, 'b') RETURNING id"
        );
        assert!(returns_rows(sql));
        assert!(!returns_rows("INSERT INTO t (a) VALUES (1)"));
    }

    #[test]
    fn parameters_of_other_shards_rows_are_unused() {
        let sql = "INSERT INTO t (k, v) VALUES ($1, $2), ($3, $4), ($5, $2) ON CONFLICT (k) DO UPDATE SET v = $6";
        let s = for_shard(sql, &[0, 1, 0], 0, &[]).unwrap();
        assert_eq!(s.unused, vec![3, 4]);
        let s = for_shard(sql, &[0, 1, 0], 1, &[]).unwrap();
        assert_eq!(s.unused, vec![1, 2, 5], "$2 is only in other shards' rows");
        assert!(
            s.sql.contains("($3, $4)") && !s.sql.contains("$1"),
            "{}",
            s.sql
        );
    }

    #[test]
    fn defaults_that_differ_per_shard_are_refused_named() {
        let sql = "INSERT INTO t (k) VALUES (1), (2)";
        for (d, named) in [
            (default("id", "nextval('t_id_seq'::regclass)"), "nextval()"),
            (
                ColumnDefault {
                    column: "id".into(),
                    expr: None,
                    identity: true,
                },
                "identity column id",
            ),
        ] {
            let e = pin_defaults(sql, &[d], AT).unwrap_err();
            assert!(e.contains(named), "{e}");
        }
        // A default the statement does not use plays no part.
        let listed = "INSERT INTO t (k, id) VALUES (1, 2)";
        assert!(pin_defaults(listed, &[default("id", "nextval('s')")], AT).is_ok());
    }

    #[test]
    fn shapes() {
        let shape_of = |sql: &str| {
            let p = pg_query::parse(sql, pg_query::ParserOptions::default()).unwrap();
            let Some(NodeEnum::InsertStmt(i)) = p.protobuf.stmts[0]
                .stmt
                .as_ref()
                .and_then(|n| n.node.clone())
            else {
                panic!("{sql}");
            };
            shape(&p.protobuf, &i)
        };
        assert_eq!(
            shape_of("INSERT INTO t (a) VALUES (1), (2)"),
            Some(Shape::Insert)
        );
        assert_eq!(shape_of("INSERT INTO t (a) SELECT 1"), None);
        for (sql, named) in [
            ("INSERT INTO t (a, b) VALUES (1, DEFAULT)", "DEFAULT"),
            ("INSERT INTO t (a) VALUES ((SELECT 1))", "subqueries"),
            ("INSERT INTO t (a) VALUES (nextval('s'))", "nextval()"),
            (
                "INSERT INTO t (a) VALUES (1) RETURNING (SELECT 2)",
                "subqueries",
            ),
            ("WITH x AS (SELECT 1) INSERT INTO t (a) VALUES (1)", "WITH"),
        ] {
            match shape_of(sql) {
                Some(Shape::Refused(c)) => assert!(c.contains(named), "{sql}: {c}"),
                other => panic!("{sql}: {other:?}"),
            }
        }
    }
}
