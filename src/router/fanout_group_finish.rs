//! GROUP BY without the sharding key, finished by Postgres: for what the plain regrouping
//! (`fanout_regroup`) cannot do itself — HAVING, expressions over aggregates or grouping
//! columns, ORDER BY (text sorted by the database's collation) — the shards return each
//! partial group (the grouping values and the aggregate calls), usher combines equal
//! groups, and one shard runs the client's select list, HAVING, ORDER BY, LIMIT and OFFSET
//! over the combined groups, passed as one typed array parameter per column (or, for a type
//! without a known array type, as a VALUES list of parameters):
//!
//! ```sql
//! SELECT c1 AS status, round(c2, 2) AS round
//! FROM unnest($1, $2, $3) AS "usher groups"(c1, c2, c3)
//! WHERE c3 > 5 ORDER BY c1 LIMIT 3
//! ```

use std::sync::Arc;

use pg_query::protobuf::{self, a_const::Val};
use pg_query::NodeEnum;

use super::fanout::{same_expr, Aggregate};
use super::fanout_finish::{aggregate_call, colname, rewrite, Step};

/// Parameters a statement may have (the protocol's 16-bit count).
const MAX_PARAMETERS: usize = 65_535;

/// The name of the combined groups in the finishing statement.
const GROUPS: &str = "usher groups";

/// The finishing statement without its FROM (added for the groups at hand).
#[derive(Debug, Clone)]
pub struct Template(pub(super) Arc<protobuf::SelectStmt>);

impl PartialEq for Template {
    fn eq(&self, other: &Template) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || format!("{:?}", self.0) == format!("{:?}", other.0)
    }
}

impl Eq for Template {}

impl Template {
    /// The finishing statement over the combined groups passed as one array parameter per
    /// column (`$1..$columns`, unnested side by side): any number of groups.
    pub fn sql_arrays(&self, columns: usize) -> Result<String, String> {
        let node = |n: NodeEnum| protobuf::Node { node: Some(n) };
        let args = (1..=columns)
            .map(|number| {
                node(NodeEnum::ParamRef(protobuf::ParamRef {
                    number: i32::try_from(number).unwrap_or(i32::MAX),
                    location: -1,
                }))
            })
            .collect();
        let unnest = protobuf::FuncCall {
            funcname: vec![node(NodeEnum::String(protobuf::String {
                sval: "unnest".into(),
            }))],
            args,
            funcformat: protobuf::CoercionForm::CoerceExplicitCall as i32,
            location: -1,
            ..Default::default()
        };
        let from = protobuf::RangeFunction {
            functions: vec![node(NodeEnum::List(protobuf::List {
                items: vec![
                    node(NodeEnum::FuncCall(Box::new(unnest))),
                    protobuf::Node { node: None },
                ],
            }))],
            alias: Some(alias(columns)),
            ..Default::default()
        };
        let mut s = (*self.0).clone();
        s.from_clause = vec![node(NodeEnum::RangeFunction(from))];
        pg_query::deparse(&statement(s), pg_query::DeparseOptions::default())
            .map_err(|e| format!("usher: the finishing statement could not be written: {e}"))
    }

    /// The finishing statement over `rows` combined groups of `columns` values each,
    /// numbered `$1..` row by row.
    pub fn sql(&self, rows: usize, columns: usize) -> Result<String, String> {
        if rows.saturating_mul(columns) > MAX_PARAMETERS {
            return Err(format!(
                "usher: GROUP BY across shards gathered {rows} groups, more than one finishing statement can take ({} values at most)",
                MAX_PARAMETERS
            ));
        }
        let node = |n: NodeEnum| protobuf::Node { node: Some(n) };
        let mut number = 0i32;
        let values = (0..rows.max(1))
            .map(|_| {
                node(NodeEnum::List(protobuf::List {
                    items: (0..columns)
                        .map(|_| {
                            number += 1;
                            node(NodeEnum::ParamRef(protobuf::ParamRef {
                                number,
                                location: -1,
                            }))
                        })
                        .collect(),
                }))
            })
            .collect();
        let zero = (rows == 0).then(|| {
            Box::new(node(NodeEnum::AConst(protobuf::AConst {
                isnull: false,
                val: Some(Val::Ival(protobuf::Integer { ival: 0 })),
                location: -1,
            })))
        });
        let groups = protobuf::SelectStmt {
            values_lists: values,
            // No group at all: one typed row of NULLs, none of it taken.
            limit_option: if zero.is_some() {
                protobuf::LimitOption::Count as i32
            } else {
                protobuf::LimitOption::Default as i32
            },
            limit_count: zero,
            op: protobuf::SetOperation::SetopNone as i32,
            ..Default::default()
        };
        let from = protobuf::RangeSubselect {
            lateral: false,
            subquery: Some(Box::new(node(NodeEnum::SelectStmt(Box::new(groups))))),
            alias: Some(alias(columns)),
        };
        let mut s = (*self.0).clone();
        s.from_clause = vec![node(NodeEnum::RangeSubselect(Box::new(from)))];
        pg_query::deparse(&statement(s), pg_query::DeparseOptions::default())
            .map_err(|e| format!("usher: the finishing statement could not be written: {e}"))
    }
}

