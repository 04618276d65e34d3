//! Expressions over aggregates across shards (`round(avg(score), 2)`, `count(*) * 2`,
//! `coalesce(max(x), 0)`), without GROUP BY: each shard computes only the aggregate calls
//! (which combine exactly, see `fanout_aggregate`), usher combines them into the whole's
//! values, and one shard then evaluates the client's select list over those values: the
//! *finishing statement*, the select list with every aggregate call replaced by a parameter
//! typed as that aggregate's result, each column named as Postgres names the original one.
//! So the expression is computed by Postgres itself, with its types, rounding and errors
//! (`sum(x) / count(*)` over no rows is a division by zero as on one database), and no
//! shard evaluates it over its own partial values.

use pg_query::protobuf::{self, AExprKind, MinMaxOp, SqlValueFunctionOp};
use pg_query::NodeEnum;

use super::fanout::Aggregate;
use super::fanout_aggregate::{aggregate_of, AGGREGATES};

/// A select list of expressions over aggregates, split into what the shards compute and
/// what one shard evaluates afterwards.
#[derive(Debug, Clone)]
pub struct Finish {
    /// The aggregate calls the shards compute, in order (parameter `$k` is the k-th).
    pub aggregates: Vec<Aggregate>,
    /// The statement the shards run: the aggregate calls as the select list, without
    /// ORDER BY, LIMIT or OFFSET (which apply to the one finished row).
    pub shard_tree: protobuf::ParseResult,
    /// The finishing statement, over `$1..$n`.
    pub sql: String,
    /// The aggregate calls' locations in the client's text.
    pub locations: Vec<i32>,
}

/// The finishing split of the SELECT `s` (no GROUP BY) whose select list has aggregate
/// calls inside expressions; `Err` names what keeps it from being computed exactly.
pub fn finish_of(
    parsed: &protobuf::ParseResult,
    s: &protobuf::SelectStmt,
) -> Result<Finish, String> {
    if s.having_clause.is_some() {
        return Err("HAVING".into());
    }
    if !s.distinct_clause.is_empty() {
        return Err("DISTINCT".into());
    }
    let mut calls: Vec<(Aggregate, protobuf::FuncCall)> = Vec::new();
    let mut finished = Vec::with_capacity(s.target_list.len());
    for t in &s.target_list {
        let Some(NodeEnum::ResTarget(r)) = t.node.as_ref() else {
            return Err("a select-list item".into());
        };
        let Some(val) = r.val.as_deref() else {
            return Err("a select-list item".into());
        };
        let name = if r.name.is_empty() {
            colname(val.node.as_ref())
        } else {
            r.name.clone()
        };
        let mut expr = val.clone();
        over_parameters(&mut expr, &mut calls)?;
        finished.push(protobuf::Node {
            node: Some(NodeEnum::ResTarget(Box::new(protobuf::ResTarget {
                name,
                val: Some(Box::new(expr)),
                location: -1,
                ..Default::default()
            }))),
        });
    }
    if calls.is_empty() {
        return Err("a select list without aggregates".into());
    }
    let statement = |s: protobuf::SelectStmt| protobuf::ParseResult {
        version: parsed.version,
        stmts: vec![protobuf::RawStmt {
            stmt: Some(Box::new(protobuf::Node {
                node: Some(NodeEnum::SelectStmt(Box::new(s))),
            })),
            stmt_location: 0,
            stmt_len: 0,
        }],
    };
    let finishing = statement(protobuf::SelectStmt {
        target_list: finished,
        op: protobuf::SetOperation::SetopNone as i32,
        limit_option: protobuf::LimitOption::Default as i32,
        ..Default::default()
    });
    let sql = pg_query::deparse(&finishing, pg_query::DeparseOptions::default())
        .map_err(|e| format!("an expression over aggregates (not written back: {e})"))?;
    let shard_targets = calls
        .iter()
        .map(|(_, f)| protobuf::Node {
            node: Some(NodeEnum::ResTarget(Box::new(protobuf::ResTarget {
                val: Some(Box::new(protobuf::Node {
                    node: Some(NodeEnum::FuncCall(Box::new(f.clone()))),
                })),
                location: -1,
                ..Default::default()
            }))),
        })
        .collect();
    // The shards' statement: the client's, its select list the aggregate calls; ORDER BY,
    // LIMIT and OFFSET apply to the one finished row instead.
    let mut shard = s.clone();
    shard.target_list = shard_targets;
    shard.sort_clause.clear();
    shard.limit_count = None;
    shard.limit_offset = None;
    shard.limit_option = protobuf::LimitOption::Default as i32;
    Ok(Finish {
        aggregates: calls.iter().map(|(k, _)| *k).collect(),
        shard_tree: statement(shard),
        sql,
        locations: calls.iter().map(|(_, f)| f.location).collect(),
    })
}

