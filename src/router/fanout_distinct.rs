//! Aggregates that ignore duplicates, across shards, without GROUP BY: `count(DISTINCT x)`,
//! `sum(DISTINCT x)`, `string_agg(DISTINCT s, ',')`, and min/max/bool_and/bool_or beside
//! them. Their result over all rows is their result over the distinct rows of the columns
//! they read, so the shards return those distinct rows (grouped by the columns), usher
//! combines equal ones as for any regrouping, and one shard runs the client's select list,
//! each aggregate as written, over them (see `fanout_group_finish`).

use std::sync::Arc;

use pg_query::protobuf;
use pg_query::NodeEnum;

use super::fanout::same_expr;
use super::fanout_finish::{colname, rewrite, Step};
use super::fanout_group_finish::{grouped_shard_tree, GroupFinish, Template};

/// Aggregates whose result over a set of rows is their result over its distinct rows.
const DUPLICATE_BLIND: &[&str] = &["min", "max", "bool_and", "bool_or", "every"];

/// A SELECT without GROUP BY whose aggregates all ignore duplicates (`count(DISTINCT x)`,
/// `sum(DISTINCT x)`, `min(x)`, ...): the shards return the distinct values of the columns
/// those aggregates read (grouped by them), usher combines equal ones, and Postgres runs
/// the client's select list over them, each aggregate as written. `combined` receives the
/// aggregate calls' locations.
pub fn finish_distinct(
    parsed: &protobuf::ParseResult,
    s: &protobuf::SelectStmt,
    combined: &mut Vec<i32>,
) -> Result<GroupFinish, String> {
    if !s.group_clause.is_empty() || !s.distinct_clause.is_empty() {
        return Err("DISTINCT with GROUP BY".into());
    }
    let mut items: Vec<protobuf::Node> = Vec::new();
    let mut locations = Vec::new();
    let mut any_distinct = false;
    let mut pieces: Vec<protobuf::Node> = s
        .target_list
        .iter()
        .filter_map(|t| match t.node.as_ref() {
            Some(NodeEnum::ResTarget(r)) => r.val.as_deref().cloned(),
            _ => None,
        })
        .collect();
    pieces.extend(s.having_clause.as_deref().cloned());
    // Every aggregate ignores duplicates; columns appear only inside aggregates.
    for piece in &mut pieces {
        rewrite(piece, &mut |n| match n {
            NodeEnum::FuncCall(f) => {
                let name = f
                    .funcname
                    .last()
                    .and_then(|n| match &n.node {
                        Some(NodeEnum::String(s)) => Some(s.sval.to_ascii_lowercase()),
                        _ => None,
                    })
                    .unwrap_or_default();
                if f.over.is_some() {
                    return Step::Fail(format!("window function {name}()"));
                }
                if !super::fanout_aggregate::AGGREGATES.contains(&name.as_str()) {
                    return Step::Descend;
                }
                if !(f.agg_distinct || DUPLICATE_BLIND.contains(&name.as_str())) || f.agg_star {
                    return Step::Fail(format!("aggregate function {name}()"));
                }
                any_distinct |= f.agg_distinct;
                locations.push(f.location);
                let mut call = protobuf::Node {
                    node: Some(NodeEnum::FuncCall(f.clone())),
                };
                let found = rewrite(&mut call, &mut |m| match m {
                    NodeEnum::ColumnRef(_) => {
                        if !items
                            .iter()
                            .any(|i| i.node.as_ref().is_some_and(|i| same_expr(i, m)))
                        {
                            items.push(protobuf::Node {
                                node: Some(m.clone()),
                            });
                        }
                        Step::Descend
                    }
                    NodeEnum::SubLink(_) => Step::Fail("subqueries".into()),
                    _ => Step::Descend,
                });
                match found {
                    Ok(()) => Step::Replace(Box::new(NodeEnum::AConst(protobuf::AConst {
                        isnull: true,
                        val: None,
                        location: -1,
                    }))),
                    Err(why) => Step::Fail(why),
                }
            }
            NodeEnum::ColumnRef(_) => Step::Fail("a column outside an aggregate function".into()),
            NodeEnum::ParamRef(_) => Step::Fail("a parameter outside an aggregate function".into()),
            NodeEnum::SubLink(_) => Step::Fail("subqueries".into()),
            _ => Step::Descend,
        })?;
    }
    if !any_distinct || items.is_empty() {
        return Err("aggregates that neither combine nor ignore duplicates".into());
    }
    let window = |n: &Option<Box<protobuf::Node>>| match n.as_deref().and_then(|n| n.node.as_ref())
    {
        None | Some(NodeEnum::AConst(_)) => Ok(()),
        Some(_) => {
            Err("LIMIT or OFFSET other than a constant, with DISTINCT aggregates".to_string())
        }
    };
    window(&s.limit_count)?;
    window(&s.limit_offset)?;
    // The client's statement over the distinct rows: each aggregate as written, reading
    // the grouping columns.
    let column = |i: usize| {
        NodeEnum::ColumnRef(protobuf::ColumnRef {
            fields: vec![protobuf::Node {
                node: Some(NodeEnum::String(protobuf::String {
                    sval: format!("c{}", i + 1),
                })),
            }],
            location: -1,
        })
    };
    let over_columns = |node: &mut protobuf::Node| {
        rewrite(node, &mut |n| match items
            .iter()
            .position(|i| i.node.as_ref().is_some_and(|i| same_expr(i, n)))
        {
            Some(i) => Step::Replace(Box::new(column(i))),
            None => Step::Descend,
        })
    };
    let mut targets = s.target_list.clone();
    for t in &mut targets {
        if let Some(NodeEnum::ResTarget(r)) = t.node.as_mut() {
            if r.name.is_empty() {
                r.name = colname(r.val.as_deref().and_then(|v| v.node.as_ref()));
            }
            if let Some(v) = r.val.as_deref_mut() {
                over_columns(v)?;
            }
        }
    }
    let mut having = s.having_clause.clone();
    if let Some(h) = having.as_deref_mut() {
        over_columns(h)?;
    }
    let mut sort = s.sort_clause.clone();
    for item in &mut sort {
        over_columns(item)?;
    }
    let template = protobuf::SelectStmt {
        target_list: targets,
        where_clause: having,
        sort_clause: sort,
        limit_count: s.limit_count.clone(),
        limit_offset: s.limit_offset.clone(),
        limit_option: s.limit_option,
        op: protobuf::SetOperation::SetopNone as i32,
        ..Default::default()
    };
    // The shards: the distinct values of those columns.
    let shard_tree = grouped_shard_tree(parsed, s, items.clone(), items.len());
    combined.extend(locations);
    Ok(GroupFinish {
        columns: vec![None; items.len()],
        shard_tree,
        template: Template(Arc::new(template)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_aggregates_are_finished_over_distinct_rows() {
        let (parsed, s) = crate::router::fanout::parse_select(
            "SELECT count(DISTINCT child_id) AS kids, max(score) FILTER (WHERE status = 'done') + 1 FROM p WHERE x > 1",
        );
        let f = finish_distinct(&parsed, &s, &mut Vec::new()).unwrap();
        assert_eq!(f.columns, vec![None, None, None]);
        assert_eq!(
            pg_query::deparse(&f.shard_tree, pg_query::DeparseOptions::default()).unwrap(),
            "SELECT child_id, score, status FROM p WHERE x > 1 GROUP BY 1, 2, 3"
        );
        assert_eq!(
            f.template.sql_arrays(3).unwrap(),
            "SELECT count(DISTINCT c1) AS kids, max(c2) FILTER (WHERE c3 = 'done') + 1 AS \"?column?\" FROM unnest($1, $2, $3) \"usher groups\"(c1, c2, c3)"
        );
        for (sql, named) in [
            ("SELECT count(DISTINCT x), count(*) FROM p", "count()"),
            ("SELECT count(DISTINCT x), sum(y) FROM p", "sum()"),
            ("SELECT max(x) FROM p", "neither combine"),
            ("SELECT x, count(DISTINCT y) FROM p", "a column outside"),
        ] {
            let (parsed, s) = crate::router::fanout::parse_select(sql);
            let e = finish_distinct(&parsed, &s, &mut Vec::new()).unwrap_err();
            assert!(e.contains(named), "{sql}: {e}");
        }
    }
}