/// A grouped read finished over its combined groups.
#[derive(Debug, Clone)]
pub struct GroupFinish {
    /// Each column the shards return: a grouping value (`None`) or an aggregate.
    pub columns: Vec<Option<Aggregate>>,
    /// The statement the shards run (grouping values, then aggregate calls; no HAVING,
    /// ORDER BY, LIMIT or OFFSET).
    pub shard_tree: protobuf::ParseResult,
    /// The finishing statement.
    pub template: Template,
}

/// The finishing split of the grouped SELECT `s`; `combined` receives the locations of the
/// aggregate calls it computes. `Err` names what keeps it from being exact.
pub fn finish_groups(
    parsed: &protobuf::ParseResult,
    s: &protobuf::SelectStmt,
    combined: &mut Vec<i32>,
) -> Result<GroupFinish, String> {
    if !s.distinct_clause.is_empty() {
        return Err("DISTINCT with GROUP BY".into());
    }
    let targets: Vec<(&str, Option<&protobuf::Node>)> = s
        .target_list
        .iter()
        .filter_map(|t| match t.node.as_ref() {
            Some(NodeEnum::ResTarget(r)) => Some((r.name.as_str(), r.val.as_deref())),
            _ => None,
        })
        .collect();
    let mut groups: Vec<protobuf::Node> = Vec::new();
    for g in &s.group_clause {
        let item = match g.node.as_ref() {
            Some(NodeEnum::AConst(k)) => match &k.val {
                Some(Val::Ival(i)) => usize::try_from(i.ival)
                    .ok()
                    .and_then(|i| i.checked_sub(1))
                    .and_then(|i| targets.get(i))
                    .and_then(|(_, v)| *v)
                    .cloned()
                    .ok_or("GROUP BY a position that is not in the select list")?,
                _ => return Err("GROUP BY a constant".into()),
            },
            Some(NodeEnum::GroupingSet(_)) => return Err("GROUPING SETS, ROLLUP or CUBE".into()),
            Some(NodeEnum::ColumnRef(c)) if c.fields.len() == 1 => {
                // A bare name is an input column first, an output alias only when no input
                // column has it: which one is not known here.
                let name = super::fanout::column_names(g.node.as_ref().ok_or("GROUP BY")?);
                if targets.iter().any(|(alias, _)| {
                    !alias.is_empty() && name.as_deref() == Some(&[alias.to_string()][..])
                }) {
                    return Err("GROUP BY a name that is also a select-list alias".into());
                }
                g.clone()
            }
            _ => g.clone(),
        };
        groups.push(item);
    }
    let mut calls: Vec<(Aggregate, protobuf::FuncCall)> = Vec::new();
    let mut locations: Vec<i32> = Vec::new();
    let mut over_groups = |node: &mut protobuf::Node| -> Result<(), String> {
        rewrite(node, &mut |n| {
            let column = |name: String| {
                Step::Replace(Box::new(NodeEnum::ColumnRef(protobuf::ColumnRef {
                    fields: vec![protobuf::Node {
                        node: Some(NodeEnum::String(protobuf::String { sval: name })),
                    }],
                    location: -1,
                })))
            };
            if let Some(i) = groups.iter().position(|g| {
                g.node
                    .as_ref()
                    .is_some_and(|g| !matches!(g, NodeEnum::AConst(_)) && same_expr(g, n))
            }) {
                return column(format!("c{}", i + 1));
            }
            match n {
                NodeEnum::FuncCall(f) => match aggregate_call(f) {
                    None => Step::Descend,
                    Some(Err(why)) => Step::Fail(why),
                    Some(Ok(kind)) => {
                        locations.push(f.location);
                        let call = NodeEnum::FuncCall(f.clone());
                        let at = match calls.iter().position(|(_, c)| {
                            same_expr(&NodeEnum::FuncCall(Box::new(c.clone())), &call)
                        }) {
                            Some(at) => at,
                            None => {
                                calls.push((kind, (**f).clone()));
                                calls.len() - 1
                            }
                        };
                        column(format!("c{}", groups.len() + at + 1))
                    }
                },
                NodeEnum::ColumnRef(_) => {
                    Step::Fail("a column neither grouped nor inside an aggregate function".into())
                }
                NodeEnum::ParamRef(_) => {
                    Step::Fail("a parameter outside an aggregate function, with GROUP BY".into())
                }
                NodeEnum::SubLink(_) => Step::Fail("subqueries".into()),
                _ => Step::Descend,
            }
        })
    };
    let mut finished = Vec::with_capacity(s.target_list.len());
    let mut names = Vec::with_capacity(s.target_list.len());
    for (alias, val) in &targets {
        let val = val.ok_or("a select-list item")?;
        let name = if alias.is_empty() {
            colname(val.node.as_ref())
        } else {
            alias.to_string()
        };
        let mut expr = val.clone();
        over_groups(&mut expr)?;
        names.push(name.clone());
        finished.push(target(name, expr));
    }
    let mut having = s.having_clause.clone();
    if let Some(h) = having.as_deref_mut() {
        over_groups(h)?;
    }
    let mut sort = s.sort_clause.clone();
    for item in &mut sort {
        let Some(NodeEnum::SortBy(by)) = item.node.as_mut() else {
            return Err("ORDER BY".into());
        };
        if by.sortby_dir == protobuf::SortByDir::SortbyUsing as i32 {
            return Err("ORDER BY ... USING".into());
        }
        let Some(key) = by.node.as_deref_mut() else {
            return Err("ORDER BY".into());
        };
        // A bare output name, or a position, means the same in the finishing statement.
        let output = match key.node.as_ref() {
            Some(NodeEnum::AConst(_)) => true,
            Some(e @ NodeEnum::ColumnRef(_)) => {
                matches!(super::fanout::column_names(e).as_deref(), Some([n]) if names.contains(n))
            }
            _ => false,
        };
        if !output {
            over_groups(key)?;
        }
    }
    let window = |n: &Option<Box<protobuf::Node>>| match n.as_deref().and_then(|n| n.node.as_ref())
    {
        None | Some(NodeEnum::AConst(_)) => Ok(()),
        Some(_) => Err("LIMIT or OFFSET other than a constant, with GROUP BY".to_string()),
    };
    window(&s.limit_count)?;
    window(&s.limit_offset)?;
    combined.extend(locations);
    let template = protobuf::SelectStmt {
        target_list: finished,
        where_clause: having,
        sort_clause: sort,
        limit_count: s.limit_count.clone(),
        limit_offset: s.limit_offset.clone(),
        limit_option: s.limit_option,
        op: protobuf::SetOperation::SetopNone as i32,
        ..Default::default()
    };
    let outputs: Vec<protobuf::Node> = groups
        .iter()
        .cloned()
        .chain(calls.iter().map(|(_, f)| protobuf::Node {
            node: Some(NodeEnum::FuncCall(Box::new(f.clone()))),
        }))
        .collect();
    let shard_tree = grouped_shard_tree(parsed, s, outputs, groups.len());
    Ok(GroupFinish {
        columns: std::iter::repeat_n(None, groups.len())
            .chain(calls.iter().map(|(k, _)| Some(*k)))
            .collect(),
        shard_tree,
        template: Template(Arc::new(template)),
    })
}