/// What a rewrite does with one node of an expression.
pub enum Step {
    /// Put this in its place (its children are not visited).
    Replace(Box<NodeEnum>),
    /// Keep it and rewrite its children.
    Descend,
    /// The expression cannot be rewritten: this construct is why.
    Fail(String),
}

/// Rewrites the expression `node` with `f`, parents before children, through the kinds of
/// node a select list, HAVING or ORDER BY over aggregates is made of; any other kind is
/// named as the reason it cannot be rewritten.
pub fn rewrite(
    node: &mut protobuf::Node,
    f: &mut dyn FnMut(&NodeEnum) -> Step,
) -> Result<(), String> {
    if let Some(n) = node.node.as_ref() {
        match f(n) {
            Step::Replace(r) => {
                node.node = Some(*r);
                return Ok(());
            }
            Step::Fail(why) => return Err(why),
            Step::Descend => {}
        }
    }
    let mut list = |items: &mut [protobuf::Node]| -> Result<(), String> {
        items.iter_mut().try_for_each(|n| rewrite(n, f))
    };
    match node.node.as_mut() {
        Some(NodeEnum::FuncCall(c)) => {
            c.args.iter_mut().try_for_each(|n| rewrite(n, f))?;
            one(&mut c.agg_filter, f)?;
            c.agg_order.iter_mut().try_for_each(|n| rewrite(n, f))
        }
        Some(NodeEnum::SortBy(b)) => one(&mut b.node, f),
        Some(NodeEnum::AExpr(e)) => {
            let mut both: Vec<&mut protobuf::Node> = Vec::new();
            both.extend(e.lexpr.as_deref_mut());
            both.extend(e.rexpr.as_deref_mut());
            both.into_iter().try_for_each(|n| rewrite(n, f))
        }
        Some(NodeEnum::TypeCast(t)) => one(&mut t.arg, f),
        Some(NodeEnum::CollateClause(c)) => one(&mut c.arg, f),
        Some(NodeEnum::NullTest(n)) => one(&mut n.arg, f),
        Some(NodeEnum::BooleanTest(b)) => one(&mut b.arg, f),
        Some(NodeEnum::AIndirection(i)) => {
            one(&mut i.arg, f)?;
            i.indirection.iter_mut().try_for_each(|n| rewrite(n, f))
        }
        Some(NodeEnum::AIndices(i)) => {
            one(&mut i.lidx, f)?;
            one(&mut i.uidx, f)
        }
        Some(NodeEnum::BoolExpr(b)) => list(&mut b.args),
        Some(NodeEnum::CoalesceExpr(c)) => list(&mut c.args),
        Some(NodeEnum::MinMaxExpr(m)) => list(&mut m.args),
        Some(NodeEnum::RowExpr(r)) => list(&mut r.args),
        Some(NodeEnum::AArrayExpr(a)) => list(&mut a.elements),
        Some(NodeEnum::List(l)) => list(&mut l.items),
        Some(NodeEnum::CaseExpr(c)) => {
            one(&mut c.arg, f)?;
            c.args.iter_mut().try_for_each(|n| rewrite(n, f))?;
            one(&mut c.defresult, f)
        }
        Some(NodeEnum::CaseWhen(w)) => {
            one(&mut w.expr, f)?;
            one(&mut w.result, f)
        }
        Some(
            NodeEnum::AConst(_)
            | NodeEnum::SqlvalueFunction(_)
            | NodeEnum::String(_)
            | NodeEnum::ColumnRef(_)
            | NodeEnum::ParamRef(_),
        ) => Ok(()),
        _ => Err("an expression over aggregates of a kind usher does not rewrite".into()),
    }
}

fn one(
    n: &mut Option<Box<protobuf::Node>>,
    f: &mut dyn FnMut(&NodeEnum) -> Step,
) -> Result<(), String> {
    match n {
        Some(n) => rewrite(n, f),
        None => Ok(()),
    }
}

