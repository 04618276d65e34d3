//! GROUP BY without the sharding key, across shards: a group's rows may live on every shard,
//! so each shard's groups are partial. When the select list is only the grouping columns
//! and aggregates that combine exactly (count, sum, min, max, bool_and, bool_or, avg), usher runs
//! the statement on every shard without its LIMIT/OFFSET, gathers the partial groups,
//! combines the partials of equal groups column by column, orders the groups by the ORDER BY
//! (output columns) and applies LIMIT/OFFSET itself. What that needs to be exact is checked
//! here (the shape) and, for the grouping columns' types, when the shards describe the
//! result (`session::fanout::regroup`).

use pg_query::protobuf::{self, a_const::Val};
use pg_query::NodeEnum;

use super::fanout::{aggregate_of, column_names as names_of, Aggregate, Count};

/// A grouped read whose partial groups combine exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Regroup {
    /// Each output column: a grouping column (`None`) or the aggregate that combines it.
    pub columns: Vec<Option<Aggregate>>,
    /// The text each shard runs: the statement without LIMIT and OFFSET (`None` when it
    /// has neither).
    pub shard_sql: Option<String>,
    /// The groups are finished by Postgres (HAVING, expressions, ORDER BY): the statement
    /// run over them (see `router::fanout_group_finish`).
    pub finish: Option<super::fanout_group_finish::Template>,
}

/// The regrouping of the grouped SELECT `s` finished by Postgres over the combined groups,
/// or why it cannot be.
pub fn finished(
    parsed: &protobuf::ParseResult,
    s: &protobuf::SelectStmt,
    combined: &mut Vec<i32>,
) -> Result<Regroup, String> {
    let f = super::fanout_group_finish::finish_groups(parsed, s, combined)?;
    let augmented = super::fanout_aggregate::with_avg_partials(&f.shard_tree);
    let tree = augmented.as_ref().unwrap_or(&f.shard_tree);
    let sql = pg_query::deparse(tree, pg_query::DeparseOptions::default())
        .map_err(|e| format!("GROUP BY (the shards' query could not be written: {e})"))?;
    Ok(Regroup {
        columns: f.columns,
        shard_sql: Some(sql),
        finish: Some(f.template),
    })
}

/// The regrouping of the grouped SELECT `s`, or why it cannot regroup. `combined` receives
/// the locations of the aggregate calls it combines (no other aggregate may appear).
/// `shard_tree` is the statement the shards run before LIMIT and OFFSET are dropped: `s`'s
/// own tree, or (`augmented`) that tree with avg()'s partials added.
pub fn regroup(
    shard_tree: &protobuf::ParseResult,
    augmented: bool,
    s: &protobuf::SelectStmt,
    combined: &mut Vec<i32>,
) -> Result<Regroup, String> {
    if !s.distinct_clause.is_empty() {
        return Err("DISTINCT with GROUP BY".into());
    }
    if s.having_clause.is_some() {
        return Err("HAVING".into());
    }
    let targets: Vec<Option<&NodeEnum>> = s
        .target_list
        .iter()
        .map(|t| match t.node.as_ref() {
            Some(NodeEnum::ResTarget(r)) => r.val.as_deref().and_then(|v| v.node.as_ref()),
            _ => None,
        })
        .collect();
    // The grouping items, as select-list positions.
    let mut grouped_at = Vec::new();
    for g in &s.group_clause {
        let at = match g.node.as_ref() {
            Some(NodeEnum::AConst(k)) => match &k.val {
                Some(Val::Ival(i)) => usize::try_from(i.ival)
                    .ok()
                    .and_then(|i| i.checked_sub(1))
                    .filter(|i| *i < targets.len()),
                _ => None,
            },
            Some(e @ NodeEnum::ColumnRef(_)) => {
                let names = names_of(e);
                targets
                    .iter()
                    .position(|t| names.is_some() && t.and_then(names_of) == names)
            }
            _ => None,
        };
        match at {
            Some(i) => grouped_at.push(i),
            None => return Err("GROUP BY an item that is not a column of the select list".into()),
        }
    }
    let mut columns = Vec::with_capacity(targets.len());
    for (i, t) in targets.iter().enumerate() {
        if grouped_at.contains(&i) {
            if matches!(t, Some(e) if names_of(e).is_some()) {
                columns.push(None);
                continue;
            }
            return Err("GROUP BY an expression".into());
        }
        match t {
            Some(NodeEnum::FuncCall(f)) => match aggregate_of(f) {
                Some(kind) => {
                    combined.push(f.location);
                    columns.push(Some(kind));
                }
                None => return Err(format!("aggregate {}()", func_name(f))),
            },
            _ => return Err("a select-list item that is neither grouped nor an aggregate".into()),
        }
    }
    let shard_sql = if s.limit_count.is_some() || s.limit_offset.is_some() {
        Some(without_window(shard_tree)?)
    } else if !augmented {
        None
    } else {
        Some(
            pg_query::deparse(shard_tree, pg_query::DeparseOptions::default())
                .map_err(|e| format!("avg() (the shards' query could not be written: {e})"))?,
        )
    };
    Ok(Regroup {
        columns,
        shard_sql,
        finish: None,
    })
}