/// The statement the shards run for a finished grouping: `s` with `outputs` as its select
/// list, grouped by the first `grouped` of them (by position), without HAVING, ORDER BY,
/// LIMIT or OFFSET (which the finishing statement applies).
pub(super) fn grouped_shard_tree(
    parsed: &protobuf::ParseResult,
    s: &protobuf::SelectStmt,
    outputs: Vec<protobuf::Node>,
    grouped: usize,
) -> protobuf::ParseResult {
    let mut shard = s.clone();
    shard.target_list = outputs
        .into_iter()
        .map(|o| target(String::new(), o))
        .collect();
    shard.group_clause = (1..=grouped)
        .map(|i| protobuf::Node {
            node: Some(NodeEnum::AConst(protobuf::AConst {
                isnull: false,
                val: Some(Val::Ival(protobuf::Integer {
                    ival: i32::try_from(i).unwrap_or(i32::MAX),
                })),
                location: -1,
            })),
        })
        .collect();
    shard.having_clause = None;
    shard.sort_clause.clear();
    shard.limit_count = None;
    shard.limit_offset = None;
    shard.limit_option = protobuf::LimitOption::Default as i32;
    let mut shard_tree = parsed.clone();
    if let Some(raw) = shard_tree.stmts.first_mut() {
        raw.stmt = Some(Box::new(protobuf::Node {
            node: Some(NodeEnum::SelectStmt(Box::new(shard))),
        }));
    }
    shard_tree
}