/// What to do with an aggregate call or window met in an expression: `None` for a call
/// of no aggregate, else the aggregate it is (or why it does not combine).
pub fn aggregate_call(f: &protobuf::FuncCall) -> Option<Result<Aggregate, String>> {
    let name = f
        .funcname
        .iter()
        .filter_map(|n| match &n.node {
            Some(NodeEnum::String(s)) => Some(s.sval.to_ascii_lowercase()),
            _ => None,
        })
        .next_back()
        .unwrap_or_default();
    if f.over.is_some() {
        return Some(Err(format!("window function {name}()")));
    }
    if !AGGREGATES.contains(&name.as_str()) {
        return None;
    }
    Some(aggregate_of(f).ok_or_else(|| format!("aggregate function {name}()")))
}

/// The aggregate calls of `node` replaced by the next parameters (recorded in `calls`).
fn over_parameters(
    node: &mut protobuf::Node,
    calls: &mut Vec<(Aggregate, protobuf::FuncCall)>,
) -> Result<(), String> {
    rewrite(node, &mut |n| match n {
        NodeEnum::FuncCall(f) => match aggregate_call(f) {
            None => Step::Descend,
            Some(Err(why)) => Step::Fail(why),
            Some(Ok(kind)) => {
                calls.push((kind, (**f).clone()));
                match i32::try_from(calls.len()) {
                    Ok(number) => Step::Replace(Box::new(NodeEnum::ParamRef(protobuf::ParamRef {
                        number,
                        location: -1,
                    }))),
                    Err(_) => Step::Fail("too many aggregates".into()),
                }
            }
        },
        NodeEnum::ColumnRef(_) => Step::Fail("a column outside an aggregate function".into()),
        NodeEnum::ParamRef(_) => Step::Fail("a parameter outside an aggregate function".into()),
        NodeEnum::SubLink(_) => Step::Fail("subqueries".into()),
        _ => Step::Descend,
    })
}

/// The name Postgres gives a select-list item without an alias (`FigureColname`).
pub fn colname(node: Option<&NodeEnum>) -> String {
    named(node)
        .map(|(n, _)| n)
        .unwrap_or_else(|| "?column?".into())
}