/// LIMIT and OFFSET of a regrouped read must be constants: the shards' text drops them.
pub fn check_window(limit: Option<Count>, offset: Option<Count>) -> Result<(), String> {
    match (limit, offset) {
        (Some(Count::Param(_)), _) | (_, Some(Count::Param(_))) => {
            Err("LIMIT or OFFSET given as a parameter".into())
        }
        (Some(Count::Value(v)), _) | (_, Some(Count::Value(v))) if v < 0 => {
            Err("a negative LIMIT or OFFSET".into())
        }
        _ => Ok(()),
    }
}

fn func_name(f: &protobuf::FuncCall) -> String {
    f.funcname
        .iter()
        .filter_map(|n| match &n.node {
            Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
            _ => None,
        })
        .next_back()
        .unwrap_or_default()
        .to_string()
}

/// The statement without LIMIT and OFFSET, deparsed.
fn without_window(parsed: &protobuf::ParseResult) -> Result<String, String> {
    let mut tree = parsed.clone();
    let Some(s) = super::fanout_sort::first_select_mut(&mut tree) else {
        return Err("LIMIT".into());
    };
    s.limit_count = None;
    s.limit_offset = None;
    pg_query::deparse(&tree, pg_query::DeparseOptions::default())
        .map_err(|e| format!("LIMIT (the shards' query could not be written: {e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(sql: &str) -> Result<Regroup, String> {
        let (parsed, s) = crate::router::fanout::parse_select(sql);
        let shards = crate::router::fanout_aggregate::with_avg_partials(&parsed);
        let tree = shards.as_ref().unwrap_or(&parsed);
        regroup(tree, shards.is_some(), &s, &mut Vec::new())
    }

    #[test]
    fn grouping_columns_and_combinable_aggregates() {
        let r = of("SELECT status, count(*), sum(score), max(completed_at) FROM p GROUP BY status ORDER BY 2 DESC LIMIT 3").unwrap();
        assert_eq!(
            r.columns,
            vec![
                None,
                Some(Aggregate::Count),
                Some(Aggregate::Sum),
                Some(Aggregate::Max)
            ]
        );
        assert_eq!(
            r.shard_sql.as_deref(),
            Some("SELECT status, count(*), sum(score), max(completed_at) FROM p GROUP BY status ORDER BY 2 DESC")
        );
        let r = of("SELECT count(*), p.lesson_id FROM p GROUP BY 2").unwrap();
        assert_eq!(r.columns, vec![Some(Aggregate::Count), None]);
        assert_eq!(r.shard_sql, None);
    }

    #[test]
    fn what_does_not_combine_is_named() {
        for (sql, named) in [
            (
                "SELECT status, stddev(score) FROM p GROUP BY status",
                "stddev()",
            ),
            (
                "SELECT status, count(*) FROM p GROUP BY status HAVING count(*) > 1",
                "HAVING",
            ),
            (
                "SELECT count(*) FROM p GROUP BY status",
                "not a column of the select list",
            ),
            (
                "SELECT status, lesson_id, count(*) FROM p GROUP BY status",
                "neither grouped",
            ),
            (
                "SELECT lower(status), count(*) FROM p GROUP BY 1",
                "GROUP BY an expression",
            ),
            (
                "SELECT status, count(*) + 1 FROM p GROUP BY status",
                "neither grouped",
            ),
            (
                "SELECT status, count(DISTINCT x) FROM p GROUP BY status",
                "count()",
            ),
        ] {
            let e = of(sql).unwrap_err();
            assert!(e.contains(named), "{sql}: {e}");
        }
    }
}