/// `"usher groups"(c1, ..., cN)`.
fn alias(columns: usize) -> protobuf::Alias {
    protobuf::Alias {
        aliasname: GROUPS.into(),
        colnames: (0..columns)
            .map(|i| protobuf::Node {
                node: Some(NodeEnum::String(protobuf::String {
                    sval: format!("c{}", i + 1),
                })),
            })
            .collect(),
    }
}

/// A select-list item `val AS name` (no alias when `name` is empty).
fn target(name: String, val: protobuf::Node) -> protobuf::Node {
    protobuf::Node {
        node: Some(NodeEnum::ResTarget(Box::new(protobuf::ResTarget {
            name,
            val: Some(Box::new(val)),
            location: -1,
            ..Default::default()
        }))),
    }
}

fn statement(s: protobuf::SelectStmt) -> protobuf::ParseResult {
    protobuf::ParseResult {
        version: 0,
        stmts: vec![protobuf::RawStmt {
            stmt: Some(Box::new(protobuf::Node {
                node: Some(NodeEnum::SelectStmt(Box::new(s))),
            })),
            stmt_location: 0,
            stmt_len: 0,
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(sql: &str) -> Result<GroupFinish, String> {
        let (parsed, s) = crate::router::fanout::parse_select(sql);
        finish_groups(&parsed, &s, &mut Vec::new())
    }

    fn deparse(t: &protobuf::ParseResult) -> String {
        pg_query::deparse(t, pg_query::DeparseOptions::default()).unwrap()
    }

    #[test]
    fn groups_are_finished_over_values() {
        let f = of("SELECT status, round(avg(score), 2) AS mean FROM p WHERE x > 1 GROUP BY status HAVING count(*) > 5 ORDER BY lower(status) DESC, mean LIMIT 3").unwrap();
        assert_eq!(
            f.columns,
            vec![None, Some(Aggregate::Avg), Some(Aggregate::Count)]
        );
        assert_eq!(
            deparse(&f.shard_tree),
            "SELECT status, avg(score), count(*) FROM p WHERE x > 1 GROUP BY 1"
        );
        assert_eq!(
            f.template.sql(2, 3).unwrap(),
            "SELECT c1 AS status, round(c2, 2) AS mean FROM (VALUES ($1, $2, $3), ($4, $5, $6)) \"usher groups\"(c1, c2, c3) WHERE c3 > 5 ORDER BY lower(c1) DESC, mean LIMIT 3"
        );
        let none = f.template.sql(0, 3).unwrap();
        assert!(none.contains("LIMIT 0"), "{none}");
        assert!(f.template.sql(30_000, 3).is_err());
        assert_eq!(
            f.template.sql_arrays(3).unwrap(),
            "SELECT c1 AS status, round(c2, 2) AS mean FROM unnest($1, $2, $3) \"usher groups\"(c1, c2, c3) WHERE c3 > 5 ORDER BY lower(c1) DESC, mean LIMIT 3"
        );
        // The same aggregate twice is computed once; GROUP BY a position is its item.
        let f = of("SELECT count(*), lesson_id FROM p GROUP BY 2 HAVING count(*) > 1").unwrap();
        assert_eq!(f.columns, vec![None, Some(Aggregate::Count)]);
        assert_eq!(
            deparse(&f.shard_tree),
            "SELECT lesson_id, count(*) FROM p GROUP BY 1"
        );
    }

    #[test]
    fn what_cannot_be_finished_is_named() {
        for (sql, named) in [
            (
                "SELECT status, x, count(*) FROM p GROUP BY status ORDER BY 1",
                "neither grouped",
            ),
            (
                "SELECT status, count(*) FROM p GROUP BY status HAVING count(*) > $1",
                "a parameter",
            ),
            (
                "SELECT status, stddev(x) FROM p GROUP BY status ORDER BY 1",
                "stddev()",
            ),
            (
                "SELECT lower(status) AS status, count(*) FROM p GROUP BY status",
                "alias",
            ),
            (
                "SELECT status, count(*) FROM p GROUP BY status ORDER BY 1 LIMIT $1",
                "LIMIT",
            ),
            (
                "SELECT DISTINCT status, count(*) FROM p GROUP BY status",
                "DISTINCT",
            ),
        ] {
            let e = of(sql).unwrap_err();
            assert!(e.contains(named), "{sql}: {e}");
        }
    }
}