/// A name and its strength (2: a name of the value itself; 1: a fallback such as a cast's
/// type), as `FigureColnameInternal` finds it.
fn named(node: Option<&NodeEnum>) -> Option<(String, u8)> {
    let last = |names: &[protobuf::Node]| -> Option<String> {
        names.iter().rev().find_map(|n| match &n.node {
            Some(NodeEnum::String(s)) => Some(s.sval.clone()),
            _ => None,
        })
    };
    match node? {
        NodeEnum::ColumnRef(c) => match c.fields.last().and_then(|f| f.node.as_ref()) {
            Some(NodeEnum::String(s)) => Some((s.sval.clone(), 2)),
            _ => None,
        },
        NodeEnum::AIndirection(i) => match i.indirection.last().and_then(|f| f.node.as_ref()) {
            Some(NodeEnum::String(s)) => Some((s.sval.clone(), 2)),
            _ => named(i.arg.as_deref().and_then(|a| a.node.as_ref())),
        },
        NodeEnum::FuncCall(f) => last(&f.funcname).map(|n| (n, 2)),
        NodeEnum::AExpr(e) if e.kind == AExprKind::AexprNullif as i32 => Some(("nullif".into(), 2)),
        NodeEnum::TypeCast(t) => {
            let inner = named(t.arg.as_deref().and_then(|a| a.node.as_ref()));
            match inner {
                Some((n, 2)) => Some((n, 2)),
                other => t
                    .type_name
                    .as_ref()
                    .and_then(|tn| last(&tn.names))
                    .map(|n| (n, 1))
                    .or(other),
            }
        }
        NodeEnum::CollateClause(c) => named(c.arg.as_deref().and_then(|a| a.node.as_ref())),
        NodeEnum::GroupingFunc(_) => Some(("grouping".into(), 2)),
        NodeEnum::CaseExpr(_) => Some(("case".into(), 1)),
        NodeEnum::AArrayExpr(_) => Some(("array".into(), 1)),
        NodeEnum::RowExpr(_) => Some(("row".into(), 1)),
        NodeEnum::CoalesceExpr(_) => Some(("coalesce".into(), 2)),
        NodeEnum::MinMaxExpr(m) => Some((
            if m.op == MinMaxOp::IsLeast as i32 {
                "least"
            } else {
                "greatest"
            }
            .into(),
            2,
        )),
        NodeEnum::SqlvalueFunction(f) => {
            use SqlValueFunctionOp::*;
            let name = match SqlValueFunctionOp::try_from(f.op).ok()? {
                SvfopCurrentDate => "current_date",
                SvfopCurrentTime | SvfopCurrentTimeN => "current_time",
                SvfopCurrentTimestamp | SvfopCurrentTimestampN => "current_timestamp",
                SvfopLocaltime | SvfopLocaltimeN => "localtime",
                SvfopLocaltimestamp | SvfopLocaltimestampN => "localtimestamp",
                SvfopCurrentRole => "current_role",
                SvfopCurrentUser => "current_user",
                SvfopUser => "user",
                SvfopSessionUser => "session_user",
                SvfopCurrentCatalog => "current_catalog",
                SvfopCurrentSchema => "current_schema",
                SqlvalueFunctionOpUndefined => return None,
            };
            Some((name.into(), 2))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(sql: &str) -> Result<Finish, String> {
        let (parsed, s) = crate::router::fanout::parse_select(sql);
        finish_of(&parsed, &s)
    }

    fn shard_sql(f: &Finish) -> String {
        pg_query::deparse(&f.shard_tree, pg_query::DeparseOptions::default()).unwrap()
    }

    #[test]
    fn aggregates_become_parameters_of_the_finishing_statement() {
        let f = of("SELECT round(avg(score), 2), count(*) * 2 AS twice, coalesce(max(x), 0) FROM p WHERE s = $1 ORDER BY 1 LIMIT 5").unwrap();
        assert_eq!(
            f.aggregates,
            vec![Aggregate::Avg, Aggregate::Count, Aggregate::Max]
        );
        assert_eq!(
            f.sql,
            "SELECT round($1, 2) AS round, $2 * 2 AS twice, COALESCE($3, 0) AS \"coalesce\""
        );
        assert_eq!(
            shard_sql(&f),
            "SELECT avg(score), count(*), max(x) FROM p WHERE s = $1"
        );
    }

    #[test]
    fn columns_are_named_as_postgres_names_them() {
        for (sql, name) in [
            ("SELECT count(*)::int FROM p", "count"),
            ("SELECT (count(*) + 1)::int FROM p", "int4"),
            ("SELECT count(*) + 1 FROM p", "?column?"),
            ("SELECT CASE WHEN count(*) > 0 THEN 1 END FROM p", "case"),
            ("SELECT greatest(max(a), 1) FROM p", "greatest"),
            ("SELECT nullif(count(*), 0) FROM p", "nullif"),
            ("SELECT count(*) > 0 FROM p", "?column?"),
        ] {
            let f = of(sql).unwrap();
            let parsed = pg_query::parse(&f.sql, pg_query::ParserOptions::default()).unwrap();
            let Some(NodeEnum::SelectStmt(s)) = parsed.protobuf.stmts[0]
                .stmt
                .as_ref()
                .and_then(|n| n.node.as_ref())
            else {
                panic!("{sql}");
            };
            let Some(NodeEnum::ResTarget(r)) = s.target_list[0].node.as_ref() else {
                panic!("{sql}");
            };
            assert_eq!(r.name, name, "{sql}");
        }
    }

    #[test]
    fn what_needs_more_than_the_aggregates_is_named() {
        for (sql, named) in [
            ("SELECT count(*) + x FROM p", "a column outside"),
            ("SELECT count(*) * $1 FROM p", "a parameter outside"),
            ("SELECT stddev(x) * 2 FROM p", "stddev()"),
            ("SELECT count(DISTINCT x) + 1 FROM p", "count()"),
            ("SELECT count(*) + (SELECT 1) FROM p", "subqueries"),
            ("SELECT count(*) + 1 FROM p HAVING count(*) > 1", "HAVING"),
            ("SELECT sum(x) OVER () + 1 FROM p", "window function sum()"),
        ] {
            let e = of(sql).unwrap_err();
            assert!(e.contains(named), "{sql}: {e}");
        }
    }
}
